//! `flavor-zookeeper`: the members of a ZooKeeper ensemble, kept as pets.
//!
//! Each logical id of the group's `Allocation.LogicalIDs` is one member; its `myid` is its place
//! in that list (the first is 1). `prepare` gives each member an init script that creates its
//! directory (`DataDir/LOGICAL_ID`), writes `myid` and a `zoo.cfg` naming the whole ensemble,
//! and then runs the server in the foreground, so the instance plugin's process *is* the
//! member. Members share one address by port offsets: member `n` listens on `ClientPort + n - 1`
//! for clients, and likewise for the peer, election and AdminServer ports.
//!
//! `healthy` asks the member's AdminServer (`/commands/ruok`, then `/commands/stat`): a leader
//! or follower is healthy; a member still electing, or not answering yet, is `unknown`; one that
//! answers as standalone, outside the ensemble, is unhealthy. A member that stays `unknown` (a
//! JVM wedged before it serves) is not condemned by this flavor; its process is watched by the
//! instance plugin. The AdminServer's address must be
//! granted (`[http] allow = ["http://127.0.0.1:*"]`). ZooKeeper members leave an ensemble by
//! stopping, so `drain` does nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use infrakit_sdk::{
    Allocation, Capability, Description, Error, FlavorPlugin, Health, Index, InstanceSpec,
    Properties, Result, http,
};
use serde::Deserialize;

/// Debian's ZooKeeper and the Jetty jars its AdminServer needs (`zookeeper`, `libjetty9-java`,
/// `libservlet-api-java`); `/etc/zookeeper/conf` for its logging configuration.
pub const DEBIAN_CLASSPATH: &[&str] = &[
    "/etc/zookeeper/conf",
    "/usr/share/java/zookeeper.jar",
    "/usr/share/java/jetty9-server.jar",
    "/usr/share/java/jetty9-servlet.jar",
    "/usr/share/java/jetty9-util.jar",
    "/usr/share/java/jetty9-io.jar",
    "/usr/share/java/jetty9-security.jar",
    "/usr/share/java/jetty9-http.jar",
    "/usr/share/java/servlet-api.jar",
];

/// Tag holding a member's `myid`.
pub const TAG_MYID: &str = "zookeeper-myid";
/// Tag holding a member's client address (`host:port`).
pub const TAG_CLIENT: &str = "zookeeper-client";
/// Tag holding a member's AdminServer address (`host:port`).
pub const TAG_ADMIN: &str = "zookeeper-admin";

/// Properties of the ensemble.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "PascalCase")]
pub struct ZkProperties {
    /// Host directory holding one directory per member (data, `myid`, `zoo.cfg`).
    pub data_dir: String,
    /// The address every member binds and is reached at.
    pub host: String,
    /// First client port (member n: + n - 1).
    pub client_port: u16,
    /// First quorum (peer) port.
    pub peer_port: u16,
    /// First leader-election port.
    pub election_port: u16,
    /// First AdminServer (HTTP) port.
    pub admin_port: u16,
    /// `tickTime` in milliseconds.
    pub tick_time: u32,
    /// `initLimit` in ticks.
    pub init_limit: u32,
    /// `syncLimit` in ticks.
    pub sync_limit: u32,
    /// Further `zoo.cfg` settings, written as given.
    pub config: BTreeMap<String, String>,
    /// The Java launcher.
    pub java: String,
    /// JVM options (heap size...).
    pub jvm_flags: Vec<String>,
    /// The class path; default: Debian's packages.
    pub classpath: Vec<String>,
    /// Accept an even number of members (which tolerates no more failures than one fewer).
    pub allow_even_size: bool,
    /// How long a health check waits for the AdminServer.
    pub timeout_ms: u64,
}

impl Default for ZkProperties {
    fn default() -> Self {
        ZkProperties {
            data_dir: "/var/lib/infrakit/zookeeper".into(),
            host: "127.0.0.1".into(),
            client_port: 2181,
            peer_port: 2888,
            election_port: 3888,
            admin_port: 8080,
            tick_time: 2000,
            init_limit: 10,
            sync_limit: 5,
            config: BTreeMap::new(),
            java: "/usr/bin/java".into(),
            jvm_flags: vec!["-Xmx256m".into()],
            classpath: DEBIAN_CLASSPATH.iter().map(|s| s.to_string()).collect(),
            allow_even_size: false,
            timeout_ms: 2000,
        }
    }
}

fn one_line(field: &str, value: &str) -> Result<()> {
    if value.contains(['\n', '\r', '\0']) {
        return Err(Error::invalid(format!(
            "properties at `{field}`: {value:?} spans lines"
        )));
    }
    Ok(())
}

