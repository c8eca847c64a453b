//! `infrakit serve`: one process that keeps every committed group reconciled.
//!
//! Start-up: take the data directory's lock (a second daemon is refused, naming the holder),
//! open the store, load the plugins, resume every stored group, serve the API, and watch the
//! plugin directory. Shutdown on SIGINT/SIGTERM: stop accepting requests, let each group's
//! current pass finish (plugin calls end or hit their limits), and exit; the store is
//! transactional, so nothing is half-written at any moment.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::broadcast;

use crate::api::{self, Daemon};
use crate::controller::{Controller, EventSink, Options};
use crate::event::{Event, EventKind};
use crate::leader::Elector;
use crate::plugin::{Change, Registry, RegistryConfig};
use crate::store::{EmbeddedStore, EtcdOptions, EtcdStore, Store};

/// How the daemon runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// etcd, or (None) the embedded store in the data directory.
    pub store: Option<EtcdOptions>,
    /// With etcd: the leadership lease's time to live.
    pub lease_ttl: Duration,
    /// With etcd: this manager's name in the election.
    pub node: String,
    /// Plugins, data and cache directories.
    pub registry: RegistryConfig,
    /// The unix socket to serve on.
    pub socket: PathBuf,
    /// An optional TCP address (requires `token`).
    pub tcp: Option<SocketAddr>,
    /// The bearer token for TCP.
    pub token: Option<String>,
    /// The controller's poll interval.
    pub poll_interval: Duration,
    /// How often the plugin directory is rescanned.
    pub plugin_scan_interval: Duration,
    /// Revisions kept per group by the embedded store (etcd's are in `store`).
    pub revisions_kept: u64,
}

/// Holds the data directory: an exclusive lock on `infrakit.lock`, which holds the holder's pid.
pub struct DataDirLock {
    _file: File,
}

impl DataDirLock {
    /// Takes the lock or says who holds it.
    pub fn acquire(data_dir: &Path) -> anyhow::Result<DataDirLock> {
        // Private: it holds the store, the socket and every plugin's scratch directory.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(data_dir)
            .with_context(|| format!("cannot create data directory {}", data_dir.display()))?;
        let path = data_dir.join("infrakit.lock");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        if file.try_lock().is_err() {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            anyhow::bail!(
                "data directory {} is in use by another infrakit daemon (pid {}); stop it, or use \
                 another --data-dir",
                data_dir.display(),
                holder.trim()
            );
        }
        file.set_len(0)?;
        file.rewind()?;
        write!(file, "{}", std::process::id())?;
        file.sync_all()?;
        Ok(DataDirLock { _file: file })
    }
}

/// Events go to the store (with a sequence number) and then to live subscribers. The
/// controller records from synchronous code and must never wait on the store (etcd may be
/// slow or away), so events queue for one writer task, which keeps their order. A full queue
/// drops the event (logged), rather than hold up healing.
struct StoredEvents {
    queue: tokio::sync::mpsc::Sender<Event>,
    live: broadcast::Sender<Event>,
    /// The leader's sink stamps each event with its term, for audits across failovers.
    term: Option<Arc<Elector>>,
}

/// With a shared store: this manager's part in the election, and the fenced view of the store
/// its controller writes through.
struct Shared {
    elector: Arc<Elector>,
    fenced: Arc<dyn Store>,
}

/// Events waiting for the store before new ones are dropped.
const EVENT_QUEUE: usize = 8192;

impl StoredEvents {
    /// The sink, and the writer's handle: send on it to stop taking events, and await it
    /// for the queue to be written.
    fn start(
        store: Arc<dyn Store>,
        live: broadcast::Sender<Event>,
        term: Option<Arc<Elector>>,
    ) -> (
        Arc<StoredEvents>,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    ) {
        let (queue, mut pending) = tokio::sync::mpsc::channel::<Event>(EVENT_QUEUE);
        let (close, mut closing) = tokio::sync::oneshot::channel::<()>();
        let writer = {
            let live = live.clone();
            tokio::spawn(async move {
                loop {
                    let event = tokio::select! {
                        e = pending.recv() => e,
                        _ = &mut closing, if !closing.is_terminated() => {
                            pending.close();
                            continue;
                        }
                    };
                    let Some(event) = event else { return };
                    match store.append(event).await {
                        Ok(e) => {
                            let _ = live.send(e);
                        }
                        Err(e) => {
                            tracing::error!(error = %crate::error_chain(&e), "cannot record event")
                        }
                    }
                }
            })
        };
        (Arc::new(StoredEvents { queue, live, term }), close, writer)
    }
}

