//! The `host` interface of the contract: what every plugin may import.
//!
//! Each plugin instance's store holds a [`PluginState`]; the functions here
//! serve the plugin's imports from it. Expected failures (quota exceeded)
//! go back to the plugin as `kv-error`; abuse (too many operations in one
//! call) is a trap that ends the call.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use wasmtime::component::{HasData, Linker, ResourceTable};
use wasmtime::{ResourceLimiter, Result};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::Fault;
use super::bindings::host::{self, KvError, Level};
use super::deadline::Overtime;
use super::limits::{
    KV_OPS_PER_EVENT, Limits, MAX_COUNTER_NAME, MAX_COUNTERS, MAX_HANDLES, MAX_KEY_LEN,
    MAX_LOG_LINE, MAX_RANDOM_BYTES, MAX_VALUE_LEN,
};
use crate::store::{KvRefusal, PluginKv};

/// Counters a plugin has added to, by name.
pub type Counters = Arc<Mutex<BTreeMap<String, u64>>>;

/// The host side of one plugin instance: what its imports act on, and what
/// the current call has used.
pub struct PluginState {
    plugin: Arc<str>,
    limits: Arc<Limits>,
    kv: PluginKv,
    counters: Counters,
    /// The runtime's clock origin: shared by every instance, so a plugin's
    /// clock never runs backwards when its next call lands on another one.
    clock_origin: Instant,
    kv_ops: u32,
    /// Key-value operations this call may make: see
    /// [`PluginState::allow_kv_ops_for`].
    kv_ops_allowed: u32,
    log_lines: u32,
    /// Bytes of all the instance's linear memories together: the memory
    /// limit is the instance's, however many memories it has.
    memory_bytes: usize,
    /// What the last growth allowed added to `memory_bytes`, taken back if
    /// the growth then failed.
    memory_pending: usize,
    /// Set for a shadow's calls: its writes to the store are discarded.
    kv_read_only: bool,
    /// The call's time past its deadline.
    overtime: Overtime,
    wasi: WasiCtx,
    table: ResourceTable,
}

impl PluginState {
    pub(crate) fn new(
        plugin: Arc<str>,
        limits: Arc<Limits>,
        kv: PluginKv,
        counters: Counters,
        clock_origin: Instant,
    ) -> Self {
        PluginState {
            plugin,
            limits,
            kv,
            counters,
            clock_origin,
            kv_ops: 0,
            kv_ops_allowed: 0,
            log_lines: 0,
            memory_bytes: 0,
            memory_pending: 0,
            kv_read_only: false,
            overtime: Overtime::default(),
            // The WASI shapes Rust's standard library imports, with nothing
            // granted: no files, no environment, no sockets, output discarded.
            wasi: WasiCtx::builder().max_random_size(MAX_RANDOM_BYTES).build(),
            table: {
                let mut table = ResourceTable::new();
                table.set_max_capacity(MAX_HANDLES);
                table
            },
        }
    }

    /// Reset the per-call budgets. A shadow's call (`read_only`) reads the
    /// store but its writes are discarded, so it cannot disturb the state of
    /// the active version, which shares the store.
    pub(crate) fn begin_call(&mut self, read_only: bool) {
        self.kv_ops = 0;
        self.kv_ops_allowed = self.limits.kv_ops_per_call;
        self.log_lines = 0;
        self.kv_read_only = read_only;
        self.overtime = Overtime::begin();
    }

    /// The call reached its deadline on the wall clock: stopped if it used
    /// that much CPU time, else given more (see [`super::deadline`]).
    pub(crate) fn at_deadline(&mut self) -> wasmtime::UpdateDeadline {
        self.overtime.at_deadline(self.limits.deadline())
    }

    /// Let this call, on a batch of `events` events, make
    /// [`KV_OPS_PER_EVENT`] more key-value operations for each. A detector
    /// reads and writes a few keys per event, and a batch is as long as
    /// the device's read: a budget fixed per call let a device that packs
    /// one read with small frames push an honest detector past it, and
    /// strike it out for every device.
    pub(crate) fn allow_kv_ops_for(&mut self, events: usize) {
        let more = u32::try_from(events)
            .unwrap_or(u32::MAX)
            .saturating_mul(KV_OPS_PER_EVENT);
        self.kv_ops_allowed = self.limits.kv_ops_per_call.saturating_add(more);
    }

