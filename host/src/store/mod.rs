//! Where the appliance keeps its state: one sled database in the data
//! directory: the plugins' key-value stores, one tree (namespace) per
//! plugin, each with a quota, and trees other stages open for their records
//! (the device registry).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use palisade_plugin_sdk::host::kv::ENTRY_OVERHEAD;

/// Errors from the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened or used.
    #[error("state database: {0}")]
    Sled(#[from] sled::Error),
    /// Another holder kept the database's lock for as long as
    /// [`Store::open`] waits.
    #[error("the state database in {} is locked by another process", .0.display())]
    Locked(PathBuf),
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
/// (or a crash) sees the old file or the new one, never half of one, and
/// once it returns the new one survives a power cut.
///
/// Each write has a temporary file of its own, so writers of one path (two
/// loads of a plugin caching it at once) never write into each other's.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let mut tmp = path.as_os_str().to_owned();
    let write = WRITES.fetch_add(1, Ordering::Relaxed);
    tmp.push(format!(".tmp{}-{write}", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp);
    // Left by a crashed process that had this process's id.
    let _ = std::fs::remove_file(&tmp);
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return written;
    }
    // The rename is durable once the directory is. The new file is in
    // place either way: a failed sync is told, not returned as a failed
    // write.
    let dir = (path.parent())
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if let Err(e) = std::fs::File::open(dir).and_then(|d| d.sync_all()) {
        tracing::warn!(path = %path.display(), error = %e, "written, but its directory could not be synced: a power cut now may undo the write");
    }
    Ok(())
}

/// The appliance's state database.
#[derive(Debug, Clone)]
pub struct Store {
    /// Stopped when the last clone goes, before the fields after it drop:
    /// the database then closes when that drop returns, unless a
    /// [`PluginKv`] or a tree outlives the store (a namespace still writes
    /// what it holds when its last handle goes).
    _writer: Arc<Writer>,
    /// The plugins' namespaces by plugin name, each shared by every handle
    /// on it (the runtime's, the admin API's, an old and a new version
    /// during a swap): each write's quota check sees the others, and a
    /// write held back is seen by every reader. (Before `db`: fields drop
    /// in order, and a namespace writes what it holds when it goes.)
    namespaces: Arc<Mutex<HashMap<String, Arc<Mutex<Namespace>>>>>,
    db: sled::Db,
}

/// How often the plugins' held writes are written to the database; sled
/// writes them to disk within its own flush interval (half a second) after.
const WRITE_BACK: Duration = Duration::from_millis(250);

/// How long [`Store::open`] waits for the database's lock. sled's own
/// background writes keep its file, and so its lock, for a moment after
/// the last handle on a database is dropped: a store reopened at once in
/// the same process (a command line run just as `palisade serve` stops,
/// a tool that opens the state once per step) would otherwise fail at
/// random.
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// How often [`Store::open`] tries the lock again while it waits.
const LOCK_POLL: Duration = Duration::from_millis(10);

/// Whether sled failed to open a database because another holder has its
/// lock. sled tells it in the message only (sled 0.34, `Config::try_lock`).
fn is_locked(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.to_string().starts_with("could not acquire lock"))
}

/// Writes a namespace holds at most: one more writes them all at once.
const MAX_HELD: usize = 1024;

