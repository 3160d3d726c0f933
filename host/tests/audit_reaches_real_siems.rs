//! The audit trail reaches real SIEM receivers (rsyslog over TCP and TLS,
//! an HTTP and HTTPS webhook, a file), in order and each record once, and
//! nothing is lost while a receiver is down or refuses the appliance.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::appliance::{held_port, missing_is_fatal, wait_for_port};
use common::ca::TestCa;
use common::{Child, free_port, program, rsyslog, text_lines as lines, wait_for};
use palisade::audit::export::{DeliveryError, Exporter, SinkConfig, SyslogTransport};
use palisade::audit::{AuditLog, Entry, PluginRef};
use palisade::client_tls::ClientTls;
use palisade::plugins::{Batch, Device, Finding, Session, Severity};
use palisade::store::Store;
use rcgen::ExtendedKeyUsagePurpose;

fn session() -> Session {
    Session {
        id: 3,
        device: Device {
            id: "thermostat-12".into(),
            class: "thermostat".into(),
            zone: "floor-2".into(),
        },
        route: "mqtt".into(),
    }
}

/// `n` findings, numbered in their reasons.
fn findings(n: usize) -> Vec<Entry> {
    let mut batch = Batch::new();
    batch
        .push("mqtt.publish")
        .text("topic", "site/floor-2/hvac/cmd");
    (0..n)
        .map(|i| {
            let finding = Finding {
                event: 0,
                severity: Severity::High,
                score: 0.8,
                reason: format!("finding {i}: first publish to a command topic"),
            };
            let plugin = PluginRef {
                name: "new-topic".into(),
                version: Some("0.1.0".into()),
            };
            Entry::finding(&session(), plugin, batch.get(0), &finding)
        })
        .collect()
}

/// Run `sink`'s exporter on a runtime of its own until the returned guard
/// is dropped.
struct Running {
    stop: tokio::sync::watch::Sender<bool>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(std::time::Duration::from_secs(5));
        }
    }
}

fn export(log: &AuditLog, sink: SinkConfig) -> Running {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    runtime.spawn(Exporter::new(log.clone(), sink).run(stopped));
    Running {
        stop,
        runtime: Some(runtime),
    }
}

#[test]
fn rsyslog_gets_every_record_once_in_order_after_being_down() {
    let Some(rsyslogd) = program("rsyslogd") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let down = held_port();
    let port = down.port;
    let out = dir.path().join("siem.log");
    let store = Store::open(&dir.path().join("state")).unwrap();
    let log = AuditLog::open(&store).unwrap();
    let _exporter = export(
        &log,
        SinkConfig::Syslog {
            name: "siem".into(),
            address: format!("127.0.0.1:{port}"),
            transport: SyslogTransport::Tcp,
            tls: None,
            hostname: Some("gate-1".into()),
        },
    );

    // The SIEM is down: 600 records (three batches) wait on disk.
    let written = log.append(findings(600)).unwrap();
    assert!(wait_for(10, || log.backlog("siem").unwrap() == 600));

    drop(down);
    let _rsyslog = rsyslog(&rsyslogd, dir.path(), port, &out, "", "");
    assert_received(&out, &log, &written);
}

/// rsyslog wrote every record of `written` to `out`, once, in order, and
/// the sink `siem` has nothing left to send.
fn assert_received(out: &Path, log: &AuditLog, written: &[palisade::audit::Record]) {
    let n = written.len();
    assert!(
        wait_for(60, || lines(out).len() >= n
            && log.backlog("siem").unwrap() == 0),
        "rsyslog received {} of {n} records",
        lines(out).len()
    );
    let received = lines(out);
    assert_eq!(received.len(), n, "each record once");
    for (line, record) in received.iter().zip(written) {
        assert!(line.starts_with("<107>1 "), "{line}");
        assert!(line.contains(" gate-1 palisade - finding "), "{line}");
        assert!(
            line.contains(&format!("externalId={} ", record.id)),
            "{line}"
        );
        assert!(line.contains("suser=thermostat-12"), "{line}");
        assert!(line.contains("cs5=mqtt.publish"), "{line}");
    }
}

