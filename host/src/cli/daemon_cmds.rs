//! `infrakit serve`, `events`, `status`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use super::Cli;
use super::output::{self, Format};
use crate::daemon::{ServeOptions, serve as run_daemon};
use crate::event::Event;
use crate::store::EtcdOptions;

/// `serve` options.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Also serve the API (and /metrics) on this TCP address, e.g. 127.0.0.1:7070. Requires a
    /// bearer token (--token, INFRAKIT_TOKEN or --token-file).
    #[arg(long, value_name = "ADDR")]
    pub tcp: Option<std::net::SocketAddr>,
    /// Read the bearer token from this file.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// How often each group is observed when nothing is happening. [default: 1s]
    #[arg(long, value_parser = humantime::parse_duration)]
    pub poll_interval: Option<Duration>,
    /// How often the plugin directory is checked for new, changed or removed plugins.
    /// [default: 500ms]
    #[arg(long, value_parser = humantime::parse_duration)]
    pub plugin_scan_interval: Option<Duration>,
    /// Keep durable state in etcd instead of the data directory: etcd://HOST:PORT[,HOST:PORT...]
    /// (etcds:// for TLS). Several daemons on one etcd share it.
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
    /// The key prefix in etcd under which everything is kept. [default: /infrakit/]
    #[arg(long, value_name = "PREFIX")]
    pub store_prefix: Option<String>,
    /// etcd user; the password is read from INFRAKIT_STORE_PASSWORD.
    #[arg(long, value_name = "USER")]
    pub store_user: Option<String>,
    /// PEM CA certificate that signed etcd's certificate (etcds://).
    #[arg(long, value_name = "FILE")]
    pub store_ca: Option<PathBuf>,
    /// PEM client certificate for etcd (mutual TLS); needs --store-key.
    #[arg(long, value_name = "FILE", requires = "store_key")]
    pub store_cert: Option<PathBuf>,
    /// The key of --store-cert.
    #[arg(long, value_name = "FILE", requires = "store_cert")]
    pub store_key: Option<PathBuf>,
    /// With --store: the leadership lease's time to live (whole seconds; renewed at a third
    /// of it). A dead leader is replaced after about this long. [default: 10s]
    #[arg(long, value_parser = humantime::parse_duration)]
    pub lease_ttl: Option<Duration>,
    /// With --store: this manager's name in the election. [default: HOSTNAME:PID]
    #[arg(long, value_name = "NAME")]
    pub node: Option<String>,
    /// Revisions of each group's spec kept in the store (what `group history` and `group
    /// rollback --to` can reach); older ones are trimmed as new ones are written. [default: 50]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub revisions_kept: Option<u64>,
}

/// `events` options.
#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Keep watching and print new events as they happen.
    #[arg(short, long)]
    pub follow: bool,
    /// Only this group's events.
    #[arg(long)]
    pub group: Option<String>,
    /// The oldest events after this sequence number (up to 1000), instead of the newest.
    #[arg(long, conflicts_with = "tail")]
    pub after: Option<u64>,
    /// The newest this many events (the default, without `--after`, is the newest 1000).
    #[arg(long, value_name = "N")]
    pub tail: Option<u32>,
    /// Only events of the last DURATION (e.g. `10m`, `2h`): all of them the log keeps, or the
    /// newest `--tail N`.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, conflicts_with = "after")]
    pub since: Option<Duration>,
    /// Output format: a line per event, or JSON lines.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Format,
}

pub async fn serve(cli: &Cli, args: &ServeArgs) -> anyhow::Result<ExitCode> {
    let file = cli.file_config()?.serve;
    let token_file = args.token_file.as_ref().or(file.token_file.as_ref());
    if let Some(f) = token_file {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(f)
            && meta.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(
                file = %f.display(),
                mode = format!("{:o}", meta.permissions().mode() & 0o777),
                "the token file is readable by others: anyone who reads it controls the daemon; chmod 600 it"
            );
        }
    }
    let token = match (token_file, &cli.token) {
        (Some(f), _) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("cannot read token file {}", f.display()))?
                .trim()
                .to_string(),
        ),
        (None, t) => t.clone(),
    };
    let revisions_kept = args
        .revisions_kept
        .or(file.revisions_kept)
        .unwrap_or(crate::store::REVISIONS_KEPT);
    if revisions_kept == 0 {
        anyhow::bail!("revisions_kept: keep at least 1 revision (the current one)");
    }
    let mut store = store_options(args, &file)?;
    if let Some(etcd) = store.as_mut() {
        etcd.revisions_kept = revisions_kept;
    }
    let lease_ttl = args
        .lease_ttl
        .or(file.lease_ttl.map(|d| d.0))
        .unwrap_or(Duration::from_secs(10));
    if lease_ttl < Duration::from_secs(1) {
        anyhow::bail!("--lease-ttl {lease_ttl:?}: etcd leases last whole seconds, at least 1s");
    }
    let node = match args.node.clone().or(file.node.clone()) {
        Some(n) => n,
        None => {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "localhost".into());
            format!("{host}:{}", std::process::id())
        }
    };
    let options = ServeOptions {
        store,
        lease_ttl,
        node,
        registry: cli.registry_config()?,
        socket: cli.socket_path()?,
        tcp: args.tcp.or(file.tcp),
        token,
        poll_interval: args
            .poll_interval
            .or(file.poll_interval.map(|d| d.0))
            .unwrap_or(Duration::from_secs(1)),
        plugin_scan_interval: args
            .plugin_scan_interval
            .or(file.plugin_scan_interval.map(|d| d.0))
            .unwrap_or(Duration::from_millis(500)),
        revisions_kept,
    };
    run_daemon(options).await?;
    Ok(ExitCode::SUCCESS)
}

