//! One contract, two backends: every case runs against the embedded redb store and against a
//! real etcd on 127.0.0.1 (each case under its own key prefix), so that the daemon behaves the
//! same whichever holds its state.

use std::sync::Arc;
use std::time::Duration;

use infrakit::event::{Event, EventKind};
use infrakit::spec::GroupSpec;
use infrakit::store::{EmbeddedStore, Error, EtcdOptions, EtcdStore, Lifecycle, Store};

use crate::support::etcd::Etcd;

fn spec(id: &str, size: u32) -> GroupSpec {
    GroupSpec::parse(
        &format!(
            r#"{{"ID": "{id}", "Properties": {{"Allocation": {{"Size": {size}}},
            "Instance": {{"Plugin": "instance-file"}}, "Flavor": {{"Plugin": "flavor-vanilla"}}}}}}"#
        ),
        "test",
        false,
    )
    .unwrap()
}

fn event(id: &str, message: &str) -> Event {
    Event::now(id, EventKind::GroupCommitted, None, message)
}

enum Backend {
    Redb(tempfile::TempDir),
    Etcd(Etcd),
}

impl Backend {
    /// A fresh, empty store for one case (a second call with the same name opens the same
    /// state on etcd: another manager's connection).
    async fn store(&self, case: &str) -> Arc<dyn Store> {
        self.store_keeping(case, infrakit::store::REVISIONS_KEPT)
            .await
    }

    /// [`Backend::store`] keeping `kept` revisions per group.
    async fn store_keeping(&self, case: &str, kept: u64) -> Arc<dyn Store> {
        match self {
            Backend::Redb(dir) => Arc::new(
                EmbeddedStore::open(&dir.path().join(format!("{case}.redb")))
                    .unwrap()
                    .with_revisions_kept(kept),
            ),
            Backend::Etcd(etcd) => EtcdStore::connect(EtcdOptions {
                revisions_kept: kept,
                ..EtcdOptions::from_url(&etcd.url(), &format!("/test/{case}/")).unwrap()
            })
            .await
            .unwrap(),
        }
    }
}

async fn commits_keep_history_and_events_in_order(b: &Backend) {
    let store = b.store("commits").await;
    store.commit(&spec("a", 1), event("a", "1")).await.unwrap();
    store.commit(&spec("a", 2), event("a", "2")).await.unwrap();
    let (b_group, e) = store.commit(&spec("b", 1), event("b", "3")).await.unwrap();
    assert_eq!((b_group.revision, e.seq), (1, 3));

    let a = store.group("a").await.unwrap().unwrap();
    assert_eq!(
        (a.revision, a.spec.size(), a.lifecycle),
        (2, 2, Lifecycle::Managed)
    );
    assert!(store.group("zz").await.unwrap().is_none());
    let history = store.history("a").await.unwrap();
    assert_eq!(
        history
            .iter()
            .map(|r| (r.revision, r.cause.as_str()))
            .collect::<Vec<_>>(),
        [(1, "commit"), (2, "commit")]
    );
    let ids: Vec<String> = store
        .groups()
        .await
        .unwrap()
        .into_iter()
        .map(|g| g.spec.id)
        .collect();
    assert_eq!(ids, ["a", "b"]);

    let events = store.events(0, None, 100).await.unwrap();
    assert_eq!(
        events
            .iter()
            .map(|e| (e.seq, e.message.as_str()))
            .collect::<Vec<_>>(),
        [(1, "1"), (2, "2"), (3, "3")]
    );
    assert_eq!(store.events(1, Some("b"), 100).await.unwrap().len(), 1);
    assert_eq!(store.events(0, None, 2).await.unwrap().len(), 2);
    assert_eq!(store.last_event().await.unwrap(), 3);
    let appended = store.append(event("-", "plugin loaded")).await.unwrap();
    assert_eq!(appended.seq, 4);
    assert_eq!(store.last_event().await.unwrap(), 4);
}

