//! The parsers against Wireshark's dissectors, on the same real traffic:
//! `scripts/record-traffic` captured with tshark what real clients and
//! servers said through its recording relays (`tests/recordings/`). For
//! every TCP connection and direction, the fields tshark extracts, in
//! order, equal what the parser's events say: MQTT packet types, topics
//! and filters, packet ids; CoAP codes; Modbus transaction ids, units and
//! function codes. For CoAP over UDP, tshark's capture is the recording
//! (`tests/recordings/coap-udp/`): datagram by datagram, the CoAP plugin
//! run by the host reads the same type, code, message id, token, Uri-Path
//! and Uri-Query, Content-Format, Observe, Block1 and Block2, and payload
//! size as Wireshark's dissector.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use palisade_plugin_sdk::testing::{parse_stream, parse_stream_after};
use palisade_plugin_sdk::{Direction, EventRef, Parsed, Parser, Session};

fn recordings() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/recordings")
}

/// The relay port each protocol's clients connected to.
fn port(protocol: &str) -> u16 {
    let ports = std::fs::read_to_string(recordings().join("ports")).unwrap();
    ports
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{protocol} ")))
        .unwrap()
        .parse()
        .unwrap()
}

/// tshark's `fields`, decoding the protocol's port as `dissector`: for
/// each (connection number, from the client), each field's values in order.
type Fields = BTreeMap<(usize, bool), Vec<Vec<String>>>;

fn tshark(tshark: &Path, protocol: &str, dissector: &str, fields: &[&str]) -> Fields {
    let port = port(protocol);
    let mut command = Command::new(tshark);
    command
        .arg("-r")
        .arg(recordings().join("traffic.pcapng"))
        .args(["-d", &format!("tcp.port=={port},{dissector}")])
        .args(["-Y", dissector, "-T", "fields", "-E", "separator=|"])
        .args(["-E", "occurrence=a", "-E", "aggregator=^"])
        .args(["-e", "tcp.stream", "-e", "tcp.srcport"]);
    if protocol == "modbus" {
        // Which side is the server, so that requests and responses are told
        // apart and decoded field by field.
        command.args(["-o", &format!("mbtcp.tcp.port:{port}")]);
    }
    for f in fields {
        command.args(["-e", f]);
    }
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Connections are numbered as the relay accepted them: the streams it
    // accepted (its SYN-ACKs; a refused attempt has none), in order.
    let accepted = Command::new(tshark)
        .arg("-r")
        .arg(recordings().join("traffic.pcapng"))
        .args([
            "-Y",
            &format!("tcp.flags.syn==1 && tcp.flags.ack==1 && tcp.srcport=={port}"),
        ])
        .args(["-T", "fields", "-e", "tcp.stream"])
        .output()
        .unwrap();
    let mut streams: Vec<usize> = String::from_utf8(accepted.stdout)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    let mut seen: Fields = BTreeMap::new();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let cols: Vec<&str> = line.split('|').collect();
        let stream: usize = cols[0].parse().unwrap();
        let from_client = cols[1] != port.to_string();
        let entry = seen
            .entry((stream, from_client))
            .or_insert_with(|| vec![Vec::new(); fields.len()]);
        for (i, col) in cols[2..].iter().enumerate() {
            entry[i].extend(col.split('^').filter(|v| !v.is_empty()).map(str::to_owned));
        }
    }
    streams.sort_unstable();
    streams.dedup();
    seen.into_iter()
        .map(|((stream, up), v)| ((streams.iter().position(|s| *s == stream).unwrap(), up), v))
        .collect()
}

/// The parser's events on each recording, by (connection number, from the
/// client). A connection's device side is parsed first, and its server side
/// from the state the device side left, as when every request precedes its
/// response.
fn parsed<P: Parser>(protocol: &str) -> BTreeMap<(usize, bool), Parsed> {
    let session = Session::new(1, "device-1", "sensor", "lab", protocol);
    let mut streams = BTreeMap::new();
    for entry in std::fs::read_dir(recordings().join(protocol)).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap();
        let (n, dir) = name.split_once('.').unwrap();
        let key: (usize, bool) = (n.parse().unwrap(), dir == "up");
        streams.insert(key, std::fs::read(&path).unwrap());
    }
    let mut all = BTreeMap::new();
    for (&(n, up), stream) in &streams {
        if !up {
            continue;
        }
        let requests = parse_stream::<P>(&session, Direction::ToUpstream, &[stream]);
        if let Some(responses) = streams.get(&(n, false)) {
            let state = requests.state.clone();
            let parsed =
                parse_stream_after::<P>(&session, Direction::ToDevice, &state, &[responses]);
            all.insert((n, false), parsed);
        }
        all.insert((n, true), requests);
    }
    all
}

