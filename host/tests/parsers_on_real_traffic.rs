//! The parsers on real traffic: the recordings `scripts/record-traffic`
//! made of real clients and servers (mosquitto_pub and mosquitto_sub with
//! MQTT 3.1.1 and 5 options against mosquitto, libcoap's coap-client and
//! coap-server over TCP, pymodbus client and server), both directions.
//! Every stream parses whole, with no malformed frame; gives the same
//! events in one chunk, split at every byte boundary, and a byte at a time;
//! gives the same events from the component as from the native code; and
//! speaks the event vocabulary the policy is checked against. So does
//! every CoAP over UDP datagram the same client and server exchanged
//! (`tests/recordings/coap-udp/`), parsed one by one.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::path::{Path, PathBuf};

use palisade::plugins::{Direction, Limits, Parsed, Value};
use palisade::policy::vocabulary::{self, Type};
use palisade_plugin_sdk::testing::parse_stream;
use palisade_plugin_sdk::{Direction as SdkDirection, Parser};

/// The recordings of `protocol`, each with whether it travelled from the
/// client.
fn recordings(protocol: &str) -> Vec<(PathBuf, bool)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/recordings")
        .join(protocol);
    let mut found: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .map(|path| {
            let up = path.extension().and_then(|e| e.to_str()) == Some("up");
            (path, up)
        })
        .collect();
    found.sort();
    assert!(!found.is_empty(), "no recordings in {}", dir.display());
    found
}

fn events(parsed: &Parsed) -> Vec<String> {
    parsed.events.iter().map(|e| e.to_string()).collect()
}

/// Every event of `parsed` is a kind of the vocabulary, with only its
/// attributes, of their types, and all those it always has.
fn speaks_the_vocabulary(parsed: &Parsed, what: &str) {
    for event in parsed.events.iter() {
        let kind = vocabulary::find(event.kind())
            .unwrap_or_else(|| panic!("{what}: {} is not in the vocabulary", event.kind()));
        let attributes: Vec<_> = kind.attributes().collect();
        for (name, value) in event.attributes() {
            let ((_, ty), _) = attributes
                .iter()
                .find(|((n, _), _)| *n == name)
                .unwrap_or_else(|| panic!("{what}: {} has no attribute {name}", event.kind()));
            let fits = matches!(
                (ty, value),
                (Type::Text | Type::TextSet, Value::Text(_))
                    | (Type::Int, Value::Int(_))
                    | (Type::Flag, Value::Flag(_))
                    | (Type::Bytes, Value::Bytes(_))
            );
            assert!(
                fits,
                "{what}: {}'s {name} is {value:?}, not {ty:?}",
                event.kind()
            );
        }
        for ((name, _), always) in attributes {
            // The host adds these.
            if always
                && !vocabulary::HOST_ATTRIBUTES.iter().any(|(n, _)| *n == name)
                && name != "topic-levels"
            {
                assert!(
                    event.attributes().any(|(n, _)| n == name),
                    "{what}: {} lacks {name}: {event}",
                    event.kind()
                );
            }
        }
    }
}

