//! The parsers against Wireshark's dissectors, on the same real traffic:
//! `scripts/record-traffic` captured with tshark what real clients and
//! servers said through its recording relays (`tests/recordings/`). For
//! every TCP connection and direction, the fields tshark extracts, in
//! order, equal what the parser's events say: MQTT packet types, topics
//! and filters, packet ids; CoAP codes; Modbus transaction ids, units and
//! function codes.
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
            let topics: Vec<String> = e
                .attributes()
                .filter(|(n, _)| *n == "topic" || *n == "filter")
                .filter_map(|(_, v)| match v {
                    palisade_plugin_sdk::Value::Text(t) => Some(t.to_owned()),
                    _ => None,
                })
                .collect();
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
        let code = match (e.kind(), e.text("method"), e.text("code")) {
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
        };
        vec![vec![code.to_string()]]
    });
}
