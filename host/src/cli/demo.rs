//! `palisade demo`: the appliance at work in one command, on loopback.
//!
//! It runs the real appliance (the same `serve` as in production: mTLS,
//! the MQTT parser plugin, the Cedar policy, the hygiene and baseline
//! detectors, the escalate responder, the audit trail) in a fresh data
//! directory, with an MQTT broker stand-in inside this process as the
//! upstream. Four simulated sensors publish telemetry over mTLS with their
//! own certificates; one of them turns rogue: it publishes to a command
//! topic (denied: dropped, alerted), then pushes firmware (forbidden with
//! quarantine: all its sessions close), then tries to come back (refused).
//! What the upstream receives, what the audit trail records and what the
//! devices see are printed as they happen; at the end the demo checks that
//! nothing the policy denied reached the upstream, and fails if it did.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

use crate::audit::{AuditLog, Record, What};
use crate::config::{Config, RouteConfig, Transport};

/// Arguments of `palisade demo`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// How long the sensors run, in seconds (at least 6: the rogue acts
    /// from the third second on).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(6..=3600))]
    seconds: u64,
}

/// The demo site's policy: sensors publish telemetry; anything else they
/// publish is denied, and pushing firmware quarantines them.
const POLICY: &str = r#"// The demo site's policy.
@id("sensors connect over MQTT")
permit(principal in Class::"sensor", action == Action::"connect", resource)
when { resource.protocol == "mqtt" };

@id("the broker may answer")
permit(principal in Class::"sensor", action in Action::"mqtt", resource)
when { context.direction == "to-device" };

@id("sensors open, keep and close sessions, and subscribe")
permit(
    principal in Class::"sensor",
    action in [Action::"mqtt.connect", Action::"mqtt.disconnect", Action::"mqtt.pingreq",
               Action::"mqtt.subscribe"],
    resource
);

@id("sensors publish telemetry")
permit(principal in Class::"sensor", action == Action::"mqtt.publish", resource)
when { context.topic like "site/*/telemetry" && context["topic-levels"] == 3 };

@id("nobody pushes firmware")
@severity("critical")
@response("quarantine-device")
forbid(principal, action == Action::"mqtt.publish", resource)
when { context.topic like "*/firmware" };
"#;

const SENSORS: [&str; 4] = ["sensor-1", "sensor-2", "sensor-3", "sensor-4"];
const ROGUE: &str = "sensor-4";
const TELEMETRY: &str = "site/hall-a/telemetry";

/// How long the demo waits for something that takes milliseconds on an
/// idle machine (a CONNACK, an audit record) before it says so and goes
/// on: a guard against hanging, not a deadline.
const PATIENCE: Duration = Duration::from_secs(30);

/// Run the demo.
pub(crate) fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let dir = tempfile::Builder::new()
        .prefix("palisade-demo-")
        .tempdir()
        .context("creating the demo's data directory")?;
    let data = dir.path().join("data");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let clean = runtime.block_on(demo(&data, Duration::from_secs(args.seconds)))?;
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// What the broker stand-in received, by client id and topic.
type Received = Arc<Mutex<BTreeMap<(String, String), u64>>>;