#[test]
fn a_webhook_that_refuses_at_first_gets_every_record_once() {
    let Some(python) = program("python3") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let out = dir.path().join("webhook.jsonl");
    let _server = webhook_server(&python, port, &out, &["--fail".as_ref(), "2".as_ref()]);

    let store = Store::temporary().unwrap();
    let log = AuditLog::open(&store).unwrap();
    let written = log.append(findings(300)).unwrap();
    let _exporter = export(
        &log,
        SinkConfig::Webhook {
            name: "webhook".into(),
            url: format!("http://127.0.0.1:{port}/palisade/audit"),
            tls: None,
            authorization_file: None,
        },
    );
    let more = log.append(findings(5)).unwrap();
    assert!(
        wait_for(60, || lines(&out).len() >= 305),
        "the webhook received {} of 305 records",
        lines(&out).len()
    );
    let expected: Vec<u64> = written.iter().chain(&more).map(|r| r.id).collect();
    assert_eq!(
        ids(&out),
        expected,
        "in order, each once, after two refusals"
    );
}

/// tests/peers/webhook.py on `port`, appending the records it takes to
/// `out`, with `args`; once it listens.
fn webhook_server(python: &Path, port: u16, out: &Path, args: &[&std::ffi::OsStr]) -> Child {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/peers/webhook.py");
    let mut server = Child(
        Command::new(python)
            .arg(script)
            .args(["--port", &port.to_string(), "--out"])
            .arg(out)
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut ready = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(server.0.stdout.take().unwrap()),
        &mut ready,
    )
    .unwrap();
    assert_eq!(ready.trim(), "ready");
    server
}