async fn rollback_returns_to_the_previous_configuration(b: &Backend) {
    let store = b.store("rollback").await;
    assert!(matches!(
        store.rollback("x", None).await,
        Err(Error::UnknownGroup(_))
    ));
    store.commit(&spec("a", 1), event("a", "")).await.unwrap();
    assert!(matches!(
        store.rollback("a", None).await,
        Err(Error::NoEarlierRevision(_))
    ));
    store.commit(&spec("a", 3), event("a", "")).await.unwrap();
    let (back, e) = store.rollback("a", None).await.unwrap();
    assert_eq!((back.revision, back.spec.size()), (3, 1));
    assert!(
        e.message.contains("rolled back to revision 1"),
        "{}",
        e.message
    );
    let (again, _) = store.rollback("a", None).await.unwrap();
    assert_eq!(
        (again.revision, again.spec.size()),
        (4, 3),
        "undo of the undo"
    );
    let history = store.history("a").await.unwrap();
    assert!(history[2].cause.contains("rollback to revision 1"));
    assert!(history[3].cause.contains("rollback to revision 2"));

    // Back to a revision named, further than the previous one.
    store.commit(&spec("a", 5), event("a", "")).await.unwrap();
    let (named, _) = store.rollback("a", Some(1)).await.unwrap();
    assert_eq!((named.revision, named.spec.size()), (6, 1));
    for n in [6, 99] {
        let err = store.rollback("a", Some(n)).await.unwrap_err();
        assert!(
            matches!(&err, Error::NoSuchRevision { revision, .. } if *revision == n),
            "{err}"
        );
    }
    assert_eq!(store.group("a").await.unwrap().unwrap().revision, 6);
}

async fn destroy_then_forget_keeps_history(b: &Backend) {
    let store = b.store("destroy").await;
    store.commit(&spec("a", 1), event("a", "")).await.unwrap();
    let (g, _) = store.mark_destroying("a", event("a", "")).await.unwrap();
    assert_eq!(g.lifecycle, Lifecycle::Destroying);
    assert_eq!(
        store.group("a").await.unwrap().unwrap().lifecycle,
        Lifecycle::Destroying
    );
    assert!(matches!(
        store.commit(&spec("a", 2), event("a", "")).await,
        Err(Error::BeingDestroyed(_))
    ));
    assert!(matches!(
        store.rollback("a", None).await,
        Err(Error::BeingDestroyed(_))
    ));
    assert!(matches!(
        store.mark_destroying("nope", event("nope", "")).await,
        Err(Error::UnknownGroup(_))
    ));
    store.forget("a", event("a", "gone")).await.unwrap();
    assert!(store.group("a").await.unwrap().is_none());
    assert!(store.groups().await.unwrap().is_empty());
    assert_eq!(store.history("a").await.unwrap().len(), 1);
    assert!(matches!(
        store.forget("a", event("a", "")).await,
        Err(Error::UnknownGroup(_))
    ));
    // A new life of the same id goes on numbering.
    let (again, _) = store.commit(&spec("a", 5), event("a", "")).await.unwrap();
    assert_eq!(again.revision, 2);
}

async fn history_keeps_the_newest_revisions_and_one_after_forget(b: &Backend) {
    let store = b.store_keeping("retention", 3).await;
    for size in 1..=5 {
        store
            .commit(&spec("r", size), event("r", ""))
            .await
            .unwrap();
    }
    let revisions =
        |h: Vec<infrakit::store::Revision>| -> Vec<u64> { h.iter().map(|r| r.revision).collect() };
    assert_eq!(revisions(store.history("r").await.unwrap()), [3, 4, 5]);
    assert!(matches!(
        store.rollback("r", Some(1)).await,
        Err(Error::NoSuchRevision { .. })
    ));
    let (back, _) = store.rollback("r", Some(3)).await.unwrap();
    assert_eq!((back.revision, back.spec.size()), (6, 3));
    assert_eq!(revisions(store.history("r").await.unwrap()), [4, 5, 6]);
    store.forget("r", event("r", "gone")).await.unwrap();
    assert_eq!(revisions(store.history("r").await.unwrap()), [6]);
    let (again, _) = store.commit(&spec("r", 1), event("r", "")).await.unwrap();
    assert_eq!(again.revision, 7);
}

