//! Parse throughput per protocol, on streams of real traffic's shape: each
//! parser natively and as a WebAssembly component through the host's
//! plugin runtime, on the same 4 KiB chunks of whole frames; for MQTT also
//! mqttbytes, the fastest existing Rust MQTT parser, for Modbus/TCP
//! rmodbus' request parser, and for CoAP over UDP coap-lite, on the same
//! bytes.
//! Medians of many calls, MB/s and frames/s, and the wasm/native ratio
//! (target: within 2x of native).
//!
//! The inputs: MQTT 3.1.1 PUBLISH frames of telemetry (100-byte JSON
//! payloads, QoS 0 and 1); the CoAP over TCP and Modbus/TCP request streams
//! recorded from libcoap's coap-client and pymodbus (`tests/recordings`),
//! repeated to fill the chunk; and the CoAP over UDP datagrams recorded
//! from coap-client, one parse call per datagram.
//!
//! Run it with `cargo bench -p palisade --bench parsers`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use palisade::plugins::{
    Device, Direction, Limits, Parsed, Runtime, RuntimeConfig, Session, first_party,
};
use palisade::store::Store;

#[path = "../tests/common/mod.rs"]
mod common;

const CHUNK: usize = 4096;
const CALLS: usize = 3000;

/// Whole frames from `frames`, repeated up to `CHUNK` bytes.
fn fill(frames: &[Vec<u8>]) -> Vec<u8> {
    let mut chunk = Vec::new();
    'fill: loop {
        for f in frames {
            if chunk.len() + f.len() > CHUNK {
                break 'fill;
            }
            chunk.extend_from_slice(f);
        }
    }
    chunk
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// Median time of `f`, alternating with `g` so both see the same machine.
fn race(mut f: impl FnMut(), mut g: impl FnMut()) -> (Duration, Duration) {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..CALLS {
        let t = Instant::now();
        f();
        a.push(t.elapsed());
        let t = Instant::now();
        g();
        b.push(t.elapsed());
    }
    (median(a), median(b))
}

/// Frames cut from a recorded stream, by the native parser.
fn frames_of(stream: &[u8], parsed: &palisade_plugin_sdk::Parsed) -> Vec<Vec<u8>> {
    let mut at = 0;
    parsed
        .frame_lengths
        .iter()
        .map(|&l| {
            let f = stream[at..at + l as usize].to_vec();
            at += l as usize;
            f
        })
        .collect()
}

fn recording(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/recordings")
            .join(name),
    )
    .unwrap()
}

/// An existing crate's throughput on the same input (`bytes` in `frames`),
/// timed at `theirs`, against Palisade's native parser, timed at `ours`.
fn report_baseline(
    what: &str,
    name: &str,
    bytes: usize,
    frames: usize,
    theirs: Duration,
    ours: Duration,
) {
    println!(
        "        {what} {:>7.1} MB/s {:>10.0} frames/s   palisade native / {name} {:.2}",
        bytes as f64 / theirs.as_secs_f64() / 1e6,
        frames as f64 / theirs.as_secs_f64(),
        theirs.as_secs_f64() / ours.as_secs_f64()
    );
}

/// A parser's throughput on `bytes` in `frames`, cut as `unit` says
/// (`frames/chunk`, say), as a component and natively.
fn report(name: &str, unit: &str, bytes: usize, frames: usize, wasm: Duration, native: Duration) {
    let mbs = |d: Duration| bytes as f64 / d.as_secs_f64() / 1e6;
    let fps = |d: Duration| frames as f64 / d.as_secs_f64();
    println!(
        "{name:<7} {frames:>3} {unit}  native {:>7.1} MB/s {:>10.0} frames/s   wasm {:>7.1} MB/s {:>10.0} frames/s   wasm/native {:.2}",
        mbs(native),
        fps(native),
        mbs(wasm),
        fps(wasm),
        native.as_secs_f64() / wasm.as_secs_f64()
    );
}