impl ZkProperties {
    fn parse(properties: &Properties) -> Result<Self> {
        let p: ZkProperties = properties.parse()?;
        for (field, path) in [("DataDir", &p.data_dir), ("Java", &p.java)] {
            if !path.starts_with('/') {
                return Err(Error::invalid(format!(
                    "properties at `{field}`: {path:?} is not an absolute path"
                )));
            }
        }
        one_line("DataDir", &p.data_dir)?;
        one_line("Host", &p.host)?;
        for (k, v) in &p.config {
            one_line("Config", k)?;
            one_line(&format!("Config.{k}"), v)?;
            if k.contains('=') || k.trim().is_empty() {
                return Err(Error::invalid(format!(
                    "properties at `Config`: {k:?} is not a setting name"
                )));
            }
        }
        for f in p.jvm_flags.iter().chain(&p.classpath) {
            one_line("JvmFlags/Classpath", f)?;
        }
        if p.tick_time == 0 || p.init_limit == 0 || p.sync_limit == 0 {
            return Err(Error::invalid(
                "properties at `TickTime`/`InitLimit`/`SyncLimit`: must be positive",
            ));
        }
        Ok(p)
    }

    fn ports(&self, myid: u32) -> Result<[u16; 4]> {
        let mut out = [0; 4];
        for (i, (field, base)) in [
            ("ClientPort", self.client_port),
            ("PeerPort", self.peer_port),
            ("ElectionPort", self.election_port),
            ("AdminPort", self.admin_port),
        ]
        .into_iter()
        .enumerate()
        {
            out[i] = u16::try_from(u32::from(base) + myid - 1).map_err(|_| {
                Error::invalid(format!(
                    "properties at `{field}`: {base} + {} members passes port 65535",
                    myid
                ))
            })?;
        }
        Ok(out)
    }
}

/// The members: the allocation's logical ids, which must be usable as directory names.
fn members(allocation: &Allocation, allow_even: bool) -> Result<&[String]> {
    let Allocation::LogicalIds(ids) = allocation else {
        return Err(Error::invalid(
            "a ZooKeeper ensemble is a set of pets: give `Allocation.LogicalIDs` (e.g. [zk1, zk2, zk3]), not a `Size`",
        ));
    };
    if ids.is_empty() || ids.len() > 255 {
        return Err(Error::invalid(format!(
            "`Allocation.LogicalIDs`: {} members; an ensemble has 1 to 255",
            ids.len()
        )));
    }
    if ids.len() % 2 == 0 && !allow_even {
        return Err(Error::invalid(format!(
            "`Allocation.LogicalIDs`: {} members; an even-sized ensemble survives no more \
             failures than one member fewer. Use an odd number, or set `AllowEvenSize: true`",
            ids.len()
        )));
    }
    if let Some(bad) = ids.iter().find(|id| {
        id.is_empty()
            || id.starts_with('.')
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    }) {
        return Err(Error::invalid(format!(
            "`Allocation.LogicalIDs`: {bad:?} is not usable as a directory name ([A-Za-z0-9._-])"
        )));
    }
    Ok(ids)
}

