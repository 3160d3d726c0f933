//! A native stand-in for the appliance, so plugin logic is unit-tested with
//! plain `cargo test`, without WebAssembly.
//!
//! Each test thread has its own [`Host`]: the [`host`](crate::host)
//! functions write to it, and the test reads logs, counters and the
//! key-value store back from it. [`parse_stream`] drives a [`Parser`] the
//! way the appliance does: it keeps the unconsumed bytes and the session
//! state between chunks. [`parse_datagrams`] does the same for a datagram
//! transport: one call per datagram, the session state carried along.
//!
//! ```
//! use palisade_plugin_sdk::{host, testing};
//!
//! testing::Host::reset();
//! host::counter_add("frames", 2);
//! assert_eq!(testing::Host::counter("frames"), 2);
//! ```

use std::cell::RefCell;
use std::collections::BTreeMap;

use crate::host::{KvError, Level};
use crate::{DatagramParser, Direction, Parsed, Parser, Session};

pub use crate::host::kv::{ENTRY_OVERHEAD, MAX_KEY_LEN, MAX_VALUE_LEN};
/// The default key-value quota of a plugin (keys, values and
/// [`ENTRY_OVERHEAD`] per entry), in bytes.
pub const DEFAULT_KV_QUOTA: usize = 1024 * 1024;

/// The state of the native host on this thread.
#[derive(Debug)]
pub struct Host {
    logs: Vec<(Level, String)>,
    counters: BTreeMap<String, u64>,
    kv: BTreeMap<String, Vec<u8>>,
    kv_quota: usize,
    clock: u64,
    wall_clock: u64,
}

impl Default for Host {
    fn default() -> Self {
        Host {
            logs: Vec::new(),
            counters: BTreeMap::new(),
            kv: BTreeMap::new(),
            kv_quota: DEFAULT_KV_QUOTA,
            clock: 0,
            // 2026-01-05 00:00 UTC, a Monday.
            wall_clock: 1_767_571_200_000,
        }
    }
}

thread_local! {
    static HOST: RefCell<Host> = RefCell::new(Host::default());
}

fn with<R>(f: impl FnOnce(&mut Host) -> R) -> R {
    HOST.with(|h| f(&mut h.borrow_mut()))
}

impl Host {
    /// Forget everything: logs, counters, the store; restore the default
    /// quota and the clock.
    pub fn reset() {
        with(|h| *h = Host::default());
        crate::host::config::forget();
    }

    /// Set the key-value quota, in bytes of keys and values together, with
    /// [`ENTRY_OVERHEAD`] for each entry.
    pub fn set_kv_quota(bytes: usize) {
        with(|h| h.kv_quota = bytes);
    }

    /// Move both clocks forward by `nanos`.
    pub fn advance_clock(nanos: u64) {
        with(|h| {
            h.clock = h.clock.saturating_add(nanos);
            h.wall_clock = h.wall_clock.saturating_add(nanos / 1_000_000);
        });
    }

    /// Set the wall clock, in milliseconds since the Unix epoch (it starts
    /// at 2026-01-05 00:00 UTC, a Monday).
    pub fn set_wall_clock(millis: u64) {
        with(|h| h.wall_clock = millis);
    }

    /// The log lines written so far.
    pub fn logs() -> Vec<(Level, String)> {
        with(|h| h.logs.clone())
    }

    /// The value of counter `name` (0 if never added to).
    pub fn counter(name: &str) -> u64 {
        with(|h| h.counters.get(name).copied().unwrap_or(0))
    }

    /// The key-value store's contents.
    pub fn kv() -> BTreeMap<String, Vec<u8>> {
        with(|h| h.kv.clone())
    }

    fn kv_used(&self) -> usize {
        self.kv.iter().map(|(k, v)| entry_size(k, v.len())).sum()
    }
}

/// What an entry of `key` and a value of `value_len` bytes costs against
/// the quota, as the appliance counts it.
fn entry_size(key: &str, value_len: usize) -> usize {
    key.len() + value_len + ENTRY_OVERHEAD
}