/// The component and the native code agree, on whole, well-formed frames.
fn check(wasm: &Parsed, native: &palisade_plugin_sdk::Parsed) {
    assert_eq!(wasm.frame_lengths, native.frame_lengths);
    assert_eq!(wasm.events, native.events);
    assert!(native.malformed.is_none() && native.needed.is_none());
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state")).unwrap();
    let runtime = Runtime::new(&RuntimeConfig::default(), store).unwrap();
    let load = |name: &str| {
        runtime
            .load(
                name,
                first_party::component(name).unwrap(),
                Limits::default(),
            )
            .unwrap()
    };
    let session = Session {
        id: 1,
        device: Device {
            id: "d".into(),
            class: "c".into(),
            zone: "z".into(),
        },
        route: "r".into(),
    };
    println!("parse throughput, 4 KiB chunks of whole frames, medians of {CALLS} calls:");

    // MQTT: telemetry, QoS 0 and 1, after a CONNECT (state: level 4).
    let payload = br#"{"sensor":"t-17","temp":21.5,"humidity":40.2,"ts":1764000000000,"ok":true}"#;
    let mqtt_frames = vec![
        common::mqtt_publish("site/hall-a/telemetry", &payload[..]),
        common::mqtt_publish_qos1("site/hall-b/telemetry", 7, &payload[..]),
    ];
    let chunk = fill(&mqtt_frames);
    let plugin = load("mqtt");
    let native = mqtt::parse(&[4], &chunk);
    check(
        &plugin
            .parse(&session, Direction::ToUpstream, &[4], &chunk)
            .unwrap(),
        &native,
    );
    let frames = native.frame_lengths.len();
    let (wasm_t, native_t) = race(
        || {
            drop(black_box(
                plugin
                    .parse(&session, Direction::ToUpstream, &[4], &chunk)
                    .unwrap(),
            ))
        },
        || drop(black_box(mqtt::parse(&[4], &chunk))),
    );
    report(
        "mqtt",
        "frames/chunk",
        chunk.len(),
        frames,
        wasm_t,
        native_t,
    );
    let (bytes_t, _) = race(
        || {
            let mut buf = bytes::BytesMut::from(&chunk[..]);
            let mut n = 0;
            while !buf.is_empty() {
                black_box(mqttbytes::v4::read(&mut buf, CHUNK).unwrap());
                n += 1;
            }
            assert_eq!(n, frames);
        },
        || {},
    );
    report_baseline(
        "mqttbytes 0.6 (v4::read, natively)",
        "mqttbytes",
        chunk.len(),
        frames,
        bytes_t,
        native_t,
    );

    // CoAP over TCP: coap-client's requests (CSM, then a request).
    for (name, recorded, up) in [("coap", "coap/3.up", true), ("modbus", "modbus/1.up", true)] {
        let stream = recording(recorded);
        let sdk_direction = if up {
            palisade_plugin_sdk::Direction::ToUpstream
        } else {
            palisade_plugin_sdk::Direction::ToDevice
        };
        let parse = |bytes: &[u8]| match name {
            "coap" => coap::parse(bytes),
            _ => modbus::parse(sdk_direction, &[], bytes),
        };
        let chunk = fill(&frames_of(&stream, &parse(&stream)));
        let plugin = load(name);
        let native = parse(&chunk);
        check(
            &plugin
                .parse(&session, Direction::ToUpstream, &[], &chunk)
                .unwrap(),
            &native,
        );
        let (wasm_t, native_t) = race(
            || {
                drop(black_box(
                    plugin
                        .parse(&session, Direction::ToUpstream, &[], &chunk)
                        .unwrap(),
                ))
            },
            || drop(black_box(parse(&chunk))),
        );
        report(
            name,
            "frames/chunk",
            chunk.len(),
            native.frame_lengths.len(),
            wasm_t,
            native_t,
        );
        if name == "modbus" {
            rmodbus_baseline(&chunk, native.frame_lengths.len(), native_t);
        }
    }
    println!(
        "(no existing Rust parser reads CoAP over TCP, RFC 8323: coap-lite and the others read only the UDP message format)"
    );
    coap_over_udp(&session, &load("coap"));
}

/// CoAP over UDP: the datagrams coap-client sent (`coap-udp/up.hex`), one
/// parse call each, as datagrams arrive; against coap-lite, which reads
/// the same RFC 7252 message format, on the same datagrams.
fn coap_over_udp(session: &Session, plugin: &palisade::plugins::Plugin) {
    let datagrams = common::recorded_datagrams("up.hex");
    let bytes: usize = datagrams.iter().map(Vec::len).sum();
    for d in &datagrams {
        let native = coap::parse_datagram(d);
        check(
            &plugin
                .parse_datagram(session, Direction::ToUpstream, &[], d)
                .unwrap(),
            &native,
        );
        assert!(coap_lite::Packet::from_bytes(d).is_ok());
    }
    let (wasm_t, native_t) = race(
        || {
            for d in &datagrams {
                drop(black_box(
                    plugin
                        .parse_datagram(session, Direction::ToUpstream, &[], d)
                        .unwrap(),
                ));
            }
        },
        || {
            for d in &datagrams {
                drop(black_box(coap::parse_datagram(d)));
            }
        },
    );
    let (lite_t, _) = race(
        || {
            for d in &datagrams {
                drop(black_box(coap_lite::Packet::from_bytes(d)));
            }
        },
        || {},
    );
    let frames = datagrams.len();
    report(
        "coap/udp",
        "datagrams, one call each",
        bytes,
        frames,
        wasm_t,
        native_t,
    );
    report_baseline(
        "coap-lite 0.13 (Packet::from_bytes, natively)",
        "coap-lite",
        bytes,
        frames,
        lite_t,
        native_t,
    );
}

/// rmodbus's server-side request parser on the same requests, natively:
/// it reads one frame at a time, so the stream is cut by the MBAP length
/// first. It also writes the start of each response, which is its way.
fn rmodbus_baseline(chunk: &[u8], frames: usize, native_t: Duration) {
    let mut response = Vec::with_capacity(256);
    let (t, _) = race(
        || {
            let mut at = 0;
            let mut n = 0;
            while at + 6 <= chunk.len() {
                let len = 6 + usize::from(u16::from_be_bytes([chunk[at + 4], chunk[at + 5]]));
                let frame = &chunk[at..at + len];
                let mut parsed = rmodbus::server::ModbusFrame::new(
                    frame[6],
                    frame,
                    rmodbus::ModbusProto::TcpUdp,
                    &mut response,
                );
                parsed.parse().unwrap();
                black_box((parsed.func, parsed.reg, parsed.count));
                at += len;
                n += 1;
            }
            assert_eq!(n, frames);
        },
        || {},
    );
    report_baseline(
        "rmodbus 0.13 (ModbusFrame::parse, natively)",
        "rmodbus",
        chunk.len(),
        frames,
        t,
        native_t,
    );
}
