//! Every kind of device Palisade must refuse is refused, with one log line
//! naming the device (where its certificate names one) and the reason, and
//! nothing reaches the upstream: not a connection, not a byte.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::appliance::{
    Appliance, CountingUpstream, aioquic_publish, device_tls, mosquitto_pub, require,
    require_python, route, tls_args, tls_client_with,
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    SanType,
};
use rustls::HandshakeKind;

/// An appliance whose policy lets thermostats use the MQTT routes only,
/// relaying to an upstream that counts what reaches it.
fn setup() -> (Appliance, CountingUpstream) {
    setup_with("")
}

/// [`setup`], with the `[limits]` lines `limits`. A short handshake
/// timeout is for the test about a handshake that never finishes only: on
/// a loaded machine a device's handshake (aioquic's, with a Retry) may not
/// reach its certificate within a second, and is then refused for its
/// slowness instead of its certificate.
fn setup_with(limits: &str) -> (Appliance, CountingUpstream) {
    let upstream = CountingUpstream::start();
    let addr = format!("127.0.0.1:{}", upstream.port);
    let config = [
        format!("[limits]\n{limits}"),
        route("mqtt-tls", "mqtt", "tls", Some("mqtt"), &addr),
        route("mqtt-quic", "mqtt", "quic", Some("mqtt"), &addr),
    ]
    .concat();
    let policy = r#"
        permit(principal in Class::"thermostat", action == Action::"connect", resource)
        when { resource.protocol == "mqtt" };
        permit(principal in Class::"thermostat", action in Action::"mqtt", resource);
    "#;
    (
        Appliance::start_with_policy(&config, Some(policy)),
        upstream,
    )
}

fn publish(port: u16, device: &Path) -> (bool, String) {
    let mut args = tls_args(port, device);
    args.extend(["-t", "t", "-m", "m"].map(String::from));
    mosquitto_pub(&args)
}

fn nothing_forwarded(upstream: &CountingUpstream) {
    assert_eq!(
        upstream.connections(),
        0,
        "a connection reached the upstream"
    );
    assert_eq!(upstream.bytes(), 0, "bytes reached the upstream");
}

/// Write a certificate for `device` signed by `issuer`, valid from
/// `from_days` to `to_days` from now, with the key and `ca_pem`, to `dir`.
fn craft(
    dir: &Path,
    device: &str,
    class: &str,
    issuer: &Issuer<'_, KeyPair>,
    ca_pem: &str,
    (from_days, to_days): (i64, i64),
) -> PathBuf {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, device);
    params.subject_alt_names = vec![
        SanType::URI(format!("urn:palisade:device:{device}").try_into().unwrap()),
        SanType::URI(format!("urn:palisade:class:{class}").try_into().unwrap()),
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now + time::Duration::days(from_days);
    params.not_after = now + time::Duration::days(to_days);
    let cert = params.signed_by(&key, issuer).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
    std::fs::write(dir.join("ca.pem"), ca_pem).unwrap();
    dir.to_owned()
}

#[test]
fn no_client_certificate() {
    if !require("mosquitto_pub") {
        return;
    }
    let (palisade, upstream) = setup();
    let device = palisade.issue("therm-1", "thermostat", "hall");
    let args: Vec<String> = tls_args(palisade.port("mqtt-tls"), &device)
        .into_iter()
        .take(6) // host, port and CA only
        .chain(["-t", "t", "-m", "m"].map(String::from))
        .collect();
    let (ok, _) = mosquitto_pub(&args);
    assert!(!ok);
    palisade.wait_refused(&["route=mqtt-tls", "device=-", "reason=no client certificate"]);
    nothing_forwarded(&upstream);
}

#[test]
fn certificate_from_another_ca() {
    if !require("mosquitto_pub") {
        return;
    }
    let (palisade, upstream) = setup();
    let genuine = palisade.issue("therm-1", "thermostat", "hall");
    // An impostor CA issues a certificate in the name of an enrolled device.
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::default();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Impostor CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let site_ca = std::fs::read_to_string(genuine.join("ca.pem")).unwrap();
    let dir = craft(
        &palisade.dir.path().join("impostor"),
        "therm-1",
        "thermostat",
        &issuer,
        &site_ca,
        (-1, 1),
    );
    drop(ca);
    let (ok, _) = publish(palisade.port("mqtt-tls"), &dir);
    assert!(!ok);
    palisade.wait_refused(&["device=therm-1", "certificate from an untrusted CA"]);
    nothing_forwarded(&upstream);
}

