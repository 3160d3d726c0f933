//! Plugins are WebAssembly components checked against the contract when they
//! load; compiled code is cached on disk; plugin state survives a restart.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use common::{component, load, mqtt_connect, mqtt_publish, runtime, session};
use palisade::plugins::{Batch, Direction, Limits, LoadError, Runtime, RuntimeConfig, World};
use palisade::session::Pipeline;
use palisade::store::Store;

#[test]
fn every_built_plugin_is_a_component_not_a_core_module() {
    for plugin in ["mqtt", "new-topic", "hostile"] {
        let bytes = component(plugin);
        // The preamble: magic, then version 0x0d and layer 1 for a component
        // (a core module has version 1, layer 0).
        assert_eq!(&bytes[..8], b"\0asm\x0d\x00\x01\x00", "{plugin}");
    }
    let runtime = runtime();
    assert_eq!(
        load(&runtime, "mqtt", Limits::default()).world(),
        World::Parser
    );
    assert_eq!(
        load(&runtime, "new-topic", Limits::default()).world(),
        World::Detector
    );
}

#[test]
fn a_core_module_or_garbage_is_refused_with_the_plugin_name() {
    let runtime = runtime();
    let core_module = b"\0asm\x01\x00\x00\x00";
    for bytes in [&core_module[..], b"not wasm at all", b""] {
        let err = runtime.load("bogus", bytes, Limits::default()).unwrap_err();
        assert!(matches!(err, LoadError::Invalid { .. }), "{err}");
        assert!(
            err.to_string()
                .starts_with("plugin bogus is not a valid WebAssembly component"),
            "{err}"
        );
    }
}

/// Every plugin this workspace builds loads under the limits of what one
/// plugin may hold of the pool (core instances, memories, tables).
#[test]
fn every_built_plugin_fits_a_plugins_share_of_the_pool() {
    let runtime = runtime();
    for plugin in palisade::plugins::first_party::names().chain(["hostile"]) {
        runtime
            .load(plugin, &component(plugin), Limits::default())
            .unwrap_or_else(|e| panic!("{plugin}: {e}"));
    }
}

/// A component of several core modules, each with a memory of its own,
/// would hold several times its memory limit and that many of the pool's
/// memory slots: it is refused when it loads, saying why.
#[test]
fn a_component_with_more_memories_than_a_plugin_may_have_is_refused() {
    // A core module that defines one memory of one page.
    let module: &[u8] = b"\0asm\x01\x00\x00\x00\x05\x03\x01\x00\x01";
    let mut bytes = b"\0asm\x0d\x00\x01\x00".to_vec();
    for _ in 0..3 {
        bytes.push(0x01); // core module section
        bytes.push(u8::try_from(module.len()).unwrap());
        bytes.extend_from_slice(module);
    }
    // A core instance section: each module instantiated, without arguments.
    bytes.extend_from_slice(&[0x02, 10, 3, 0, 0, 0, 0, 1, 0, 0, 2, 0]);
    let err = runtime()
        .load("many-memories", &bytes, Limits::default())
        .unwrap_err();
    assert!(matches!(err, LoadError::Invalid { .. }), "{err}");
    assert!(err.to_string().contains("3 Wasm linear memories"), "{err}");
}

