//! `instance-file`: every instance is a JSON file in the plugin's directory.
//!
//! InfraKit's first plugin, and still the quickest way to see a group converge: delete a file and
//! the group controller provisions a replacement. The directory is the guest path given by the
//! `dir` config value (default `/data`, the plugin's private directory under the host's data dir).
//! Files are written to a temporary name and renamed, so a reader never sees half an instance.
//!
//! A listing reads every file, which at 10,000 instances was most of an idle daemon's CPU (one
//! whole listing a poll). So a listing is also kept as a snapshot (`.listing/listing.bin` in
//! the directory) and reused while the directory has not changed since: every write here goes
//! through a rename or an unlink, and so does a user creating, deleting or replacing a file,
//! all of which change the directory's mtime. A snapshot is trusted only when the directory had
//! been still for [`SETTLED`] before its listing began (so that no change can share its mtime),
//! and for at most [`SNAPSHOT_MAX_AGE`]: a file edited in place, which leaves the directory's
//! mtime alone, is seen within that. The snapshot holds only what a listing answers, in
//! `postcard`'s binary form: it is read on every poll, and reading the same 10,000 records as
//! JSON took three times as long (23 ms against 7.5 ms, natively on the bench machine).

use std::collections::BTreeMap;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use infrakit_sdk::{
    Capability, Description, DestroyContext, Error, InstancePlugin, InstanceSpec, Properties,
    Result, Tags,
};
use serde::{Deserialize, Serialize};

/// The guest directory used when no `dir` is configured.
pub const DEFAULT_DIR: &str = "/data";

/// How long the directory must have been unchanged before a listing starts for its snapshot
/// to be trusted. Far above any filesystem's timestamp granularity (1 s on the coarsest).
pub const SETTLED: std::time::Duration = std::time::Duration::from_secs(2);

/// Longest a snapshot is reused, for files edited in place.
pub const SNAPSHOT_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(60);

/// The snapshot's directory, inside the instance directory: writing in it changes its own mtime,
/// not the instance directory's. No `.json` extension, so listings skip it.
const SNAPSHOT_DIR: &str = ".listing";
const SNAPSHOT_FILE: &str = "listing.bin";
/// The JSON snapshot of earlier versions, removed when a new one is kept.
const OLD_SNAPSHOT_FILE: &str = "records.json";

/// A whole listing and the directory state it was taken from.
#[derive(Serialize, Deserialize)]
struct Snapshot {
    /// The directory's mtime when the listing began, in nanoseconds since the epoch.
    dir_mtime: u128,
    /// When the listing began (the clock), in nanoseconds since the epoch.
    listed_at: u128,
    listed: Vec<Listed>,
}

/// What a listing answers of one instance file.
#[derive(Debug, Serialize, Deserialize)]
struct Listed {
    id: String,
    logical_id: Option<String>,
    /// In key order, as in the file.
    tags: Tags,
    /// The instance's properties as JSON text.
    properties: String,
}

impl From<Record> for Listed {
    fn from(r: Record) -> Listed {
        Listed {
            id: r.id,
            logical_id: r.logical_id,
            tags: r.tags.into_iter().collect(),
            properties: r.properties.to_string(),
        }
    }
}

/// Instance properties this plugin reads. Any others are kept in the instance file as given,
/// as InfraKit's file plugin did (its tutorials put a `Note` there), so its specs load as they
/// are.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct FileProperties {
    /// Prefix of generated instance ids: lowercase letters, digits and `-`, at most 32.
    pub prefix: Option<String>,
    /// Free-form data stored in each instance file (an image, a size...).
    pub metadata: Option<serde_json::Value>,
    /// Everything else, kept as given.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// The properties this plugin reads, for telling a typo from data.
const KNOWN: [&str; 2] = ["Prefix", "Metadata"];

impl FileProperties {
    fn parse(properties: &Properties) -> Result<Self> {
        let props: FileProperties = properties.parse()?;
        // Other properties are data, but one that is nearly a known name is a typo that would
        // otherwise pass unnoticed.
        for key in props.other.keys() {
            if let Some(known) = KNOWN.iter().find(|k| {
                k.eq_ignore_ascii_case(key)
                    || strsim::levenshtein(&k.to_lowercase(), &key.to_lowercase()) <= 2
            }) {
                return Err(Error::invalid(format!(
                    "properties at `{key}`: did you mean `{known}`? (properties other than {KNOWN:?} \
                     are kept in the instance file as data)"
                )));
            }
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
        Ok(props)
    }
}

/// One instance, as stored on disk.
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
    init: String,
    #[serde(default)]
    properties: serde_json::Value,
    #[serde(default)]
    attachments: Vec<serde_json::Value>,
    /// Unix time in milliseconds.
    #[serde(default)]
    created: u64,
}