impl Store {
    /// Open (or create) the database in `dir`, waiting up to [`LOCK_WAIT`]
    /// for another holder to let it go.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_waiting(dir, LOCK_WAIT)
    }

    fn open_waiting(dir: &Path, wait: Duration) -> Result<Self, StoreError> {
        let deadline = Instant::now() + wait;
        loop {
            match sled::open(dir) {
                Ok(db) => return Ok(Self::with(db)),
                Err(e) if !is_locked(&e) => return Err(e.into()),
                Err(_) if Instant::now() >= deadline => {
                    return Err(StoreError::Locked(dir.to_owned()));
                }
                Err(_) => std::thread::sleep(LOCK_POLL),
            }
        }
    }

    /// A database that lives in memory only, for tools and tests.
    pub fn temporary() -> Result<Self, StoreError> {
        Ok(Self::with(sled::Config::new().temporary(true).open()?))
    }

    fn with(db: sled::Db) -> Self {
        let namespaces: Arc<Mutex<HashMap<String, Arc<Mutex<Namespace>>>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let flush_asked = Arc::new(AtomicBool::new(false));
        let flushes = Arc::new(AtomicU64::new(0));
        let (weak, stopped, asked) = (
            Arc::downgrade(&namespaces),
            stop.clone(),
            flush_asked.clone(),
        );
        let flushed = flushes.clone();
        let disk = db.clone();
        let spawned = std::thread::Builder::new()
            .name("kv-write-back".into())
            .spawn(move || {
                loop {
                    std::thread::park_timeout(WRITE_BACK);
                    let namespaces = weak.upgrade().filter(|_| !stopped.load(Ordering::Relaxed));
                    let Some(namespaces) = namespaces else {
                        return;
                    };
                    if asked.swap(false, Ordering::AcqRel) {
                        flush_logged(&namespaces, &disk);
                        flushed.fetch_add(1, Ordering::Release);
                        continue;
                    }
                    let all: Vec<_> = lock(&namespaces).values().cloned().collect();
                    drop(namespaces);
                    for namespace in all {
                        lock(&namespace).write_back();
                    }
                }
            });
        let thread = match spawned {
            Ok(thread) => Some(thread),
            Err(e) => {
                // Writes then reach the database at each flush and when the
                // store closes.
                tracing::error!(error = %e, "cannot start the plugin state writer");
                None
            }
        };
        Store {
            _writer: Arc::new(Writer {
                stop,
                flush_asked,
                flushes,
                thread,
            }),
            namespaces,
            db,
        }
    }

    /// A new identifier, increasing over the database's life.
    pub(crate) fn next_id(&self) -> Result<u64, StoreError> {
        Ok(self.db.generate_id()?)
    }

    /// The key-value store of plugin `name`, holding at most `quota` bytes of
    /// keys and values, with [`ENTRY_OVERHEAD`] for each entry. Every
    /// instance of the plugin shares it.
    pub fn plugin_kv(&self, name: &str, quota: u64) -> Result<PluginKv, StoreError> {
        let mut namespaces = lock(&self.namespaces);
        let namespace = match namespaces.get(name) {
            Some(namespace) => namespace.clone(),
            None => {
                let tree = self.db.open_tree(format!("plugin-kv/{name}"))?;
                let mut used = 0u64;
                for entry in tree.iter() {
                    let (k, v) = entry?;
                    used += entry_size(k.len(), v.len());
                }
                let namespace = Arc::new(Mutex::new(Namespace {
                    tree,
                    used,
                    held: HashMap::new(),
                    settings: Arc::new(AtomicU64::new(0)),
                }));
                namespaces.insert(name.to_owned(), namespace.clone());
                namespace
            }
        };
        let settings = lock(&namespace).settings.clone();
        Ok(PluginKv {
            quota,
            namespace,
            settings,
        })
    }

    /// The tree (namespace) `name`, for a stage that keeps records of its
    /// own (the device registry, for one).
    pub fn tree(&self, name: &str) -> Result<sled::Tree, StoreError> {
        Ok(self.db.open_tree(name)?)
    }

    /// Write everything to disk, the plugins' held writes included. One
    /// plugin's failing write does not keep the rest from the disk.
    pub fn flush(&self) -> Result<(), StoreError> {
        flush_all(&self.namespaces, &self.db)
    }

    /// Have everything written to disk as [`Store::flush`] does, by the
    /// store's writer thread, now: for a caller that must not wait on the
    /// disk (a quarantine, on a frame's path). The writer logs a failure.
    /// Should the writer thread have failed to start, the caller flushes,
    /// and waits.
    pub fn flush_soon(&self) {
        let writer = &self._writer;
        match &writer.thread {
            Some(thread) => {
                writer.flush_asked.store(true, Ordering::Release);
                thread.thread().unpark();
            }
            None => flush_logged(&self.namespaces, &self.db),
        }
    }
}