/// Compare, connection by connection, tshark's fields with what `extract`
/// takes from the parser's events, field by field.
fn agree<P: Parser>(
    protocol: &str,
    dissector: &str,
    fields: &[&str],
    extract: impl Fn(EventRef<'_>) -> Vec<Vec<String>>,
) {
    let Some(tshark_path) = common::program("tshark") else {
        return;
    };
    let wireshark = tshark(&tshark_path, protocol, dissector, fields);
    let ours = parsed::<P>(protocol);
    let mut compared = 0;
    for (key, parsed) in &ours {
        let mut mine = vec![Vec::new(); fields.len()];
        for event in parsed.events.iter() {
            for (i, values) in extract(event).into_iter().enumerate() {
                mine[i].extend(values);
            }
        }
        let theirs = wireshark
            .get(key)
            .cloned()
            .unwrap_or_else(|| vec![Vec::new(); fields.len()]);
        for (i, field) in fields.iter().enumerate() {
            assert_eq!(
                mine[i],
                theirs[i],
                "{protocol} connection {} {}: {field}",
                key.0,
                if key.1 { "up" } else { "down" }
            );
        }
        compared += parsed.events.len();
    }
    assert!(compared > 0, "no {protocol} events compared");
}

fn text(v: Option<impl ToString>) -> Vec<String> {
    v.into_iter().map(|v| v.to_string()).collect()
}

#[test]
fn mqtt_agrees_with_wireshark() {
    agree::<mqtt::Mqtt>(
        "mqtt",
        "mqtt",
        &[
            "mqtt.msgtype",
            "mqtt.topic",
            "mqtt.msgid",
            "mqtt.qos",
            "mqtt.retain",
            "mqtt.dupflag",
            "mqtt.ver",
            "mqtt.username",
            "mqtt.willtopic",
        ],
        |e| {
            let kind = match e.kind() {
                "mqtt.connect" => 1,
                "mqtt.connack" => 2,
                "mqtt.publish" => 3,
                "mqtt.puback" => 4,
                "mqtt.pubrec" => 5,
                "mqtt.pubrel" => 6,
                "mqtt.pubcomp" => 7,
                "mqtt.subscribe" => 8,
                "mqtt.suback" => 9,
                "mqtt.unsubscribe" => 10,
                "mqtt.unsuback" => 11,
                "mqtt.pingreq" => 12,
                "mqtt.pingresp" => 13,
                "mqtt.disconnect" => 14,
                _ => 15,
            };
            // tshark shows each topic filter as sent, as `subscription`
            // has it (a shared one `$share/{group}/{filter}`); `filter`
            // has the filter the broker serves, and each shared one's
            // group just before it, in `share-group`: rebuilt, they are
            // what was sent (EMQX's `$queue/` and `$exclusive/` forms
            // aside, which are read as what EMQX serves).
            let topics: Vec<String> = if e.get("topic").is_some() {
                e.texts("topic").map(str::to_owned).collect()
            } else {
                let sent: Vec<String> = e.texts("subscription").map(str::to_owned).collect();
                let mut rebuilt = Vec::new();
                let mut group = None;
                for (name, value) in e.attributes() {
                    match (name, value) {
                        ("share-group", palisade_plugin_sdk::Value::Text(g)) => group = Some(g),
                        ("filter", palisade_plugin_sdk::Value::Text(f)) => {
                            rebuilt.push(match group.take() {
                                Some(g) => format!("$share/{g}/{f}"),
                                None => f.to_owned(),
                            })
                        }
                        _ => {}
                    }
                }
                let emqx = |f: &String| f.starts_with("$queue/") || f.starts_with("$exclusive/");
                if !sent.iter().any(emqx) {
                    assert_eq!(rebuilt, sent, "{e}");
                }
                sent
            };
            let flag = |name| text(e.flag(name).map(u8::from));
            let connect = e.kind() == "mqtt.connect";
            vec![
                vec![kind.to_string()],
                topics,
                text(e.int("packet-id")),
                text(e.int("qos")),
                flag("retain"),
                flag("dup"),
                text(e.int("protocol-version").filter(|_| connect)),
                text(e.text("username")),
                text(e.text("will-topic")),
            ]
        },
    );
}

#[test]
fn modbus_agrees_with_wireshark() {
    agree::<modbus::Modbus>(
        "modbus",
        "mbtcp",
        &[
            "mbtcp.trans_id",
            "mbtcp.unit_id",
            "modbus.func_code",
            "modbus.reference_num",
            "modbus.word_cnt",
            "modbus.bit_cnt",
            "modbus.regval_uint16",
            "modbus.data",
        ],
        |e| {
            let function = e.int("function").unwrap();
            let response = e.kind() == "modbus.response";
            // What Wireshark shows of each message: a request's address and
            // quantity; a response's only where the message carries them
            // (the echo of a write), not where they come from the request.
            let echoes = !response || matches!(function, 5 | 6 | 15 | 16);
            let address = e.int("address").filter(|_| echoes);
            let count = e
                .int("count")
                .filter(|_| echoes && !matches!(function, 5 | 6));
            let is_bits = matches!(function, 1 | 2 | 15);
            let registers: Vec<String> = match (response, function) {
                (false, 16 | 23) | (true, 3 | 4 | 23) => e
                    .bytes("values")
                    .unwrap_or_default()
                    .chunks_exact(2)
                    .map(|r| u16::from_be_bytes([r[0], r[1]]).to_string())
                    .collect(),
                _ => Vec::new(),
            };
            let data = e
                .int("value")
                .filter(|_| function == 6)
                .map(|v| format!("{v:04x}"));
            vec![
                text(e.int("transaction")),
                text(e.int("unit")),
                text(Some(function)),
                text(address),
                text(count.filter(|_| !is_bits)),
                text(count.filter(|_| is_bits)),
                registers,
                text(data),
            ]
        },
    );
}

#[test]
fn coap_agrees_with_wireshark() {
    agree::<coap::Coap>("coap", "coap", &["coap.code"], |e| {
        vec![vec![coap_code(e).to_string()]]
    });
}

/// An event's CoAP code as tshark shows it, class * 32 + detail; 0 (the
/// empty message's) for any other kind.
fn coap_code(e: EventRef<'_>) -> usize {
    match (e.kind(), e.text("method"), e.text("code")) {
        ("coap.request", Some(m), _) => {
            ["GET", "POST", "PUT", "DELETE", "FETCH", "PATCH", "iPATCH"]
                .iter()
                .position(|x| *x == m)
                .unwrap()
                + 1
        }
        ("coap.signal", _, Some(s)) => {
            7 * 32
                + ["CSM", "Ping", "Pong", "Release", "Abort"]
                    .iter()
                    .position(|x| *x == s)
                    .unwrap()
                + 1
        }
        ("coap.response", _, Some(c)) => {
            let (class, detail) = c.split_once('.').unwrap();
            class.parse::<usize>().unwrap() * 32 + detail.parse::<usize>().unwrap()
        }
        _ => 0,
    }
}

/// tshark's fields of every CoAP over UDP datagram in the capture, by
/// whether it came from the client: one row per datagram, in order, each
/// field's values.
type Rows = BTreeMap<bool, Vec<Vec<Vec<String>>>>;

fn tshark_datagrams(tshark: &Path, fields: &[&str]) -> Rows {
    let port = port("coap-udp");
    let out = Command::new(tshark)
        .arg("-r")
        .arg(recordings().join("traffic.pcapng"))
        .args(["-d", &format!("udp.port=={port},coap")])
        .args(["-Y", &format!("udp.port=={port}")])
        .args(["-T", "fields", "-E", "separator=|"])
        .args(["-E", "occurrence=a", "-E", "aggregator=^"])
        .args(["-e", "udp.srcport"])
        .args(fields.iter().flat_map(|f| ["-e", f]))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut rows = Rows::new();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let cols: Vec<&str> = line.split('|').collect();
        let from_client = cols[0] != port.to_string();
        let row = cols[1..]
            .iter()
            .map(|c| {
                c.split('^')
                    .filter(|v| !v.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .collect();
        rows.entry(from_client).or_default().push(row);
    }
    rows
}

/// The name Wireshark gives a Content-Format (its `coap.opt.ctype`).
fn content_format(number: i64) -> String {
    match number {
        0 => "text/plain; charset=utf-8",
        40 => "application/link-format",
        41 => "application/xml",
        42 => "application/octet-stream",
        47 => "application/exi",
        50 => "application/json",
        60 => "application/cbor",
        other => panic!("content format {other} is not in the test's table"),
    }
    .to_owned()
}

#[test]
fn coap_over_udp_agrees_with_wireshark() {
    let Some(tshark_path) = common::program("tshark") else {
        return;
    };
    const FIELDS: &[&str] = &[
        "coap.type",
        "coap.code",
        "coap.mid",
        "coap.token",
        "coap.opt.uri_path",
        "coap.opt.uri_query",
        "coap.opt.ctype",
        "coap.opt.observe",
        "coap.opt.name",
        "coap.opt.block_number",
        "coap.opt.block_mflag",
        "coap.opt.block_size",
        "coap.block_length",
        "coap.payload_length",
    ];
    let wireshark = tshark_datagrams(&tshark_path, FIELDS);
    let runtime = common::runtime();
    let plugin = common::load(&runtime, "coap", palisade::plugins::Limits::default());
    let host_session = common::session(1, "device-1");
    let session = Session::new(1, "device-1", "thermostat", "cell-1", "mqtt");
    let mut compared = 0;
    for up in [true, false] {
        let (direction, host_direction) = if up {
            (
                Direction::ToUpstream,
                palisade::plugins::Direction::ToUpstream,
            )
        } else {
            (Direction::ToDevice, palisade::plugins::Direction::ToDevice)
        };
        let datagrams = common::recorded_datagrams(if up { "up.hex" } else { "down.hex" });
        let theirs = wireshark.get(&up).cloned().unwrap_or_default();
        assert_eq!(datagrams.len(), theirs.len(), "datagrams, up: {up}");
        let native: Vec<(Direction, &[u8])> = datagrams
            .iter()
            .map(|d| (direction, d.as_slice()))
            .collect();
        let native = palisade_plugin_sdk::testing::parse_datagrams::<coap::Coap>(&session, &native);
        for (i, (datagram, row)) in datagrams.iter().zip(&theirs).enumerate() {
            let what = format!("coap-udp {} datagram {i}", if up { "up" } else { "down" });
            let parsed = plugin
                .parse_datagram(&host_session, host_direction, &[], datagram)
                .unwrap();
            assert_eq!(parsed.malformed, None, "{what}");
            assert_eq!(parsed.frame_lengths, [datagram.len() as u32], "{what}");
            let event = parsed.events.get(0).unwrap();
            assert_eq!(
                event.to_string(),
                native[i].events.get(0).unwrap().to_string(),
                "{what}: component and native differ"
            );
            let ours = coap_udp_fields(event);
            // Wireshark shows a Size2 option through its block size field
            // too (300 as 300 & 7 = 4): only the first values, one per
            // Block option, are the blocks'.
            let mut row = row.clone();
            // Of the option names (`#4: Block1`), the Block options'.
            let blocks: Vec<String> = (row[8].iter())
                .filter_map(|n| n.split_once(": ").map(|(_, name)| name.to_owned()))
                .filter(|name| name.starts_with("Block"))
                .collect();
            row[11].truncate(blocks.len());
            row[8] = blocks;
            // Wireshark's payload length is the reassembled body's on a
            // last block; each block's own is its block length.
            let payload = if row[12].is_empty() {
                row[13].clone()
            } else {
                row[12].clone()
            };
            for (j, field) in FIELDS.iter().enumerate().take(12) {
                assert_eq!(ours[j], row[j], "{what}: {field} of {event}");
            }
            assert_eq!(ours[12], payload, "{what}: payload size of {event}");
            compared += 1;
        }
    }
    assert!(compared > 0, "no CoAP over UDP datagram compared");
}

/// The fields of a CoAP over UDP event as tshark shows them, in the order
/// of the test's field list, the payload size last.
fn coap_udp_fields(e: EventRef<'_>) -> Vec<Vec<String>> {
    let kind = ["con", "non", "ack", "rst"]
        .iter()
        .position(|t| Some(*t) == e.text("type"))
        .unwrap();
    let code = match e.kind() {
        "coap.request" | "coap.response" | "coap.empty" => coap_code(e),
        other => panic!("{other} over UDP"),
    };
    let token: String = (e.bytes("token").unwrap_or_default().iter())
        .map(|b| format!("{b:02x}"))
        .collect();
    let path: Vec<String> = (e.text("path").unwrap_or_default().split('/'))
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let query: Vec<String> = (e.text("query").into_iter())
        .flat_map(|q| q.split('&'))
        .map(str::to_owned)
        .collect();
    // Block2 (option 23) comes before Block1 (27) in a message.
    let blocks: Vec<(&str, i64)> = [("Block2", e.int("block2")), ("Block1", e.int("block1"))]
        .into_iter()
        .filter_map(|(name, v)| v.map(|v| (name, v)))
        .collect();
    let block = |f: fn(i64) -> i64| blocks.iter().map(|(_, v)| f(*v).to_string()).collect();
    vec![
        vec![kind.to_string()],
        vec![code.to_string()],
        text(e.int("message-id")),
        text(Some(token).filter(|t| !t.is_empty())),
        path,
        query,
        text(e.int("content-format").map(content_format)),
        text(e.int("observe")),
        blocks.iter().map(|(name, _)| (*name).to_owned()).collect(),
        block(|v| v >> 4),
        block(|v| (v >> 3) & 1),
        block(|v| v & 7),
        text(e.int("payload-size").filter(|n| *n > 0)),
    ]
}
