//! The protocol-hygiene detector: what no healthy device does, whatever
//! its baseline.
//!
//! - a malformed frame (the parser's `PROTOCOL.malformed` report);
//! - a CONNECT flood: more MQTT CONNECTs from one device in a minute than
//!   `config/connects-per-minute` (default 10), across its sessions
//!   (counted in the store, one key per device);
//! - a Modbus function code outside the public set (user-defined or
//!   unassigned);
//! - a Modbus response or exception to no request the parser saw
//!   (`unmatched-request`): a spoofed or replayed answer, or a transaction
//!   id reused while its request was in flight;
//! - a write (Modbus write, file record write included, CoAP PUT, POST or
//!   DELETE, MQTT publish to a topic ending in `/cmd` or `/set`) inside the
//!   read-only window `config/read-only-hours`, for example `22-6` (UTC,
//!   end excluded).

use std::cell::{OnceCell, RefCell};
use std::collections::BTreeMap;

use palisade_plugin_sdk::host::{self, Level, config, kv};
use palisade_plugin_sdk::{Batch, Detector, EventRef, Finding, KindId, Session, Severity};

/// CONNECTs per device and minute above which it is a flood.
pub const CONNECTS_PER_MINUTE: u64 = 10;

/// The store key of a device's CONNECT count: one key per device, holding
/// the minute (since the epoch) and the CONNECTs in it, so that what a
/// device leaves in the store does not grow with the minutes it connects
/// in.
pub fn connects_key(device: &str) -> String {
    format!("connects/{device}")
}

/// The store key an earlier version kept a device's CONNECTs of `minute`
/// under. It deleted the previous minute's key only, so a device that
/// connected in minutes apart left keys behind for good, until they filled
/// the plugin's quota. Device ids have no `/` (the appliance refuses one),
/// so no other device's [`connects_key`] is one of these.
fn old_connects_key(device: &str, minute: u64) -> String {
    format!("connects/{device}/{minute}")
}

/// Remove the old keys of `device` that can be named: those of `minute`
/// and the one before, which an instance of the earlier version may still
/// be writing while the new one takes over. The store has no listing, so
/// the keys left at older minutes cannot be found from here.
fn remove_old_counts(device: &str, minute: u64) {
    for minute in [minute, minute.saturating_sub(1)] {
        // A key the store could not remove now is tried again on the
        // device's next CONNECT in these minutes.
        let _ = kv::delete(&old_connects_key(device, minute));
    }
}

/// What a call did once, not on every CONNECT: each host call counts
/// against the call's budget of store operations.
#[derive(Debug, Default)]
struct Once {
    /// A count the store refused was logged.
    warned: bool,
    /// The device's old keys were removed.
    swept: bool,
}

/// A CONNECT count as stored: the minute, then the count, little-endian.
fn encode_count(minute: u64, count: u64) -> [u8; 16] {
    let mut bytes = [0; 16];
    let (m, c) = bytes.split_at_mut(8);
    m.copy_from_slice(&minute.to_le_bytes());
    c.copy_from_slice(&count.to_le_bytes());
    bytes
}

/// The `(minute, count)` stored as `bytes`; `None` for a value of another
/// shape.
fn decode_count(bytes: &[u8]) -> Option<(u64, u64)> {
    let minute = bytes.get(..8)?.try_into().ok()?;
    let count = bytes.get(8..)?.try_into().ok()?;
    Some((u64::from_le_bytes(minute), u64::from_le_bytes(count)))
}

/// Devices whose count an instance keeps besides the store: enough for the
/// devices connecting in one minute on a site of thousands, while an
/// instance's memory stays small (an entry is a device id and two numbers).
const REMEMBERED: usize = 1024;

thread_local! {
    /// The CONNECT counts this instance made, by device: `(minute, count)`.
    /// The store holds the count every instance shares; this is what the
    /// instance still knows when the store refuses a write (its quota
    /// full), so that a flood is flagged all the same rather than every
    /// CONNECT being counted as the first.
    static COUNTED: RefCell<BTreeMap<String, (u64, u64)>> = const { RefCell::new(BTreeMap::new()) };
}