/// [`flush_all`], for a caller with no one to return a failure to.
fn flush_logged(namespaces: &Mutex<HashMap<String, Arc<Mutex<Namespace>>>>, db: &sled::Db) {
    if let Err(e) = flush_all(namespaces, db) {
        tracing::error!(error = %e, "cannot write the state to disk: the latest changes may not survive a restart");
    }
}

/// Write every namespace's held writes to the database, then the database
/// to disk. One plugin's failing write does not keep the rest from the
/// disk.
fn flush_all(
    namespaces: &Mutex<HashMap<String, Arc<Mutex<Namespace>>>>,
    db: &sled::Db,
) -> Result<(), StoreError> {
    let all: Vec<_> = lock(namespaces).values().cloned().collect();
    let mut first_error = None;
    for namespace in all {
        if let Err(e) = lock(&namespace).try_write_back() {
            first_error.get_or_insert(e);
        }
    }
    db.flush()?;
    first_error.map_or(Ok(()), Err)
}

/// The thread that writes the plugins' held writes back, and flushes the
/// database when asked to.
#[derive(Debug)]
struct Writer {
    stop: Arc<AtomicBool>,
    /// Set by [`Store::flush_soon`].
    flush_asked: Arc<AtomicBool>,
    /// Flushes the thread has done when asked.
    #[cfg_attr(not(test), expect(dead_code, reason = "read by the tests"))]
    flushes: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

/// What an entry of a `key_len`-byte key and a `value_len`-byte value
/// counts for against its plugin's quota: the bookkeeping sled keeps for
/// each entry is on the disk too, and a quota of keys and values alone
/// would let a plugin fill the disk with empty entries.
fn entry_size(key_len: usize, value_len: usize) -> u64 {
    (key_len + value_len + ENTRY_OVERHEAD) as u64
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// One plugin's namespace in the store.
///
/// Plugins rewrite their state on every call (the baseline detector its
/// two profiles on every batch), and rewriting a value in sled costs about
/// a microsecond and grows its log, which on an appliance's flash is wear.
/// So writes are held here, seen at once by every handle, and written to
/// the database together every [`WRITE_BACK`], at [`Store::flush`] and when
/// the store closes: a value rewritten a thousand times in between is
/// written once. They reach the disk within a second.
#[derive(Debug, Clone)]
pub struct PluginKv {
    quota: u64,
    namespace: Arc<Mutex<Namespace>>,
    /// The namespace's [`Namespace::settings`], read without its lock.
    settings: Arc<AtomicU64>,
}

#[derive(Debug)]
struct Namespace {
    tree: sled::Tree,
    /// Bytes of keys and values stored, with [`ENTRY_OVERHEAD`] for each
    /// entry, the held writes included.
    used: u64,
    /// Writes not yet in the tree: the new value, or `None` for a removal.
    held: HashMap<String, Option<Vec<u8>>>,
    /// How many times a setting (a key under `config/`) has been written.
    settings: Arc<AtomicU64>,
}

impl Namespace {
    /// The value under `key`, held or in the tree.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match self.held.get(key) {
            Some(held) => Ok(held.clone()),
            None => Ok(self.tree.get(key)?.map(|v| v.to_vec())),
        }
    }

    /// Bytes `key` and its value count for against the quota; `None` when it
    /// has no value.
    fn size(&self, key: &str) -> Result<Option<u64>, StoreError> {
        let value = match self.held.get(key) {
            Some(held) => held.as_ref().map(Vec::len),
            None => self.tree.get(key)?.map(|v| v.len()),
        };
        Ok(value.map(|len| entry_size(key.len(), len)))
    }

