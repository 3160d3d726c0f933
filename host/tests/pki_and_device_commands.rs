//! `palisade pki` and `palisade device` as an operator uses them, with and
//! without a running appliance, checked with openssl; and a device of a
//! trusted external CA, enrolled with `device add`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

use common::appliance::{Appliance, CountingUpstream, PATIENCE, outcome, palisade, require, route};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};

fn run(data: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = palisade()
        .arg("--data")
        .arg(data)
        .args(args)
        .output()
        .unwrap();
    outcome(&out)
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn issue_writes_files_openssl_accepts() {
    if !require("openssl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Before init there is no CA to issue from.
    let (ok, _, err) = run(
        &data,
        &["pki", "issue", "x", "--class", "c", "--out", "/nonexistent"],
    );
    assert!(!ok);
    assert!(err.contains("pki init"), "{err}");

    let (ok, out, _) = run(&data, &["pki", "init"]);
    assert!(ok && out.starts_with("created the site CA"), "{out}");
    let (ok, out, _) = run(&data, &["pki", "init"]);
    assert!(ok && out.starts_with("the site CA exists already"), "{out}");
    assert_eq!(mode(&data.join("pki/ca.key")), 0o600);
    assert_eq!(mode(&data), 0o700);

    let out_dir = dir.path().join("plc-7");
    let (ok, out, err) = run(
        &data,
        &[
            "pki",
            "issue",
            "plc-7",
            "--class",
            "plc",
            "--zone",
            "cell-2",
            "--hours",
            "24",
            "--role",
            "engineer",
            "--out",
            out_dir.to_str().unwrap(),
        ],
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("issued certificate") && out.contains("to plc-7"),
        "{out}"
    );
    assert_eq!(mode(&out_dir.join("key.pem")), 0o600);

    let verify = Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(out_dir.join("ca.pem"))
        .arg(out_dir.join("cert.pem"))
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    let text = Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(out_dir.join("cert.pem"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    for expected in [
        "URI:urn:palisade:device:plc-7",
        "URI:urn:palisade:class:plc",
        "URI:urn:palisade:zone:cell-2",
        "1.3.6.1.4.1.50316.802.1",
        "TLS Web Client Authentication",
    ] {
        assert!(text.contains(expected), "{expected} missing from\n{text}");
    }
    // The key matches the certificate.
    let pubkey = |args: &[&str], file: &str| {
        Command::new("openssl")
            .args(args)
            .arg(out_dir.join(file))
            .output()
            .unwrap()
            .stdout
    };
    assert_eq!(
        pubkey(&["pkey", "-pubout", "-in"], "key.pem"),
        pubkey(&["x509", "-noout", "-pubkey", "-in"], "cert.pem")
    );

    let (ok, list, _) = run(&data, &["pki", "list"]);
    assert!(ok);
    assert!(
        list.lines()
            .any(|l| l.starts_with("plc-7") && l.ends_with("valid")),
        "{list}"
    );
    let (ok, show, _) = run(&data, &["device", "show", "plc-7"]);
    assert!(ok);
    let show: serde_json::Value = serde_json::from_str(&show).unwrap();
    assert_eq!(show["device"]["class"], "plc");
    assert_eq!(show["device"]["zone"], "cell-2");
    assert_eq!(show["device"]["state"], "active");

    // Bad names and unknown devices are refused, clearly.
    let (ok, _, err) = run(
        &data,
        &["pki", "issue", "a/b", "--class", "c", "--out", "/tmp/x"],
    );
    assert!(!ok && err.contains("device id \"a/b\""), "{err}");
    let (ok, _, err) = run(&data, &["device", "quarantine", "ghost"]);
    assert!(!ok && err.contains("no device ghost"), "{err}");
    let (ok, _, err) = run(&data, &["pki", "revoke", "ghost"]);
    assert!(!ok && err.contains("no device ghost"), "{err}");
}

#[test]
fn device_of_an_external_ca_needs_enrolling() {
    if !require("openssl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // An enterprise CA, and a certificate it issued naming the device by CN.
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::default();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Enterprise Issuing CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, "ext-7");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &issuer).unwrap();
    let device = dir.path().join("ext-7");
    std::fs::create_dir_all(&device).unwrap();
    std::fs::write(device.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(device.join("key.pem"), key.serialize_pem()).unwrap();
    let enterprise = dir.path().join("enterprise-ca.pem");
    std::fs::write(&enterprise, ca.pem()).unwrap();

    let upstream = CountingUpstream::start();
    let config = format!(
        "[pki]\nexternal-ca = [\"{}\"]\n{}",
        enterprise.display(),
        route(
            "plc-tls",
            "modbus",
            "tls",
            None,
            &format!("127.0.0.1:{}", upstream.port)
        )
    );
    let palisade = Appliance::start(&config);
    std::fs::write(
        device.join("ca.pem"),
        std::fs::read(palisade.data.join("pki/ca.pem")).unwrap(),
    )
    .unwrap();
    let connect = || {
        let mut child = Command::new("openssl")
            .args(["s_client", "-quiet", "-no_ign_eof", "-connect"])
            .arg(palisade.addr("plc-tls").to_string())
            .arg("-cert")
            .arg(device.join("cert.pem"))
            .arg("-key")
            .arg(device.join("key.pem"))
            .arg("-CAfile")
            .arg(device.join("ca.pem"))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        let _ = stdin.write_all(b"hello plc\n");
        drop(stdin);
        let _ = child.wait();
    };
    connect();
    palisade.wait_refused(&["device=ext-7", "reason=not enrolled"]);
    assert_eq!(upstream.connections(), 0);

    palisade.cli_ok(&[
        "device", "add", "ext-7", "--class", "plc", "--zone", "line-1",
    ]);
    connect();
    palisade.wait_log(|l| l.contains("session open") && l.contains("device=ext-7"));
    let start = std::time::Instant::now();
    while upstream.bytes() < b"hello plc\n".len() {
        assert!(
            start.elapsed() < PATIENCE,
            "the bytes never reached the upstream"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let listing = palisade.cli_ok(&["device", "list"]);
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("ext-7") && l.contains("external") && !l.ends_with("never")),
        "{listing}"
    );
}