async fn a_writer_sees_its_generation_at_once_and_events_do_not_count(b: &Backend) {
    let store = b.store("watch").await;
    let mut watch = store.watch();
    let before = *watch.borrow_and_update();
    store.commit(&spec("a", 1), event("a", "")).await.unwrap();
    let after_commit = *watch.borrow_and_update();
    assert!(after_commit > before, "{after_commit} > {before}");
    store.append(event("a", "only an event")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        *watch.borrow_and_update(),
        after_commit,
        "an event is not desired state"
    );
    store.mark_destroying("a", event("a", "")).await.unwrap();
    let after_destroy = *watch.borrow_and_update();
    assert!(after_destroy > after_commit);
    store.forget("a", event("a", "")).await.unwrap();
    assert!(*watch.borrow_and_update() > after_destroy);
}

/// Writers racing on one group (on etcd, through two connections, as two managers): every
/// commit gets its own revision and its own event sequence number, and none is lost.
async fn concurrent_commits_lose_nothing_and_share_no_number(b: &Backend) {
    let first = b.store("race").await;
    let second = match b {
        Backend::Redb(_) => first.clone(), // redb refuses a second open of one file
        Backend::Etcd(_) => b.store("race").await,
    };
    let mut writers = Vec::new();
    for w in 0..8u32 {
        let store = if w % 2 == 0 {
            first.clone()
        } else {
            second.clone()
        };
        writers.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..5 {
                let (g, e) = store
                    .commit(&spec("g", 1 + w * 10 + i), event("g", "race"))
                    .await
                    .unwrap();
                seqs.push((g.revision, e.seq));
            }
            seqs
        }));
    }
    let mut revisions = Vec::new();
    let mut seqs = Vec::new();
    for w in writers {
        for (r, s) in w.await.unwrap() {
            revisions.push(r);
            seqs.push(s);
        }
    }
    revisions.sort();
    seqs.sort();
    assert_eq!(revisions, (1..=40).collect::<Vec<u64>>());
    assert_eq!(seqs, (1..=40).collect::<Vec<u64>>());
    assert_eq!(first.history("g").await.unwrap().len(), 40);
    assert_eq!(second.group("g").await.unwrap().unwrap().revision, 40);
    assert_eq!(first.events(0, None, 1000).await.unwrap().len(), 40);
}

async fn events_page_in_order_with_a_group_filter(b: &Backend) {
    let store = b.store("events").await;
    for i in 0..2500u32 {
        let group = if i % 10 == 0 { "x" } else { "y" };
        store.append(event(group, &i.to_string())).await.unwrap();
    }
    let all = store.events(0, None, 100_000).await.unwrap();
    assert_eq!(all.len(), 2500);
    assert!(all.windows(2).all(|w| w[1].seq == w[0].seq + 1));
    let some = store.events(1000, None, 10).await.unwrap();
    assert_eq!(
        some.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1001..=1010).collect::<Vec<u64>>()
    );
    let x = store.events(0, Some("x"), 100_000).await.unwrap();
    assert_eq!(x.len(), 250);
    assert!(x.iter().all(|e| e.group == "x"));
    assert_eq!(store.events(2500, None, 10).await.unwrap().len(), 0);
}

