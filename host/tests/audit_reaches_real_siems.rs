//! The audit trail reaches real SIEM receivers (rsyslog over TCP, an HTTP
//! webhook, a file), in order and each record once, and nothing is lost
//! while a receiver is down.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::{Child, free_port, program, wait_for};
use palisade::audit::export::{Exporter, SinkConfig, SyslogTransport};
use palisade::audit::{AuditLog, Entry, PluginRef};
use palisade::plugins::{Batch, Device, Finding, Session, Severity};
use palisade::store::Store;

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

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn rsyslog_gets_every_record_once_in_order_after_being_down() {
    let Some(rsyslogd) = program("rsyslogd") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let out = dir.path().join("siem.log");
    let store = Store::open(&dir.path().join("state")).unwrap();
    let log = AuditLog::open(&store).unwrap();
    let _exporter = export(
        &log,
        SinkConfig::Syslog {
            name: "siem".into(),
            address: format!("127.0.0.1:{port}"),
            transport: SyslogTransport::Tcp,
            hostname: Some("gate-1".into()),
        },
    );

    // The SIEM is down: 600 records (three batches) wait on disk.
    let written = log.append(findings(600)).unwrap();
    assert!(wait_for(10, || log.backlog("siem").unwrap() == 600));

    let config = dir.path().join("rsyslog.conf");
    std::fs::write(
        &config,
        format!(
            r#"global(workDirectory="{work}" maxMessageSize="64k")
module(load="imtcp")
template(name="raw" type="string" string="%rawmsg%\n")
ruleset(name="siem") {{ action(type="omfile" file="{out}" template="raw") }}
input(type="imtcp" port="{port}" ruleset="siem")
"#,
            work = dir.path().display(),
            out = out.display(),
        ),
    )
    .unwrap();
    let _rsyslog = Child(
        Command::new(rsyslogd)
            .args(["-n", "-f"])
            .arg(&config)
            .arg("-i")
            .arg(dir.path().join("rsyslog.pid"))
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );

    assert!(
        wait_for(60, || lines(&out).len() >= 600
            && log.backlog("siem").unwrap() == 0),
        "rsyslog received {} of 600 records",
        lines(&out).len()
    );
    let received = lines(&out);
    assert_eq!(received.len(), 600, "each record once");
    for (line, record) in received.iter().zip(&written) {
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
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/peers/webhook.py");
    let mut server = Child(
        Command::new(python)
            .arg(script)
            .args(["--port", &port.to_string(), "--fail", "2", "--out"])
            .arg(&out)
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

    let store = Store::temporary().unwrap();
    let log = AuditLog::open(&store).unwrap();
    let written = log.append(findings(300)).unwrap();
    let _exporter = export(
        &log,
        SinkConfig::Webhook {
            name: "webhook".into(),
            url: format!("http://127.0.0.1:{port}/palisade/audit"),
        },
    );
    let more = log.append(findings(5)).unwrap();
    assert!(
        wait_for(60, || lines(&out).len() >= 305),
        "the webhook received {} of 305 records",
        lines(&out).len()
    );
    let ids: Vec<u64> = lines(&out)
        .iter()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                .as_u64()
                .unwrap()
        })
        .collect();
    let expected: Vec<u64> = written.iter().chain(&more).map(|r| r.id).collect();
    assert_eq!(ids, expected, "in order, each once, after two refusals");
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