/// Quotes a word for `sh`.
fn sh(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// The `zoo.cfg` of member `myid`.
pub fn zoo_cfg(p: &ZkProperties, dir: &str, myid: u32, size: u32) -> Result<String> {
    let [client, _, _, admin] = p.ports(myid)?;
    let mut cfg = format!(
        "tickTime={}\ninitLimit={}\nsyncLimit={}\ndataDir={dir}/data\nclientPort={client}\n\
         clientPortAddress={host}\nadmin.serverPort={admin}\nadmin.serverAddress={host}\n\
         4lw.commands.whitelist=srvr,stat,mntr,ruok,conf\n",
        p.tick_time,
        p.init_limit,
        p.sync_limit,
        host = p.host
    );
    for n in 1..=size {
        let [_, peer, election, _] = p.ports(n)?;
        cfg.push_str(&format!("server.{n}={}:{peer}:{election}\n", p.host));
    }
    for (k, v) in &p.config {
        cfg.push_str(&format!("{k}={v}\n"));
    }
    Ok(cfg)
}

/// The init script of member `myid`: directories, `myid`, `zoo.cfg`, then the server.
pub fn init_script(p: &ZkProperties, logical_id: &str, myid: u32, size: u32) -> Result<String> {
    let dir = format!("{}/{logical_id}", p.data_dir.trim_end_matches('/'));
    let cfg = zoo_cfg(p, &dir, myid, size)?;
    let mut java = vec![sh(&p.java)];
    java.extend(p.jvm_flags.iter().map(|f| sh(f)));
    java.push("-cp".into());
    java.push(sh(&p.classpath.join(":")));
    java.push("org.apache.zookeeper.server.quorum.QuorumPeerMain".into());
    java.push(r#""$dir/zoo.cfg""#.into());
    Ok(format!(
        "set -e\ndir={dir}\nmkdir -p \"$dir/data\"\nprintf '%s\\n' {myid} > \"$dir/data/myid\"\n\
         cat > \"$dir/zoo.cfg\" <<'INFRAKIT_ZOO_CFG'\n{cfg}INFRAKIT_ZOO_CFG\nexec {java}\n",
        dir = sh(&dir),
        java = java.join(" ")
    ))
}

/// What the AdminServer's `stat` says about the member's place in the ensemble.
pub fn judge_stat(stat: &serde_json::Value, size: usize) -> (Health, String) {
    if !stat["error"].is_null() {
        // "not currently serving requests": between elections, or still syncing.
        return (Health::Unknown, format!("not serving: {}", stat["error"]));
    }
    let state = stat["server_stats"]["server_state"]
        .as_str()
        .unwrap_or_default();
    match state {
        "leader" | "follower" | "observer" => (Health::Healthy, state.to_string()),
        "standalone" if size <= 1 => (Health::Healthy, state.to_string()),
        "standalone" => (
            Health::Unhealthy,
            "runs standalone, outside the ensemble".to_string(),
        ),
        other => (
            Health::Unknown,
            format!("state {other:?} (electing a leader)"),
        ),
    }
}

/// The flavor. It keeps no state of its own.
#[derive(Debug, Default)]
pub struct ZooKeeperFlavor;

impl FlavorPlugin for ZooKeeperFlavor {
    fn capabilities(&self) -> Vec<Capability> {
        vec![Capability::Http("http://127.0.0.1:*".to_string())]
    }

    fn validate(&self, properties: &Properties, allocation: &Allocation) -> Result<()> {
        let p = ZkProperties::parse(properties)?;
        let ids = members(allocation, p.allow_even_size)?;
        p.ports(ids.len() as u32).map(|_| ())
    }

    fn prepare(
        &self,
        properties: &Properties,
        spec: InstanceSpec,
        allocation: &Allocation,
        _index: &Index,
    ) -> Result<InstanceSpec> {
        let p = ZkProperties::parse(properties)?;
        let ids = members(allocation, p.allow_even_size)?;
        let lid = spec.logical_id.clone().ok_or_else(|| {
            Error::invalid("a ZooKeeper member needs a logical id (the group must use LogicalIDs)")
        })?;
        let myid = ids
            .iter()
            .position(|id| *id == lid)
            .map(|i| i as u32 + 1)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "logical id {lid:?} is not in Allocation.LogicalIDs"
                ))
            })?;
        let [client, _, _, admin] = p.ports(myid)?;
        let script = init_script(&p, &lid, myid, ids.len() as u32)?;
        let mut spec = spec
            .with_tag(TAG_MYID, myid.to_string())
            .with_tag(TAG_CLIENT, format!("{}:{client}", p.host))
            .with_tag(TAG_ADMIN, format!("{}:{admin}", p.host))
            .with_tag("zookeeper-ensemble-size", ids.len().to_string());
        if !spec.init.is_empty() && !spec.init.ends_with('\n') {
            spec.init.push('\n');
        }
        spec.init.push_str(&script);
        Ok(spec)
    }

    fn healthy(&self, properties: &Properties, instance: &Description) -> Result<Health> {
        let p = ZkProperties::parse(properties)?;
        let admin = instance.tag(TAG_ADMIN).ok_or_else(|| {
            Error::invalid(format!(
                "instance {} has no {TAG_ADMIN} tag: it was not prepared by this flavor",
                instance.id
            ))
        })?;
        let size: usize = instance
            .tag("zookeeper-ensemble-size")
            .and_then(|s| s.parse().ok())
            .unwrap_or(3);
        let timeout = Duration::from_millis(p.timeout_ms);
        let ask = |command: &str| {
            http::get(format!("http://{admin}/commands/{command}"))
                .timeout(timeout)
                .send()
        };
        // The AdminServer answers errors (a member not serving yet) with a JSON body and a
        // 5xx status: the body says more than the status.
        let answer = ask("ruok").and_then(|_| ask("stat"));
        let stat: serde_json::Value = match answer {
            Ok(r) => match r.json() {
                Ok(v) => v,
                Err(e) => {
                    infrakit_sdk::debug!("{}: stat answered {}: {e}", instance.id, r.status);
                    return Ok(Health::Unknown);
                }
            },
            Err(e @ http::HttpError::Denied { .. }) => {
                // The grant is wrong, not the member.
                return Err(Error::other(e.to_string()));
            }
            Err(e) => {
                infrakit_sdk::debug!("{} not answering yet: {e}", instance.id);
                return Ok(Health::Unknown);
            }
        };
        let (health, why) = judge_stat(&stat, size);
        infrakit_sdk::debug!("{}: {why}", instance.id);
        Ok(health)
    }

    fn drain(&self, _properties: &Properties, instance: &Description) -> Result<()> {
        infrakit_sdk::info!(
            "{}: nothing to drain; a ZooKeeper member leaves the ensemble by stopping",
            instance.id
        );
        Ok(())
    }
}