impl EventSink for StoredEvents {
    fn record(&self, mut event: Event) {
        if let Some(e) = &self.term {
            event.term = e.term();
        }
        tracing::info!(
            group = %event.group,
            instance = event.instance.as_deref().unwrap_or(""),
            kind = %event.kind,
            "{}", event.message
        );
        if self.queue.try_send(event).is_err() {
            tracing::error!("event queue full (the store is not keeping up); event not stored");
        }
    }

    fn stored(&self, event: Event) {
        tracing::info!(group = %event.group, kind = %event.kind, "{}", event.message);
        let _ = self.live.send(event);
    }
}

/// Raises the soft limit on open files to the hard one, as servers do (Go's runtime does it
/// for every program): the API's connections and every concurrent plugin call's files and
/// sockets count against it, and the usual soft limit of 1,024 is soon reached.
fn raise_open_files_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        let before = limit.current;
        limit.current = limit.maximum;
        match setrlimit(Resource::Nofile, limit) {
            Ok(()) => tracing::debug!(?before, now = ?limit.current, "open files limit raised"),
            Err(e) => tracing::debug!(error = %e, "open files limit left as it is"),
        }
    }
}

/// Runs the daemon until SIGINT or SIGTERM.
pub async fn serve(options: ServeOptions) -> anyhow::Result<()> {
    let data_dir = options.registry.data_dir.clone();
    let _lock = DataDirLock::acquire(&data_dir)?;
    raise_open_files_limit();
    if options.tcp.is_some() && options.token.as_deref().is_none_or(str::is_empty) {
        anyhow::bail!(
            "--tcp needs a bearer token: set INFRAKIT_TOKEN or --token-file (the unix socket needs none)"
        );
    }
    let started = Instant::now();
    // With etcd, several managers share the state and only the elected one reconciles.
    let (store, shared): (Arc<dyn Store>, Option<Shared>) = match &options.store {
        Some(etcd) => {
            let store = EtcdStore::connect(etcd.clone())
                .await
                .context("opening the store")?;
            let elector = Elector::new(
                store.client(),
                store.prefix(),
                options.node.clone(),
                options.lease_ttl,
            );
            let fenced: Arc<dyn Store> = store.fenced(elector.guard());
            (store, Some(Shared { elector, fenced }))
        }
        None => {
            let store_path = data_dir.join("state.redb");
            let store = EmbeddedStore::open(&store_path)
                .context("opening the store")?
                .with_revisions_kept(options.revisions_kept);
            std::fs::set_permissions(&store_path, std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("cannot make {} private", store_path.display()))?;
            (Arc::new(store), None)
        }
    };
    // Plugins load in the background (compiling one can take seconds, a slow `metadata` its
    // whole limit): the daemon serves at once, lists them as loading, and groups that need
    // one retry until it is there.
    let mut registry_config = options.registry.clone();
    // The daemon lives on: a plugin started on baseline code gets its optimised code.
    registry_config.optimize_in_background = true;
    let registry = Arc::new(
        Registry::empty(registry_config)
            .map_err(|e| anyhow::anyhow!("{e:#}"))
            .context("starting the WebAssembly engine")?,
    );
    let (loaded_tx, loaded_rx) = tokio::sync::watch::channel(false);
    {
        let registry = registry.clone();
        tokio::spawn(async move {
            registry.load_all().await;
            for f in registry.failures() {
                tracing::warn!(plugin = %f.name, path = %f.path.display(), error = %f.message, "plugin not loaded");
            }
            tracing::info!(plugins = registry.plugins().len(), "plugins loaded");
            loaded_tx.send_replace(true);
        });
    }
    let (live, _) = broadcast::channel(4096);
    let elector = shared.as_ref().map(|s| s.elector.clone());
    let mut writers = Vec::new();
    let (events, close, writer) = StoredEvents::start(store.clone(), live.clone(), None);
    writers.push((close, writer));
    // The leader's controller writes (events, the destroy finalizer) through a fenced view:
    // etcd refuses them once its election key is gone. Other writers (the API, plugin changes
    // seen by any manager) use the store as it is.
    let (controller_store, controller_events) = match &shared {
        Some(s) => {
            let (e, close, writer) =
                StoredEvents::start(s.fenced.clone(), live.clone(), Some(s.elector.clone()));
            writers.push((close, writer));
            (s.fenced.clone(), e)
        }
        None => (store.clone(), events.clone()),
    };
    let controller = Controller::new(
        registry.clone(),
        controller_store,
        controller_events,
        Options {
            poll_interval: options.poll_interval,
            fence: elector.as_ref().map(|e| e.fence()).unwrap_or_default(),
            ..Options::default()
        },
    );

    // Resume every stored group where it was: identity lives in instance tags, so the first
    // pass of each sees exactly what exists. From here on the controller follows the store.
    let groups = store.groups().await.context("reading stored groups")?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut background = Vec::new();
    match &shared {
        None => controller.start(),
        Some(Shared { elector, fenced }) => {
            background.push(tokio::spawn(elector.clone().run(stop_rx.clone())));
            // Reconcile while leading, and only then.
            let mut leading = elector.leading();
            let controller = controller.clone();
            let mut stop = stop_rx.clone();
            background.push(tokio::spawn(publish_statuses(
                controller.clone(),
                fenced.clone(),
                elector.clone(),
                stop_rx.clone(),
            )));
            background.push(tokio::spawn(async move {
                loop {
                    let term = *leading.borrow_and_update();
                    match term {
                        Some(_) => controller.start(),
                        None => controller.shutdown().await,
                    }
                    tokio::select! {
                        changed = leading.changed() => if changed.is_err() { return },
                        _ = stop.wait_for(|s| *s) => return,
                    }
                }
            }));
        }
    }
    tracing::info!(
        groups = groups.len(),
        plugins = registry.plugins().len(),
        "resumed"
    );

    let daemon = Arc::new(Daemon {
        elector: elector.clone(),
        store: store.clone(),
        controller: controller.clone(),
        registry: registry.clone(),
        events: live.clone(),
        started,
        data_dir: data_dir.clone(),
        stopping: stop_rx.clone(),
    });
    let (router, _) = api::router(daemon.clone());

    // The socket: a file there is stale unless a daemon answers on it, which happens when
    // another data directory's daemon was given the same --socket. Never take over a live one.
    if std::os::unix::net::UnixStream::connect(&options.socket).is_ok() {
        anyhow::bail!(
            "{}: another infrakit daemon is serving on this socket (for another data directory); \
             give this one its own --socket",
            options.socket.display()
        );
    }
    let _ = std::fs::remove_file(&options.socket);
    let unix = tokio::net::UnixListener::bind(&options.socket)
        .with_context(|| format!("cannot listen on {}", options.socket.display()))?;
    std::fs::set_permissions(&options.socket, std::fs::Permissions::from_mode(0o600))?;

    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let mut servers = Vec::new();
    servers.push(tokio::spawn(
        axum::serve(unix, router.clone())
            .with_graceful_shutdown(stopped(stop_rx.clone()))
            .into_future(),
    ));
    if let Some(addr) = options.tcp {
        let token = Arc::new(options.token.clone().unwrap_or_default());
        let metrics_daemon = daemon.clone();
        let tcp_router = router
            .route(
                "/metrics",
                axum::routing::get(move || {
                    let d = metrics_daemon.clone();
                    async move { crate::metrics::render(&d.controller, &d.registry) }
                }),
            )
            .layer(axum::middleware::from_fn(move |req, next| {
                api::require_token(token.clone(), req, next)
            }));
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        tracing::info!(address = %listener.local_addr()?, "serving on TCP");
        servers.push(tokio::spawn(
            axum::serve(listener, tcp_router)
                .with_graceful_shutdown(stopped(stop_rx.clone()))
                .into_future(),
        ));
    }
    tracing::info!(socket = %options.socket.display(), pid = std::process::id(), "ready");
    println!(
        "infrakit daemon ready (pid {}, socket {})",
        std::process::id(),
        options.socket.display()
    );

    // The live plugin directory.
    let watcher = {
        let registry = registry.clone();
        let events = events.clone();
        let every = options.plugin_scan_interval;
        let mut stop = stop_rx.clone();
        let mut loaded = loaded_rx;
        tokio::spawn(async move {
            // Changes are what happens after the first load.
            tokio::select! {
                _ = loaded.wait_for(|l| *l) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                for change in registry.rescan().await {
                    let (plugin, message) = match &change {
                        Change::Added(n) => {
                            (n.clone(), "loaded; available to new groups".to_string())
                        }
                        Change::Replaced(n) => (
                            n.clone(),
                            "replaced; the next call uses the new version".to_string(),
                        ),
                        Change::Removed(n) => (
                            n.clone(),
                            "removed; groups using it report it until it returns".to_string(),
                        ),
                        Change::Optimized { name, compile } => (
                            name.clone(),
                            format!(
                                "now runs optimised code (compiled in the background in {} ms; \
                                 it ran baseline code until now)",
                                compile.as_millis()
                            ),
                        ),
                        Change::Failed {
                            name,
                            message,
                            kept,
                        } => (
                            name.clone(),
                            if *kept {
                                format!(
                                    "new version not loaded, the previous one stays in service: {message}"
                                )
                            } else {
                                format!("not loaded: {message}")
                            },
                        ),
                    };
                    events.record(Event::now(
                        "-",
                        EventKind::PluginChanged,
                        None,
                        format!("plugin {plugin} {message}"),
                    ));
                }
            }
        })
    };

    shutdown_signal().await;
    tracing::info!("shutting down");
    stop_tx.send_replace(true);
    controller.shutdown().await;
    let _ = watcher.await;
    // The elector resigns (revokes its lease) so that another manager takes over at once.
    for b in background {
        let _ = tokio::time::timeout(Duration::from_secs(3), b).await;
    }
    for s in servers {
        let _ = s.await;
    }
    // What the last passes recorded reaches the store, within a bound (etcd may be away).
    let writers: Vec<_> = writers
        .into_iter()
        .map(|(close, writer)| {
            let _ = close.send(());
            writer
        })
        .collect();
    let drained = async {
        for writer in writers {
            let _ = writer.await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(5), drained)
        .await
        .is_err()
    {
        tracing::warn!("events still queued at exit were not stored");
    }
    let _ = std::fs::remove_file(&options.socket);
    Ok(())
}

/// While this manager leads: publishes each group's status to the shared store when what it
/// says changes (phase, revision, members, messages, error), and at least every 5 s, so that
/// the other managers' `group ls` and `--wait` show it. Writes go through the fenced store.
async fn publish_statuses(
    controller: Controller,
    store: Arc<dyn Store>,
    elector: Arc<Elector>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    // Per group: its status channel, and what was last published (counters cleared) and when.
    // A group whose channel saw no pass since is skipped without a copy of its status.
    type Published = Option<(crate::controller::GroupStatus, Instant)>;
    let mut groups: std::collections::HashMap<
        String,
        (
            tokio::sync::watch::Receiver<crate::controller::GroupStatus>,
            Published,
        ),
    > = Default::default();
    let refresh = Duration::from_secs(5);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if elector.leading().borrow().is_none() {
            groups.clear();
            continue;
        }
        let ids: std::collections::HashSet<String> = controller.groups().into_iter().collect();
        // A group whose task ended (its spec switched to a new task) is watched afresh.
        groups.retain(|id, (channel, _)| ids.contains(id) && channel.has_changed().is_ok());
        for id in ids {
            let (channel, last) = match groups.entry(id.clone()) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => match controller.watch(&id) {
                    Some(rx) => e.insert((rx, None)),
                    None => continue,
                },
            };
            let due = last.as_ref().is_none_or(|(_, at)| at.elapsed() >= refresh);
            if !due && !channel.has_changed().unwrap_or(false) {
                continue;
            }
            let status = channel.borrow_and_update().clone();
            let mut said = status.clone();
            (
                said.passes,
                said.updated_ms,
                said.last_pass_ms,
                said.pass_ms_total,
            ) = (0, 0, 0, 0);
            if !due && last.as_ref().is_some_and(|(l, _)| *l == said) {
                continue;
            }
            let Ok(full) = serde_json::to_value(&status) else {
                continue;
            };
            match store.publish_status(&id, &full).await {
                Ok(()) => *last = Some((said, Instant::now())),
                Err(e) => {
                    tracing::debug!(group = %id, error = %crate::error_chain(&e), "status not published")
                }
            }
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
