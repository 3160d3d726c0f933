//! `palisade policy`, run as a site engineer runs it: check a policy in a
//! pipeline, try it on recorded events, see the active one.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{mqtt_connect, mqtt_publish};

fn palisade(data: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_palisade"))
        .arg("--data")
        .arg(data)
        .args(args)
        .output()
        .unwrap()
}

const SITE: &str = r#"@id("thermostats publish telemetry")
permit(principal in Class::"thermostat", action == Action::"mqtt.publish", resource)
when { context.topic like "site/*/telemetry" && context["topic-levels"] == 3 };

@id("thermostats connect over MQTT")
permit(principal in Class::"thermostat", action == Action::"mqtt.connect", resource);
"#;

#[test]
fn check_passes_a_good_policy_and_names_the_line_of_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("site.cedar");
    std::fs::write(&good, SITE).unwrap();
    let out = palisade(dir.path(), &["policy", "check", good.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");

    let bad = dir.path().join("bad.cedar");
    let typo = SITE.replace("context.topic like", "context.topik like");
    std::fs::write(&bad, typo).unwrap();
    let out = palisade(dir.path(), &["policy", "check", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{}:3:8:", bad.display())) && stderr.contains("topik"),
        "{stderr}"
    );
}

#[test]
fn test_decides_recorded_events_with_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("site.cedar");
    std::fs::write(&policy, SITE).unwrap();
    let stream = [
        mqtt_connect("th-1"),
        mqtt_publish("site/floor-2/telemetry", b"21.5"),
        mqtt_publish("site/floor-2/hvac/telemetry", b"1"),
        mqtt_publish("site/floor-2/cmd", b"open"),
    ]
    .concat();
    let input = dir.path().join("stream.bin");
    std::fs::write(&input, stream).unwrap();
    let events = palisade(
        dir.path(),
        &[
            "plugin",
            "run",
            "--parser",
            "mqtt",
            "--input",
            input.to_str().unwrap(),
        ],
    );
    assert!(events.status.success(), "{events:?}");
    let events_file = dir.path().join("events.jsonl");
    std::fs::write(&events_file, &events.stdout).unwrap();

    let decide = |class: &str| {
        let out = palisade(
            dir.path(),
            &[
                "policy",
                "test",
                policy.to_str().unwrap(),
                "--events",
                events_file.to_str().unwrap(),
                "--class",
                class,
            ],
        );
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .collect::<Vec<_>>()
    };
    let thermostat = decide("thermostat");
    let verdicts: Vec<&str> = thermostat
        .iter()
        .map(|v| v["decision"].as_str().unwrap())
        .collect();
    assert_eq!(verdicts, ["allow", "allow", "deny", "deny"]);
    assert_eq!(
        thermostat[1]["reason"],
        "permitted by \"thermostats publish telemetry\""
    );
    assert_eq!(
        thermostat[3]["reason"],
        "no policy permits it (default deny)"
    );
    assert!(decide("plc").iter().all(|v| v["decision"] == "deny"));
}

#[test]
fn show_prints_the_embedded_default_until_the_site_has_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let out = palisade(dir.path(), &["policy", "show"]);
    let shown = String::from_utf8(out.stdout).unwrap();
    assert!(shown.contains("embedded default is active"), "{shown}");
    assert!(shown.contains("permit(principal, action == Action::\"connect\", resource);"));
    std::fs::write(dir.path().join("policy.cedar"), SITE).unwrap();
    let out = palisade(dir.path(), &["policy", "show"]);
    let shown = String::from_utf8(out.stdout).unwrap();
    assert!(
        shown.contains("The site's policy") && shown.contains(SITE),
        "{shown}"
    );
    let schema = palisade(dir.path(), &["policy", "schema"]);
    let schema = String::from_utf8(schema.stdout).unwrap();
    assert!(
        schema.contains("action \"mqtt.publish\" in [\"mqtt\"]"),
        "{schema}"
    );
}
