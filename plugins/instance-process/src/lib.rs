//! `instance-process`: every instance is a local process.
//!
//! The process is started through the host's `process` capability, so only executables the
//! operator granted can run. It runs `Cmd` (argv) or, without one, the flavor's init script
//! through `Shell` (default `/bin/sh -c`). Each instance has a directory under the plugin's
//! `dir` (`/data/instances/ID`) holding its record (tags, process identity) and its
//! `stdout.log`/`stderr.log`; that directory is the process's working directory unless `Dir`
//! says otherwise.
//!
//! `describe` reports live processes only: one that exited is a lost instance, and the group
//! replaces it. Its record is kept as `exited.json` beside its logs for a post-mortem. After a
//! restart of the daemon the processes still run and are found again from their records; a pid
//! reused by another program is not taken for an instance (the host compares start times).

use std::collections::BTreeMap;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use infrakit_sdk::process::{self, Command, ProcessId};
use infrakit_sdk::{
    Capability, Description, DestroyContext, Error, InstancePlugin, InstanceSpec, Properties,
    Result, Tags,
};
use serde::{Deserialize, Serialize};

/// Where instance directories live when no `dir` is configured.
pub const DEFAULT_DIR: &str = "/data";
/// `PATH` of a process whose `Env` sets none.
pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// Records of exited instances kept for a post-mortem; older ones are removed.
const EXITED_KEPT: usize = 16;
/// Longest `StopTimeout`: a destroy must finish inside a plugin call's wall-clock limit.
const MAX_STOP_TIMEOUT: u64 = 20;

/// Instance properties.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields, rename_all = "PascalCase")]
pub struct ProcessProperties {
    /// The command: an absolute, granted executable and its arguments. Without it the flavor's
    /// init script runs through `Shell`.
    pub cmd: Option<Vec<String>>,
    /// The shell that runs the init script (`SHELL -c INIT`); default `/bin/sh`.
    pub shell: Option<String>,
    /// The whole environment (the daemon's is not inherited); `PATH` defaults to
    /// [`DEFAULT_PATH`]. `INFRAKIT_INSTANCE_ID`, `INFRAKIT_LOGICAL_ID` and `INFRAKIT_INIT` are
    /// always set.
    pub env: BTreeMap<String, String>,
    /// Working directory (a guest path in a granted directory); default the instance's own.
    pub dir: Option<String>,
    /// Prefix of instance ids: 1-32 of `[a-z0-9-]`; default `proc`.
    pub prefix: Option<String>,
    /// Seconds between SIGTERM and SIGKILL on destroy; default 10, at most 20.
    pub stop_timeout: Option<u64>,
}

fn absolute(field: &str, path: &str) -> Result<()> {
    if path.starts_with('/') {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "properties at `{field}`: {path:?} is not an absolute path"
        )))
    }
}

impl ProcessProperties {
    fn parse(properties: &Properties) -> Result<Self> {
        let props: ProcessProperties = properties.parse()?;
        if let Some(cmd) = &props.cmd {
            let program = cmd
                .first()
                .ok_or_else(|| Error::invalid("properties at `Cmd`: empty; give argv"))?;
            absolute("Cmd[0]", program)?;
        }
        if let Some(shell) = &props.shell {
            absolute("Shell", shell)?;
        }
        if let Some(dir) = &props.dir {
            absolute("Dir", dir)?;
        }
        if let Some(k) = props
            .env
            .keys()
            .find(|k| k.is_empty() || k.contains(['=', '\0']))
        {
            return Err(Error::invalid(format!(
                "properties at `Env`: {k:?} is not a variable name"
            )));
        }
        if let Some(prefix) = &props.prefix {
            let ok = !prefix.is_empty()
                && prefix.len() <= 32
                && prefix
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !ok {
                return Err(Error::invalid(format!(
                    "properties at `Prefix`: {prefix:?} is not 1-32 of [a-z0-9-]"
                )));
            }
        }
        if props.stop_timeout.is_some_and(|t| t > MAX_STOP_TIMEOUT) {
            return Err(Error::invalid(format!(
                "properties at `StopTimeout`: at most {MAX_STOP_TIMEOUT} seconds"
            )));
        }
        Ok(props)
    }

    fn argv(&self, init: &str) -> Vec<String> {
        match &self.cmd {
            Some(cmd) => cmd.clone(),
            None => vec![
                self.shell.clone().unwrap_or_else(|| "/bin/sh".to_string()),
                "-c".to_string(),
                init.to_string(),
            ],
        }
    }
}

/// One instance, as stored in its directory.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Record {
    #[serde(rename = "ID")]
    id: String,
    #[serde(rename = "LogicalID", default, skip_serializing_if = "Option::is_none")]
    logical_id: Option<String>,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    #[serde(default)]
    properties: serde_json::Value,
    process: ProcessId,
    /// Unix time in milliseconds.
    #[serde(default)]
    created: u64,
}

const RECORD: &str = "instance.json";
const EXITED: &str = "exited.json";

/// The plugin: where its instance directories are.
#[derive(Debug)]
pub struct ProcessPlugin {
    dir: PathBuf,
}

