//! The policy judges every frame of live traffic before it is forwarded,
//! with real MQTT clients (mosquitto_pub and mosquitto_sub over mTLS) and a
//! real broker: a denied publish never reaches the broker and is recorded
//! and exported; a `forbid` with `@response("quarantine-device")`
//! quarantines the device: its other sessions close, it is refused until an
//! operator releases it, and that survives a restart.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::{Arc, Mutex};

use common::appliance::{
    Appliance, Child, Mosquitto, held_port, mosquitto_pub, mosquitto_sub, require, route, tls_args,
    wait_until,
};
use common::rsyslog;

/// Sensors publish telemetry under `site/<area>/telemetry` and nothing
/// else; publishing firmware is grounds for quarantine.
const POLICY: &str = r#"
@id("sensors connect over MQTT")
permit(principal in Class::"sensor", action == Action::"connect", resource)
when { resource.protocol == "mqtt" };

@id("the broker may answer")
permit(principal in Class::"sensor", action in Action::"mqtt", resource)
when { context.direction == "to-device" };

@id("sensors open and close sessions")
permit(
    principal in Class::"sensor",
    action in [Action::"mqtt.connect", Action::"mqtt.disconnect", Action::"mqtt.pingreq",
               Action::"mqtt.subscribe"],
    resource
);

@id("sensors publish telemetry")
permit(principal in Class::"sensor", action == Action::"mqtt.publish", resource)
when { context.topic like "site/*/telemetry" && context["topic-levels"] == 3 };

@id("nobody pushes firmware")
@severity("critical")
@response("quarantine-device")
forbid(principal, action == Action::"mqtt.publish", resource)
when { context.topic like "*/firmware" };
"#;

/// Lines a child prints, collected as they come.
fn lines(child: &mut Child) -> Arc<Mutex<Vec<String>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let stdout = child.0.stdout.take().unwrap();
    let sink = seen.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            sink.lock().unwrap().push(line);
        }
    });
    seen
}

fn publish(palisade: &Appliance, device: &Path, topic: &str, message: &str) -> bool {
    let mut args = tls_args(palisade.port("mqtt-tls"), device);
    args.extend(["-t", topic, "-m", message].map(String::from));
    mosquitto_pub(&args).0
}

/// A subscriber on the broker itself to `site/#`, which sees whatever
/// Palisade forwards, and the sensor `device` (class sensor, zone hall-a),
/// once the subscriber has seen its telemetry `first` arrive: the lines
/// seen, and the sensor's credentials. The subscriber lives as long as
/// the returned child.
fn watched_sensor(
    broker: &Mosquitto,
    palisade: &Appliance,
    device: &str,
    first: &str,
) -> (Child, Arc<Mutex<Vec<String>>>, std::path::PathBuf) {
    let mut watcher = mosquitto_sub(
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &broker.port.to_string(),
            "-t",
            "site/#",
        ]
        .map(String::from),
    );
    let seen = lines(&mut watcher);
    let sensor = palisade.issue(device, "sensor", "hall-a");
    let expected = format!("site/a/telemetry {first}");
    wait_until("the watcher subscribed", || {
        assert!(publish(palisade, &sensor, "site/a/telemetry", first));
        seen.lock().unwrap().contains(&expected)
    });
    (watcher, seen, sensor)
}

fn setup(broker: &Mosquitto) -> (Appliance, std::path::PathBuf) {
    setup_with(broker, POLICY)
}

/// The appliance relaying to `broker` under `policy`, exporting alerts to
/// the file it returns.
fn setup_with(broker: &Mosquitto, policy: &str) -> (Appliance, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap().keep();
    let alerts = dir.join("alerts.jsonl");
    let config = format!(
        "{}[[siem]]\nkind = \"file\"\nname = \"alerts\"\npath = \"{}\"\n",
        route(
            "mqtt-tls",
            "mqtt",
            "tls",
            Some("mqtt"),
            &format!("127.0.0.1:{}", broker.port)
        ),
        alerts.display()
    );
    (Appliance::start_with_policy(&config, Some(policy)), alerts)
}

