//! Real MQTT clients with issued device certificates reach a real
//! mosquitto broker through Palisade: mosquitto_pub and mosquitto_sub
//! (OpenSSL), paho-mqtt (Python's ssl), and aioquic over QUIC.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::io::{BufRead, Write};
use std::process::Command;

use rcgen::ExtendedKeyUsagePurpose;

use common::appliance::{
    Appliance, Mosquitto, aioquic, aioquic_publish, free_port, mosquitto_pub, mosquitto_sub,
    peer_script, require, require_python, route, tls_args, wait_for_port,
};
use common::ca::TestCa;

fn appliance(broker: &Mosquitto) -> Appliance {
    let upstream = format!("127.0.0.1:{}", broker.port);
    Appliance::start(
        &[
            route("mqtt-tls", "mqtt", "tls", Some("mqtt"), &upstream),
            route("mqtt-quic", "mqtt", "quic", Some("mqtt"), &upstream),
        ]
        .concat(),
    )
}

fn direct_sub(broker: &Mosquitto, topic: &str) -> String {
    let out = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &broker.port.to_string()])
        .args(["-t", topic, "-C", "1", "-W", "30", "-v"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn mosquitto_clients_publish_and_receive_through_palisade() {
    if !(require("mosquitto") && require("mosquitto_pub") && require("mosquitto_sub")) {
        return;
    }
    let broker = Mosquitto::start();
    let mut palisade = appliance(&broker);
    let port = palisade.port("mqtt-tls");
    let sensor = palisade.issue("therm-1", "thermostat", "hall");
    let display = palisade.issue("display-1", "display", "hall");

    let mut publish = tls_args(port, &sensor);
    publish.extend(["-t", "site/hall/temp", "-m", "21.5", "-r", "-q", "1"].map(String::from));
    let (ok, err) = mosquitto_pub(&publish);
    assert!(
        ok,
        "mosquitto_pub failed: {err}\n{}",
        palisade.log().join("\n")
    );

    // The retained message reached the broker...
    assert_eq!(
        direct_sub(&broker, "site/hall/temp"),
        "site/hall/temp 21.5\n"
    );
    // ...and comes back to a subscriber through Palisade.
    let mut subscribe = tls_args(port, &display);
    subscribe.extend(["-t", "site/hall/#", "-C", "1", "-W", "30"].map(String::from));
    let (status, out, err) = mosquitto_sub(&subscribe).output();
    assert!(status.success(), "mosquitto_sub failed: {err}");
    assert_eq!(out, "site/hall/temp 21.5\n");

    palisade.wait_log(|l| {
        l.contains("session open") && l.contains("device=therm-1") && l.contains("inspected=true")
    });
    palisade.wait_log(|l| l.contains("session closed") && l.contains("device=display-1"));

    // SIGTERM: the appliance stops cleanly.
    let status = palisade.terminate();
    assert!(status.success(), "{status}");
}

#[test]
fn paho_mqtt_round_trips_through_palisade() {
    if !(require("mosquitto") && require_python("paho.mqtt.client")) {
        return;
    }
    let broker = Mosquitto::start();
    let palisade = appliance(&broker);
    let device = palisade.issue("paho-1", "gateway", "yard");
    let out = Command::new("python3")
        .arg(peer_script("paho_roundtrip.py"))
        .args(["127.0.0.1", &palisade.port("mqtt-tls").to_string()])
        .arg(&device)
        .args(["yard/paho/status", "online"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "paho failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        palisade.log().join("\n")
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "received online\n");
}

#[test]
fn aioquic_mqtt_over_quic_reaches_the_broker() {
    if !(require("mosquitto") && require("mosquitto_sub") && require_python("aioquic")) {
        return;
    }
    let broker = Mosquitto::start();
    let palisade = appliance(&broker);
    let device = palisade.issue("quic-1", "meter", "roof");
    let out = aioquic_publish(&palisade, "mqtt-quic", &device, "roof/meter/kwh", "1234");
    assert!(
        out.status.success(),
        "aioquic failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        palisade.log().join("\n")
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "puback\n");
    assert_eq!(
        direct_sub(&broker, "roof/meter/kwh"),
        "roof/meter/kwh 1234\n"
    );
    palisade.wait_log(|l| {
        l.contains("session open") && l.contains("route=mqtt-quic") && l.contains("device=quic-1")
    });
}

/// What a device may make the appliance hold is bounded per connection,
/// as aioquic reads the appliance's transport parameters: no datagrams,
/// 64 KiB per stream, 256 KiB per connection.
#[test]
fn a_quic_device_may_not_make_the_appliance_hold_much() {
    let Some(read) = what_aioquic_reads("quic-2", "limits") else {
        return;
    };
    assert_eq!(
        read,
        "datagrams=None connection-window=262144 stream-window=65536\n"
    );
}

/// A QUIC device proves it receives at its address before it takes a
/// connection slot, and keeps that address: as aioquic sees it, the first
/// packet the appliance sends is a retry, and its transport parameters
/// disable active migration.
#[test]
fn a_quic_device_proves_its_address_and_keeps_it() {
    let Some(read) = what_aioquic_reads("quic-4", "address") else {
        return;
    };
    assert_eq!(read, "first-packet=retry disable-active-migration=True\n");
}

/// What aioquic, connected as device `device` to an appliance in front of
/// mosquitto, prints in `mode` (see tests/peers/aioquic_mqtt.py); `None`
/// when mosquitto or aioquic is missing (a failure under `CI=true`).
fn what_aioquic_reads(device: &str, mode: &str) -> Option<String> {
    if !(require("mosquitto") && require_python("aioquic")) {
        return None;
    }
    let broker = Mosquitto::start();
    let palisade = appliance(&broker);
    let device = palisade.issue(device, "meter", "roof");
    let out = aioquic(&palisade, "mqtt-quic", &device, &["t", "m", mode])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Each QUIC stream is a session of its own, which the connection policy
/// in force when it opens decides: after a reload that takes the route
/// from the device's class, a new stream on a connection opened before is
/// refused.
#[test]
fn a_new_quic_stream_is_judged_by_the_policy_in_force() {
    if !(require("mosquitto") && require_python("aioquic")) {
        return;
    }
    let broker = Mosquitto::start();
    let palisade = appliance(&broker);
    let device = palisade.issue("quic-3", "meter", "roof");
    let mut peer = aioquic(
        &palisade,
        "mqtt-quic",
        &device,
        &["roof/meter/kwh", "1", "second"],
    )
    .stdin(std::process::Stdio::piped())
    .stdout(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    let mut lines = std::io::BufReader::new(peer.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "puback");
    std::fs::write(
        palisade.data.join("policy.cedar"),
        "permit(principal in Class::\"meter\", action == Action::\"connect\", resource == Route::\"mqtt-tls\");\n\
         permit(principal in Class::\"meter\", action in Action::\"mqtt\", resource);\n",
    )
    .unwrap();
    palisade.wait_log(|l| l.contains("policy reloaded"));
    writeln!(peer.stdin.take().unwrap()).unwrap();
    assert_eq!(lines.next().unwrap().unwrap(), "no connack");
    palisade.wait_refused(&["device=quic-3", "policy denies"]);
    assert!(peer.wait().unwrap().success());
}

/// Each QUIC stream is a session, with an upstream connection of its own,
/// and counts among the device's connections: past
/// `max-connections-per-device` (here 2: the connection and one stream), a
/// new stream is refused, and the stream the device holds goes on.
#[test]
fn a_quic_device_holds_no_more_streams_than_its_connection_limit() {
    if !(require("mosquitto") && require_python("aioquic")) {
        return;
    }
    let broker = Mosquitto::start();
    let upstream = format!("127.0.0.1:{}", broker.port);
    let palisade = Appliance::start(&format!(
        "[limits]\nmax-connections-per-device = 2\n{}",
        route("mqtt-quic", "mqtt", "quic", Some("mqtt"), &upstream)
    ));
    let device = palisade.issue("quic-4", "meter", "roof");
    let out = aioquic(
        &palisade,
        "mqtt-quic",
        &device,
        &["roof/meter/kwh", "1", "streams"],
    )
    .output()
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout, "puback\nno connack\npuback\n");
    palisade.wait_refused(&["device=quic-4", "already holds 2 connections and streams"]);
    let opened = (palisade.log().iter())
        .filter(|l| l.contains("session open") && l.contains("device=quic-4"))
        .count();
    assert_eq!(opened, 1);
}

#[test]
fn upstream_over_tls_with_a_client_certificate() {
    if !(require("mosquitto") && require("mosquitto_pub") && require("mosquitto_sub")) {
        return;
    }
    // The broker's own CA: it issues the broker's server certificate and
    // the certificate Palisade presents to the broker.
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "broker-ca");
    let (broker_cert, broker_key) = ca.leaf("broker.plant", ExtendedKeyUsagePurpose::ServerAuth);
    let (client_cert, client_key) = ca.leaf("palisade", ExtendedKeyUsagePurpose::ClientAuth);
    let ca_file = ca.cert.display();
    let (broker_cert, broker_key) = (broker_cert.display(), broker_key.display());
    let (client_cert, client_key) = (client_cert.display(), client_key.display());
    let tls_port = free_port();
    let broker = Mosquitto::start_with(&format!(
        "listener {tls_port} 127.0.0.1\ncafile {ca_file}\ncertfile {broker_cert}\nkeyfile {broker_key}\nrequire_certificate true\n"
    ));
    wait_for_port(tls_port);
    let mut config = route(
        "mqtt-tls",
        "mqtt",
        "tls",
        Some("mqtt"),
        &format!("127.0.0.1:{tls_port}"),
    );
    config.push_str(&format!(
        "upstream-tls = {{ ca = \"{ca_file}\", server-name = \"broker.plant\", client-cert = \"{client_cert}\", client-key = \"{client_key}\" }}\n"
    ));
    let palisade = Appliance::start(&config);
    let device = palisade.issue("therm-9", "thermostat", "hall");
    let mut publish = tls_args(palisade.port("mqtt-tls"), &device);
    publish.extend(["-t", "plant/t", "-m", "19.0", "-r", "-q", "1"].map(String::from));
    let (ok, err) = mosquitto_pub(&publish);
    assert!(
        ok,
        "mosquitto_pub failed: {err}\n{}",
        palisade.log().join("\n")
    );
    assert_eq!(direct_sub(&broker, "plant/t"), "plant/t 19.0\n");
}