async fn demo(data: &Path, length: Duration) -> anyhow::Result<bool> {
    let start = Instant::now();
    let say = move |who: &str, what: &str| {
        println!("{:>6.2}s  {who:<10} {what}", start.elapsed().as_secs_f64());
    };
    println!(
        "Palisade demo: four sensors publish telemetry through the appliance; one turns rogue."
    );
    prepare(data)?;
    let received = Received::default();
    let upstream = broker(received.clone()).await?;
    let config = Config {
        routes: vec![RouteConfig {
            name: "mqtt-tls".into(),
            protocol: "mqtt".into(),
            transport: Transport::Tls,
            listen: ([127, 0, 0, 1], 0).into(),
            alpn: None,
            parser: Some("mqtt".into()),
            detectors: vec!["hygiene".into(), "baseline".into()],
            responders: vec!["escalate".into()],
            upstream: upstream.to_string(),
            upstream_tls: None,
            upstream_connect: Default::default(),
        }],
        renewal: crate::config::RenewalConfig { listen: None },
        ..Config::default()
    };
    let shutdown = CancellationToken::new();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let appliance = {
        let (data, shutdown) = (data.to_owned(), shutdown.clone());
        tokio::spawn(async move {
            crate::cli::serve::serve(&data, config, false, shutdown, |ready| {
                let addr = ready.listening.first().map(|l| l.addr);
                let _ = ready_tx.send((addr, ready.audit.clone(), ready.registry.clone()));
            })
            .await
        })
    };
    let (Some(addr), audit, registry) = ready_rx
        .await
        .context("the appliance stopped before it was ready")?
    else {
        anyhow::bail!("the appliance listens nowhere");
    };
    say(
        "appliance",
        &format!("listening on {addr} (MQTT over mTLS), upstream broker on {upstream}"),
    );
    let stop = CancellationToken::new();
    let watcher = tokio::spawn(watch_audit(audit.clone(), start, stop.clone()));
    // Everyone connects first, then the sensors' run starts for all at
    // once: the setup above (keys, plugins compiled in a fresh data
    // directory) takes longer on a busy machine, and must not eat into
    // the run.
    let connected = Arc::new(tokio::sync::Barrier::new(SENSORS.len() + 2));
    let mut devices = Vec::new();
    for sensor in SENSORS {
        let tls = connector(&data.join("devices").join(sensor))?;
        devices.push((
            sensor,
            tokio::spawn(sensor_loop(
                sensor,
                tls,
                addr.port(),
                connected.clone(),
                length,
                say,
            )),
        ));
    }
    // The rogue also listens for commands on a second session, which its
    // quarantine closes too.
    let rogue_tls = connector(&data.join("devices").join(ROGUE))?;
    let listener = tokio::spawn(hold_session(
        rogue_tls.clone(),
        addr.port(),
        connected.clone(),
        say,
    ));
    connected.wait().await;
    let run = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    say(ROGUE, "turns rogue: publishes to site/hall-a/cmd");
    publish_once(&rogue_tls, addr.port(), "site/hall-a/cmd", b"open-valve-7").await;
    let denied = |r: &Record| {
        let What::Finding { reason, .. } = &r.what else {
            return false;
        };
        reason.starts_with("mqtt.publish denied")
    };
    if !audited(&audit, denied).await {
        say(ROGUE, "its denied publish was not audited in time");
    }
    tokio::time::sleep(Duration::from_millis(4500).saturating_sub(run.elapsed())).await;
    say(ROGUE, "pushes firmware to site/hall-a/firmware");
    publish_once(
        &rogue_tls,
        addr.port(),
        "site/hall-a/firmware",
        b"\x7fELF...",
    )
    .await;
    // It tries again once the appliance has quarantined it, not after a
    // guess at how long that takes.
    let quarantined = |r: &Record| {
        let What::Action { action, .. } = &r.what else {
            return false;
        };
        action == "quarantine-device"
    };
    if !audited(&audit, quarantined).await {
        say(ROGUE, "its quarantine was not audited in time");
    }
    tokio::time::sleep(Duration::from_millis(5500).saturating_sub(run.elapsed())).await;
    say(ROGUE, "tries to connect again");
    match connect(&rogue_tls, addr.port(), ROGUE).await {
        Ok(_) => say(ROGUE, "connected (it should not have)"),
        Err(e) => say(ROGUE, &format!("refused: {e}")),
    }
    let mut sent = BTreeMap::new();
    for (sensor, device) in devices {
        sent.insert(sensor, device.await.unwrap_or_default());
    }
    let _ = listener.await;
    // The broker counts what the appliance forwarded as it reads it; wait
    // until the sensors' last readings are counted (the rogue's are cut
    // short by its quarantine).
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline
        && !sent
            .iter()
            .filter(|(sensor, _)| **sensor != ROGUE)
            .all(|(sensor, n)| count(&received, sensor, TELEMETRY) >= u64::from(*n))
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    let _ = watcher.await;
    let state = (registry.device(ROGUE)?).map_or("unknown".into(), |d| d.state.to_string());
    drop(registry);
    shutdown.cancel();
    appliance.await.context("the appliance task")??;

    println!("\nWhat reached the upstream broker:");
    let received = received.lock().unwrap_or_else(|p| p.into_inner()).clone();
    for ((client, topic), count) in &received {
        println!("  {client:<10} {topic:<24} {count}");
    }
    let leaked: Vec<_> = (received.keys())
        .filter(|(_, topic)| !topic.ends_with("/telemetry"))
        .collect();
    println!(
        "\n{ROGUE} is {state} in the registry; `palisade device release {ROGUE}` would let it back."
    );
    if leaked.is_empty() && state == "quarantined" {
        println!("Nothing the policy denied reached the upstream.");
        Ok(true)
    } else {
        println!("FAILED: denied messages reached the upstream: {leaked:?}, or {ROGUE} is {state}");
        Ok(false)
    }
}