#[test]
fn a_denied_publish_never_reaches_the_broker_and_is_exported() {
    if !require("mosquitto") || !require("mosquitto_pub") || !require("mosquitto_sub") {
        return;
    }
    let broker = Mosquitto::start();
    let (palisade, alerts) = setup(&broker);
    let (_watcher, seen, sensor) = watched_sensor(&broker, &palisade, "sensor-1", "21.5");
    assert!(publish(&palisade, &sensor, "site/x/cmd", "open-valve"));
    // A later allowed publish arrives; the denied one, sent before it,
    // never does.
    assert!(publish(&palisade, &sensor, "site/a/telemetry", "after"));
    wait_until("the later publish arrived", || {
        seen.lock()
            .unwrap()
            .iter()
            .any(|l| l == "site/a/telemetry after")
    });
    let arrived = seen.lock().unwrap().clone();
    assert!(
        !arrived.iter().any(|l| l.contains("site/x/cmd")),
        "the denied publish reached the broker: {arrived:?}"
    );
    // The alert is in the exported file, with who, what and why, and so
    // is the frame's drop.
    let dropped = |r: &serde_json::Value| {
        r["what"]["type"] == "action" && r["what"]["action"] == "drop-frame"
    };
    wait_until("the alert was exported", || {
        let records = common::json_lines(&alerts);
        let about = |r: &&serde_json::Value| r["event"]["attributes"]["topic"] == "site/x/cmd";
        records
            .iter()
            .filter(about)
            .any(|r| r["what"]["type"] == "finding")
            && records.iter().any(dropped)
    });
    let records = common::json_lines(&alerts);
    let text = format!("{records:#?}");
    let finding = records
        .iter()
        .find(|r| r["what"]["type"] == "finding")
        .unwrap_or_else(|| panic!("no finding in {text}"));
    assert_eq!(finding["device"]["id"], "sensor-1");
    assert_eq!(finding["device"]["class"], "sensor");
    assert_eq!(finding["plugin"]["name"], "policy");
    assert_eq!(finding["event"]["kind"], "mqtt.publish");
    assert_eq!(finding["event"]["attributes"]["topic"], "site/x/cmd");
    let reason = finding["what"]["reason"].as_str().unwrap();
    assert!(reason.contains("default deny"), "{reason}");
    assert!(records.iter().any(dropped), "{text}");
    // The session went on: the device is not quarantined.
    let show = palisade.cli_ok(&["device", "show", "sensor-1"]);
    assert!(show.contains("\"state\": \"active\""), "{show}");
}

#[test]
fn a_forbidden_publish_quarantines_the_device_until_released() {
    if !require("mosquitto") || !require("mosquitto_pub") || !require("mosquitto_sub") {
        return;
    }
    let broker = Mosquitto::start();
    let (mut palisade, _) = setup(&broker);
    let rogue = palisade.issue("sensor-9", "sensor", "hall-b");
    // The device holds another session open: a subscription.
    let mut args = tls_args(palisade.port("mqtt-tls"), &rogue);
    args.extend(["-t", "site/b/telemetry"].map(String::from));
    let mut open = mosquitto_sub(&args);
    palisade.wait_log(|l| l.contains("session open") && l.contains("device=sensor-9"));
    // How mosquitto_pub ends is no matter: the quarantine may close the
    // session before it says DISCONNECT. What the appliance did is.
    publish(&palisade, &rogue, "site/b/firmware", "evil");
    palisade.wait_log(|l| l.contains("device quarantined") && l.contains("device=sensor-9"));
    // Its other session closed: mosquitto_sub saw the connection go.
    let status = open.wait();
    assert!(!status.success(), "mosquitto_sub ended well: {status}");
    // It cannot come back.
    assert!(!publish(&palisade, &rogue, "site/b/telemetry", "again"));
    palisade.wait_refused(&["device=sensor-9", "reason=quarantined"]);
    // Not even after a restart.
    palisade.terminate();
    let config = palisade.dir.path().join("palisade.toml");
    palisade.restart(&config);
    assert!(!publish(&palisade, &rogue, "site/b/telemetry", "again"));
    palisade.wait_refused(&["device=sensor-9", "reason=quarantined"]);
    // Until an operator releases it.
    palisade.cli_ok(&["device", "release", "sensor-9"]);
    assert!(publish(
        &palisade,
        &rogue,
        "site/b/telemetry",
        "welcome back"
    ));
}