/// The etcd store, when one is given on the command line or in the config file.
fn store_options(
    args: &ServeArgs,
    file: &crate::config::ServeConfig,
) -> anyhow::Result<Option<EtcdOptions>> {
    let Some(url) = args.store.as_ref().or(file.store.as_ref()) else {
        if args.store_prefix.is_some() || args.store_user.is_some() || args.store_ca.is_some() {
            anyhow::bail!("--store-prefix, --store-user and --store-ca need --store etcd://...");
        }
        return Ok(None);
    };
    let prefix = args
        .store_prefix
        .as_ref()
        .or(file.store_prefix.as_ref())
        .map_or("/infrakit/", String::as_str);
    let mut etcd = EtcdOptions::from_url(url, prefix).map_err(|e| anyhow::anyhow!(e))?;
    if let Some(user) = args.store_user.as_ref().or(file.store_user.as_ref()) {
        let password = std::env::var("INFRAKIT_STORE_PASSWORD").map_err(|_| {
            anyhow::anyhow!("--store-user {user}: set its password in INFRAKIT_STORE_PASSWORD")
        })?;
        etcd.user = Some((user.clone(), password));
    }
    let ca = args.store_ca.as_ref().or(file.store_ca.as_ref());
    let cert = args.store_cert.as_ref().or(file.store_cert.as_ref());
    let key = args.store_key.as_ref().or(file.store_key.as_ref());
    if ca.is_some() || cert.is_some() {
        let Some(tls) = etcd.tls.as_mut() else {
            anyhow::bail!("store {url}: TLS files are given, so use etcds:// rather than etcd://");
        };
        tls.ca = ca.cloned();
        tls.identity = match (cert, key) {
            (Some(c), Some(k)) => Some((c.clone(), k.clone())),
            (None, None) => None,
            _ => anyhow::bail!(
                "store {url}: a client certificate needs its key, and a key its certificate"
            ),
        };
    }
    Ok(Some(etcd))
}

pub async fn events(cli: &Cli, args: &EventsArgs) -> anyhow::Result<ExitCode> {
    let client = cli.daemon()?;
    let mut path = match args.after {
        Some(after) => format!("/v1/events?after={after}&follow={}", args.follow),
        None => format!(
            "/v1/events?tail={}&follow={}",
            args.tail
                .unwrap_or(if args.since.is_some() { 100_000 } else { 1000 }),
            args.follow
        ),
    };
    if let Some(since) = args.since {
        let cutoff = crate::event::now_ms().saturating_sub(since.as_millis() as u64);
        path.push_str(&format!("&since_ms={cutoff}"));
    }
    if let Some(g) = &args.group {
        path.push_str(&format!("&group={g}"));
    }
    let mut resp = client.stream(&path).await?;
    let mut pending = String::new();
    use std::io::Write;
    loop {
        let chunk = match resp.chunk().await {
            Ok(Some(chunk)) => chunk,
            // Without --follow the stream ends with the backlog; with it, only when the daemon
            // stops or dies.
            Ok(None) if !args.follow => break,
            Ok(None) => {
                return Err(client
                    .gone("the daemon closed the event stream (it stopped)")
                    .into());
            }
            Err(e) => {
                return Err(client
                    .gone(format!(
                        "the event stream broke off ({e}); the daemon stopped or died"
                    ))
                    .into());
            }
        };
        pending.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(i) = pending.find('\n') {
            let line: String = pending.drain(..=i).collect();
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            match args.output {
                Format::Json => println!("{line}"),
                _ => match serde_json::from_str::<Event>(line) {
                    Ok(e) => println!("{e}"),
                    Err(_) => println!("{line}"),
                },
            }
            let _ = std::io::stdout().flush();
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn status(cli: &Cli, format: Format) -> anyhow::Result<ExitCode> {
    let s: crate::api::StatusResponse = cli.daemon()?.get("/v1/status").await?;
    match format {
        Format::Table => {
            println!("infrakit {} (pid {})", s.version, s.pid);
            println!("data dir: {}", s.data_dir);
            println!("uptime:   {}s", s.uptime_seconds);
            match (s.groups, &s.store_error) {
                (Some(g), _) => println!("groups:   {g}"),
                (None, e) => println!(
                    "groups:   unknown (the store did not answer: {})",
                    e.as_deref().unwrap_or("no reason given")
                ),
            }
            println!("plugins:  {} ({} not loaded)", s.plugins, s.plugin_failures);
            println!("store:    {}", s.store);
            if let Some(l) = &s.leadership {
                let term = l.term.map(|t| format!(", term {t}")).unwrap_or_default();
                println!("role:     {} (node {}{term})", l.role, l.node);
                println!(
                    "leader:   {}",
                    l.leader
                        .as_deref()
                        .unwrap_or("none (an election is under way)")
                );
                let renewal = l
                    .since_renewal_ms
                    .map(|ms| format!("renewed {ms} ms ago"))
                    .unwrap_or_else(|| "not yet granted".into());
                println!("lease:    TTL {} ms, {renewal}", l.lease_ttl_ms);
            }
        }
        other => output::value(other, &s)?,
    }
    Ok(ExitCode::SUCCESS)
}
