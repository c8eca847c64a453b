//! Finding and loading plugins: the built-ins embedded in the binary and every `NAME.wasm` in
//! the plugin directory (with its optional grant file `NAME.toml`). A plugin that cannot be
//! loaded is recorded with its path and reason; it never stops the others from loading.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use wasmtime::Engine;
use wasmtime::component::Linker;

use super::cache::{ArtifactCache, sha256_hex};
use super::sandbox::{self, Sandbox, State};
use super::{Error, Loaded, Plugin, Source, builtin, engine};
use crate::grants::Grants;

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
}

impl RegistryConfig {
    /// Plugins under `data_dir`: `plugins/`, `cache/`, `scratch/`.
    pub fn under(data_dir: &Path) -> Self {
        RegistryConfig {
            data_dir: data_dir.to_path_buf(),
            plugins_dir: Some(data_dir.join("plugins")),
            cache_dir: Some(data_dir.join("cache")),
            builtin_grants: BTreeMap::new(),
        }
    }
}

/// A plugin file that could not be loaded.
#[derive(Debug)]
pub struct LoadFailure {
    /// The name it would have had.
    pub name: String,
    /// The file.
    pub path: PathBuf,
    /// Why.
    pub error: Error,
}

/// Loaded plugins by name, plus the files that failed to load.
pub struct Registry {
    engine: Engine,
    linker: Linker<State>,
    cache: ArtifactCache,
    config: RegistryConfig,
    pooling: bool,
    plugins: BTreeMap<String, Arc<Plugin>>,
    failures: Vec<LoadFailure>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("plugins", &self.plugins.keys().collect::<Vec<_>>())
            .field("failures", &self.failures)
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

impl Registry {
    /// Creates the engine and loads every plugin. Only an engine that cannot be created is an
    /// error; plugins that fail are listed in [`Registry::failures`].
    pub async fn load(config: RegistryConfig) -> wasmtime::Result<Registry> {
        let (engine, pooling) = engine::new_engine()?;
        let linker = sandbox::linker(&engine)?;
        let cache = ArtifactCache::new(&engine, config.cache_dir.clone());
        let mut registry = Registry {
            engine,
            linker,
            cache,
            config,
            pooling,
            plugins: BTreeMap::new(),
            failures: Vec::new(),
        };
        for (name, bytes) in builtin::BUILTINS {
            let grants = registry
                .config
                .builtin_grants
                .get(*name)
                .cloned()
                .unwrap_or_default();
            match registry
                .load_one(name, Source::Builtin, bytes, grants)
                .await
            {
                Ok(plugin) => {
                    registry.plugins.insert(name.to_string(), plugin);
                }
                // A built-in that does not load is a build defect; still, report, don't die.
                Err(error) => registry.failures.push(LoadFailure {
                    name: name.to_string(),
                    path: PathBuf::from(format!("built-in:{name}")),
                    error,
                }),
            }
        }
        if let Some(dir) = registry.config.plugins_dir.clone() {
            registry.load_dir(&dir).await;
        }
        Ok(registry)
    }

    async fn load_dir(&mut self, dir: &Path) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return; // no plugin directory: only built-ins
        };
        let mut paths: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "wasm"))
            .collect();
        paths.sort();
        for path in paths {
            let name = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            match self.load_file(&name, &path).await {
                Ok(plugin) => {
                    self.plugins.insert(name, plugin);
                }
                Err(error) => {
                    // Reported through `failures()`; callers decide how loudly.
                    tracing::info!(plugin = %name, path = %path.display(), error = %crate::error_chain(&error), "plugin not loaded");
                    self.failures.push(LoadFailure { name, path, error });
                }
            }
        }
    }

    async fn load_file(&self, name: &str, path: &Path) -> Result<Arc<Plugin>, Error> {
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
        if self.plugins.contains_key(name) {
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
        self.load_one(name, source, &bytes, grants).await
    }

    async fn load_one(
        &self,
        name: &str,
        source: Source,
        bytes: &[u8],
        grants: Grants,
    ) -> Result<Arc<Plugin>, Error> {
        let sha256 = sha256_hex(bytes);
        let started = std::time::Instant::now();
        let (component, cached) =
            self.cache
                .load(&self.engine, &sha256, bytes)
                .map_err(|e| Error::Compile {
                    origin: source.clone(),
                    reason: super::one_line(&format!("{e:#}")),
                })?;
        tracing::debug!(plugin = name, cached, elapsed = ?started.elapsed(), "component ready");
        let sandbox = Sandbox {
            plugin: Arc::from(name),
            scratch: self.config.data_dir.join("scratch").join(name),
            grants: Arc::new(grants),
        };
        let (pre, metadata) =
            super::bind(&self.engine, &self.linker, &component, &source, &sandbox).await?;
        if metadata.name != name {
            return Err(Error::Metadata {
                origin: source,
                reason: format!(
                    "the plugin calls itself {:?}; name the file {:?} (the file name is the plugin's name)",
                    metadata.name,
                    format!("{}.wasm", metadata.name)
                ),
            });
        }
        Ok(Plugin::from_loaded(
            &self.engine,
            Loaded {
                metadata,
                source,
                sha256,
                pre,
                sandbox,
            },
        ))
    }

    /// A plugin by name.
    pub fn get(&self, name: &str) -> Result<Arc<Plugin>, Error> {
        self.plugins
            .get(name)
            .cloned()
            .ok_or_else(|| Error::Unknown {
                name: name.to_string(),
                known: self.plugins.keys().cloned().collect::<Vec<_>>().join(", "),
            })
    }

    /// Every loaded plugin, by name.
    pub fn plugins(&self) -> impl Iterator<Item = &Arc<Plugin>> {
        self.plugins.values()
    }

    /// The files that failed to load.
    pub fn failures(&self) -> &[LoadFailure] {
        &self.failures
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