/// Count a CONNECT of `device` in `minute`; returns the CONNECTs it sent in
/// that minute, this one included, across instances and sessions as far as
/// the store could keep them. A count the store refuses is logged, and the
/// device's old keys removed ([`remove_old_counts`]), once a call: `once`
/// says what was.
fn count_connect(device: &str, minute: u64, once: &mut Once) -> u64 {
    if !std::mem::replace(&mut once.swept, true) {
        remove_old_counts(device, minute);
    }
    let key = connects_key(device);
    let stored = kv::get(&key)
        .as_deref()
        .and_then(decode_count)
        .filter(|&(m, _)| m == minute)
        .map_or(0, |(_, count)| count);
    let count = COUNTED.with_borrow_mut(|counted| {
        let remembered = counted
            .get(device)
            .filter(|&&(m, _)| m == minute)
            .map_or(0, |&(_, count)| count);
        let count = stored.max(remembered).saturating_add(1);
        if let Some(entry) = counted.get_mut(device) {
            *entry = (minute, count);
        } else {
            if counted.len() >= REMEMBERED {
                counted.retain(|_, &mut (m, _)| m == minute);
            }
            if counted.len() < REMEMBERED {
                counted.insert(device.to_owned(), (minute, count));
            }
        }
        count
    });
    if let Err(e) = kv::set(&key, &encode_count(minute, count))
        && !std::mem::replace(&mut once.warned, true)
    {
        host::log(
            Level::Warn,
            &format!(
                "cannot store the CONNECT count of {device} ({e:?}): counted by this instance only"
            ),
        );
    }
    count
}

/// The detector as a plugin.
#[derive(Debug)]
pub struct Hygiene;

/// Modbus function codes of the public set (Modbus Application Protocol
/// V1.1b3, section 5.1).
pub const PUBLIC_FUNCTIONS: &[i64] = &[
    1, 2, 3, 4, 5, 6, 7, 8, 11, 12, 15, 16, 17, 20, 21, 22, 23, 24, 43,
];

/// Whether `hour` falls in the window `from-to` (wrapping past midnight).
pub fn in_window(window: &str, hour: u64) -> bool {
    let Some((from, to)) = window.split_once('-') else {
        return false;
    };
    let (Ok(from), Ok(to)) = (from.trim().parse::<u64>(), to.trim().parse::<u64>()) else {
        return false;
    };
    if from <= to {
        (from..to).contains(&hour)
    } else {
        hour >= from || hour < to
    }
}

/// Modbus function 21, write file record: the parser reports it as
/// `modbus.other`, as it does every function it does not describe further.
const WRITE_FILE_RECORD: i64 = 21;

fn is_write(event: &EventRef<'_>) -> bool {
    match event.kind() {
        "modbus.write" | "modbus.read-write" => true,
        "modbus.other" => event.int("function") == Some(WRITE_FILE_RECORD),
        "coap.request" => matches!(
            event.text("method"),
            Some("PUT" | "POST" | "DELETE" | "PATCH" | "iPATCH")
        ),
        "mqtt.publish" => event
            .text("topic")
            .is_some_and(|t| t.ends_with("/cmd") || t.ends_with("/set")),
        _ => false,
    }
}

/// What of an event's kind the checks depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Malformed,
    Connect,
    Modbus,
    Other,
}

impl Class {
    fn of(kind: &str) -> Class {
        if kind.ends_with(".malformed") {
            Class::Malformed
        } else if kind == "mqtt.connect" {
            Class::Connect
        } else if kind.starts_with("modbus.") {
            Class::Modbus
        } else {
            Class::Other
        }
    }
}

impl Detector for Hygiene {
    fn detect(session: &Session, events: &Batch) -> Vec<Finding> {
        let device = &session.device.id;
        // What only some events need is read when one does: a batch of
        // telemetry asks the host for the window alone.
        let now = OnceCell::new();
        let now = || *now.get_or_init(host::wall_clock);
        let flood_at = OnceCell::new();
        let flood_at = || {
            *flood_at
                .get_or_init(|| config::get("connects-per-minute").unwrap_or(CONNECTS_PER_MINUTE))
        };
        let window: Option<String> = config::get("read-only-hours");
        let mut findings = Vec::new();
        let mut once = Once::default();
        // Events of a kind come in runs: the kind's text is read once a run.
        let mut last: Option<(KindId, Class)> = None;
        for event in events.iter() {
            let i = event.index();
            let kind = event.kind();
            let id = event.kind_id();
            let class = match last {
                Some((last_id, class)) if last_id == id => class,
                _ => {
                    let class = Class::of(kind);
                    last = Some((id, class));
                    class
                }
            };
            if class == Class::Malformed {
                let reason = event.text("reason").unwrap_or("no reason given");
                findings.push(Finding::new(
                    i,
                    Severity::High,
                    0.9,
                    format!(
                        "{device} sent a malformed {} frame: {reason}",
                        event.protocol()
                    ),
                ));
                continue;
            }
            if class == Class::Connect {
                let flood_at = flood_at();
                let count = count_connect(device, now() / 60_000, &mut once);
                if count == flood_at.saturating_add(1) {
                    findings.push(Finding::new(
                        i,
                        Severity::High,
                        0.85,
                        format!("{device} sent {count} MQTT CONNECTs this minute, over {flood_at}: a CONNECT flood"),
                    ));
                }
            }
            if class == Class::Modbus && event.flag("unmatched-request") == Some(true) {
                let function = event.int("function").unwrap_or_default() & 0x7f;
                let transaction = event.int("transaction").unwrap_or_default();
                findings.push(Finding::new(
                    i,
                    Severity::Medium,
                    0.6,
                    format!(
                        "{device} received a Modbus answer (function {function}, transaction {transaction}) to no request it was seen to send: spoofed, replayed, or a transaction id reused in flight"
                    ),
                ));
            }
            if class == Class::Modbus
                && let Some(function) = event.int("function")
            {
                let code = function & 0x7f;
                if !PUBLIC_FUNCTIONS.contains(&code) {
                    let what = if (65..=72).contains(&code) || (100..=110).contains(&code) {
                        "user-defined"
                    } else {
                        "unassigned"
                    };
                    findings.push(Finding::new(
                        i,
                        Severity::Medium,
                        0.7,
                        format!(
                            "{device} used Modbus function {code}, {what}: outside the public set"
                        ),
                    ));
                }
            }
            if let Some(window) = window.as_deref()
                && is_write(&event)
            {
                let hour = (now() / 3_600_000) % 24;
                if in_window(window, hour) {
                    findings.push(Finding::new(
                        i,
                        Severity::High,
                        0.9,
                        format!("{device} wrote ({kind}) at {hour:02}h UTC, inside the read-only window {window}"),
                    ));
                }
            }
        }
        findings
    }
}