/// The data directory: the site CA, the devices' certificates, the policy,
/// and a baseline that learns from 10 events instead of a day.
fn prepare(data: &Path) -> anyhow::Result<()> {
    crate::store::create_data_dir(data)?;
    crate::identity::Pki::init(data).context("creating the site CA")?;
    std::fs::write(data.join(crate::policy::POLICY_FILE), POLICY)?;
    for sensor in SENSORS {
        super::pki::issue_to(
            data,
            &super::pki::IssueArgs {
                device: sensor.into(),
                class: "sensor".into(),
                zone: "hall-a".into(),
                hours: 24,
                role: None,
                out: data.join("devices").join(sensor),
            },
        )?;
    }
    let store = crate::store::Store::open(&data.join("state"))?;
    let kv = store.plugin_kv("baseline", crate::plugins::Limits::default().kv_quota_bytes)?;
    kv.set("config/learning-hours", b"0")
        .and_then(|()| kv.set("config/learning-events", b"10"))
        .map_err(|e| anyhow::anyhow!("configuring the baseline: {e:?}"))?;
    store.flush()?;
    Ok(())
}

/// Print the audit trail's new records as they come.
async fn watch_audit(audit: AuditLog, start: Instant, stop: CancellationToken) {
    let mut after = 0;
    loop {
        let records = audit.after(after, 256).unwrap_or_default();
        for r in &records {
            after = r.id;
            let what = match &r.what {
                What::Finding {
                    severity, reason, ..
                } => format!("finding ({severity}) by {}: {reason}", r.plugin.name),
                What::Action { action, .. } => {
                    format!("action {action} by {}", r.plugin.name)
                }
                What::OperatorAction {
                    operator,
                    request,
                    outcome,
                    ..
                } => format!("{request} by operator {operator}: {outcome}"),
            };
            println!(
                "{:>6.2}s  {:<10} audit #{}: {what}",
                start.elapsed().as_secs_f64(),
                r.device.id,
                r.id
            );
        }
        if records.is_empty() {
            // Stopped: what was written before is printed by now.
            if stop.is_cancelled() {
                return;
            }
            tokio::select! {
                () = stop.cancelled() => {}
                () = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    }
}

/// A sensor: one session, then once everyone is `connected`, a telemetry
/// publish every 250 ms for `length` (as many readings as that makes,
/// however long a busy machine takes to send them), a line every eight.
/// Returns how many it sent.
async fn sensor_loop(
    sensor: &'static str,
    tls: TlsConnector,
    port: u16,
    connected: Arc<tokio::sync::Barrier>,
    length: Duration,
    say: impl Fn(&str, &str),
) -> u32 {
    let topic = TELEMETRY;
    let session = connect(&tls, port, sensor).await;
    connected.wait().await;
    let mut session = match session {
        Ok(s) => s,
        Err(e) => {
            say(sensor, &format!("cannot connect: {e}"));
            return 0;
        }
    };
    let start = Instant::now();
    let readings = length.as_millis() / 250;
    let mut sent = 0u32;
    while u128::from(sent) < readings {
        let reading = format!("{{\"temp\": {:.1}}}", 20.0 + f64::from(sent % 7) / 10.0);
        if let Err(e) = session.write_all(&publish(topic, reading.as_bytes())).await {
            say(sensor, &format!("session ended after {sent} readings: {e}"));
            return sent;
        }
        sent += 1;
        if sent.is_multiple_of(8) {
            say(sensor, &format!("{sent} readings published to {topic}"));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        if sensor == ROGUE && start.elapsed() > Duration::from_secs(4) {
            // Its other sessions are closed by now; this one too.
            let mut buf = [0u8; 16];
            let closed = tokio::time::timeout(Duration::from_millis(10), session.read(&mut buf))
                .await
                .is_ok_and(|r| !matches!(r, Ok(n) if n > 0));
            if closed {
                say(
                    sensor,
                    &format!("telemetry session closed by the appliance after {sent} readings"),
                );
                return sent;
            }
        }
    }
    sent
}

/// Hold a session open with a subscription until the appliance closes it.
async fn hold_session(
    tls: TlsConnector,
    port: u16,
    connected: Arc<tokio::sync::Barrier>,
    say: impl Fn(&str, &str),
) {
    let session = connect(&tls, port, "sensor-4-commands").await;
    let Ok(mut session) = session else {
        connected.wait().await;
        return;
    };
    let mut subscribe = vec![0x82];
    let body = [&[0, 1][..], &string("site/hall-a/cmd"), &[0]].concat();
    subscribe.push(body.len() as u8);
    subscribe.extend_from_slice(&body);
    let _ = session.write_all(&subscribe).await;
    // Its SUBACK: the subscription is in place before the run starts.
    let mut suback = [0u8; 5];
    let _ = tokio::time::timeout(PATIENCE, session.read_exact(&mut suback)).await;
    connected.wait().await;
    say(
        ROGUE,
        "holds a second session, subscribed to site/hall-a/cmd",
    );
    let mut buf = [0u8; 256];
    while matches!(session.read(&mut buf).await, Ok(n) if n > 0) {}
    say(ROGUE, "its command session was closed by the appliance");
}

async fn publish_once(tls: &TlsConnector, port: u16, topic: &str, payload: &[u8]) {
    if let Ok(mut s) = connect(tls, port, "sensor-4-oneshot").await {
        let _ = s.write_all(&publish(topic, payload)).await;
        let mut buf = [0u8; 16];
        let _ = tokio::time::timeout(Duration::from_millis(500), s.read(&mut buf)).await;
    }
}

type Session = tokio_rustls::client::TlsStream<TcpStream>;

/// A device session: mTLS, then MQTT CONNECT and its CONNACK.
async fn connect(tls: &TlsConnector, port: u16, client: &str) -> anyhow::Result<Session> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    let name = ServerName::try_from("localhost")?;
    let mut s = tls.connect(name, tcp).await?;
    let body = [&string("MQTT")[..], &[4, 2, 0, 60], &string(client)].concat();
    s.write_all(&[&[0x10, body.len() as u8][..], &body].concat())
        .await?;
    let mut connack = [0u8; 4];
    tokio::time::timeout(PATIENCE, s.read_exact(&mut connack))
        .await
        .context("no CONNACK")?
        .context("closed before CONNACK")?;
    Ok(s)
}

/// Whether the audit trail holds a record about the rogue that `matches`,
/// waiting for it up to [`PATIENCE`].
async fn audited(audit: &AuditLog, matches: impl Fn(&Record) -> bool) -> bool {
    let deadline = Instant::now() + PATIENCE;
    let mut after = 0;
    while Instant::now() < deadline {
        for r in audit.after(after, 256).unwrap_or_default() {
            after = r.id;
            if r.device.id == ROGUE && matches(&r) {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// How many publishes to `topic` from `client` the broker counted.
fn count(received: &Received, client: &str, topic: &str) -> u64 {
    let received = received.lock().unwrap_or_else(|p| p.into_inner());
    received
        .get(&(client.to_owned(), topic.to_owned()))
        .copied()
        .unwrap_or(0)
}

fn string(s: &str) -> Vec<u8> {
    [&(s.len() as u16).to_be_bytes()[..], s.as_bytes()].concat()
}

fn publish(topic: &str, payload: &[u8]) -> Vec<u8> {
    let body = [&string(topic)[..], payload].concat();
    [&[0x30, body.len() as u8][..], &body].concat()
}

fn connector(device: &Path) -> anyhow::Result<TlsConnector> {
    let pem = |name: &str| -> PathBuf { device.join(name) };
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(pem("ca.pem"))? {
        roots.add(ca?)?;
    }
    let chain = CertificateDer::pem_file_iter(pem("cert.pem"))?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(pem("key.pem"))?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)?;
    Ok(TlsConnector::from(Arc::new(config)))
}

/// An MQTT broker stand-in: answers CONNECT and SUBSCRIBE, and counts the
/// PUBLISHes it receives by client id and topic.
async fn broker(received: Received) -> anyhow::Result<std::net::SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let received = received.clone();
            tokio::spawn(async move {
                let (read, mut write) = s.into_split();
                let mut read = tokio::io::BufReader::new(read);
                let mut client = String::new();
                while let Some((first, body)) = packet(&mut read).await {
                    let answer: &[u8] = match first >> 4 {
                        1 => {
                            client = connect_client_id(&body).unwrap_or_default();
                            &[0x20, 2, 0, 0]
                        }
                        3 => {
                            if let Some(topic) = mqtt_string(&body) {
                                let mut r = received.lock().unwrap_or_else(|p| p.into_inner());
                                *r.entry((client.clone(), topic)).or_default() += 1;
                            }
                            continue;
                        }
                        8 => &[0x90, 3, 0, 1, 0],
                        12 => &[0xd0, 0],
                        _ => continue,
                    };
                    if write.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(addr)
}

async fn packet<R: AsyncBufReadExt + Unpin>(read: &mut R) -> Option<(u8, Vec<u8>)> {
    let first = read.read_u8().await.ok()?;
    let (mut len, mut shift) = (0usize, 0);
    loop {
        let b = read.read_u8().await.ok()?;
        len |= usize::from(b & 0x7f) << shift;
        shift += 7;
        if b & 0x80 == 0 || shift > 21 {
            break;
        }
    }
    let mut body = vec![0u8; len.min(1 << 20)];
    read.read_exact(&mut body).await.ok()?;
    Some((first, body))
}

fn mqtt_string(bytes: &[u8]) -> Option<String> {
    let len = usize::from(u16::from_be_bytes([*bytes.first()?, *bytes.get(1)?]));
    Some(String::from_utf8_lossy(bytes.get(2..2 + len)?).into_owned())
}

/// The client id of a CONNECT body (MQTT 3.1.1: protocol name, level,
/// flags, keep-alive, then the client id).
fn connect_client_id(body: &[u8]) -> Option<String> {
    let name = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
    mqtt_string(body.get(2 + name + 4..)?)
}
