//! The baseline detector, as a component in a session's pipeline: it learns
//! a device, flags what is new with a reason, its profile is exported as
//! policy that checks, and an operator accepts a finding as normal.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::path::Path;
use std::process::Command;

use common::{mqtt_connect, mqtt_publish, session};
use palisade::audit::{AuditLog, Entry, PluginRef};
use palisade::plugins::{Direction, Limits, Runtime, RuntimeConfig, first_party};
use palisade::policy::Policy;
use palisade::session::Pipeline;
use palisade::store::Store;

fn palisade(data: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .arg("--data")
        .arg(data)
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// A session of device `sensor-1` through mqtt and baseline, over the
/// state in `data`; returns the findings' reasons for `stream` and the
/// state (dropped before the command line opens it).
fn through_baseline(data: &Path, stream: &[u8]) -> (Vec<String>, Option<u64>) {
    let store = Store::open(&data.join("state")).unwrap();
    let kv = store
        .plugin_kv("baseline", Limits::default().kv_quota_bytes)
        .unwrap();
    kv.set("config/learning-hours", b"0").unwrap();
    kv.set("config/learning-events", b"20").unwrap();
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
    let mut pipeline = Pipeline::new(
        session(1, "sensor-1"),
        load("mqtt"),
        vec![load("baseline")],
        vec![],
        1 << 16,
    );
    let inspected = pipeline.push(Direction::ToUpstream, stream).unwrap();
    assert!(inspected.errors.is_empty(), "{:?}", inspected.errors);
    let log = AuditLog::open(&store).unwrap();
    let entries: Vec<Entry> = inspected
        .findings
        .iter()
        .map(|(plugin, f)| {
            let plugin = PluginRef {
                name: plugin.clone(),
                version: None,
            };
            Entry::finding(
                &session(1, "sensor-1"),
                plugin,
                inspected.batch.get(f.event as usize),
                f,
            )
        })
        .collect();
    let records = log.append(entries).unwrap();
    store.flush().unwrap();
    (
        inspected
            .findings
            .iter()
            .map(|(_, f)| f.reason.clone())
            .collect(),
        records.first().map(|r| r.id),
    )
}

#[test]
fn learn_flag_export_accept() {
    let dir = tempfile::tempdir().unwrap();
    let mut learning = mqtt_connect("sensor-1");
    for _ in 0..30 {
        learning.extend(mqtt_publish("site/a/temp", b"21"));
    }
    let (reasons, _) = through_baseline(dir.path(), &learning);
    assert!(reasons.is_empty(), "{reasons:?}");

    let (reasons, audit) = through_baseline(dir.path(), &mqtt_publish("site/a/cmd", b"open"));
    assert_eq!(
        reasons,
        ["sensor-1 (thermostat) published to site/a/cmd, a topic it never used"]
    );

    let policy = palisade(dir.path(), &["baseline", "export", "--device", "sensor-1"]);
    assert!(
        policy.contains("when { context.topic == \"site/a/temp\" };"),
        "{policy}"
    );
    Policy::parse(&policy).unwrap();
    let class_policy = palisade(dir.path(), &["baseline", "export", "--class", "thermostat"]);
    assert!(
        class_policy.contains("permit(principal in Class::\"thermostat\""),
        "{class_policy}"
    );

    let accepted = palisade(
        dir.path(),
        &["baseline", "accept", "--audit", &audit.unwrap().to_string()],
    );
    assert!(
        accepted.contains("accepted as normal for sensor-1"),
        "{accepted}"
    );
    let (reasons, _) = through_baseline(dir.path(), &mqtt_publish("site/a/cmd", b"close"));
    assert!(reasons.is_empty(), "accepted: {reasons:?}");
    let (reasons, _) = through_baseline(dir.path(), &mqtt_publish("site/b/x", b"1"));
    assert_eq!(reasons.len(), 1, "still watching: {reasons:?}");
}
