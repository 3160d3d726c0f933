//! The other protocols of the embedded defaults, with real peers: libcoap's
//! coap-client over CoAP over TLS (RFC 8323, `coaps+tcp`) to libcoap's
//! coap-server, and a pymodbus Modbus/TCP Security client reading holding
//! registers from a pymodbus server. Neither protocol has a parser plugin
//! yet, so their routes relay uninspected and say so at start; the
//! Modbus/TCP Security role in the certificate is honoured by the policy.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::process::{Command, Stdio};

use common::appliance::{
    Appliance, Child, free_port, peer_script, require, require_python, route, wait_for_port,
};

#[test]
fn coap_client_reaches_a_coap_server_over_tls() {
    if !(require("coap-client-openssl") && require("coap-server-notls")) {
        return;
    }
    let port = free_port();
    let _server = Child(
        Command::new("coap-server-notls")
            .args(["-A", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for_port(port);
    let mut coap = route(
        "coap-tls",
        "coap",
        "tls",
        Some("coap"),
        &format!("127.0.0.1:{port}"),
    );
    coap.push_str("alpn = \"coap\"\n");
    let palisade = Appliance::start(&coap);
    let device = palisade.issue("soil-3", "sensor", "field");
    let out = Command::new("coap-client-openssl")
        .args(["-m", "get", "-B", "30"])
        .arg("-c")
        .arg(device.join("cert.pem"))
        .arg("-j")
        .arg(device.join("key.pem"))
        .arg("-C")
        .arg(device.join("ca.pem"))
        .arg(format!(
            "coaps+tcp://127.0.0.1:{}/",
            palisade.port("coap-tls")
        ))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("test server made with libcoap"),
        "coap-client: {stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        palisade.log().join("\n")
    );
    palisade.wait_log(|l| {
        l.contains("session open") && l.contains("device=soil-3") && l.contains("inspected=true")
    });
    // libcoap's messages, both ways, were cut and judged, none refused.
    let log = palisade.log();
    assert!(
        !log.iter()
            .any(|l| l.contains("malformed") || l.contains("denied")),
        "{}",
        log.join("\n")
    );
}

fn modbus_read(palisade: &Appliance, device: &std::path::Path) -> std::process::Output {
    Command::new("python3")
        .arg(peer_script("modbus_tls_client.py"))
        .args(["127.0.0.1", &palisade.port("modbus-tls").to_string()])
        .arg(device)
        .arg("3")
        .output()
        .unwrap()
}

#[test]
fn pymodbus_reads_holding_registers_over_modbus_tcp_security() {
    if !require_python("pymodbus") {
        return;
    }
    let port = free_port();
    let _server = Child(
        Command::new("python3")
            .arg(peer_script("modbus_server.py"))
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for_port(port);
    // HMIs may use Modbus only with the operator role in their certificate.
    let config = [route(
        "modbus-tls",
        "modbus",
        "tls",
        None,
        &format!("127.0.0.1:{port}"),
    )]
    .concat();
    let policy = r#"
        permit(principal in Class::"hmi", action == Action::"connect", resource)
        when { resource.protocol == "modbus" };
        @id("Modbus needs the operator role")
        forbid(principal, action == Action::"connect", resource)
        when { resource.protocol == "modbus" }
        unless { principal has role && principal.role == "operator" };
        permit(principal in Class::"hmi", action in Action::"modbus", resource);
    "#;
    let palisade = Appliance::start_with_policy(&config, Some(policy));
    let operator = palisade.dir.path().join("hmi-1");
    palisade.cli_ok(&[
        "pki",
        "issue",
        "hmi-1",
        "--class",
        "hmi",
        "--zone",
        "cell-1",
        "--role",
        "operator",
        "--out",
        operator.to_str().unwrap(),
    ]);
    let out = modbus_read(&palisade, &operator);
    assert!(
        out.status.success(),
        "pymodbus: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        palisade.log().join("\n")
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "17 42 7\n");

    let no_role = palisade.issue("hmi-2", "hmi", "cell-1");
    let out = modbus_read(&palisade, &no_role);
    assert!(!out.status.success());
    palisade.wait_refused(&[
        "device=hmi-2",
        "forbidden by \"Modbus needs the operator role\"",
    ]);
}