/// The plugin. Holds only where its files are; the files are the state.
#[derive(Debug)]
pub struct FilePlugin {
    dir: PathBuf,
}

impl Default for FilePlugin {
    fn default() -> Self {
        let dir = infrakit_sdk::config("dir").unwrap_or_else(|| DEFAULT_DIR.to_string());
        FilePlugin { dir: dir.into() }
    }
}

impl FilePlugin {
    /// A plugin keeping its instances in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        FilePlugin { dir: dir.into() }
    }

    fn path_of(&self, id: &str) -> Result<PathBuf> {
        let valid = !id.is_empty()
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
            && !id.starts_with('.');
        if !valid {
            return Err(Error::invalid(format!(
                "instance id {id:?}: expected letters, digits, `-`, `_` or `.`"
            )));
        }
        Ok(self.dir.join(format!("{id}.json")))
    }

    fn read(&self, path: &Path) -> Result<Record> {
        let text = fs::read_to_string(path)?;
        serde_json::from_str(&text)
            .map_err(|e| Error::other(format!("{}: not an instance file: {e}", path.display())))
    }

    fn write(&self, record: &Record, create: bool) -> Result<()> {
        let path = self.path_of(&record.id)?;
        let tmp = self.dir.join(format!(".{}.tmp", record.id));
        let text = serde_json::to_string_pretty(record).map_err(|e| Error::other(e.to_string()))?;
        fs::write(&tmp, text)?;
        if create {
            // A hard link fails atomically when the name is taken, unlike exists() + rename.
            let linked = fs::hard_link(&tmp, &path);
            let _ = fs::remove_file(&tmp);
            return match linked {
                Err(e) if e.kind() == ErrorKind::AlreadyExists => Err(Error::Transient(format!(
                    "instance id {} is taken",
                    record.id
                ))),
                other => Ok(other?),
            };
        }
        fs::rename(&tmp, &path)?;
        Ok(())
    }

    /// Every instance, from the snapshot while it can be trusted.
    fn listed(&self) -> Result<Vec<Listed>> {
        let started = now_nanos();
        let dir_mtime = match fs::metadata(&self.dir).and_then(|m| m.modified()) {
            Ok(t) => t
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::other(format!("{}: {e}", self.dir.display()))),
        };
        // A directory changed within `SETTLED` has no snapshot it could trust (one would have
        // been listed after the change, before now): while groups converge, no snapshot is read.
        let settled = started >= dir_mtime + SETTLED.as_nanos();
        if settled && let Some(snapshot) = self.snapshot() {
            let fresh = snapshot.dir_mtime == dir_mtime
                && snapshot.listed_at >= dir_mtime + SETTLED.as_nanos()
                && started.saturating_sub(snapshot.listed_at) < SNAPSHOT_MAX_AGE.as_nanos();
            if fresh {
                return Ok(snapshot.listed);
            }
        }
        let listed = self.scan()?.into_iter().map(Listed::from).collect();
        if settled {
            let snapshot = Snapshot {
                dir_mtime,
                listed_at: started,
                listed,
            };
            // A cache: failing to keep it costs the next listing a scan, nothing more.
            if let Err(e) = self.keep_snapshot(&snapshot) {
                infrakit_sdk::debug!("listing snapshot not kept: {e}");
            }
            return Ok(snapshot.listed);
        }
        Ok(listed)
    }

    /// The last snapshot, unless missing or unreadable.
    fn snapshot(&self) -> Option<Snapshot> {
        let bytes = fs::read(self.dir.join(SNAPSHOT_DIR).join(SNAPSHOT_FILE)).ok()?;
        postcard::from_bytes(&bytes).ok()
    }

    fn keep_snapshot(&self, snapshot: &Snapshot) -> Result<()> {
        let dir = self.dir.join(SNAPSHOT_DIR);
        fs::create_dir_all(&dir)?;
        // Concurrent listings each write their own file; the rename makes the last one whole.
        let tmp = dir.join(format!(".{:x}.tmp", now_nanos()));
        let bytes = postcard::to_allocvec(snapshot).map_err(|e| Error::other(e.to_string()))?;
        fs::write(&tmp, bytes)?;
        fs::rename(&tmp, dir.join(SNAPSHOT_FILE)).inspect_err(|_| {
            let _ = fs::remove_file(&tmp);
        })?;
        let _ = fs::remove_file(dir.join(OLD_SNAPSHOT_FILE));
        Ok(())
    }

    fn scan(&self) -> Result<Vec<Record>> {
        // Listing races with writers renaming and deleting files. On wasi, std's `ReadDir` ends
        // at the first entry that fails (one deleted while listed), so what came before it is
        // only part of the directory: a partial list would make the controller provision the
        // "missing" instances again. List again; if the directory never holds still, say so.
        const ATTEMPTS: usize = 16;
        for _ in 0..ATTEMPTS {
            if let Some(paths) = self.list()? {
                return Ok(self.read_all(paths));
            }
        }
        Err(Error::Transient(format!(
            "{}: the directory kept changing while it was listed ({ATTEMPTS} attempts)",
            self.dir.display()
        )))
    }

    /// The instance files, or `None` when an entry failed mid-listing (the list is incomplete).
    fn list(&self) -> Result<Option<Vec<PathBuf>>> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Some(Vec::new())),
            Err(e) => {
                return Err(Error::other(format!("{}: {e}", self.dir.display())));
            }
        };
        let mut paths = Vec::new();
        for entry in entries {
            match entry {
                Ok(entry) => paths.push(entry.path()),
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Some(paths))
    }

    fn read_all(&self, mut paths: Vec<PathBuf>) -> Vec<Record> {
        // A directory modified while it is listed may show an entry twice.
        paths.sort();
        paths.dedup();
        let mut out = Vec::new();
        for path in paths {
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            match self.read(&path) {
                Ok(record) => out.push(record),
                // Deleted between listing and reading: it is simply gone.
                Err(Error::NotFound(_)) => {}
                // A foreign or damaged file must not hide the healthy instances.
                Err(e) => infrakit_sdk::warn!("skipping {}: {e}", path.display()),
            }
        }
        out.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
        out
    }
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

