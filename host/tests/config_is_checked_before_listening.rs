//! The configuration is checked whole before any port is bound, and the
//! embedded defaults are what the README says.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use common::appliance::palisade;

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
