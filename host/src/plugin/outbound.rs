//! Sending a plugin's vetted HTTP request: to exactly the addresses the policy checked (never a
//! second DNS lookup a rebinding server could answer differently) or to a granted unix socket.
//! TLS keeps the request's host name for SNI and certificate checks.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::Body;
use tokio::io::{AsyncRead, AsyncWrite};
use wasmtime_wasi_http::{Error, RequestOptions};

/// Where a request goes.
#[derive(Debug, Clone)]
pub enum Route {
    /// A unix socket granted under `[http.unix]`.
    Unix(PathBuf),
    /// These addresses (tried in order), with TLS for `https`.
    Tcp {
        /// The addresses the policy vetted.
        addrs: Vec<SocketAddr>,
        /// The host name for TLS, when the scheme is `https`.
        tls_name: Option<String>,
    },
}

trait Stream: AsyncRead + AsyncWrite + Send + Sync + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Sync + Unpin + 'static> Stream for T {}

/// The response, and the future driving the connection until the body is read.
pub type Sent = (
    http::Response<ResponseBody>,
    Pin<Box<dyn Future<Output = Result<(), Error>> + Send>>,
);

/// Sends `request` along `route`. Timeouts come from `options` (the caller caps them).
pub async fn send<B>(
    mut request: http::Request<B>,
    route: Route,
    options: RequestOptions,
) -> Result<Sent, Error>
where
    B: Body<Data = Bytes, Error = Error> + Send + 'static,
{
    let connect_timeout = options.connect_timeout.unwrap_or(Duration::from_secs(30));
    let first_byte = options
        .first_byte_timeout
        .unwrap_or(Duration::from_secs(30));
    let between_bytes = options
        .between_bytes_timeout
        .unwrap_or(Duration::from_secs(30))
        .max(Duration::from_nanos(1));

    let stream: Box<dyn Stream> = tokio::time::timeout(connect_timeout, connect(&route))
        .await
        .map_err(|_| Error::ConnectionTimeout)??;
    let (mut sender, conn) = tokio::time::timeout(
        connect_timeout,
        hyper::client::conn::http1::Builder::new()
            .handshake(wasmtime_wasi_http::io::TokioIo::new(stream)),
    )
    .await
    .map_err(|_| Error::ConnectionTimeout)??;

    // The request line carries only the path: scheme and authority are for proxies.
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    *request.uri_mut() = http::Uri::builder()
        .path_and_query(path)
        .build()
        .map_err(|_| Error::HttpRequestUriInvalid)?;

    let mut conn = Box::pin(conn);
    let mut send = Box::pin(tokio::time::timeout(
        first_byte,
        sender.send_request(request),
    ));
    let mut conn_done = false;
    // Drive the connection while waiting for the response head.
    let response = std::future::poll_fn(|cx| {
        if let Poll::Ready(r) = send.as_mut().poll(cx) {
            return Poll::Ready(r);
        }
        if !conn_done && let Poll::Ready(r) = conn.as_mut().poll(cx) {
            conn_done = true;
            if let Err(e) = r {
                return Poll::Ready(Ok(Err(e)));
            }
            return send.as_mut().poll(cx);
        }
        Poll::Pending
    })
    .await
    .map_err(|_| Error::ConnectionReadTimeout)??;

    let mut interval = tokio::time::interval(between_bytes);
    interval.reset();
    let response = response.map(|incoming| ResponseBody { incoming, interval });
    let io: Pin<Box<dyn Future<Output = Result<(), Error>> + Send>> = if conn_done {
        Box::pin(async { Ok(()) })
    } else {
        Box::pin(async move {
            conn.await.map_err(|e| {
                if e.is_timeout() {
                    Error::HttpResponseTimeout
                } else {
                    e.into()
                }
            })
        })
    };
    Ok((response, io))
}