impl InstancePlugin for FilePlugin {
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
        FileProperties::parse(properties).map(|_| ())
    }

    fn provision(&self, spec: InstanceSpec) -> Result<String> {
        let props = FileProperties::parse(&spec.properties)?;
        let prefix = props.prefix.as_deref().unwrap_or("instance");
        fs::create_dir_all(&self.dir)?;
        let properties = if spec.properties.as_str().trim().is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(spec.properties.as_str())
                .map_err(|e| Error::invalid(format!("properties: {e}")))?
        };
        let mut record = Record {
            id: String::new(),
            logical_id: spec.logical_id,
            tags: spec.tags.into_iter().collect(),
            init: spec.init,
            properties,
            attachments: spec
                .attachments
                .into_iter()
                .map(|a| serde_json::json!({"ID": a.id, "Type": a.kind}))
                .collect(),
            created: now_millis(),
        };
        // Ids come from the clock; two calls in the same nanosecond retry with the next one.
        for attempt in 0..16u128 {
            record.id = format!("{prefix}-{:x}", (now_nanos() + attempt) & 0xffff_ffff_ffff);
            match self.write(&record, true) {
                Err(Error::Transient(_)) => continue,
                other => {
                    other?;
                    infrakit_sdk::info!("provisioned {}", record.id);
                    return Ok(record.id);
                }
            }
        }
        Err(Error::Transient("no free instance id".to_string()))
    }

    fn label(&self, id: &str, labels: Tags) -> Result<()> {
        let path = self.path_of(id)?;
        let mut record = self.read(&path).map_err(|e| match e {
            Error::NotFound(_) => Error::NotFound(format!("instance {id}")),
            e => e,
        })?;
        record.tags.extend(labels);
        self.write(&record, false)
    }

    fn destroy(&self, id: &str, context: DestroyContext) -> Result<()> {
        let path = self.path_of(id)?;
        match fs::remove_file(&path) {
            Ok(()) => {
                infrakit_sdk::info!("destroyed {id} ({context:?})");
                Ok(())
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                Err(Error::NotFound(format!("instance {id}")))
            }
            Err(e) => Err(e.into()),
        }
    }

    fn describe(&self, tags: &Tags, include_properties: bool) -> Result<Vec<Description>> {
        let found = self
            .listed()?
            .into_iter()
            .map(|l| Description {
                id: l.id,
                logical_id: l.logical_id,
                tags: l.tags,
                properties: include_properties.then(|| Properties::new(l.properties)),
            })
            .filter(|d| d.matches(tags))
            .collect();
        Ok(found)
    }
}

