//! Plugins are swapped while sessions run: a new version takes over at the
//! next frame boundary, with no frame lost or seen twice; a shadow is
//! compared and never acted on.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use common::{component, load, mqtt_connect, mqtt_publish, runtime, session};
use palisade::plugins::{Direction, Limits, Runtime, Slot, SwapError};
use palisade::session::{FrameSpan, Pipeline};

/// The frames and events of `stream`, fed in chunks of `chunk` bytes,
/// calling `between` after every chunk.
fn run(
    pipeline: &mut Pipeline,
    stream: &[u8],
    chunk: usize,
    mut between: impl FnMut(usize),
) -> (Vec<FrameSpan>, Vec<String>) {
    let (mut spans, mut events) = (Vec::new(), Vec::new());
    for (i, bytes) in stream.chunks(chunk).enumerate() {
        let inspected = pipeline.push(Direction::ToUpstream, bytes).unwrap();
        assert!(inspected.errors.is_empty() && !inspected.blocked);
        for (span, event) in inspected.frames() {
            spans.push(span);
            events.push(event.to_string());
        }
        between(i);
    }
    (spans, events)
}

/// A session of sensor-1 through the MQTT parser whose `detectors` have
/// learnt its telemetry to site/a/temp.
fn learnt(runtime: &Runtime, detectors: &Slot) -> Pipeline {
    let mut pipeline = Pipeline::with_slots(
        session(1, "sensor-1"),
        Slot::new(load(runtime, "mqtt", Limits::default())),
        vec![detectors.clone()],
        vec![],
        1 << 16,
    );
    let mut learning = mqtt_connect("sensor-1");
    for _ in 0..new_topic::LEARNING_PUBLISHES {
        learning.extend(mqtt_publish("site/a/temp", b"20"));
    }
    pipeline.push(Direction::ToUpstream, &learning).unwrap();
    pipeline
}

fn stream() -> Vec<u8> {
    let mut stream = mqtt_connect("sensor-1");
    for i in 0..200 {
        stream.extend(mqtt_publish(
            &format!("site/cell-1/sensor-{}/temp", i % 7),
            format!("{i}").as_bytes(),
        ));
    }
    stream
}

#[test]
fn a_parser_swapped_every_chunk_loses_and_repeats_no_frame() {
    let runtime = runtime();
    let stream = stream();
    let mqtt = component("mqtt");

    let parser = load(&runtime, "mqtt", Limits::default());
    let mut steady = Pipeline::new(
        session(1, "sensor-1"),
        parser.clone(),
        vec![],
        vec![],
        1 << 16,
    );
    let (expected_spans, expected_events) = run(&mut steady, &stream, 13, |_| {});
    assert_eq!(expected_events.len(), 201);

    // Two versions, activated in turn after every chunk of 13 bytes: most
    // swaps fall inside a frame.
    let versions = [
        runtime.load("mqtt", &mqtt, Limits::default()).unwrap(),
        runtime.load("mqtt", &mqtt, Limits::default()).unwrap(),
    ];
    let slot = Slot::new(versions[0].clone());
    let mut swapped = Pipeline::with_slots(
        session(2, "sensor-1"),
        slot.clone(),
        vec![],
        vec![],
        1 << 16,
    );
    let (spans, events) = run(&mut swapped, &stream, 13, |i| {
        slot.activate(versions[(i + 1) % 2].clone()).unwrap();
    });
    assert_eq!(spans, expected_spans);
    assert_eq!(events, expected_events);
    // The parser is called on the chunks that may complete a frame, as
    // the pipeline without swaps called it.
    let calls = parser.calls();
    assert_eq!(
        versions[0].calls() + versions[1].calls(),
        calls,
        "each call went to the active version only"
    );
    assert!(versions[0].calls() >= calls / 4 && versions[1].calls() >= calls / 4);
}

#[test]
fn a_slot_refuses_a_plugin_of_another_world() {
    let runtime = runtime();
    let slot = Slot::new(load(&runtime, "mqtt", Limits::default()));
    let detector = load(&runtime, "new-topic", Limits::default());
    let refused = slot.activate(detector.clone()).unwrap_err();
    assert!(matches!(refused, SwapError::WrongWorld { .. }), "{refused}");
    assert!(slot.set_shadow(Some(detector)).is_err());
    assert_eq!(slot.active().world(), palisade::plugins::World::Parser);
    assert!(matches!(slot.promote(), Err(SwapError::NoShadow { .. })));
}

