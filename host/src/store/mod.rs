//! Where the appliance keeps its state: one sled database in the data
//! directory: the plugins' key-value stores, one tree (namespace) per
//! plugin, each with a quota, and trees other stages open for their records
//! (the device registry).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Errors from the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened or used.
    #[error("state database: {0}")]
    Sled(#[from] sled::Error),
}

/// Why a key-value write was refused.
#[derive(Debug, thiserror::Error)]
pub enum KvRefusal {
    /// The plugin's quota would be exceeded.
    #[error("quota exceeded")]
    QuotaExceeded,
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Create the data directory `dir` (and its parents) readable by the
/// appliance's user only: it holds keys, state and precompiled native code.
/// An existing directory is tightened to the same mode.
pub fn create_data_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Write `bytes` to `path` with permission `mode`, atomically: a reader
/// (or a crash) sees the old file or the new one, never half of one.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The appliance's state database.
#[derive(Debug, Clone)]
pub struct Store {
    db: sled::Db,
    /// Bytes each plugin's key-value store holds, shared by every handle
    /// on it (the runtime's, the admin API's, an old and a new version
    /// during a swap), so that each write's quota check sees the others.
    kv_used: Arc<Mutex<HashMap<String, Arc<Mutex<u64>>>>>,
}

impl Store {
    /// Open (or create) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Ok(Store {
            db: sled::open(dir)?,
            kv_used: Arc::default(),
        })
    }

    /// A database that lives in memory only, for tools and tests.
    pub fn temporary() -> Result<Self, StoreError> {
        Ok(Store {
            db: sled::Config::new().temporary(true).open()?,
            kv_used: Arc::default(),
        })
    }

    /// A new identifier, increasing over the database's life.
    pub(crate) fn next_id(&self) -> Result<u64, StoreError> {
        Ok(self.db.generate_id()?)
    }

    /// The key-value store of plugin `name`, holding at most `quota` bytes of
    /// keys and values. Every instance of the plugin shares it.
    pub fn plugin_kv(&self, name: &str, quota: u64) -> Result<PluginKv, StoreError> {
        let tree = self.db.open_tree(format!("plugin-kv/{name}"))?;
        let mut books = self.kv_used.lock().unwrap_or_else(|p| p.into_inner());
        let used = match books.get(name) {
            Some(used) => used.clone(),
            None => {
                let mut used = 0u64;
                for entry in tree.iter() {
                    let (k, v) = entry?;
                    used += (k.len() + v.len()) as u64;
                }
                let used = Arc::new(Mutex::new(used));
                books.insert(name.to_owned(), used.clone());
                used
            }
        };
        Ok(PluginKv { tree, quota, used })
    }

    /// The tree (namespace) `name`, for a stage that keeps records of its
    /// own (the device registry, for one).
    pub fn tree(&self, name: &str) -> Result<sled::Tree, StoreError> {
        Ok(self.db.open_tree(name)?)
    }

    /// Write everything to disk.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }
}

/// One plugin's namespace in the store. Writes reach the disk within
/// sled's flush interval (half a second) or at [`Store::flush`].
#[derive(Debug, Clone)]
pub struct PluginKv {
    tree: sled::Tree,
    quota: u64,
    /// Bytes of keys and values stored, shared by all handles on the
    /// plugin's store; the lock also makes the quota check and the write
    /// one step.
    used: Arc<Mutex<u64>>,
}

impl PluginKv {
    /// The value under `key`.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.tree.get(key)?.map(|v| v.to_vec()))
    }

    /// Store `value` under `key`, unless the quota would be exceeded.
    pub fn set(&self, key: &str, value: &[u8]) -> Result<(), KvRefusal> {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        let entry = (key.len() + value.len()) as u64;
        // Most writes replace a value of about the same size (a plugin
        // rewriting its state on every batch): a write that stays within
        // the quota whatever it replaces is one step.
        if *used + entry <= self.quota {
            let old = self.tree.insert(key, value).map_err(StoreError::from)?;
            *used = *used + entry - old.map_or(0, |v| (key.len() + v.len()) as u64);
            return Ok(());
        }
        let old = self.tree.get(key).map_err(StoreError::from)?;
        let new_used = *used - old.map_or(0, |v| (key.len() + v.len()) as u64) + entry;
        if new_used > self.quota {
            return Err(KvRefusal::QuotaExceeded);
        }
        self.tree.insert(key, value).map_err(StoreError::from)?;
        *used = new_used;
        Ok(())
    }

    /// Remove `key`.
    pub fn delete(&self, key: &str) -> Result<(), KvRefusal> {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = self.tree.remove(key).map_err(StoreError::from)? {
            *used -= (key.len() + old.len()) as u64;
        }
        Ok(())
    }

    /// The keys starting with `prefix`, with their values, in key order.
    pub fn scan_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let mut entries = Vec::new();
        for entry in self.tree.scan_prefix(prefix) {
            let (k, v) = entry?;
            entries.push((String::from_utf8_lossy(&k).into_owned(), v.to_vec()));
        }
        Ok(entries)
    }

    /// Bytes of keys and values stored.
    pub fn used(&self) -> u64 {
        *self.used.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn every_handle_on_a_plugins_store_counts_against_one_quota() {
        let store = Store::temporary().unwrap();
        let runtime = store.plugin_kv("p", 1000).unwrap();
        let admin = store.plugin_kv("p", 1000).unwrap();
        runtime.set("a", &[0; 599]).unwrap();
        assert!(matches!(
            admin.set("b", &[0; 599]),
            Err(KvRefusal::QuotaExceeded)
        ));
        admin.set("a", &[0; 99]).unwrap();
        assert_eq!(runtime.used(), 100);
        runtime.set("b", &[0; 599]).unwrap();
        assert_eq!(admin.used(), 700);
        // Another plugin has a store and a quota of its own.
        assert_eq!(store.plugin_kv("q", 1000).unwrap().used(), 0);
    }

    #[test]
    fn a_value_replaced_near_the_quota_is_counted_once() {
        let store = Store::temporary().unwrap();
        let kv = store.plugin_kv("p", 100).unwrap();
        kv.set("k", &[1; 59]).unwrap();
        // Over the quota if the old value were kept, within it once replaced.
        kv.set("k", &[2; 69]).unwrap();
        assert_eq!(kv.used(), 70);
        // Within the quota either way.
        kv.set("k", &[3; 9]).unwrap();
        assert_eq!(kv.used(), 10);
        assert!(matches!(
            kv.set("k", &[4; 100]),
            Err(KvRefusal::QuotaExceeded)
        ));
        assert_eq!(kv.get("k").unwrap().unwrap(), vec![3; 9]);
        assert_eq!(kv.used(), 10);
        kv.delete("k").unwrap();
        assert_eq!(kv.used(), 0);
    }
}