#[test]
fn precompiled_components_are_cached_and_a_corrupt_cache_is_recompiled() {
    let dir = tempfile::tempdir().unwrap();
    let config = RuntimeConfig {
        cache_dir: Some(dir.path().join("cache")),
        ..RuntimeConfig::default()
    };
    let runtime = Runtime::new(&config, Store::temporary().unwrap()).unwrap();
    let mqtt = component("mqtt");
    let (_, hit) = runtime
        .load_cached("mqtt", &mqtt, Limits::default())
        .unwrap();
    assert!(!hit, "first load compiles");
    let (plugin, hit) = runtime
        .load_cached("mqtt", &mqtt, Limits::default())
        .unwrap();
    assert!(hit, "second load comes from the cache");
    assert_eq!(plugin.protocol().unwrap(), "mqtt");

    // One bit changed in the middle of the compiled code: wasmtime would
    // load it (its header is intact) and run it.
    let cached = || {
        let entries = std::fs::read_dir(dir.path().join("cache")).unwrap();
        let paths: Vec<_> = entries.map(|e| e.unwrap().path()).collect();
        assert_eq!(paths.len(), 1, "{paths:?}");
        paths.into_iter().next().unwrap()
    };
    let mut file = std::fs::read(cached()).unwrap();
    let middle = file.len() / 2;
    file[middle] ^= 0x01;
    std::fs::write(cached(), &file).unwrap();
    let (plugin, hit) = runtime
        .load_cached("mqtt", &mqtt, Limits::default())
        .unwrap();
    assert!(!hit, "a changed artifact is compiled again, not run");
    assert_eq!(plugin.protocol().unwrap(), "mqtt");
    let (_, hit) = runtime
        .load_cached("mqtt", &mqtt, Limits::default())
        .unwrap();
    assert!(hit, "the artifact compiled again replaced the changed one");

    for entry in std::fs::read_dir(dir.path().join("cache")).unwrap() {
        std::fs::write(entry.unwrap().path(), b"torn artifact").unwrap();
    }
    let (plugin, hit) = runtime
        .load_cached("mqtt", &mqtt, Limits::default())
        .unwrap();
    assert!(!hit, "a corrupt artifact is ignored and rebuilt");
    assert_eq!(plugin.protocol().unwrap(), "mqtt");
}

/// `n` MQTT publishes to `topic`, as a parser would describe them.
fn publishes(topic: &str, n: usize) -> Batch {
    let mut batch = Batch::new();
    for _ in 0..n {
        batch.push("mqtt.publish").text("topic", topic);
    }
    batch
}

/// A device that packs one read with small frames to new topics gives a
/// detector a batch of thousands of events: at two key-value operations
/// for each (new-topic's), a budget fixed per call (4096) was overrun and
/// the detector struck, for every device, by one device's traffic.
#[test]
fn a_large_batch_of_new_topics_keeps_within_the_detectors_budget() {
    let store = Store::temporary().unwrap();
    let runtime = Runtime::new(&RuntimeConfig::default(), store).unwrap();
    let plugin = load(&runtime, "new-topic", Limits::default());
    let mut batch = Batch::new();
    for i in 0..3000 {
        batch.push("mqtt.publish").text("topic", &format!("t/{i}"));
    }
    let findings = plugin.detect(&session(1, "sensor-1"), &batch.into());
    assert!(findings.is_ok(), "{findings:?}");
    assert_eq!(plugin.strikes(), 0);
}

#[test]
fn detector_state_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let detector = component("new-topic");
    {
        let store = Store::open(dir.path()).unwrap();
        let runtime = Runtime::new(&RuntimeConfig::default(), store.clone()).unwrap();
        let plugin = runtime
            .load("new-topic", &detector, Limits::default())
            .unwrap();
        let findings = plugin
            .detect(
                &session(1, "sensor-1"),
                &publishes("site/a/telemetry", 150).into(),
            )
            .unwrap();
        assert!(findings.is_empty(), "still learning: {findings:?}");
        store.flush().unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    let runtime = Runtime::new(&RuntimeConfig::default(), store).unwrap();
    let plugin = runtime
        .load("new-topic", &detector, Limits::default())
        .unwrap();
    let findings = plugin
        .detect(&session(2, "sensor-1"), &publishes("site/a/cmd", 1).into())
        .unwrap();
    assert_eq!(
        findings.len(),
        1,
        "the baseline learned before the restart flags the new topic"
    );
    assert!(
        findings[0].reason.contains("after 150 publishes"),
        "{}",
        findings[0].reason
    );
}