impl Default for ProcessPlugin {
    fn default() -> Self {
        let dir = infrakit_sdk::config("dir").unwrap_or_else(|| DEFAULT_DIR.to_string());
        ProcessPlugin::new(dir)
    }
}

fn now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

fn valid_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "instance id {id:?}: expected letters, digits, `-` or `_`"
        )))
    }
}

impl ProcessPlugin {
    /// A plugin keeping its instances under `dir` (a guest path, or a host path natively).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        ProcessPlugin {
            dir: dir.into().join("instances"),
        }
    }

    fn instance_dir(&self, id: &str) -> Result<PathBuf> {
        valid_id(id)?;
        Ok(self.dir.join(id))
    }

    fn read(path: &Path) -> Result<Record> {
        let text = fs::read_to_string(path)?;
        serde_json::from_str(&text)
            .map_err(|e| Error::other(format!("{}: not an instance record: {e}", path.display())))
    }

    fn write(dir: &Path, record: &Record) -> Result<()> {
        let tmp = dir.join(".instance.json.tmp");
        let text = serde_json::to_string_pretty(record).map_err(|e| Error::other(e.to_string()))?;
        fs::write(&tmp, text)?;
        fs::rename(&tmp, dir.join(RECORD))?;
        Ok(())
    }

    fn guest(path: &Path) -> String {
        path.to_string_lossy().into_owned()
    }

    /// Keeps the newest [`EXITED_KEPT`] directories of exited instances.
    fn prune_exited(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        let mut exited: Vec<(u64, PathBuf)> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.join(EXITED).exists() && !p.join(RECORD).exists())
            .map(|p| {
                let created = Self::read(&p.join(EXITED)).map_or(0, |r| r.created);
                (created, p)
            })
            .collect();
        if exited.len() <= EXITED_KEPT {
            return;
        }
        exited.sort();
        for (_, p) in &exited[..exited.len() - EXITED_KEPT] {
            let _ = fs::remove_dir_all(p);
        }
    }
}

impl InstancePlugin for ProcessPlugin {
    fn capabilities(&self) -> Vec<Capability> {
        vec![
            Capability::Files {
                guest_path: DEFAULT_DIR.to_string(),
                writable: true,
            },
            Capability::Config("dir".to_string()),
        ]
    }

    fn validate(&self, properties: &Properties) -> Result<()> {
        ProcessProperties::parse(properties).map(|_| ())
    }

    fn provision(&self, spec: InstanceSpec) -> Result<String> {
        let props = ProcessProperties::parse(&spec.properties)?;
        let argv = props.argv(&spec.init);
        if props.cmd.is_none() && spec.init.trim().is_empty() {
            return Err(Error::invalid(
                "nothing to run: no `Cmd` in the properties and no init script from the flavor",
            ));
        }
        fs::create_dir_all(&self.dir)?;
        self.prune_exited();
        let prefix = props.prefix.as_deref().unwrap_or("proc");
        let (id, dir) = (0..16u128)
            .find_map(|attempt| {
                let id = format!(
                    "{prefix}-{:x}",
                    (now().as_nanos() + attempt) & 0xffff_ffff_ffff
                );
                let dir = self.dir.join(&id);
                // create_dir fails atomically when the name is taken.
                fs::create_dir(&dir).ok().map(|()| (id, dir))
            })
            .ok_or_else(|| Error::Transient("no free instance id".into()))?;
        let mut env = props.env.clone();
        env.entry("PATH".into())
            .or_insert_with(|| DEFAULT_PATH.to_string());
        env.insert("INFRAKIT_INSTANCE_ID".into(), id.clone());
        env.insert(
            "INFRAKIT_LOGICAL_ID".into(),
            spec.logical_id.clone().unwrap_or_default(),
        );
        env.insert("INFRAKIT_INIT".into(), spec.init.clone());
        let workdir = props.dir.clone().unwrap_or_else(|| Self::guest(&dir));
        let command = Command::new(&argv[0])
            .args(argv[1..].iter().cloned())
            .dir(workdir)
            .stdout(Self::guest(&dir.join("stdout.log")))
            .stderr(Self::guest(&dir.join("stderr.log")));
        let command = env.into_iter().fold(command, |c, (k, v)| c.env(k, v));
        let started = match command.spawn() {
            Ok(started) => started,
            Err(e) => {
                let _ = fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let properties =
            serde_json::from_str(spec.properties.as_str()).unwrap_or(serde_json::Value::Null);
        let record = Record {
            id: id.clone(),
            logical_id: spec.logical_id,
            tags: spec.tags.into_iter().collect(),
            properties,
            process: started,
            created: now().as_millis() as u64,
        };
        if let Err(e) = Self::write(&dir, &record) {
            // An instance nobody can find again must not keep running.
            let _ = process::stop(started, Duration::from_secs(1));
            let _ = fs::remove_dir_all(&dir);
            return Err(e);
        }
        infrakit_sdk::info!("provisioned {id} as pid {}", started.pid);
        Ok(id)
    }

    fn label(&self, id: &str, labels: Tags) -> Result<()> {
        let dir = self.instance_dir(id)?;
        let mut record = Self::read(&dir.join(RECORD)).map_err(|e| match e {
            Error::NotFound(_) => Error::NotFound(format!("instance {id}")),
            e => e,
        })?;
        record.tags.extend(labels);
        Self::write(&dir, &record)
    }

    fn destroy(&self, id: &str, context: DestroyContext) -> Result<()> {
        let dir = self.instance_dir(id)?;
        let record = match Self::read(&dir.join(RECORD)) {
            Ok(r) => r,
            Err(Error::NotFound(_)) if dir.join(EXITED).exists() => {
                // Already exited: only its directory is left.
                fs::remove_dir_all(&dir)?;
                return Ok(());
            }
            Err(Error::NotFound(_)) => return Err(Error::NotFound(format!("instance {id}"))),
            Err(e) => return Err(e),
        };
        let grace = ProcessProperties::deserialize(&record.properties)
            .ok()
            .and_then(|p| p.stop_timeout)
            .unwrap_or(10)
            .min(MAX_STOP_TIMEOUT);
        process::stop(record.process, Duration::from_secs(grace))?;
        fs::remove_dir_all(&dir)?;
        infrakit_sdk::info!("destroyed {id} ({context:?})");
        Ok(())
    }

    fn describe(&self, tags: &Tags, include_properties: bool) -> Result<Vec<Description>> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::other(format!("{}: {e}", self.dir.display()))),
        };
        let mut records = Vec::new();
        for entry in entries {
            let dir = entry?.path();
            let record = match Self::read(&dir.join(RECORD)) {
                Ok(r) => r,
                Err(Error::NotFound(_)) => continue,
                Err(e) => {
                    infrakit_sdk::warn!("skipping {}: {e}", dir.display());
                    continue;
                }
            };
            if !process::alive(record.process) {
                infrakit_sdk::info!(
                    "instance {} (pid {}) has exited; its logs stay in {}",
                    record.id,
                    record.process.pid,
                    dir.display()
                );
                let _ = fs::rename(dir.join(RECORD), dir.join(EXITED));
                continue;
            }
            records.push(record);
        }
        records.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
        Ok(records
            .into_iter()
            .map(|r| Description {
                id: r.id,
                logical_id: r.logical_id,
                tags: r.tags.into_iter().collect(),
                properties: include_properties.then(|| Properties::new(r.properties.to_string())),
            })
            .filter(|d| d.matches(tags))
            .collect())
    }
}

