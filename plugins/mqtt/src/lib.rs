//! A minimal MQTT parser plugin: it cuts an MQTT 3.1.1 or 5.0 byte stream
//! into control packets, describes CONNECT, PUBLISH and SUBSCRIBE in detail,
//! and every other packet by its type.
//!
//! It sits at the start of the detection path: the host hands it the bytes a
//! device sent, it returns one event per packet, and the host forwards each
//! packet only after the detectors have judged its event.
//!
//! The session state is one byte, the protocol level agreed by CONNECT (4 for
//! 3.1.1, 5 for 5.0; 0 before CONNECT), because MQTT 5 packets carry
//! properties that 3.1.1 packets lack.

use palisade_plugin_sdk::{Direction, Parsed, Parser, Session};

/// The parser as a plugin.
#[derive(Debug)]
pub struct Mqtt;

impl Parser for Mqtt {
    const PROTOCOL: &'static str = "mqtt";

    fn parse(_session: &Session, _direction: Direction, state: &[u8], input: &[u8]) -> Parsed {
        parse(state, input)
    }
}

palisade_plugin_sdk::export!(parser: Mqtt);

/// Parse the complete packets at the start of `input`, given the session
/// `state` returned by the previous call.
pub fn parse(state: &[u8], input: &[u8]) -> Parsed {
    let mut level = state.first().copied().unwrap_or(0);
    let mut parsed = Parsed::new(Vec::new());
    let mut offset = 0;
    while let Some(rest) = input.get(offset..).filter(|r| !r.is_empty()) {
        match frame(rest) {
            Framing::Complete { header_len, len } => {
                let header = rest.first().copied().unwrap_or(0);
                let body = rest.get(header_len..len).unwrap_or_default();
                if let Err(reason) = describe(header, body, &mut level, len, &mut parsed) {
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
    parsed.state = vec![level];
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

/// Describe one packet of `len` bytes, whose first byte is `header` and
/// variable header and payload are `body`, as a frame of `parsed`. Nothing
/// is written unless the whole packet reads well.
fn describe(
    header: u8,
    body: &[u8],
    level: &mut u8,
    len: usize,
    parsed: &mut Parsed,
) -> Result<(), &'static str> {
    let mut r = Reader(body);
    let kind = header >> 4;
    let flags = header & 0x0f;
    match kind {
        1 => {
            if *level != 0 {
                return Err("second CONNECT on a session");
            }
            let name = r.string()?;
            if name != "MQTT" && name != "MQIsdp" {
                return Err("unknown protocol name");
            }
            let version = r.u8()?;
            let connect_flags = r.u8()?;
            let keep_alive = r.u16()?;
            if version == 5 {
                r.properties()?;
            }
            let client_id = r.string()?;
            *level = version;
            parsed
                .frame(len, "mqtt.connect")
                .int("protocol-version", version)
                .text("client-id", client_id)
                .int("keep-alive", keep_alive)
                .flag("clean-start", connect_flags & 0x02 != 0)
                .flag("has-username", connect_flags & 0x80 != 0)
                .flag("has-password", connect_flags & 0x40 != 0);
        }
        3 => {
            let qos = (flags >> 1) & 0x03;
            if qos == 3 {
                return Err("PUBLISH with QoS 3");
            }
            let topic = r.string()?;
            let packet_id = if qos > 0 { Some(r.u16()?) } else { None };
            if *level == 5 {
                r.properties()?;
            }
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
        }
        8 => {
            if flags != 0x02 {
                return Err("SUBSCRIBE with reserved flags not 0010");
            }
            let packet_id = r.u16()?;
            if *level == 5 {
                r.properties()?;
            }
            let filters = r.0;
            let mut count = 0;
            while !r.0.is_empty() {
                r.string()?;
                r.u8()?;
                count += 1;
            }
            if count == 0 {
                return Err("SUBSCRIBE without a topic filter");
            }
            let mut event = parsed.frame(len, "mqtt.subscribe");
            event.int("packet-id", packet_id);
            let mut r = Reader(filters);
            while let (Ok(filter), Ok(_options)) = (r.string(), r.u8()) {
                event.text("filter", filter);
            }
        }
        _ => {
            parsed.frame(len, packet_name(kind));
        }
    }
    Ok(())
}

fn packet_name(kind: u8) -> &'static str {
    match kind {
        2 => "mqtt.connack",
        4 => "mqtt.puback",
        5 => "mqtt.pubrec",
        6 => "mqtt.pubrel",
        7 => "mqtt.pubcomp",
        9 => "mqtt.suback",
        10 => "mqtt.unsubscribe",
        11 => "mqtt.unsuback",
        12 => "mqtt.pingreq",
        13 => "mqtt.pingresp",
        14 => "mqtt.disconnect",
        15 => "mqtt.auth",
        _ => "mqtt.reserved",
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

    fn string(&mut self) -> Result<&'a str, &'static str> {
        let len = self.u16()?;
        std::str::from_utf8(self.take(usize::from(len))?).map_err(|_| "string is not UTF-8")
    }

    /// Skip an MQTT 5 property block.
    fn properties(&mut self) -> Result<(), &'static str> {
        let mut len: usize = 0;
        for i in 0..4 {
            let byte = self.u8()?;
            len |= usize::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                self.take(len)?;
                return Ok(());
            }
        }
        Err("property length longer than 4 bytes")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;
    use palisade_plugin_sdk::testing::parse_stream;

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
}