palisade_plugin_sdk::export!(detector: Hygiene);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use palisade_plugin_sdk::testing::Host;

    fn session() -> Session {
        Session::new(1, "plc-2", "plc", "cell-1", "modbus")
    }

    #[test]
    fn answers_to_no_request_are_flagged() {
        Host::reset();
        let mut batch = Batch::new();
        batch
            .push("modbus.read")
            .int("transaction", 7)
            .int("function", 3);
        batch
            .push("modbus.response")
            .int("transaction", 7)
            .int("function", 3);
        batch
            .push("modbus.response")
            .int("transaction", 9)
            .int("function", 3)
            .flag("unmatched-request", true);
        batch
            .push("modbus.exception")
            .int("transaction", 11)
            .int("function", 0x86)
            .flag("unmatched-request", true);
        let findings = Hygiene::detect(&session(), &batch);
        let flagged: Vec<u32> = findings.iter().map(|f| f.event).collect();
        assert_eq!(flagged, [2, 3]);
        assert!(
            findings[0]
                .reason
                .contains("Modbus answer (function 3, transaction 9) to no request"),
            "{}",
            findings[0].reason
        );
        assert!(findings[1].reason.contains("(function 6, transaction 11)"));
        assert!(findings.iter().all(|f| f.severity == Severity::Medium));
    }

    #[test]
    fn malformed_frames_and_non_public_functions_are_flagged() {
        Host::reset();
        let mut batch = Batch::new();
        batch.push("modbus.read").int("function", 3);
        batch.push("modbus.other").int("function", 66);
        batch.push("modbus.other").int("function", 90);
        batch.push("modbus.exception").int("function", 0x83);
        batch
            .push("modbus.malformed")
            .text("reason", "length field 300 over 253");
        let findings = Hygiene::detect(&session(), &batch);
        let flagged: Vec<u32> = findings.iter().map(|f| f.event).collect();
        assert_eq!(flagged, [1, 2, 4]);
        assert!(findings[0].reason.contains("function 66, user-defined"));
        assert!(findings[1].reason.contains("function 90, unassigned"));
        assert!(
            findings[2]
                .reason
                .contains("malformed modbus frame: length field 300 over 253")
        );
    }

    #[test]
    fn a_connect_flood_is_flagged_once_a_minute() {
        Host::reset();
        let s = Session::new(1, "cam-1", "camera", "lobby", "mqtt");
        let mut batch = Batch::new();
        for _ in 0..25 {
            batch.push("mqtt.connect").text("client-id", "x");
        }
        let findings = Hygiene::detect(&s, &batch);
        assert_eq!(findings.len(), 1);
        assert_eq!(findings[0].event, 10);
        Host::advance_clock(60_000_000_000);
        let mut calm = Batch::new();
        calm.push("mqtt.connect").text("client-id", "x");
        assert!(Hygiene::detect(&s, &calm).is_empty());
    }

    /// The store keys of CONNECT counts.
    fn connect_keys() -> Vec<String> {
        Host::kv()
            .into_keys()
            .filter(|k| k.starts_with("connects/"))
            .collect()
    }

    #[test]
    fn a_device_that_connects_now_and_then_keeps_one_count_in_the_store() {
        Host::reset();
        let s = Session::new(1, "cam-1", "camera", "lobby", "mqtt");
        let mut connect = Batch::new();
        connect.push("mqtt.connect").text("client-id", "x");
        let first_minute = host::wall_clock() / 60_000;
        assert!(Hygiene::detect(&s, &connect).is_empty());
        Host::advance_clock(2 * 60_000_000_000);
        assert!(Hygiene::detect(&s, &connect).is_empty());
        let keys = connect_keys();
        assert_eq!(keys.len(), 1, "{keys:?}");
        assert!(
            !keys.iter().any(|k| k.ends_with(&first_minute.to_string())),
            "minute 0's count is gone: {keys:?}"
        );
    }

    #[test]
    fn the_old_per_minute_counts_a_device_can_name_are_removed() {
        Host::reset();
        let s = Session::new(1, "cam-1", "camera", "lobby", "mqtt");
        let minute = host::wall_clock() / 60_000;
        let old = |device: &str, m: u64| format!("connects/{device}/{m}");
        // What the previous version left: a count under a key per minute.
        for (device, m) in [
            ("cam-1", minute),
            ("cam-1", minute - 1),
            ("cam-1", minute - 5),
            ("cam-2", minute),
        ] {
            kv::set(&old(device, m), &3_u64.to_le_bytes()).unwrap();
        }
        let mut connect = Batch::new();
        connect.push("mqtt.connect").text("client-id", "x");
        connect.push("mqtt.connect").text("client-id", "x");
        assert!(Hygiene::detect(&s, &connect).is_empty());
        let keys = connect_keys();
        assert_eq!(
            keys,
            [
                connects_key("cam-1"),
                // The store offers no listing: older minutes cannot be
                // named, and another device's keys are its own.
                old("cam-1", minute - 5),
                old("cam-2", minute),
            ]
        );
    }

    #[test]
    fn a_flood_is_flagged_after_many_devices_came_and_went() {
        Host::reset();
        // Room for a few hundred counts: fewer than the devices below.
        Host::set_kv_quota(16 << 10);
        let mut connect = Batch::new();
        connect.push("mqtt.connect").text("client-id", "x");
        for i in 0..1000 {
            let s = Session::new(i, &format!("dev-{i}"), "sensor", "yard", "mqtt");
            assert!(Hygiene::detect(&s, &connect).is_empty());
            Host::advance_clock(30_000_000_000);
        }
        let s = Session::new(2000, "flooder", "sensor", "yard", "mqtt");
        let mut flood = Batch::new();
        for _ in 0..25 {
            flood.push("mqtt.connect").text("client-id", "x");
        }
        let findings = Hygiene::detect(&s, &flood);
        assert_eq!(findings.len(), 1, "{findings:?}");
        assert!(findings[0].reason.contains("a CONNECT flood"));
        // The store is full: what could not be kept is said.
        assert!(
            Host::logs()
                .iter()
                .any(|(level, line)| *level == host::Level::Warn && line.contains("flooder")),
            "{:?}",
            Host::logs()
        );
    }

    #[test]
    fn writes_in_the_read_only_window_are_flagged() {
        Host::reset();
        kv::set("config/read-only-hours", b"22-6").unwrap();
        let mut batch = Batch::new();
        batch.push("modbus.write").int("function", 16);
        batch.push("modbus.read").int("function", 3);
        // The testing clock starts at 00:00 UTC: inside the window.
        assert_eq!(Hygiene::detect(&session(), &batch).len(), 1);
        Host::advance_clock(12 * 3_600_000_000_000);
        assert!(
            Hygiene::detect(&session(), &batch).is_empty(),
            "12h is outside"
        );
        assert!(in_window("22-6", 23) && in_window("22-6", 5) && !in_window("22-6", 6));
        assert!(in_window("9-17", 9) && !in_window("9-17", 17) && !in_window("bad", 1));
    }

    #[test]
    fn a_file_record_write_in_the_read_only_window_is_flagged() {
        Host::reset();
        kv::set("config/read-only-hours", b"22-6").unwrap();
        // The parser reports functions 20 and 21 (read and write file
        // record) as `modbus.other`: only the write is flagged.
        let mut batch = Batch::new();
        batch
            .push("modbus.other")
            .int("unit", 1)
            .int("function", 20);
        batch
            .push("modbus.other")
            .int("unit", 1)
            .int("function", 21);
        let findings = Hygiene::detect(&session(), &batch);
        assert_eq!(findings.len(), 1, "{findings:?}");
        assert_eq!(findings[0].event, 1);
        assert!(
            findings[0]
                .reason
                .contains("inside the read-only window 22-6"),
            "{}",
            findings[0].reason
        );
    }
}
