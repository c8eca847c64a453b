//! Finding and loading plugins: the built-ins embedded in the binary and every `NAME.wasm` in
//! the plugin directory (with its optional grant file `NAME.toml`). A plugin that cannot be
//! loaded is recorded with its path and reason; it never stops the others from loading.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use wasmtime::Engine;
use wasmtime::component::{Component, Linker};

use super::cache::{ArtifactCache, sha256_hex};
use super::sandbox::{self, Sandbox, State};
use super::{Error, Plugin, Source, Tier, builtin, engine};
use crate::grants::Grants;

/// InfraKit's plugin names for the plugins that ship here.
const INFRAKIT_NAMES: [(&str, &str); 2] =
    [("vanilla", "flavor-vanilla"), ("combo", "flavor-combo")];

/// Where plugins and their state live.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Root of the host's own files; each plugin's scratch directory is under `scratch/`.
    pub data_dir: PathBuf,
    /// The plugin directory scanned for `*.wasm`; `None` loads only the built-ins.
    pub plugins_dir: Option<PathBuf>,
    /// Where compiled artifacts are cached; `None` disables the cache.
    pub cache_dir: Option<PathBuf>,
    /// Grants for built-in plugins, by name (directory plugins use their `NAME.toml`).
    pub builtin_grants: BTreeMap<String, Grants>,
    /// Components of at least this many bytes whose optimised code is not cached yet are
    /// first compiled by the baseline compiler, in a fraction of the time; `None` compiles
    /// every component optimised at once.
    pub baseline_above: Option<u64>,
    /// Whether a plugin loaded with baseline code has its optimised code compiled in the
    /// background, to be swapped in by a later [`Registry::rescan`] (the daemon); otherwise
    /// it keeps its baseline code (a passive command, which is gone in a moment).
    pub optimize_in_background: bool,
    /// Bytes at the start of each sandbox memory and table slot kept resident between calls
    /// (see [`engine::new_engine`]); 0 gives every slot back after each call.
    pub keep_resident: u64,
}

/// The default of [`RegistryConfig::baseline_above`]: a component bundling an interpreter
/// (a Python plugin: ~18 MB) is over it, a compiled Rust plugin (well under 1 MB) is not.
pub const BASELINE_ABOVE: u64 = 4 << 20;

impl RegistryConfig {
    /// Plugins under `data_dir`: `plugins/`, `cache/`, `scratch/`.
    pub fn under(data_dir: &Path) -> Self {
        RegistryConfig {
            data_dir: data_dir.to_path_buf(),
            plugins_dir: Some(data_dir.join("plugins")),
            cache_dir: Some(data_dir.join("cache")),
            builtin_grants: BTreeMap::new(),
            baseline_above: Some(BASELINE_ABOVE),
            optimize_in_background: false,
            keep_resident: engine::KEEP_RESIDENT as u64,
        }
    }
}

/// A plugin placed in the plugin directory by [`Registry::install`].
#[derive(Debug, Clone)]
pub struct Installed {
    /// The name it gives itself, and its file's.
    pub name: String,
    /// Instance or flavor.
    pub kind: super::PluginKind,
    /// Its version.
    pub version: String,
    /// Where it was placed.
    pub path: PathBuf,
    /// Its grant file, when one was given.
    pub grants: Option<PathBuf>,
    /// Its size and compile time.
    pub load: super::LoadStats,
}

/// A plugin file that could not be loaded.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadFailure {
    /// The name it would have had.
    pub name: String,
    /// The file.
    pub path: PathBuf,
    /// Why, with its causes.
    pub message: String,
    /// Whether an earlier version of the plugin is still in service.
    pub previous_kept: bool,
}

/// What a rescan of the plugin directory changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A new plugin is available.
    Added(String),
    /// A plugin's file changed; the next call uses the new version.
    Replaced(String),
    /// A plugin's file is gone; so is the plugin.
    Removed(String),
    /// A plugin that ran baseline code now runs its optimised code, compiled in `compile`.
    Optimized {
        /// The plugin's name.
        name: String,
        /// How long the optimised compile took.
        compile: Duration,
    },
    /// A file failed to load (the message names path and reason); `kept` when an earlier
    /// version stays in service.
    Failed {
        /// The plugin's name.
        name: String,
        /// Path and reason.
        message: String,
        /// Whether an earlier version stays in service.
        kept: bool,
    },
}