#[test]
fn a_shadow_detector_is_compared_and_never_acted_on() {
    let runtime = runtime();
    // The active detector has learned the device; the shadow, with a store
    // of its own, has not, so only the active one flags a new topic.
    let active = load(&runtime, "new-topic", Limits::default());
    let shadow = runtime
        .load(
            "new-topic-candidate",
            &component("new-topic"),
            Limits::default(),
        )
        .unwrap();
    let detectors = Slot::new(active);
    let mut pipeline = learnt(&runtime, &detectors);

    detectors.set_shadow(Some(shadow.clone())).unwrap();
    let normal = pipeline
        .push(Direction::ToUpstream, &mqtt_publish("site/a/temp", b"21"))
        .unwrap();
    assert!(normal.findings.is_empty());
    let rogue = pipeline
        .push(Direction::ToUpstream, &mqtt_publish("site/a/cmd", b"open"))
        .unwrap();
    assert_eq!(
        rogue.findings.len(),
        1,
        "the active detector's finding only"
    );
    assert_eq!(rogue.findings[0].0, "new-topic");

    let report = detectors.shadow_report();
    assert_eq!((report.compared, report.differed, report.failed), (2, 1, 0));
    assert!(report.last_difference.is_some());

    detectors.promote().unwrap();
    assert_eq!(detectors.active().name(), "new-topic-candidate");
    assert!(detectors.shadow().is_none());
    let calls = shadow.calls();
    pipeline
        .push(Direction::ToUpstream, &mqtt_publish("site/a/x", b"1"))
        .unwrap();
    assert_eq!(shadow.calls(), calls + 1, "the promoted version serves");
}

#[test]
fn a_shadow_of_the_next_version_reads_the_baselines_and_writes_nothing() {
    let runtime = runtime();
    let detectors = Slot::new(load(&runtime, "new-topic", Limits::default()));
    let mut pipeline = learnt(&runtime, &detectors);

    // The same plugin name: the next version shares the store.
    let next = load(&runtime, "new-topic", Limits::default());
    detectors.set_shadow(Some(next.clone())).unwrap();
    assert!(detectors.shadow().unwrap().is_shadow());
    // The shadow goes first and remembers the new topic; were its write
    // kept, the active version would find the topic known and say nothing.
    let rogue = pipeline
        .push(Direction::ToUpstream, &mqtt_publish("site/a/cmd", b"open"))
        .unwrap();
    assert_eq!(
        rogue.findings.len(),
        1,
        "the shadow's writes were discarded"
    );
    let report = detectors.shadow_report();
    assert_eq!(
        (report.compared, report.differed),
        (1, 0),
        "the shadow judged on the same baselines: {report:?}"
    );
    detectors.set_shadow(None).unwrap();
    assert!(detectors.shadow().is_none());
}

#[test]
fn a_shadow_stopped_mid_call_still_writes_nothing() {
    let runtime = runtime();
    let detectors = Slot::new(load(&runtime, "new-topic", Limits::default()));
    let mut pipeline = learnt(&runtime, &detectors);

    // A session takes the shadow for its next call (as the pipeline does
    // at every batch); meanwhile the operator stops the shadow.
    detectors
        .set_shadow(Some(load(&runtime, "new-topic", Limits::default())))
        .unwrap();
    let taken = detectors.shadow().unwrap();
    detectors.set_shadow(None).unwrap();
    assert!(taken.is_shadow(), "a shadow handed out stays a shadow");

    // The call it was taken for: the shadow sees the new topic. Were its
    // write kept, the active version would find the topic known.
    let mut late = Pipeline::with_slots(
        session(2, "sensor-1"),
        Slot::new(load(&runtime, "mqtt", Limits::default())),
        vec![Slot::new(taken)],
        vec![],
        1 << 16,
    );
    let mut call = mqtt_connect("sensor-1");
    call.extend(mqtt_publish("site/a/cmd", b"open"));
    late.push(Direction::ToUpstream, &call).unwrap();

    let rogue = pipeline
        .push(Direction::ToUpstream, &mqtt_publish("site/a/cmd", b"open"))
        .unwrap();
    assert_eq!(
        rogue.findings.len(),
        1,
        "the stopped shadow's writes were kept"
    );
}
