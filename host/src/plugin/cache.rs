//! Compiled components, cached on disk by content.
//!
//! Compiling a component with Cranelift costs ~100 ms in a release host and seconds in a debug
//! one; loading the compiled artifact costs well under a millisecond. Artifacts are keyed by the
//! wasm's sha256 and the engine's compatibility hash, so a new wasmtime version or engine setting
//! can never load a stale artifact, and the same bytes under another path share one entry.

#![allow(unsafe_code)]

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// The sha256 of some bytes, as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A directory of compiled artifacts for one engine configuration.
#[derive(Debug, Clone)]
pub struct ArtifactCache {
    dir: Option<PathBuf>,
    engine_key: String,
}

impl ArtifactCache {
    /// A cache in `dir`; `None` compiles every time (no disk writes at all).
    pub fn new(engine: &Engine, dir: Option<PathBuf>) -> Self {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        ArtifactCache {
            dir,
            engine_key: format!("{:016x}", hasher.finish()),
        }
    }

    fn path_for(&self, sha256: &str) -> Option<PathBuf> {
        let dir = self.dir.as_ref()?;
        Some(dir.join(format!("{sha256}-{}.cwasm", self.engine_key)))
    }

    /// Whether the compiled form of the component with `sha256` is in the cache.
    pub fn contains(&self, sha256: &str) -> bool {
        self.path_for(sha256).is_some_and(|p| p.exists())
    }

    /// Where the metadata of the component with `sha256` is kept, for a plugin loaded under
    /// `grants` (a plugin may answer by its configuration, so each grant has its own entry).
    pub fn metadata_path(&self, sha256: &str, grants: &crate::grants::Grants) -> Option<PathBuf> {
        let dir = self.dir.as_ref()?;
        let grants_key = &sha256_hex(format!("{grants:?}").as_bytes())[..16];
        Some(dir.join(format!(
            "{sha256}-{}-{grants_key}.metadata.json",
            self.engine_key
        )))
    }

    /// Loads the compiled form of `bytes` from the cache, or compiles and stores it.
    /// Returns the component and whether it came from the cache.
    pub fn load(
        &self,
        engine: &Engine,
        sha256: &str,
        bytes: &[u8],
    ) -> wasmtime::Result<(Component, bool)> {
        if let Some(path) = self.path_for(sha256)
            && path.exists()
        {
            // SAFETY: the file was written by `store` below from `Component::serialize` of this
            // very engine configuration (the name carries its compatibility hash), in a cache
            // directory owned by this process's user. wasmtime still checks its header and
            // version and refuses anything else; a refused artifact is recompiled.
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(component) => return Ok((component, true)),
                Err(e) => tracing::warn!(
                    path = %path.display(),
                    error = %format!("{e:#}"),
                    "ignoring unusable compiled artifact"
                ),
            }
        }
        let component = Component::new(engine, bytes)?;
        if let Some(path) = self.path_for(sha256)
            && let Err(e) = store(&path, &component)
        {
            // A read-only or full cache directory costs speed, not correctness.
            tracing::warn!(path = %path.display(), error = %e, "cannot write compiled artifact");
        }
        Ok((component, false))
    }
}

/// Writes the artifact atomically: a reader sees the old state or the whole new file.
fn store(path: &Path, component: &Component) -> std::io::Result<()> {
    let bytes = component
        .serialize()
        .map_err(|e| std::io::Error::other(format!("{e:#}")))?;
    let dir = path.parent().expect("artifact path has a parent");
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(&bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}
