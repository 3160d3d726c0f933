//! The configuration is checked whole before any port is bound, and the
//! embedded defaults are what the README says.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use common::appliance::{palisade, route};

#[test]
fn embedded_defaults_listen_on_loopback_for_the_four_routes() {
    let dir = tempfile::tempdir().unwrap();
    let out = palisade()
        .arg("--data")
        .arg(dir.path().join("data"))
        .args(["serve", "--print-config"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let config: toml::Value = toml::from_str(&String::from_utf8(out.stdout).unwrap()).unwrap();
    let routes: Vec<(String, String, String, String)> = config["route"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_owned(),
                r["transport"].as_str().unwrap().to_owned(),
                r["listen"].as_str().unwrap().to_owned(),
                r["upstream"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected = [
        ("mqtt-tls", "tls", "127.0.0.1:8883", "127.0.0.1:1883"),
        ("mqtt-quic", "quic", "127.0.0.1:14567", "127.0.0.1:1883"),
        ("coap-tls", "tls", "127.0.0.1:5684", "127.0.0.1:5683"),
        ("modbus-tls", "tls", "127.0.0.1:8802", "127.0.0.1:502"),
    ];
    assert_eq!(
        routes,
        expected.map(|(a, b, c, d)| (a.into(), b.into(), c.into(), d.into()))
    );
    assert!(
        config.get("policy").is_none(),
        "the embedded default policy"
    );
    // Printing the configuration touches nothing.
    assert!(!dir.path().join("data").exists());
}

#[test]
fn unknown_keys_and_bad_values_stop_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[limits]\nidle-timout-secs = 5\n", "idle-timout-secs"),
        (
            "[limits]\nmax-connections = 0\n",
            "max-connections must be more than 0",
        ),
        (
            "[[route]]\nname = \"a\"\nprotocol = \"mqtt\"\ntransport = \"tcp\"\nlisten = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:1883\"\n",
            "tcp",
        ),
        (
            "[[route]]\nname = \"a\"\nprotocol = \"mqtt\"\ntransport = \"tls\"\nlisten = \"127.0.0.1:0\"\nparser = \"no-such-parser\"\nupstream = \"127.0.0.1:1883\"\n",
            "no-such-parser",
        ),
    ];
    for (i, (config, expected)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad-{i}.toml"));
        std::fs::write(&path, config).unwrap();
        let out = palisade()
            .arg("--data")
            .arg(dir.path().join(format!("data-{i}")))
            .arg("serve")
            .arg("--config")
            .arg(&path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{config} was accepted");
        assert!(err.contains(expected), "{config}: {err}");
        assert!(!err.contains(" listening "), "{err}");
    }
}

/// An appliance whose log reader goes away (the pipe to a logger closed)
/// goes on serving, and still stops cleanly when asked: a log line that
/// cannot be written is dropped.
#[test]
fn the_appliance_outlives_its_log_reader() {
    use std::io::{BufRead, BufReader, Write};
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("palisade.toml");
    let routes = route("mqtt-tls", "mqtt", "tls", Some("mqtt"), "127.0.0.1:1");
    std::fs::write(
        &config,
        format!("[renewal]\nlisten = \"127.0.0.1:0\"\n{routes}"),
    )
    .unwrap();
    let mut child = palisade()
        .arg("--data")
        .arg(dir.path().join("data"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "palisade=debug,warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut addr = None;
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if line.contains(" listening ") && line.contains("route=mqtt-tls") {
            addr = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("addr="))
                .map(str::to_owned);
        }
        if line.contains(" ready ") {
            break;
        }
    }
    drop(lines);
    // Each of these is logged, into the closed pipe.
    for _ in 0..3 {
        let mut peer = std::net::TcpStream::connect(addr.as_deref().unwrap()).unwrap();
        let _ = peer.write_all(b"not a TLS ClientHello");
        let mut nothing = [0u8; 16];
        let _ = std::io::Read::read(&mut peer, &mut nothing);
    }
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the appliance did not stop within 20 s of SIGTERM");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
}
