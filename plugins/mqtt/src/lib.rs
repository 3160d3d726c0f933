//! An MQTT 3.1.1 and 5.0 parser plugin: it cuts the byte stream into
//! control packets and describes each, both ways: CONNECT (client id,
//! keep-alive, will, whether a username and password are present, never
//! the password), CONNACK, PUBLISH (topic, QoS, flags, packet id, payload
//! size), the acknowledgements with their reason codes, SUBSCRIBE and
//! UNSUBSCRIBE with their filters (a shared subscription's as the filter
//! the broker serves, with its group apart), SUBACK, UNSUBACK, PINGREQ,
//! PINGRESP, DISCONNECT and AUTH. MQTT 5 properties are checked, every
//! one, and skipped. Protocol violations (reserved flags, a second
//! CONNECT, a wildcard in a PUBLISH or will topic or misplaced in a topic
//! filter, a malformed shared subscription, invalid UTF-8, U+0000, a
//! control character or a noncharacter in a string, an unknown property)
//! end the stream as malformed, with the reason.
//!
//! It sits at the start of the detection path: the host hands it the bytes a
//! device sent, it returns one event per packet, and the host forwards each
//! packet only after the detectors have judged its event.
//!
//! The session state (`state.rs`) holds the protocol level each direction
//! has seen (4 for 3.1.1, 5 for 5.0; 0 before it is known), because MQTT 5
//! packets carry properties that 3.1.1 packets lack. The device's
//! direction learns it from CONNECT, the broker's from CONNACK, whose MQTT
//! 5 form is longer. AUTH, which the broker sends before its CONNACK in
//! enhanced authentication, is judged by the level the device's CONNECT
//! gave.
//!
//! It also holds each direction's MQTT 5 topic aliases, so that a PUBLISH
//! naming its topic by alias alone is described with the topic the alias
//! stands for, the one the receiver publishes to: a policy or detector
//! never judges an empty topic. And it holds the Topic Alias Maximum each
//! receiver allowed: the device's CONNECT bounds the broker's aliases, the
//! broker's CONNACK the device's, and a packet without one allows none
//! (MQTT 5 §3.3.2.3.4). An alias never bound, an alias above its
//! receiver's maximum (any alias of the device's before the CONNACK), or
//! aliases that would outgrow the state's bound, are malformed.

mod state;

use std::borrow::Cow;

use palisade_plugin_sdk::host::config;
use palisade_plugin_sdk::{Direction, EventWriter, Parsed, Parser, Session};

pub use state::MAX_STATE_BYTES;
use state::SessionState;

/// The most payload bytes a PUBLISH event carries, whatever the
/// `payload-bytes` setting says.
pub const MAX_PAYLOAD_BYTES: usize = 4096;

/// The parser as a plugin.
#[derive(Debug)]
pub struct Mqtt;

/// Why a packet is malformed: most often a fixed text, sometimes with the
/// packet's own numbers in it.
type Reason = Cow<'static, str>;

impl Parser for Mqtt {
    const PROTOCOL: &'static str = "mqtt";

    fn parse(_session: &Session, direction: Direction, state: &[u8], input: &[u8]) -> Parsed {
        parse_from(direction, state, input)
    }
}

palisade_plugin_sdk::export!(parser: Mqtt);

/// Parse the complete packets a device sent at the start of `input`, given
/// the session `state` returned by the previous call.
pub fn parse(state: &[u8], input: &[u8]) -> Parsed {
    parse_from(Direction::ToUpstream, state, input)
}

/// Parse the complete packets at the start of `input`, travelling in
/// `direction`, given the session `state` returned by the previous call.
pub fn parse_from(direction: Direction, state: &[u8], input: &[u8]) -> Parsed {
    let mut session = match SessionState::decode(state) {
        Ok(session) => session,
        Err(reason) => return Parsed::new(state.to_vec()).malformed(0, reason),
    };
    let mut parsed = Parsed::new(Vec::new());
    // Read from the settings at the first PUBLISH, once per call.
    let mut payload_cap = None;
    let mut offset = 0;
    while let Some(rest) = input.get(offset..).filter(|r| !r.is_empty()) {
        match frame(rest) {
            Framing::Complete { header_len, len } => {
                let header = rest.first().copied().unwrap_or(0);
                let body = rest.get(header_len..len).unwrap_or_default();
                let packet = Packet {
                    header,
                    body,
                    len,
                    direction,
                };
                if let Err(reason) = describe(&packet, &mut session, &mut payload_cap, &mut parsed)
                {
                    parsed = parsed.malformed(offset, reason);
                    break;
                }
                offset += len;
            }
            Framing::Incomplete(needed) => {
                parsed = parsed.needing(needed);
                break;
            }
            Framing::Invalid(reason) => {
                parsed = parsed.malformed(offset, reason);
                break;
            }
        }
    }
    parsed.state = session.encode();
    parsed
}

enum Framing {
    /// A whole packet: fixed header of `header_len` bytes, `len` bytes in all.
    Complete { header_len: usize, len: usize },
    /// This many more bytes are needed (at least).
    Incomplete(usize),
    /// The fixed header cannot be an MQTT packet.
    Invalid(&'static str),
}

/// Find the extent of the packet at the start of `input`.
fn frame(input: &[u8]) -> Framing {
    let mut remaining: usize = 0;
    for i in 0..4 {
        let Some(&byte) = input.get(1 + i) else {
            return Framing::Incomplete(1);
        };
        remaining |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            let header_len = 2 + i;
            let len = header_len + remaining;
            return if input.len() >= len {
                Framing::Complete { header_len, len }
            } else {
                Framing::Incomplete(len - input.len())
            };
        }
    }
    Framing::Invalid("remaining length longer than 4 bytes")
}

/// Eight ones, one per byte of a word.
const ONES: u64 = u64::from_le_bytes([1; 8]);
/// The high bit of each byte of a word.
const HIGH_BITS: u64 = ONES << 7;

/// The high bits of the bytes of `x` below `n`, at most 128; perhaps also
/// of bytes after one of those, blurred by the borrow: whether there is
/// one is exact, which one is not.
fn below(x: u64, n: u8) -> u64 {
    x.wrapping_sub(ONES * u64::from(n)) & !x & HIGH_BITS
}

/// The high bits of the bytes of `x` that are `b` (as [`below`]).
fn equal(x: u64, b: u8) -> u64 {
    below(x ^ (ONES * u64::from(b)), 1)
}

/// The high bits of the bytes of `x` that are a wildcard, `+` or `#`.
fn wildcards(x: u64) -> u64 {
    equal(x, b'+') | equal(x, b'#')
}

/// The high bits of the bytes of `x` below 0x20, or 0x7f and above: a
/// control character, or part of a character beyond ASCII. Those of 0x7f
/// and above have their high bit set before or after adding one (a 0xff's
/// carry blurs only which byte: its own high bit is set).
fn suspects(x: u64) -> u64 {
    (below(x, 0x20) | x | x.wrapping_add(ONES)) & HIGH_BITS
}

/// Whether `mark` marks a byte of `bytes`, read eight bytes at a time,
/// not a byte at a time: the last eight bytes of a text longer than a word
/// are read as one, overlapping the word before, and a shorter text is
/// padded with `a`, which nothing marks. The marks of every word are
/// gathered and tested once, at the end.
fn any_marked(bytes: &[u8], mark: impl Fn(u64) -> u64) -> bool {
    let word = |w: &[u8]| mark(u64::from_le_bytes(w.try_into().unwrap_or_default()));
    let marks = match bytes.len().checked_sub(8) {
        None => {
            let mut padded = [b'a'; 8];
            if let Some(start) = padded.get_mut(..bytes.len()) {
                start.copy_from_slice(bytes);
            }
            mark(u64::from_le_bytes(padded))
        }
        Some(last) => {
            (bytes.chunks_exact(8)).fold(0, |marks, w| marks | word(w))
                | bytes.get(last..).map_or(0, word)
        }
    };
    marks != 0
}

/// Whether `topic` holds a wildcard, `+` or `#`.
fn has_wildcard(topic: &str) -> bool {
    any_marked(topic.as_bytes(), wildcards)
}

/// Why `text`, an MQTT string, holds a character the broker refuses, if it
/// does. U+0000 is forbidden (MQTT 3.1.1 §1.5.3, 5.0 §1.5.4): a receiver
/// that reads strings as C strings acts on what comes before it, so that
/// `site/cmd\0/telemetry` would be judged as one topic and published to
/// `site/cmd`. The control characters (U+0001 to U+001F, U+007F to U+009F)
/// and the noncharacters should not be sent and may be refused; mosquitto
/// refuses them in every string, closing the connection, so the appliance
/// does too: what it passes, mosquitto takes.
///
/// Every string is read a word at a time for a byte below 0x20, a 0x7f or
/// a byte of a character beyond ASCII; only a string with one is read a
/// character at a time.
fn forbidden_character(text: &str) -> Option<&'static str> {
    if !any_marked(text.as_bytes(), suspects) {
        return None;
    }
    text.chars().find_map(|c| match c {
        '\0' => Some("string holds U+0000"),
        c if c.is_control() => Some("string holds a control character"),
        // U+FDD0 to U+FDEF, and the last two of every plane.
        '\u{fdd0}'..='\u{fdef}' => Some("string holds a Unicode noncharacter"),
        c if u32::from(c) & 0xfffe == 0xfffe => Some("string holds a Unicode noncharacter"),
        _ => None,
    })
}

