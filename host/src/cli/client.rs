//! The CLI's side of the control API: HTTP over the daemon's unix socket (or TCP with a token).

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::de::DeserializeOwned;

use crate::api::ErrorBody;

/// Exit code when the daemon cannot be reached.
pub const EXIT_UNREACHABLE: u8 = 5;

/// The daemon could not be reached (distinct exit code).
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot reach the infrakit daemon at {target}: {reason} (is `infrakit serve` running on this data directory?)"
)]
pub struct Unreachable {
    target: String,
    reason: String,
}

/// The daemon answered with an error.
#[derive(Debug, thiserror::Error)]
#[error("{message} (HTTP {status})")]
pub struct Refused {
    /// The HTTP status.
    pub status: u16,
    /// What it said was wrong.
    pub message: String,
}

impl Refused {
    /// Whether `e` is the daemon saying that what was asked for does not exist.
    pub fn is_not_found(e: &anyhow::Error) -> bool {
        e.downcast_ref::<Refused>().is_some_and(|r| r.status == 404)
    }
}

impl Client {
    /// The daemon went away in the middle of an exchange (a stream it was sending).
    pub fn gone(&self, reason: impl std::fmt::Display) -> Unreachable {
        Unreachable {
            target: self.target.clone(),
            reason: reason.to_string(),
        }
    }
}

/// A client of one daemon.
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
    target: String,
}

impl Client {
    /// Over the unix socket at `socket`.
    pub fn unix(socket: &Path) -> anyhow::Result<Client> {
        let http = reqwest::Client::builder()
            .unix_socket(socket.to_path_buf())
            .build()
            .context("building the HTTP client")?;
        Ok(Client {
            http,
            base: "http://infrakit".into(),
            token: None,
            target: socket.display().to_string(),
        })
    }

    /// Over TCP at `url` with a bearer token.
    pub fn tcp(url: &str, token: Option<String>) -> anyhow::Result<Client> {
        Ok(Client {
            http: reqwest::Client::builder().build()?,
            base: url.trim_end_matches('/').to_string(),
            token,
            target: url.to_string(),
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        r
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let resp = req.send().await.map_err(|e| Unreachable {
            target: self.target.clone(),
            reason: crate::error_chain(&e),
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<ErrorBody>(&text)
            .map(|b| b.error)
            .unwrap_or(text);
        Err(Refused { status, message }.into())
    }

    async fn answer<T: DeserializeOwned>(
        &self,
        path: &str,
        resp: reqwest::Response,
    ) -> anyhow::Result<T> {
        let bytes = resp.bytes().await.map_err(|e| self.gone(e))?;
        serde_json::from_slice(&bytes)
            .with_context(|| format!("the daemon's answer to {path} is not what this CLI expects"))
    }

    /// GET, a typed JSON answer.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let resp = self.send(self.request(reqwest::Method::GET, path)).await?;
        self.answer(path, resp).await
    }

    /// POST with an optional text body, a typed JSON answer.
    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: Option<String>,
    ) -> anyhow::Result<T> {
        let mut req = self.request(reqwest::Method::POST, path);
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let resp = self.send(req).await?;
        self.answer(path, resp).await
    }

    /// GET, streamed response (events).
    pub async fn stream(&self, path: &str) -> anyhow::Result<reqwest::Response> {
        self.send(self.request(reqwest::Method::GET, path)).await
    }
}

/// Where the daemon's socket is for a data directory.
pub fn default_socket(data_dir: &Path) -> PathBuf {
    data_dir.join("infrakit.sock")
}