/// The identifiers of the records in the JSON lines of `out`, in order.
fn ids(out: &Path) -> Vec<u64> {
    lines(out)
        .iter()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

#[test]
fn a_file_sink_appends_json_lines_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("audit.jsonl");
    let sink = || SinkConfig::File {
        name: "file".into(),
        path: out.clone(),
    };
    let state = dir.path().join("state");
    {
        let store = Store::open(&state).unwrap();
        let log = AuditLog::open(&store).unwrap();
        log.append(findings(3)).unwrap();
        let _exporter = export(&log, sink());
        assert!(wait_for(20, || lines(&out).len() == 3));
    }
    let store = Store::open(&state).unwrap();
    let log = AuditLog::open(&store).unwrap();
    log.append(findings(2)).unwrap();
    let _exporter = export(&log, sink());
    assert!(wait_for(20, || lines(&out).len() == 5), "{:?}", lines(&out));
    let first: serde_json::Value = serde_json::from_str(&lines(&out)[0]).unwrap();
    assert_eq!(first["device"]["id"], "thermostat-12");
    assert_eq!(
        first["what"]["reason"],
        "finding 0: first publish to a command topic"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&out).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

/// Whether rsyslog's network stream driver `name` (`gtls`: package
/// rsyslog-gnutls) is installed.
fn rsyslog_driver(name: &str) -> bool {
    let file = format!("lmnsd_{name}.so");
    let found = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .any(|arch| arch.path().join("rsyslog").join(&file).is_file())
        || Path::new("/usr/lib/rsyslog").join(&file).is_file();
    missing_is_fatal(found, &format!("rsyslog's {name} driver"))
}

#[test]
fn rsyslog_over_tls_takes_records_only_from_a_client_it_trusts() {
    let Some(rsyslogd) = program("rsyslogd") else {
        return;
    };
    if !rsyslog_driver("gtls") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "siem-ca");
    let (cert, key) = ca.leaf("siem.plant", ExtendedKeyUsagePurpose::ServerAuth);
    let (client_cert, client_key) = ca.leaf("gate-1", ExtendedKeyUsagePurpose::ClientAuth);
    let port = free_port();
    let out = dir.path().join("siem.log");
    // A receiver that takes messages only from clients with a certificate
    // of its CA.
    let _rsyslog = rsyslog(
        &rsyslogd,
        dir.path(),
        port,
        &out,
        &format!(
            r#"DefaultNetstreamDriver="gtls" DefaultNetstreamDriverCAFile="{}" DefaultNetstreamDriverCertFile="{}" DefaultNetstreamDriverKeyFile="{}""#,
            ca.cert.display(),
            cert.display(),
            key.display()
        ),
        r#"StreamDriver.Name="gtls" StreamDriver.Mode="1" StreamDriver.AuthMode="x509/certvalid""#,
    );
    wait_for_port(port);

    let store = Store::open(&dir.path().join("state")).unwrap();
    let log = AuditLog::open(&store).unwrap();
    let written = log.append(findings(300)).unwrap();
    let sink = |tls: ClientTls| SinkConfig::Syslog {
        name: "siem".into(),
        address: format!("127.0.0.1:{port}"),
        transport: SyslogTransport::Tls,
        tls: Some(tls),
        hostname: Some("gate-1".into()),
    };
    let trusting = |ca: &Path| ClientTls {
        ca: Some(ca.to_owned()),
        server_name: Some("siem.plant".into()),
        ..ClientTls::default()
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    // A receiver whose certificate is not of the CA the sink trusts, and a
    // sink without the client certificate the receiver wants: each
    // attempt fails, and the records wait.
    let rogue = TestCa::new(dir.path(), "rogue-ca");
    let attempts = [
        (trusting(&rogue.cert), "invalid peer certificate"),
        // Refused after the handshake: reset, or closed before the batch
        // was taken.
        (trusting(&ca.cert), ""),
    ];
    for (tls, error) in attempts {
        let mut exporter = Exporter::new(log.clone(), sink(tls));
        for _ in 0..3 {
            let attempt = rt.block_on(exporter.deliver_next());
            let refused = match &attempt {
                Err(DeliveryError::Io(e)) => e.to_string().contains(error),
                Err(DeliveryError::Unread(_)) => error.is_empty(),
                _ => false,
            };
            assert!(refused, "{attempt:?}");
        }
        assert_eq!(log.backlog("siem").unwrap(), 300);
    }
    assert!(lines(&out).is_empty(), "{:?}", lines(&out));

    let _exporter = export(
        &log,
        sink(ClientTls {
            client_cert: Some(client_cert),
            client_key: Some(client_key),
            ..trusting(&ca.cert)
        }),
    );
    let more = log.append(findings(5)).unwrap();
    let all: Vec<_> = written.into_iter().chain(more).collect();
    assert_received(&out, &log, &all);
}

#[test]
fn an_https_webhook_gets_records_with_the_authorization_it_wants() {
    let Some(python) = program("python3") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "siem-ca");
    let (cert, key) = ca.leaf("siem.plant", ExtendedKeyUsagePurpose::ServerAuth);
    let port = free_port();
    let out = dir.path().join("webhook.jsonl");
    let _server = webhook_server(
        &python,
        port,
        &out,
        &[
            "--tls".as_ref(),
            cert.as_os_str(),
            key.as_os_str(),
            "--authorization".as_ref(),
            "Splunk 5e3f-aa10".as_ref(),
        ],
    );
    let token = dir.path().join("token");
    std::fs::write(&token, "Splunk 5e3f-aa10\n").unwrap();

    let store = Store::temporary().unwrap();
    let log = AuditLog::open(&store).unwrap();
    let written = log.append(findings(300)).unwrap();
    let sink = |authorization_file: Option<&Path>| SinkConfig::Webhook {
        name: "webhook".into(),
        url: format!("https://127.0.0.1:{port}/services/collector"),
        tls: Some(ClientTls {
            ca: Some(ca.cert.clone()),
            server_name: Some("siem.plant".into()),
            ..ClientTls::default()
        }),
        authorization_file: authorization_file.map(Path::to_owned),
    };
    // Without the token the SIEM answers 401, and the records wait.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut exporter = Exporter::new(log.clone(), sink(None));
    let attempt = rt.block_on(exporter.deliver_next());
    assert!(
        matches!(&attempt, Err(DeliveryError::Refused(status)) if status.contains("401")),
        "{attempt:?}"
    );
    assert_eq!(log.backlog("webhook").unwrap(), 300);

    let _exporter = export(&log, sink(Some(&token)));
    assert!(
        wait_for(60, || lines(&out).len() >= 300),
        "the webhook received {} of 300 records",
        lines(&out).len()
    );
    assert_eq!(ids(&out), written.iter().map(|r| r.id).collect::<Vec<_>>());
}
