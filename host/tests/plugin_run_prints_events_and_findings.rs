//! `palisade plugin run`, the plugin author's loop, run as a user runs it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::process::Command;

use common::{mqtt_connect, mqtt_publish};
use serde_json::Value;

fn run(args: &[&str]) -> (Vec<Value>, bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_palisade"))
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
        stderr.contains("reading plugin nope (not a file, nor one of mqtt, modbus, coap, new-topic, baseline, hygiene, escalate)"),
        "{stderr}"
    );
}