#[test]
fn alerts_raised_while_the_siem_is_down_for_a_minute_all_arrive_once() {
    if !require("mosquitto") || !require("mosquitto_pub") || !require("rsyslogd") {
        return;
    }
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    // Down: nothing listens where the SIEM should be, and no other test
    // takes the port meanwhile.
    let down_port = held_port();
    let siem_port = down_port.port;
    let config = format!(
        "{}[[siem]]\nkind = \"syslog\"\nname = \"soc\"\naddress = \"127.0.0.1:{siem_port}\"\n",
        route(
            "mqtt-tls",
            "mqtt",
            "tls",
            Some("mqtt"),
            &format!("127.0.0.1:{}", broker.port)
        ),
    );
    let palisade = Appliance::start_with_policy(&config, Some(POLICY));
    let sensor = palisade.issue("sensor-3", "sensor", "hall-c");
    // For a minute nothing listens where the SIEM should be; a denied
    // publish every five seconds raises a finding and an action each.
    let down = std::time::Instant::now();
    let mut sent = 0;
    while down.elapsed() < std::time::Duration::from_secs(60) {
        assert!(publish(
            &palisade,
            &sensor,
            &format!("site/x/cmd-{sent}"),
            "x"
        ));
        sent += 1;
        std::thread::sleep(std::time::Duration::from_secs(5));
    }
    // The SIEM comes back.
    let out = dir.path().join("soc.log");
    drop(down_port);
    let _siem = rsyslog(Path::new("rsyslogd"), dir.path(), siem_port, &out, "", "");
    let lines = || common::text_lines(&out);
    // The exporter retries with a backoff of at most 30 s.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    while lines().iter().filter(|l| l.contains("cmd-")).count() < 2 * sent
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    std::thread::sleep(std::time::Duration::from_secs(1));
    let received = lines();
    for i in 0..sent {
        // The event's attributes are JSON in the CEF body.
        let topic = format!("site/x/cmd-{i}\"");
        let about: Vec<_> = received.iter().filter(|l| l.contains(&topic)).collect();
        // Its finding and its drop-frame action, each once.
        assert_eq!(about.len(), 2, "alert {i}: {about:?}\nall: {received:?}");
    }
}

#[test]
fn the_policy_reloads_live_and_a_broken_one_is_refused() {
    if !require("mosquitto") || !require("mosquitto_pub") || !require("mosquitto_sub") {
        return;
    }
    let broker = Mosquitto::start();
    let (palisade, _) = setup(&broker);
    let (_watcher, seen, sensor) = watched_sensor(&broker, &palisade, "sensor-5", "1");
    let arrived = |line: &str| seen.lock().unwrap().iter().any(|l| l == line);
    let file = palisade.data.join("policy.cedar");
    // Each policy replaces the file whole, as a rename does: written in
    // place, the file is empty for a moment, a policy that checks.
    let replace = |text: &str| palisade::store::write_atomic(&file, text.as_bytes(), 0o644);
    // A broken policy is refused, with its line, and the one in force stays.
    replace("permit(principal, action, resource) when {").unwrap();
    palisade.wait_log(|l| {
        l.contains("policy refused; the active policy stays") && l.contains("line 1")
    });
    assert!(publish(&palisade, &sensor, "site/a/telemetry", "2"));
    wait_until("telemetry still passes", || arrived("site/a/telemetry 2"));
    // A policy that also allows command topics takes over at once.
    replace(
        &format!(
            "{POLICY}\npermit(principal in Class::\"sensor\", action == Action::\"mqtt.publish\", resource)\nwhen {{ context.topic like \"site/*/cmd\" }};\n"
        ),
    )
    .unwrap();
    palisade.wait_log(|l| l.contains("policy reloaded") && l.contains("policy.cedar"));
    assert!(publish(&palisade, &sensor, "site/x/cmd", "now-allowed"));
    wait_until("the command arrived", || arrived("site/x/cmd now-allowed"));
}

