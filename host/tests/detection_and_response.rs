//! The first-party detectors and responder as components in a session's
//! pipeline: findings become the actions the host enforces.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use common::{mqtt_connect, mqtt_publish, session};
use palisade::plugins::{Action, Direction, Limits, Runtime, RuntimeConfig, first_party};
use palisade::session::Pipeline;
use palisade::store::Store;

fn pipeline(store: &Store) -> Pipeline {
    let runtime = Runtime::new(&RuntimeConfig::default(), store.clone()).unwrap();
    let load = |name| {
        runtime
            .load(
                name,
                first_party::component(name).unwrap(),
                Limits::default(),
            )
            .unwrap()
    };
    Pipeline::new(
        session(1, "th-7"),
        load("mqtt"),
        vec![load("hygiene")],
        vec![load("escalate")],
        1 << 16,
    )
}

#[test]
fn a_write_in_the_read_only_window_is_dropped_and_the_device_quarantined() {
    let store = Store::temporary().unwrap();
    let config = |plugin: &str, key: &str, value: &str| {
        let kv = store.plugin_kv(plugin, 1 << 20).unwrap();
        kv.set(&format!("config/{key}"), value.as_bytes()).unwrap();
    };
    // The whole day is read-only, so the test does not depend on the hour.
    config("hygiene", "read-only-hours", "0-24");
    config("escalate", "quarantine-at", "high");
    let mut pipeline = pipeline(&store);

    let stream = [
        mqtt_connect("th-7"),
        mqtt_publish("site/a/temp", b"21"),
        mqtt_publish("site/a/valve/set", b"open"),
    ]
    .concat();
    let inspected = pipeline.push(Direction::ToUpstream, &stream).unwrap();
    assert!(inspected.errors.is_empty(), "{:?}", inspected.errors);
    assert_eq!(inspected.findings.len(), 1);
    let (detector, finding) = &inspected.findings[0];
    assert_eq!((detector.as_str(), finding.event), ("hygiene", 2));
    assert!(
        finding.reason.contains("inside the read-only window 0-24"),
        "{}",
        finding.reason
    );
    let actions: Vec<&Action> = inspected.actions.iter().map(|(_, a)| a).collect();
    assert_eq!(
        actions,
        [
            &Action::Alert(finding.reason.clone()),
            &Action::DropFrame(2),
            &Action::QuarantineDevice
        ]
    );
}

#[test]
fn a_malformed_stream_is_judged_by_the_detectors() {
    let store = Store::temporary().unwrap();
    let mut pipeline = pipeline(&store);
    let mut stream = mqtt_connect("th-7");
    stream.extend([0x30, 0xff, 0xff, 0xff, 0xff, 0x01]);
    let inspected = pipeline.push(Direction::ToUpstream, &stream).unwrap();
    assert!(inspected.malformed.is_some());
    assert_eq!(inspected.spans.len(), 1);
    let last = inspected.batch.get(1).unwrap();
    assert_eq!(last.kind(), "mqtt.malformed");
    assert_eq!(last.int("offset"), Some(stream.len() as i64 - 6));
    let (_, finding) = &inspected.findings[0];
    assert!(
        finding
            .reason
            .contains("malformed mqtt frame: remaining length longer than 4 bytes"),
        "{}",
        finding.reason
    );
    // high: dropped, and with the default thresholds not quarantined.
    assert!(
        inspected
            .actions
            .iter()
            .any(|(_, a)| *a == Action::DropFrame(1))
    );
    assert!(
        !inspected
            .actions
            .iter()
            .any(|(_, a)| *a == Action::QuarantineDevice)
    );
}