async fn connect(route: &Route) -> Result<Box<dyn Stream>, Error> {
    match route {
        Route::Unix(path) => {
            let stream = tokio::net::UnixStream::connect(path).await.map_err(|e| {
                tracing::warn!(socket = %path.display(), error = %e, "granted unix socket unreachable");
                Error::Connect(e)
            })?;
            Ok(Box::new(stream))
        }
        Route::Tcp { addrs, tls_name } => {
            let stream = tokio::net::TcpStream::connect(addrs.as_slice())
                .await
                .map_err(|e| match e.kind() {
                    std::io::ErrorKind::ConnectionRefused => Error::ConnectionRefused,
                    _ => Error::Connect(e),
                })?;
            let _ = stream.set_nodelay(true);
            match tls_name {
                None => Ok(Box::new(stream)),
                Some(name) => {
                    let server_name = match name.parse::<std::net::IpAddr>() {
                        Ok(ip) => rustls::pki_types::ServerName::from(ip),
                        Err(_) => rustls::pki_types::ServerName::try_from(name.clone())
                            .map_err(|_| Error::HttpRequestUriInvalid)?,
                    };
                    let tls = tokio_rustls::TlsConnector::from(tls_config())
                        .connect(server_name, stream)
                        .await
                        .map_err(Error::Tls)?;
                    Ok(Box::new(tls))
                }
            }
        }
    }
}

/// The web PKI roots, built once: a root store is thousands of certificates.
fn tls_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.into(),
            };
            Arc::new(
                rustls::ClientConfig::builder_with_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .expect("ring supports the default TLS versions")
                .with_root_certificates(roots)
                .with_no_client_auth(),
            )
        })
        .clone()
}

/// A response body that fails when the server pauses longer than the between-bytes timeout.
pub struct ResponseBody {
    incoming: hyper::body::Incoming,
    interval: tokio::time::Interval,
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Error>>> {
        match Pin::new(&mut self.incoming).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                self.interval.reset();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(if e.is_timeout() {
                Error::HttpResponseTimeout
            } else {
                e.into()
            }))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                ready!(self.interval.poll_tick(cx));
                Poll::Ready(Some(Err(Error::ConnectionReadTimeout)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.incoming.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server on 127.0.0.1 that answers one request and reports the request head it read.
    async fn server() -> (SocketAddr, tokio::sync::oneshot::Receiver<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let n = s.read(&mut buf).await.unwrap();
            let _ = tx.send(String::from_utf8_lossy(&buf[..n]).to_string());
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await
                .unwrap();
        });
        (addr, rx)
    }

    /// DNS rebinding: the name is resolved once, when the policy checks it. Here the name
    /// (`localhost`, which resolves to the second server) stands for a rebinding server's
    /// second answer: the request must go to the vetted address all the same, and the name
    /// only into the `Host` header.
    #[tokio::test]
    async fn a_request_goes_to_the_vetted_address_never_to_a_second_lookup() {
        let (vetted, seen) = server().await;
        let (elsewhere, mut not_seen) = server().await;
        let body = http_body_util::Empty::<Bytes>::new()
            .map_err(|never| match never {})
            .boxed_unsync();
        // As wasmtime hands it over: the authority in the URI and in `Host`.
        let authority = format!("localhost:{}", elsewhere.port());
        let request = http::Request::get(format!("http://{authority}/probe"))
            .header(http::header::HOST, &authority)
            .body(body)
            .unwrap();
        let route = Route::Tcp {
            addrs: vec![vetted],
            tls_name: None,
        };
        let (response, io) = send(request, route, RequestOptions::default())
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        drop(io);
        let head = seen.await.unwrap();
        assert!(head.starts_with("GET /probe HTTP/1.1"), "{head}");
        assert!(
            head.to_lowercase()
                .contains(&format!("host: localhost:{}", elsewhere.port())),
            "{head}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            not_seen.try_recv().is_err(),
            "the name was looked up again and the request went there"
        );
    }
}