/// MQTT payloads reach the policy only once an operator offers them
/// (`plugin config mqtt payload-bytes`), on the running appliance, from
/// the next frame on: a rule on payload bytes then holds.
#[test]
fn payload_rules_hold_once_the_operator_offers_payloads() {
    if !require("mosquitto") || !require("mosquitto_pub") || !require("mosquitto_sub") {
        return;
    }
    let broker = Mosquitto::start();
    // "shutdown" as the lowercase hex Cedar is given bytes as.
    let policy = format!(
        "{POLICY}\n@id(\"no shutdown commands in telemetry\")\nforbid(principal, action == Action::\"mqtt.publish\", resource)\nwhen {{ context has payload && context.payload like \"73687574646f776e*\" }};\n"
    );
    let (palisade, alerts) = setup_with(&broker, &policy);
    let (_watcher, seen, sensor) = watched_sensor(&broker, &palisade, "sensor-6", "1");
    let arrived = |line: &str| seen.lock().unwrap().iter().any(|l| l == line);
    // Payloads are not offered yet: the rule cannot see it.
    assert!(publish(
        &palisade,
        &sensor,
        "site/a/telemetry",
        "shutdown-1"
    ));
    wait_until("the unread payload arrived", || {
        arrived("site/a/telemetry shutdown-1")
    });
    let shown = palisade.cli_ok(&["plugin", "config", "mqtt", "payload-bytes", "16"]);
    assert!(shown.is_empty(), "{shown}");
    assert_eq!(
        palisade.cli_ok(&["plugin", "config", "mqtt", "payload-bytes"]),
        "16\n"
    );
    assert!(publish(
        &palisade,
        &sensor,
        "site/a/telemetry",
        "shutdown-2"
    ));
    assert!(publish(&palisade, &sensor, "site/a/telemetry", "21.5"));
    wait_until("the later publish arrived", || {
        arrived("site/a/telemetry 21.5")
    });
    assert!(
        !arrived("site/a/telemetry shutdown-2"),
        "a payload the policy forbids reached the broker"
    );
    wait_until("the alert was exported", || {
        std::fs::read_to_string(&alerts)
            .is_ok_and(|a| a.contains("no shutdown commands in telemetry"))
    });
}

/// A forbidden filter asked for as a shared subscription,
/// `$share/{group}/{filter}`, is the filter the broker would serve, and is
/// judged as such: the rule on `site/secret/#` quarantines the device that
/// asks for `$share/x/site/secret/#`.
#[test]
fn a_shared_subscription_to_a_forbidden_filter_is_forbidden() {
    if !require("mosquitto") || !require("mosquitto_sub") {
        return;
    }
    let broker = Mosquitto::start();
    let policy = format!(
        "{POLICY}\n@id(\"no secrets\")\n@response(\"quarantine-device\")\nforbid(principal, action == Action::\"mqtt.subscribe\", resource)\nwhen {{ context.filter.contains(\"site/secret/#\") }};\n"
    );
    let (palisade, alerts) = setup_with(&broker, &policy);
    let snoop = palisade.issue("sensor-4", "sensor", "hall-a");
    let mut args = tls_args(palisade.port("mqtt-tls"), &snoop);
    args.extend(["-t", "$share/x/site/secret/#"].map(String::from));
    let mut subscriber = mosquitto_sub(&args);
    palisade.wait_log(|l| l.contains("device quarantined") && l.contains("device=sensor-4"));
    let status = subscriber.wait();
    assert!(!status.success(), "mosquitto_sub ended well: {status}");
    wait_until("the alert was exported", || {
        std::fs::read_to_string(&alerts).is_ok_and(|a| a.contains("no secrets"))
    });
    let text = std::fs::read_to_string(&alerts).unwrap();
    let finding = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|r| r["what"]["type"] == "finding")
        .unwrap_or_else(|| panic!("no finding in {text}"));
    // The filter the broker would have served, the group apart, and the
    // filter as mosquitto_sub sent it.
    let attributes = &finding["event"]["attributes"];
    assert_eq!(
        attributes["subscription"],
        serde_json::json!(["$share/x/site/secret/#"]),
        "{text}"
    );
    assert_eq!(
        attributes["filter"],
        serde_json::json!(["site/secret/#"]),
        "{text}"
    );
    assert_eq!(
        attributes["share-group"],
        serde_json::json!(["x"]),
        "{text}"
    );
}