/// The native implementations behind [`crate::host`].
pub(crate) mod native {
    use super::*;

    pub(crate) fn log(level: Level, message: &str) {
        with(|h| h.logs.push((level, message.to_owned())));
    }

    pub(crate) fn monotonic_now() -> u64 {
        with(|h| h.clock)
    }

    pub(crate) fn wall_clock() -> u64 {
        with(|h| h.wall_clock)
    }

    pub(crate) fn counter_add(name: &str, delta: u64) {
        with(|h| {
            let c = h.counters.entry(name.to_owned()).or_default();
            *c = c.saturating_add(delta);
        });
    }

    pub(crate) fn kv_get(key: &str) -> Option<Vec<u8>> {
        with(|h| h.kv.get(key).cloned())
    }

    pub(crate) fn kv_set(key: &str, value: &[u8]) -> Result<(), KvError> {
        if key.len() > MAX_KEY_LEN || value.len() > MAX_VALUE_LEN {
            return Err(KvError::TooLarge);
        }
        with(|h| {
            let old = h.kv.get(key).map_or(0, |v| entry_size(key, v.len()));
            if h.kv_used() - old + entry_size(key, value.len()) > h.kv_quota {
                return Err(KvError::QuotaExceeded);
            }
            h.kv.insert(key.to_owned(), value.to_vec());
            Ok(())
        })
    }

    pub(crate) fn kv_delete(key: &str) -> Result<(), KvError> {
        with(|h| h.kv.remove(key));
        Ok(())
    }
}

/// Feed `chunks` of one direction of a session through parser `P` the way
/// the appliance does: unconsumed bytes are kept and given again with the
/// next chunk, and the session state is carried from call to call.
///
/// Returns every frame and event in one [`Parsed`], with the state, need
/// and malformed report of the last call. Parsing stops at the first
/// malformed report.
///
/// # Panics
///
/// When the parser breaks the contract: frames longer than the input, an
/// empty frame, or not one event per frame. These are bugs in the parser
/// under test.
pub fn parse_stream<P: Parser>(
    session: &Session,
    direction: Direction,
    chunks: &[&[u8]],
) -> Parsed {
    parse_stream_after::<P>(session, direction, &[], chunks)
}

/// As [`parse_stream`], starting from the session state `state` that
/// earlier calls returned: the state is one per session, so a response
/// stream starts from what its requests left.
///
/// # Panics
///
/// As [`parse_stream`].
pub fn parse_stream_after<P: Parser>(
    session: &Session,
    direction: Direction,
    state: &[u8],
    chunks: &[&[u8]],
) -> Parsed {
    let mut all = Parsed::new(Vec::new());
    all.state = state.to_vec();
    let mut pending = Vec::new();
    for chunk in chunks {
        pending.extend_from_slice(chunk);
        let parsed = P::parse(session, direction, &all.state, &pending);
        let consumed = parsed.consumed();
        assert!(
            consumed <= pending.len(),
            "parser consumed more than its input"
        );
        assert!(
            parsed.frame_lengths.iter().all(|&len| len > 0),
            "parser returned an empty frame"
        );
        assert_eq!(
            parsed.frame_lengths.len(),
            parsed.events.len(),
            "parser returned a different number of frames and events"
        );
        pending.drain(..consumed);
        all.frame_lengths.extend(&parsed.frame_lengths);
        all.events.extend(&parsed.events);
        all.state = parsed.state;
        all.needed = parsed.needed;
        all.malformed = parsed.malformed;
        if all.malformed.is_some() {
            break;
        }
    }
    all
}

