//! Every kind of hostile plugin is stopped within its bound, with an error
//! that names the plugin and the limit, while well-behaved plugins go on
//! serving; repeat offenders are disabled by their fail mode. Datagrams
//! are parsed under the same bounds, and a datagram's result that is not
//! one whole frame is a breach like any other.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::time::{Duration, Instant};

use common::{load, mqtt_connect, mqtt_publish, runtime, session, short_deadline, tight_limits};
use palisade::plugins::{
    Batch, CallError, Direction, FailMode, Fault, Finding, Lifecycle, Limits, Plugin, Severity,
    WireBatch,
};
use palisade::session::{Pipeline, PipelineError};

/// Run the hostile plugin's misbehaviour `word` once and return the fault.
fn provoke(plugin: &Plugin, word: &str) -> (Fault, CallError) {
    let result = plugin.parse(
        &session(1, "evil"),
        Direction::ToUpstream,
        &[],
        word.as_bytes(),
    );
    match result {
        Err(e @ CallError::Fault { .. }) => {
            let CallError::Fault { fault, .. } = &e else {
                unreachable!()
            };
            (fault.clone(), e)
        }
        other => panic!("{word}: expected a fault, got {other:?}"),
    }
}

#[test]
fn infinite_loop_is_interrupted_at_the_deadline() {
    let plugin = load(&runtime(), "hostile", short_deadline());
    let start = Instant::now();
    let (fault, error) = provoke(&plugin, "loop");
    assert_eq!(fault, Fault::Deadline(Duration::from_millis(100)));
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
    let message = error.to_string();
    assert!(
        message.contains("hostile") && message.contains("deadline of 100ms"),
        "{message}"
    );
}

#[test]
fn memory_bomb_stops_at_the_memory_limit() {
    let plugin = load(&runtime(), "hostile", tight_limits());
    let (fault, error) = provoke(&plugin, "alloc");
    assert_eq!(fault, Fault::Memory(16 << 20));
    assert!(
        error.to_string().contains("memory limit of 16777216 bytes"),
        "{error}"
    );
}

#[test]
fn runaway_recursion_is_stopped() {
    let plugin = load(&runtime(), "hostile", tight_limits());
    let (fault, error) = provoke(&plugin, "recurse");
    // Rust keeps large locals on a shadow stack in linear memory, so the
    // overflow shows up either on the wasm stack or as a memory fault.
    assert!(
        matches!(&fault, Fault::Stack)
            || matches!(&fault, Fault::Trap(t) if t.contains("out of bounds")),
        "{error}"
    );
}

/// A parser that fills its table of kinds and reports the rest malformed
/// left the host no room for the malformed event it appends: the session's
/// task panicked, and the parser went without a strike. The result is now
/// a breach of the contract.
#[test]
fn a_parser_that_fills_its_tables_gets_a_strike_not_a_panic() {
    // 65536 names cross in about 1.5 MiB: within the default output limit.
    let limits = Limits {
        output_bytes: Limits::default().output_bytes,
        ..tight_limits()
    };
    let plugin = load(&runtime(), "hostile", limits);
    let mut pipeline = Pipeline::new(session(1, "evil"), plugin.clone(), vec![], vec![], 1 << 16);
    let result = pipeline.push(Direction::ToUpstream, b"kinds");
    assert!(
        matches!(
            &result,
            Err(PipelineError::Parser(CallError::Fault {
                fault: Fault::Contract(_),
                ..
            }))
        ),
        "{result:?}"
    );
    assert_eq!(plugin.strikes(), 1);
}

/// A detector may raise up to four findings about every event, within its
/// own output limit: some 100 000 on a long batch. The escalate responder
/// answers each with an alert and a dropped frame, which crosses in more
/// bytes than the finding did; were its output limit fixed, the strike
/// would land on escalate, and five would disable it, fail-closed.
#[test]
fn a_flood_of_findings_does_not_push_the_responder_past_its_limit() {
    let limits = Limits {
        // Lowering 100 000 findings into the guest takes a while in a
        // debug build; the output limit is what this test is about.
        deadline_ms: 10_000,
        ..Limits::default()
    };
    let escalate = load(&runtime(), "escalate", limits);
    let mut batch = Batch::new();
    for _ in 0..25_000 {
        batch.push("mqtt.pingreq");
    }
    let findings: Vec<Finding> = (0..100_000)
        .map(|i| Finding {
            event: i / 4,
            severity: Severity::High,
            score: 1.0,
            reason: String::new(),
        })
        .collect();
    let batch = WireBatch::from(batch);
    let actions = escalate.respond(&session(1, "evil"), &batch, &findings);
    assert_eq!(actions.map(|a| a.len()).ok(), Some(200_000));
    assert_eq!(escalate.strikes(), 0);
}

