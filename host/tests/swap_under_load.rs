//! Plugins swapped on a running appliance under load: devices publish
//! continuously through Palisade to a real mosquitto while an operator
//! switches the MQTT parser and a detector back and forth between two
//! versions with `palisade plugin activate`, and no connection is reset and
//! no message is lost or duplicated.
//!
//! Each device is a long-running `mosquitto_pub -l` (one connection, one
//! QoS 1 publish per line of its stdin), so a reset connection shows as a
//! publisher that exits; a subscriber on the broker itself counts what
//! arrived, per device and sequence number.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::appliance::{
    Appliance, Child, KEEP_EVERY_MESSAGE, Mosquitto, PATIENCE, first_party_registry,
    install_before_start, mosquitto_sub, palisade_in, require, route, tls_args, wait_until,
};

const DEVICES: usize = 20;
const SWAPS: usize = 100;

#[test]
fn swapping_parser_and_detector_under_load_loses_and_resets_nothing() {
    if !require("mosquitto") || !require("mosquitto_pub") || !require("mosquitto_sub") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    first_party_registry(w);
    let broker = Mosquitto::start_with(KEEP_EVERY_MESSAGE);
    let config = format!(
        "{}detectors = [\"hygiene\"]\n",
        route(
            "mqtt-tls",
            "mqtt",
            "tls",
            Some("mqtt"),
            &format!("127.0.0.1:{}", broker.port)
        ),
    );
    let appliance = Appliance::start_prepared(&config, |data| {
        install_before_start(w, data, &["mqtt", "hygiene"])
    });

    // What reaches the broker, per device.
    let mut watcher = mosquitto_sub(
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &broker.port.to_string(),
            "-q",
            "1",
            "-t",
            "load/#",
        ]
        .map(String::from),
    );
    let arrived: Arc<Mutex<BTreeMap<String, Vec<u64>>>> = Arc::default();
    {
        let arrived = arrived.clone();
        let stdout = watcher.0.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                let mut words = line.split_whitespace();
                let (Some(topic), Some(seq)) = (words.next(), words.next()) else {
                    continue;
                };
                let device = topic.trim_start_matches("load/").to_owned();
                let seq = seq.parse().unwrap();
                arrived.lock().unwrap().entry(device).or_default().push(seq);
            }
        });
    }

    // The devices: one connection each, one publish per line.
    let mut publishers = Vec::new();
    for i in 0..DEVICES {
        let device = format!("meter-{i}");
        let dir = appliance.issue(&device, "meter", "plant");
        let mut args = tls_args(appliance.port("mqtt-tls"), &dir);
        args.extend(
            [
                "-q",
                "1",
                "-l",
                "-t",
                &format!("load/{device}"),
                "-i",
                &device,
            ]
            .map(String::from),
        );
        let child = Command::new("mosquitto_pub")
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        publishers.push((device, Child(child)));
    }
    // The watcher is subscribed once a first message gets through.
    let started = Instant::now();
    loop {
        for (_, p) in &mut publishers {
            let stdin = p.0.stdin.as_mut().unwrap();
            writeln!(stdin, "0").unwrap();
            stdin.flush().unwrap();
        }
        std::thread::sleep(Duration::from_millis(100));
        let through: Vec<_> = arrived.lock().unwrap().keys().cloned().collect();
        if through.len() == DEVICES {
            break;
        }
        // Which devices, and what the appliance saw, for a failure that a
        // loaded machine showed once.
        assert!(
            started.elapsed() < PATIENCE,
            "the first publishes arrived from {through:?} only; the appliance's log:\n{}",
            appliance.log().join("\n")
        );
    }

    // Load and swaps at once: the devices publish on one thread while the
    // operator swaps on this one.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut stdins: Vec<_> = publishers
        .iter_mut()
        .map(|(_, p)| p.0.stdin.take().unwrap())
        .collect();
    let load = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut seq = 1u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for stdin in &mut stdins {
                    writeln!(stdin, "{seq}").unwrap();
                    stdin.flush().unwrap();
                }
                seq += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            (stdins, seq - 1)
        })
    };
    let data = appliance.data.to_str().unwrap();
    let mut serving = Vec::new();
    for i in 0..SWAPS {
        let version = if i % 2 == 0 { "first-party" } else { "1.0.0" };
        for plugin in ["mqtt", "hygiene"] {
            let answer = palisade_in(
                w,
                &[
                    "--data",
                    data,
                    "plugin",
                    "activate",
                    &format!("{plugin}@{version}"),
                ],
            );
            let json = &answer[answer.find('{').unwrap()..=answer.rfind('}').unwrap()];
            let answer: serde_json::Value = serde_json::from_str(json).unwrap();
            serving.push(answer["serving-after-ms"].as_f64().unwrap());
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (stdins, last) = load.join().unwrap();
    drop(stdins);

    // Every publisher ends by itself at the end of its input: a reset
    // connection would have ended it earlier, with an error.
    for (device, p) in &mut publishers {
        let status = p.0.wait().unwrap();
        let mut err = String::new();
        std::io::Read::read_to_string(p.0.stderr.as_mut().unwrap(), &mut err).unwrap();
        assert!(status.success(), "{device}'s connection failed: {err}");
    }
    wait_until("every publish arrived", || {
        let arrived = arrived.lock().unwrap();
        arrived.values().all(|seqs| seqs.contains(&last))
    });
    let arrived = arrived.lock().unwrap().clone();
    for (device, seqs) in &arrived {
        // The zeros were the warm-up; the rest are the load.
        let during: Vec<u64> = seqs.iter().copied().filter(|s| *s != 0).collect();
        let expected: Vec<u64> = (1..=last).collect();
        assert_eq!(
            during, expected,
            "{device}: messages lost, duplicated or reordered across {SWAPS} swaps"
        );
    }
    assert!(
        appliance
            .log()
            .iter()
            .filter(|l| l.contains("plugin activated"))
            .count()
            >= 2 * SWAPS,
        "the swaps happened"
    );
    serving.sort_by(f64::total_cmp);
    eprintln!(
        "{DEVICES} devices, {last} publishes each, {} swaps: none lost, duplicated or reset; \
         activate to serving (debug build, precompiled) median {:.2} ms, max {:.2} ms",
        serving.len(),
        serving[serving.len() / 2],
        serving[serving.len() - 1]
    );
    let _ = watcher.0.kill();
}