/// Describe a PUBLISH with fixed-header `flags`, `len` bytes long, whose
/// variable header and payload `r` reads, travelling in `direction` of
/// `session`. Most of a device's packets are PUBLISH, so it reads best on
/// its own.
fn publish<'a>(
    flags: u8,
    len: usize,
    r: &mut Reader<'a>,
    direction: Direction,
    session: &mut SessionState<'a>,
    payload_cap: &mut Option<usize>,
    parsed: &mut Parsed,
) -> Result<(), Reason> {
    let level = session.level(direction);
    let v5 = level == 5;
    let qos = (flags >> 1) & 0x03;
    if qos == 3 {
        return Err("PUBLISH with QoS 3".into());
    }
    if qos == 0 && flags & 0x08 != 0 {
        return Err("PUBLISH with DUP set at QoS 0".into());
    }
    let topic = r.topic()?;
    let packet_id = if qos > 0 { Some(r.u16()?) } else { None };
    let properties = if v5 {
        r.properties()?
    } else {
        Properties::default()
    };
    // The topic the receiver publishes to: with an alias and no topic, the
    // one the alias was last bound to in this direction (MQTT 5
    // §3.3.2.3.4). The last thing that can fail: nothing is bound unless
    // the packet reads well.
    let binds = properties.topic_alias().is_some() && !topic.is_empty();
    let maximum = session.alias_maximum(direction);
    let topic = match (properties.topic_alias(), topic.is_empty()) {
        (None, true) => return Err("empty PUBLISH topic without a topic alias".into()),
        (None, false) => topic,
        (Some(0), _) => return Err("PUBLISH with topic alias 0".into()),
        // The receiver allowed no higher (§3.3.2.3.4), and before it said
        // anything, none at all.
        (Some(alias), _) if alias > maximum => {
            return Err(format!(
                "topic alias {alias} above the maximum {maximum} the receiver allowed"
            )
            .into());
        }
        (Some(alias), true) => session
            .topic(direction, alias)
            .ok_or("PUBLISH with a topic alias never bound")?,
        (Some(alias), false) => {
            session.bind(direction, alias, topic)?;
            topic
        }
    };
    let cap = *payload_cap.get_or_insert_with(|| {
        config::get::<usize>("payload-bytes")
            .unwrap_or(0)
            .min(MAX_PAYLOAD_BYTES)
    });
    let mut event = parsed.frame(len, "mqtt.publish");
    event
        .text("topic", topic)
        .int("qos", qos)
        .flag("retain", flags & 0x01 != 0)
        .flag("dup", flags & 0x08 != 0);
    if let Some(id) = packet_id {
        event.int("packet-id", id);
    }
    event.size("payload-size", r.0.len());
    if cap > 0 {
        event.bytes("payload", r.0.get(..cap).unwrap_or(r.0));
    }
    if level != 0 {
        event.int("protocol-version", level);
    }
    if binds {
        // The receiver keeps the binding: this frame is not to be
        // dropped alone (see the vocabulary).
        event.flag("changes-session", true);
    }
    properties.write(&mut event);
    Ok(())
}

/// One whole packet.
struct Packet<'a> {
    /// The fixed header's first byte: type and flags.
    header: u8,
    /// The variable header and payload.
    body: &'a [u8],
    /// The whole packet's length.
    len: usize,
    direction: Direction,
}

impl Packet<'_> {
    fn kind(&self) -> u8 {
        self.header >> 4
    }

    fn flags(&self) -> u8 {
        self.header & 0x0f
    }
}

/// Which way each packet type may travel: `Some(true)` from the client,
/// `Some(false)` from the server, `None` both.
fn from_client(kind: u8) -> Option<bool> {
    match kind {
        1 | 8 | 10 | 12 => Some(true),
        2 | 9 | 11 | 13 => Some(false),
        _ => None,
    }
}

/// Describe `packet` as a frame of `parsed`. Nothing is written unless the
/// whole packet reads well.
fn describe<'a>(
    packet: &Packet<'a>,
    session: &mut SessionState<'a>,
    payload_cap: &mut Option<usize>,
    parsed: &mut Parsed,
) -> Result<(), Reason> {
    let mut r = Reader(packet.body);
    let (kind, flags, len) = (packet.kind(), packet.flags(), packet.len);
    let upstream = packet.direction == Direction::ToUpstream;
    if from_client(kind).is_some_and(|c| c != upstream) {
        return Err(if upstream {
            "a server's packet sent by the client"
        } else {
            "a client's packet sent by the server"
        }
        .into());
    }
    let fixed_flags = match kind {
        3 => None,
        6 | 8 | 10 => Some(0x02),
        _ => Some(0),
    };
    if fixed_flags.is_some_and(|f| f != flags) {
        return Err("reserved flags in the fixed header".into());
    }
    let level = session.level(packet.direction);
    let v5 = level == 5;
    match kind {
        0 => return Err("packet type 0 (reserved)".into()),
        1 => {
            if level != 0 {
                return Err("second CONNECT on a session".into());
            }
            let name = r.string()?;
            let version = r.u8()?;
            match (name, version) {
                ("MQTT", 4 | 5) | ("MQIsdp", 3) => {}
                _ => return Err("unsupported protocol name or level".into()),
            }
            let connect_flags = r.u8()?;
            let keep_alive = r.u16()?;
            if connect_flags & 0x01 != 0 {
                return Err("CONNECT reserved flag set".into());
            }
            let (will, will_qos, will_retain) = (
                connect_flags & 0x04 != 0,
                (connect_flags >> 3) & 0x03,
                connect_flags & 0x20 != 0,
            );
            if will_qos == 3 || (!will && (will_qos != 0 || will_retain)) {
                return Err("CONNECT will flags inconsistent".into());
            }
            let (has_username, has_password) =
                (connect_flags & 0x80 != 0, connect_flags & 0x40 != 0);
            if version < 5 && has_password && !has_username {
                return Err("CONNECT password without a username".into());
            }
            let properties = if version == 5 {
                r.properties()?
            } else {
                Properties::default()
            };
            let client_id = r.string()?;
            let will_topic = if will {
                // The will's own properties are checked, not described.
                if version == 5 {
                    r.properties()?;
                }
                // Published as the device's message when it goes away:
                // a PUBLISH's topic, without a wildcard.
                let topic = r.topic()?;
                r.binary()?;
                Some(topic)
            } else {
                None
            };
            let username = if has_username {
                Some(r.string()?)
            } else {
                None
            };
            if has_password {
                r.binary()?;
            }
            r.end()?;
            // The highest alias the broker may use towards the device.
            let maximum = properties.topic_alias_maximum().unwrap_or(0);
            session.learn(packet.direction, version, maximum)?;
            let mut event = parsed.frame(len, "mqtt.connect");
            event
                .int("protocol-version", version)
                .text("client-id", client_id)
                .int("keep-alive", keep_alive)
                .flag("clean-start", connect_flags & 0x02 != 0)
                .flag("has-username", has_username)
                .flag("has-password", has_password);
            if let Some(topic) = will_topic {
                event
                    .text("will-topic", topic)
                    .int("will-qos", will_qos)
                    .flag("will-retain", will_retain);
            }
            if let Some(name) = username {
                event.text("username", name);
            }
            properties.write(&mut event);
        }
        2 => {
            let ack = r.u8()?;
            if ack & 0xfe != 0 {
                return Err("CONNACK reserved flags set".into());
            }
            let code = r.u8()?;
            // The broker's side learns the level here: MQTT 5's CONNACK
            // has properties after the reason code.
            let v5_form = !r.0.is_empty();
            let properties = if v5_form {
                r.properties()?
            } else {
                Properties::default()
            };
            r.end()?;
            // The highest alias the device may use towards the broker.
            let maximum = properties.topic_alias_maximum().unwrap_or(0);
            if v5_form {
                session.learn(packet.direction, 5, maximum)?;
            } else if level == 0 {
                session.learn(packet.direction, 4, maximum)?;
            }
            let mut event = parsed.frame(len, "mqtt.connack");
            event
                .flag("session-present", ack & 0x01 != 0)
                .int("reason-code", code);
            properties.write(&mut event);
        }
        3 => publish(
            flags,
            len,
            &mut r,
            packet.direction,
            session,
            payload_cap,
            parsed,
        )?,
        4..=7 => {
            let packet_id = r.u16()?;
            let code = if r.0.is_empty() { None } else { Some(r.u8()?) };
            let properties = if r.0.is_empty() {
                Properties::default()
            } else {
                r.properties()?
            };
            r.end()?;
            let mut event = parsed.frame(len, packet_name(kind));
            event.int("packet-id", packet_id);
            if let Some(code) = code {
                event.int("reason-code", code);
            }
            properties.write(&mut event);
        }
        8 | 10 => {
            let packet_id = r.u16()?;
            let properties = if v5 {
                r.properties()?
            } else {
                Properties::default()
            };
            let filters = r.0;
            let mut count = 0;
            let mut most = Options::LEAST;
            while !r.0.is_empty() {
                let (group, filter) = subscription(r.string()?)?;
                if let Some(reason) = misplaced_wildcard(filter) {
                    return Err(reason.into());
                }
                if kind == 8 {
                    let options = r.u8()?;
                    // QoS 3 and Retain Handling 3 do not exist (MQTT 5
                    // §3.8.3.1); mosquitto refuses both.
                    let reserved = if v5 { 0xc0 } else { 0xfc };
                    if options & reserved != 0 || options & 0x03 == 3 || options & 0x30 == 0x30 {
                        return Err("SUBSCRIBE options invalid".into());
                    }
                    // A protocol error (MQTT 5 §3.8.3.1): the device would
                    // not get its own messages from a group that shares
                    // them out. mosquitto 2.0.11 takes it; the
                    // specification does not.
                    if group.is_some() && options & 0x04 != 0 {
                        return Err("No Local on a shared subscription".into());
                    }
                    most.add(options);
                }
                count += 1;
            }
            if count == 0 {
                return Err("SUBSCRIBE or UNSUBSCRIBE without a topic filter".into());
            }
            let mut event = parsed.frame(len, packet_name(kind));
            event.int("packet-id", packet_id);
            // Each filter, in order, as the broker serves it, the group of
            // each shared one just before its filter, and each as the
            // device sent it: the served filters and the groups are sets,
            // which cannot say which filter was shared in which group, or
            // whether one was also taken whole; the sent ones can. A
            // subscription's options once, the most its filters ask for
            // (see `Options`).
            let mut r = Reader(filters);
            while let Ok(sent) = r.string() {
                // Every filter was read above: this never breaks.
                let Ok((group, filter)) = subscription(sent) else {
                    break;
                };
                if let Some(group) = group {
                    event.text("share-group", group);
                }
                event.text("filter", filter).text("subscription", sent);
                if kind == 8 {
                    // Its options, taken in above.
                    let _ = r.u8();
                }
            }
            if kind == 8 {
                event.int("subscribe-qos", most.qos);
                if v5 {
                    event
                        .flag("no-local", most.no_local)
                        .flag("retain-as-published", most.retain_as_published)
                        .int("retain-handling", most.retain_handling);
                }
            }
            properties.write(&mut event);
        }
        9 | 11 => {
            let packet_id = r.u16()?;
            let properties = if v5 {
                r.properties()?
            } else {
                Properties::default()
            };
            if kind == 9 && r.0.is_empty() {
                return Err("SUBACK without a reason code".into());
            }
            let codes = r.0;
            let mut event = parsed.frame(len, packet_name(kind));
            event.int("packet-id", packet_id);
            for &code in codes {
                event.int("reason-code", code);
            }
            properties.write(&mut event);
        }
        12 | 13 => {
            r.end()?;
            parsed.frame(len, packet_name(kind));
        }
        14 | 15 => {
            // The broker sends AUTH before its CONNACK, so its own side
            // has no level yet: the client's CONNECT says whether the
            // session is MQTT 5.
            if kind == 15 && session.client_level() != 5 {
                return Err("AUTH before an MQTT 5 CONNECT".into());
            }
            let code = if r.0.is_empty() { None } else { Some(r.u8()?) };
            let properties = if r.0.is_empty() {
                Properties::default()
            } else {
                r.properties()?
            };
            r.end()?;
            let mut event = parsed.frame(len, packet_name(kind));
            if let Some(code) = code {
                event.int("reason-code", code);
            }
            properties.write(&mut event);
        }
        _ => return Err("unknown packet type".into()),
    }
    Ok(())
}