infrakit_sdk::export_instance!(ProcessPlugin);

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(props: &str, init: &str) -> InstanceSpec {
        InstanceSpec {
            properties: Properties::new(props),
            tags: vec![("group".into(), "g".into())],
            init: init.into(),
            logical_id: Some("zk1".into()),
            ..Default::default()
        }
    }

    #[test]
    fn a_process_instance_lives_until_destroyed_and_a_dead_one_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        let plugin = ProcessPlugin::new(dir.path());
        let id = plugin
            .provision(spec(
                r#"{"StopTimeout": 2}"#,
                "echo $INFRAKIT_LOGICAL_ID; exec sleep 60",
            ))
            .unwrap();
        let found = plugin.describe(&vec![], true).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].logical_id.as_deref(), Some("zk1"));
        std::thread::sleep(Duration::from_millis(200));
        let out = fs::read_to_string(dir.path().join("instances").join(&id).join("stdout.log"));
        assert_eq!(out.unwrap().trim(), "zk1");
        plugin.destroy(&id, DestroyContext::Terminate).unwrap();
        assert!(plugin.describe(&vec![], false).unwrap().is_empty());

        let short = plugin.provision(spec("{}", "exit 3")).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        assert!(plugin.describe(&vec![], false).unwrap().is_empty());
        assert!(
            dir.path()
                .join("instances")
                .join(&short)
                .join(EXITED)
                .exists()
        );
        plugin.destroy(&short, DestroyContext::Terminate).unwrap();
        assert!(matches!(
            plugin.destroy(&short, DestroyContext::Terminate),
            Err(Error::NotFound(_))
        ));
    }

    #[test]
    fn properties_are_checked_with_their_field() {
        let plugin = ProcessPlugin::new("/nonexistent");
        for (props, field) in [
            (r#"{"Cmd": []}"#, "Cmd"),
            (r#"{"Cmd": ["sh"]}"#, "Cmd[0]"),
            (r#"{"Shell": "bash"}"#, "Shell"),
            (r#"{"StopTimeout": 99}"#, "StopTimeout"),
            (r#"{"Env": {"A=B": "c"}}"#, "Env"),
            (r#"{"Cmdd": ["/bin/true"]}"#, "Cmdd"),
        ] {
            let err = plugin.validate(&Properties::new(props)).unwrap_err();
            assert!(err.to_string().contains(field), "{props}: {err}");
        }
        let err = plugin.provision(spec("{}", "  ")).unwrap_err();
        assert!(err.to_string().contains("nothing to run"), "{err}");
    }
}
