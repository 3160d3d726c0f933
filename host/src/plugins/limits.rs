//! What a plugin may use. Every call into a plugin is bounded by these, and
//! each bound says why it has the value it has.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What happens to the traffic a plugin judges once the plugin is disabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum FailMode {
    /// Refuse what the plugin would have judged: frames are not forwarded.
    /// The default for every security plugin.
    #[default]
    Closed,
    /// Let traffic through unjudged. Dangerous: a broken detector then
    /// detects nothing.
    DangerousOpen,
}

impl fmt::Display for FailMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FailMode::Closed => "fail-closed",
            FailMode::DangerousOpen => "fail-open",
        })
    }
}

/// The bounds on one plugin. Defaults suit a first-party protocol parser or
/// detector on a small appliance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Limits {
    /// Time one call may run, in milliseconds: CPU time of its thread, so
    /// that a call the kernel kept off the CPU on a loaded appliance is not
    /// charged for the wait, and at most 100 times that on the wall clock.
    /// Default 50: a parser takes microseconds per chunk, and a frame must
    /// not wait long.
    pub deadline_ms: u64,
    /// Linear memory one instance may grow to, in bytes. Default 64 MiB: a
    /// parser or a baseline needs a few, and the appliance runs many
    /// instances.
    pub memory_bytes: usize,
    /// Bytes a call may hand back to the host (events, findings, strings),
    /// and bytes one host call may pass in. Default 4 MiB: a 64 KiB chunk of
    /// the smallest MQTT packets describes itself in about 1.5 MiB.
    pub output_bytes: usize,
    /// Size of a parser's per-direction session state, in bytes. Default
    /// 4 KiB: it is held by the host for every live session.
    pub state_bytes: usize,
    /// Bytes of keys and values the plugin may keep in its store. Default
    /// 1 MiB.
    pub kv_quota_bytes: u64,
    /// Key-value operations one call may make, and [`KV_OPS_PER_EVENT`]
    /// more for each event of the batch a detector or responder is given.
    /// Default 4096: a detector reads and writes a few keys per event;
    /// more is a plugin gone wrong.
    pub kv_ops_per_call: u32,
    /// Log lines one call may write; more are counted and dropped. Default 16.
    pub log_lines_per_call: u32,
    /// Faults (traps, limits hit, contract broken) before the plugin is
    /// disabled. Default 5.
    pub max_strikes: u32,
    /// What happens once the plugin is disabled. Default fail-closed.
    pub fail_mode: FailMode,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            deadline_ms: 50,
            memory_bytes: 64 << 20,
            output_bytes: 4 << 20,
            state_bytes: 4 << 10,
            kv_quota_bytes: 1 << 20,
            kv_ops_per_call: 4096,
            log_lines_per_call: 16,
            max_strikes: 5,
            fail_mode: FailMode::Closed,
        }
    }
}

impl Limits {
    /// The call deadline as a duration.
    pub fn deadline(&self) -> Duration {
        Duration::from_millis(self.deadline_ms)
    }
}

/// Key-value operations a detector or responder call may make for each
/// event of its batch, over [`Limits::kv_ops_per_call`].
pub const KV_OPS_PER_EVENT: u32 = 4;

/// The largest key and value a plugin may store: the SDK's, so that the
/// native test harness and the settings cache hold plugins to the same.
pub use palisade_plugin_sdk::host::kv::{MAX_KEY_LEN, MAX_VALUE_LEN};
/// Log lines are cut to this many bytes: a line is for a person to read.
pub const MAX_LOG_LINE: usize = 1024;
/// Counter names longer than this are refused: they become metric labels.
pub const MAX_COUNTER_NAME: usize = 64;
/// Distinct counters one plugin may create: each is a metric series.
pub const MAX_COUNTERS: usize = 256;
/// Bytes one call to `wasi:random` may ask for; more is a trap. The host
/// allocates and fills them outside the epoch deadline, so wasmtime-wasi's
/// default (64 MiB a call) would let a plugin make it do much. wasi-libc's
/// `getentropy`, through which Rust's standard library draws, asks for at
/// most 256 at a time.
pub const MAX_RANDOM_BYTES: u64 = 256;
/// Handles an instance may hold at once, in its component handle table and
/// in the host's table of WASI resources (streams, pollables) alike; past
/// it, making another traps. A plugin holds a few (its standard streams);
/// one that never drops what it gets would otherwise pile up wasmtime's
/// defaults (100,000 and 1,000,000) in a pooled instance.
pub const MAX_HANDLES: usize = 256;