/// A SUBSCRIBE or UNSUBSCRIBE topic filter as the broker serves it: a
/// shared subscription (MQTT 5 §4.8.2), `$share/{ShareName}/{filter}`,
/// subscribes the device to `{filter}`, in the group `{ShareName}`, so
/// that is the filter a policy or detector judges; any other filter is
/// itself, without a group. mosquitto takes shared subscriptions under
/// MQTT 3.1.1 too, so they are read at both levels.
///
/// mosquitto 2.0.11, probed with raw SUBSCRIBEs and UNSUBSCRIBEs at both
/// levels, closes the connection on `$share` alone and on a ShareName with
/// `+` or `#` beside other characters or a `#` before the filter (its
/// wildcard check); it takes `$share//a` and `$share/+/a`, serving `a`
/// under an empty or `+` ShareName, and `$share/`, `$share/g`,
/// `$share/g/`, `$share/#`, `$share/+`, serving nothing a device can
/// publish to. The specification makes all of those a protocol error
/// (§4.8.2: a ShareName is at least one character, without `/`, `+` or
/// `#`, and is followed by `/` and a topic filter), and so does the
/// appliance: nothing it passes is read one way here and another by the
/// broker. A ShareName ends at its first `/`, so `$share/g/a/b` is `a/b`
/// in the group `g`; `$SHARE/g/a` and `$sharex/g/a` are plain filters to
/// mosquitto and here, and `$share/g/$share/h/a` is the filter
/// `$share/h/a`, which mosquitto also reads once.
///
/// EMQX reads two more prefixes: `$queue/{filter}` is `{filter}` shared
/// in one group of all such subscribers (its `$share/$queue/{filter}`),
/// and `$exclusive/{filter}` is `{filter}` for one subscriber at a time.
/// They are read so here, with `$queue` as the ShareName, whatever the
/// broker, so that a rule on `{filter}` holds on EMQX. mosquitto serves
/// them literally, topics under `$queue/` that clients may publish to
/// (mosquitto 2.0.11 delivers a publish to `$queue/x` to a subscriber of
/// `$queue/#`): there `subscription` has the filter as sent, and what
/// reaches such a topic was judged by its literal name when published.
/// Like EMQX, what follows either prefix is not read again:
/// `$exclusive/$share/g/x` is the filter `$share/g/x`.
///
/// A plain filter costs one byte's comparison: only one that starts with
/// `$` is looked at further, and nothing is allocated.
fn subscription(raw: &str) -> Result<(Option<&str>, &str), &'static str> {
    if !raw.starts_with('$') {
        return Ok((None, raw));
    }
    for (prefix, group) in [("$queue/", Some("$queue")), ("$exclusive/", None)] {
        if let Some(filter) = raw.strip_prefix(prefix) {
            if filter.is_empty() {
                return Err("queued or exclusive subscription without a topic filter");
            }
            return Ok((group, filter));
        }
    }
    let Some(rest) = raw.strip_prefix("$share") else {
        return Ok((None, raw));
    };
    if rest.is_empty() {
        return Err("topic filter `$share` without a ShareName");
    }
    let Some(rest) = rest.strip_prefix('/') else {
        return Ok((None, raw));
    };
    let Some((group, filter)) = rest.split_once('/') else {
        return Err("shared subscription without a topic filter");
    };
    if group.is_empty() {
        return Err("shared subscription with an empty ShareName");
    }
    if has_wildcard(group) {
        return Err("wildcard in a shared subscription's ShareName");
    }
    if filter.is_empty() {
        return Err("shared subscription without a topic filter");
    }
    Ok((Some(group), filter))
}

/// Why `filter` holds a wildcard where none may be, if it does: `#` only
/// as a whole level, the last, and `+` only as a whole level (MQTT 3.1.1
/// and 5 §4.7.1). mosquitto 2.0.11 closes the connection on `a/#/b` or
/// `a+`, plain or after a ShareName, in a SUBSCRIBE or an UNSUBSCRIBE; a
/// filter read here one way must not be refused there. A filter without a
/// wildcard is read once, a word at a time, and not split.
fn misplaced_wildcard(filter: &str) -> Option<&'static str> {
    if !has_wildcard(filter) {
        return None;
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Some("`#` in a topic filter other than as its last level");
        }
        if level.contains('+') && level != "+" {
            return Some("`+` in a topic filter beside other characters");
        }
    }
    None
}

/// A SUBSCRIBE's options as its event describes them: of each option, the
/// value that asks the most of the broker among its filters'. The policy
/// sees one value per option (only the filters are a set), so the options
/// of one filter, the first, would hide another's: a device could ask QoS
/// 2 for its second filter under a rule that forbids QoS 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Options {
    /// The highest QoS asked for: the most the broker keeps and resends.
    qos: u8,
    /// Whether every filter asked for No Local: one without it has the
    /// device's own messages sent back to it.
    no_local: bool,
    /// Whether any filter asked for Retain As Published.
    retain_as_published: bool,
    /// The lowest Retain Handling asked for: 0 has the broker send the
    /// retained messages at every subscribe, 2 never.
    retain_handling: u8,
}

impl Options {
    /// What no subscription asks less than: the starting point of
    /// [`Options::add`].
    const LEAST: Options = Options {
        qos: 0,
        no_local: true,
        retain_as_published: false,
        retain_handling: 2,
    };

    /// Take in one filter's subscription options byte.
    fn add(&mut self, options: u8) {
        self.qos = self.qos.max(options & 0x03);
        self.no_local &= options & 0x04 != 0;
        self.retain_as_published |= options & 0x08 != 0;
        self.retain_handling = self.retain_handling.min((options >> 4) & 0x03);
    }
}

fn packet_name(kind: u8) -> &'static str {
    match kind {
        2 => "mqtt.connack",
        4 => "mqtt.puback",
        5 => "mqtt.pubrec",
        6 => "mqtt.pubrel",
        7 => "mqtt.pubcomp",
        8 => "mqtt.subscribe",
        9 => "mqtt.suback",
        10 => "mqtt.unsubscribe",
        11 => "mqtt.unsuback",
        12 => "mqtt.pingreq",
        13 => "mqtt.pingresp",
        14 => "mqtt.disconnect",
        _ => "mqtt.auth",
    }
}