/// The size and modification time of a plugin file and its grant file: a change in either
/// means the plugin is reloaded, once the file has stopped changing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    wasm: (u64, Option<std::time::SystemTime>),
    grants: Option<(u64, Option<std::time::SystemTime>)>,
}

/// The stamp of a plugin file: `Ok(None)` when it vanished, an error when it cannot be looked
/// at (out of descriptors, say), which must not read as "gone".
fn stamp(path: &Path) -> std::io::Result<Option<Stamp>> {
    let meta = |p: &Path| {
        std::fs::metadata(p)
            .ok()
            .map(|m| (m.len(), m.modified().ok()))
    };
    match std::fs::metadata(path) {
        Ok(m) => Ok(Some(Stamp {
            wasm: (m.len(), m.modified().ok()),
            grants: meta(&path.with_extension("toml")),
        })),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[derive(Default)]
struct DirState {
    /// What was last loaded (or failed) per file.
    loaded: BTreeMap<PathBuf, Stamp>,
    /// Seen changed in the previous scan; loaded when unchanged in this one.
    pending: BTreeMap<PathBuf, Stamp>,
}

/// Loaded plugins by name, plus the files that failed to load. Safe to share: lookups take a
/// snapshot, and a reload swaps one entry while calls in flight keep the version they hold.
pub struct Registry {
    engine: Engine,
    linker: Linker<State>,
    cache: ArtifactCache,
    config: RegistryConfig,
    pooling: bool,
    plugins: RwLock<BTreeMap<String, Arc<Plugin>>>,
    failures: RwLock<BTreeMap<PathBuf, LoadFailure>>,
    /// Plugins being loaded for the first time (compiling, or answering `metadata`).
    loading: RwLock<std::collections::BTreeSet<String>>,
    dir: tokio::sync::Mutex<DirState>,
    /// The baseline compiler's engine, made when a large component first needs it.
    baseline: OnceLock<Result<Baseline, String>>,
    /// Optimised compiles running in the background for plugins on baseline code.
    upgrades: Mutex<Vec<Upgrade>>,
}

/// The baseline engine with what plugins on it need (see [`engine::new_baseline_engine`]).
struct Baseline {
    engine: Engine,
    linker: Linker<State>,
    cache: ArtifactCache,
}

/// An optimised compile in the background, for the plugin `name` as loaded from `sha256`
/// under `grants`.
struct Upgrade {
    name: String,
    source: Source,
    sha256: String,
    grants: Grants,
    size: u64,
    /// Filled by the compile thread.
    done: Arc<Mutex<Option<Compiled>>>,
}

/// What an optimised compile gave: the component and how long it took, or why it failed.
type Compiled = Result<(Component, Duration), String>;

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field(
                "plugins",
                &self
                    .plugins
                    .read()
                    .expect("lock")
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>(),
            )
            .field("failures", &self.failures())
            .finish_non_exhaustive()
    }
}