infrakit_sdk::export_instance!(FilePlugin);

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn spec(tags: &[(&str, &str)]) -> InstanceSpec {
        InstanceSpec {
            properties: Properties::new(r#"{"Prefix": "web", "Metadata": {"image": "debian"}}"#),
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            init: "echo hi".into(),
            ..Default::default()
        }
    }

    fn tags(pairs: &[(&str, &str)]) -> Tags {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn provision_describe_destroy_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let plugin = FilePlugin::new(dir.path());
        let a = plugin.provision(spec(&[("group", "web")])).unwrap();
        let b = plugin.provision(spec(&[("group", "db")])).unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with("web-"));

        let all = plugin.describe(&vec![], false).unwrap();
        assert_eq!(all.len(), 2);
        let web = plugin.describe(&tags(&[("group", "web")]), true).unwrap();
        assert_eq!(web.len(), 1);
        assert_eq!(web[0].id, a);
        let props = web[0].properties.as_ref().unwrap().as_str();
        assert!(props.contains("debian"), "{props}");

        plugin.destroy(&a, DestroyContext::Terminate).unwrap();
        let left: Vec<_> = plugin
            .describe(&vec![], false)
            .unwrap()
            .into_iter()
            .map(|d| d.id)
            .collect();
        assert_eq!(left, vec![b]);
        assert!(matches!(
            plugin.destroy(&a, DestroyContext::Terminate),
            Err(Error::NotFound(_))
        ));
    }

    #[test]
    fn properties_it_does_not_know_are_kept_and_the_ones_it_knows_checked() {
        let dir = tempfile::tempdir().unwrap();
        let plugin = FilePlugin::new(dir.path());
        let props =
            Properties::new(r#"{"Note": "Instance properties version 1.0", "Prefix": "n"}"#);
        plugin.validate(&props).unwrap();
        let id = plugin
            .provision(InstanceSpec {
                properties: props,
                ..Default::default()
            })
            .unwrap();
        let record: serde_json::Value = serde_json::from_str(
            &fs::read_to_string(dir.path().join(format!("{id}.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(
            record["Properties"]["Note"],
            "Instance properties version 1.0"
        );
        let bad = Properties::new(r#"{"Note": "x", "Prefix": "UPPER"}"#);
        assert!(matches!(plugin.validate(&bad), Err(Error::Invalid(m)) if m.contains("Prefix")));
    }

    #[test]
    fn label_merges_tags() {
        let dir = tempfile::tempdir().unwrap();
        let plugin = FilePlugin::new(dir.path());
        let id = plugin.provision(spec(&[("a", "1"), ("b", "2")])).unwrap();
        plugin.label(&id, tags(&[("b", "3"), ("c", "4")])).unwrap();
        let d = &plugin.describe(&tags(&[("c", "4")]), false).unwrap()[0];
        assert_eq!(d.tag("a"), Some("1"));
        assert_eq!(d.tag("b"), Some("3"));
        assert!(matches!(
            plugin.label("nope", vec![]),
            Err(Error::NotFound(_))
        ));
    }

    #[test]
    fn validate_names_the_field() {
        let plugin = FilePlugin::new("/nonexistent");
        let err = plugin
            .validate(&Properties::new(r#"{"Prefix": 42}"#))
            .unwrap_err();
        assert!(err.to_string().contains("`Prefix`"), "{err}");
        let err = plugin
            .validate(&Properties::new(r#"{"Prefx": "a"}"#))
            .unwrap_err();
        assert!(err.to_string().contains("Prefx"), "{err}");
        let err = plugin
            .validate(&Properties::new(r#"{"Prefix": "Not/Ok"}"#))
            .unwrap_err();
        assert!(err.to_string().contains("`Prefix`"), "{err}");
        plugin.validate(&Properties::new("{}")).unwrap();
    }

    #[test]
    fn ids_cannot_escape_the_directory() {
        let plugin = FilePlugin::new("/nonexistent");
        for id in ["../etc/passwd", "a/b", ".hidden", ""] {
            assert!(
                matches!(
                    plugin.destroy(id, DestroyContext::Terminate),
                    Err(Error::Invalid(_))
                ),
                "{id}"
            );
        }
    }

    #[test]
    fn damaged_files_are_skipped_and_logged() {
        let dir = tempfile::tempdir().unwrap();
        let host = infrakit_sdk::testing::Host::new();
        let _g = host.install();
        let plugin = FilePlugin::new(dir.path());
        plugin.provision(spec(&[])).unwrap();
        fs::write(dir.path().join("junk.json"), "{not json").unwrap();
        assert_eq!(plugin.describe(&vec![], false).unwrap().len(), 1);
        assert!(host.logs().iter().any(|(_, m)| m.contains("junk.json")));
    }

    /// Moves the directory's mtime into the past, as if it had been still for a while.
    fn settle(dir: &Path) {
        let past = SystemTime::now() - SETTLED * 3;
        fs::File::open(dir).unwrap().set_modified(past).unwrap();
    }

    /// Ids listed, sorted.
    fn ids(plugin: &FilePlugin) -> Vec<String> {
        let mut ids: Vec<String> = plugin
            .describe(&vec![], false)
            .unwrap()
            .into_iter()
            .map(|d| d.id)
            .collect();
        ids.sort();
        ids
    }

    /// The tag `k` of each instance listed, in listing order.
    fn k_tags(plugin: &FilePlugin) -> Vec<String> {
        plugin
            .describe(&vec![], false)
            .unwrap()
            .into_iter()
            .map(|d| d.tag("k").unwrap_or_default().to_string())
            .collect()
    }

    #[test]
    fn a_still_directory_is_listed_from_its_snapshot_and_any_change_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let host = infrakit_sdk::testing::Host::new();
        let _g = host.install();
        let plugin = FilePlugin::new(dir.path());
        let a = plugin.provision(spec(&[("k", "a")])).unwrap();
        let b = plugin.provision(spec(&[("k", "b")])).unwrap();
        // Changed just now: listed by reading the files, and no snapshot kept.
        assert_eq!(ids(&plugin).len(), 2);
        assert!(!dir.path().join(SNAPSHOT_DIR).exists());
        // Still for a while: the listing is kept (its directory made, which is a change).
        settle(dir.path());
        assert_eq!(ids(&plugin).len(), 2);
        settle(dir.path());
        assert_eq!(ids(&plugin).len(), 2);
        let snapshot = dir.path().join(SNAPSHOT_DIR).join(SNAPSHOT_FILE);
        assert!(snapshot.exists());
        // Edited in place, the directory untouched: the snapshot answers, as the design says
        // (until it ages out)...
        let path = dir.path().join(format!("{a}.json"));
        let mtime = fs::metadata(dir.path()).unwrap().modified().unwrap();
        let edited = fs::read_to_string(&path)
            .unwrap()
            .replace("\"a\"", "\"edited\"");
        fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)
            .unwrap()
            .write_all(edited.as_bytes())
            .unwrap();
        assert_eq!(fs::metadata(dir.path()).unwrap().modified().unwrap(), mtime);
        assert_eq!(k_tags(&plugin), ["a", "b"]);
        // ...and any change to the directory is seen at once: a file deleted by hand,
        fs::remove_file(dir.path().join(format!("{b}.json"))).unwrap();
        assert_eq!(ids(&plugin), [a.as_str()]);
        assert_eq!(k_tags(&plugin), ["edited"]);
        // one created by the plugin,
        settle(dir.path());
        assert_eq!(ids(&plugin).len(), 1);
        let c = plugin.provision(spec(&[])).unwrap();
        assert_eq!(ids(&plugin), [a.as_str(), c.as_str()]);
        // a label (a rename over the file),
        settle(dir.path());
        assert_eq!(ids(&plugin).len(), 2);
        plugin
            .label(&c, vec![("k".to_string(), "labelled".to_string())])
            .unwrap();
        assert_eq!(k_tags(&plugin), ["edited", "labelled"]);
        // a destroy.
        settle(dir.path());
        assert_eq!(ids(&plugin).len(), 2);
        plugin.destroy(&a, DestroyContext::Terminate).unwrap();
        assert_eq!(ids(&plugin), [c.as_str()]);
        // A damaged snapshot is only a cache: the files answer.
        settle(dir.path());
        assert_eq!(ids(&plugin), [c.as_str()]);
        fs::write(&snapshot, "{damaged").unwrap();
        assert_eq!(ids(&plugin), [c.as_str()]);
    }

    #[test]
    fn dir_comes_from_config() {
        let host = infrakit_sdk::testing::Host::new().with_config("dir", "/srv/instances");
        let _g = host.install();
        assert_eq!(FilePlugin::default().dir, PathBuf::from("/srv/instances"));
    }
}