#[test]
fn expired_certificate() {
    if !require("mosquitto_pub") {
        return;
    }
    let (palisade, upstream) = setup();
    palisade.issue("therm-old", "thermostat", "hall");
    // A certificate the site CA itself signed, expired yesterday.
    let pki = palisade.data.join("pki");
    let ca_pem = std::fs::read_to_string(pki.join("ca.pem")).unwrap();
    let ca_key = KeyPair::from_pem(&std::fs::read_to_string(pki.join("ca.key")).unwrap()).unwrap();
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).unwrap();
    let dir = craft(
        &palisade.dir.path().join("expired"),
        "therm-old",
        "thermostat",
        &issuer,
        &ca_pem,
        (-3, -1),
    );
    let (ok, _) = publish(palisade.port("mqtt-tls"), &dir);
    assert!(!ok);
    palisade.wait_refused(&["device=therm-old", "reason=certificate expired"]);
    nothing_forwarded(&upstream);
}

#[test]
fn revoked_device() {
    if !require("mosquitto_pub") {
        return;
    }
    let (palisade, upstream) = setup();
    let device = palisade.issue("therm-rev", "thermostat", "hall");
    let out = palisade.cli_ok(&["pki", "revoke", "therm-rev"]);
    assert!(out.contains("revoked therm-rev"), "{out}");
    let (ok, _) = publish(palisade.port("mqtt-tls"), &device);
    assert!(!ok);
    palisade.wait_refused(&["route=mqtt-tls", "device=therm-rev", "reason=revoked"]);
    nothing_forwarded(&upstream);
    let list = palisade.cli_ok(&["pki", "list"]);
    assert!(
        list.lines()
            .any(|l| l.starts_with("therm-rev") && l.ends_with("revoked")),
        "{list}"
    );
}

#[test]
fn revoked_device_over_quic() {
    if !require_python("aioquic") {
        return;
    }
    let (palisade, upstream) = setup();
    let device = palisade.issue("therm-q", "thermostat", "hall");
    palisade.cli_ok(&["pki", "revoke", "therm-q"]);
    let out = aioquic_publish(&palisade, "mqtt-quic", &device, "t", "m");
    assert!(!out.status.success());
    palisade.wait_refused(&["route=quic", "device=therm-q", "reason=revoked"]);
    nothing_forwarded(&upstream);
}

/// A device's certificate is checked on every connection: the appliance
/// gives no session tickets, so no handshake is resumed, and a certificate
/// revoked since (its device was issued a new one) is refused even to a
/// client that kept its session.
#[test]
fn revoked_certificate_cannot_resume_its_session() {
    let (palisade, upstream) = setup();
    let old = device_tls(&palisade.issue("therm-res", "thermostat", "hall"));
    let addr = palisade.addr("mqtt-tls");
    for _ in 0..2 {
        let mut stream = tls_client_with(addr, old.clone()).unwrap();
        assert_eq!(
            stream.conn.handshake_kind(),
            Some(HandshakeKind::Full),
            "a handshake was resumed"
        );
        // Reading takes in any session ticket the appliance sends.
        stream
            .sock
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let _ = stream.read(&mut [0; 64]);
    }
    palisade.cli_ok(&["pki", "revoke", "therm-res"]);
    palisade.issue("therm-res", "thermostat", "hall");
    let reached = upstream.connections();
    let refused = match tls_client_with(addr, old) {
        Err(_) => true,
        Ok(mut stream) => {
            let _ = stream.write_all(b"\x10\x00");
            let _ = stream.flush();
            matches!(stream.read(&mut [0; 64]), Ok(0) | Err(_))
        }
    };
    assert!(refused, "the old certificate still works");
    palisade.wait_refused(&["device=therm-res", "revoked"]);
    assert_eq!(
        upstream.connections(),
        reached,
        "the old certificate reached the upstream"
    );
}

/// An appliance with the `[limits]` lines `limits`, whose policy lets every
/// device connect to its one TLS route, relaying to an upstream that
/// counts what reaches it.
fn limited(limits: &str) -> (Appliance, CountingUpstream) {
    let upstream = CountingUpstream::start();
    let addr = format!("127.0.0.1:{}", upstream.port);
    let config = format!(
        "[limits]\n{limits}{}",
        route("mqtt-tls", "mqtt", "tls", Some("mqtt"), &addr)
    );
    let policy = r#"permit(principal, action == Action::"connect", resource);"#;
    (
        Appliance::start_with_policy(&config, Some(policy)),
        upstream,
    )
}