    /// Hold `value` (`None` for a removal) as the new value of `key`.
    fn hold(&mut self, key: &str, value: Option<Vec<u8>>) -> Result<(), StoreError> {
        if let Some(held) = self.held.get_mut(key) {
            *held = value;
            return Ok(());
        }
        // Memory stays bounded: a new key when as many are held writes them
        // first, or is refused if the database fails.
        if self.held.len() >= MAX_HELD {
            self.try_write_back()?;
        }
        self.held.insert(key.to_owned(), value);
        Ok(())
    }

    /// Write the held writes to the tree, in one batch.
    fn try_write_back(&mut self) -> Result<(), StoreError> {
        if self.held.is_empty() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for (key, value) in &self.held {
            match value {
                Some(value) => batch.insert(key.as_bytes(), value.as_slice()),
                None => batch.remove(key.as_bytes()),
            }
        }
        self.tree.apply_batch(batch)?;
        self.held.clear();
        Ok(())
    }

    /// Note that `key` was written.
    fn changed(&self, key: &str) {
        if key.starts_with(palisade_plugin_sdk::host::config::PREFIX) {
            self.settings.fetch_add(1, Ordering::Release);
        }
    }

    fn write_back(&mut self) {
        if let Err(e) = self.try_write_back() {
            // Still held: the next write back tries again.
            tracing::error!(error = %e, "cannot write plugin state");
        }
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        self.write_back();
    }
}