fn check<P: Parser>(protocol: &str) {
    let plugin = common::load(&common::runtime(), protocol, Limits::default());
    let session = palisade_plugin_sdk::Session::new(1, "device-1", "sensor", "lab", protocol);
    let mut total = 0;
    for (path, up) in recordings(protocol) {
        let (direction, host_direction) = if up {
            (SdkDirection::ToUpstream, Direction::ToUpstream)
        } else {
            (SdkDirection::ToDevice, Direction::ToDevice)
        };
        let what = path.display().to_string();
        let stream = std::fs::read(&path).unwrap();
        let whole = parse_stream::<P>(&session, direction, &[&stream]);
        assert!(whole.malformed.is_none(), "{what}: {:?}", whole.malformed);
        let framed: u32 = whole.frame_lengths.iter().sum();
        assert_eq!(
            framed as usize,
            stream.len(),
            "{what}: not all of it framed"
        );
        speaks_the_vocabulary(&whole, &what);
        for cut in 1..stream.len() {
            let (a, b) = stream.split_at(cut);
            let split = parse_stream::<P>(&session, direction, &[a, b]);
            assert_eq!(events(&split), events(&whole), "{what}: split at {cut}");
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        let trickle = parse_stream::<P>(&session, direction, &bytes);
        assert_eq!(events(&trickle), events(&whole), "{what}: a byte at a time");
        let host_session = common::session(1, "device-1");
        let wasm = plugin
            .parse(&host_session, host_direction, &[], &stream)
            .unwrap();
        assert_eq!(
            events(&wasm),
            events(&whole),
            "{what}: component and native differ"
        );
        total += whole.events.len();
    }
    assert!(total > 0);
}

#[test]
fn mqtt_recordings() {
    check::<mqtt::Mqtt>("mqtt");
}

#[test]
fn coap_recordings() {
    check::<coap::Coap>("coap");
}

#[test]
fn modbus_recordings() {
    check::<modbus::Modbus>("modbus");
}

#[test]
fn coap_udp_recordings() {
    let runtime = common::runtime();
    let plugin = common::load(&runtime, "coap", Limits::default());
    let session = palisade_plugin_sdk::Session::new(1, "device-1", "sensor", "lab", "coap");
    let mut total = 0;
    for (name, direction, host_direction) in [
        ("up.hex", SdkDirection::ToUpstream, Direction::ToUpstream),
        ("down.hex", SdkDirection::ToDevice, Direction::ToDevice),
    ] {
        for (i, datagram) in common::recorded_datagrams(name).into_iter().enumerate() {
            let what = format!("coap-udp/{name} datagram {i}");
            let native = palisade_plugin_sdk::testing::parse_datagrams::<coap::Coap>(
                &session,
                &[(direction, &datagram)],
            );
            let native = &native[0];
            assert!(native.malformed.is_none(), "{what}: {:?}", native.malformed);
            speaks_the_vocabulary(native, &what);
            let wasm = plugin
                .parse_datagram(
                    &common::session(1, "device-1"),
                    host_direction,
                    &[],
                    &datagram,
                )
                .unwrap();
            assert_eq!(
                events(&wasm),
                events(native),
                "{what}: component and native differ"
            );
            total += 1;
        }
    }
    assert!(total > 0);
}

/// Reading datagrams is the optional `datagram-parser` export: the stream
/// parsers, which lack it, load all the same and are refused a datagram
/// without a strike; coap has it, and a datagram that is not a message
/// comes back as a malformed report at offset 0 with the state kept.
#[test]
fn only_parsers_that_export_datagram_parser_read_datagrams() {
    let runtime = common::runtime();
    let session = common::session(1, "device-1");
    for protocol in ["mqtt", "modbus"] {
        let plugin = common::load(&runtime, protocol, Limits::default());
        assert!(!plugin.reads_datagrams(), "{protocol}");
        let err = plugin
            .parse_datagram(&session, Direction::ToUpstream, &[], b"\x40\x01\x00\x00")
            .unwrap_err();
        assert!(
            matches!(&err, palisade::plugins::CallError::StreamsOnly { plugin } if plugin == protocol),
            "{err}"
        );
        assert_eq!(plugin.strikes(), 0, "{protocol}");
    }
    let coap = common::load(&runtime, "coap", Limits::default());
    assert!(coap.reads_datagrams());
    // Version 2 is not RFC 7252.
    let bad = b"\x80\x01\x00\x00";
    let parsed = coap
        .parse_datagram(&session, Direction::ToUpstream, b"kept", bad)
        .unwrap();
    assert!(parsed.frame_lengths.is_empty() && parsed.events.is_empty());
    assert_eq!(parsed.state, b"kept");
    let malformed = parsed.malformed.unwrap();
    assert_eq!(malformed.offset, 0);
    assert_eq!(
        Some(malformed.reason),
        coap::parse_datagram(bad).malformed.map(|m| m.reason)
    );
    assert_eq!(coap.strikes(), 0);
}
