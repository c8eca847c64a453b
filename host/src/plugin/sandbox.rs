//! The per-call sandbox: the store data of one plugin instance, its WASI context built from the
//! plugin's grants, the memory limiter, the outbound HTTP policy, and the linker they plug into.
//!
//! A fresh [`State`] (and so a fresh store and instance) is made for every call: a trap or a
//! guest left in a bad state can never leak into the next call.

use std::sync::Arc;

use http_body_util::BodyExt;
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, ResourceLimiter};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{
    RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView,
};

use super::{bindings, outbound, signing};
use crate::grants::{self, Grants, rules};

/// How much of a call's stdout/stderr is kept (and logged); the rest is dropped.
const OUTPUT_CAPTURE_BYTES: usize = 64 * 1024;
/// Longest single log message accepted from a plugin.
const LOG_MESSAGE_BYTES: usize = 8 * 1024;
/// Bytes of one HTTP header map a guest may build; with `limits.resources` this bounds the
/// host memory a call can hold through `wasi:http` fields.
const HTTP_FIELDS_BYTES: usize = 64 * 1024;
/// Log lines accepted from a plugin per call; more are counted and dropped.
const LOG_LINES_PER_CALL: usize = 1000;

/// Everything a plugin is allowed, resolved to host paths.
#[derive(Debug, Clone)]
pub struct Sandbox {
    /// The plugin's name, attached to its log lines.
    pub plugin: Arc<str>,
    /// The private scratch directory, seen by the plugin as `/data`.
    pub scratch: std::path::PathBuf,
    /// What the operator granted.
    pub grants: Arc<Grants>,
    /// The processes the plugin started (see `plugin::process`).
    pub processes: Arc<super::process::Ledger>,
    /// Its disk quota, shared by its calls (see `plugin::disk`).
    pub disk: Arc<super::disk::DiskQuota>,
    /// Its scratch and granted directories, opened once (see `plugin::preopens`).
    pub preopens: Arc<super::preopens::Preopens>,
}

impl Sandbox {
    /// The quota over the directories a plugin with these grants may write.
    pub fn disk_quota(scratch: &std::path::Path, grants: &Grants) -> super::disk::DiskQuota {
        let mut roots = vec![scratch.to_path_buf()];
        roots.extend(
            grants
                .files
                .iter()
                .filter(|f| f.mode == grants::Mode::ReadWrite)
                .map(|f| f.host.clone()),
        );
        super::disk::DiskQuota::new(
            roots,
            super::disk::Usage {
                bytes: grants.limits.disk,
                entries: grants.limits.disk_entries,
            },
        )
    }
}

/// The guest path of a plugin's private scratch directory.
pub const SCRATCH_GUEST_PATH: &str = "/data";

/// Store data of one plugin instance.
pub struct State {
    plugin: Arc<str>,
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    hooks: HttpPolicy,
    pub(super) limiter: MemoryLimiter,
    config: Arc<Grants>,
    scratch: std::path::PathBuf,
    ledger: Arc<super::process::Ledger>,
    disk: Arc<super::disk::DiskQuota>,
    preopens: Arc<super::preopens::Preopens>,
    /// Set when the call's directories could not be handed out (see `plugin::preopens`).
    pub(super) setup_failed: Option<String>,
    pub(super) stdout: MemoryOutputPipe,
    pub(super) stderr: MemoryOutputPipe,
    log_lines: usize,
    /// Epoch ticks of guest execution left before the CPU limit traps (see `plugin::call`).
    pub(super) cpu_ticks_left: u64,
}

impl State {
    /// Builds the store data for one call under `sandbox`.
    pub fn new(sandbox: &Sandbox) -> wasmtime::Result<Self> {
        let grants = &sandbox.grants;
        let stdout = MemoryOutputPipe::new(OUTPUT_CAPTURE_BYTES);
        let stderr = MemoryOutputPipe::new(OUTPUT_CAPTURE_BYTES);
        let mut wasi = WasiCtxBuilder::new();
        // Nothing is inherited from the host: no environment, no arguments, no stdin, no
        // network. Sockets stay denied: outbound traffic goes through wasi:http and its policy.
        wasi.stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            // Plugin file operations are small and local; running them on the calling thread
            // instead of hopping to tokio's blocking pool cuts each one from tens of
            // microseconds to a syscall (measured in the benchmarks).
            .allow_blocking_current_thread(true);
        for (k, v) in &grants.env {
            wasi.env(k, v);
        }
        // No preopens here: `get-directories` is served from the plugin's handles, opened once
        // (see `plugin::preopens`), so a call that touches no file pays nothing for its grants.
        // Every open file, directory, stream, request and header map is an entry here: the cap
        // bounds the host descriptors and host memory one call can hold (a guest opened
        // 19,983 files, or kept 20,000 header maps of 100 KB, before there was one).
        let mut table = ResourceTable::new();
        table.set_max_capacity(grants.limits.resources);
        let mut http = WasiHttpCtx::new();
        http.set_field_size_limit(HTTP_FIELDS_BYTES);
        Ok(State {
            plugin: sandbox.plugin.clone(),
            wasi: wasi.build(),
            http,
            table,
            hooks: HttpPolicy {
                plugin: sandbox.plugin.clone(),
                grants: grants.clone(),
            },
            limiter: MemoryLimiter::new(grants.limits.memory),
            config: grants.clone(),
            scratch: sandbox.scratch.clone(),
            ledger: sandbox.processes.clone(),
            disk: sandbox.disk.clone(),
            preopens: sandbox.preopens.clone(),
            setup_failed: None,
            stdout,
            stderr,
            log_lines: 0,
            cpu_ticks_left: 0,
        })
    }
}