/// Feed `datagrams` of one session, each with the way it travelled, through
/// [`DatagramParser::parse_datagram`] of `P` the way the appliance does: one call
/// per datagram, the session state carried from call to call, starting
/// empty.
///
/// Returns each datagram's [`Parsed`], in order. A malformed datagram does
/// not stop the others: each datagram is a message of its own.
///
/// ```
/// use palisade_plugin_sdk::{DatagramParser, Direction, Parsed, Parser, Session, testing};
///
/// struct Beacon;
///
/// impl Parser for Beacon {
///     const PROTOCOL: &'static str = "beacon";
///
///     fn parse(_: &Session, _: Direction, state: &[u8], _: &[u8]) -> Parsed {
///         Parsed::new(state.to_vec()).malformed(0, "beacons come in datagrams only")
///     }
/// }
///
/// impl DatagramParser for Beacon {
///     fn parse_datagram(_: &Session, _: Direction, state: &[u8], datagram: &[u8]) -> Parsed {
///         let mut parsed = Parsed::new(state.to_vec());
///         if datagram.is_empty() {
///             return parsed.malformed(0, "empty datagram");
///         }
///         parsed.frame(datagram.len(), "beacon.seen").size("size", datagram.len());
///         parsed
///     }
/// }
///
/// let session = Session::new(1, "beacon-1", "beacon", "lab", "beacons");
/// let up = Direction::ToUpstream;
/// let parsed = testing::parse_datagrams::<Beacon>(&session, &[(up, b"\x01\x02"), (up, b"")]);
/// assert_eq!(parsed[0].events.get(0).unwrap().int("size"), Some(2));
/// assert_eq!(parsed[1].malformed.as_ref().unwrap().reason, "empty datagram");
/// ```
///
/// # Panics
///
/// When the parser breaks the contract for a datagram: anything but
/// exactly one frame covering the whole datagram or a malformed report at
/// offset 0 with no frame, a need for more bytes, or not one event per
/// frame. These are bugs in the parser under test.
pub fn parse_datagrams<P: DatagramParser>(
    session: &Session,
    datagrams: &[(Direction, &[u8])],
) -> Vec<Parsed> {
    let mut state = Vec::new();
    let mut all = Vec::with_capacity(datagrams.len());
    for (i, &(direction, datagram)) in datagrams.iter().enumerate() {
        let parsed = P::parse_datagram(session, direction, &state, datagram);
        assert_eq!(
            parsed.frame_lengths.len(),
            parsed.events.len(),
            "datagram {i}: parser returned a different number of frames and events"
        );
        assert!(
            parsed.needed.is_none(),
            "datagram {i}: parser asked for more bytes of a datagram"
        );
        match (parsed.frame_lengths.as_slice(), &parsed.malformed) {
            ([len], None) => assert_eq!(
                *len as usize,
                datagram.len(),
                "datagram {i}: the frame does not cover the datagram"
            ),
            ([], Some(m)) => assert_eq!(
                m.offset, 0,
                "datagram {i}: malformed report not at offset 0"
            ),
            (lens, m) => panic!(
                "datagram {i}: frames of {lens:?} bytes with malformed report {m:?}, \
                 not one frame or one malformed report"
            ),
        }
        state.clone_from(&parsed.state);
        all.push(parsed);
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream parser: one frame per byte.
    struct Bytes;

    impl Parser for Bytes {
        const PROTOCOL: &'static str = "bytes";

        fn parse(_: &Session, _: Direction, state: &[u8], input: &[u8]) -> Parsed {
            let mut parsed = Parsed::new(state.to_vec());
            for _ in input {
                parsed.frame(1, "bytes.byte");
            }
            parsed
        }
    }

    /// A datagram parser that cuts datagrams as `Bytes` cuts streams.
    struct Broken;

    impl Parser for Broken {
        const PROTOCOL: &'static str = "broken";

        fn parse(session: &Session, direction: Direction, state: &[u8], input: &[u8]) -> Parsed {
            Bytes::parse(session, direction, state, input)
        }
    }

    impl DatagramParser for Broken {
        fn parse_datagram(s: &Session, d: Direction, state: &[u8], datagram: &[u8]) -> Parsed {
            Bytes::parse(s, d, state, datagram)
        }
    }

    fn session() -> Session {
        Session::new(1, "d", "c", "z", "r")
    }

    #[test]
    #[should_panic(expected = "not one frame or one malformed report")]
    fn two_frames_for_one_datagram_are_a_bug() {
        parse_datagrams::<Broken>(&session(), &[(Direction::ToUpstream, b"ab")]);
    }
}
