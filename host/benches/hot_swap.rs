//! Live swaps under load, in one run:
//!
//! 1. 20 devices publish MQTT QoS 1 continuously over mTLS (each with a
//!    certificate from the site CA) through an in-process appliance to a
//!    real mosquitto, while the MQTT parser and the `hygiene` detector are
//!    activated back and forth 100 times between two versions. Per device:
//!    publishes sent, acknowledged, received by a subscriber on the broker
//!    (lost, duplicated, reordered), and connections reset; the latency
//!    from publish to subscriber, p50 and p99, during the swaps and during
//!    a period of the same length without swaps.
//! 2. The time from starting a swap to the new version serving: loading
//!    (from the precompiled artifact, and compiled cold with the cache
//!    emptied), activating, the first frame handed to the new version, and
//!    the first publish sent after the activation reaching the subscriber.
//!    Medians of 20 swaps each.
//! 3. Resident memory of the process (appliance and clients) before the
//!    swap series, after it, and once the replaced versions drained; then
//!    after 400 more swaps, to tell a leak from a one-off step.
//!
//! The two versions are the first-party components loaded with
//! `Runtime::load_as` under the version strings 1.0.0 and 1.0.1: the same
//! code, two plugins. Every other publish is written in two TLS records,
//! so swaps also fall between the halves of a frame. The harness is the
//! one of `tests/hot_swap_under_load.rs`. Exits non-zero when a publish was
//! lost, duplicated or reordered, a connection was reset, or a new version
//! never served. Run it with `cargo bench -p palisade --bench hot_swap`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::process::ExitCode;
use std::time::{Duration, Instant};

#[path = "../tests/hot_swap_under_load.rs"]
mod under_load;

use under_load::common::appliance::{KEEP_EVERY_MESSAGE, Mosquitto, require};
use under_load::{Appliance, DETECTOR, Fleet, PARSER, VERSIONS, rss_kib, runtime, wait_from};

