//! `cargo bench`: how fast infrakit is, against the transport InfraKit used and against the
//! physical limit, measured side by side in one run. Prints one table (and writes it as JSON
//! with `-- --json FILE`); every figure with a target is marked met or missed.
//!
//! The same plugin logic (`tests/fixtures/plugins/instance-bench`) runs three ways:
//! natively through the SDK trait, as our sandboxed component, and behind InfraKit's transport
//! (JSON-RPC 2.0 over HTTP/1.1 on a unix socket).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use infrakit::controller::{Controller, EventSink, Options};
use infrakit::event::{Event, EventKind, now_ms};
use infrakit::plan::{self, Desired, Member};
use infrakit::plugin::{Health, InstanceSpec, Registry, RegistryConfig, Tags};
use infrakit::spec::{GroupSpec, tags};
use infrakit::store::{EmbeddedStore, Store};
use infrakit_sdk::InstancePlugin;
use instance_bench::BenchPlugin;
use serde_json::{Value, json};

// The tests' real etcd, started on loopback ports for the "several managers" rows.
#[allow(dead_code)]
mod support {
    #[path = "../support/docker.rs"]
    pub mod docker;
    #[path = "../support/etcd.rs"]
    pub mod etcd;
    #[path = "../support/moto.rs"]
    pub mod moto;
    #[path = "../support/process.rs"]
    pub mod process;
    #[path = "../support/tools.rs"]
    pub mod tools;
    pub use tools::external_tool;
}

const GUEST: &str = env!("INFRAKIT_GUEST_DIR");

struct Row {
    section: &'static str,
    name: String,
    value: f64,
    unit: &'static str,
    /// (comparison, bound) e.g. ("<=", 20.0)
    target: Option<(&'static str, f64)>,
}

impl Row {
    fn status(&self) -> &'static str {
        match self.target {
            None => "",
            Some(("<=", b)) if self.value <= b => "met",
            Some((">=", b)) if self.value >= b => "met",
            Some(_) => "MISSED",
        }
    }
}

#[derive(Default)]
struct Report {
    rows: Vec<Row>,
}

impl Report {
    fn add(
        &mut self,
        section: &'static str,
        name: impl Into<String>,
        value: f64,
        unit: &'static str,
        target: Option<(&'static str, f64)>,
    ) {
        let row = Row {
            section,
            name: name.into(),
            value,
            unit,
            target,
        };
        eprintln!(
            "  {:<72} {:>12.3} {:<6} {}",
            row.name,
            row.value,
            row.unit,
            row.status()
        );
        self.rows.push(row);
    }

    fn print(&self) {
        println!();
        let header = ["SECTION", "METRIC", "VALUE", "UNIT", "TARGET", "STATUS"];
        println!(
            "{:<13} {:<72} {:>12} {:<6} {:<12} {}",
            header[0], header[1], header[2], header[3], header[4], header[5]
        );
        for r in &self.rows {
            let target = r
                .target
                .map(|(c, b)| format!("{c} {b}"))
                .unwrap_or_default();
            println!(
                "{:<13} {:<72} {:>12.3} {:<6} {:<12} {}",
                r.section,
                r.name,
                r.value,
                r.unit,
                target,
                r.status()
            );
        }
        let missed = self.rows.iter().filter(|r| r.status() == "MISSED").count();
        let met = self.rows.iter().filter(|r| r.status() == "met").count();
        println!("\ntargets: {met} met, {missed} missed");
        if cfg!(debug_assertions) {
            println!(
                "note: an unoptimised build (e.g. CI's `cargo bench --profile dev -- --quick`, which \
                 only keeps the benchmark from rotting): the figures say nothing about speed; \
                 `cargo bench` measures the release build"
            );
        }
    }

    fn json(&self) -> Value {
        Value::Array(
            self.rows
                .iter()
                .map(|r| {
                    json!({
                        "section": r.section, "metric": r.name, "value": r.value, "unit": r.unit,
                        "target": r.target.map(|(c, b)| format!("{c} {b}")), "status": r.status(),
                    })
                })
                .collect(),
        )
    }
}

/// Median and p99 of per-call times, in µs.
fn stats(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort();
    let at = |q: f64| {
        samples[((samples.len() as f64 - 1.0) * q).round() as usize].as_nanos() as f64 / 1000.0
    };
    (at(0.5), at(0.99))
}

async fn time_calls<F, Fut>(n: usize, mut f: F) -> Vec<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for _ in 0..n / 10 {
        f().await; // warm-up
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f().await;
        out.push(t.elapsed());
    }
    out
}

fn group_tags(group: &str) -> Tags {
    [(tags::GROUP.to_string(), group.to_string())].into()
}

fn spec_1k(group: &str) -> InstanceSpec {
    // ~1 KiB of properties, as a real cloud instance spec would carry.
    let userdata: String = "x".repeat(900);
    InstanceSpec {
        properties: json!({"Image": "debian-13", "Size": "small", "UserData": userdata, "Disk": 20}),
        tags: [
            (tags::GROUP.to_string(), group.to_string()),
            ("role".to_string(), "web".to_string()),
        ]
        .into(),
        init: "#!/bin/sh\necho hi".into(),
        ..Default::default()
    }
}

fn sdk_spec(s: &InstanceSpec) -> infrakit_sdk::InstanceSpec {
    infrakit_sdk::InstanceSpec {
        properties: infrakit_sdk::Properties::new(s.properties.to_string()),
        tags: s.tags.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        init: s.init.clone(),
        logical_id: s.logical_id.clone(),
        attachments: vec![],
    }
}

// ------------------------------------------------------------------------------------------
// InfraKit's transport: JSON-RPC 2.0 over HTTP/1.1 on a unix socket, decoded into typed structs
// on both ends as InfraKit's Go code did, so that the ratio compares transports and nothing else.

#[derive(serde::Serialize, serde::Deserialize)]
struct RpcRequest {
    jsonrpc: String,
    #[serde(flatten)]
    call: RpcCall,
    id: u64,
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(tag = "method", content = "params")]
enum RpcCall {
    #[serde(rename = "Instance.DescribeInstances")]
    Describe {
        #[serde(rename = "Tags")]
        tags: BTreeMap<String, String>,
    },
    #[serde(rename = "Instance.Provision")]
    Provision {
        #[serde(rename = "Spec")]
        spec: RpcSpec,
    },
}

