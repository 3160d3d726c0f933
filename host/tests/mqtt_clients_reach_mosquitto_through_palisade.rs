//! Real MQTT clients with issued device certificates reach a real
//! mosquitto broker through Palisade: mosquitto_pub and mosquitto_sub
//! (OpenSSL), paho-mqtt (Python's ssl), and aioquic over QUIC.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::process::Command;

use common::appliance::{
    Appliance, Mosquitto, aioquic_publish, mosquitto_pub, mosquitto_sub, peer_script, require,
    require_python, route, tls_args,
};

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
