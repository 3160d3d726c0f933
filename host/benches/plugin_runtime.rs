//! What the plugin runtime costs, measured with the first-party MQTT parser:
//!
//! 1. one parse call on a 4 KiB chunk of MQTT 3.1.1 PUBLISH frames, through
//!    the component (`Plugin::parse`) and natively (`mqtt::parse`);
//! 2. the ratio of their throughputs;
//! 3. the boundary cost per event, the wasm call's extra time per frame;
//! 4. the time to create a fresh instance from the pool;
//! 5. the time to load the plugin, compiled with cranelift and from the
//!    precompiled cache;
//! 6. the time from activating a new version in a live slot to its serving
//!    the next chunk, and the resident memory before and after many swaps.
//!
//! Every figure is a median over many samples, after a warm-up. Run it with
//! `cargo bench -p palisade --bench plugin_runtime`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::error::Error;
use std::hint::black_box;
use std::time::{Duration, Instant};

use palisade::plugins::{
    Device, Direction, Limits, Plugin, Runtime, RuntimeConfig, Session, Slot, first_party,
};
use palisade::store::Store;

const CHUNK: usize = 4096;
const CALLS: usize = 2000;
const COLD_LOADS: usize = 20;
const CACHED_LOADS: usize = 200;
const WARMUP: usize = 200;
/// The parser state after a CONNECT of protocol level 4 (MQTT 3.1.1).
const STATE: &[u8] = &[4];

fn main() -> Result<(), Box<dyn Error>> {
    let component = first_party::component("mqtt").ok_or("mqtt is not embedded")?;
    let chunk = chunk();
    let session = Session {
        id: 1,
        device: Device {
            id: "sensor-17".into(),
            class: "thermostat".into(),
            zone: "cell-3".into(),
        },
        route: "mqtt".into(),
    };
    let runtime = runtime_with(RuntimeConfig::default())?;
    let plugin = runtime.load("mqtt", component, Limits::default())?;

    // 1. Both give the same frames, then each is timed on its own.
    let wasm = plugin.parse(&session, Direction::ToUpstream, STATE, &chunk)?;
    let native = mqtt::parse(STATE, &chunk);
    let frames = native.frame_lengths.len();
    assert_eq!(wasm.frame_lengths, native.frame_lengths, "frame lengths");
    assert_eq!(wasm.events, native.events, "wasm and native events");
    assert_eq!((&wasm.state, wasm.needed), (&native.state, native.needed));
    assert!(wasm.malformed.is_none() && native.malformed.is_none());
    let wasm_call = median(CALLS, || {
        plugin.parse(&session, Direction::ToUpstream, STATE, &chunk)
    });
    // Inside the component, the parser's result is freed by the call (the
    // canonical ABI's post-return); natively it is freed inside the timing
    // too, so both sides do the same work. What the host lifts is dropped
    // outside the timing.
    let native_call = median(CALLS, || drop(black_box(mqtt::parse(STATE, &chunk))));
    let per_frame = |d: Duration| d.as_nanos() / frames as u128;
    println!(
        "parse 4KiB/{frames} frames  wasm: median {} µs/call ({} ns/frame)  native: median {} µs/call ({} ns/frame)",
        micros(wasm_call),
        per_frame(wasm_call),
        micros(native_call),
        per_frame(native_call),
    );

    let empty_call = median(CALLS, || {
        plugin.parse(&session, Direction::ToUpstream, STATE, &[])
    });
    let native_empty = median(CALLS, || drop(black_box(mqtt::parse(STATE, &[]))));
    println!(
        "  an empty input: wasm {} µs/call, native {} µs/call (the fixed cost of a call)",
        micros(empty_call),
        micros(native_empty)
    );

    // 2. and 3.
    let ratio = native_call.as_secs_f64() / wasm_call.as_secs_f64();
    println!("throughput wasm/native: {ratio:.2} (target >= 0.5)");
    let boundary = wasm_call.saturating_sub(native_call).as_nanos() / frames as u128;
    println!("boundary cost per event: {boundary} ns (target <= 200 ns)");

    // 4. A runtime that keeps no idle instance instantiates on every call.
    let fresh_runtime = runtime_with(RuntimeConfig {
        idle_per_plugin: 0,
        ..RuntimeConfig::default()
    })?;
    let fresh = fresh_runtime.load("mqtt", component, Limits::default())?;
    let warm_protocol = median(CALLS, || plugin.protocol().unwrap());
    let fresh_protocol = median(CALLS, || fresh.protocol().unwrap());
    drop((fresh, fresh_runtime));

    // 5. and 4. on a newly loaded plugin: its first call instantiates.
    let cold = median(COLD_LOADS, || {
        runtime.load("mqtt", component, Limits::default()).unwrap()
    });
    let cache_dir = tempfile::TempDir::new()?;
    let cached_runtime = runtime_with(RuntimeConfig {
        cache_dir: Some(cache_dir.path().to_owned()),
        ..RuntimeConfig::default()
    })?;
    let (_, hit) = cached_runtime.load_cached("mqtt", component, Limits::default())?;
    assert!(!hit, "the first load fills the cache");
    let (mut loads, mut first_calls) = (Vec::new(), Vec::new());
    for i in 0..WARMUP / 10 + CACHED_LOADS {
        let start = Instant::now();
        let (plugin, hit) = cached_runtime.load_cached("mqtt", component, Limits::default())?;
        let loaded = start.elapsed();
        assert!(hit, "a load after the first is a cache hit");
        let start = Instant::now();
        black_box(plugin.protocol()?);
        let first_call = start.elapsed();
        if i >= WARMUP / 10 {
            loads.push(loaded);
            first_calls.push(first_call);
        }
    }
    let first_call = middle(first_calls);
    println!(
        "instantiate from the pool: {} µs (steady state), {} µs (first call after a load)",
        micros(fresh_protocol.saturating_sub(warm_protocol)),
        micros(first_call.saturating_sub(warm_protocol)),
    );
    println!(
        "  note: Plugin has no instantiate-only call, so this is a protocol() call that instantiates minus a warm protocol() call ({} µs). Steady state: idle_per_plugin 0, so every call takes a pool slot, instantiates and frees the slot ({} µs/call). First call after a load: on a plugin just loaded from the cache ({} µs/call).",
        micros(warm_protocol),
        micros(fresh_protocol),
        micros(first_call),
    );
    println!(
        "load mqtt.wasm ({} KiB)  compile with cranelift: median {} ms  precompiled cache hit: median {} ms",
        component.len() / 1024,
        millis(cold),
        millis(middle(loads)),
    );

    // 6. Live swap: from the operator's activate to the new version serving
    // a session's next chunk, and the memory the old versions leave.
    let slot = Slot::new(cached_runtime.load("mqtt", component, Limits::default())?);
    let to_serving = |load: &dyn Fn() -> Plugin| {
        let start = Instant::now();
        let previous = slot.activate(load()).unwrap();
        black_box(
            slot.active()
                .parse(&session, Direction::ToUpstream, STATE, &chunk)
                .unwrap(),
        );
        let elapsed = start.elapsed();
        drop(previous);
        elapsed
    };
    let rss_before = rss_kib();
    let cached_swaps: Vec<Duration> = (0..SWAPS)
        .map(|_| {
            to_serving(&|| {
                let (plugin, hit) = cached_runtime
                    .load_cached("mqtt", component, Limits::default())
                    .unwrap();
                assert!(hit);
                plugin
            })
        })
        .collect();
    let rss_after = rss_kib();
    let cold_swaps: Vec<Duration> = (0..COLD_LOADS)
        .map(|_| to_serving(&|| runtime.load("mqtt", component, Limits::default()).unwrap()))
        .collect();
    println!(
        "activate to serving: median {} ms with the precompiled artifact (target <= 10 ms), {} ms compiling cold",
        millis(middle(cached_swaps)),
        millis(middle(cold_swaps)),
    );
    println!(
        "resident memory: {} KiB before {SWAPS} swaps, {} KiB after them, the old versions drained",
        rss_before.unwrap_or(0),
        rss_after.unwrap_or(0),
    );
    Ok(())
}