/// Connections that never send a handshake take connection slots only up
/// to the bound per address; the device, from another address, still gets
/// one.
#[test]
fn connections_that_never_handshake_leave_slots_for_devices() {
    let (palisade, _upstream) = limited("max-connections = 4\nmax-handshakes-per-address = 2\n");
    let device = palisade.issue("therm-slot", "thermostat", "hall");
    let listener = palisade.addr("mqtt-tls");
    // Five silent connections from 127.0.0.2.
    let silent: Vec<_> = (0..5)
        .map(|_| {
            use rustix::net::{AddressFamily, SocketType, bind, connect, socket};
            let fd = socket(AddressFamily::INET, SocketType::STREAM, None).unwrap();
            bind(&fd, &std::net::SocketAddr::from(([127, 0, 0, 2], 0))).unwrap();
            connect(&fd, &listener).unwrap();
            TcpStream::from(fd)
        })
        .collect();
    palisade.wait_refused(&["peer=127.0.0.2", "too many handshakes in progress"]);
    let mut stream = tls_client_with(listener, device_tls(&device)).unwrap();
    stream.write_all(b"\x10\x00").unwrap();
    palisade.wait_log(|l| l.contains("session open") && l.contains("device=therm-slot"));
    drop(silent);
}

/// One device may not hold more connections than its share: past
/// `max-connections-per-device`, its next one is refused, and the ones it
/// holds go on.
#[test]
fn a_device_past_its_connections_is_refused() {
    let (palisade, _upstream) = limited("max-connections-per-device = 2\n");
    let tls = device_tls(&palisade.issue("therm-many", "thermostat", "hall"));
    let listener = palisade.addr("mqtt-tls");
    let held: Vec<_> = (0..2)
        .map(|_| tls_client_with(listener, tls.clone()).unwrap())
        .collect();
    common::appliance::wait_until("two sessions open", || {
        let log = palisade.log();
        log.iter()
            .filter(|l| l.contains("session open") && l.contains("device=therm-many"))
            .count()
            == 2
    });
    let _third = tls_client_with(listener, tls);
    palisade.wait_refused(&["device=therm-many", "already holds 2 connections"]);
    let log = palisade.log();
    let opened = (log.iter())
        .filter(|l| l.contains("session open") && l.contains("device=therm-many"))
        .count();
    assert_eq!(opened, 2, "{log:?}");
    drop(held);
}

#[test]
fn quarantined_device() {
    if !require("mosquitto_pub") {
        return;
    }
    let (palisade, upstream) = setup();
    let device = palisade.issue("therm-qt", "thermostat", "hall");
    palisade.cli_ok(&["device", "quarantine", "therm-qt"]);
    let (ok, _) = publish(palisade.port("mqtt-tls"), &device);
    assert!(!ok);
    palisade.wait_refused(&["device=therm-qt", "reason=quarantined"]);
    nothing_forwarded(&upstream);
    let show = palisade.cli_ok(&["device", "show", "therm-qt"]);
    assert!(show.contains("\"state\": \"quarantined\""), "{show}");
}

#[test]
fn class_not_allowed_on_the_route() {
    if !require("mosquitto_pub") {
        return;
    }
    let (palisade, upstream) = setup();
    let device = palisade.issue("cam-1", "camera", "gate");
    let (ok, _) = publish(palisade.port("mqtt-tls"), &device);
    assert!(!ok);
    palisade.wait_refused(&[
        "device=cam-1",
        "reason=policy denies class camera in zone gate on route mqtt-tls",
        "default deny",
    ]);
    nothing_forwarded(&upstream);
}

#[test]
fn bytes_that_are_not_a_client_hello() {
    let (palisade, upstream) = setup();
    let mut tcp = TcpStream::connect(palisade.addr("mqtt-tls")).unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: palisade\r\n\r\n")
        .unwrap();
    // The appliance closes the connection (after a TLS alert, at most).
    let mut rest = Vec::new();
    let _ = tcp.read_to_end(&mut rest);
    assert!(rest.len() < 16, "{rest:?}");
    palisade.wait_refused(&["route=mqtt-tls", "device=-", "reason=not a TLS ClientHello"]);
    nothing_forwarded(&upstream);
}

#[test]
fn handshake_that_never_finishes() {
    let (palisade, upstream) = setup_with("handshake-timeout-secs = 1\n");
    // Half a ClientHello record header, then silence.
    let mut tcp = TcpStream::connect(palisade.addr("mqtt-tls")).unwrap();
    tcp.write_all(&[0x16, 0x03, 0x01]).unwrap();
    palisade.wait_refused(&["route=mqtt-tls", "handshake did not finish within 1s"]);
    let mut rest = Vec::new();
    assert_eq!(tcp.read_to_end(&mut rest).unwrap_or(0), 0, "{rest:?}");
    nothing_forwarded(&upstream);
}
