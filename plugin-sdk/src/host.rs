//! What the appliance offers every plugin: logging, clocks, a
//! small persistent key-value store of the plugin's own, and counters.
//!
//! Inside the appliance these call the host. In native builds (unit tests)
//! they are served by the thread's [`testing::Host`](crate::testing::Host),
//! so plugin logic is tested with plain `cargo test`.
//!
//! ```
//! use palisade_plugin_sdk::host::{self, kv};
//!
//! let seen = kv::get("seen").map_or(0, |v| v.len());
//! kv::set("seen", &vec![1; seen + 1]).expect("within quota");
//! host::log(host::Level::Info, "counted one more");
//! host::counter_add("events", 1);
//! ```

pub use crate::wit::host::{KvError, Level};

#[cfg(not(target_arch = "wasm32"))]
use crate::testing::native as imports;
#[cfg(target_arch = "wasm32")]
use crate::wit::host as imports;

/// Write a log line; the host tags it with the plugin's name. Long lines are
/// cut and floods are rate-limited by the host.
pub fn log(level: Level, message: &str) {
    imports::log(level, message);
}

/// Nanoseconds from a monotonic clock with an unspecified origin.
pub fn monotonic_now() -> u64 {
    imports::monotonic_now()
}

/// Milliseconds since 1970-01-01 00:00 UTC from the appliance's wall clock,
/// for what depends on the time of day. It may jump when the clock is set;
/// measure durations with [`monotonic_now`].
pub fn wall_clock() -> u64 {
    imports::wall_clock()
}

/// Add `delta` to the counter `name`, shown to operators in metrics.
pub fn counter_add(name: &str, delta: u64) {
    imports::counter_add(name, delta);
}

/// The plugin's own persistent key-value store. It survives restarts and
/// upgrades of the plugin, and is bounded by a quota the host enforces.
pub mod kv {
    use super::{KvError, imports};

    /// The largest key the appliance's store accepts, in bytes: keys name
    /// things (a device and a topic), they do not hold data.
    pub const MAX_KEY_LEN: usize = 256;
    /// The largest value the appliance's store accepts under one key, in
    /// bytes.
    pub const MAX_VALUE_LEN: usize = 64 << 10;
    /// What each entry costs against the quota besides its key and value,
    /// in bytes: the store's own bookkeeping for it. Without it a plugin
    /// could fill the appliance's disk with empty entries that cost
    /// nothing.
    pub const ENTRY_OVERHEAD: usize = 64;

    /// The value stored under `key`, if any.
    pub fn get(key: &str) -> Option<Vec<u8>> {
        imports::kv_get(key)
    }

    /// Store `value` under `key`.
    ///
    /// # Errors
    ///
    /// [`KvError::QuotaExceeded`] when the plugin's quota would be exceeded,
    /// [`KvError::TooLarge`] for an oversized key or value, and
    /// [`KvError::Unavailable`] when the store cannot be reached.
    pub fn set(key: &str, value: &[u8]) -> Result<(), KvError> {
        super::config::changing(key);
        imports::kv_set(key, value)
    }

    /// Remove `key`.
    ///
    /// # Errors
    ///
    /// [`KvError::Unavailable`] when the store cannot be reached.
    pub fn delete(key: &str) -> Result<(), KvError> {
        super::config::changing(key);
        imports::kv_delete(key)
    }
}

/// The plugin's settings, which an operator sets with
/// `palisade plugin config NAME KEY VALUE`: text kept in the plugin's store
/// under `config/KEY`.
///
/// An instance reads each setting from the store once and keeps it: the
/// host starts fresh instances when a setting changes (see the contract's
/// `kv-get`), and a plugin's own [`kv::set`] or [`kv::delete`] of a
/// setting is seen at once. Settings are for the operator: a plugin that
/// writes one retires its own instances too.
///
/// ```
/// use palisade_plugin_sdk::host::{config, kv};
///
/// assert_eq!(config::get::<u32>("burst-factor"), None);
/// kv::set("config/burst-factor", b"10").unwrap();
/// assert_eq!(config::get::<u32>("burst-factor"), Some(10));
/// ```
pub mod config {
    use std::cell::RefCell;
    use std::str::FromStr;

    /// Where settings live in the plugin's store.
    pub const PREFIX: &str = "config/";

    /// The most settings an instance keeps; any more are read from the
    /// store each time.
    const KEPT: usize = 32;

    thread_local! {
        /// The settings this instance has read: each one's key (without
        /// the prefix) and stored value.
        static KEPT_SETTINGS: RefCell<Vec<(String, Option<Vec<u8>>)>> =
            const { RefCell::new(Vec::new()) };
    }

    /// The setting `key`, parsed; `None` when it is unset or does not parse.
    /// Settings are kept by key: name them with fixed keys, not with keys
    /// made from what the plugin sees.
    pub fn get<T: FromStr>(key: &str) -> Option<T> {
        let kept = KEPT_SETTINGS.with_borrow(|kept| {
            (kept.iter().find(|(k, _)| k == key)).map(|(_, stored)| stored.clone())
        });
        let stored = kept.unwrap_or_else(|| {
            let stored = read(key);
            // A key the store cannot hold is never set: not worth keeping.
            if PREFIX.len() + key.len() <= super::kv::MAX_KEY_LEN {
                KEPT_SETTINGS.with_borrow_mut(|kept| {
                    if kept.len() < KEPT {
                        kept.push((key.to_owned(), stored.clone()));
                    }
                });
            }
            stored
        });
        // Parsed outside the cache: a `FromStr` may read settings itself.
        parse(stored.as_deref())
    }

    fn read(key: &str) -> Option<Vec<u8>> {
        let mut stored = String::with_capacity(PREFIX.len() + key.len());
        stored.push_str(PREFIX);
        stored.push_str(key);
        super::kv::get(&stored)
    }

    fn parse<T: FromStr>(value: Option<&[u8]>) -> Option<T> {
        std::str::from_utf8(value?).ok()?.trim().parse().ok()
    }

    /// Forget the settings read, when `key` is one being written.
    pub(crate) fn changing(key: &str) {
        if key.starts_with(PREFIX) {
            forget();
        }
    }

    /// Forget the settings read.
    pub(crate) fn forget() {
        KEPT_SETTINGS.with_borrow_mut(Vec::clear);
    }
}