/// A plugin name: lowercase letters, digits and `-`, starting with a letter.
pub fn valid_name(name: &str) -> bool {
    name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn is_builtin(name: &str) -> bool {
    builtin::BUILTINS.iter().any(|(n, _)| *n == name)
}

impl Registry {
    /// Creates the engine and loads every plugin. Only an engine that cannot be created is an
    /// error; plugins that fail are listed in [`Registry::failures`].
    pub async fn load(config: RegistryConfig) -> wasmtime::Result<Registry> {
        let registry = Registry::empty(config)?;
        registry.load_all().await;
        Ok(registry)
    }

    /// Creates the engine with no plugin loaded yet: every plugin there is to load is listed
    /// as loading until [`Registry::load_all`] gets to it. The daemon serves at once this way
    /// and loads in the background.
    pub fn empty(config: RegistryConfig) -> wasmtime::Result<Registry> {
        let (engine, pooling) = engine::new_engine(config.keep_resident as usize)?;
        let linker = sandbox::linker(&engine)?;
        let cache = ArtifactCache::new(&engine, config.cache_dir.clone());
        let mut loading: std::collections::BTreeSet<String> = builtin::BUILTINS
            .iter()
            .map(|(n, _)| n.to_string())
            .collect();
        if let Some(dir) = &config.plugins_dir {
            loading.extend(
                wasm_files(dir)
                    .unwrap_or_default()
                    .iter()
                    .map(|p| name_of(p)),
            );
        }
        Ok(Registry {
            engine,
            linker,
            cache,
            config,
            pooling,
            plugins: RwLock::new(BTreeMap::new()),
            failures: RwLock::new(BTreeMap::new()),
            loading: RwLock::new(loading),
            dir: tokio::sync::Mutex::new(DirState::default()),
            baseline: OnceLock::new(),
            upgrades: Mutex::new(Vec::new()),
        })
    }

    /// Creates the engine and loads only the plugin `name` (a built-in, else `NAME.wasm` of the
    /// plugin directory): a passive command on one plugin does not wait for every other
    /// plugin's load, nor for one whose load fails. When `name` loads from neither place, every
    /// plugin is loaded, so that the caller's "no plugin named" error can list what there is.
    pub async fn load_named(config: RegistryConfig, name: &str) -> wasmtime::Result<Registry> {
        let registry = Registry::empty(config)?;
        if let Some((_, bytes)) = builtin::BUILTINS.iter().find(|(n, _)| *n == name) {
            registry.load_builtin(name, bytes).await;
        } else if let Some(path) = registry
            .config
            .plugins_dir
            .as_ref()
            .map(|d| d.join(format!("{name}.wasm")))
            .filter(|p| p.is_file())
        {
            let loaded = registry.load_file(name, &path, None).await;
            registry.settle(name, path, loaded);
        } else {
            registry.load_all().await;
        }
        registry.loading.write().expect("lock").clear();
        Ok(registry)
    }

    /// Puts the outcome of loading `name` from `path` where `get` and `plugin ls` find it.
    fn settle(&self, name: &str, path: PathBuf, loaded: Result<Option<Arc<Plugin>>, Error>) {
        match loaded {
            Ok(Some(plugin)) => {
                self.plugins
                    .write()
                    .expect("lock")
                    .insert(name.to_string(), plugin);
            }
            Ok(None) => {}
            Err(error) => {
                self.failures.write().expect("lock").insert(
                    path.clone(),
                    LoadFailure {
                        name: name.to_string(),
                        path,
                        message: crate::error_chain(&error),
                        previous_kept: false,
                    },
                );
            }
        }
    }

    async fn load_builtin(&self, name: &str, bytes: &[u8]) {
        let grants = self
            .config
            .builtin_grants
            .get(name)
            .cloned()
            .unwrap_or_default();
        let path = PathBuf::from(format!("built-in:{name}"));
        // A built-in that does not load is a build defect; still, report, don't die.
        let loaded = self.load_one(name, Source::Builtin, bytes, grants).await;
        self.settle(name, path, loaded.map(Some));
        self.loading.write().expect("lock").remove(name);
    }

    /// Loads the built-ins and every plugin in the plugin directory.
    pub async fn load_all(&self) {
        let registry = self;
        for (name, bytes) in builtin::BUILTINS {
            registry.load_builtin(name, bytes).await;
        }
        registry.scan(false).await;
        // Whatever was listed as loading and is not in the directory any more.
        registry.loading.write().expect("lock").clear();
    }

    /// The plugins not loaded yet (listed by `plugin ls` as loading).
    pub fn loading(&self) -> Vec<String> {
        self.loading.read().expect("lock").iter().cloned().collect()
    }

    /// Looks at the plugin directory again and applies what changed: new files are loaded,
    /// changed ones reloaded (a broken new version leaves the old one in service), removed
    /// ones unloaded. A file is only (re)loaded once it has stopped changing between two
    /// rescans, so a half-copied file is never mistaken for a broken plugin.
    pub async fn rescan(&self) -> Vec<Change> {
        self.scan(true).await
    }

    async fn scan(&self, wait_until_stable: bool) -> Vec<Change> {
        let Some(dir) = self.config.plugins_dir.clone() else {
            return Vec::new();
        };
        let mut state = self.dir.lock().await;
        // At a rescan only: the first load's scan has no one to report the swaps to.
        let mut changes = if wait_until_stable {
            self.apply_upgrades().await
        } else {
            Vec::new()
        };
        // A scan that fails (out of descriptors, the directory replaced by a file) changes
        // nothing: read as "no plugins", it would unload every plugin in service.
        let listed = wasm_files(&dir).and_then(|files| {
            files
                .into_iter()
                .filter_map(|path| match stamp(&path) {
                    Ok(Some(s)) => Some(Ok((path, s))),
                    Ok(None) => None,
                    Err(e) => Some(Err(e)),
                })
                .collect::<std::io::Result<BTreeMap<PathBuf, Stamp>>>()
        });
        let present = match listed {
            Ok(present) => present,
            Err(e) => {
                tracing::warn!(
                    dir = %dir.display(),
                    error = %e,
                    "cannot scan the plugin directory; the plugins in service stay as they are"
                );
                return changes;
            }
        };
        // Removed files.
        let gone: Vec<PathBuf> = state
            .loaded
            .keys()
            .filter(|p| !present.contains_key(*p))
            .cloned()
            .collect();
        for path in gone {
            state.loaded.remove(&path);
            self.failures.write().expect("lock").remove(&path);
            let name = name_of(&path);
            let removed = {
                let mut plugins = self.plugins.write().expect("lock");
                let ours = plugins
                    .get(&name)
                    .is_some_and(|p| p.source() == &Source::File(path.clone()));
                ours && plugins.remove(&name).is_some()
            };
            if removed {
                changes.push(Change::Removed(name));
            }
        }
        state.pending.retain(|p, _| present.contains_key(p));
        // New and changed files.
        for (path, now) in present {
            if state.loaded.get(&path) == Some(&now) {
                state.pending.remove(&path);
                continue;
            }
            if wait_until_stable && state.pending.get(&path) != Some(&now) {
                state.pending.insert(path, now);
                continue;
            }
            state.pending.remove(&path);
            state.loaded.insert(path.clone(), now);
            let name = name_of(&path);
            let previous = self.plugins.read().expect("lock").get(&name).cloned();
            let loaded = self.load_file(&name, &path, previous.as_deref()).await;
            self.loading.write().expect("lock").remove(&name);
            match loaded {
                Ok(Some(plugin)) => {
                    self.failures.write().expect("lock").remove(&path);
                    self.plugins
                        .write()
                        .expect("lock")
                        .insert(name.clone(), plugin);
                    changes.push(if previous.is_some() {
                        Change::Replaced(name)
                    } else {
                        Change::Added(name)
                    });
                }
                Ok(None) => {} // same bytes and grants: nothing to do
                Err(error) => {
                    let message = crate::error_chain(&error);
                    let kept = previous
                        .as_ref()
                        .is_some_and(|p| p.source() == &Source::File(path.clone()));
                    tracing::info!(plugin = %name, path = %path.display(), error = %message, "plugin not loaded");
                    self.failures.write().expect("lock").insert(
                        path.clone(),
                        LoadFailure {
                            name: name.clone(),
                            path,
                            message: message.clone(),
                            previous_kept: kept,
                        },
                    );
                    changes.push(Change::Failed {
                        name,
                        message,
                        kept,
                    });
                }
            }
        }
        changes
    }

    /// Loads `path` as plugin `name`; `None` when it is the same bytes and grants as
    /// `previous`.
    async fn load_file(
        &self,
        name: &str,
        path: &Path,
        previous: Option<&Plugin>,
    ) -> Result<Option<Arc<Plugin>>, Error> {
        let source = Source::File(path.to_path_buf());
        if !valid_name(name) {
            return Err(Error::Metadata {
                origin: source,
                reason: format!(
                    "{name:?} is not a plugin name: the file name (without .wasm) must be lowercase \
                     letters, digits and `-`, starting with a letter"
                ),
            });
        }
        if is_builtin(name) {
            return Err(Error::Metadata {
                origin: source,
                reason: format!("the name {name:?} is already taken by a built-in plugin"),
            });
        }
        let grants_path = path.with_extension("toml");
        let grants = if grants_path.exists() {
            Grants::load(&grants_path)?
        } else {
            Grants::default()
        };
        let bytes = std::fs::read(path).map_err(|source| Error::Read {
            path: path.to_path_buf(),
            source,
        })?;
        if let Some(p) = previous
            && p.sha256() == sha256_hex(&bytes)
            && p.grants() == &grants
        {
            return Ok(None);
        }
        self.load_one(name, source, &bytes, grants).await.map(Some)
    }

    async fn load_one(
        &self,
        name: &str,
        source: Source,
        bytes: &[u8],
        grants: Grants,
    ) -> Result<Arc<Plugin>, Error> {
        let plugin = self
            .load_component(name, source.clone(), bytes, grants, true)
            .await?;
        if plugin.metadata.name != name {
            return Err(Error::Metadata {
                origin: source,
                reason: format!(
                    "the plugin calls itself {:?}; name the file {:?} (the file name is the plugin's name)",
                    plugin.metadata.name,
                    format!("{}.wasm", plugin.metadata.name)
                ),
            });
        }
        if plugin.load.tier == Tier::Baseline && self.config.optimize_in_background {
            self.optimize_later(name, &source, bytes, &plugin);
        }
        Ok(Arc::new(plugin))
    }

    /// Compiles `bytes` optimised on a thread of its own (into the cache); the next rescan
    /// after it is done swaps the plugin onto that code.
    fn optimize_later(&self, name: &str, source: &Source, bytes: &[u8], plugin: &Plugin) {
        let done = Arc::new(Mutex::new(None));
        let (slot, cache, engine, sha256, bytes) = (
            done.clone(),
            self.cache.clone(),
            self.engine.clone(),
            plugin.sha256.clone(),
            bytes.to_vec(),
        );
        let spawned = std::thread::Builder::new()
            .name("infrakit-optimize".into())
            .spawn(move || {
                let started = Instant::now();
                let compiled = cache
                    .load(&engine, &sha256, &bytes)
                    .map(|(component, _)| (component, started.elapsed()))
                    .map_err(|e| super::one_line(&format!("{e:#}")));
                *slot.lock().expect("lock") = Some(compiled);
            });
        if let Err(e) = spawned {
            tracing::warn!(plugin = name, error = %e, "cannot start the optimised compile; the plugin keeps its baseline code");
            return;
        }
        tracing::info!(
            plugin = name,
            "running baseline code; compiling optimised code in the background"
        );
        let mut upgrades = self.upgrades.lock().expect("lock");
        // A newer load of the same plugin supersedes an older compile.
        upgrades.retain(|u| u.name != name);
        upgrades.push(Upgrade {
            name: name.to_string(),
            source: source.clone(),
            sha256: plugin.sha256.clone(),
            grants: plugin.grants().clone(),
            size: plugin.load.size,
            done,
        });
    }

    /// Swaps each plugin whose optimised compile is done onto its optimised code, if it is
    /// still the plugin that compile was for (same bytes and grants, on baseline code).
    async fn apply_upgrades(&self) -> Vec<Change> {
        let ready: Vec<Upgrade> = {
            let mut upgrades = self.upgrades.lock().expect("lock");
            let (ready, pending) = std::mem::take(&mut *upgrades)
                .into_iter()
                .partition(|u| u.done.lock().expect("lock").is_some());
            *upgrades = pending;
            ready
        };
        let mut changes = Vec::new();
        for u in ready {
            let Some(done) = u.done.lock().expect("lock").take() else {
                continue;
            };
            let current = self.plugins.read().expect("lock").get(&u.name).cloned();
            let still = current.is_some_and(|p| {
                p.load.tier == Tier::Baseline && p.sha256 == u.sha256 && p.grants() == &u.grants
            });
            if !still {
                continue;
            }
            let upgraded = match done {
                Ok((component, compile)) => {
                    let load = super::LoadStats {
                        size: u.size,
                        compile,
                        cached: false,
                        tier: Tier::Optimized,
                    };
                    let code = Code {
                        engine: &self.engine,
                        linker: &self.linker,
                        cache: &self.cache,
                    };
                    self.assemble(&u.name, u.source, component, u.sha256, u.grants, code, load)
                        .await
                        .map(|p| (p, compile))
                        .map_err(|e| crate::error_chain(&e))
                }
                Err(e) => Err(e),
            };
            match upgraded {
                Ok((plugin, compile)) => {
                    self.plugins
                        .write()
                        .expect("lock")
                        .insert(u.name.clone(), Arc::new(plugin));
                    changes.push(Change::Optimized {
                        name: u.name,
                        compile,
                    });
                }
                Err(e) => {
                    tracing::warn!(plugin = %u.name, error = %e, "optimised code not usable; the plugin keeps its baseline code");
                }
            }
        }
        changes
    }

    /// The baseline engine, made on first use.
    fn baseline(&self) -> Result<&Baseline, String> {
        self.baseline
            .get_or_init(|| {
                let engine = engine::new_baseline_engine().map_err(|e| format!("{e:#}"))?;
                let linker = sandbox::linker(&engine).map_err(|e| format!("{e:#}"))?;
                let cache = ArtifactCache::new(&engine, self.config.cache_dir.clone());
                Ok(Baseline {
                    engine,
                    linker,
                    cache,
                })
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Validates a component for the plugin directory and precompiles it into the cache the
    /// daemon reads, then places it there under the name it gives itself (with `grants`, if
    /// given, as its grant file), each file written aside and renamed, so the daemon's scan
    /// never sees half of one and picks it up without compiling. `name`, when given, must be
    /// the plugin's own.
    pub async fn install(
        &self,
        file: &Path,
        name: Option<&str>,
        grants_file: Option<&Path>,
    ) -> Result<Installed, Error> {
        let source = Source::File(file.to_path_buf());
        let bytes = std::fs::read(file).map_err(|e| Error::Read {
            path: file.to_path_buf(),
            source: e,
        })?;
        let grants = match grants_file {
            Some(g) => Grants::load(g)?,
            None => Grants::default(),
        };
        // Optimised: what install is for is that the daemon's pickup compiles nothing.
        let plugin = self.probe(file, &bytes, grants, false).await?;
        let real = plugin.metadata.name.clone();
        let refuse = |reason: String| Error::Metadata {
            origin: source.clone(),
            reason,
        };
        if let Some(n) = name
            && n != real
        {
            return Err(refuse(format!(
                "the plugin calls itself {real:?}, not {n:?}; its name is the one it gives itself"
            )));
        }
        if !valid_name(&real) {
            return Err(refuse(format!(
                "it calls itself {real:?}, which is not a plugin name (lowercase letters, digits \
                 and `-`, starting with a letter)"
            )));
        }
        if is_builtin(&real) {
            return Err(refuse(format!(
                "it calls itself {real:?}, the name of a built-in plugin"
            )));
        }
        let Some(dir) = &self.config.plugins_dir else {
            return Err(refuse(
                "there is no plugin directory to install into (--plugins-dir)".into(),
            ));
        };
        let place = |bytes: &[u8], target: PathBuf| -> Result<PathBuf, Error> {
            let fail = |e: std::io::Error| Error::Read {
                path: target.clone(),
                source: e,
            };
            std::fs::create_dir_all(dir).map_err(fail)?;
            let tmp = dir.join(format!(
                ".{}.installing",
                target.file_name().unwrap_or_default().to_string_lossy()
            ));
            std::fs::write(&tmp, bytes).map_err(fail)?;
            std::fs::rename(&tmp, &target).map_err(fail)?;
            Ok(target)
        };
        // The grants go first: the daemon loads the component with them.
        let grants_path = match grants_file {
            Some(g) => {
                let text = std::fs::read(g).map_err(|e| Error::Read {
                    path: g.to_path_buf(),
                    source: e,
                })?;
                Some(place(&text, dir.join(format!("{real}.toml")))?)
            }
            None => None,
        };
        let path = place(&bytes, dir.join(format!("{real}.wasm")))?;
        Ok(Installed {
            name: real,
            kind: plugin.kind(),
            version: plugin.metadata.version.clone(),
            path,
            grants: grants_path,
            load: plugin.load,
        })
    }

    /// Loads a component file as `install` does before placing it (compiled into the cache, or
    /// read from it; bound; metadata asked) and puts it away again: what loading it costs.
    /// With `tiering`, a large component is compiled as the daemon first loads it (baseline
    /// code; see [`RegistryConfig::baseline_above`]), else optimised as `install` does.
    pub async fn trial_load(&self, file: &Path, tiering: bool) -> Result<super::LoadStats, Error> {
        let bytes = std::fs::read(file).map_err(|e| Error::Read {
            path: file.to_path_buf(),
            source: e,
        })?;
        Ok(self
            .probe(file, &bytes, Grants::default(), tiering)
            .await?
            .load)
    }

    /// Loads `file`'s `bytes` under `grants` without registering it: its sandbox lives in a
    /// scratch directory of its own, removed after.
    async fn probe(
        &self,
        file: &Path,
        bytes: &[u8],
        grants: Grants,
        tiering: bool,
    ) -> Result<Plugin, Error> {
        let probe = format!("probe-{}", std::process::id());
        let loaded = self
            .load_component(
                &probe,
                Source::File(file.to_path_buf()),
                bytes,
                grants,
                tiering,
            )
            .await;
        let _ = std::fs::remove_dir_all(self.config.data_dir.join("scratch").join(&probe));
        loaded
    }

    /// Compiles (or reads from the cache) and binds a component, and asks its metadata. With
    /// `tiering`, a large component whose optimised code is not cached yet gets baseline code.
    async fn load_component(
        &self,
        name: &str,
        source: Source,
        bytes: &[u8],
        grants: Grants,
        tiering: bool,
    ) -> Result<Plugin, Error> {
        let sha256 = sha256_hex(bytes);
        let started = Instant::now();
        let large = self
            .config
            .baseline_above
            .is_some_and(|n| bytes.len() as u64 >= n);
        let baseline = if tiering && large && !self.cache.contains(&sha256) {
            self.baseline()
                .inspect_err(|e| {
                    tracing::warn!(plugin = name, error = %e, "no baseline compiler; compiling optimised")
                })
                .ok()
        } else {
            None
        };
        let (code, tier) = match baseline {
            Some(b) => (
                Code {
                    engine: &b.engine,
                    linker: &b.linker,
                    cache: &b.cache,
                },
                Tier::Baseline,
            ),
            None => (
                Code {
                    engine: &self.engine,
                    linker: &self.linker,
                    cache: &self.cache,
                },
                Tier::Optimized,
            ),
        };
        // Compiling takes ~100 ms in a release host and seconds in a debug one (minutes for a
        // large component): never on a worker of the async runtime.
        let compiled = {
            let (cache, engine, sha256, bytes) = (
                code.cache.clone(),
                code.engine.clone(),
                sha256.clone(),
                bytes.to_vec(),
            );
            tokio::task::spawn_blocking(move || cache.load(&engine, &sha256, &bytes)).await
        };
        let (component, cached) = compiled
            .map_err(|e| wasmtime::Error::msg(format!("the compile thread failed: {e}")))
            .and_then(|r| r)
            .map_err(|e| Error::Compile {
                origin: source.clone(),
                reason: super::one_line(&format!("{e:#}")),
            })?;
        tracing::debug!(plugin = name, cached, tier = tier.as_str(), elapsed = ?started.elapsed(), "component ready");
        let load = super::LoadStats {
            size: bytes.len() as u64,
            compile: started.elapsed(),
            cached,
            tier,
        };
        for warning in grants.warnings(&self.config.data_dir) {
            tracing::warn!(plugin = name, "grant to look at: {warning}");
        }
        self.assemble(name, source, component, sha256, grants, code, load)
            .await
    }

    /// Gives a compiled component its sandbox and binds it (asking its metadata).
    #[allow(clippy::too_many_arguments)]
    async fn assemble(
        &self,
        name: &str,
        source: Source,
        component: Component,
        sha256: String,
        grants: Grants,
        code: Code<'_>,
        load: super::LoadStats,
    ) -> Result<Plugin, Error> {
        let scratch = self.config.data_dir.join("scratch").join(name);
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&scratch)
            .map_err(|e| Error::Metadata {
                origin: source.clone(),
                reason: format!(
                    "cannot create its scratch directory {}: {e}",
                    scratch.display()
                ),
            })?;
        let processes = Arc::new(super::process::Ledger::new(
            self.config
                .data_dir
                .join("processes")
                .join(format!("{name}.json")),
        ));
        let metadata_cache = code.cache.metadata_path(&sha256, &grants);
        let disk = Arc::new(Sandbox::disk_quota(&scratch, &grants));
        let preopens = Arc::new(super::preopens::Preopens::new(&scratch, &grants));
        let sandbox = Sandbox {
            plugin: Arc::from(name),
            preopens,
            scratch,
            grants: Arc::new(grants),
            processes,
            disk,
        };
        let mut plugin = super::bind(
            code.engine,
            code.linker,
            &component,
            &source,
            sandbox,
            sha256,
            metadata_cache,
        )
        .await?;
        plugin.load = load;
        Ok(plugin)
    }

    /// The name a spec's plugin name stands for. InfraKit's specs name plugins as its
    /// daemons were called: `vanilla` and `combo` for its flavors, and `name/type` for one
    /// kind served by the plugin `name` (`simulator/compute`). A plugin of the exact name
    /// wins; the forms are tried only when there is none.
    fn resolve<'a>(&self, name: &'a str) -> std::borrow::Cow<'a, str> {
        let known = |n: &str| {
            self.plugins.read().expect("lock").contains_key(n)
                || self.loading.read().expect("lock").contains(n)
        };
        if known(name) {
            return name.into();
        }
        let base = name.split_once('/').map_or(name, |(base, _)| base);
        let alias = INFRAKIT_NAMES
            .iter()
            .find(|(theirs, _)| *theirs == base)
            .map(|(_, ours)| *ours);
        match alias {
            Some(ours) if known(ours) => ours.into(),
            _ if base != name && known(base) => base.to_string().into(),
            _ => name.into(),
        }
    }

    /// A plugin by name (or by the name InfraKit knew it by: see `resolve`).
    pub fn get(&self, name: &str) -> Result<Arc<Plugin>, Error> {
        let name = &*self.resolve(name);
        let plugins = self.plugins.read().expect("lock");
        if !plugins.contains_key(name) && self.loading.read().expect("lock").contains(name) {
            return Err(Error::Loading {
                name: name.to_string(),
            });
        }
        if let Some(p) = plugins.get(name) {
            return Ok(p.clone());
        }
        if let Some(failure) = self
            .failures
            .read()
            .expect("lock")
            .values()
            .find(|f| f.name == name)
        {
            return Err(Error::NotLoaded {
                name: name.to_string(),
                reason: failure.message.clone(),
            });
        }
        Err(Error::Unknown {
            name: name.to_string(),
            known: plugins.keys().cloned().collect::<Vec<_>>().join(", "),
        })
    }

    /// The instance plugin called `name` (an error naming the kind if it is a flavor).
    pub fn instance(&self, name: &str) -> Result<super::InstanceClient, Error> {
        self.get(name)?.as_instance()
    }

    /// The flavor plugin called `name` (an error naming the kind if it is an instance plugin).
    pub fn flavor(&self, name: &str) -> Result<super::FlavorClient, Error> {
        self.get(name)?.as_flavor()
    }

    /// Every loaded plugin, by name.
    pub fn plugins(&self) -> Vec<Arc<Plugin>> {
        self.plugins
            .read()
            .expect("lock")
            .values()
            .cloned()
            .collect()
    }

    /// The files that failed to load.
    pub fn failures(&self) -> Vec<LoadFailure> {
        self.failures
            .read()
            .expect("lock")
            .values()
            .cloned()
            .collect()
    }

    /// Whether the pooling allocator is in use.
    pub fn pooling(&self) -> bool {
        self.pooling
    }

    /// The engine all plugins run on.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }
}

/// The engine, linker and artifact cache a component is compiled and run with.
#[derive(Clone, Copy)]
struct Code<'a> {
    engine: &'a Engine,
    linker: &'a Linker<State>,
    cache: &'a ArtifactCache,
}

/// The `*.wasm` files in the plugin directory: none when there is no directory, an error when
/// it cannot be read whole.
fn wasm_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut files = Vec::new();
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "wasm") {
            files.push(path);
        }
    }
    Ok(files)
}

fn name_of(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}