/// Reads MQTT's primitive fields from the front of a slice.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        if self.0.len() < n {
            return Err("packet shorter than its fields");
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, &'static str> {
        Ok(self.take(1)?.first().copied().unwrap_or(0))
    }

    fn u16(&mut self) -> Result<u16, &'static str> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([
            b.first().copied().unwrap_or(0),
            b.get(1).copied().unwrap_or(0),
        ]))
    }

    /// A UTF-8 string without the characters [`forbidden_character`]
    /// refuses.
    fn string(&mut self) -> Result<&'a str, &'static str> {
        let text = self.utf8()?;
        match forbidden_character(text) {
            None => Ok(text),
            Some(reason) => Err(reason),
        }
    }

    /// A string that names the topic of a message, a PUBLISH's or a
    /// will's: also without a wildcard. Most of a device's packets are
    /// PUBLISH, so a topic is read once, a word at a time, for anything
    /// either check refuses; only a topic with one is read again.
    fn topic(&mut self) -> Result<&'a str, &'static str> {
        let text = self.utf8()?;
        if any_marked(text.as_bytes(), |x| suspects(x) | wildcards(x)) {
            if let Some(reason) = forbidden_character(text) {
                return Err(reason);
            }
            if has_wildcard(text) {
                return Err("wildcard in a PUBLISH or will topic");
            }
        }
        Ok(text)
    }

    /// A string's bytes, checked to be UTF-8 and nothing more.
    fn utf8(&mut self) -> Result<&'a str, &'static str> {
        let len = self.u16()?;
        std::str::from_utf8(self.take(usize::from(len))?).map_err(|_| "string is not UTF-8")
    }

    /// Binary data: a two-byte length, then the bytes.
    fn binary(&mut self) -> Result<&'a [u8], &'static str> {
        let len = self.u16()?;
        self.take(usize::from(len))
    }

    /// A variable byte integer.
    fn varint(&mut self) -> Result<usize, &'static str> {
        let mut value = 0;
        for i in 0..4 {
            let byte = self.u8()?;
            value |= usize::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("variable byte integer longer than 4 bytes")
    }

    /// Nothing may follow.
    fn end(&self) -> Result<(), &'static str> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err("bytes after the packet's last field")
        }
    }

    /// Check an MQTT 5 property block, every property by its type, and
    /// skip it.
    /// An MQTT 5 property block, each property checked for its type and
    /// for repeats the specification forbids.
    fn properties(&mut self) -> Result<Properties<'a>, &'static str> {
        let len = self.varint()?;
        let mut block = Reader(self.take(len)?);
        let mut found = Vec::new();
        let mut seen = 0u64;
        while !block.0.is_empty() {
            let id = block.varint()?;
            // User properties and subscription identifiers may repeat.
            if id != 0x26 && id != 0x0b && id < 64 {
                if seen & (1 << id) != 0 {
                    return Err("MQTT 5 property repeated");
                }
                seen |= 1 << id;
            }
            let int = |name, v: u64| (name, Property::Int(i64::try_from(v).unwrap_or(i64::MAX)));
            let property = match id {
                0x01 => int("payload-format", block.u8()?.into()),
                0x17 => int("request-problem-info", block.u8()?.into()),
                0x19 => int("request-response-info", block.u8()?.into()),
                0x24 => int("maximum-qos", block.u8()?.into()),
                0x25 => int("retain-available", block.u8()?.into()),
                0x28 => int("wildcard-subscription-available", block.u8()?.into()),
                0x29 => int("subscription-id-available", block.u8()?.into()),
                0x2a => int("shared-subscription-available", block.u8()?.into()),
                0x13 => int("server-keep-alive", block.u16()?.into()),
                0x21 => int("receive-maximum", block.u16()?.into()),
                0x22 => int("topic-alias-maximum", block.u16()?.into()),
                0x23 => int("topic-alias", block.u16()?.into()),
                0x02 => int("message-expiry", block.u32()?.into()),
                0x11 => int("session-expiry", block.u32()?.into()),
                0x18 => int("will-delay", block.u32()?.into()),
                0x27 => int("maximum-packet-size", block.u32()?.into()),
                0x0b => int("subscription-id", block.varint()? as u64),
                0x03 => ("content-type", Property::Text(block.string()?)),
                0x08 => ("response-topic", Property::Text(block.string()?)),
                0x12 => ("assigned-client-id", Property::Text(block.string()?)),
                0x15 => ("authentication-method", Property::Text(block.string()?)),
                0x1a => ("response-info", Property::Text(block.string()?)),
                0x1c => ("server-reference", Property::Text(block.string()?)),
                0x1f => ("reason-string", Property::Text(block.string()?)),
                0x09 => ("correlation-data", Property::Bytes(block.binary()?)),
                // Like a password, only its presence.
                0x16 => {
                    block.binary()?;
                    ("has-authentication-data", Property::Present)
                }
                0x26 => (
                    "user-property",
                    Property::Pair(block.string()?, block.string()?),
                ),
                _ => return Err("unknown MQTT 5 property"),
            };
            found.push(property);
        }
        Ok(Properties(found))
    }

    fn u32(&mut self) -> Result<u32, &'static str> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([
            b.first().copied().unwrap_or(0),
            b.get(1).copied().unwrap_or(0),
            b.get(2).copied().unwrap_or(0),
            b.get(3).copied().unwrap_or(0),
        ]))
    }
}