impl PluginKv {
    fn namespace(&self) -> MutexGuard<'_, Namespace> {
        lock(&self.namespace)
    }

    /// The value under `key`.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.namespace().get(key)
    }

    /// Store `value` under `key`, unless the quota would be exceeded.
    pub fn set(&self, key: &str, value: &[u8]) -> Result<(), KvRefusal> {
        let mut namespace = self.namespace();
        let old = namespace.size(key)?.unwrap_or(0);
        let used = namespace.used - old + entry_size(key.len(), value.len());
        if used > self.quota {
            return Err(KvRefusal::QuotaExceeded);
        }
        namespace.hold(key, Some(value.to_vec()))?;
        namespace.used = used;
        namespace.changed(key);
        Ok(())
    }

    /// Store an operator's `value` under `key`, however much of the quota
    /// the plugin's own writes have used: a plugin that fills its store
    /// must not lock the operator out of its settings. The stored bytes
    /// count towards the quota as any others do. The caller bounds the
    /// sizes.
    pub fn set_regardless_of_quota(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let mut namespace = self.namespace();
        let old = namespace.size(key)?.unwrap_or(0);
        namespace.hold(key, Some(value.to_vec()))?;
        namespace.used = namespace.used - old + entry_size(key.len(), value.len());
        namespace.changed(key);
        Ok(())
    }

    /// Remove `key`.
    pub fn delete(&self, key: &str) -> Result<(), KvRefusal> {
        let mut namespace = self.namespace();
        if let Some(size) = namespace.size(key)? {
            namespace.hold(key, None)?;
            namespace.used -= size;
            namespace.changed(key);
        }
        Ok(())
    }

    /// A number that changes whenever a setting (a key under `config/`)
    /// is written or removed. Plugin instances keep the settings they
    /// read, so the runtime retires those older than a change.
    pub fn settings_version(&self) -> u64 {
        self.settings.load(Ordering::Acquire)
    }

    /// The keys starting with `prefix`, with their values, in key order.
    pub fn scan_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let mut namespace = self.namespace();
        namespace.try_write_back()?;
        let mut entries = Vec::new();
        for entry in namespace.tree.scan_prefix(prefix) {
            let (k, v) = entry?;
            entries.push((String::from_utf8_lossy(&k).into_owned(), v.to_vec()));
        }
        Ok(entries)
    }

    /// Bytes of keys and values stored, with [`ENTRY_OVERHEAD`] for each
    /// entry.
    pub fn used(&self) -> u64 {
        self.namespace().used
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A store reopened while another handle lets it go waits for it: sled
    /// keeps the lock for a moment after a drop, and an open failed on it
    /// at random (CI, stop 21). One still held gets a clear error.
    #[test]
    fn opening_a_locked_store_waits_then_says_who_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        let held = Store::open(dir.path()).unwrap();
        held.tree("t").unwrap().insert("k", "v").unwrap();
        let error = Store::open_waiting(dir.path(), Duration::from_millis(50)).unwrap_err();
        assert!(matches!(error, StoreError::Locked(_)), "{error:?}");
        assert_eq!(
            error.to_string(),
            format!(
                "the state database in {} is locked by another process",
                dir.path().display()
            )
        );

        let releaser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            drop(held);
        });
        let reopened = Store::open(dir.path()).unwrap();
        releaser.join().unwrap();
        let value = reopened.tree("t").unwrap().get("k").unwrap();
        assert_eq!(value.as_deref(), Some(&b"v"[..]));
    }

    /// Writers of one path used to share one temporary file: one removed
    /// or renamed the other's, and its rename then failed.
    #[test]
    fn writers_of_one_path_do_not_write_into_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("artifact.cwasm");
        let contents: Vec<Vec<u8>> = (0..8u8).map(|i| vec![i; 1000 + usize::from(i)]).collect();
        std::thread::scope(|s| {
            for content in &contents {
                let path = &path;
                s.spawn(move || {
                    for _ in 0..100 {
                        write_atomic(path, content, 0o600).unwrap();
                    }
                });
            }
        });
        let written = std::fs::read(&path).unwrap();
        assert!(contents.contains(&written), "a torn file");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["artifact.cwasm"], "temporary files left");
    }

    #[test]
    fn flush_soon_has_the_writer_write_everything_to_disk() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let kv = store.plugin_kv("p", 1000).unwrap();
        kv.set("a", b"1").unwrap();
        let flushes = || store._writer.flushes.load(Ordering::Acquire);
        assert_eq!(flushes(), 0);
        store.flush_soon();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while flushes() == 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(flushes(), 1, "the writer flushed once");
        let tree = store.tree("plugin-kv/p").unwrap();
        assert_eq!(tree.get("a").unwrap().as_deref(), Some(&b"1"[..]));
    }

    #[test]
    fn an_operator_sets_a_setting_in_a_full_store() {
        let store = Store::temporary().unwrap();
        let kv = store.plugin_kv("p", 1000).unwrap();
        kv.set("filler", &[0; 900]).unwrap();
        assert!(matches!(
            kv.set("config/mode", b"off"),
            Err(KvRefusal::QuotaExceeded)
        ));
        kv.set_regardless_of_quota("config/mode", b"off").unwrap();
        assert_eq!(kv.get("config/mode").unwrap().as_deref(), Some(&b"off"[..]));
        assert_eq!(kv.used(), (906 + 64) + (14 + 64));
        // The plugin's own writes stay refused while the store is over.
        assert!(matches!(
            kv.set("more", b"x"),
            Err(KvRefusal::QuotaExceeded)
        ));
    }

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
        assert_eq!(runtime.used(), 100 + 64);
        runtime.set("b", &[0; 599]).unwrap();
        assert_eq!(admin.used(), 700 + 2 * 64);
        // Another plugin has a store and a quota of its own.
        assert_eq!(store.plugin_kv("q", 1000).unwrap().used(), 0);
    }

    #[test]
    fn held_writes_are_seen_at_once_and_reach_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let tree = store.tree("plugin-kv/p").unwrap();
        let (runtime, admin) = (store.plugin_kv("p", 1000), store.plugin_kv("p", 1000));
        let (runtime, admin) = (runtime.unwrap(), admin.unwrap());
        runtime.set("profile", b"one").unwrap();
        runtime.set("gone", b"soon").unwrap();
        admin.delete("gone").unwrap();
        assert_eq!(admin.get("profile").unwrap().as_deref(), Some(&b"one"[..]));
        assert_eq!(runtime.get("gone").unwrap(), None);
        assert_eq!(admin.used(), 10 + 64);
        // The writer writes them within its interval.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while tree.get("profile").unwrap().is_none() {
            assert!(std::time::Instant::now() < deadline, "never written back");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(tree.get("gone").unwrap(), None);
        // A flush writes what is held now.
        runtime.set("profile", b"two").unwrap();
        store.flush().unwrap();
        assert_eq!(tree.get("profile").unwrap().as_deref(), Some(&b"two"[..]));
        // So does closing the store, with a handle still open.
        runtime.set("profile", b"three").unwrap();
        drop((store, tree, admin, runtime));
        let store = Store::open(dir.path()).unwrap();
        let kv = store.plugin_kv("p", 1000).unwrap();
        assert_eq!(kv.get("profile").unwrap().as_deref(), Some(&b"three"[..]));
        assert_eq!(kv.used(), 12 + 64);
        // A prefix scan sees the held writes.
        kv.set("profile-2", b"four").unwrap();
        let keys: Vec<String> = kv
            .scan_prefix("profile")
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, ["profile", "profile-2"]);
    }

    #[test]
    fn a_plugin_writing_many_keys_holds_a_bounded_number() {
        let store = Store::temporary().unwrap();
        let kv = store.plugin_kv("p", 1 << 30).unwrap();
        let tree = store.tree("plugin-kv/p").unwrap();
        for i in 0..3 * MAX_HELD {
            kv.set(&format!("k{i}"), b"v").unwrap();
            kv.delete(&format!("never-set-{i}")).unwrap();
        }
        assert!(lock(&kv.namespace).held.len() <= MAX_HELD);
        // What was written out and what is held make the whole.
        assert!(tree.len() >= 2 * MAX_HELD);
        assert_eq!(kv.get("k0").unwrap().as_deref(), Some(&b"v"[..]));
        assert_eq!(
            kv.get(&format!("k{}", 3 * MAX_HELD - 1))
                .unwrap()
                .as_deref(),
            Some(&b"v"[..])
        );
    }

    #[test]
    fn a_value_replaced_near_the_quota_is_counted_once() {
        let store = Store::temporary().unwrap();
        let kv = store.plugin_kv("p", 200).unwrap();
        kv.set("k", &[1; 59]).unwrap();
        // Over the quota if the old value were kept, within it once replaced.
        kv.set("k", &[2; 69]).unwrap();
        assert_eq!(kv.used(), 70 + 64);
        // Within the quota either way.
        kv.set("k", &[3; 9]).unwrap();
        assert_eq!(kv.used(), 10 + 64);
        assert!(matches!(
            kv.set("k", &[4; 140]),
            Err(KvRefusal::QuotaExceeded)
        ));
        assert_eq!(kv.get("k").unwrap().unwrap(), vec![3; 9]);
        // A key with nothing in it is still a key, and goes.
        kv.set("", b"").unwrap();
        assert_eq!(kv.used(), 10 + 2 * 64);
        kv.delete("").unwrap();
        assert_eq!(kv.get("").unwrap(), None);
        assert_eq!(kv.used(), 10 + 64);
        kv.delete("k").unwrap();
        assert_eq!(kv.used(), 0);
    }

    #[test]
    fn empty_entries_are_not_free() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let kv = store.plugin_kv("p", 1000).unwrap();
        // Each empty entry costs its 3-byte key and the store's bookkeeping:
        // 14 of them fit in 1000 bytes, not the 333 keys alone would allow.
        let stored = (0..500)
            .take_while(|i| kv.set(&format!("{i:03}"), b"").is_ok())
            .count();
        assert_eq!(stored, 14);
        assert!(kv.used() <= 1000);
        // Counted the same when the store is opened again.
        let used = kv.used();
        drop((kv, store));
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.plugin_kv("p", 1000).unwrap().used(), used);
    }
}