async fn contract(b: &Backend) {
    commits_keep_history_and_events_in_order(b).await;
    rollback_returns_to_the_previous_configuration(b).await;
    destroy_then_forget_keeps_history(b).await;
    history_keeps_the_newest_revisions_and_one_after_forget(b).await;
    a_writer_sees_its_generation_at_once_and_events_do_not_count(b).await;
    concurrent_commits_lose_nothing_and_share_no_number(b).await;
    events_page_in_order_with_a_group_filter(b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_contract_holds_on_redb() {
    contract(&Backend::Redb(tempfile::tempdir().unwrap())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_contract_holds_on_etcd() {
    let Some(etcd) = Etcd::start(1) else { return };
    contract(&Backend::Etcd(etcd)).await;
}

/// What only a shared store shows: another manager's write reaches this one's watch, and
/// prefixes keep deployments apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_managers_commit_reaches_the_watch_and_prefixes_are_apart() {
    let Some(etcd) = Etcd::start(1) else { return };
    let b = Backend::Etcd(etcd);
    let here = b.store("shared").await;
    let there = b.store("shared").await;
    let elsewhere = b.store("other").await;
    let mut watch = here.watch();
    watch.borrow_and_update();
    there.commit(&spec("a", 3), event("a", "")).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), watch.changed())
        .await
        .expect("the watch sees another connection's commit")
        .unwrap();
    assert_eq!(here.group("a").await.unwrap().unwrap().spec.size(), 3);
    assert!(elsewhere.groups().await.unwrap().is_empty());
    assert_eq!(elsewhere.last_event().await.unwrap(), 0);
}

/// A store whose etcd is away fails each call within its timeout, naming the endpoints; it
/// does not hang, and it works again once etcd is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_etcd_fails_fast_with_the_endpoint_named_and_recovers() {
    let Some(mut etcd) = Etcd::start(1) else {
        return;
    };
    let mut options = EtcdOptions::from_url(&etcd.url(), "/test/away/").unwrap();
    options.timeout = Duration::from_secs(1);
    let store = EtcdStore::connect(options.clone()).await.unwrap();
    store.commit(&spec("a", 1), event("a", "")).await.unwrap();

    etcd.kill_member(0);
    let started = std::time::Instant::now();
    let err = store
        .commit(&spec("a", 2), event("a", ""))
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    let message = infrakit::error_chain(&err);
    let port = etcd.members[0].client_port.to_string();
    assert!(message.contains(&port), "names the endpoint: {message}");
    assert!(EtcdStore::connect(options).await.is_err());

    etcd.start_member(0);
    etcd.wait_healthy(Duration::from_secs(30));
    let mut ok = None;
    for _ in 0..50 {
        if let Ok(g) = store.group("a").await {
            ok = g;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        ok.expect("reads work again").revision,
        1,
        "nothing was half-written"
    );
    store.commit(&spec("a", 2), event("a", "")).await.unwrap();
}

/// The leader's writes are fenced by etcd itself: they hold only while its election key is
/// the one it won with. A deposed leader's late write is refused, and nothing of it lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fenced_writes_hold_only_while_the_election_key_is_the_same() {
    let Some(etcd) = Etcd::start(1) else { return };
    let store = EtcdStore::connect(EtcdOptions::from_url(&etcd.url(), "/test/fence/").unwrap())
        .await
        .unwrap();
    let mut raw = store.client();
    let key = b"/test/fence/leader/1".to_vec();
    let won = raw.put(key.clone(), "me", None).await.unwrap();
    let revision = won.header().unwrap().revision();
    let held = Arc::new(std::sync::Mutex::new(Some((key.clone(), revision))));
    let guard: infrakit::store::Guard = {
        let held = held.clone();
        Arc::new(move || held.lock().unwrap().clone())
    };
    let fenced = store.fenced(guard);
    fenced.commit(&spec("a", 1), event("a", "")).await.unwrap();
    fenced.append(event("a", "while leading")).await.unwrap();

    // Another term: the key is gone and made again (a new leader's key has a new revision).
    raw.delete(key.clone(), None).await.unwrap();
    raw.put(key.clone(), "someone else", None).await.unwrap();
    let refused = fenced.append(event("a", "late")).await.unwrap_err();
    assert!(matches!(refused, Error::NotLeader { .. }), "{refused}");
    assert!(matches!(
        fenced.forget("a", event("a", "late")).await,
        Err(Error::NotLeader { .. })
    ));
    // Not leading at all: refused before asking etcd.
    *held.lock().unwrap() = None;
    assert!(matches!(
        fenced.append(event("a", "late")).await,
        Err(Error::NotLeader { .. })
    ));
    // The unfenced store (the API of any manager) still writes.
    store.append(event("a", "from the API")).await.unwrap();
    let messages: Vec<String> = store
        .events(0, None, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.message)
        .collect();
    assert_eq!(messages, ["", "while leading", "from the API"]);
    assert!(
        store.group("a").await.unwrap().is_some(),
        "the late forget did not land"
    );
}