/// A property's value.
enum Property<'a> {
    Int(i64),
    Text(&'a str),
    Bytes(&'a [u8]),
    /// A user property: a name and a value.
    Pair(&'a str, &'a str),
    Present,
}

/// The properties of an MQTT 5 packet, by their attribute names: written
/// to its event once the whole packet read well.
#[derive(Default)]
struct Properties<'a>(Vec<(&'static str, Property<'a>)>);

impl Properties<'_> {
    /// The Topic Alias property, if present.
    fn topic_alias(&self) -> Option<u16> {
        self.two_bytes("topic-alias")
    }

    /// The Topic Alias Maximum property, if present.
    fn topic_alias_maximum(&self) -> Option<u16> {
        self.two_bytes("topic-alias-maximum")
    }

    /// The two-byte integer property described as `attribute`, if present.
    fn two_bytes(&self, attribute: &str) -> Option<u16> {
        self.0.iter().find_map(|(name, value)| match value {
            Property::Int(v) if *name == attribute => u16::try_from(*v).ok(),
            _ => None,
        })
    }

    #[inline]
    fn write(&self, event: &mut EventWriter<'_>) {
        for (name, value) in &self.0 {
            match value {
                Property::Int(v) => event.int(name, *v),
                Property::Text(t) => event.text(name, t),
                Property::Bytes(b) => event.bytes(name, b),
                Property::Pair(k, v) => event.text(name, &format!("{k}={v}")),
                Property::Present => event.flag(name, true),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;
    use palisade_plugin_sdk::EventRef;
    use palisade_plugin_sdk::testing::{parse_stream, parse_stream_after};

    #[test]
    fn wildcards_are_found_at_every_position() {
        for len in 0..40 {
            let plain = "a".repeat(len);
            assert!(!has_wildcard(&plain));
            assert!(!has_wildcard(&format!("{plain}/é*,\"$\u{7f}{plain}")));
            for at in 0..=len {
                for w in ["+", "#"] {
                    let topic = format!("{}{w}{}", &plain[..at], &plain[at..]);
                    assert!(has_wildcard(&topic), "{topic:?}");
                }
            }
        }
    }

    #[test]
    fn forbidden_characters_are_found_at_every_position() {
        let refused = [
            ('\0', "U+0000"),
            ('\u{1}', "control"),
            ('\t', "control"),
            ('\u{1f}', "control"),
            ('\u{7f}', "control"),
            ('\u{80}', "control"),
            ('\u{9f}', "control"),
            ('\u{fdd0}', "noncharacter"),
            ('\u{fdef}', "noncharacter"),
            ('\u{fffe}', "noncharacter"),
            ('\u{ffff}', "noncharacter"),
            ('\u{1fffe}', "noncharacter"),
            ('\u{10ffff}', "noncharacter"),
        ];
        // What mosquitto takes: beyond ASCII, next to the refused.
        let taken = [
            "",
            " ~",
            "\u{a0}",
            "é/\u{e000}",
            "\u{fdcf}\u{fdf0}\u{fffd}",
            "\u{1f600}",
        ];
        for len in 0..40 {
            let plain = "a/b".repeat(len / 3 + 1)[..len].to_owned();
            for also in taken {
                let text = format!("{also}{plain}{also}");
                assert_eq!(forbidden_character(&text), None, "{text:?}");
            }
            for at in 0..=len {
                for (c, reason) in refused {
                    let text = format!("{}{c}{}", &plain[..at], &plain[at..]);
                    let found = forbidden_character(&text);
                    assert!(
                        found.is_some_and(|r| r.contains(reason)),
                        "{text:?}: {found:?}"
                    );
                }
            }
        }
    }

    fn session() -> Session {
        Session::new(1, "sensor-1", "thermostat", "cell-1", "mqtt")
    }

    /// A packet with fixed header byte `header`: the remaining length is
    /// encoded as MQTT's variable-length integer.
    fn packet(header: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![header];
        let mut n = body.len();
        loop {
            let digit = (n % 128) as u8;
            n /= 128;
            out.push(if n > 0 { digit | 0x80 } else { digit });
            if n == 0 {
                break;
            }
        }
        out.extend_from_slice(body);
        out
    }

    fn connect(level: u8) -> Vec<u8> {
        let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', level, 0x02, 0, 60];
        if level == 5 {
            body.push(0);
        }
        body.extend_from_slice(&[0, 2, b'c', b'1']);
        packet(0x10, &body)
    }

    fn publish(topic: &str, payload: &[u8]) -> Vec<u8> {
        let mut body = vec![0, topic.len() as u8];
        body.extend_from_slice(topic.as_bytes());
        body.extend_from_slice(payload);
        packet(0x30, &body)
    }

    /// An MQTT 5 CONNECT whose Topic Alias Maximum allows the broker
    /// aliases up to `maximum`.
    fn connect_allowing(maximum: u16) -> Vec<u8> {
        let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 60, 3, 0x22];
        body.extend_from_slice(&maximum.to_be_bytes());
        body.extend_from_slice(&[0, 2, b'c', b'1']);
        packet(0x10, &body)
    }

    /// An MQTT 5 CONNACK whose Topic Alias Maximum allows the device
    /// aliases up to `maximum`.
    fn connack_allowing(maximum: u16) -> Vec<u8> {
        let [m0, m1] = maximum.to_be_bytes();
        packet(0x20, &[0, 0, 3, 0x22, m0, m1])
    }

    /// The state of an MQTT 5 session once the broker's CONNACK allowed
    /// the device aliases up to `device_may_use`, and the device's CONNECT
    /// the broker up to `broker_may_use`.
    fn connected(device_may_use: u16, broker_may_use: u16) -> Vec<u8> {
        let up = parse(&[], &connect_allowing(broker_may_use));
        let down = parse_from(
            Direction::ToDevice,
            &up.state,
            &connack_allowing(device_may_use),
        );
        assert_eq!((up.malformed, &down.malformed), (None, &None));
        down.state
    }

    /// A PUBLISH at QoS 0 that binds `alias` to `topic`.
    fn bind(topic: &str, alias: u16) -> Vec<u8> {
        let mut body = (topic.len() as u16).to_be_bytes().to_vec();
        body.extend_from_slice(topic.as_bytes());
        body.extend_from_slice(&[3, 0x23]);
        body.extend_from_slice(&alias.to_be_bytes());
        packet(0x30, &body)
    }

    /// A PUBLISH at QoS 0 that names its topic by `alias` alone.
    fn by_alias(alias: u16) -> Vec<u8> {
        let [a0, a1] = alias.to_be_bytes();
        packet(0x30, &[0, 0, 3, 0x23, a0, a1, b'x'])
    }

    #[test]
    fn cuts_connect_publish_subscribe() {
        let stream = [
            connect(4),
            publish("site/a/telemetry", b"21.5"),
            vec![0x82, 8, 0, 7, 0, 3, b'a', b'/', b'#', 1],
            vec![0xc0, 0],
        ]
        .concat();
        let parsed = parse_stream::<Mqtt>(&session(), Direction::ToUpstream, &[&stream]);
        assert!(parsed.malformed.is_none());
        let events: Vec<_> = parsed.events.iter().collect();
        let kinds: Vec<_> = events.iter().map(|e| e.kind()).collect();
        assert_eq!(
            kinds,
            [
                "mqtt.connect",
                "mqtt.publish",
                "mqtt.subscribe",
                "mqtt.pingreq"
            ]
        );
        assert_eq!(events[0].text("client-id"), Some("c1"));
        assert_eq!(events[1].text("topic"), Some("site/a/telemetry"));
        assert_eq!(events[1].int("payload-size"), Some(4));
        assert_eq!(events[2].text("filter"), Some("a/#"));
    }

    #[test]
    fn mqtt5_properties_are_skipped() {
        let mut publish5 = vec![0x30, 0, 0, 1, b't', 2, 0x01, 0x01];
        publish5.extend_from_slice(b"xyz");
        publish5[1] = (publish5.len() - 2) as u8;
        let stream = [connect(5), publish5].concat();
        let parsed = parse_stream::<Mqtt>(&session(), Direction::ToUpstream, &[&stream]);
        assert!(parsed.malformed.is_none());
        let events: Vec<_> = parsed.events.iter().collect();
        assert_eq!(events[1].text("topic"), Some("t"));
        assert_eq!(events[1].int("payload-size"), Some(3));
    }

    #[test]
    fn every_split_gives_the_same_events() {
        let stream = [
            connect(4),
            publish("a/b", b"hello"),
            publish("c", &[7; 200]),
        ]
        .concat();
        let whole = parse_stream::<Mqtt>(&session(), Direction::ToUpstream, &[&stream]);
        assert!(whole.malformed.is_none());
        assert_eq!(whole.events.len(), 3);
        assert_eq!(
            whole.events.get(2).unwrap().int("payload-size"),
            Some(200),
            "two-byte remaining length"
        );
        for cut in 0..stream.len() {
            let (a, b) = stream.split_at(cut);
            let split = parse_stream::<Mqtt>(&session(), Direction::ToUpstream, &[a, b]);
            assert_eq!(split, whole, "split at {cut}");
        }
    }

    #[test]
    fn bad_input_is_malformed_not_a_panic() {
        let cases: [(&[u8], &str); 4] = [
            (
                &[0x30, 0xff, 0xff, 0xff, 0xff, 0x01],
                "remaining length longer than 4 bytes",
            ),
            (&[0x30, 2, 0, 9], "packet shorter than its fields"),
            (&[0x30, 4, 0, 2, 0xff, 0xfe], "string is not UTF-8"),
            (&[0x36, 3, 0, 1, b't'], "PUBLISH with QoS 3"),
        ];
        for (input, reason) in cases {
            let parsed = parse(&[4], input);
            assert_eq!(parsed.malformed.map(|m| m.reason).as_deref(), Some(reason));
        }
        let twice = [connect(4), connect(4)].concat();
        let parsed = parse(&[], &twice);
        assert_eq!(parsed.frame_lengths.len(), 1);
        assert_eq!(
            parsed.malformed.unwrap().reason,
            "second CONNECT on a session"
        );
    }

    #[test]
    fn incomplete_input_says_how_much_is_needed() {
        let packet = publish("a/b", b"0123456789");
        let parsed = parse(&[4], &packet[..5]);
        assert!(parsed.frame_lengths.is_empty() && parsed.malformed.is_none());
        assert_eq!(parsed.needed, Some((packet.len() - 5) as u32));
    }

    #[test]
    fn the_brokers_side_learns_the_level_from_connack() {
        // MQTT 5 CONNACK: flags, reason code, properties (Receive Maximum).
        let connack5 = packet(0x20, &[0, 0, 3, 0x21, 0, 10]);
        let suback = packet(0x90, &[0, 7, 0, 1, 0x80]);
        let puback = packet(0x40, &[0, 9, 0x10, 0]);
        let stream = [connack5, suback, puback].concat();
        let parsed = parse_from(Direction::ToDevice, &[], &stream);
        assert!(parsed.malformed.is_none(), "{:?}", parsed.malformed);
        assert_eq!(parsed.state[..2], [0, 5], "the device side still unknown");
        let events: Vec<_> = parsed.events.iter().collect();
        assert_eq!(events[0].kind(), "mqtt.connack");
        assert_eq!(events[0].int("reason-code"), Some(0));
        let codes: Vec<_> = (events[1].attributes())
            .filter(|(n, _)| *n == "reason-code")
            .map(|(_, v)| v)
            .collect();
        assert_eq!(codes.len(), 2, "one reason code per filter");
        assert_eq!(events[2].int("reason-code"), Some(0x10));
        // MQTT 3.1.1: a two-byte CONNACK.
        let parsed = parse_from(Direction::ToDevice, &[], &packet(0x20, &[1, 0]));
        assert_eq!(parsed.state, [0, 4]);
        assert_eq!(
            parsed.events.get(0).unwrap().flag("session-present"),
            Some(true)
        );
    }

    #[test]
    fn mqtt5_properties_and_subscription_options_are_described() {
        // PUBLISH at QoS 0 with: content type, message expiry, topic alias
        // and two user properties.
        let mut props = vec![0x03, 0, 4];
        props.extend_from_slice(b"json");
        props.extend_from_slice(&[0x02, 0, 0, 0, 60, 0x23, 0, 7]);
        for (k, v) in [("unit", "C"), ("src", "s1")] {
            props.push(0x26);
            for text in [k, v] {
                props.extend_from_slice(&(text.len() as u16).to_be_bytes());
                props.extend_from_slice(text.as_bytes());
            }
        }
        let mut body = vec![0, 3, b'a', b'/', b'b', props.len() as u8];
        body.extend_from_slice(&props);
        body.extend_from_slice(b"21.5");
        // SUBSCRIBE with one filter: QoS 1, no-local, retain handling 2.
        let subscribe = packet(0x82, &[0, 9, 0, 0, 1, b'x', 0x25]);
        // AUTH with a method and data: the data's presence only.
        let auth = packet(
            0xf0,
            &[
                0x18, 14, 0x15, 0, 5, b'S', b'C', b'R', b'A', b'M', 0x16, 0, 3, 1, 2, 3,
            ],
        );
        let stream = [packet(0x30, &body), subscribe, auth].concat();
        let parsed = parse(&connected(7, 0), &stream);
        assert!(parsed.malformed.is_none(), "{:?}", parsed.malformed);
        let e = parsed.events.get(0).unwrap();
        assert_eq!(e.text("content-type"), Some("json"));
        assert_eq!(
            (e.int("message-expiry"), e.int("topic-alias")),
            (Some(60), Some(7))
        );
        let users: Vec<_> = (e.attributes())
            .filter(|(n, _)| *n == "user-property")
            .map(|(_, v)| v.to_string())
            .collect();
        assert_eq!(users.len(), 2, "{users:?}");
        assert!(users[0].contains("unit=C") && users[1].contains("src=s1"));
        assert_eq!(e.int("payload-size"), Some(4));
        assert_eq!(
            e.bytes("payload"),
            None,
            "payloads are off unless configured"
        );
        let s = parsed.events.get(1).unwrap();
        assert_eq!(s.int("subscribe-qos"), Some(1));
        assert_eq!(
            (s.flag("no-local"), s.int("retain-handling")),
            (Some(true), Some(2))
        );
        let a = parsed.events.get(2).unwrap();
        assert_eq!(a.text("authentication-method"), Some("SCRAM"));
        assert_eq!(a.flag("has-authentication-data"), Some(true));
        assert!(
            a.attributes()
                .all(|(_, v)| !matches!(v, palisade_plugin_sdk::Value::Bytes(_))),
            "the authentication data never appears: {a}"
        );

        // A property the specification allows once, twice: malformed.
        let twice = [connect(5), packet(0x30, &[0, 1, b'a', 4, 0x01, 0, 0x01, 1])].concat();
        let bad = parse(&[], &twice);
        assert_eq!(bad.malformed.unwrap().reason, "MQTT 5 property repeated");
        assert_eq!(bad.events.len(), 1, "only the CONNECT");
    }

    /// A SUBSCRIBE, packet id 9, of `filters` with their options bytes.
    fn subscribe(filters: &[(&str, u8)], v5: bool) -> Vec<u8> {
        let mut body = vec![0, 9];
        if v5 {
            body.push(0);
        }
        for (filter, options) in filters {
            body.extend_from_slice(&(filter.len() as u16).to_be_bytes());
            body.extend_from_slice(filter.as_bytes());
            body.push(*options);
        }
        packet(0x82, &body)
    }

    #[test]
    fn a_subscribes_options_are_the_most_any_filter_asks_for() {
        // Each option is written once; `filter` once per filter.
        let count = |e: &EventRef<'_>, name| e.attributes().filter(|(n, _)| *n == name).count();
        // MQTT 3.1.1: QoS 0 for the first filter, 2 for the second.
        let bytes = subscribe(&[("a/b", 0), ("site/cmd/#", 2), ("c", 1)], false);
        let parsed = parse(&[4, 4], &bytes);
        assert_eq!(parsed.malformed, None);
        let e = parsed.events.get(0).unwrap();
        assert_eq!(count(&e, "filter"), 3, "{e}");
        assert_eq!(count(&e, "subscribe-qos"), 1, "{e}");
        assert_eq!(e.int("subscribe-qos"), Some(2), "{e}");
        assert_eq!(e.flag("no-local"), None, "MQTT 5 only");
        // MQTT 5: the second filter asks the most of each option but No
        // Local, which the first has.
        let bytes = subscribe(&[("a/b", 0x24), ("site/cmd/#", 0x0a), ("c", 0x14)], true);
        let parsed = parse(&[5, 5], &bytes);
        assert_eq!(parsed.malformed, None);
        let e = parsed.events.get(0).unwrap();
        for name in [
            "subscribe-qos",
            "no-local",
            "retain-as-published",
            "retain-handling",
        ] {
            assert_eq!(count(&e, name), 1, "{name}: {e}");
        }
        assert_eq!(e.int("subscribe-qos"), Some(2), "{e}");
        assert_eq!(e.flag("no-local"), Some(false), "{e}");
        assert_eq!(e.flag("retain-as-published"), Some(true), "{e}");
        assert_eq!(e.int("retain-handling"), Some(0), "{e}");
        // Every filter with No Local, none with Retain As Published.
        let parsed = parse(&[5, 5], &subscribe(&[("a", 0x24), ("b", 0x14)], true));
        let e = parsed.events.get(0).unwrap();
        assert_eq!(
            (e.flag("no-local"), e.flag("retain-as-published")),
            (Some(true), Some(false)),
            "{e}"
        );
        assert_eq!(e.int("retain-handling"), Some(1), "{e}");
    }

    #[test]
    fn subscription_options_that_do_not_exist_are_malformed() {
        // QoS 3 in either version; Retain Handling 3 in MQTT 5, and in
        // 3.1.1 any option bit but the QoS's.
        let cases = [
            (0x03, false),
            (0x03, true),
            (0x30, true),
            (0x04, false),
            (0x40, true),
        ];
        for (options, v5) in cases {
            let state: &[u8] = if v5 { &[5, 5] } else { &[4, 4] };
            let bytes = subscribe(&[("a/b", 0), ("c", options)], v5);
            let parsed = parse(state, &bytes);
            assert!(parsed.events.is_empty(), "{options:#x}");
            let m = (parsed.malformed).unwrap_or_else(|| panic!("{options:#x} accepted"));
            assert_eq!(m.reason, "SUBSCRIBE options invalid");
        }
    }

    /// An UNSUBSCRIBE, packet id 9, of `filters`.
    fn unsubscribe(filters: &[&str], v5: bool) -> Vec<u8> {
        let mut body = vec![0, 9];
        if v5 {
            body.push(0);
        }
        for filter in filters {
            body.extend_from_slice(&(filter.len() as u16).to_be_bytes());
            body.extend_from_slice(filter.as_bytes());
        }
        packet(0xa2, &body)
    }

    /// The values of `name` in `e`, in order.
    fn texts<'a>(e: &EventRef<'a>, name: &str) -> Vec<&'a str> {
        e.texts(name).collect()
    }

    /// Check that a SUBSCRIBE and an UNSUBSCRIBE of `filters`, at MQTT
    /// 3.1.1 and 5, are described with the filters the broker serves
    /// (`served`), the share groups (`groups`), and `filters` as sent.
    fn assert_described(filters: &[&str], served: &[&str], groups: &[&str]) {
        for v5 in [false, true] {
            let state: &[u8] = if v5 { &[5, 5] } else { &[4, 4] };
            let with_options: Vec<_> = filters.iter().map(|f| (*f, 1)).collect();
            for bytes in [subscribe(&with_options, v5), unsubscribe(filters, v5)] {
                let parsed = parse(state, &bytes);
                assert_eq!(parsed.malformed, None, "v5 {v5}");
                let e = parsed.events.get(0).unwrap();
                assert_eq!(texts(&e, "filter"), served, "{e}");
                assert_eq!(texts(&e, "share-group"), groups, "{e}");
                assert_eq!(texts(&e, "subscription"), filters, "{e}");
            }
        }
    }

    #[test]
    fn a_shared_subscription_is_described_by_the_filter_the_broker_serves() {
        // A plain filter, a shared one, a plain one that only looks
        // shared (mosquitto reads `$SHARE` and `$sharex` literally), and
        // one whose ShareName ends at its first `/`: both levels, both
        // packets (mosquitto takes `$share/` under MQTT 3.1.1 too).
        let filters = [
            "site/a",
            "$share/g/site/secret/#",
            "$SHARE/g/b",
            "$sharex/g/c",
            "$share/h/x//y",
            "$share/g/$share/k/z",
        ];
        let served = [
            "site/a",
            "site/secret/#",
            "$SHARE/g/b",
            "$sharex/g/c",
            "x//y",
            "$share/k/z",
        ];
        assert_described(&filters, &served, &["g", "h", "g"]);
        // Without a shared filter, no group.
        let parsed = parse(&[4, 4], &subscribe(&[("a", 0)], false));
        let e = parsed.events.get(0).unwrap();
        assert_eq!(e.text("share-group"), None, "{e}");
        assert_eq!(e.text("filter"), Some("a"), "{e}");
    }

    #[test]
    fn emqx_queued_and_exclusive_subscriptions_are_read_as_emqx_serves_them() {
        // `$queue/f` is `$share/$queue/f`, `$exclusive/f` is `f`: a rule
        // on `site/secret/#` holds for both.
        let filters = [
            "$queue/site/secret/#",
            "$exclusive/site/secret/#",
            "$queued/a",
            "$exclusive/$share/g/x",
            "$exclusive/$queue/y",
        ];
        let served = [
            "site/secret/#",
            "site/secret/#",
            "$queued/a",
            "$share/g/x",
            "$queue/y",
        ];
        assert_described(&filters, &served, &["$queue"]);
        for filter in ["$queue/", "$exclusive/"] {
            for refused in refusals(filter) {
                assert!(
                    refused.contains("without a topic filter"),
                    "{filter}: {refused}"
                );
            }
        }
        for refused in refusals("$exclusive/a/#/b") {
            assert!(refused.contains("#"), "{refused}");
        }
        // A queued subscription is shared: No Local is refused on it.
        let bytes = subscribe(&[("$queue/b", 0x04)], true);
        let m = parse(&[5, 5], &bytes).malformed.unwrap();
        assert_eq!(m.reason, "No Local on a shared subscription");
    }

    /// Why each of a SUBSCRIBE and an UNSUBSCRIBE with `filter` after a
    /// good filter is malformed, at MQTT 3.1.1 and 5: the whole packet is
    /// refused, no event made.
    fn refusals(filter: &str) -> Vec<String> {
        let mut reasons = Vec::new();
        for v5 in [false, true] {
            let state: &[u8] = if v5 { &[5, 5] } else { &[4, 4] };
            let packets = [
                subscribe(&[("site/a", 0), (filter, 0)], v5),
                unsubscribe(&["site/a", filter], v5),
            ];
            for bytes in packets {
                let parsed = parse(state, &bytes);
                assert!(parsed.events.is_empty(), "{filter} v5 {v5}");
                let m = (parsed.malformed).unwrap_or_else(|| panic!("{filter} v5 {v5} accepted"));
                reasons.push(m.reason);
            }
        }
        reasons
    }

    #[test]
    fn a_malformed_shared_subscription_ends_the_stream() {
        // What the specification makes a protocol error (MQTT 5
        // §4.8.2), whatever mosquitto does with it (see `subscription`).
        let cases = [
            ("$share", "`$share` without a ShareName"),
            ("$share/", "without a topic filter"),
            ("$share/g", "without a topic filter"),
            ("$share/g/", "without a topic filter"),
            ("$share//a", "empty ShareName"),
            ("$share//", "empty ShareName"),
            (
                "$share/+/a",
                "wildcard in a shared subscription's ShareName",
            ),
            (
                "$share/#/a",
                "wildcard in a shared subscription's ShareName",
            ),
            (
                "$share/g+/a",
                "wildcard in a shared subscription's ShareName",
            ),
            (
                "$share/g#/a",
                "wildcard in a shared subscription's ShareName",
            ),
            ("$share/+", "without a topic filter"),
            ("$share/#", "without a topic filter"),
        ];
        for (filter, reason) in cases {
            for refused in refusals(filter) {
                assert!(refused.contains(reason), "{filter}: {refused}");
            }
        }
        // No Local on a shared subscription (MQTT 5 §3.8.3.1), not on a
        // plain one.
        let bytes = subscribe(&[("a", 0x04), ("$share/g/b", 0x04)], true);
        let m = parse(&[5, 5], &bytes).malformed.unwrap();
        assert_eq!(m.reason, "No Local on a shared subscription");
        let bytes = subscribe(&[("a", 0x04), ("$share/g/b", 0)], true);
        assert_eq!(parse(&[5, 5], &bytes).malformed, None);
    }

    #[test]
    fn a_filter_with_a_misplaced_wildcard_ends_the_stream() {
        // What mosquitto closes the connection on, plain or shared.
        let bad = [
            ("a/#/b", "`#`"),
            ("a/b#", "`#`"),
            ("#/", "`#`"),
            ("a+", "`+`"),
            ("+a/b", "`+`"),
            ("a/+b/#", "`+`"),
            ("$share/g/a/#/b", "`#`"),
            ("$share/g/a+", "`+`"),
        ];
        for (filter, reason) in bad {
            for refused in refusals(filter) {
                assert!(refused.starts_with(reason), "{filter}: {refused}");
            }
        }
        // Wildcards as whole levels, `#` the last.
        for filter in ["#", "+", "/#", "+/+", "a/+/b/#", "$share/g/+/x/#"] {
            let parsed = parse(&[4, 4], &subscribe(&[(filter, 0)], false));
            assert_eq!(parsed.malformed, None, "{filter}");
        }
    }

    /// The review's stream, after an MQTT 5 CONNECT and a CONNACK that
    /// allows alias 1: a PUBLISH binding topic alias 1 to a/config, then a
    /// retained PUBLISH by the alias alone.
    fn aliased_stream() -> Vec<u8> {
        [
            b"\x30\x10\x00\x08a/config\x03\x23\x00\x01ok".to_vec(),
            b"\x31\x0a\x00\x00\x03\x23\x00\x01evil".to_vec(),
        ]
        .concat()
    }

    #[test]
    fn a_topic_alias_is_reported_as_the_topic_it_stands_for() {
        let stream = aliased_stream();
        let state = connected(1, 0);
        let up = Direction::ToUpstream;
        let whole = parse_stream_after::<Mqtt>(&session(), up, &state, &[&stream]);
        assert_eq!(whole.malformed, None);
        let e = whole.events.get(1).unwrap();
        assert_eq!(e.text("topic"), Some("a/config"), "{e}");
        assert_eq!(
            (e.flag("retain"), e.int("topic-alias")),
            (Some(true), Some(1))
        );
        assert_eq!(e.int("payload-size"), Some(4));
        // Only the PUBLISH that binds the alias changes the session: it may
        // not be dropped alone.
        let binding = whole.events.get(0).unwrap();
        assert_eq!(binding.flag("changes-session"), Some(true));
        assert_eq!(e.flag("changes-session"), None);
        for cut in 0..stream.len() {
            let (a, b) = stream.split_at(cut);
            let split = parse_stream_after::<Mqtt>(&session(), up, &state, &[a, b]);
            assert_eq!(split, whole, "split at {cut}");
        }
        // One byte at a time.
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        let trickled = parse_stream_after::<Mqtt>(&session(), up, &state, &bytes);
        assert_eq!(trickled, whole);
        assert_eq!(whole.state[..2], [5, 5], "the levels come first");
    }

    #[test]
    fn an_alias_never_bound_or_an_empty_topic_without_one_is_malformed() {
        let cases: [(&[u8], &str); 3] = [
            (b"\x31\x0a\x00\x00\x03\x23\x00\x01evil", "never bound"),
            (b"\x30\x07\x00\x00\x03\x23\x00\x00x", "topic alias 0"),
            (b"\x30\x04\x00\x00\x00x", "empty PUBLISH topic"),
        ];
        for (publish, reason) in cases {
            let parsed = parse(&connected(10, 0), publish);
            assert!(parsed.events.is_empty());
            let m = (parsed.malformed).unwrap_or_else(|| panic!("{publish:?} accepted"));
            assert!(m.reason.contains(reason), "{publish:?}: {}", m.reason);
        }
        // Alias 2 after only alias 1 was bound.
        let stream = [aliased_stream(), by_alias(2)].concat();
        let parsed = parse(&connected(10, 0), &stream);
        assert_eq!(parsed.events.len(), 2);
        assert!(parsed.malformed.unwrap().reason.contains("never bound"));
    }

    #[test]
    fn each_direction_has_its_own_aliases() {
        let up = parse(&[], &connect_allowing(2));
        let down = parse_from(
            Direction::ToDevice,
            &up.state,
            &[connack_allowing(2), bind("b/state", 1), by_alias(1)].concat(),
        );
        assert_eq!(down.malformed, None);
        assert_eq!(down.events.get(2).unwrap().text("topic"), Some("b/state"));
        let up = parse(
            &down.state,
            &[bind("a/config", 1), bind("a/two", 2), by_alias(1)].concat(),
        );
        assert_eq!(up.malformed, None);
        assert_eq!(up.events.get(2).unwrap().text("topic"), Some("a/config"));
        // A client's alias means nothing from the broker.
        let down = parse_from(Direction::ToDevice, &up.state, &by_alias(2));
        assert!(down.malformed.unwrap().reason.contains("never bound"));
        // Bound again, an alias stands for its new topic.
        let up = parse(&up.state, &[bind("a/other", 1), by_alias(1)].concat());
        assert_eq!(up.events.get(1).unwrap().text("topic"), Some("a/other"));
    }

    #[test]
    fn aliases_past_the_session_state_bound_are_malformed() {
        let topic = "t".repeat(1000);
        let stream: Vec<u8> = (1..=5).flat_map(|alias| bind(&topic, alias)).collect();
        let parsed = parse(&connected(5, 0), &stream);
        assert_eq!(parsed.events.len(), 4, "four aliases of 1000 bytes fit");
        assert!(parsed.state.len() <= MAX_STATE_BYTES);
        let m = (parsed.malformed).unwrap_or_else(|| panic!("a fifth alias accepted"));
        assert!(m.reason.contains("topic aliases"), "{}", m.reason);
        // A state in a format this parser does not know ends the session.
        let parsed = parse(&[5, 5, 9], &connect(5));
        assert!(parsed.malformed.unwrap().reason.contains("session state"));
    }

    #[test]
    fn a_device_alias_above_the_connacks_maximum_is_malformed() {
        let parsed = parse(&connected(5, 0), &[bind("a/b", 5), by_alias(5)].concat());
        assert_eq!(parsed.malformed, None, "alias 5 of at most 5");
        assert_eq!(parsed.events.get(1).unwrap().text("topic"), Some("a/b"));
        let above = [
            (bind("a/c", 6), 6),
            (by_alias(6), 6),
            (bind("a/d", u16::MAX), u16::MAX),
        ];
        for (publish, alias) in above {
            let parsed = parse(&connected(5, 0), &publish);
            assert!(parsed.events.is_empty(), "{publish:?}");
            let m = (parsed.malformed).unwrap_or_else(|| panic!("{publish:?} accepted"));
            assert_eq!(
                m.reason,
                format!("topic alias {alias} above the maximum 5 the receiver allowed")
            );
        }
    }

    #[test]
    fn a_device_alias_without_a_connack_maximum_is_malformed() {
        // Before the broker's CONNACK: no maximum returned yet.
        let parsed = parse(&[], &[connect_allowing(10), bind("a/b", 1)].concat());
        assert_eq!(parsed.events.len(), 1, "only the CONNECT");
        let m = (parsed.malformed).unwrap_or_else(|| panic!("alias before CONNACK accepted"));
        assert!(m.reason.contains("above the maximum 0"), "{}", m.reason);
        // A CONNACK without a Topic Alias Maximum allows none.
        let down = parse_from(
            Direction::ToDevice,
            &parsed.state,
            &packet(0x20, &[0, 0, 0]),
        );
        assert_eq!(down.malformed, None);
        let up = parse(&down.state, &bind("a/b", 1));
        let m = (up.malformed).unwrap_or_else(|| panic!("alias without a maximum accepted"));
        assert!(m.reason.contains("above the maximum 0"), "{}", m.reason);
        // MQTT 3.1.1 has no aliases: its PUBLISH has no properties to hold
        // one, and its sessions keep the two levels alone.
        let parsed = parse(&[4, 4], &publish("a/b", b"1"));
        assert_eq!((parsed.malformed, parsed.state), (None, vec![4, 4]));
    }

    #[test]
    fn a_broker_alias_is_bounded_by_the_devices_connect() {
        let up = parse(&[], &connect_allowing(2));
        let stream = [connack_allowing(10), bind("b/x", 2), by_alias(2)].concat();
        let down = parse_from(Direction::ToDevice, &up.state, &stream);
        assert_eq!(down.malformed, None);
        let down = parse_from(Direction::ToDevice, &down.state, &bind("b/y", 3));
        let m = (down.malformed).unwrap_or_else(|| panic!("alias 3 of at most 2 accepted"));
        assert_eq!(
            m.reason,
            "topic alias 3 above the maximum 2 the receiver allowed"
        );
        // The device's own bound is the CONNACK's, not its CONNECT's.
        let up = parse(&down.state, &bind("a/x", 10));
        assert_eq!(up.malformed, None);
        // A CONNECT without a Topic Alias Maximum allows the broker none.
        let up = parse(&[], &connect(5));
        let stream = [connack_allowing(10), bind("b/x", 1)].concat();
        let down = parse_from(Direction::ToDevice, &up.state, &stream);
        assert_eq!(down.events.len(), 1, "only the CONNACK");
        let m = (down.malformed).unwrap_or_else(|| panic!("alias without a maximum accepted"));
        assert!(m.reason.contains("above the maximum 0"), "{}", m.reason);
    }

    #[test]
    fn the_maxima_are_followed_across_every_split() {
        // The broker's side, after a CONNECT that allows it alias 2: its
        // CONNACK, a binding, a PUBLISH by alias, then alias 3.
        let state = parse(&[], &connect_allowing(2)).state;
        let stream = [
            connack_allowing(4),
            bind("b/x", 2),
            by_alias(2),
            bind("b/y", 3),
        ]
        .concat();
        let down = Direction::ToDevice;
        let whole = parse_stream_after::<Mqtt>(&session(), down, &state, &[&stream]);
        assert_eq!(whole.events.len(), 3);
        let reason = |p: &Parsed| p.malformed.as_ref().map(|m| m.reason.clone());
        assert_eq!(
            reason(&whole).as_deref(),
            Some("topic alias 3 above the maximum 2 the receiver allowed")
        );
        let seen = |p: &Parsed| (p.events.clone(), p.state.clone(), reason(p));
        for cut in 0..stream.len() {
            let (a, b) = stream.split_at(cut);
            let split = parse_stream_after::<Mqtt>(&session(), down, &state, &[a, b]);
            assert_eq!(seen(&split), seen(&whole), "split at {cut}");
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        let trickled = parse_stream_after::<Mqtt>(&session(), down, &state, &bytes);
        assert_eq!(seen(&trickled), seen(&whole));
    }

    #[test]
    fn states_from_before_the_maxima_still_read() {
        // Levels alone, an MQTT 5 session whose CONNECT and CONNACK a
        // parser before the maxima read: what they allowed cannot be
        // known, so no alias is refused for being too high, now or later.
        let up = parse(&[5, 5], &[bind("a/b", 9), by_alias(9)].concat());
        assert_eq!(up.malformed, None);
        assert_eq!(up.events.get(1).unwrap().text("topic"), Some("a/b"));
        assert_eq!(up.state[..3], [5, 5, 1], "still the format of aliases");
        let down = parse_from(Direction::ToDevice, &up.state, &bind("b/c", 700));
        assert_eq!(down.malformed, None);
        let up = parse(&down.state, &bind("a/c", 65535));
        assert_eq!(up.malformed, None);
        // Aliases bound, in the format before the maxima.
        let mut old = vec![5, 5, 1, 0, 0, 1, 0, 8];
        old.extend_from_slice(b"a/config");
        let up = parse(&old, &by_alias(1));
        assert_eq!(up.malformed, None);
        assert_eq!(up.events.get(0).unwrap().text("topic"), Some("a/config"));
        assert_eq!(up.state, old, "written back as it was");
        // The CONNECT read before the upgrade, the CONNACK after: the
        // device is held to the CONNACK's maximum, the broker to none.
        let before = parse(&[5, 0], &bind("a/b", 1));
        assert!(before.malformed.unwrap().reason.contains("maximum 0"));
        let down = parse_from(
            Direction::ToDevice,
            &[5, 0],
            &[connack_allowing(3), bind("b/c", 300)].concat(),
        );
        assert_eq!(down.malformed, None);
        let up = parse(&down.state, &[bind("a/b", 3), bind("a/c", 4)].concat());
        assert_eq!(up.events.len(), 1);
        assert!(up.malformed.unwrap().reason.contains("above the maximum 3"));
        // MQTT 3.1.1 sessions are as they were.
        let parsed = parse(&[], &connect(4));
        assert_eq!(parsed.state, [4, 0]);
    }

    #[test]
    fn a_connack_that_would_outgrow_the_state_is_malformed() {
        // Aliases a device bound before the CONNACK under a parser before
        // the maxima, filling the state: the maximum the CONNACK gives
        // needs room the bound does not leave.
        let mut old = vec![5, 0, 1];
        let topic = "t".repeat(MAX_STATE_BYTES - old.len() - 5);
        old.extend_from_slice(&[0, 0, 1]);
        old.extend_from_slice(&(topic.len() as u16).to_be_bytes());
        old.extend_from_slice(topic.as_bytes());
        assert_eq!(old.len(), MAX_STATE_BYTES);
        let down = parse_from(Direction::ToDevice, &old, &connack_allowing(3));
        let m = (down.malformed).unwrap_or_else(|| panic!("the state outgrew its bound"));
        assert!(m.reason.contains("outgrow"), "{}", m.reason);
        assert!(down.state.len() <= MAX_STATE_BYTES);
        // One that allows no bound at all needs no room.
        let down = parse_from(Direction::ToDevice, &old, &connack_allowing(u16::MAX));
        assert_eq!((down.malformed, down.state.len()), (None, MAX_STATE_BYTES));
    }

    #[test]
    fn enhanced_authentication_before_connack_is_followed() {
        // MQTT 5 enhanced authentication (§4.12): the broker answers the
        // CONNECT with AUTH (continue, 0x18) before its CONNACK, while its
        // own side of the session has not yet seen a level.
        let auth = |data: u8| {
            packet(
                0xf0,
                &[
                    0x18, 12, 0x15, 0, 5, b'S', b'C', b'R', b'A', b'M', 0x16, 0, 1, data,
                ],
            )
        };
        let steps = [
            (Direction::ToUpstream, connect(5), "mqtt.connect"),
            (Direction::ToDevice, auth(1), "mqtt.auth"),
            (Direction::ToUpstream, auth(2), "mqtt.auth"),
            (
                Direction::ToDevice,
                packet(0x20, &[0, 0, 0]),
                "mqtt.connack",
            ),
        ];
        let mut state = Vec::new();
        for (i, (direction, bytes, kind)) in steps.into_iter().enumerate() {
            let parsed = parse_from(direction, &state, &bytes);
            assert_eq!(parsed.malformed, None, "step {i}");
            let e = parsed.events.get(0).unwrap();
            assert_eq!(e.kind(), kind, "step {i}");
            if kind == "mqtt.auth" {
                assert_eq!(e.text("authentication-method"), Some("SCRAM"));
            }
            state = parsed.state;
        }
        assert_eq!(state[..2], [5, 5]);
        // A broker's AUTH on a 3.1.1 session is still malformed.
        let parsed = parse_from(Direction::ToDevice, &[4, 0], &auth(1));
        let m = (parsed.malformed).unwrap_or_else(|| panic!("AUTH on 3.1.1 accepted"));
        assert!(m.reason.contains("AUTH before"), "{}", m.reason);
    }

    #[test]
    fn payload_bytes_reach_detectors_up_to_the_setting() {
        palisade_plugin_sdk::testing::Host::reset();
        palisade_plugin_sdk::host::kv::set("config/payload-bytes", b"4").unwrap();
        let stream = [connect(4), publish("a/b", b"21.5 C"), publish("a/c", b"1")].concat();
        let parsed = parse(&[], &stream);
        assert_eq!(
            parsed.events.get(1).unwrap().bytes("payload"),
            Some(&b"21.5"[..])
        );
        assert_eq!(
            parsed.events.get(2).unwrap().bytes("payload"),
            Some(&b"1"[..])
        );
        palisade_plugin_sdk::testing::Host::reset();
    }

    #[test]
    fn connect_names_will_and_username_never_the_password() {
        let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0xee, 0, 30];
        for field in [&b"dev-1"[..], b"dev/1/status", b"gone", b"alice", b"s3cret"] {
            body.extend_from_slice(&(field.len() as u16).to_be_bytes());
            body.extend_from_slice(field);
        }
        let parsed = parse(&[], &packet(0x10, &body));
        assert!(parsed.malformed.is_none(), "{:?}", parsed.malformed);
        let e = parsed.events.get(0).unwrap();
        assert_eq!(e.text("will-topic"), Some("dev/1/status"));
        assert_eq!(
            (e.int("will-qos"), e.flag("will-retain")),
            (Some(1), Some(true))
        );
        assert_eq!(e.text("username"), Some("alice"));
        assert_eq!(e.flag("has-password"), Some(true));
        assert!(!e.to_string().contains("s3cret"));
    }

    /// `text` as an MQTT string: its length, then its bytes.
    fn string(text: &str) -> Vec<u8> {
        [&(text.len() as u16).to_be_bytes()[..], text.as_bytes()].concat()
    }

    #[test]
    fn a_string_with_u0000_a_control_or_a_noncharacter_is_malformed() {
        let up = Direction::ToUpstream;
        let down = Direction::ToDevice;
        // The review's topic: judged whole, acted on up to the U+0000.
        let topic = string("site/cmd\0/telemetry");
        let publish4 = packet(0x30, &[&topic[..], b"1"].concat());
        let publish5 = packet(0x30, &[&topic[..], b"\x001"].concat());
        let mut user_property = vec![0x26];
        user_property.extend_from_slice(&string("k"));
        user_property.extend_from_slice(&string("v\u{85}"));
        let mut with_property = string("a/b");
        with_property.push(user_property.len() as u8);
        with_property.extend_from_slice(&user_property);
        let mut connect = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60];
        connect.extend_from_slice(&string("dev\u{ffff}"));
        let cases: [(Direction, &[u8], Vec<u8>, &str); 8] = [
            (up, &[4, 4], publish4.clone(), "U+0000"),
            (down, &[4, 4], publish4, "U+0000"),
            (up, &[5, 5], publish5.clone(), "U+0000"),
            (down, &[5, 5], publish5, "U+0000"),
            (up, &[4, 4], publish("a\u{1}b", b"1"), "control"),
            (
                up,
                &[5, 5],
                subscribe(&[("a/b", 0), ("site/cmd\0/#", 1)], true),
                "U+0000",
            ),
            (
                up,
                &[5, 5],
                packet(0x30, &[&with_property[..], b"1"].concat()),
                "control",
            ),
            (up, &[], packet(0x10, &connect), "noncharacter"),
        ];
        for (direction, state, bytes, reason) in cases {
            let parsed = parse_from(direction, state, &bytes);
            assert!(parsed.events.is_empty(), "{bytes:?}");
            let m = (parsed.malformed).unwrap_or_else(|| panic!("{bytes:?} accepted"));
            assert!(m.reason.contains(reason), "{bytes:?}: {}", m.reason);
        }
        // Beyond ASCII, what mosquitto takes reads as before.
        let parsed = parse(&[4, 4], &publish("café/\u{a0}/\u{fffd}", b"1"));
        assert_eq!(parsed.malformed, None);
        let e = parsed.events.get(0).unwrap();
        assert_eq!(e.text("topic"), Some("café/\u{a0}/\u{fffd}"));
    }

    /// A CONNECT at `level` with a will on `topic`.
    fn connect_with_will(level: u8, topic: &str) -> Vec<u8> {
        let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', level, 0x06, 0, 60];
        let properties: &[u8] = if level == 5 { &[0] } else { &[] };
        body.extend_from_slice(properties);
        body.extend_from_slice(&string("c1"));
        body.extend_from_slice(properties);
        body.extend_from_slice(&string(topic));
        body.extend_from_slice(&string("gone"));
        packet(0x10, &body)
    }

    #[test]
    fn a_will_topic_with_a_wildcard_is_malformed() {
        for level in [4, 5] {
            let parsed = parse(&[], &connect_with_will(level, "dev/1/status"));
            assert_eq!(parsed.malformed, None, "MQTT level {level}");
            let e = parsed.events.get(0).unwrap();
            assert_eq!(e.text("will-topic"), Some("dev/1/status"));
            for topic in ["dev/+/status", "dev/#", "#", "+"] {
                let parsed = parse(&[], &connect_with_will(level, topic));
                assert!(parsed.events.is_empty(), "{topic}");
                let m = (parsed.malformed).unwrap_or_else(|| panic!("{topic} accepted"));
                assert!(m.reason.contains("wildcard"), "{topic}: {}", m.reason);
            }
            let parsed = parse(&[], &connect_with_will(level, "dev\0/+"));
            let m = (parsed.malformed).unwrap_or_else(|| panic!("U+0000 accepted"));
            assert!(m.reason.contains("U+0000"), "{}", m.reason);
        }
    }

    #[test]
    fn protocol_violations_are_malformed_with_their_reason() {
        let cases: [(Direction, &[u8], Vec<u8>, &str); 6] = [
            (
                Direction::ToUpstream,
                &[4],
                packet(0x31, &[0, 1, b'#']),
                "wildcard",
            ),
            (
                Direction::ToUpstream,
                &[4],
                packet(0x38, &[0, 1, b't']),
                "DUP set at QoS 0",
            ),
            (
                Direction::ToUpstream,
                &[4],
                packet(0xc1, &[]),
                "reserved flags",
            ),
            (
                Direction::ToUpstream,
                &[4],
                packet(0xf0, &[0]),
                "AUTH before",
            ),
            (
                Direction::ToDevice,
                &[4],
                packet(0xc0, &[]),
                "client's packet sent by the server",
            ),
            (
                Direction::ToUpstream,
                &[5],
                packet(0xe0, &[0, 2, 0x7f, 0]),
                "unknown MQTT 5 property",
            ),
        ];
        for (direction, state, bytes, reason) in cases {
            let parsed = parse_from(direction, state, &bytes);
            let m = parsed
                .malformed
                .unwrap_or_else(|| panic!("{bytes:?} accepted"));
            assert!(m.reason.contains(reason), "{bytes:?}: {}", m.reason);
        }
    }
}
