//! `palisade plugin run`, the plugin author's loop, run as a user runs it:
//! on a recorded stream, and on recorded datagrams (`--datagrams`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::process::Command;

use common::{mqtt_connect, mqtt_publish};
use serde_json::Value;

fn run(args: &[&str]) -> (Vec<Value>, bool, String) {
    run_in(&std::env::current_dir().unwrap(), args)
}

/// [`run`] from directory `cwd`.
fn run_in(cwd: &std::path::Path, args: &[&str]) -> (Vec<Value>, bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .current_dir(cwd)
        .args(args)
        .output()
        .unwrap();
    let lines = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (
        lines,
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn recorded_stream_through_parser_and_detector() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("stream.bin");
    let mut stream = mqtt_connect("sensor-1");
    for _ in 0..120 {
        stream.extend(mqtt_publish("site/a/telemetry", b"21.5"));
    }
    stream.extend(mqtt_publish("site/a/cmd", b"open"));
    std::fs::write(&input, &stream).unwrap();
    let data = dir.path().join("data");
    let args = [
        "--data",
        data.to_str().unwrap(),
        "plugin",
        "run",
        "--parser",
        "mqtt",
        "--detector",
        "new-topic",
    ];
    let (lines, ok, stderr) = run(&[
        &args[..],
        &["--input", input.to_str().unwrap(), "--chunk", "100"],
    ]
    .concat());
    assert!(ok, "{stderr}");

    let events: Vec<_> = lines.iter().filter(|l| l["type"] == "event").collect();
    assert_eq!(events.len(), 122);
    assert_eq!(events[0]["event"]["kind"], "mqtt.connect");
    assert_eq!(events[0]["event"]["attributes"]["client-id"], "sensor-1");
    assert_eq!(events[121]["event"]["attributes"]["topic"], "site/a/cmd");
    let findings: Vec<_> = lines.iter().filter(|l| l["type"] == "finding").collect();
    assert_eq!(findings.len(), 1);
    assert_eq!(findings[0]["detector"], "new-topic");
    assert_eq!(findings[0]["offset"], events[121]["offset"]);
}

#[test]
fn malformed_stream_is_reported_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("bad.bin");
    std::fs::write(
        &input,
        [mqtt_connect("c"), vec![0x30, 0xff, 0xff, 0xff, 0xff, 0x01]].concat(),
    )
    .unwrap();
    let data = dir.path().join("data");
    let (lines, ok, _) = run(&[
        "--data",
        data.to_str().unwrap(),
        "plugin",
        "run",
        "--parser",
        "mqtt",
        "--input",
        input.to_str().unwrap(),
    ]);
    assert!(!ok);
    let malformed = lines
        .iter()
        .find(|l| l["type"] == "malformed")
        .expect("a malformed line");
    assert_eq!(malformed["reason"], "remaining length longer than 4 bytes");
    assert_eq!(malformed["offset"], mqtt_connect("c").len());
}

#[test]
fn unknown_plugin_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let (_, ok, stderr) = run(&[
        "--data",
        dir.path().to_str().unwrap(),
        "plugin",
        "run",
        "--parser",
        "nope",
        "--input",
        "/dev/null",
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("nope is not a first-party plugin (mqtt, modbus, coap, new-topic, baseline, hygiene, escalate); a component's path has a / or ends in .wasm"),
        "{stderr}"
    );
}

/// `plugin run --datagrams` of `parser` on the datagrams in `hex`.
fn run_datagrams(parser: &str, hex: &str) -> (Vec<Value>, bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("datagrams.hex");
    std::fs::write(&input, hex).unwrap();
    let data = dir.path().join("data");
    let args = [
        "--data",
        data.to_str().unwrap(),
        "plugin",
        "run",
        "--parser",
        parser,
        "--datagrams",
        "--input",
        input.to_str().unwrap(),
    ];
    run(&args)
}

#[test]
fn recorded_datagrams_are_parsed_one_by_one() {
    // As tshark prints udp.payload: a CON GET /time with Observe 0 (from
    // libcoap's coap-client), the same with `:` between bytes after a blank
    // line, a datagram that is no CoAP message, and a CoAP ping.
    let hex = "4101e2cc016012aa1a4474696d65\n\n\
               41:01:e2:cd:01:60:12:aa:1a:44:74:69:6d:65\n\
               8001\n\
               4000abcd\n";
    let (lines, ok, stderr) = run_datagrams("coap", hex);
    assert!(!ok, "a malformed datagram fails the run: {stderr}");
    let events: Vec<_> = lines.iter().filter(|l| l["type"] == "event").collect();
    assert_eq!(events.len(), 3, "{lines:?}");
    let get = &events[0]["event"];
    assert_eq!(get["kind"], "coap.request");
    assert_eq!(get["attributes"]["path"], "/time");
    assert_eq!(get["attributes"]["type"], "con");
    assert_eq!(get["attributes"]["message-id"], 0xe2cc);
    assert_eq!(events[0]["line"], 1);
    assert_eq!(events[1]["line"], 3);
    assert_eq!(events[1]["event"]["attributes"]["message-id"], 0xe2cd);
    assert_eq!(
        (&events[1]["offset"], &events[1]["len"]),
        (&14.into(), &14.into())
    );
    let malformed: Vec<_> = lines.iter().filter(|l| l["type"] == "malformed").collect();
    assert_eq!(malformed.len(), 1);
    assert_eq!(malformed[0]["line"], 4);
    assert_eq!(
        malformed[0]["reason"],
        "datagram shorter than the 4-byte CoAP header"
    );
    // The datagram after the malformed one is still read.
    assert_eq!(events[2]["line"], 5);
    assert_eq!(events[2]["event"]["kind"], "coap.empty");
}

#[test]
fn a_line_that_is_not_hex_is_named() {
    let (lines, ok, stderr) = run_datagrams("coap", "4000abcd\n40zzabcd\n");
    assert!(!ok);
    assert!(lines.is_empty(), "nothing runs: {lines:?}");
    assert!(
        stderr.contains("line 2: `zz` is not a byte in hex"),
        "{stderr}"
    );
}

#[test]
fn a_parser_of_streams_only_is_refused_datagrams() {
    let (lines, ok, stderr) = run_datagrams("mqtt", "4000abcd\n");
    assert!(!ok);
    assert!(lines.is_empty(), "{lines:?}");
    assert!(
        stderr.contains("plugin mqtt reads byte streams only"),
        "{stderr}"
    );
}

/// A first-party plugin's name is never looked for in the current
/// directory: a file there named `mqtt` became the parser.
#[test]
fn a_plugin_name_is_not_a_file_in_the_current_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mqtt"), b"not a component").unwrap();
    let mut stream = mqtt_connect("sensor-1");
    stream.extend(mqtt_publish("site/a/telemetry", b"21.5"));
    std::fs::write(dir.path().join("stream.bin"), &stream).unwrap();
    let args = [
        "--data",
        "data",
        "plugin",
        "run",
        "--parser",
        "mqtt",
        "--input",
        "stream.bin",
    ];
    let (lines, ok, stderr) = run_in(dir.path(), &args);
    assert!(ok, "{stderr}");
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[1]["event"]["kind"], "mqtt.publish");
    // The file is reached by its path.
    let args = [
        "--data",
        "data",
        "plugin",
        "run",
        "--parser",
        "./mqtt",
        "--input",
        "stream.bin",
    ];
    let (_, ok, stderr) = run_in(dir.path(), &args);
    assert!(!ok);
    assert!(stderr.contains("mqtt"), "{stderr}");
}