/// Instances keep the settings they read; a changed setting still applies
/// from the next call, on every instance.
#[test]
fn a_changed_setting_applies_from_the_next_call() {
    let store = Store::temporary().unwrap();
    let runtime = Runtime::new(&RuntimeConfig::default(), store.clone()).unwrap();
    let mqtt = load(&runtime, "mqtt", Limits::default());
    let frame = mqtt_publish("site/a/telemetry", b"21.5");
    let payload = || {
        let parsed =
            (mqtt.parse(&session(1, "sensor-1"), Direction::ToUpstream, &[4], &frame)).unwrap();
        let event = parsed.events.get(0).unwrap();
        event.get("payload").map(|v| format!("{v:?}"))
    };
    assert_eq!(payload(), None, "payloads are off unless configured");
    let settings = store.plugin_kv("mqtt", 1 << 20).unwrap();
    settings.set("config/payload-bytes", b"2").unwrap();
    assert_eq!(payload().as_deref(), Some("Bytes([50, 49])"));
    settings.set("config/payload-bytes", b"3").unwrap();
    assert_eq!(payload().as_deref(), Some("Bytes([50, 49, 46])"));
    settings.delete("config/payload-bytes").unwrap();
    assert_eq!(payload(), None);
    // Other writes leave the instances be.
    let version = settings.settings_version();
    settings.set("profile/x", b"1").unwrap();
    assert_eq!(settings.settings_version(), version);
}

#[test]
fn pipeline_cuts_frames_across_chunks_and_judges_them() {
    let runtime = runtime();
    let parser = load(&runtime, "mqtt", Limits::default());
    let detector = load(&runtime, "new-topic", Limits::default());
    let mut pipeline = Pipeline::new(
        session(1, "sensor-1"),
        parser,
        vec![detector],
        vec![],
        1 << 20,
    );
    let mut stream = mqtt_connect("sensor-1");
    for _ in 0..100 {
        stream.extend(mqtt_publish("site/a/telemetry", b"21.5"));
    }
    stream.extend(mqtt_publish("site/a/cmd", b"open"));

    let mut spans = Vec::new();
    let mut flagged = Vec::new();
    for chunk in stream.chunks(7) {
        let inspected = pipeline.push(Direction::ToUpstream, chunk).unwrap();
        assert!(inspected.errors.is_empty() && !inspected.blocked);
        for (_, f) in &inspected.findings {
            let event = inspected.batch.get(f.event as usize).unwrap();
            flagged.push((
                inspected.spans[f.event as usize],
                event.text("topic").unwrap().to_owned(),
            ));
        }
        spans.extend(inspected.spans);
    }
    assert_eq!(spans.len(), 102);
    assert_eq!(pipeline.pending(Direction::ToUpstream), 0);
    let last = spans.last().unwrap();
    assert_eq!(
        last.offset + u64::from(last.len),
        stream.len() as u64,
        "frames cover the stream exactly"
    );
    assert_eq!(
        flagged,
        [(*last, "site/a/cmd".to_owned())],
        "the finding is on the command publish"
    );
}

#[test]
fn a_failing_fail_closed_detector_blocks_the_frames() {
    let runtime = runtime();
    let parser = load(&runtime, "mqtt", Limits::default());
    // A parser used where a detector is expected fails every call.
    let wrong = load(&runtime, "mqtt", Limits::default());
    let mut pipeline = Pipeline::new(session(1, "d"), parser, vec![wrong], vec![], 1 << 20);
    let inspected = pipeline
        .push(Direction::ToUpstream, &mqtt_connect("d"))
        .unwrap();
    assert_eq!(inspected.spans.len(), 1);
    assert!(inspected.blocked);
    assert!(
        inspected.errors[0]
            .to_string()
            .contains("is a parser, not a detector")
    );
}

#[test]
fn oversized_frames_are_refused_before_they_are_buffered() {
    let runtime = runtime();
    let parser = load(&runtime, "mqtt", Limits::default());
    let mut pipeline = Pipeline::new(session(1, "d"), parser, vec![], vec![], 1024);
    let big = mqtt_publish("t", &vec![0; 4096]);
    let err = pipeline
        .push(Direction::ToUpstream, &big[..100])
        .unwrap_err();
    assert_eq!(err.to_string(), "frame larger than 1024 bytes");
}