#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct RpcSpec {
    #[serde(rename = "Properties")]
    properties: Value,
    #[serde(rename = "Tags")]
    tags: BTreeMap<String, String>,
    #[serde(rename = "Init")]
    init: String,
    #[serde(rename = "LogicalID")]
    logical_id: Option<String>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct RpcDescription {
    #[serde(rename = "ID")]
    id: String,
    #[serde(rename = "LogicalID")]
    logical_id: Option<String>,
    #[serde(rename = "Tags")]
    tags: BTreeMap<String, String>,
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
enum RpcResult {
    Described {
        #[serde(rename = "Descriptions")]
        descriptions: Vec<RpcDescription>,
    },
    Provisioned {
        #[serde(rename = "ID")]
        id: String,
    },
}

#[derive(serde::Serialize, serde::Deserialize)]
struct RpcError {
    code: i64,
    message: String,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct RpcResponse {
    jsonrpc: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<RpcResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<RpcError>,
    id: u64,
}

impl RpcSpec {
    fn from_spec(s: &InstanceSpec) -> RpcSpec {
        RpcSpec {
            properties: s.properties.clone(),
            tags: s.tags.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            init: s.init.clone(),
            logical_id: s.logical_id.clone(),
        }
    }

    fn to_sdk(&self) -> infrakit_sdk::InstanceSpec {
        infrakit_sdk::InstanceSpec {
            properties: infrakit_sdk::Properties::new(self.properties.to_string()),
            tags: self
                .tags
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            init: self.init.clone(),
            logical_id: self.logical_id.clone(),
            attachments: vec![],
        }
    }
}

async fn rpc_server(dir: PathBuf, socket: PathBuf) {
    use axum::routing::post;
    let plugin = Arc::new(BenchPlugin::new(dir));
    let app = axum::Router::new().route(
        "/rpc",
        post(move |axum::Json(req): axum::Json<RpcRequest>| {
            let plugin = plugin.clone();
            async move {
                let result = match req.call {
                    RpcCall::Describe { tags } => {
                        let tags: Vec<(String, String)> = tags.into_iter().collect();
                        plugin
                            .describe(&tags, false)
                            .map(|ds| RpcResult::Described {
                                descriptions: ds
                                    .into_iter()
                                    .map(|d| RpcDescription {
                                        id: d.id,
                                        logical_id: d.logical_id,
                                        tags: d.tags.into_iter().collect(),
                                    })
                                    .collect(),
                            })
                    }
                    RpcCall::Provision { spec } => plugin
                        .provision(spec.to_sdk())
                        .map(|id| RpcResult::Provisioned { id }),
                };
                let (result, error) = match result {
                    Ok(r) => (Some(r), None),
                    Err(e) => (
                        None,
                        Some(RpcError {
                            code: -32000,
                            message: e.to_string(),
                        }),
                    ),
                };
                axum::Json(RpcResponse {
                    jsonrpc: "2.0".into(),
                    result,
                    error,
                    id: req.id,
                })
            }
        }),
    );
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    axum::serve(listener, app).await.unwrap();
}

struct RpcClient {
    http: reqwest::Client,
    next: std::sync::atomic::AtomicU64,
}

impl RpcClient {
    /// One call; panics on a transport error, an error answer or a mismatched id, so that a
    /// broken baseline can never pass as a fast one.
    async fn call(&self, call: RpcCall) -> RpcResult {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let body = RpcRequest {
            jsonrpc: "2.0".into(),
            call,
            id,
        };
        let resp: RpcResponse = self
            .http
            .post("http://plugin/rpc")
            .json(&body)
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(resp.id, id);
        if let Some(e) = resp.error {
            panic!("JSON-RPC error {}: {}", e.code, e.message);
        }
        resp.result.expect("a JSON-RPC result")
    }

    async fn describe(&self, tags: &Tags) -> usize {
        let tags = tags.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        match self.call(RpcCall::Describe { tags }).await {
            RpcResult::Described { descriptions } => descriptions.len(),
            RpcResult::Provisioned { .. } => panic!("describe answered like provision"),
        }
    }

    async fn provision(&self, spec: RpcSpec) -> String {
        match self.call(RpcCall::Provision { spec }).await {
            RpcResult::Provisioned { id } => id,
            RpcResult::Described { .. } => panic!("provision answered like describe"),
        }
    }
}

// ------------------------------------------------------------------------------------------

struct Events {
    tx: tokio::sync::broadcast::Sender<Event>,
}

impl EventSink for Events {
    fn record(&self, event: Event) {
        let _ = self.tx.send(event);
    }

    fn stored(&self, event: Event) {
        let _ = self.tx.send(event);
    }
}

/// A started controller over an in-memory store, as `group run` has.
fn managed(
    registry: Arc<Registry>,
    events: Arc<Events>,
    options: Options,
) -> (Controller, Arc<EmbeddedStore>) {
    let store = Arc::new(EmbeddedStore::in_memory().unwrap());
    let controller = Controller::new(registry, store.clone(), events, options);
    controller.start();
    (controller, store)
}

/// Commits a spec to the store and waits until the controller follows it.
async fn commit(controller: &Controller, store: &EmbeddedStore, spec: &GroupSpec) {
    store
        .commit(
            spec,
            Event::now(&spec.id, EventKind::GroupCommitted, None, "bench"),
        )
        .await
        .unwrap();
    controller.applied(*store.watch().borrow()).await;
}

/// The process's resident set size; panics when it cannot be read, so that a missing reading
/// can never pass as a small one.
fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status")
        .expect("/proc/self/status: the RSS row needs Linux's /proc");
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .expect("a VmRSS line in /proc/self/status");
    kb / 1024.0
}

fn group_spec(id: &str, size: u32, check_interval: &str) -> GroupSpec {
    GroupSpec::parse(
        &json!({"ID": id, "Properties": {
            "Allocation": {"Size": size},
            "Instance": {"Plugin": "instance-bench", "Properties": {"Image": "debian-13"}},
            "Flavor": {"Plugin": "flavor-vanilla", "Properties": {}},
            "Health": {"CheckInterval": check_interval, "GracePeriod": "0s"}
        }})
        .to_string(),
        "bench",
        false,
    )
    .unwrap()
}

/// Writes `n` instances of `spec` straight into instance-bench's files, tagged as the
/// controller would have: the bench measures steady state, not provisioning.
fn populate(scratch: &Path, spec: &GroupSpec, n: usize) {
    let sha = spec.config_sha();
    let created = now_ms() - 3_600_000;
    let mut text = String::new();
    for i in 0..n {
        text.push_str(
            &json!({"id": format!("{}-{i}", spec.id), "tags": {
                tags::GROUP: spec.id, tags::CONFIG_SHA: sha, tags::CREATED: created.to_string(),
                tags::INDEX: i.to_string(), "role": "web"}})
            .to_string(),
        );
        text.push('\n');
    }
    std::fs::write(scratch.join(format!("{}.jsonl", spec.id)), text).unwrap();
}

/// Waits until every group has done `passes` passes and is converged. It follows each group's
/// status channel rather than polling: a copy of a 10,000-member status every few hundred
/// microseconds would take a core from the pass being measured.
async fn wait_passes(controller: &Controller, ids: &[String], passes: &BTreeMap<String, u64>) {
    for id in ids {
        let before = passes.get(id).copied().unwrap_or(0);
        let mut status = loop {
            match controller.watch(id) {
                Some(rx) => break rx,
                None => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        };
        status
            .wait_for(|s| s.passes > before && s.phase == plan::Phase::Converged)
            .await
            .expect("the group's task is running");
    }
}

async fn steady_pass(controller: &Controller, specs: &[GroupSpec]) -> Duration {
    let ids: Vec<String> = specs.iter().map(|s| s.id.clone()).collect();
    let before: BTreeMap<String, u64> = ids
        .iter()
        .map(|id| {
            (
                id.clone(),
                controller.status(id).map(|s| s.passes).unwrap_or(0),
            )
        })
        .collect();
    let t = Instant::now();
    for s in specs {
        controller.wake(&s.id);
    }
    wait_passes(controller, &ids, &before).await;
    t.elapsed()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let json_out = args
        .iter()
        .position(|a| a == "--json")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let quick = args.iter().any(|a| a == "--quick");
    let scale = if quick { 10 } else { 1 };
    // Repetitions of the whole-run measurements (medians): enough for a stable median here,
    // fewer in the quick mode that CI runs so the benchmark cannot rot.
    let runs = |n: usize| if quick { n.div_ceil(5) } else { n };
    let mut report = Report::default();
    let started = Instant::now();

    let work = tempfile::tempdir().unwrap();
    // `--only idle`: the idle-CPU rows alone (a few minutes at full size).
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1));
    if only.is_some_and(|o| o == "load") {
        load_rows(&mut report, work.path(), quick).await;
        report.print();
        return;
    }
    if only.is_some_and(|o| o == "idle") {
        idle_cpu(&mut report, work.path(), quick).await;
        report.print();
        return;
    }
    let data = work.path().join("data");
    let plugins_dir = data.join("plugins");
    std::fs::create_dir_all(&plugins_dir).unwrap();
    std::fs::copy(
        Path::new(GUEST).join("instance_bench.wasm"),
        plugins_dir.join("instance-bench.wasm"),
    )
    .unwrap();
    let mut config = RegistryConfig::under(&data);
    config.cache_dir = Some(work.path().join("cache"));
    // As the daemon reads it, so that one variable sets both for an A/B run.
    if let Ok(v) = std::env::var("INFRAKIT_KEEP_RESIDENT") {
        config.keep_resident = match v.as_str() {
            "off" => 0,
            size => size.parse::<bytesize::ByteSize>().unwrap().as_u64(),
        };
    }

    // --- 4/5. Start-up and size first, on a quiet machine.
    eprintln!("start-up and size");
    let bin = env!("CARGO_BIN_EXE_infrakit");
    report.add(
        "size",
        "release binary with built-ins embedded",
        std::fs::metadata(bin).unwrap().len() as f64 / 1e6,
        "MB",
        None,
    );
    for name in ["instance_file", "flavor_vanilla", "instance_bench"] {
        let len = std::fs::metadata(Path::new(GUEST).join(format!("{name}.wasm")))
            .unwrap()
            .len();
        report.add(
            "size",
            format!("component {name}.wasm"),
            len as f64 / 1e3,
            "KB",
            None,
        );
    }
    let startup = |dir: &Path| -> Duration {
        let socket = dir.join("infrakit.sock");
        let t = Instant::now();
        let mut child = std::process::Command::new(bin)
            .args(["--data-dir", dir.to_str().unwrap(), "serve"])
            .env("INFRAKIT_LOG", "error")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            std::thread::sleep(Duration::from_micros(200));
            assert!(t.elapsed() < Duration::from_secs(60));
        }
        let took = t.elapsed();
        let _ = child.kill();
        let _ = child.wait();
        took
    };
    let sdir = work.path().join("startup");
    std::fs::create_dir_all(&sdir).unwrap();
    let cold = startup(&sdir);
    report.add(
        "start-up",
        "daemon start to serving, empty data dir (plugins load in the background)",
        cold.as_secs_f64() * 1e3,
        "ms",
        None,
    );
    let warm: Vec<Duration> = (0..runs(15)).map(|_| startup(&sdir)).collect();
    let (warm_med, _) = stats(warm);
    report.add(
        "start-up",
        "daemon start to serving, warm (compiled cache)",
        warm_med / 1e3,
        "ms",
        Some(("<=", 100.0)),
    );

    // --- 1. Plugin call cost.
    eprintln!("plugin call cost");
    let t = Instant::now();
    let registry = Arc::new(Registry::load(config.clone()).await.unwrap());
    report.add(
        "start-up",
        "registry load, cold (3 components compiled)",
        t.elapsed().as_secs_f64() * 1e3,
        "ms",
        None,
    );
    let t = Instant::now();
    let _warm_registry = Registry::load(config.clone()).await.unwrap();
    report.add(
        "start-up",
        "registry load, warm (3 from the cache)",
        t.elapsed().as_secs_f64() * 1e3,
        "ms",
        None,
    );
    assert!(registry.failures().is_empty(), "{:?}", registry.failures());
    let wasm = registry.instance("instance-bench").unwrap();
    let scratch = wasm.scratch_dir().to_path_buf();
    std::fs::create_dir_all(&scratch).unwrap();
    let native_dir = work.path().join("native");
    std::fs::create_dir_all(&native_dir).unwrap();
    let native = BenchPlugin::new(&native_dir);
    for dir in [&scratch, &native_dir] {
        let p = BenchPlugin::new(dir.as_path());
        for _ in 0..10 {
            p.provision(sdk_spec(&spec_1k("ten"))).unwrap();
        }
    }
    let rpc_socket = work.path().join("plugin.sock");
    tokio::spawn(rpc_server(native_dir.clone(), rpc_socket.clone()));
    while std::os::unix::net::UnixStream::connect(&rpc_socket).is_err() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rpc = RpcClient {
        http: reqwest::Client::builder()
            .unix_socket(rpc_socket.clone())
            .build()
            .unwrap(),
        next: Default::default(),
    };
    let mut live = wasm.live_instance().await.unwrap();
    let n = 20_000 / scale;
    let m = 5_000 / scale;
    // `--only fresh|live`: one kind of synthetic describe, over and over for 15 s, for a
    // profiler attached to this process (`perf record -p`); prints the median.
    if let Some(kind @ ("fresh" | "live")) = only.map(String::as_str) {
        let mut ten = group_tags("ten");
        ten.insert("bench.synthetic".into(), "1".into());
        let mut samples = Vec::new();
        let until = Instant::now() + Duration::from_secs(15);
        while Instant::now() < until {
            let t = Instant::now();
            if kind == "fresh" {
                assert_eq!(wasm.describe(&ten, false).await.unwrap().len(), 10);
            } else {
                assert_eq!(live.describe(&ten).await.unwrap(), 10);
            }
            samples.push(t.elapsed());
        }
        let calls = samples.len();
        println!("{kind}: {calls} calls, median {:.1} µs", stats(samples).0);
        return;
    }

    // Twice: the plugin logic alone (synthetic: no I/O, so the call path is what is measured;
    // these rows carry the targets), then the same calls reading and appending real files.
    for synthetic in [true, false] {
        // The rows with absolute targets use the plugin's synthetic mode (no I/O: the call path
        // is what is measured); the file-backed rows read and append real files and carry
        // ratio targets instead.
        let kind = if synthetic {
            " synthetic (no I/O)"
        } else {
            " file-backed"
        };
        let mut ten = group_tags("ten");
        let mut spec = spec_1k("prov");
        if synthetic {
            ten.insert("bench.synthetic".into(), "1".into());
            spec.tags.insert("bench.synthetic".into(), "1".into());
        }
        let target = |t| if synthetic { Some(t) } else { None };
        let file_target = |t| if synthetic { None } else { Some(t) };
        let ten_sdk: Vec<(String, String)> =
            ten.iter().map(|(k, v)| (k.clone(), v.clone())).collect();

        let s = time_calls(n, || async {
            assert_eq!(native.describe(&ten_sdk, false).unwrap().len(), 10)
        })
        .await;
        let (native_d, _) = stats(s);
        report.add(
            "call",
            format!("describe 10{kind} · native (SDK trait, in process) median"),
            native_d,
            "µs",
            None,
        );
        let s = time_calls(n / 2, || async {
            assert_eq!(wasm.describe(&ten, false).await.unwrap().len(), 10)
        })
        .await;
        let (fresh_d, p99) = stats(s);
        report.add(
            "call",
            format!("describe 10{kind} · wasm, fresh sandbox per call median"),
            fresh_d,
            "µs",
            target(("<=", 20.0)),
        );
        report.add(
            "call",
            format!("describe 10{kind} · wasm, fresh sandbox per call p99"),
            p99,
            "µs",
            None,
        );
        let mut s = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            assert_eq!(live.describe(&ten).await.unwrap(), 10);
            s.push(t.elapsed());
        }
        let (live_d, _) = stats(s);
        report.add(
            "call",
            format!("describe 10{kind} · wasm, live instance (call alone) median"),
            live_d,
            "µs",
            target(("<=", 3.0)),
        );
        let s = time_calls(n / 2, || async {
            assert_eq!(rpc.describe(&ten).await, 10);
        })
        .await;
        let (rpc_d, p99) = stats(s);
        report.add(
            "call",
            format!("describe 10{kind} · JSON-RPC over HTTP/unix socket median"),
            rpc_d,
            "µs",
            None,
        );
        report.add(
            "call",
            format!("describe 10{kind} · JSON-RPC p99"),
            p99,
            "µs",
            None,
        );
        report.add(
            "call",
            format!("describe{kind}: JSON-RPC ÷ fresh sandbox"),
            rpc_d / fresh_d,
            "x",
            // With I/O in both, the transport's share shrinks: the sandbox must still beat it.
            Some(if synthetic { (">=", 5.0) } else { (">=", 2.0) }),
        );
        report.add(
            "call",
            format!("describe{kind}: fresh sandbox ÷ native"),
            fresh_d / native_d,
            "x",
            file_target(("<=", 10.0)),
        );

        let sdk = sdk_spec(&spec);
        let s = time_calls(m, || async {
            native.provision(sdk.clone()).unwrap();
        })
        .await;
        let (native_p, _) = stats(s);
        report.add(
            "call",
            format!("provision 1 KiB{kind} · native median"),
            native_p,
            "µs",
            None,
        );
        let s = time_calls(m, || async {
            wasm.provision(&spec).await.unwrap();
        })
        .await;
        let (fresh_p, p99) = stats(s);
        report.add(
            "call",
            format!("provision 1 KiB{kind} · wasm, fresh sandbox median"),
            fresh_p,
            "µs",
            target(("<=", 20.0)),
        );
        report.add(
            "call",
            format!("provision 1 KiB{kind} · wasm, fresh sandbox p99"),
            p99,
            "µs",
            None,
        );
        let mut s = Vec::with_capacity(m);
        for _ in 0..m {
            let t = Instant::now();
            live.provision(&spec).await.unwrap();
            s.push(t.elapsed());
        }
        let (live_p, _) = stats(s);
        report.add(
            "call",
            format!("provision 1 KiB{kind} · wasm, live instance median"),
            live_p,
            "µs",
            target(("<=", 3.0)),
        );
        let rpc_spec = RpcSpec::from_spec(&spec);
        let s = time_calls(m, || async {
            assert!(!rpc.provision(rpc_spec.clone()).await.is_empty());
        })
        .await;
        let (rpc_p, p99) = stats(s);
        report.add(
            "call",
            format!("provision 1 KiB{kind} · JSON-RPC median"),
            rpc_p,
            "µs",
            None,
        );
        report.add(
            "call",
            format!("provision 1 KiB{kind} · JSON-RPC p99"),
            p99,
            "µs",
            None,
        );
        report.add(
            "call",
            format!("provision{kind}: JSON-RPC ÷ fresh sandbox"),
            rpc_p / fresh_p,
            "x",
            Some(if synthetic { (">=", 5.0) } else { (">=", 2.0) }),
        );
        report.add(
            "call",
            format!("provision{kind}: fresh sandbox ÷ native"),
            fresh_p / native_p,
            "x",
            file_target(("<=", 10.0)),
        );
    }
    drop(live);
    // Where the fresh-sandbox time goes: setting up the sandbox and instantiating.
    let s = time_calls(2_000 / scale, || async {
        std::hint::black_box(wasm.live_instance().await.unwrap());
    })
    .await;
    let (setup, _) = stats(s);
    report.add(
        "call",
        "breakdown (synthetic): sandbox state + store + instantiate, median",
        setup,
        "µs",
        None,
    );
    // And the hand-off every fresh call makes, alone: an empty closure run as a call is run
    // (spawn_blocking on a second runtime, block_on there) and its answer awaited here.
    let other = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let handle = other.handle().clone();
    let s = time_calls(n / 2, || {
        let h = handle.clone();
        async move {
            let inner = h.clone();
            std::hint::black_box(h.spawn_blocking(move || inner.block_on(async { 1 })).await)
                .unwrap();
        }
    })
    .await;
    let (handoff, _) = stats(s);
    report.add(
        "call",
        "breakdown: the thread hand-off alone (empty call to a plugin thread and back), median",
        handoff,
        "µs",
        None,
    );
    other.shutdown_background();
    let ten: Tags = [
        ("bench.synthetic".to_string(), "1".to_string()),
        (tags::GROUP.to_string(), "ten".to_string()),
    ]
    .into();

    // Grants: the same fresh-sandbox call with a rich grant file (3 directories, 3 HTTP
    // targets, 8 config values, 4 env vars) against none.
    {
        let gdata = work.path().join("granted");
        let gplugins = gdata.join("plugins");
        std::fs::create_dir_all(&gplugins).unwrap();
        std::fs::copy(
            Path::new(GUEST).join("instance_bench.wasm"),
            gplugins.join("instance-bench.wasm"),
        )
        .unwrap();
        let mut toml = String::new();
        for i in 0..3 {
            let d = gdata.join(format!("dir{i}"));
            std::fs::create_dir_all(&d).unwrap();
            toml.push_str(&format!(
                "[[files]]\nhost = {:?}\nguest = \"/g{i}\"\nmode = \"read-write\"\n",
                d.display().to_string()
            ));
        }
        toml.push_str("[http]\nallow = [\"https://api.example.com\", \"https://*.example.net\", \"http://127.0.0.1:*\"]\n[config]\n");
        for i in 0..8 {
            toml.push_str(&format!("k{i} = \"v{i}\"\n"));
        }
        toml.push_str("[env]\nA = \"1\"\nB = \"2\"\nC = \"3\"\nD = \"4\"\n");
        std::fs::write(gplugins.join("instance-bench.toml"), toml).unwrap();
        let mut gconfig = RegistryConfig::under(&gdata);
        gconfig.cache_dir = config.cache_dir.clone();
        gconfig.keep_resident = config.keep_resident;
        let greg = Registry::load(gconfig).await.unwrap();
        let gp = greg.instance("instance-bench").unwrap();
        let gscratch = gp.scratch_dir().to_path_buf();
        std::fs::create_dir_all(&gscratch).unwrap();
        let p = BenchPlugin::new(&gscratch);
        for _ in 0..10 {
            p.provision(sdk_spec(&spec_1k("ten"))).unwrap();
        }
        // Interleaved, call for call, with the same call on the plugin without grants: the
        // difference of two medians taken minutes apart on this machine is mostly its drift.
        let (mut none, mut rich) = (Vec::new(), Vec::new());
        for i in 0..n / 2 {
            let t = Instant::now();
            assert_eq!(wasm.describe(&ten, false).await.unwrap().len(), 10);
            let plain = t.elapsed();
            let t = Instant::now();
            assert_eq!(gp.describe(&ten, false).await.unwrap().len(), 10);
            if i >= n / 20 {
                none.push(plain);
                rich.push(t.elapsed());
            }
        }
        let (plain, _) = stats(none);
        let (granted, _) = stats(rich);
        report.add(
            "call",
            "describe 10 synthetic · fresh sandbox without grants, interleaved median",
            plain,
            "µs",
            None,
        );
        report.add(
            "call",
            "describe 10 synthetic · fresh sandbox with a rich grant file median",
            granted,
            "µs",
            None,
        );
        report.add(
            "call",
            "grants overhead per call (rich − none)",
            granted - plain,
            "µs",
            Some(("<=", 2.0)),
        );
    }

    load_rows(&mut report, work.path(), quick).await;

    // --- 2. Reconcile at scale.
    eprintln!("reconcile at scale");
    let d = Desired::from_spec(&group_spec("p", 100_000, "1h"));
    let members: Vec<Member> = (0..100_000)
        .map(|i| Member {
            id: format!("i{i}"),
            group: "p".into(),
            logical_id: None,
            config_sha: if i % 10 == 0 {
                "old".into()
            } else {
                d.config_sha.clone()
            },
            created_ms: 1_000 + i as u64,
            index: Some(i),
            health: if i % 97 == 0 {
                Health::Unknown
            } else {
                Health::Healthy
            },
            ..Default::default()
        })
        .collect();
    let plan_runs: Vec<Duration> = (0..runs(21))
        .map(|_| {
            let t = Instant::now();
            let p = plan::plan(&d, &members, now_ms());
            std::hint::black_box(p);
            t.elapsed()
        })
        .collect();
    let (plan_ms, _) = stats(plan_runs);
    report.add(
        "scale",
        "pure plan, 100k instances (10% outdated)",
        plan_ms / 1e3,
        "ms",
        Some(("<=", 50.0)),
    );

    // A new group of 100,000: every step a provision with a fresh index.
    let mut grown = d.clone();
    grown.allocation = infrakit::model::Allocation::Size(100_000);
    let new_runs: Vec<Duration> = (0..runs(5))
        .map(|_| {
            let t = Instant::now();
            let p = plan::plan(&grown, &[], now_ms());
            assert_eq!(p.steps.len(), 100_000);
            t.elapsed()
        })
        .collect();
    let (new_ms, _) = stats(new_runs);
    report.add(
        "scale",
        "pure plan, a new group of 100k (100k provisions)",
        new_ms / 1e3,
        "ms",
        Some(("<=", 50.0)),
    );

    let (tx, _) = tokio::sync::broadcast::channel(100_000);
    let events = Arc::new(Events { tx: tx.clone() });
    let (controller, store) = managed(
        registry.clone(),
        events.clone(),
        Options {
            poll_interval: Duration::from_secs(3600),
            ..Options::default()
        },
    );
    let scratch = registry
        .get("instance-bench")
        .unwrap()
        .scratch_dir()
        .to_path_buf();
    let groups = 1000 / scale;
    let specs: Vec<GroupSpec> = (0..groups)
        .map(|i| group_spec(&format!("g{i}"), 10, "1h"))
        .collect();
    for s in &specs {
        populate(&scratch, s, 10);
    }
    let t = Instant::now();
    let ids: Vec<String> = specs.iter().map(|s| s.id.clone()).collect();
    for s in &specs {
        store
            .commit(
                s,
                Event::now(&s.id, EventKind::GroupCommitted, None, "bench"),
            )
            .await
            .unwrap();
    }
    controller.applied(*store.watch().borrow()).await;
    wait_passes(&controller, &ids, &BTreeMap::new()).await;
    report.add(
        "scale",
        format!("first pass, {groups} groups × 10 (health checks included)"),
        t.elapsed().as_secs_f64() * 1e3,
        "ms",
        None,
    );
    // Steady state: every group wakes for one pass with nothing to do. Health verdicts are
    // cached (CheckInterval 1h), so these passes are describe + plan only.
    let mut passes = Vec::new();
    for _ in 0..runs(15) {
        passes.push(steady_pass(&controller, &specs).await);
    }
    let (p1000, _) = stats(passes);
    report.add(
        "scale",
        format!("steady-state pass, {groups} groups × 10 (health verdicts cached)"),
        p1000 / 1e3,
        "ms",
        Some(("<=", 200.0)),
    );

    // One large group on top, while the groups above are still managed.
    let big = group_spec("big", 10_000 / scale as u32, "1h");
    populate(&scratch, &big, 10_000 / scale);
    let t = Instant::now();
    commit(&controller, &store, &big).await;
    wait_passes(&controller, std::slice::from_ref(&big.id), &BTreeMap::new()).await;
    report.add(
        "scale",
        format!(
            "first pass, 1 group × {} (health checks included)",
            10_000 / scale
        ),
        t.elapsed().as_secs_f64() * 1e3,
        "ms",
        None,
    );
    let mut passes = Vec::new();
    for _ in 0..runs(15) {
        passes.push(steady_pass(&controller, std::slice::from_ref(&big)).await);
    }
    let (pbig, _) = stats(passes);
    report.add(
        "scale",
        format!(
            "steady-state pass, 1 group × {} (health verdicts cached)",
            10_000 / scale
        ),
        pbig / 1e3,
        "ms",
        Some(("<=", 200.0)),
    );
    report.add(
        "scale",
        format!(
            "RSS with {groups} groups × 10 and 1 × {} managed",
            10_000 / scale
        ),
        rss_mb(),
        "MB",
        Some(("<=", 200.0)),
    );
    if let Some(pool) = registry.engine().pooling_allocator_metrics() {
        report.add(
            "scale",
            format!(
                "of which kept resident by {} idle sandbox slots",
                pool.unused_warm_memories()
            ),
            (pool.unused_memory_bytes_resident() + pool.unused_table_bytes_resident()) as f64 / 1e6,
            "MB",
            None,
        );
    }
    controller.shutdown().await;

    // --- 3. Convergence latency.
    eprintln!("convergence latency");
    let count = if quick { 6 } else { 30 };
    for (label, poll) in [
        ("default poll interval (1s)", Duration::from_secs(1)),
        ("poll interval 100ms", Duration::from_millis(100)),
    ] {
        let (controller, store) = managed(
            registry.clone(),
            events.clone(),
            Options {
                poll_interval: poll,
                ..Options::default()
            },
        );
        let spec = group_spec(&format!("lat{}", poll.as_millis()), 5, "10s");
        let mut rx = tx.subscribe();
        commit(&controller, &store, &spec).await;
        wait_passes(
            &controller,
            std::slice::from_ref(&spec.id),
            &BTreeMap::new(),
        )
        .await;
        let mut samples = Vec::new();
        let file = scratch.join(format!("{}.jsonl", spec.id));
        let mut status = controller.watch(&spec.id).unwrap();
        for i in 0..count {
            // Anchor on the end of an idle pass (converged, nothing to do: the next one is a
            // poll interval away), then take an instance away at a phase spread uniformly
            // over the interval, as an operator or a failing machine would, at any moment.
            // Phases near 0 sample the worst case: a loss just after a pass.
            loop {
                status.changed().await.unwrap();
                let s = status.borrow_and_update();
                if s.phase == plan::Phase::Converged && s.current == 5 {
                    break;
                }
            }
            let phase = (i as f64 + 0.5) / count as f64;
            tokio::time::sleep(poll.mul_f64(phase)).await;
            while rx.try_recv().is_ok() {}
            let text = std::fs::read_to_string(&file).unwrap();
            let mut lines: Vec<&str> = text.lines().collect();
            lines.remove(0);
            let tmp = file.with_extension("tmp");
            std::fs::write(&tmp, lines.join("\n") + "\n").unwrap();
            std::fs::rename(&tmp, &file).unwrap();
            let t = Instant::now();
            loop {
                match rx.recv().await {
                    Ok(e) if e.group == spec.id && e.kind == EventKind::InstanceProvisioned => {
                        break;
                    }
                    _ => {}
                }
            }
            samples.push(t.elapsed());
        }
        let worst = samples.iter().max().copied().unwrap_or_default();
        let (med, _) = stats(samples);
        report.add(
            "latency",
            format!("lost instance replaced, {label}, median"),
            med / 1e3,
            "ms",
            None,
        );
        report.add(
            "latency",
            format!("lost instance replaced, {label}, worst of {count}"),
            worst.as_secs_f64() * 1e3,
            "ms",
            // 1 s of poll interval, plus `Health.LostAfter` (200 ms by default: a missing
            // instance is re-listed for that long before it counts as lost, so that a flaky
            // listing never causes a replacement), plus provisioning (a prepare and a provision
            // call) and a pass's observation, with slack for the machine: 1.3 s.
            (poll == Duration::from_secs(1)).then_some(("<=", 1300.0)),
        );
        controller.shutdown().await;
    }
    let (controller, store) = managed(registry.clone(), events.clone(), Options::default());
    let spec = group_spec("hundred", 100, "10s");
    let t = Instant::now();
    commit(&controller, &store, &spec).await;
    wait_passes(
        &controller,
        std::slice::from_ref(&spec.id),
        &BTreeMap::new(),
    )
    .await;
    loop {
        let s = controller.status(&spec.id).unwrap();
        if s.phase == plan::Phase::Converged && s.current == 100 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    report.add(
        "latency",
        "new group of 100 converged (default settings)",
        t.elapsed().as_secs_f64() * 1e3,
        "ms",
        None,
    );
    controller.shutdown().await;

    // --- 6. The controller and the API under real plugin latency and load (issue 9).
    eprintln!("controller and API under load");
    // At the default Parallelism the floor is size / 32 × 100 ms = 3.1 s, above the 3 s
    // target; the target row is at 64, which a user sets in the spec for a cloud API that
    // takes that many calls at once.
    for parallelism in [32, 64] {
        let mut spec = group_spec(
            &format!("slowcloud{parallelism}"),
            1000 / scale as u32,
            "1h",
        );
        spec.properties.instance.properties = json!({"Image": "debian-13", "LatencyMs": 100});
        spec.properties.parallelism = parallelism;
        let (controller, store) = managed(registry.clone(), events.clone(), Options::default());
        let t = Instant::now();
        commit(&controller, &store, &spec).await;
        loop {
            let s = controller.status(&spec.id).unwrap();
            if s.phase == plan::Phase::Converged && s.current == spec.size() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let floor = spec.size() as f64 / parallelism as f64 * 0.1;
        report.add(
            "controller",
            format!(
                "{} instances converged, 100 ms per provision (Parallelism {parallelism}{}; floor {floor:.1} s)",
                spec.size(),
                if parallelism == 32 { ", the default" } else { "" },
            ),
            t.elapsed().as_secs_f64(),
            "s",
            (!quick && parallelism == 64).then_some(("<=", 3.0)),
        );
        controller.shutdown().await;
    }
    api_under_load(&mut report, work.path(), quick).await;
    idle_cpu(&mut report, work.path(), quick).await;
    eprintln!("docker");
    docker_rows(&mut report, work.path(), quick).await;
    eprintln!("aws");
    aws_rows(&mut report, work.path(), quick).await;
    eprintln!("several managers");
    managers(&mut report, work.path(), quick).await;

    report.add(
        "run",
        "benchmark wall time",
        started.elapsed().as_secs_f64(),
        "s",
        None,
    );
    report.print();
    if let Some(path) = json_out {
        std::fs::write(&path, serde_json::to_string_pretty(&report.json()).unwrap()).unwrap();
        println!("wrote {path}");
    }
}

/// A daemon of the "several managers" rows: its own data dir, `instance-file` granted
/// `shared`, and the given store flags.
/// A daemon of the bench, killed when dropped (also when a row's assertion fails).
struct Daemon(std::process::Child);

impl Daemon {
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

fn manager(dir: &Path, shared: &Path, store: &[&str]) -> (Daemon, PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::create_dir_all(shared).unwrap();
    let config = dir.join("infrakit.toml");
    std::fs::write(
        &config,
        format!(
            "[plugins.instance-file]\nconfig = {{ dir = \"/instances\" }}\n\
             [[plugins.instance-file.files]]\nhost = {:?}\nguest = \"/instances\"\nmode = \"read-write\"\n",
            shared.display().to_string()
        ),
    )
    .unwrap();
    let child = Daemon(
        std::process::Command::new(env!("CARGO_BIN_EXE_infrakit"))
            .arg("--data-dir")
            .arg(dir)
            .arg("--config")
            .arg(&config)
            .args(["serve", "--poll-interval", "100ms"])
            .args(store)
            .env("INFRAKIT_LOG", "error")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let socket = dir.join("infrakit.sock");
    let t = Instant::now();
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(t.elapsed() < Duration::from_secs(60), "daemon not ready");
        std::thread::sleep(Duration::from_millis(10));
    }
    (child, socket)
}

fn json_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                .count()
        })
        .unwrap_or(0)
}

