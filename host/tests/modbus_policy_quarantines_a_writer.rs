//! Zero trust on a PLC, with a real Modbus client (pymodbus over TLS) and a
//! real Modbus server (pymodbus): a device allowed only to read holding
//! registers 0-99 reads them; a read outside the range never reaches the
//! server; a write never reaches it either and quarantines the device, as
//! the policy says: its other open session closes, it cannot reconnect, not
//! even after a restart, until an operator releases it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use common::appliance::{
    Appliance, Child, free_port, peer_script, require_python, route, tls_client, wait_for_port,
    wait_until,
};

const POLICY: &str = r#"
@id("readers connect over Modbus")
permit(principal in Class::"plc-reader", action == Action::"connect", resource)
when { resource.protocol == "modbus" };

@id("the PLC may answer")
permit(principal in Class::"plc-reader", action in Action::"modbus", resource)
when { context.direction == "to-device" };

@id("readers read holding registers 0-99")
permit(principal in Class::"plc-reader", action == Action::"modbus.read", resource)
when {
    context["register-type"] == "holding-register" &&
    context.address >= 0 && context.address + context.count <= 100
};

@id("a reader that writes is quarantined")
@severity("critical")
@response("quarantine-device")
forbid(
    principal in Class::"plc-reader",
    action in [Action::"modbus.write", Action::"modbus.read-write"],
    resource
);
"#;

/// Run pymodbus operations in one session; one JSON value per operation.
fn session(palisade: &Appliance, device: &Path, ops: &[&str]) -> Vec<serde_json::Value> {
    let out = Command::new("python3")
        .arg(peer_script("modbus_session.py"))
        .args(["127.0.0.1", &palisade.port("modbus-tls").to_string()])
        .arg(device)
        .args(ops)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let results: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        results.len(),
        ops.len(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    results
}

/// A Modbus read request (MBAP + PDU) of `count` holding registers at 0.
fn read_request(transaction: u16, count: u16) -> Vec<u8> {
    let mut f = transaction.to_be_bytes().to_vec();
    f.extend_from_slice(&[0, 0, 0, 6, 1, 3, 0, 0]);
    f.extend_from_slice(&count.to_be_bytes());
    f
}

#[test]
fn a_reader_reads_its_range_and_is_quarantined_for_a_write() {
    if !require_python("pymodbus") {
        return;
    }
    let port = free_port();
    let mut server = Child(
        Command::new("python3")
            .arg(peer_script("modbus_server.py"))
            .arg(port.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let reached = Arc::new(Mutex::new(Vec::<String>::new()));
    let log = reached.clone();
    let stdout = server.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            log.lock().unwrap().push(line);
        }
    });
    wait_for_port(port);
    let config = route(
        "modbus-tls",
        "modbus",
        "tls",
        Some("modbus"),
        &format!("127.0.0.1:{port}"),
    );
    let mut palisade = Appliance::start_with_policy(&config, Some(POLICY));
    let hmi = palisade.issue("hmi-7", "plc-reader", "cell-2");

    // The device holds a second session open: a read, then waiting.
    let mut held = tls_client(palisade.addr("modbus-tls"), &hmi);
    held.write_all(&read_request(900, 2)).unwrap();
    let mut answer = [0u8; 13];
    held.read_exact(&mut answer).unwrap();
    assert_eq!(&answer[7..9], &[3, 4], "two registers read");
    let closed = Arc::new(AtomicBool::new(false));
    let flag = closed.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while matches!(held.read(&mut buf), Ok(n) if n > 0) {}
        flag.store(true, Ordering::SeqCst);
    });

    let results = session(
        &palisade,
        &hmi,
        &[
            "read:0:100",
            "read:100:10:dropped",
            "write:5:4242:dropped",
            "read:0:1",
        ],
    );
    // Its range: read, all of it.
    assert_eq!(results[0]["ok"], true, "{results:?}");
    let registers = results[0]["registers"].as_array().unwrap();
    assert_eq!(registers.len(), 100);
    assert_eq!(
        &registers[..4],
        &[17, 42, 7, 1999].map(serde_json::Value::from)
    );
    // Outside it: dropped, so unanswered.
    assert_eq!(results[1]["ok"], false, "{results:?}");
    // A write: dropped, the device quarantined, the session closed.
    assert_eq!(results[2]["ok"], false, "{results:?}");
    assert_eq!(results[3]["ok"], false, "{results:?}");
    palisade.wait_log(|l| l.contains("device quarantined") && l.contains("device=hmi-7"));
    wait_until("the device's other session closed", || {
        closed.load(Ordering::SeqCst)
    });
    // Only the allowed reads reached the PLC. The server printed the read
    // before it answered; the thread reading its output may lag.
    wait_until("the PLC's line for the allowed read", || {
        reached.lock().unwrap().contains(&"read 0 100".to_owned())
    });
    let seen = reached.lock().unwrap().clone();
    assert!(
        !seen
            .iter()
            .any(|l| l.starts_with("write") || l.starts_with("read 100")),
        "the PLC saw what the policy denied: {seen:?}"
    );

    // It cannot reconnect, not even after a restart.
    assert_eq!(session(&palisade, &hmi, &["read:0:1"])[0]["ok"], false);
    palisade.wait_refused(&["device=hmi-7", "reason=quarantined"]);
    palisade.terminate();
    let config = palisade.dir.path().join("palisade.toml");
    palisade.restart(&config);
    assert_eq!(session(&palisade, &hmi, &["read:0:1"])[0]["ok"], false);
    palisade.wait_refused(&["device=hmi-7", "reason=quarantined"]);
    // Until an operator releases it.
    palisade.cli_ok(&["device", "release", "hmi-7"]);
    let after = session(&palisade, &hmi, &["read:0:2"]);
    assert_eq!(
        after[0]["registers"],
        serde_json::json!([17, 42]),
        "{after:?}"
    );
    // The write never happened.
    let seen = reached.lock().unwrap().clone();
    assert!(!seen.iter().any(|l| l.starts_with("write")), "{seen:?}");
}