    fn count_kv_op(&mut self) -> Result<()> {
        self.kv_ops += 1;
        if self.kv_ops > self.kv_ops_allowed {
            return Err(wasmtime::Error::new(Fault::KvOps(self.kv_ops_allowed)));
        }
        Ok(())
    }
}

impl std::fmt::Debug for PluginState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginState")
            .field("plugin", &self.plugin)
            .finish_non_exhaustive()
    }
}

impl ResourceLimiter for PluginState {
    /// Called for each memory's first allocation (from `current` 0) and
    /// each growth; the limit bounds the sum over all of them, since a
    /// component may hold several.
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> Result<bool> {
        let more = desired.saturating_sub(current);
        let total = self.memory_bytes.saturating_add(more);
        if total > self.limits.memory_bytes {
            // A trap, not a failed `memory.grow`: the guest would abort
            // anyway, and this way the operator learns which limit was hit.
            return Err(wasmtime::Error::new(Fault::Memory(
                self.limits.memory_bytes,
            )));
        }
        self.memory_bytes = total;
        self.memory_pending = more;
        Ok(true)
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> Result<()> {
        self.memory_bytes = self.memory_bytes.saturating_sub(self.memory_pending);
        self.memory_pending = 0;
        Ok(())
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> Result<bool> {
        // Tables hold function references; no plugin needs many.
        Ok(desired <= 100_000)
    }
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl host::Host for PluginState {
    fn log(&mut self, level: Level, message: String) -> Result<()> {
        self.log_lines += 1;
        if self.log_lines > self.limits.log_lines_per_call {
            self.counters_add("palisade.log-lines-dropped", 1);
            return Ok(());
        }
        let message = log_line(&message);
        let plugin = &*self.plugin;
        match level {
            Level::Debug => tracing::debug!(plugin, "{message}"),
            Level::Info => tracing::info!(plugin, "{message}"),
            Level::Warn => tracing::warn!(plugin, "{message}"),
            Level::Error => tracing::error!(plugin, "{message}"),
        }
        Ok(())
    }

    fn monotonic_now(&mut self) -> Result<u64> {
        Ok(u64::try_from(self.clock_origin.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }

    fn wall_clock(&mut self) -> Result<u64> {
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Ok(u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX))
    }

    fn kv_get(&mut self, key: String) -> Result<Option<Vec<u8>>> {
        self.count_kv_op()?;
        if key.len() > MAX_KEY_LEN {
            return Ok(None);
        }
        Ok(self.kv.get(&key).unwrap_or_else(|e| {
            tracing::warn!(plugin = &*self.plugin, error = %e, "key-value read failed");
            None
        }))
    }

    fn kv_set(&mut self, key: String, value: Vec<u8>) -> Result<Result<(), KvError>> {
        self.count_kv_op()?;
        if key.len() > MAX_KEY_LEN || value.len() > MAX_VALUE_LEN {
            return Ok(Err(KvError::TooLarge));
        }
        if self.kv_read_only {
            return Ok(Ok(()));
        }
        Ok(self.kv.set(&key, &value).map_err(kv_error))
    }

    fn kv_delete(&mut self, key: String) -> Result<Result<(), KvError>> {
        self.count_kv_op()?;
        if self.kv_read_only {
            return Ok(Ok(()));
        }
        Ok(self.kv.delete(&key).map_err(kv_error))
    }

    fn counter_add(&mut self, name: String, delta: u64) -> Result<()> {
        // Names under `palisade.` are the host's, about the plugin.
        if name.len() <= MAX_COUNTER_NAME && !name.starts_with(HOST_COUNTERS) {
            self.counters_add(&name, delta);
        }
        Ok(())
    }
}

/// The prefix of the counters the host keeps about a plugin.
const HOST_COUNTERS: &str = "palisade.";

impl PluginState {
    /// Add `delta` to counter `name`. A plugin creates at most
    /// [`MAX_COUNTERS`] of its own; the host's are kept beside them, so a
    /// plugin cannot hide what the host counts by using up the names.
    fn counters_add(&self, name: &str, delta: u64) {
        let Ok(mut counters) = self.counters.lock() else {
            return;
        };
        if let Some(c) = counters.get_mut(name) {
            *c = c.saturating_add(delta);
            return;
        }
        let own = counters
            .keys()
            .filter(|k| !k.starts_with(HOST_COUNTERS))
            .count();
        if name.starts_with(HOST_COUNTERS) || own < MAX_COUNTERS {
            counters.insert(name.to_owned(), delta);
        }
    }
}

/// `message` as one line of the appliance's log: its control characters
/// (line breaks above all), the Unicode line and paragraph separators and
/// the bidirectional controls (which some log viewers show as line breaks,
/// or use to reorder what a line reads) escaped, so that it cannot pass for
/// a line of the appliance's own; backslashes escaped too, so that an
/// escape in the line is one the appliance wrote. Then cut to
/// [`MAX_LOG_LINE`] bytes. Escaping comes first, so that it cannot grow the
/// line past the limit; the cut falls between whole characters and whole
/// escapes, so that the line never ends in half of one; and no more of the
/// message is read than the line holds, however long the guest made it.
pub(crate) fn log_line(message: &str) -> std::borrow::Cow<'_, str> {
    if message.len() <= MAX_LOG_LINE && !message.chars().any(escaped) {
        return message.into();
    }
    let mut line = String::with_capacity(MAX_LOG_LINE);
    for c in message.chars() {
        let kept = line.len();
        if escaped(c) {
            line.extend(c.escape_default());
        } else {
            line.push(c);
        }
        if line.len() > MAX_LOG_LINE {
            line.truncate(kept);
            break;
        }
    }
    line.into()
}

/// Whether `c` is written as an escape in a plugin's log line.
fn escaped(c: char) -> bool {
    c.is_control()
        || c == '\\'
        // Line and paragraph separators; bidirectional marks, embeddings,
        // overrides and isolates.
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{061c}')
        || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

fn kv_error(refusal: KvRefusal) -> KvError {
    match refusal {
        KvRefusal::QuotaExceeded => KvError::QuotaExceeded,
        KvRefusal::Store(e) => {
            tracing::warn!(error = %e, "key-value write failed");
            KvError::Unavailable
        }
    }
}

struct HostImports;

impl HasData for HostImports {
    type Data<'a> = &'a mut PluginState;
}

/// Add the `host` interface, and WASI with nothing granted, to `linker`.
pub(crate) fn add_to_linker(linker: &mut Linker<PluginState>) -> Result<()> {
    host::add_to_linker::<PluginState, HostImports>(linker, |state| state)?;
    super::wasi::add_to_linker(linker)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::store::Store;

    fn state(counters: &Counters) -> PluginState {
        let store = Store::temporary().unwrap();
        let limits = Arc::new(Limits {
            log_lines_per_call: 1,
            ..Limits::default()
        });
        let kv = store.plugin_kv("p", limits.kv_quota_bytes).unwrap();
        PluginState::new("p".into(), limits, kv, counters.clone(), Instant::now())
    }

    /// The memory limit bounds all of an instance's memories together: a
    /// second memory gets only what the first left, and a growth that
    /// failed is not counted.
    #[test]
    fn the_memory_limit_is_for_all_memories_together() {
        let mut state = state(&Counters::default());
        let limit = state.limits.memory_bytes;
        let page = 64 << 10;
        assert!(state.memory_growing(0, limit / 2, None).unwrap());
        state
            .memory_grow_failed(wasmtime::Error::msg("no room"))
            .unwrap();
        assert!(state.memory_growing(0, limit / 2, None).unwrap());
        assert!(state.memory_growing(0, limit / 2, None).unwrap());
        assert!(state.memory_growing(0, page, None).is_err());
        assert!(
            state
                .memory_growing(limit / 2, limit / 2 + page, None)
                .is_err()
        );
    }

    /// `wasi:random` gives a plugin what the standard library asks for,
    /// and traps on more: the host would allocate it outside the deadline.
    #[test]
    fn random_bytes_are_given_a_little_at_a_time() {
        use wasmtime_wasi::p2::bindings::random::random::Host;
        let mut state = state(&Counters::default());
        let random = state.wasi.random();
        assert_eq!(random.get_random_bytes(256).unwrap().len(), 256);
        assert!(random.get_random_bytes(257).is_err());
        assert!(random.get_random_bytes(64 << 20).is_err());
    }

    /// The host keeps only a few WASI resources for an instance.
    #[test]
    fn an_instance_holds_few_host_resources() {
        let mut state = state(&Counters::default());
        for _ in 0..MAX_HANDLES {
            state.table.push(()).unwrap();
        }
        assert!(state.table.push(()).is_err());
    }

    #[test]
    fn a_log_line_is_one_line() {
        assert_eq!(log_line("plain é"), "plain é");
        assert_eq!(
            log_line("x\n2026-11-27T00:00:00Z  INFO palisade::admin: forged\r"),
            "x\\n2026-11-27T00:00:00Z  INFO palisade::admin: forged\\r"
        );
        assert_eq!(log_line("\u{1b}[31m"), "\\u{1b}[31m");
        // A backslash the plugin wrote is not taken for an escape.
        assert_eq!(log_line("a\\nb"), "a\\\\nb");
        // Separators some viewers break lines at, and a right-to-left
        // override that would make the rest read backwards.
        assert_eq!(log_line("a\u{2028}b\u{202e}c"), "a\\u{2028}b\\u{202e}c");
    }

    /// The last few characters of `line`.
    fn tail(line: &str) -> String {
        let start = line.char_indices().rev().nth(7).map_or(0, |(i, _)| i);
        line.get(start..).unwrap_or_default().to_owned()
    }

    /// A line that escaping makes longer than the limit is cut after
    /// escaping: it stays within the limit, holds no raw control character,
    /// and ends on a whole escape and a whole character, with as many of
    /// them as fit, wherever the cut falls among their bytes.
    #[test]
    fn a_log_line_is_escaped_then_cut_between_whole_escapes() {
        // Characters a plugin repeats, each with its escape.
        for unit in [
            &[("\n", "\\n")][..],
            &[("\r", "\\r"), ("\n", "\\n")],
            &[("\u{1b}", "\\u{1b}")],
            // NEL: a two-byte control character, escaped into six.
            &[("\u{85}", "\\u{85}")],
            &[("é", "é"), ("\u{7}", "\\u{7}")],
            &[("€", "€")],
            &[("\\", "\\\\")],
            &[("\u{2028}", "\\u{2028}")],
        ] {
            for lead in 0..8 {
                let message = "a".repeat(lead)
                    + &unit
                        .iter()
                        .map(|(c, _)| *c)
                        .collect::<String>()
                        .repeat(MAX_LOG_LINE);
                let mut expected = "a".repeat(lead);
                for (_, escaped) in unit.iter().cycle() {
                    if expected.len() + escaped.len() > MAX_LOG_LINE {
                        break;
                    }
                    expected.push_str(escaped);
                }
                let line = log_line(&message);
                let what = format!("{unit:?} after {lead} bytes");
                assert!(line.len() <= MAX_LOG_LINE, "{what}: {} bytes", line.len());
                assert!(
                    !(line.chars()).any(|c| c.is_control() || c == '\u{2028}'),
                    "{what}"
                );
                assert!(
                    line == expected,
                    "{what}: ends {:?}, not {:?}",
                    tail(&line),
                    tail(&expected),
                );
            }
        }
    }

    #[test]
    fn the_hosts_counters_outlive_a_plugin_that_uses_up_its_names() {
        let counters = Counters::default();
        let mut plugin = state(&counters);
        for i in 0..MAX_COUNTERS + 10 {
            host::Host::counter_add(&mut plugin, format!("mine-{i}"), 1).unwrap();
        }
        // Forged: the host's names are the host's.
        host::Host::counter_add(&mut plugin, "palisade.log-lines-dropped".into(), 1000).unwrap();
        for _ in 0..3 {
            host::Host::log(&mut plugin, Level::Info, "flood".into()).unwrap();
        }
        let counters = counters.lock().unwrap();
        assert_eq!(counters.get("palisade.log-lines-dropped"), Some(&2));
        assert_eq!(counters.len(), MAX_COUNTERS + 1);
    }
}