fn leads(socket: &Path) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::os::unix::net::UnixStream::connect(socket) else {
        return false;
    };
    let _ = write!(
        stream,
        "GET /v1/status HTTP/1.1\r\nhost: infrakit\r\nconnection: close\r\n\r\n"
    );
    let mut raw = String::new();
    let _ = stream.read_to_string(&mut raw);
    raw.contains("\"role\":\"leader\"")
}

/// Several managers on etcd: commit latency through etcd against redb, and failover time
/// (the leader SIGKILLed at the moment an instance is lost → the new leader's replacement is
/// there) at lease TTLs of 2 s and 10 s.
async fn managers(report: &mut Report, work: &Path, quick: bool) {
    let Some(etcd) = support::etcd::Etcd::start(1) else {
        eprintln!("note: etcd not installed; the several-managers rows are skipped");
        return;
    };
    let dir = work.join("managers");
    let shared = dir.join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    let spec = |id: &str| {
        json!({"ID": id, "Properties": {"Allocation": {"Size": 3},
            "Instance": {"Plugin": "instance-file", "Properties": {"Prefix": id}},
            "Flavor": {"Plugin": "flavor-vanilla", "Properties": {}},
            "Health": {"CheckInterval": "100ms"}}})
        .to_string()
    };
    let runs = if quick { 10 } else { 50 };

    // Commit latency, one daemon each, the same spec committed again and again.
    let url = etcd.url();
    let (mut redb, redb_socket) = manager(&dir.join("redb"), &shared.join("r"), &[]);
    let (mut on_etcd, etcd_socket) = manager(
        &dir.join("etcd"),
        &shared.join("e"),
        &["--store", &url, "--store-prefix", "/bench-commit/"],
    );
    for socket in [&redb_socket, &etcd_socket] {
        assert_eq!(http_unix(socket, "POST", "/v1/groups", &spec("c")).0, 200);
    }
    let on_redb = median_ms(&redb_socket, runs, "POST", "/v1/groups", &spec("c"));
    let through_etcd = median_ms(&etcd_socket, runs, "POST", "/v1/groups", &spec("c"));
    report.add("managers", "commit on redb, median", on_redb, "ms", None);
    report.add(
        "managers",
        "commit on etcd, median",
        through_etcd,
        "ms",
        None,
    );
    report.add(
        "managers",
        "commit: etcd ÷ redb",
        through_etcd / on_redb,
        "x",
        None,
    );
    redb.kill();
    on_etcd.kill();

    for ttl in [2u64, 10] {
        let prefix = format!("/bench-failover-{ttl}/");
        let instances = shared.join(format!("ttl{ttl}"));
        std::fs::create_dir_all(&instances).unwrap();
        let ttl_flag = format!("{ttl}s");
        let flags = [
            "--store",
            url.as_str(),
            "--store-prefix",
            prefix.as_str(),
            "--lease-ttl",
            ttl_flag.as_str(),
        ];
        let mut daemons: Vec<(Daemon, PathBuf)> = (0..2)
            .map(|i| manager(&dir.join(format!("ttl{ttl}-{i}")), &instances, &flags))
            .collect();
        let t = Instant::now();
        let leader = loop {
            if let Some(i) = daemons.iter().position(|(_, s)| leads(s)) {
                break i;
            }
            assert!(t.elapsed() < Duration::from_secs(60), "no leader");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(
            http_unix(&daemons[leader].1, "POST", "/v1/groups", &spec("f")).0,
            200
        );
        let t = Instant::now();
        while json_files(&instances) < 3 {
            assert!(t.elapsed() < Duration::from_secs(60), "not converged");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Listed by the leader before one is lost (a never-listed one counts as there).
        tokio::time::sleep(Duration::from_millis(500)).await;
        let victim = std::fs::read_dir(&instances)
            .unwrap()
            .flatten()
            .find(|e| e.path().extension().is_some_and(|x| x == "json"))
            .unwrap()
            .path();
        daemons[leader].0.kill();
        let killed = Instant::now();
        std::fs::remove_file(victim).unwrap();
        while json_files(&instances) < 3 {
            assert!(
                killed.elapsed() < Duration::from_secs(ttl * 3 + 10),
                "no failover"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        report.add(
            "managers",
            format!("failover at TTL {ttl}s: leader SIGKILL → the new leader's first provision"),
            killed.elapsed().as_secs_f64() * 1e3,
            "ms",
            Some(("<=", (ttl * 1000 + 2000) as f64)),
        );
        drop(daemons);
    }
}

/// The Python example built by componentize-py (`INFRAKIT_COMPONENTIZE_PY`, or on the PATH),
/// or `None` when the tool is not there.
fn python_example(work: &Path) -> Option<PathBuf> {
    let tool =
        std::env::var("INFRAKIT_COMPONENTIZE_PY").unwrap_or_else(|_| "componentize-py".into());
    let found = std::process::Command::new(&tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("note: componentize-py not found; the Python example's load rows are skipped");
        return None;
    }
    let out = work.join("py-flavor.wasm");
    support::tools::build_python_example(&tool, &out);
    Some(out)
}

/// A component's first load (compiled into an empty cache) and its load from the cache, for
/// `instance-file` and the Python example: what a daemon's first pickup, `plugin install` and a
/// daemon's start pay. A large component's first load is baseline code (Winch); `plugin
/// install` and the daemon's background compile make the optimised code. For the Python
/// example, one `healthy` call on each.
async fn load_rows(report: &mut Report, work: &Path, quick: bool) {
    eprintln!("component load");
    let mut files = vec![(
        "instance-file (Rust)",
        Path::new(GUEST).join("instance_file.wasm"),
    )];
    if let Some(py) = python_example(work) {
        files.push(("py-flavor (Python, componentize-py)", py));
    }
    for (i, (name, file)) in files.into_iter().enumerate() {
        let python = name.starts_with("py-");
        let size = bytesize::ByteSize(std::fs::metadata(&file).unwrap().len());
        let registry = |tag: &str| {
            let data = work.join(format!("load-{i}-{tag}"));
            let mut config = RegistryConfig::under(&data);
            config.cache_dir = Some(data.join("cache"));
            config.plugins_dir = Some(data.join("plugins"));
            (Registry::empty(config).unwrap(), data)
        };
        // The first load as the daemon makes it: baseline code for a large component.
        let (tiered, tiered_data) = registry("tiered");
        let first = tiered.trial_load(&file, true).await.unwrap();
        assert!(!first.cached, "{name}: the cache was empty");
        report.add(
            "start-up",
            format!(
                "{name}, {size}: first load, compiled ({} code)",
                first.tier.as_str()
            ),
            first.compile.as_secs_f64() * 1e3,
            "ms",
            (python && !quick).then_some(("<=", 5000.0)),
        );
        // The optimised compile (`plugin install`, the daemon's background compile).
        let (optimized, data) = registry("optimized");
        if python {
            let opt = optimized.trial_load(&file, false).await.unwrap();
            assert!(!opt.cached);
            report.add(
                "start-up",
                format!("{name}: optimised compile (install, or the daemon in the background)"),
                opt.compile.as_secs_f64() * 1e3,
                "ms",
                None,
            );
        } else {
            optimized.trial_load(&file, false).await.unwrap();
        }
        let t = Instant::now();
        let again = optimized.trial_load(&file, false).await.unwrap();
        let cached = t.elapsed();
        assert!(again.cached, "{name}: the second load reads the cache");
        report.add(
            "start-up",
            format!("{name}: load from the compiled cache (with its metadata call)"),
            cached.as_secs_f64() * 1e3,
            "ms",
            None,
        );
        if python {
            // One `healthy` call on each code, the same plugin from the same caches.
            let plugins = data.join("plugins");
            std::fs::create_dir_all(&plugins).unwrap();
            std::fs::copy(&file, plugins.join("py-flavor.wasm")).unwrap();
            let instance: infrakit::plugin::Description =
                serde_json::from_value(json!({"ID": "i-1", "Tags": {"uptime": "45"}})).unwrap();
            let props = json!({"MinUptime": 30});
            let mut medians = Vec::new();
            for baseline in [true, false] {
                let mut config = RegistryConfig::under(&data);
                config.plugins_dir = Some(plugins.clone());
                // The baseline cache of `tiered` is another directory: point at it.
                if baseline {
                    config.cache_dir = Some(tiered_data.join("cache"));
                }
                config.baseline_above = baseline.then_some(0);
                let registry = Registry::load_named(config, "py-flavor").await.unwrap();
                let flavor = registry.flavor("py-flavor").unwrap();
                let runs = if quick { 3 } else { 20 };
                let samples: Vec<Duration> = {
                    let mut v = Vec::new();
                    for _ in 0..runs {
                        let t = Instant::now();
                        assert_eq!(
                            flavor.healthy(&props, &instance).await.unwrap(),
                            Health::Healthy
                        );
                        v.push(t.elapsed());
                    }
                    v
                };
                medians.push(stats(samples).0 / 1e3);
            }
            report.add(
                "start-up",
                format!("{name}: one healthy call (fresh sandbox) on baseline code, median"),
                medians[0],
                "ms",
                None,
            );
            report.add(
                "start-up",
                format!("{name}: one healthy call (fresh sandbox) on optimised code, median"),
                medians[1],
                "ms",
                None,
            );
        }
    }
}

/// The real daemon at idle with many converged groups on `instance-file` and `flavor-vanilla`,
/// at the defaults (1 s poll, 10 s health checks): the CPU it uses, in CPU-seconds a minute
/// (user + system, from `/proc`).
async fn idle_cpu(report: &mut Report, work: &Path, quick: bool) {
    let (groups, size, window) = if quick {
        (50, 4, Duration::from_secs(5))
    } else {
        (1000, 10, Duration::from_secs(30))
    };
    let dir = work.join("idle");
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("infrakit.sock");
    let mut daemon = Daemon(
        std::process::Command::new(env!("CARGO_BIN_EXE_infrakit"))
            .args(["--data-dir", dir.to_str().unwrap(), "serve"])
            .env("INFRAKIT_LOG", "error")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let t = Instant::now();
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(t.elapsed() < Duration::from_secs(60), "daemon not ready");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // From the first commit: each commit waits for the controller to take it up, so with the
    // groups converging meanwhile most of the convergence happens between commits.
    let converging = Instant::now();
    for i in 0..groups {
        let spec = json!({"ID": format!("idle{i}"), "Properties": {
            "Allocation": {"Size": size},
            "Instance": {"Plugin": "instance-file", "Properties": {}},
            "Flavor": {"Plugin": "flavor-vanilla", "Properties": {}}}})
        .to_string();
        assert_eq!(http_unix(&socket, "POST", "/v1/groups", &spec).0, 200);
    }
    let t = Instant::now();
    loop {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_infrakit"))
            .args([
                "--data-dir",
                dir.to_str().unwrap(),
                "group",
                "ls",
                "-o",
                "json",
            ])
            .output()
            .unwrap();
        let listed: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let converged = listed.as_array().is_some_and(|a| {
            a.len() == groups
                && a.iter()
                    .all(|g| g["status"]["phase"] == "converged" && g["status"]["current"] == size)
        });
        if converged {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(600),
            "{groups} groups did not converge"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let converge = converging.elapsed();
    // Past the first health checks of the last instances.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pid = daemon.0.id();
    let before = cpu_seconds(pid);
    tokio::time::sleep(window).await;
    let used = cpu_seconds(pid) - before;
    daemon.kill();
    report.add(
        "controller",
        format!("{groups} groups × {size} committed one by one and converged (instance-file) in"),
        converge.as_secs_f64(),
        "s",
        None,
    );
    report.add(
        "controller",
        format!("idle CPU, {groups} groups × {size} converged (1 s poll, 10 s health checks)"),
        used / window.as_secs_f64() * 60.0,
        "CPU-s/min",
        (!quick).then_some(("<=", 6.0)),
    );
}

/// User + system CPU time of a process so far, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces, so split after its `)`):
    // utime and stime are the 12th and 13th.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    let hz: f64 = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0);
    ticks as f64 / hz
}

/// One HTTP/1.1 request on the daemon's unix socket; its status and how long it took.
fn http_unix(socket: &Path, method: &str, path: &str, body: &str) -> (u16, Duration) {
    use std::io::{Read, Write};
    let t = Instant::now();
    let mut stream = std::os::unix::net::UnixStream::connect(socket).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nhost: infrakit\r\nconnection: close\r\ncontent-length: {}\r\ncontent-type: application/json\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let took = t.elapsed();
    let status = String::from_utf8_lossy(&raw)
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, took)
}

fn median_ms(socket: &Path, n: usize, method: &str, path: &str, body: &str) -> f64 {
    let samples: Vec<Duration> = (0..n)
        .map(|_| {
            let (status, took) = http_unix(socket, method, path, body);
            assert_eq!(status, 200, "{method} {path}");
            took
        })
        .collect();
    stats(samples).0 / 1e3
}

/// The real daemon: `status` idle, with 200 groups × 5 converged, and next to 4 plugins that
/// loop until their CPU limit; commit latency with the 200 groups.
async fn api_under_load(report: &mut Report, work: &Path, quick: bool) {
    let dir = work.join("api-load");
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::copy(
        Path::new(GUEST).join("fixture_misbehave.wasm"),
        plugins.join("fixture-misbehave.wasm"),
    )
    .unwrap();
    std::fs::write(
        plugins.join("fixture-misbehave.toml"),
        "[limits]\ncpu = \"2s\"\n",
    )
    .unwrap();
    let socket = dir.join("infrakit.sock");
    let mut daemon = std::process::Command::new(env!("CARGO_BIN_EXE_infrakit"))
        .args([
            "--data-dir",
            dir.to_str().unwrap(),
            "serve",
            "--poll-interval",
            "1s",
        ])
        .env("INFRAKIT_LOG", "error")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let group = |id: &str, size: u32, instance: Value| {
        json!({"ID": id, "Properties": {"Allocation": {"Size": size},
            "Instance": instance,
            "Flavor": {"Plugin": "flavor-vanilla", "Properties": {}},
            "Health": {"CheckInterval": "10s"}}})
        .to_string()
    };
    let file = |id: &str| group(id, 5, json!({"Plugin": "instance-file", "Properties": {}}));
    let t = Instant::now();
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(t.elapsed() < Duration::from_secs(60), "daemon not ready");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The first commit waits for the built-ins to load.
    assert_eq!(http_unix(&socket, "POST", "/v1/groups", &file("g0")).0, 200);
    let runs = if quick { 10 } else { 50 };
    let idle = median_ms(&socket, runs, "GET", "/v1/status", "");
    report.add("api", "status, idle, median", idle, "ms", None);

    let n = if quick { 20 } else { 200 };
    for i in 1..n {
        let (status, _) = http_unix(&socket, "POST", "/v1/groups", &file(&format!("g{i}")));
        assert_eq!(status, 200);
    }
    let t = Instant::now();
    loop {
        let (_, _) = http_unix(&socket, "GET", "/v1/status", "");
        let text = std::process::Command::new(env!("CARGO_BIN_EXE_infrakit"))
            .args([
                "--data-dir",
                dir.to_str().unwrap(),
                "group",
                "ls",
                "-o",
                "json",
            ])
            .output()
            .unwrap();
        let groups: Value = serde_json::from_slice(&text.stdout).unwrap_or(Value::Null);
        let converged = groups
            .as_array()
            .is_some_and(|a| a.len() == n && a.iter().all(|g| g["status"]["phase"] == "converged"));
        if converged {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "{n} groups did not converge"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let status = median_ms(&socket, runs, "GET", "/v1/status", "");
    report.add(
        "api",
        format!("status with {n} groups × 5 converged, median"),
        status,
        "ms",
        Some(("<=", 10.0)),
    );
    let commit = median_ms(&socket, runs / 2, "POST", "/v1/groups", &file("g1"));
    report.add(
        "api",
        format!("commit (unchanged spec) with {n} groups × 5, median"),
        commit,
        "ms",
        Some(("<=", 50.0)),
    );

    for i in 0..4 {
        let looping = group(
            &format!("spin{i}"),
            1,
            json!({"Plugin": "fixture-misbehave", "Properties": {"Do": "loop"}}),
        );
        assert_eq!(http_unix(&socket, "POST", "/v1/groups", &looping).0, 200);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let busy = median_ms(&socket, runs, "GET", "/v1/status", "");
    report.add(
        "api",
        "status while 4 plugins loop until their CPU limit, median",
        busy,
        "ms",
        None,
    );
    report.add(
        "api",
        "status: next to 4 looping plugins ÷ without them",
        busy / status,
        "x",
        Some(("<=", 2.0)),
    );
    let _ = daemon.kill();
    let _ = daemon.wait();
}

/// Provision (create + start) of one container through `instance-docker`, with the example's
/// grants checking every request, against `docker run -d` from the shell; the same image,
/// alternating, so both see the same engine.
async fn docker_rows(report: &mut Report, work: &Path, quick: bool) {
    use support::docker;
    if docker::engine().is_none() {
        return;
    }
    let image = docker::image();
    let data = work.join("docker");
    let mut config = RegistryConfig::under(&data);
    let grants = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/docker/infrakit.toml");
    config.builtin_grants = infrakit::config::Config::load(&grants).unwrap().plugins;
    let registry = Registry::load(config).await.unwrap();
    let plugin = registry.instance("instance-docker").unwrap();
    let label = format!("infrakit-bench={}", std::process::id());
    let _cleanup = docker::Cleanup(vec![label.clone()]);
    let (key, value) = label.split_once('=').unwrap();
    let spec = InstanceSpec {
        properties: json!({"Image": image, "Cmd": ["sleep", "600"], "StopTimeout": 1}),
        tags: [(key.to_string(), value.to_string())].into(),
        ..Default::default()
    };
    let n = if quick { 3 } else { 15 };
    let (mut ours, mut shell) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let t = Instant::now();
        plugin.provision(&spec).await.unwrap();
        ours.push(t.elapsed());
        let t = Instant::now();
        docker::docker(&["run", "-d", "--label", &label, image, "sleep", "600"]);
        shell.push(t.elapsed());
    }
    let (ours, _) = stats(ours);
    let (shell, _) = stats(shell);
    report.add(
        "docker",
        "provision one container (create + start) via instance-docker, median",
        ours / 1000.0,
        "ms",
        None,
    );
    report.add(
        "docker",
        "`docker run -d` from the shell, median",
        shell / 1000.0,
        "ms",
        None,
    );
    report.add(
        "docker",
        "instance-docker ÷ docker run -d",
        ours / shell,
        "x",
        None,
    );
}

/// `describe` of 1,000 EC2 instances, 100 a page, through `instance-aws` (every page signed by the
/// host) against boto3's paginator, both against the same moto server.
async fn aws_rows(report: &mut Report, work: &Path, quick: bool) {
    let Some(moto) = support::moto::Moto::start(work, false) else {
        return;
    };
    let n = if quick { 200 } else { 1000 };
    moto.boto(&format!(
        r#"
ec2.run_instances(ImageId="ami-12c6146b", InstanceType="t3.nano", MinCount={n}, MaxCount={n},
    TagSpecifications=[{{"ResourceType": "instance", "Tags": [{{"Key": "infrakit.group", "Value": "bench"}}]}}])
"#
    ));
    let data = work.join("aws");
    std::fs::create_dir_all(&data).unwrap();
    let credentials = data.join("credentials");
    std::fs::write(
        &credentials,
        "[default]\naws_access_key_id = AKIDBENCH\naws_secret_access_key = bench\n",
    )
    .unwrap();
    let text = format!(
        "{}credentials_file = {:?}\n",
        moto.config("default", 100),
        credentials.display().to_string()
    );
    let mut config = RegistryConfig::under(&data);
    config.builtin_grants = infrakit::config::Config::parse(&text, &data.join("infrakit.toml"))
        .unwrap()
        .plugins;
    let registry = Registry::load(config).await.unwrap();
    let plugin = registry.instance("instance-aws").unwrap();
    let filter: Tags = [("infrakit.group".to_string(), "bench".to_string())].into();
    let runs = if quick { 3 } else { 7 };
    let mut ours = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let found = plugin.describe(&filter, false).await.unwrap();
        ours.push(t.elapsed());
        assert_eq!(found.len(), n);
    }
    let out = moto.boto(&format!(
        r#"
import time
times = []
for _ in range({runs}):
    t = time.perf_counter()
    found = 0
    for page in ec2.get_paginator("describe_instances").paginate(
            Filters=[{{"Name": "tag:infrakit.group", "Values": ["bench"]}},
                     {{"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]}}],
            PaginationConfig={{"PageSize": 100}}):
        found += sum(len(r["Instances"]) for r in page["Reservations"])
    times.append(time.perf_counter() - t)
    assert found == {n}, found
times.sort()
print(times[len(times) // 2])
"#
    ));
    let boto = out.trim().parse::<f64>().unwrap() * 1000.0;
    let (ours, _) = stats(ours);
    let ours = ours / 1000.0;
    report.add(
        "aws",
        format!(
            "describe {n} instances, 100 a page, via instance-aws (signed by the host), median"
        ),
        ours,
        "ms",
        None,
    );
    report.add(
        "aws",
        format!("describe {n} instances, 100 a page, via boto3, median"),
        boto,
        "ms",
        None,
    );
    report.add("aws", "instance-aws ÷ boto3", ours / boto, "x", None);
}