#[test]
fn a_panicking_plugin_traps_and_the_next_call_succeeds() {
    let plugin = load(&runtime(), "hostile", tight_limits());
    let (fault, error) = provoke(&plugin, "trap");
    assert!(matches!(fault, Fault::Trap(_)), "{error}");
    // The trapped instance was thrown away; a fresh one serves the next call.
    let parsed = plugin
        .parse(&session(2, "evil"), Direction::ToUpstream, &[], b"hello")
        .unwrap();
    assert_eq!(parsed.frame_lengths, [5]);
    assert_eq!(parsed.events.get(0).unwrap().kind(), "hostile.ok");
}

/// The appliance calls a parser on a small chunk right on its async
/// worker. A panic's message goes to the plugin's stderr, which WASI
/// serves by waiting on the runtime: that must not panic the worker.
#[test]
fn a_panic_on_an_async_worker_is_a_trap_like_any_other() {
    let plugin = load(&runtime(), "hostile", tight_limits());
    let worker = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .build()
        .unwrap();
    let (fault, error) = worker.block_on(async {
        tokio::spawn(async move { provoke(&plugin, "trap") })
            .await
            .expect("the worker panicked")
    });
    assert!(matches!(fault, Fault::Trap(_)), "{error}");
}

/// A plugin has nothing to wait for: waiting (here on a WASI clock, as
/// `std::thread::sleep` does) faults at once, on an async worker and off
/// one alike, instead of holding the host's thread past the deadline.
#[test]
fn a_plugin_that_waits_faults_at_once() {
    let plugin = load(&runtime(), "hostile", tight_limits());
    let start = Instant::now();
    let (fault, error) = provoke(&plugin, "sleep");
    assert_eq!(fault, Fault::Blocked("wasi:io/poll"), "{error}");
    assert!(error.to_string().contains("may not wait"), "{error}");
    let worker = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .build()
        .unwrap();
    let (fault, error) = worker.block_on(async {
        tokio::spawn(async move { provoke(&plugin, "sleep") })
            .await
            .expect("the worker panicked")
    });
    assert_eq!(fault, Fault::Blocked("wasi:io/poll"), "{error}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
}

#[test]
fn huge_output_is_refused_at_the_output_limit() {
    let plugin = load(&runtime(), "hostile", tight_limits());
    let (fault, error) = provoke(&plugin, "flood");
    assert_eq!(fault, Fault::Output(1 << 20));
    assert!(
        error.to_string().contains("output limit of 1048576 bytes"),
        "{error}"
    );
}

#[test]
fn key_value_abuse_stays_within_quota_and_is_stopped() {
    // The limit under test is the number of operations; tight_limits'
    // deadline is long enough that a loaded machine does not reach it first.
    let plugin = load(&runtime(), "hostile", tight_limits());
    let (fault, _) = provoke(&plugin, "kvspam");
    assert_eq!(fault, Fault::KvOps(Limits::default().kv_ops_per_call));
    let used = plugin.kv_used();
    assert!(used > 0 && used <= 64 << 10, "store holds {used} bytes");
}

#[test]
fn log_floods_are_cut_not_fatal() {
    let plugin = load(&runtime(), "hostile", tight_limits());
    let parsed = plugin
        .parse(
            &session(1, "chatty"),
            Direction::ToUpstream,
            &[],
            b"logspam",
        )
        .unwrap();
    assert_eq!(parsed.frame_lengths.len(), 1);
    let dropped = plugin.counters().get("palisade.log-lines-dropped").copied();
    assert_eq!(
        dropped,
        Some(10_000 - u64::from(Limits::default().log_lines_per_call))
    );
}

#[test]
fn good_plugin_keeps_serving_while_a_hostile_one_faults() {
    let runtime = runtime();
    let mqtt = load(&runtime, "mqtt", Limits::default());
    let hostile = load(
        &runtime,
        "hostile",
        // It loops twice: a short deadline keeps the test short, and any
        // fault will do.
        Limits {
            max_strikes: 1000,
            ..short_deadline()
        },
    );
    let stream = [
        mqtt_connect("sensor-1"),
        mqtt_publish("site/a/telemetry", b"21.5"),
    ]
    .concat();

    std::thread::scope(|scope| {
        let attacker = scope.spawn(|| {
            for word in ["loop", "alloc", "trap", "flood", "loop", "recurse"] {
                assert!(
                    hostile
                        .parse(
                            &session(9, "evil"),
                            Direction::ToUpstream,
                            &[],
                            word.as_bytes()
                        )
                        .is_err()
                );
            }
        });
        let mut served = 0;
        while !attacker.is_finished() || served < 100 {
            let parsed = mqtt
                .parse(
                    &session(served, "sensor-1"),
                    Direction::ToUpstream,
                    &[],
                    &stream,
                )
                .expect("the MQTT parser must keep serving");
            assert_eq!(parsed.frame_lengths.len(), 2);
            assert_eq!(parsed.events.get(1).unwrap().kind(), "mqtt.publish");
            served += 1;
        }
        attacker.join().unwrap();
    });
    assert_eq!(mqtt.strikes(), 0);
    assert_eq!(hostile.strikes(), 6);
}

#[test]
fn repeated_faults_disable_the_plugin_by_its_fail_mode() {
    let runtime = runtime();
    let closed = load(&runtime, "hostile", tight_limits());
    for strike in 1..=3 {
        let (_, error) = provoke(&closed, "trap");
        assert!(
            error.to_string().contains(&format!("strike {strike} of 3")),
            "{error}"
        );
    }
    assert_eq!(closed.lifecycle(), Lifecycle::Failed);
    let err = closed
        .parse(&session(1, "d"), Direction::ToUpstream, &[], b"fine")
        .unwrap_err();
    assert!(
        matches!(
            err,
            CallError::Disabled {
                fail_mode: FailMode::Closed,
                strikes: 3,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("hostile is disabled after 3 strikes (fail-closed)")
    );

    let open = runtime
        .load(
            "hostile-open",
            &common::component("hostile"),
            Limits {
                fail_mode: FailMode::DangerousOpen,
                ..tight_limits()
            },
        )
        .unwrap();
    for _ in 0..3 {
        provoke(&open, "trap");
    }
    let err = open
        .parse(&session(1, "d"), Direction::ToUpstream, &[], b"fine")
        .unwrap_err();
    assert!(
        matches!(
            err,
            CallError::Disabled {
                fail_mode: FailMode::DangerousOpen,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn datagrams_are_parsed_within_the_same_bounds_and_contract() {
    let runtime = runtime();
    let plugin = load(&runtime, "hostile", tight_limits());
    let datagram = |plugin: &Plugin, word: &str| {
        plugin.parse_datagram(
            &session(1, "evil"),
            Direction::ToUpstream,
            &[],
            word.as_bytes(),
        )
    };
    let parsed = datagram(&plugin, "hello").unwrap();
    assert_eq!(parsed.frame_lengths, [5]);
    // An empty datagram is malformed, and no fault of the plugin's.
    let empty = datagram(&plugin, "").unwrap();
    assert!(empty.frame_lengths.is_empty() && empty.malformed.is_some());
    assert_eq!(plugin.strikes(), 0);
    // Two frames are a fine answer for a stream and a breach for a datagram.
    let stream = plugin
        .parse(&session(1, "evil"), Direction::ToUpstream, &[], b"halves")
        .unwrap();
    assert_eq!(stream.frame_lengths, [3, 3]);
    let err = datagram(&plugin, "halves").unwrap_err();
    assert!(
        matches!(
            &err,
            CallError::Fault {
                fault: Fault::Contract(_),
                strikes: 1,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("2 events for one datagram"),
        "{err}"
    );
    let err = datagram(&plugin, "flood").unwrap_err();
    assert!(
        matches!(
            &err,
            CallError::Fault {
                fault: Fault::Output(_),
                strikes: 2,
                ..
            }
        ),
        "{err}"
    );
    let err = datagram(&plugin, "alloc").unwrap_err();
    assert!(
        matches!(
            &err,
            CallError::Fault {
                fault: Fault::Memory(_),
                strikes: 3,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(plugin.lifecycle(), Lifecycle::Failed);
    assert!(matches!(
        datagram(&plugin, "hello"),
        Err(CallError::Disabled { strikes: 3, .. })
    ));
    // The deadline, on a copy with a short one: with it, the calls above
    // could meet the deadline before the limit each is about.
    let hasty = load(&runtime, "hostile", short_deadline());
    let start = Instant::now();
    let err = datagram(&hasty, "loop").unwrap_err();
    assert!(
        matches!(
            &err,
            CallError::Fault {
                fault: Fault::Deadline(_),
                strikes: 1,
                ..
            }
        ),
        "{err}"
    );
    assert!(start.elapsed() < Duration::from_secs(5));
}
