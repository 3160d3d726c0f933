//! Precompiled plugins on disk, so a restart or a reload does not compile a
//! component again.
//!
//! An artifact is named by the component's content hash and by a hash of
//! everything in the engine that affects compiled code (wasmtime version,
//! target, settings), so a changed engine never loads a stale artifact.

use std::fs;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use wasmtime::Engine;
use wasmtime::component::Component;

/// The precompiled-artifact cache in one directory.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
    engine_key: String,
}

impl Cache {
    /// A cache in `dir` for artifacts of `engine`.
    pub fn new(dir: PathBuf, engine: &Engine) -> Self {
        // DefaultHasher::new() has fixed keys: the same engine gives the same
        // key in every run of this binary.
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Cache {
            dir,
            engine_key: format!("{:016x}", hasher.finish()),
        }
    }

    fn path(&self, component: &[u8]) -> PathBuf {
        let hash = blake3::hash(component);
        self.dir
            .join(format!("{}-{}.cwasm", hash.to_hex(), self.engine_key))
    }

    /// The compiled `component`, from the cache when present (`true`), or
    /// compiled now and stored (`false`).
    pub fn load(&self, engine: &Engine, component: &[u8]) -> wasmtime::Result<(Component, bool)> {
        let path = self.path(component);
        // Read into memory rather than mapping the file: a file changed in
        // place under a mapping (a copy tool, a disk repair) would crash the
        // appliance with SIGBUS.
        if let Ok(artifact) = fs::read(&path) {
            // SAFETY: deserializing runs native code from the file. The file
            // is in the appliance's data directory (mode 0700), written only by
            // `store` below, atomically, under a name derived from the content
            // hash of the component it was compiled from. wasmtime checks its
            // header against this engine and refuses a mismatch.
            #[allow(unsafe_code)]
            match unsafe { Component::deserialize(engine, &artifact) } {
                Ok(c) => return Ok((c, true)),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "ignoring unusable precompiled plugin")
                }
            }
        }
        let artifact = engine.precompile_component(component)?;
        if let Err(e) = store(&self.dir, &path, &artifact) {
            tracing::warn!(path = %path.display(), error = %e, "cannot cache precompiled plugin");
        }
        #[allow(unsafe_code)]
        // SAFETY: `artifact` was produced by this engine a moment ago.
        let c = unsafe { Component::deserialize(engine, &artifact)? };
        Ok((c, false))
    }
}

/// Write `bytes` to `path` in `dir` atomically: a crash leaves the old file
/// or the new one, never a torn one.
fn store(dir: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    crate::store::write_atomic(path, bytes, 0o644)
}