const DEVICES: usize = 20;
/// Each device publishes this often: 4,000 publishes a second in all.
const EVERY: Duration = Duration::from_millis(5);
const SWAPS: usize = 100;
/// Swaps after the measured series, to tell a leak from a one-off step.
const PROBE_SWAPS: usize = 400;
/// The swap series is paced over this long; the quiet period lasts as long.
const WINDOW: Duration = Duration::from_secs(5);
const WARMUP: Duration = Duration::from_secs(2);
/// Swaps timed per plugin and kind of load.
const TIMED: usize = 20;
/// Between two timed swaps, so each starts on settled traffic.
const SETTLE: Duration = Duration::from_millis(100);
/// What the issue asks of a swap to a precompiled version, ms.
const TARGET_MS: f64 = 10.0;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
        .with_writer(std::io::stderr)
        .init();
    if !require("mosquitto") {
        return ExitCode::SUCCESS;
    }
    let broker = Mosquitto::start_with(KEEP_EVERY_MESSAGE);
    let rt = runtime();
    let appliance = rt.block_on(Appliance::start(broker.port));
    // Room for every publish of the memory-measured part without growing.
    let capacity = (WARMUP + 3 * WINDOW).as_millis() as usize / EVERY.as_millis() as usize * 2;
    let fleet = rt.block_on(Fleet::start(
        &appliance,
        broker.port,
        DEVICES,
        EVERY,
        Duration::ZERO,
        capacity,
    ));
    let mut failures = Vec::new();
    std::thread::sleep(WARMUP);
    if fleet.fewest_delivered() == 0 {
        failures.push("a device's publishes never reached the subscriber".to_owned());
    }

    // The same length of time without swaps, then with.
    let quiet = (fleet.now_us(), {
        std::thread::sleep(WINDOW);
        fleet.now_us()
    });
    let rss_before = rss_kib();
    let start = Instant::now();
    let swapping_from = fleet.now_us();
    let mut served = 0;
    let mut swap_ms = Vec::new();
    for i in 0..SWAPS {
        let version = VERSIONS[(i + 1) % 2];
        let began = Instant::now();
        let parser = appliance.swap(PARSER, version);
        let detector = appliance.swap(DETECTOR, version);
        swap_ms.push(ms(began.elapsed()));
        // Each new version must serve before the next swap.
        let both = || parser.new.calls() > 0 && detector.new.calls() > 0;
        match wait_from(Instant::now(), both) {
            Some(_) => served += 1,
            None => failures.push(format!("swap {i}: {version} never served")),
        }
        drop((parser, detector));
        let next = start + WINDOW * (i as u32 + 1) / SWAPS as u32;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    let swapping = (swapping_from, fleet.now_us());
    let rss_swapped = rss_kib();
    // Sessions let go of a replaced version at their next chunk: at this
    // load, within milliseconds.
    std::thread::sleep(Duration::from_secs(1));
    let rss_drained = rss_kib();

    // More swaps, as fast as they serve: resident memory that grows with
    // their number is a leak; a step that stays is the allocator's.
    for i in 0..PROBE_SWAPS {
        let version = VERSIONS[(i + 1) % 2];
        let parser = appliance.swap(PARSER, version);
        let detector = appliance.swap(DETECTOR, version);
        let both = || parser.new.calls() > 0 && detector.new.calls() > 0;
        if wait_from(Instant::now(), both).is_none() {
            failures.push(format!("probe swap {i}: {version} never served"));
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    let rss_probed = rss_kib();

    // The cold swaps empty the cache: they come last.
    let mut timings = Vec::new();
    for cold in [false, true] {
        for name in [PARSER, DETECTOR] {
            let (t, failed) = time_swaps(&appliance, &fleet, name, cold);
            timings.push((name, cold, t));
            failures.extend(failed);
        }
    }

    let report = rt.block_on(fleet.finish());
    rt.block_on(appliance.stop());

    println!(
        "\nhot swap under load: {DEVICES} devices over mTLS, MQTT QoS 1 every {} ms each, \
         through an in-process Palisade (parser {PARSER}, detector {DETECTOR}) to mosquitto",
        EVERY.as_millis()
    );
    println!(
        "versions: the first-party {PARSER} and {DETECTOR} components loaded with load_as \
         as {} and {} (the same code under two version strings); every other publish is \
         written in two TLS records",
        VERSIONS[0], VERSIONS[1]
    );
    println!(
        "swaps: {SWAPS} of {PARSER} and {SWAPS} of {DETECTOR}, back and forth, over {:.1} s \
         ({served}/{SWAPS} new versions served before the next swap); then {PROBE_SWAPS} more \
         of each for the memory probe and {} timed swaps of each (below); all under the same \
         load and counted in the table\n",
        (swapping.1 - swapping.0) as f64 / 1e6,
        2 * TIMED,
    );
    print!("{}", report.table());
    println!(
        "\n{:<34} {:>8} {:>9} {:>8} {:>8} {:>8}",
        "latency, publish to subscriber", "window", "publishes", "p50 ms", "p99 ms", "max ms"
    );
    let during = format!("during the {SWAPS} swaps");
    for (what, (from, to)) in [("without swaps", quiet), (during.as_str(), swapping)] {
        let mut l = report.latencies_ms(from, to);
        println!(
            "{what:<34} {:>6.2} s {:>9} {:>8.3} {:>8.3} {:>8.3}",
            (to - from) as f64 / 1e6,
            l.len(),
            percentile(&mut l, 50.0),
            percentile(&mut l, 99.0),
            percentile(&mut l, 100.0),
        );
    }
    println!(
        "series: load, activate and release of parser and detector together, median {:.2} ms, max {:.2} ms",
        percentile(&mut swap_ms, 50.0),
        percentile(&mut swap_ms, 100.0)
    );

    println!(
        "\n{:<38} {:>8} {:>11} {:>10} {:>12} {:>15} {:>13}",
        "start of swap to new version serving",
        "load ms",
        "activate µs",
        "release µs",
        "1st frame ms",
        "1st delivery ms",
        "1st frame max"
    );
    for (name, cold, mut t) in timings {
        let kind = if cold { "cold compile" } else { "precompiled" };
        let first = percentile(&mut t.first_frame, 50.0);
        let verdict = match (cold, first <= TARGET_MS) {
            (true, _) => "",
            (false, true) => "  (target ≤ 10 ms: met)",
            (false, false) => "  (target ≤ 10 ms: MISSED)",
        };
        println!(
            "{:<38} {:>8.2} {:>11.1} {:>10.0} {:>12.2} {:>15.2} {:>13.2}{verdict}",
            format!("{name}, {kind} (median of {})", t.load.len()),
            percentile(&mut t.load, 50.0),
            percentile(&mut t.activate, 50.0) * 1e3,
            percentile(&mut t.release, 50.0) * 1e3,
            first,
            percentile(&mut t.delivered, 50.0),
            percentile(&mut t.first_frame, 100.0),
        );
    }
    println!(
        "(release: dropping the replaced version; 1st frame: the new version's first call, \
         from the start of the load; 1st delivery: the first publish sent after the activation \
         at the subscriber, from the same start)"
    );

    println!(
        "\nresident memory (this process: appliance, {DEVICES} clients, subscriber), \
         each swap releasing the old version as `palisade plugin activate` does:\n\
         before the series {rss_before} KiB, after {SWAPS} swaps {rss_swapped} KiB, \
         1 s later (replaced versions drained) {rss_drained} KiB; \
         after {PROBE_SWAPS} more swaps and 1 s {rss_probed} KiB"
    );

    let clean = report.clean() && failures.is_empty();
    for f in &failures {
        println!("FAILED: {f}");
    }
    println!(
        "\n{}",
        if clean {
            "none lost, duplicated or reordered; no connection reset".to_owned()
        } else {
            format!(
                "FAILED: {} lost, {} duplicated, {} reordered, {} unacknowledged, {} connections reset",
                report.devices.iter().map(|d| d.lost).sum::<u64>(),
                report.devices.iter().map(|d| d.duplicated).sum::<u64>(),
                report.devices.iter().map(|d| d.reordered).sum::<u64>(),
                report.devices.iter().map(|d| d.sent - d.acked).sum::<u64>(),
                report.resets()
            )
        }
    );
    if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// What the timed swaps of one plugin took, ms.
#[derive(Default)]
struct Timings {
    load: Vec<f64>,
    activate: Vec<f64>,
    release: Vec<f64>,
    first_frame: Vec<f64>,
    delivered: Vec<f64>,
}

/// Swap `name` [`TIMED`] times under the fleet's load, from the
/// precompiled artifact or (`cold`) compiled with the cache emptied.
fn time_swaps(
    appliance: &Appliance,
    fleet: &Fleet,
    name: &str,
    cold: bool,
) -> (Timings, Vec<String>) {
    let mut t = Timings::default();
    let mut failures = Vec::new();
    for i in 0..TIMED {
        if cold {
            for artifact in std::fs::read_dir(&appliance.cache_dir).unwrap() {
                std::fs::remove_file(artifact.unwrap().path()).unwrap();
            }
        }
        let version = VERSIONS[(i + 1) % 2];
        let start = Instant::now();
        let swap = appliance.swap(name, version);
        // A publish sent from now on is read by the appliance after the
        // activation, so the new version (or a later one) parses it.
        let activated_us = fleet.now_us();
        if swap.cached == cold {
            failures.push(format!(
                "{name} {version}: loaded {} the cache, expected {}",
                if swap.cached { "from" } else { "without" },
                if cold { "a compile" } else { "a hit" }
            ));
        }
        let first_frame = wait_from(start, || swap.new.calls() > 0);
        let delivered = wait_from(start, || fleet.latest_sent_delivered() >= activated_us);
        match (first_frame, delivered) {
            (Some(f), Some(d)) => {
                t.load.push(ms(swap.load));
                t.activate.push(ms(swap.activate));
                t.release.push(ms(swap.release));
                t.first_frame.push(ms(f));
                t.delivered.push(ms(d));
            }
            _ => failures.push(format!("{name} {version} never served")),
        }
        drop(swap);
        std::thread::sleep(SETTLE);
    }
    (t, failures)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The `p`th percentile (nearest rank); 0 for no samples.
fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v[i]
}