infrakit_sdk::export_flavor!(ZooKeeperFlavor);

#[cfg(test)]
mod tests {
    use super::*;

    fn pets(ids: &[&str]) -> Allocation {
        Allocation::LogicalIds(ids.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn validate_wants_an_odd_set_of_pets() {
        let f = ZooKeeperFlavor;
        let props = Properties::new("{}");
        let err = f.validate(&props, &Allocation::Size(3)).unwrap_err();
        assert!(err.to_string().contains("LogicalIDs"), "{err}");
        let err = f.validate(&props, &pets(&["a", "b"])).unwrap_err();
        assert!(err.to_string().contains("AllowEvenSize"), "{err}");
        f.validate(
            &Properties::new(r#"{"AllowEvenSize": true}"#),
            &pets(&["a", "b"]),
        )
        .unwrap();
        f.validate(&props, &pets(&["a", "b", "c"])).unwrap();
        let err = f.validate(&props, &pets(&["../x"])).unwrap_err();
        assert!(err.to_string().contains("directory name"), "{err}");
        let err = f
            .validate(
                &Properties::new(r#"{"ClientPort": 65535}"#),
                &pets(&["a", "b", "c"]),
            )
            .unwrap_err();
        assert!(err.to_string().contains("ClientPort"), "{err}");
        let err = f
            .validate(
                &Properties::new(r#"{"Config": {"a": "1\nserver.9=evil"}}"#),
                &pets(&["a"]),
            )
            .unwrap_err();
        assert!(err.to_string().contains("spans lines"), "{err}");
    }

    #[test]
    fn prepare_gives_each_member_its_myid_ports_and_whole_ensemble() {
        let f = ZooKeeperFlavor;
        let props = Properties::new(
            r#"{"DataDir": "/srv/it's zk", "ClientPort": 12181, "AdminPort": 18080}"#,
        );
        let spec = InstanceSpec {
            logical_id: Some("zk2".into()),
            ..Default::default()
        };
        let alloc = pets(&["zk1", "zk2", "zk3"]);
        let index = Index {
            group: "zk".into(),
            sequence: 1,
        };
        let out = f.prepare(&props, spec, &alloc, &index).unwrap();
        assert_eq!(out.tag(TAG_MYID), Some("2"));
        assert_eq!(out.tag(TAG_CLIENT), Some("127.0.0.1:12182"));
        assert_eq!(out.tag(TAG_ADMIN), Some("127.0.0.1:18081"));
        assert!(
            out.init.contains("dir='/srv/it'\\''s zk/zk2'"),
            "{}",
            out.init
        );
        assert!(out.init.contains("printf '%s\\n' 2 >"), "{}", out.init);
        for n in 1..=3 {
            assert!(
                out.init
                    .contains(&format!("server.{n}=127.0.0.1:{}:{}", 2887 + n, 3887 + n)),
                "{}",
                out.init
            );
        }
        assert!(
            out.init.ends_with("QuorumPeerMain \"$dir/zoo.cfg\"\n"),
            "{}",
            out.init
        );

        let stranger = InstanceSpec {
            logical_id: Some("zk9".into()),
            ..Default::default()
        };
        assert!(f.prepare(&props, stranger, &alloc, &index).is_err());
    }

    #[test]
    fn stat_answers_are_judged_by_quorum_state() {
        let stat = |state: &str| serde_json::json!({"server_stats": {"server_state": state}, "error": null});
        assert_eq!(judge_stat(&stat("leader"), 3).0, Health::Healthy);
        assert_eq!(judge_stat(&stat("follower"), 3).0, Health::Healthy);
        assert_eq!(judge_stat(&stat("looking"), 3).0, Health::Unknown);
        assert_eq!(judge_stat(&stat("standalone"), 3).0, Health::Unhealthy);
        assert_eq!(judge_stat(&stat("standalone"), 1).0, Health::Healthy);
        let err = serde_json::json!({"error": "This ZooKeeper instance is not currently serving requests"});
        assert_eq!(judge_stat(&err, 3).0, Health::Unknown);
    }
}