/// `etcds://` against an etcd that requires client certificates (certificates made here by a
/// CA of the test's own): with the CA and a client certificate the store works; without the
/// client certificate, etcd refuses, and the error names the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_over_mutual_tls_works_and_refuses_a_client_without_a_certificate() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let Some(binary) = crate::support::etcd::etcd_binary() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, text: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_pem = ca_params.self_signed(&ca_key).unwrap().pem();
    let ca = Issuer::new(ca_params, ca_key);
    let issue = |name: &str, sans: Vec<String>| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(sans)
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        (
            file(&format!("{name}.pem"), cert.pem()),
            file(&format!("{name}.key"), key.serialize_pem()),
        )
    };
    let (server_cert, server_key) = issue("server", vec!["127.0.0.1".into()]);
    let (client_cert, client_key) = issue("client", vec!["infrakit".into()]);
    let ca_file = file("ca.pem", ca_pem);

    let (client_port, peer_port) = (
        crate::support::etcd::free_port(),
        crate::support::etcd::free_port(),
    );
    let client_url = format!("https://127.0.0.1:{client_port}");
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    let mut cmd = std::process::Command::new(binary);
    cmd.args(["--name", "tls", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--listen-client-urls", &client_url])
        .args(["--advertise-client-urls", &client_url])
        .args(["--listen-peer-urls", &peer_url])
        .args(["--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("tls={peer_url}")])
        .arg("--cert-file")
        .arg(&server_cert)
        .arg("--key-file")
        .arg(&server_key)
        .arg("--trusted-ca-file")
        .arg(&ca_file)
        .arg("--client-cert-auth");
    let etcd = crate::support::process::Process::spawn(cmd, dir.path().join("etcd.log"), "etcd");

    let url = format!("etcds://127.0.0.1:{client_port}");
    let mut options = EtcdOptions::from_url(&url, "/tls/").unwrap();
    options.timeout = Duration::from_secs(2);
    let mut with_cert = options.clone();
    with_cert.tls = Some(infrakit::store::TlsFiles {
        ca: Some(ca_file.clone()),
        identity: Some((client_cert, client_key)),
    });
    let started = std::time::Instant::now();
    let store = loop {
        match EtcdStore::connect(with_cert.clone()).await {
            Ok(s) => break s,
            Err(e) => assert!(
                started.elapsed() < Duration::from_secs(30),
                "etcd over TLS: {}\n{}",
                infrakit::error_chain(&e),
                etcd.output()
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    store.commit(&spec("a", 1), event("a", "")).await.unwrap();
    assert_eq!(store.group("a").await.unwrap().unwrap().revision, 1);

    let mut no_cert = options;
    no_cert.tls = Some(infrakit::store::TlsFiles {
        ca: Some(ca_file),
        identity: None,
    });
    let refused = match EtcdStore::connect(no_cert).await {
        Ok(s) => s.group("a").await.map(|_| ()),
        Err(e) => Err(e),
    };
    let message = infrakit::error_chain(&refused.expect_err("a client without a certificate"));
    assert!(message.contains(&client_port.to_string()), "{message}");
}

/// An etcd with authentication on: the store works as a user with the right password, and a
/// wrong password or no user is refused at connect, naming the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_with_authentication_takes_a_user_and_refuses_a_wrong_password() {
    let Some(etcd) = Etcd::start(1) else { return };
    let options = EtcdOptions::from_url(&etcd.url(), "/auth/").unwrap();
    let admin = EtcdStore::connect(options.clone()).await.unwrap();
    let mut raw = admin.client();
    raw.user_add("root", "right", None).await.unwrap();
    raw.user_grant_role("root", "root").await.unwrap();
    raw.auth_enable().await.unwrap();

    let mut user = options.clone();
    user.user = Some(("root".into(), "right".into()));
    let store = EtcdStore::connect(user.clone()).await.unwrap();
    store.commit(&spec("a", 1), event("a", "")).await.unwrap();
    assert_eq!(store.groups().await.unwrap().len(), 1);

    let port = etcd.members[0].client_port.to_string();
    user.user = Some(("root".into(), "wrong".into()));
    for (what, attempt) in [("a wrong password", user), ("no user", options)] {
        let err = match EtcdStore::connect(attempt).await {
            Ok(_) => panic!("{what} was let in"),
            Err(e) => infrakit::error_chain(&e),
        };
        assert!(err.contains(&port), "{what}: {err}");
    }
}