impl State {
    pub(super) fn plugin(&self) -> &str {
        &self.plugin
    }

    pub(super) fn grants(&self) -> &Grants {
        &self.config
    }

    pub(super) fn scratch(&self) -> &std::path::Path {
        &self.scratch
    }

    pub(super) fn ledger(&self) -> &super::process::Ledger {
        &self.ledger
    }

    pub(super) fn disk(&self) -> &Arc<super::disk::DiskQuota> {
        &self.disk
    }

    pub(super) fn preopens(&self) -> &super::preopens::Preopens {
        &self.preopens
    }

    pub(super) fn table(&mut self) -> &mut ResourceTable {
        &mut self.table
    }
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for State {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

impl bindings::host::Host for State {
    fn log(&mut self, level: bindings::host::Level, message: String) -> wasmtime::Result<()> {
        self.log_lines += 1;
        if self.log_lines > LOG_LINES_PER_CALL {
            if self.log_lines == LOG_LINES_PER_CALL + 1 {
                tracing::warn!(plugin = %self.plugin, "plugin log limit reached; dropping further lines of this call");
            }
            return Ok(());
        }
        let message = super::printable(truncate(&message, LOG_MESSAGE_BYTES));
        use bindings::host::Level;
        let plugin = &*self.plugin;
        match level {
            Level::Trace => tracing::trace!(target: "plugin", plugin = %plugin, "{message}"),
            Level::Debug => tracing::debug!(target: "plugin", plugin = %plugin, "{message}"),
            Level::Info => tracing::info!(target: "plugin", plugin = %plugin, "{message}"),
            Level::Warn => tracing::warn!(target: "plugin", plugin = %plugin, "{message}"),
            Level::Error => tracing::error!(target: "plugin", plugin = %plugin, "{message}"),
        }
        Ok(())
    }

    fn get_config(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        Ok(self.config.config.get(&key).cloned())
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Emits what a call wrote to stdout/stderr as log lines of its plugin.
pub(super) fn flush_output(plugin: &str, stdout: &MemoryOutputPipe, stderr: &MemoryOutputPipe) {
    for (stream, pipe) in [("stdout", stdout), ("stderr", stderr)] {
        let bytes = pipe.contents();
        if bytes.is_empty() {
            continue;
        }
        for line in String::from_utf8_lossy(&bytes)
            .lines()
            .filter(|l| !l.is_empty())
        {
            let line = super::printable(line);
            if stream == "stderr" {
                tracing::warn!(target: "plugin", plugin = %plugin, stream, "{line}");
            } else {
                tracing::info!(target: "plugin", plugin = %plugin, stream, "{line}");
            }
        }
    }
}

/// Caps the sum of all linear memories of one instance (wasmtime's own limits are per memory,
/// and a component has several).
pub struct MemoryLimiter {
    limit: u64,
    total: u64,
    /// Set when a growth was refused, so the fault can be reported as a memory fault.
    pub(super) exceeded: Option<u64>,
}

impl MemoryLimiter {
    fn new(limit: u64) -> Self {
        MemoryLimiter {
            limit,
            total: 0,
            exceeded: None,
        }
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.total - current as u64 + desired as u64;
        if total > self.limit {
            self.exceeded = Some(total);
            // An error (rather than `Ok(false)`) traps right here, so the plugin cannot swallow
            // the failure and the report names the real cause.
            wasmtime::bail!(
                "memory limit exceeded: growing to {} would use {} in all, over the limit of {}",
                bytesize::ByteSize(desired as u64),
                bytesize::ByteSize(total),
                bytesize::ByteSize(self.limit)
            );
        }
        self.total = total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// The outbound HTTP policy of one plugin: allow-list, private-address blocking, timeouts and a
/// response size cap.
struct HttpPolicy {
    plugin: Arc<str>,
    grants: Arc<Grants>,
}

type SendFuture = Box<
    dyn Future<
            Output = wasmtime_wasi_http::Result<(
                http::Response<WasiBody>,
                Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
            )>,
        > + Send,
>;

impl WasiHttpHooks for HttpPolicy {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> SendFuture {
        let _ = fut;
        let plugin = self.plugin.clone();
        let grants = self.grants.clone();
        Box::new(async move {
            let uri = request.uri().clone();
            let scheme = uri.scheme_str().unwrap_or("https").to_string();
            let host = uri.host().unwrap_or_default().to_string();
            let port = uri
                .port_u16()
                .unwrap_or(if scheme == "http" { 80 } else { 443 });
            let target = format!("{scheme}://{host}:{port}");
            let granted = grants
                .http
                .allow
                .iter()
                .any(|t| t.matches(&scheme, &host, port));
            if !granted {
                let allowed: Vec<String> =
                    grants.http.allow.iter().map(ToString::to_string).collect();
                tracing::warn!(
                    plugin = %plugin,
                    target = %target,
                    granted = ?allowed,
                    "outbound HTTP denied: no grant matches (add it to the plugin's [http] allow list)"
                );
                return Err(wasmtime_wasi_http::Error::HttpRequestDenied);
            }
            let path = uri.path_and_query().map_or("/", |p| p.path()).to_string();
            let method = request.method().as_str().to_string();
            let deny = |reason: String| {
                tracing::warn!(
                    plugin = %plugin,
                    target = %target,
                    method = %method,
                    path = %path,
                    reason = %reason,
                    "outbound HTTP denied by the grant's rules"
                );
                wasmtime_wasi_http::Error::HttpRequestDenied
            };
            let body_rules =
                match rules::judge(&grants.http.rules, &scheme, &host, port, &method, &path) {
                    rules::Verdict::Refused(reason) => return Err(deny(reason)),
                    rules::Verdict::Admitted(r) if r.iter().all(|r| r.checks_body()) => r,
                    rules::Verdict::Admitted(_) | rules::Verdict::Unruled => Vec::new(),
                };
            let signer = grants.http.signer(&scheme, &host, port);
            let request = if body_rules.is_empty() && signer.is_none() {
                request.map(BodyExt::boxed_unsync)
            } else {
                // Constraints on the body are checked, and a signature computed, on the whole of
                // it, before any of the request leaves the host.
                let (parts, body) = request.into_parts();
                let body = http_body_util::Limited::new(body, rules::MAX_CHECKED_BODY)
                    .collect()
                    .await
                    .map_err(|_| {
                        deny(format!(
                            "the body could not be read whole within {} bytes to check or sign it",
                            rules::MAX_CHECKED_BODY
                        ))
                    })?
                    .to_bytes();
                if !body_rules.is_empty() {
                    let verdicts: Vec<Result<(), String>> =
                        body_rules.iter().map(|r| r.check_body(&body)).collect();
                    if !verdicts.iter().any(Result::is_ok) {
                        return Err(deny(
                            verdicts
                                .into_iter()
                                .find_map(Result::err)
                                .unwrap_or_default(),
                        ));
                    }
                }
                let mut request = http::Request::from_parts(parts, ());
                if let Some(signer) = signer {
                    let host_only = host.trim_start_matches('[').trim_end_matches(']');
                    signing::sign_request(&mut request, &body, signer, host_only).map_err(
                        |reason| {
                            tracing::warn!(
                                plugin = %plugin,
                                target = %target,
                                reason = %reason,
                                "outbound HTTP not sent: the host could not sign it"
                            );
                            wasmtime_wasi_http::Error::ConfigurationError
                        },
                    )?;
                }
                request.map(|()| {
                    http_body_util::Full::new(body)
                        .map_err(|never| match never {})
                        .boxed_unsync()
                })
            };
            let route = match grants.http.unix_socket(&scheme, &host, port) {
                Some(socket) => outbound::Route::Unix(socket.to_path_buf()),
                None => {
                    // Resolved once: the connection goes to exactly the addresses checked here,
                    // so a DNS server cannot answer a public address now and loopback later.
                    let host_only = host.trim_start_matches('[').trim_end_matches(']');
                    let addrs: Vec<std::net::SocketAddr> = match host_only.parse() {
                        Ok(ip) => vec![std::net::SocketAddr::new(ip, port)],
                        Err(_) => tokio::net::lookup_host((host_only, port))
                            .await
                            .map_err(|_| wasmtime_wasi_http::Error::DnsError {
                                rcode: None,
                                info_code: None,
                            })?
                            .collect(),
                    };
                    if addrs.is_empty() {
                        return Err(wasmtime_wasi_http::Error::DestinationNotFound);
                    }
                    // `block_private` guards what a wildcard admits; a target the operator
                    // named exactly (an internal API, an emulator on loopback) is reachable
                    // wherever it resolves, or granting it next to a wildcard would undo it.
                    let named = grants
                        .http
                        .allow
                        .iter()
                        .any(|t| !t.has_wildcard_host() && t.matches(&scheme, &host, port));
                    if let Some(a) = addrs
                        .iter()
                        .find(|a| !named && !grants.address_allowed(a.ip()))
                    {
                        tracing::warn!(
                            plugin = %plugin,
                            target = %target,
                            address = %a.ip(),
                            "outbound HTTP denied: resolves to a private or link-local address (block_private)"
                        );
                        return Err(wasmtime_wasi_http::Error::HttpRequestDenied);
                    }
                    outbound::Route::Tcp {
                        addrs,
                        tls_name: (scheme == "https").then(|| host_only.to_string()),
                    }
                }
            };
            // The guest's own timeouts apply. Without one, wasmtime waits 600 s; cap it just
            // past the call's wall-clock limit, so the call's own deadline decides (and reports
            // it) while a request outliving its dropped call still ends soon after.
            let cap_at = grants.limits.wall + std::time::Duration::from_secs(1);
            let cap = |t: Option<std::time::Duration>| Some(t.map_or(cap_at, |t| t.min(cap_at)));
            let options = RequestOptions {
                connect_timeout: cap(options.and_then(|o| o.connect_timeout)),
                first_byte_timeout: cap(options.and_then(|o| o.first_byte_timeout)),
                between_bytes_timeout: cap(options.and_then(|o| o.between_bytes_timeout)),
            };
            let (response, io) = outbound::send(request, route, options).await?;
            let limit = grants.limits.http_response;
            // A declared length over the limit is refused before any of the body is read, with
            // an error code the guest sees as such; undeclared lengths are cut off while read.
            let declared = response
                .headers()
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if declared.is_some_and(|n| n > limit) {
                tracing::warn!(
                    plugin = %plugin,
                    target = %target,
                    length = declared,
                    limit,
                    "HTTP response refused: larger than the plugin's http_response limit"
                );
                return Err(wasmtime_wasi_http::Error::HttpResponseBodySize(Some(limit)));
            }
            let response = response.map(|body| {
                http_body_util::Limited::new(body, limit as usize)
                    .map_err(move |e| match e.downcast::<wasmtime_wasi_http::Error>() {
                        Ok(inner) => *inner,
                        Err(_) => wasmtime_wasi_http::Error::HttpResponseBodySize(Some(limit)),
                    })
                    .boxed_unsync()
            });
            Ok((
                response,
                Box::new(io) as Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
            ))
        })
    }
}

/// WASI lets a guest create symlinks in its writable directories, pointing anywhere: harmless
/// inside the sandbox (its own lookups stay inside), but a trap for an operator or a host
/// program that follows them later. Plugins have no use for them, so creating one is refused
/// (`not-permitted`); older guests importing an earlier 0.2 minor version link to this too.
fn refuse_symlinks(linker: &mut Linker<State>) -> wasmtime::Result<()> {
    use wasmtime::component::Resource;
    use wasmtime_wasi::p2::bindings::filesystem::types::ErrorCode;
    linker.allow_shadowing(true);
    linker.instance("wasi:filesystem/types@0.2.12")?.func_wrap(
        "[method]descriptor.symlink-at",
        |cx: wasmtime::StoreContextMut<'_, State>,
         (_dir, target, _link): (
            Resource<wasmtime_wasi::filesystem::Descriptor>,
            String,
            String,
        )| {
            tracing::warn!(
                plugin = %cx.data().plugin,
                target = %super::printable(&target),
                "symlink creation refused"
            );
            Ok((Err::<(), ErrorCode>(ErrorCode::NotPermitted),))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// The linker every plugin instantiates against: WASI p2, wasi:http (with the policy above)
/// and the infrakit `host` and `process` interfaces.
pub fn linker(engine: &Engine) -> wasmtime::Result<Linker<State>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    bindings::host::add_to_linker::<State, HasSelf<State>>(&mut linker, |s| s)?;
    bindings::instance_world::infrakit::plugin::process::add_to_linker::<State, HasSelf<State>>(
        &mut linker,
        |s| s,
    )?;
    refuse_symlinks(&mut linker)?;
    super::disk::charge_writes(&mut linker)?;
    super::preopens::serve_preopens(&mut linker)?;
    Ok(linker)
}
