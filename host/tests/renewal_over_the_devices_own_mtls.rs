//! A device renews its certificate over its own mTLS connection with EST
//! `simplereenroll`, using nothing but openssl and curl; the new
//! certificate says what the old one said, and the appliance accepts it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::process::Command;

use common::appliance::{Appliance, CountingUpstream, outcome, require, route};

fn sh(script: &str, dir: &std::path::Path) -> (bool, String, String) {
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .current_dir(dir)
        .output()
        .unwrap();
    outcome(&out)
}

#[test]
fn device_renews_with_est_simplereenroll() {
    if !(require("openssl") && require("curl") && require("base64")) {
        return;
    }
    let upstream = CountingUpstream::start();
    let palisade = Appliance::start(&format!(
        "[renewal]\nlisten = \"127.0.0.1:0\"\n[pki]\ndevice-cert-hours = 48\n{}",
        route(
            "mqtt-tls",
            "mqtt",
            "tls",
            Some("mqtt"),
            &format!("127.0.0.1:{}", upstream.port)
        )
    ));
    let device = palisade.issue("valve-4", "valve", "pump-house");
    let url = format!(
        "https://127.0.0.1:{}/.well-known/est/simplereenroll",
        palisade.port("renewal")
    );
    let script = format!(
        r#"
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out new-key.pem 2>/dev/null
openssl req -new -key new-key.pem -subj /CN=whatever-i-ask-for -outform DER | base64 > req.b64
curl --silent --show-error --fail --cert cert.pem --key key.pem --cacert ca.pem \
     -H 'Content-Type: application/pkcs10' --data-binary @req.b64 '{url}' > resp.b64
base64 -d resp.b64 | openssl pkcs7 -inform DER -print_certs > chain.pem
openssl x509 -in chain.pem -out new-cert.pem
openssl verify -CAfile ca.pem new-cert.pem
openssl x509 -in new-cert.pem -noout -ext subjectAltName -enddate
"#
    );
    let (ok, out, err) = sh(&script, &device);
    assert!(ok, "{err}\n{}", palisade.log().join("\n"));
    assert!(out.contains("new-cert.pem: OK"), "{out}");
    // The new certificate names the device as the registry knows it, not
    // what the request asked for.
    assert!(out.contains("URI:urn:palisade:device:valve-4"), "{out}");
    assert!(out.contains("URI:urn:palisade:class:valve"), "{out}");
    assert!(!out.contains("whatever-i-ask-for"), "{out}");
    palisade.wait_log(|l| l.contains("renewal served") && l.contains("device=valve-4"));
    let list = palisade.cli_ok(&["pki", "list"]);
    assert_eq!(
        list.lines().filter(|l| l.starts_with("valve-4")).count(),
        2,
        "{list}"
    );

    // The renewed certificate is accepted: it fetches the CA over EST.
    let cacerts = format!(
        "curl --silent --show-error --fail --cert new-cert.pem --key new-key.pem --cacert ca.pem \
         https://127.0.0.1:{}/.well-known/est/cacerts | base64 -d | openssl pkcs7 -inform DER -print_certs | openssl x509 -noout -subject",
        palisade.port("renewal")
    );
    let (ok, out, err) = sh(&cacerts, &device);
    assert!(ok, "{err}");
    assert!(out.contains("Palisade site CA"), "{out}");

    // A garbage request is refused with a 400, and nothing is issued.
    let garbage = format!(
        "curl --silent --cert cert.pem --key key.pem --cacert ca.pem -o /dev/null -w '%{{http_code}}' \
         --data-binary 'not a request' '{url}'"
    );
    let (_, code, _) = sh(&garbage, &device);
    assert_eq!(code, "400");
    let list = palisade.cli_ok(&["pki", "list"]);
    assert_eq!(list.lines().filter(|l| l.starts_with("valve-4")).count(), 2);
}
