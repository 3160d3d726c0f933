//! The baseline detector, as a component in a session's pipeline: it learns
//! a device, flags what is new with a reason, its profile is exported as
//! policy that checks, and an operator accepts a finding as normal.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::path::Path;
use std::process::Command;

use common::{mqtt_connect, mqtt_publish, mqtt_subscribe, session};
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

/// A device that learnt its subscriptions, one of them shared, is flagged
/// when it shares a filter it knows in a group it never joined (the group
/// shares that filter's messages out with whoever else joins it) or takes
/// whole one it only took a share of. The export permits the
/// subscriptions as sent, and an accepted finding teaches its own.
#[test]
fn subscriptions_are_learnt_exported_and_accepted_with_their_groups() {
    let dir = tempfile::tempdir().unwrap();
    let mut learning = mqtt_connect("sensor-1");
    learning.extend(mqtt_subscribe(&["site/a/#", "$share/readers/site/b"]));
    for _ in 0..30 {
        learning.extend(mqtt_publish("site/a/temp", b"21"));
    }
    let (reasons, _) = through_baseline(dir.path(), &learning);
    assert!(reasons.is_empty(), "{reasons:?}");

    let known = mqtt_subscribe(&["$share/readers/site/b", "site/a/#"]);
    let (reasons, _) = through_baseline(dir.path(), &known);
    assert!(reasons.is_empty(), "{reasons:?}");
    let (reasons, audit) = through_baseline(dir.path(), &mqtt_subscribe(&["$share/tap/site/a/#"]));
    assert_eq!(
        reasons,
        ["sensor-1 (thermostat) subscribed to $share/tap/site/a/#, a filter it never used"]
    );

    let policy = palisade(dir.path(), &["baseline", "export", "--device", "sensor-1"]);
    assert!(
        policy.contains(
            "when { [\"$share/readers/site/b\", \"site/a/#\"].containsAll(context.subscription) };"
        ),
        "{policy}"
    );
    Policy::parse(&policy).unwrap();
    // The export judges subscriptions as the profile does.
    let policy_file = dir.path().join("exported.cedar");
    std::fs::write(&policy_file, &policy).unwrap();
    let stream = dir.path().join("subscribes.bin");
    let subscribes = [
        mqtt_subscribe(&["$share/readers/site/b"]),
        mqtt_subscribe(&["site/a/#"]),
        mqtt_subscribe(&["$share/tap/site/a/#"]),
        mqtt_subscribe(&["site/b"]),
        mqtt_subscribe(&["$share/readers/site/b", "site/b"]),
    ];
    std::fs::write(
        &stream,
        [mqtt_connect("sensor-1"), subscribes.concat()].concat(),
    )
    .unwrap();
    let stream = stream.to_str().unwrap();
    let events = palisade(
        dir.path(),
        &["plugin", "run", "--parser", "mqtt", "--input", stream],
    );
    let events_file = dir.path().join("events.jsonl");
    std::fs::write(&events_file, events).unwrap();
    let verdicts = palisade(
        dir.path(),
        &[
            "policy",
            "test",
            policy_file.to_str().unwrap(),
            "--events",
            events_file.to_str().unwrap(),
            "--device",
            "sensor-1",
            "--class",
            "thermostat",
        ],
    );
    let decisions: Vec<String> = (verdicts.lines())
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .filter(|v| v["kind"] == "mqtt.subscribe")
        .map(|v| v["decision"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        decisions,
        ["allow", "allow", "deny", "deny", "deny"],
        "{verdicts}"
    );

    palisade(
        dir.path(),
        &["baseline", "accept", "--audit", &audit.unwrap().to_string()],
    );
    let (reasons, _) = through_baseline(dir.path(), &mqtt_subscribe(&["$share/tap/site/a/#"]));
    assert!(reasons.is_empty(), "accepted: {reasons:?}");
    let (reasons, _) = through_baseline(dir.path(), &mqtt_subscribe(&["site/b"]));
    assert_eq!(reasons.len(), 1, "still watching: {reasons:?}");
}
