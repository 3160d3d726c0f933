//! Precompiled plugins on disk, so a restart or a reload does not compile a
//! component again.
//!
//! An artifact is named by the component's content hash and by a hash of
//! everything in the engine that affects compiled code (wasmtime version,
//! target, settings), so a changed engine never loads a stale artifact.
//!
//! Loading an artifact runs the native code in it, and wasmtime checks
//! only its header. So each file ends with a BLAKE3 digest of the artifact
//! before it, checked before anything of it runs: an artifact a flash
//! cell or a disk repair changed is compiled again, not executed.

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
        if let Ok(file) = fs::read(&path) {
            match checked(&file) {
                // SAFETY: deserializing runs native code from the file. The
                // file is in the appliance's data directory (mode 0700),
                // written only by `store` below, atomically, under a name
                // derived from the content hash of the component it was
                // compiled from, and its digest says it is what was written.
                // wasmtime checks its header against this engine and refuses
                // a mismatch.
                #[allow(unsafe_code)]
                Some(artifact) => match unsafe { Component::deserialize(engine, artifact) } {
                    Ok(c) => return Ok((c, true)),
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "ignoring unusable precompiled plugin");
                    }
                },
                None => {
                    tracing::warn!(path = %path.display(), "ignoring a precompiled plugin that is not what was written (its digest differs)");
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

/// Bytes of the digest at the end of a cached file.
const DIGEST: usize = blake3::OUT_LEN;

/// The artifact in `file`, if the digest that ends it matches.
fn checked(file: &[u8]) -> Option<&[u8]> {
    let (artifact, digest) = file.split_at_checked(file.len().checked_sub(DIGEST)?)?;
    // blake3's `Hash` compares in constant time; time does not matter here,
    // but it is the comparison the crate offers.
    (blake3::hash(artifact) == <[u8; DIGEST]>::try_from(digest).ok()?).then_some(artifact)
}

/// Write `artifact` and its digest to `path` in `dir` atomically: a crash
/// leaves the old file or the new one, never a torn one. Only the
/// appliance reads it.
fn store(dir: &Path, path: &Path, artifact: &[u8]) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    let mut file = Vec::with_capacity(artifact.len() + DIGEST);
    file.extend_from_slice(artifact);
    file.extend_from_slice(blake3::hash(artifact).as_bytes());
    crate::store::write_atomic(path, &file, 0o600)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_file_is_read_back_only_with_its_digest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.cwasm");
        store(dir.path(), &path, b"compiled code").unwrap();
        let file = fs::read(&path).unwrap();
        assert_eq!(checked(&file), Some(&b"compiled code"[..]));
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        for flipped in 0..file.len() {
            let mut changed = file.clone();
            if let Some(b) = changed.get_mut(flipped) {
                *b ^= 0x10;
            }
            assert_eq!(checked(&changed), None, "byte {flipped} changed");
        }
        assert_eq!(checked(file.get(..DIGEST).unwrap()), None);
        assert_eq!(checked(b"short"), None);
    }
}
