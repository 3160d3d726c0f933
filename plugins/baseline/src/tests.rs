#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use super::*;
use palisade_plugin_sdk::testing::Host;
use palisade_plugin_sdk::{Severity, Value};

const MINUTE: u64 = 60_000;
/// 2026-01-05 00:00 UTC.
const DAY0: u64 = 1_767_571_200_000;

/// One event of a simulated device.
#[derive(Clone, Debug)]
enum Ev {
    Publish(String, i64),
    Read(&'static str, i64, i64),
    Write(&'static str, i64, i64),
    Function(i64),
    Get(&'static str, &'static str),
}

fn write_event(batch: &mut Batch, ev: &Ev) {
    match ev {
        Ev::Publish(topic, size) => {
            batch
                .push("mqtt.publish")
                .text("topic", topic)
                .int("qos", 0)
                .flag("retain", false)
                .flag("dup", false)
                .int("payload-size", *size);
        }
        Ev::Read(register_type, address, count) | Ev::Write(register_type, address, count) => {
            let (kind, access, function) = match (ev, *register_type) {
                (Ev::Write(..), _) => ("modbus.write", "write", 16),
                (_, "input-registers") => ("modbus.read", "read", 4),
                _ => ("modbus.read", "read", 3),
            };
            batch
                .push(kind)
                .int("transaction", 1)
                .int("unit", 1)
                .int("function", function)
                .text("access", access)
                .text("register-type", register_type)
                .int("address", *address)
                .int("count", *count);
        }
        Ev::Function(function) => {
            batch
                .push("modbus.diagnostics")
                .int("transaction", 1)
                .int("unit", 1)
                .int("function", *function);
        }
        Ev::Get(method, path) => {
            batch
                .push("coap.request")
                .text("method", method)
                .text("path", path)
                .bytes("token", &[1, 2])
                .int("payload-size", 0);
        }
    }
}

struct Device {
    session: Session,
    /// What it normally does in minute `m` (minutes since DAY0).
    normal: fn(usize, u64) -> Vec<Ev>,
    index: usize,
}

fn thermostat(i: usize, _m: u64) -> Vec<Ev> {
    vec![Ev::Publish(
        format!("site/floor-{}/th-{i}/temp", i % 2),
        4 + (i as i64 % 3),
    )]
}

fn plc(_i: usize, m: u64) -> Vec<Ev> {
    // Polls holding registers 0-99 in chunks and input registers 0-9.
    let chunk = (m % 10) as i64 * 10;
    vec![
        Ev::Read("holding-registers", chunk, 10),
        Ev::Read("input-registers", 0, 10),
    ]
}

fn meter(_i: usize, m: u64) -> Vec<Ev> {
    // A meter read between 06h and 22h only.
    let hour = (m / 60) % 24;
    if (6..22).contains(&hour) && m.is_multiple_of(5) {
        vec![Ev::Get("GET", "/energy/total")]
    } else {
        Vec::new()
    }
}

fn fleet() -> Vec<Device> {
    let mut devices = Vec::new();
    for i in 0..4 {
        devices.push(Device {
            session: Session::new(i as u64, &format!("th-{i}"), "thermostat", "floor", "mqtt"),
            normal: thermostat,
            index: i,
        });
    }
    for i in 0..2 {
        devices.push(Device {
            session: Session::new(
                10 + i as u64,
                &format!("plc-{i}"),
                "plc",
                "cell-3",
                "modbus",
            ),
            normal: plc,
            index: i,
        });
    }
    devices.push(Device {
        session: Session::new(20, "meter-0", "meter", "plant", "coap"),
        normal: meter,
        index: 0,
    });
    devices
}

/// Run `device`'s events for minute `m`, plus `extra`; return the findings.
fn minute(device: &Device, m: u64, extra: &[Ev], route: Option<&str>) -> Vec<Finding> {
    Host::set_wall_clock(DAY0 + m * MINUTE + 1_000);
    let mut batch = Batch::new();
    for ev in (device.normal)(device.index, m).iter().chain(extra) {
        write_event(&mut batch, ev);
    }
    if batch.is_empty() {
        return Vec::new();
    }
    let mut session = device.session.clone();
    if let Some(route) = route {
        session.route = route.into();
    }
    Baseline::detect(&session, &batch)
}

/// The findings of a normal run of `devices` from minute `from` to `to`.
fn normal_run(devices: &[Device], from: u64, to: u64) -> Vec<(String, Finding)> {
    let mut found = Vec::new();
    for m in from..to {
        for d in devices {
            for f in minute(d, m, &[], None) {
                found.push((d.session.device.id.clone(), f));
            }
        }
    }
    found
}

#[test]
fn detection_rate_and_false_positives_on_a_simulated_site() {
    Host::reset();
    // The defaults: a day, and at least 100 events.
    let devices = fleet();
    let learnt = normal_run(&devices, 0, 25 * 60);
    assert!(
        learnt.is_empty(),
        "nothing is flagged while learning: {learnt:?}"
    );

    // Two more days of normal traffic.
    let day = 25 * 60;
    let false_positives = normal_run(&devices, day, day + 48 * 60);

    // Injected anomalies, each in a minute of its own, at 12h on day 4.
    let at = 3 * 24 * 60 + 12 * 60;
    let th = &devices[0];
    let controller = &devices[4];
    let meter = &devices[6];
    /// What, by whom, in which minute, the injected events, on which route.
    type Anomaly<'a> = (&'a str, &'a Device, u64, Vec<Ev>, Option<&'a str>);
    let anomalies: Vec<Anomaly> = vec![
        (
            "new topic",
            th,
            at,
            vec![Ev::Publish("site/floor-0/th-0/cmd".into(), 4)],
            None,
        ),
        (
            "new route",
            th,
            at + 1,
            vec![Ev::Read("holding-registers", 0, 1)],
            Some("modbus"),
        ),
        (
            "write to a read register",
            controller,
            at + 2,
            vec![Ev::Write("holding-registers", 0, 10)],
            None,
        ),
        (
            "read outside",
            controller,
            at + 3,
            vec![Ev::Read("input-registers", 500, 10)],
            None,
        ),
        (
            "new function",
            controller,
            at + 4,
            vec![Ev::Function(8)],
            None,
        ),
        (
            "burst",
            th,
            at + 5,
            vec![Ev::Publish("site/floor-0/th-0/temp".into(), 4); 300],
            None,
        ),
        (
            "new resource",
            meter,
            at + 10,
            vec![Ev::Get("POST", "/firmware")],
            None,
        ),
        (
            "huge payload",
            th,
            at + 6,
            vec![Ev::Publish("site/floor-0/th-0/temp".into(), 100_000)],
            None,
        ),
    ];
    let mut detected = Vec::new();
    let mut missed = Vec::new();
    for (name, device, m, extra, route) in &anomalies {
        let normal_events = (device.normal)(device.index, *m).len() as u32;
        let findings = minute(device, *m, extra, *route);
        // A finding on an injected event (the normal ones come first).
        let hit = findings.iter().find(|f| f.event >= normal_events);
        match hit {
            Some(f) => detected.push((*name, f.reason.clone())),
            None => missed.push((*name, findings)),
        }
    }
    // Off hours: the meter at 03h, which it never is.
    Host::set_wall_clock(DAY0 + (at - 9 * 60) * MINUTE);
    let mut batch = Batch::new();
    write_event(&mut batch, &Ev::Get("GET", "/energy/total"));
    match Baseline::detect(&meter.session, &batch).first() {
        Some(f) => detected.push(("off hours", f.reason.clone())),
        None => missed.push(("off hours", Vec::new())),
    }
    // A new device of a known class, still learning, writes a register.
    let newcomer = Device {
        session: Session::new(30, "plc-9", "plc", "cell-3", "modbus"),
        normal: plc,
        index: 9,
    };
    let findings = minute(
        &newcomer,
        at + 20,
        &[Ev::Write("holding-registers", 7, 1)],
        None,
    );
    match findings.iter().find(|f| f.event >= 2) {
        Some(f) => detected.push(("newcomer writes", f.reason.clone())),
        None => missed.push(("newcomer writes", findings)),
    }

    let total = detected.len() + missed.len();
    let normal_events: usize = (day..day + 48 * 60)
        .map(|m| {
            devices
                .iter()
                .map(|d| (d.normal)(d.index, m).len())
                .sum::<usize>()
        })
        .sum();
    eprintln!(
        "baseline: {} of {total} injected anomalies detected; {} false positives in {normal_events} normal events over 48 h",
        detected.len(),
        false_positives.len()
    );
    for (name, reason) in &detected {
        eprintln!("  {name}: {reason}");
    }
    assert!(missed.is_empty(), "missed: {missed:?}");
    assert!(false_positives.is_empty(), "{false_positives:?}");
}

#[test]
fn a_controller_writing_what_it_only_read_is_flagged_with_a_reason() {
    Host::reset();
    kv::set(LEARNING_KEY, b"10").unwrap();
    kv::set(LEARNING_HOURS_KEY, b"0").unwrap();
    let plc = Session::new(1, "plc-1", "plc", "cell-1", "modbus");
    for _ in 0..10 {
        let mut batch = Batch::new();
        write_event(&mut batch, &Ev::Read("holding-registers", 0, 100));
        assert!(Baseline::detect(&plc, &batch).is_empty());
    }
    let mut batch = Batch::new();
    write_event(&mut batch, &Ev::Read("holding-registers", 10, 5));
    write_event(&mut batch, &Ev::Write("holding-registers", 40, 1));
    let findings = Baseline::detect(&plc, &batch);
    assert_eq!(findings.len(), 1, "{findings:?}");
    let f = &findings[0];
    assert_eq!((f.event, f.severity), (1, Severity::High));
    assert!(
        f.reason
            .contains("plc-1 (plc) wrote holding-registers 40 on unit 1, which it only ever read"),
        "{}",
        f.reason
    );
}

#[test]
fn profiles_persist_and_export_as_policy() {
    Host::reset();
    kv::set(LEARNING_KEY, b"3").unwrap();
    kv::set(LEARNING_HOURS_KEY, b"0").unwrap();
    let th = Session::new(1, "th-1", "thermostat", "floor", "mqtt");
    let mut batch = Batch::new();
    write_event(&mut batch, &Ev::Publish("site/a/temp".into(), 4));
    write_event(&mut batch, &Ev::Publish("site/a/humidity".into(), 4));
    write_event(&mut batch, &Ev::Publish("site/a/temp".into(), 4));
    assert!(Baseline::detect(&th, &batch).is_empty());

    let stored = Host::kv();
    let profile: Profile = Profile::decode(&stored[&device_key("th-1")]).unwrap();
    assert_eq!(profile.events, 3);
    assert!(profile.topics.contains("site/a/humidity"));
    let policy = profile.to_policy("principal == Device::\"th-1\"", "th-1");
    assert!(policy.contains("permit(principal == Device::\"th-1\", action == Action::\"mqtt.publish\", resource)\nwhen { context.topic == \"site/a/humidity\" };"), "{policy}");

    // Accepting a finding is learning its event.
    let mut odd = Batch::new();
    write_event(&mut odd, &Ev::Publish("site/a/cmd".into(), 4));
    assert_eq!(Baseline::detect(&th, &odd).len(), 1);
    let mut profile = profile;
    profile.learn("mqtt", &odd.get(0).unwrap(), &Names::of(&odd), DAY0);
    kv::set(&device_key("th-1"), &profile.encode()).unwrap();
    assert!(Baseline::detect(&th, &odd).is_empty(), "accepted as normal");
    let _ = Value::Int(0);
}

#[test]
fn a_damaged_profile_is_relearnt_not_a_panic() {
    Host::reset();
    kv::set(&device_key("x"), b"{not json").unwrap();
    let s = Session::new(1, "x", "c", "z", "mqtt");
    let mut batch = Batch::new();
    write_event(&mut batch, &Ev::Publish("t".into(), 1));
    assert!(Baseline::detect(&s, &batch).is_empty());
    let profile: Profile = Profile::decode(&Host::kv()[&device_key("x")]).unwrap();
    assert_eq!(profile.events, 1);
}

#[test]
fn repeated_events_learn_what_whole_ones_learn() {
    Host::reset();
    Host::set_wall_clock(DAY0);
    let s = Session::new(1, "x", "c", "z", "mqtt");
    let events = [
        Ev::Publish("site/a/temp".into(), 4),
        Ev::Publish("site/a/temp".into(), 9),
        Ev::Publish("site/a/humidity".into(), 4),
        Ev::Publish("site/a/humidity".into(), 4),
        Ev::Read("holding-registers", 0, 10),
        Ev::Read("holding-registers", 50, 10),
        Ev::Get("GET", "/a"),
        Ev::Get("GET", "/b"),
        Ev::Publish("site/a/temp".into(), 4),
    ];
    let mut batch = Batch::new();
    for ev in &events {
        write_event(&mut batch, ev);
    }
    assert!(Baseline::detect(&s, &batch).is_empty());
    let learnt = Profile::decode(&Host::kv()[&device_key("x")]).unwrap();

    let mut whole = Profile::default();
    for event in batch.iter() {
        whole.learn("mqtt", &event, &Names::of(&batch), DAY0);
    }
    assert_eq!(learnt, whole);
    assert_eq!(learnt.max_payload, 9);
    assert_eq!(learnt.registers.len(), 1);
    assert_eq!(
        learnt.registers.values().next(),
        Some(&vec![(0, 10), (50, 60)])
    );
    assert_eq!(learnt.resources.len(), 2);
}

#[test]
fn an_events_signature_is_told_as_signature_tells_it() {
    let events = [
        Ev::Publish("site/a/temp".into(), 4),
        Ev::Publish("site/a/temp".into(), 9),
        Ev::Publish("site/a/tempX".into(), 4),
        Ev::Publish("site/a/temq".into(), 4),
        Ev::Publish(String::new(), 4),
        Ev::Read("holding-registers", 0, 10),
        Ev::Function(8),
        Ev::Get("GET", "/a"),
    ];
    let mut batch = Batch::new();
    for ev in &events {
        write_event(&mut batch, ev);
    }
    // Kinds with a signature of their kind alone, and a publish without a
    // topic.
    batch.push("mqtt.pingreq");
    batch.push("mqtt.pingreq");
    batch.push("mqtt.publish").int("payload-size", 1);
    let names = Names::of(&batch);
    for before in batch.iter() {
        let Some(theirs) = profile::signature(&before, &names) else {
            continue;
        };
        for event in batch.iter() {
            assert_eq!(
                profile::has_signature(&event, &names, theirs),
                profile::signature(&event, &names) == Some(theirs),
                "{event} after {before}"
            );
        }
    }
}

#[test]
fn a_profile_is_taken_from_the_cache_only_while_the_store_holds_it() {
    Host::reset();
    Host::set_wall_clock(DAY0);
    let s = Session::new(1, "cached", "c", "z", "mqtt");
    let mut batch = Batch::new();
    write_event(&mut batch, &Ev::Publish("a/b".into(), 1));
    assert!(Baseline::detect(&s, &batch).is_empty());
    let key = device_key("cached");
    let stored = Profile::decode(&Host::kv()[&key]).unwrap();
    // Someone else (another instance, an operator accepting a finding)
    // writes the profile: the cached one is stale.
    let mut changed = stored.clone();
    changed.topics.insert("c/d".into());
    kv::set(&key, &changed.encode()).unwrap();
    assert_eq!(load(&key).0, changed);
    // Stored by this instance, it is read back as it was stored.
    assert!(Baseline::detect(&s, &batch).is_empty());
    let (cached, bytes) = load(&key);
    assert_eq!(Some(cached), Profile::decode(&bytes.unwrap()));
}

/// A device `id` of class `sensor` on route `mqtt`, whose profiles learn
/// from `events` events and no hours: tests teach it, then it enforces.
fn quick_learner(id: &str, events: u64) -> Session {
    kv::set(LEARNING_KEY, events.to_string().as_bytes()).unwrap();
    kv::set(LEARNING_HOURS_KEY, b"0").unwrap();
    Session::new(1, id, "sensor", "yard", "mqtt")
}

fn subscribe(batch: &mut Batch, filters: &[&str]) {
    let mut event = batch.push("mqtt.subscribe");
    event.int("packet-id", 1);
    for filter in filters {
        event.text("filter", filter);
    }
}

#[test]
fn a_subscription_to_a_filter_never_used_is_flagged() {
    Host::reset();
    let s = quick_learner("sub-1", 10);
    let mut learning = Batch::new();
    subscribe(&mut learning, &["site/a/cmd"]);
    for _ in 0..9 {
        write_event(&mut learning, &Ev::Publish("site/a/temp".into(), 4));
    }
    assert!(Baseline::detect(&s, &learning).is_empty());

    let mut again = Batch::new();
    subscribe(&mut again, &["site/a/cmd"]);
    assert!(Baseline::detect(&s, &again).is_empty(), "a filter it used");

    let mut everything = Batch::new();
    subscribe(&mut everything, &["site/a/cmd", "#"]);
    let findings = Baseline::detect(&s, &everything);
    assert_eq!(findings.len(), 1, "{findings:?}");
    assert!(
        findings[0]
            .reason
            .contains("sub-1 (sensor) subscribed to #, a filter it never used"),
        "{}",
        findings[0].reason
    );
}

/// A SUBSCRIBE as the MQTT parser gives it: each filter as the broker
/// serves it, the group of a shared one, and each as the device sent it.
fn subscribe_shared(batch: &mut Batch, subscriptions: &[(Option<&str>, &str)]) {
    let mut event = batch.push("mqtt.subscribe");
    event.int("packet-id", 1);
    for (group, filter) in subscriptions {
        if let Some(group) = group {
            event.text("share-group", group);
        }
        let sent = group.map_or(filter.to_string(), |g| format!("$share/{g}/{filter}"));
        event.text("filter", filter).text("subscription", &sent);
    }
}

#[test]
fn a_filter_shared_in_a_new_group_or_taken_whole_is_flagged() {
    Host::reset();
    let s = quick_learner("sub-2", 10);
    let mut learning = Batch::new();
    subscribe_shared(
        &mut learning,
        &[(None, "site/a/#"), (Some("readers"), "site/b")],
    );
    for _ in 0..9 {
        write_event(&mut learning, &Ev::Publish("site/a/temp".into(), 4));
    }
    assert!(Baseline::detect(&s, &learning).is_empty());
    let mut known = Batch::new();
    subscribe_shared(
        &mut known,
        &[(Some("readers"), "site/b"), (None, "site/a/#")],
    );
    assert!(Baseline::detect(&s, &known).is_empty(), "as it subscribed");

    // Each of these serves filters the device knows; what is new is how.
    for (subscriptions, new) in [
        // Shared out to a group it never joined.
        (&[(Some("tap"), "site/a/#")][..], "$share/tap/site/a/#"),
        // Taken whole, every message, where it took a share.
        (&[(None, "site/b")][..], "site/b"),
    ] {
        let mut odd = Batch::new();
        subscribe_shared(&mut odd, subscriptions);
        let findings = Baseline::detect(&s, &odd);
        assert_eq!(findings.len(), 1, "{findings:?}");
        assert_eq!(
            findings[0].reason,
            format!("sub-2 (sensor) subscribed to {new}, a filter it never used")
        );
    }
}

#[test]
fn a_new_topic_is_flagged_however_many_topics_were_learnt() {
    Host::reset();
    let s = quick_learner("busy-1", 300);
    let mut learning = Batch::new();
    for i in 0..300 {
        write_event(&mut learning, &Ev::Publish(format!("site/a/{i}"), 4));
    }
    assert!(Baseline::detect(&s, &learning).is_empty());
    let mut odd = Batch::new();
    write_event(&mut odd, &Ev::Publish("site/a/cmd".into(), 4));
    let findings = Baseline::detect(&s, &odd);
    assert_eq!(findings.len(), 1, "{findings:?}");
    assert!(
        findings[0]
            .reason
            .contains("published to site/a/cmd, a topic it never used"),
        "{}",
        findings[0].reason
    );
}

#[test]
fn an_exported_profile_permits_only_the_filters_and_functions_learnt() {
    let mut batch = Batch::new();
    subscribe(&mut batch, &["site/a/cmd", "site/b/+"]);
    write_event(&mut batch, &Ev::Function(8));
    batch
        .push("modbus.other")
        .int("transaction", 1)
        .int("unit", 1)
        .int("function", 20);
    let names = Names::of(&batch);
    let mut profile = Profile::default();
    for event in batch.iter() {
        profile.learn("r", &event, &names, DAY0);
    }
    let policy = profile.to_policy("principal == Device::\"d\"", "d");
    for kind in ["mqtt.subscribe", "modbus.diagnostics", "modbus.other"] {
        assert!(
            !policy.contains(&format!("Action::\"{kind}\", resource);")),
            "{kind} permitted whatever it carries:\n{policy}"
        );
    }
    assert!(
        policy.contains(
            "action == Action::\"mqtt.subscribe\", resource)\n\
             when { [\"site/a/cmd\", \"site/b/+\"].containsAll(context.subscription) };"
        ),
        "{policy}"
    );
    for kind in ["modbus.diagnostics", "modbus.other"] {
        assert!(
            policy.contains(&format!(
                "action == Action::\"{kind}\", resource)\nwhen {{ [8, 20].contains(context.function) }};"
            )),
            "{policy}"
        );
    }
    // Nothing learnt, nothing permitted.
    let mut nothing = Profile::default();
    nothing.kinds.insert("mqtt.subscribe".into());
    nothing.kinds.insert("modbus.other".into());
    let policy = nothing.to_policy("principal == Device::\"d\"", "d");
    assert!(!policy.contains("permit("), "{policy}");
}

/// A read/write multiple registers request (function 23), as the Modbus
/// parser reports it: it reads `read` and writes `write`, each an
/// `(address, count)`.
fn read_write(batch: &mut Batch, read: (i64, i64), write: (i64, i64)) {
    batch
        .push("modbus.read-write")
        .int("transaction", 1)
        .int("unit", 1)
        .int("function", 23)
        .text("access", "read-write")
        .text("register-type", "holding-register")
        .int("address", read.0)
        .int("count", read.1)
        .int("write-address", write.0)
        .int("write-count", write.1);
}

#[test]
fn the_write_of_a_read_write_request_is_learnt_and_judged_as_a_write() {
    Host::reset();
    kv::set(LEARNING_KEY, b"10").unwrap();
    kv::set(LEARNING_HOURS_KEY, b"0").unwrap();
    let plc = Session::new(1, "plc-23", "plc", "cell-1", "modbus");
    let mut learning = Batch::new();
    for _ in 0..10 {
        // Reads 0-9 and 50-59, writes 40-41.
        read_write(&mut learning, (0, 10), (40, 2));
        read_write(&mut learning, (50, 10), (40, 2));
    }
    assert!(Baseline::detect(&plc, &learning).is_empty());

    let mut normal = Batch::new();
    read_write(&mut normal, (0, 10), (40, 2));
    read_write(&mut normal, (50, 5), (41, 1));
    assert!(Baseline::detect(&plc, &normal).is_empty(), "as learnt");

    let mut odd = Batch::new();
    read_write(&mut odd, (0, 10), (200, 1));
    read_write(&mut odd, (0, 10), (55, 2));
    read_write(&mut odd, (300, 1), (40, 2));
    let reasons: Vec<String> = Baseline::detect(&plc, &odd)
        .into_iter()
        .map(|f| f.reason)
        .collect();
    assert_eq!(
        reasons,
        [
            "plc-23 (plc) wrote holding-register 200 on unit 1, which it never accessed",
            "plc-23 (plc) wrote holding-register 55-56 on unit 1, which it only ever read",
            "plc-23 (plc) read holding-register 300 on unit 1, outside what it reads",
        ]
    );

    // The export permits function 23 to write what was written only.
    let profile = Profile::decode(&Host::kv()[&device_key("plc-23")]).unwrap();
    let policy = profile.to_policy("principal == Device::\"plc-23\"", "plc-23");
    let read_writes: Vec<&str> = policy
        .split("\n\n")
        .filter(|p| p.contains("Action::\"modbus.read-write\""))
        .collect();
    assert_eq!(read_writes.len(), 1, "{policy}");
    assert!(
        read_writes[0].contains(
            "context has \"write-address\" && context has \"write-count\" && \
             (context[\"write-address\"] >= 40 && context[\"write-address\"] + context[\"write-count\"] <= 42)"
        ),
        "{policy}"
    );
    assert!(
        read_writes[0].contains(
            "(context.address >= 0 && context.address + context.count <= 10 || \
             context.address >= 50 && context.address + context.count <= 60)"
        ),
        "{policy}"
    );
}

fn request(batch: &mut Batch, method: &str, path: &str) {
    batch
        .push("coap.request")
        .text("method", method)
        .text("path", path)
        .bytes("token", &[1])
        .int("payload-size", 0);
}

#[test]
fn long_names_are_not_learnt_and_are_flagged_once_enforcing() {
    Host::reset();
    let s = quick_learner("long-1", 10);
    let long = |c: &str| format!("site/{}", c.repeat(40_000));
    // The policy may deny these: the detector sees them all the same.
    let mut learning = Batch::new();
    write_event(&mut learning, &Ev::Publish(long("a"), 4));
    write_event(&mut learning, &Ev::Publish(long("b"), 4));
    subscribe(&mut learning, &[&long("c")]);
    request(&mut learning, "GET", &long("d"));
    for _ in 0..6 {
        write_event(&mut learning, &Ev::Publish("site/a/temp".into(), 4));
    }
    assert!(Baseline::detect(&s, &learning).is_empty());
    let stored = Host::kv()
        .remove(&device_key("long-1"))
        .expect("the profile is stored");
    let profile = Profile::decode(&stored).unwrap();
    assert_eq!(profile.topics.iter().collect::<Vec<_>>(), ["site/a/temp"]);
    assert!(profile.filters.is_empty() && profile.resources.is_empty());

    let mut odd = Batch::new();
    write_event(&mut odd, &Ev::Publish(long("a"), 4));
    subscribe(&mut odd, &[&long("c")]);
    request(&mut odd, "GET", &long("d"));
    let findings = Baseline::detect(&s, &odd);
    let reasons: Vec<&str> = findings.iter().map(|f| f.reason.as_str()).collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    for (reason, what) in reasons.iter().zip([
        "published to a 40005-byte topic",
        "subscribed to a 40005-byte filter",
        "requested GET on a 40005-byte path",
    ]) {
        assert!(reason.contains(what), "{reason}");
        assert!(
            reason.len() < 300,
            "the name is not repeated whole: {reason}"
        );
    }
}

#[test]
fn a_profile_stays_within_its_bound_however_much_it_learns() {
    Host::reset();
    // It learns from this one batch, then enforces.
    let s = quick_learner("wide-1", 300 * 3 + 2000);
    let mut batch = Batch::new();
    for i in 0..300 {
        let name = format!("{i}/{}", "x".repeat(200));
        write_event(&mut batch, &Ev::Publish(format!("site/{name}"), 4));
        subscribe(&mut batch, &[&format!("filter/{name}")]);
        request(&mut batch, "GET", &format!("/{name}"));
    }
    for i in 0..2000 {
        write_event(&mut batch, &Ev::Read("holding-register", i * 3, 1));
    }
    assert!(Baseline::detect(&s, &batch).is_empty());
    let stored = Host::kv()
        .remove(&device_key("wide-1"))
        .expect("the profile is stored");
    assert!(
        stored.len() <= profile::MAX_PROFILE_LEN,
        "{} bytes",
        stored.len()
    );
    assert!(
        stored.len() > profile::MAX_PROFILE_LEN - 512,
        "it learns up to its bound: {} bytes",
        stored.len()
    );
    // What it could not learn, it flags.
    let mut odd = Batch::new();
    write_event(
        &mut odd,
        &Ev::Publish(format!("site/299/{}", "x".repeat(200)), 4),
    );
    let findings = Baseline::detect(&s, &odd);
    assert_eq!(findings.len(), 1, "{findings:?}");
    assert!(findings[0].reason.contains("a topic it never used"));
}

#[test]
fn a_profile_the_store_refuses_is_told_in_a_finding() {
    Host::reset();
    let s = quick_learner("full-1", 10);
    // No room for a profile.
    let used: usize = Host::kv().iter().map(|(k, v)| k.len() + v.len()).sum();
    Host::set_kv_quota(used + 16);
    let mut batch = Batch::new();
    for _ in 0..3 {
        write_event(&mut batch, &Ev::Publish("site/a/temp".into(), 4));
    }
    let findings = Baseline::detect(&s, &batch);
    let reasons: Vec<&str> = findings.iter().map(|f| f.reason.as_str()).collect();
    assert_eq!(
        reasons,
        [
            "the baseline cannot store profiles (the plugin's store is full): 2 profiles refused since this instance last said so, full-1 (sensor) and class sensor among them; what they learn is lost",
        ]
    );
    assert!(
        findings
            .iter()
            .all(|f| f.event == 2 && f.severity == Severity::Medium)
    );
    // Told once an hour, not on every batch.
    assert!(Baseline::detect(&s, &batch).is_empty());
    Host::advance_clock(3_600_000_000_000);
    assert_eq!(Baseline::detect(&s, &batch).len(), 1);
}

#[test]
fn a_full_store_is_told_once_an_hour_however_many_devices_it_refuses() {
    Host::reset();
    quick_learner("any", 10);
    // No room for another profile, and far more devices than an instance
    // remembers.
    let used: usize = Host::kv().iter().map(|(k, v)| k.len() + v.len()).sum();
    Host::set_kv_quota(used + 16);
    let devices: Vec<Session> = (0..300)
        .map(|i| Session::new(i, &format!("dev-{i}"), "sensor", "yard", "mqtt"))
        .collect();
    let mut batch = Batch::new();
    write_event(&mut batch, &Ev::Publish("site/a/temp".into(), 4));
    let round = || {
        let mut told = Vec::new();
        for s in &devices {
            let findings = Baseline::detect(s, &batch);
            told.extend(findings.into_iter().map(|f| f.reason));
        }
        Host::advance_clock(60_000_000_000);
        told
    };
    let mut told = Vec::new();
    for _ in 0..5 {
        told.extend(round());
    }
    assert_eq!(
        told.len(),
        1,
        "told once, not per batch: {:?}",
        &told[..told.len().min(3)]
    );
    assert!(
        told[0].contains("(the plugin's store is full)") && told[0].contains("dev-0 (sensor)"),
        "{}",
        told[0]
    );
    let warned = || {
        Host::logs()
            .iter()
            .filter(|(level, line)| *level == Level::Warn && line.contains("cannot store"))
            .count()
    };
    assert_eq!(warned(), 1, "logged as often as told");

    // An hour on, it is told again, with how many profiles were refused
    // since: every device's and the class's.
    Host::advance_clock(3_600_000_000_000);
    let told = round();
    assert_eq!(told.len(), 1, "{:?}", &told[..told.len().min(3)]);
    assert!(told[0].contains("301 profiles"), "{}", told[0]);
    assert_eq!(warned(), 2);
}

#[test]
fn a_subscription_to_thousands_of_new_filters_is_one_short_reason() {
    Host::reset();
    let s = quick_learner("sub-2", 10);
    let mut learning = Batch::new();
    subscribe(&mut learning, &["site/a/cmd"]);
    for _ in 0..9 {
        write_event(&mut learning, &Ev::Publish("site/a/temp".into(), 4));
    }
    assert!(Baseline::detect(&s, &learning).is_empty());

    // A 256 KiB SUBSCRIBE holds tens of thousands of short filters.
    let filters: Vec<String> = (0..20_000).map(|i| format!("f/{i}")).collect();
    let filters: Vec<&str> = filters.iter().map(String::as_str).collect();
    let mut odd = Batch::new();
    subscribe(&mut odd, &filters);
    let findings = Baseline::detect(&s, &odd);
    assert_eq!(findings.len(), 1);
    let reason = &findings[0].reason;
    assert!(
        reason.len() <= MAX_REASON_LEN,
        "{} bytes: {}…",
        reason.len(),
        &reason[..200]
    );
    assert_eq!(
        reason,
        "sub-2 (sensor) subscribed to 20000 filters it never used: f/0, f/1, f/2, f/3, f/4 and 19995 more"
    );
}

#[test]
fn a_reason_names_a_few_departures_and_is_bounded() {
    let novelty = |score: f32, reason: String| Novelty {
        severity: Severity::Medium,
        score,
        reason,
    };
    let many: Vec<Novelty> = (0..8).map(|i| novelty(1.0, format!("r{i}"))).collect();
    assert_eq!(reason(&many), "r0; r1; r2; r3; r4; and 3 more");
    // Cut on a character, however long its parts.
    let long: Vec<Novelty> = (0..3).map(|_| novelty(1.0, "é".repeat(1000))).collect();
    let cut = reason(&long);
    assert!(cut.len() <= MAX_REASON_LEN && cut.ends_with('…'), "{cut}");
}
