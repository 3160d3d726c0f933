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

use palisade_plugin_sdk::testing::parse_stream;
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
/// client).
fn parsed<P: Parser>(protocol: &str) -> BTreeMap<(usize, bool), Parsed> {
    let session = Session::new(1, "device-1", "sensor", "lab", protocol);
    let mut all = BTreeMap::new();
    for entry in std::fs::read_dir(recordings().join(protocol)).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap();
        let (n, dir) = name.split_once('.').unwrap();
        let up = dir == "up";
        let direction = if up {
            Direction::ToUpstream
        } else {
            Direction::ToDevice
        };
        let stream = std::fs::read(&path).unwrap();
        all.insert(
            (n.parse().unwrap(), up),
            parse_stream::<P>(&session, direction, &[&stream]),
        );
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
        &["mqtt.msgtype", "mqtt.topic", "mqtt.msgid"],
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
            vec![vec![kind.to_string()], topics, text(e.int("packet-id"))]
        },
    );
}

#[test]
fn modbus_agrees_with_wireshark() {
    agree::<modbus::Modbus>(
        "modbus",
        "mbtcp",
        &["mbtcp.trans_id", "mbtcp.unit_id", "modbus.func_code"],
        |e| {
            vec![
                text(e.int("transaction")),
                text(e.int("unit")),
                text(e.int("function")),
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