const SWAPS: usize = 200;

/// This process's resident set size, from /proc.
fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A runtime with `config`, over a state store in memory.
fn runtime_with(config: RuntimeConfig) -> Result<Runtime, Box<dyn Error>> {
    Ok(Runtime::new(&config, Store::temporary()?)?)
}

/// `CHUNK` bytes of PUBLISH frames, QoS 0, of about 95 bytes each; the last
/// frame is cut short, as in a chunk read from a socket.
fn chunk() -> Vec<u8> {
    let payload: Vec<u8> = (0..60u8).map(|i| b'0' + i % 10).collect();
    let mut bytes = Vec::new();
    let mut i = 0;
    while bytes.len() < CHUNK {
        let topic = format!("site/cell-{}/sensor-{}/telemetry", i % 4, i % 32);
        let len = u16::try_from(topic.len())
            .expect("short topic")
            .to_be_bytes();
        let body = [&len[..], topic.as_bytes(), &payload].concat();
        bytes.push(0x30);
        bytes.push(u8::try_from(body.len()).expect("remaining length < 128"));
        bytes.extend_from_slice(&body);
        i += 1;
    }
    bytes.truncate(CHUNK);
    bytes
}

/// The median time of `samples` calls of `f`, after `WARMUP` calls (a tenth
/// as many for slow work). What `f` returns is dropped outside the timing.
fn median<R>(samples: usize, mut f: impl FnMut() -> R) -> Duration {
    for _ in 0..WARMUP.min(samples / 10).max(1) {
        black_box(f());
    }
    let times = (0..samples).map(|_| {
        let start = Instant::now();
        let r = black_box(f());
        let elapsed = start.elapsed();
        drop(r);
        elapsed
    });
    middle(times.collect())
}

/// The median of `times`.
fn middle(mut times: Vec<Duration>) -> Duration {
    times.sort_unstable();
    times.get(times.len() / 2).copied().unwrap_or_default()
}

fn micros(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e6)
}

fn millis(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}
