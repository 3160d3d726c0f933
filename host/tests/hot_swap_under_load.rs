//! Plugins swapped in a running appliance under load: devices publish MQTT
//! QoS 1 continuously over mTLS through Palisade to a real mosquitto while
//! the MQTT parser and a detector are activated back and forth between two
//! versions, and no publish is lost, duplicated or reordered and no
//! connection is reset.
//!
//! The appliance runs in this process (the same `Server`, routes and slots
//! `palisade serve` builds), so the swaps are [`Slot::activate`] calls, as
//! the admin socket makes them, and the time from a swap to the new
//! version serving can be observed. `swap_under_load.rs` drives the same
//! property through `palisade plugin activate` on the real binary.
//!
//! Each device is one TLS connection that publishes `seq sent-at` to
//! `load/<device>` at a steady pace and counts its PUBACKs; a watcher
//! subscribed on the broker itself records what arrived, per device and
//! sequence number, with its latency. The harness here is shared with
//! `benches/hot_swap.rs`, which runs it at full scale in a release build.
#![allow(
    // The bench uses more of the harness than this test does.
    dead_code,
    missing_debug_implementations,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

pub mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use palisade::config::Config;
use palisade::identity::{ClientVerifier, DeviceCertRequest, Pki, Registry};
use palisade::plugins::{Installed, Limits, Plugin, Runtime, RuntimeConfig, Slot, World};
use palisade::policy::PolicyEngine;
use palisade::session::LiveSessions;
use palisade::store::Store;
use palisade::transport::{Route, Server, Stages, Upstream};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

use common::appliance::PATIENCE;

/// The parser swapped.
pub const PARSER: &str = "mqtt";
/// The detector swapped.
pub const DETECTOR: &str = "hygiene";
/// The two versions swapped back and forth: the first-party component of
/// each plugin, loaded with [`Runtime::load_as`] under two version strings.
/// Two plugins with one name share their key-value store, as two versions
/// of one plugin do.
pub const VERSIONS: [&str; 2] = ["1.0.0", "1.0.1"];

/// The appliance, in this process: one MQTT-over-TLS route to `upstream`
/// with [`PARSER`] and [`DETECTOR`] in slots, as `palisade serve` builds
/// it; plugins precompiled into a cache directory.
pub struct Appliance {
    pub runtime: Runtime,
    pub addr: SocketAddr,
    /// Where precompiled plugins are kept.
    pub cache_dir: PathBuf,
    installed: Installed,
    pki: Arc<Pki>,
    registry: Registry,
    shutdown: CancellationToken,
    server: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

/// One swap: the new version and what it took.
pub struct Swap {
    /// The version now active.
    pub new: Plugin,
    /// Whether its compiled code came from the cache.
    pub cached: bool,
    /// Loading it (compiling, or reading the precompiled artifact).
    pub load: Duration,
    /// Activating it in the slot.
    pub activate: Duration,
    /// Releasing the old version (freeing it, when no session holds it).
    pub release: Duration,
}

impl Appliance {
    /// Start the appliance, serving [`PARSER`] and [`DETECTOR`] at
    /// `VERSIONS[0]`, relaying to `upstream` on loopback.
    pub async fn start(upstream: u16) -> Appliance {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        palisade::store::create_data_dir(&data).unwrap();
        let config = Config::parse(&format!(
            "[renewal]\nlisten = \"127.0.0.1:0\"\n\
             [[route]]\nname = \"mqtt-tls\"\nprotocol = \"mqtt\"\ntransport = \"tls\"\n\
             listen = \"127.0.0.1:0\"\nparser = \"{PARSER}\"\ndetectors = [\"{DETECTOR}\"]\n\
             upstream = \"127.0.0.1:{upstream}\"\n"
        ))
        .unwrap();
        let (pki, _) = Pki::init(&data).unwrap();
        let pki = Arc::new(pki);
        let store = Store::open(&data.join("state")).unwrap();
        let registry = Registry::open(&store).unwrap();
        let cache_dir = data.join("plugin-cache");
        let runtime = Runtime::new(
            &RuntimeConfig {
                cache_dir: Some(cache_dir.clone()),
                ..RuntimeConfig::default()
            },
            store.clone(),
        )
        .unwrap();
        let installed = Installed::default();
        let mut appliance = Appliance {
            runtime,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            cache_dir,
            installed,
            pki: pki.clone(),
            registry: registry.clone(),
            shutdown: CancellationToken::new(),
            server: None,
            _dir: dir,
        };
        let route = &config.routes[0];
        let slot = |name: &str, world| {
            appliance
                .installed
                .slot_for(name, world, &route.name, || {
                    Ok(appliance.load(name, VERSIONS[0]).0)
                })
                .unwrap()
        };
        let routes = vec![Route {
            config: route.clone(),
            parser: Some(slot(PARSER, World::Parser)),
            detectors: vec![slot(DETECTOR, World::Detector)],
            responders: vec![],
            upstream: Upstream::new(route).unwrap(),
        }];
        let stages = Stages {
            pki: pki.clone(),
            registry: registry.clone(),
            live: LiveSessions::default(),
            policy: PolicyEngine::new(palisade::policy::load(&data).unwrap()),
            verifier: ClientVerifier::devices(&pki, &[], registry).unwrap(),
            audit: None,
            installed: appliance.installed.clone(),
        };
        let server = Server::bind(&config, routes, stages, appliance.shutdown.clone())
            .await
            .unwrap();
        appliance.addr = server.listening()[0].addr;
        appliance.server = Some(tokio::spawn(server.run()));
        appliance
    }

    /// Load the first-party `name` as `version`.
    pub fn load(&self, name: &str, version: &str) -> (Plugin, bool) {
        let component = palisade::plugins::first_party::component(name).unwrap();
        self.runtime
            .load_as(name, version, component, Limits::default())
            .unwrap()
    }

    /// The slot of `name`.
    pub fn slot(&self, name: &str) -> Slot {
        self.installed.get(name).unwrap()
    }

    /// Load `version` of `name` and make it the active version, releasing
    /// the old one at once, as `palisade plugin activate` does: it drains
    /// as the sessions move to the new version at their next chunk.
    pub fn swap(&self, name: &str, version: &str) -> Swap {
        let start = Instant::now();
        let (new, cached) = self.load(name, version);
        let loaded = Instant::now();
        let old = self.slot(name).activate(new.clone()).unwrap();
        let activated = Instant::now();
        drop(old);
        Swap {
            new,
            cached,
            load: loaded - start,
            activate: activated - loaded,
            release: activated.elapsed(),
        }
    }

    /// Enroll `device` (class `meter`, zone `plant`) with a certificate
    /// from the site CA; its TLS client settings.
    pub fn enroll(&self, device: &str) -> TlsConnector {
        let key = rcgen::KeyPair::generate().unwrap();
        let request = DeviceCertRequest {
            device: device.into(),
            class: "meter".into(),
            zone: "plant".into(),
            role: None,
            lifetime: Duration::from_secs(24 * 3600),
        };
        let issued = self.pki.issue_device(&request, &key).unwrap();
        self.registry
            .record_issued(&request, &issued.claims)
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.pki.ca_der().clone()).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![issued.der],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
        TlsConnector::from(Arc::new(config))
    }

    /// Stop serving, and wait for the sessions to close.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(server) = self.server.take() {
            server.await.unwrap();
        }
    }
}

/// One publish that reached the watcher.
#[derive(Debug, Clone, Copy, Default)]
pub struct Arrival {
    pub seq: u64,
    /// When the device sent it, in µs from the fleet's start.
    pub sent_us: u64,
    /// From sent to received by the watcher, µs.
    pub latency_us: u64,
}

/// What reached the watcher, per device.
struct Delivered {
    arrivals: Vec<Mutex<Vec<Arrival>>>,
    /// The latest send time among the publishes delivered so far.
    latest_sent_us: AtomicU64,
}

/// How a device's connection ended.
#[derive(Debug, Default)]
struct DeviceEnd {
    sent: u64,
    acked: u64,
    /// Why the connection ended before the device closed it.
    reset: Option<String>,
}

/// The devices publishing and the watcher counting.
pub struct Fleet {
    epoch: Instant,
    stop: Arc<AtomicBool>,
    names: Vec<String>,
    devices: Vec<tokio::task::JoinHandle<DeviceEnd>>,
    delivered: Arc<Delivered>,
    watcher_closing: Arc<AtomicBool>,
    watcher: tokio::task::JoinHandle<Result<(), String>>,
}

impl Fleet {
    /// Subscribe the watcher on the broker at `broker`, then connect
    /// `devices` devices to `appliance`, each publishing once every
    /// `every`; every other publish is written in two halves, `split_gap`
    /// apart. `capacity` publishes per device are recorded without
    /// allocating (so that the bench's memory figures do not move with
    /// them).
    pub async fn start(
        appliance: &Appliance,
        broker: u16,
        devices: usize,
        every: Duration,
        split_gap: Duration,
        capacity: usize,
    ) -> Fleet {
        let epoch = Instant::now();
        let delivered = Arc::new(Delivered {
            arrivals: (0..devices)
                .map(|_| {
                    let mut v = Vec::with_capacity(capacity);
                    // Touch the pages now.
                    v.resize(capacity, Arrival::default());
                    v.clear();
                    Mutex::new(v)
                })
                .collect(),
            latest_sent_us: AtomicU64::new(0),
        });
        let watcher_closing = Arc::new(AtomicBool::new(false));
        let (ready, subscribed) = tokio::sync::oneshot::channel();
        let watcher = tokio::spawn(watch(
            broker,
            delivered.clone(),
            epoch,
            watcher_closing.clone(),
            ready,
        ));
        subscribed.await.unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let names: Vec<String> = (0..devices).map(|i| format!("meter-{i}")).collect();
        let mut tasks = Vec::new();
        let (connected_tx, mut connected) = tokio::sync::mpsc::channel(devices);
        for name in &names {
            tasks.push(tokio::spawn(device(
                name.clone(),
                appliance.enroll(name),
                appliance.addr,
                Pace {
                    epoch,
                    stop: stop.clone(),
                    every,
                    split_gap,
                },
                connected_tx.clone(),
            )));
        }
        drop(connected_tx);
        for _ in 0..devices {
            // A device that failed to connect says so in its report.
            if connected.recv().await.is_none() {
                break;
            }
        }
        Fleet {
            epoch,
            stop,
            names,
            devices: tasks,
            delivered,
            watcher_closing,
            watcher,
        }
    }

    /// µs since the fleet started: the clock of send times.
    pub fn now_us(&self) -> u64 {
        micros(self.epoch.elapsed())
    }

    /// The latest send time among the publishes delivered so far: once it
    /// passes a moment, a publish sent after that moment has arrived.
    pub fn latest_sent_delivered(&self) -> u64 {
        self.delivered.latest_sent_us.load(Ordering::Acquire)
    }

    /// Publishes delivered so far from the device with fewest.
    pub fn fewest_delivered(&self) -> usize {
        (self.delivered.arrivals.iter())
            .map(|a| a.lock().unwrap().len())
            .min()
            .unwrap_or(0)
    }

    /// Stop publishing; wait for every PUBACK and for every publish to
    /// reach the watcher (or for [`PATIENCE`]); close; count.
    pub async fn finish(self) -> Report {
        self.stop.store(true, Ordering::Relaxed);
        let mut ends = Vec::new();
        for task in self.devices {
            ends.push(task.await.unwrap());
        }
        let start = Instant::now();
        // What the broker acknowledged it delivers; on a connection that
        // stayed up, that is everything sent.
        let all_arrived = || {
            (ends.iter().zip(&self.delivered.arrivals))
                .all(|(end, a)| a.lock().unwrap().len() as u64 >= end.acked)
        };
        while !all_arrived() && start.elapsed() < PATIENCE {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Time for a duplicate to show up behind the last publish.
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.watcher_closing.store(true, Ordering::Relaxed);
        let watcher_reset = match tokio::time::timeout(PATIENCE, self.watcher).await {
            Ok(Ok(Ok(()))) => None,
            Ok(Ok(Err(e))) => Some(e),
            Ok(Err(e)) => Some(format!("watcher task: {e}")),
            Err(_) => Some("watcher did not stop".into()),
        };
        let arrivals: Vec<Vec<Arrival>> = (self.delivered.arrivals.iter())
            .map(|a| a.lock().unwrap().clone())
            .collect();
        let devices = (self.names.into_iter().zip(ends).zip(&arrivals))
            .map(|((name, end), arrivals)| DeviceReport::new(name, end, arrivals))
            .collect();
        Report {
            devices,
            watcher_reset,
            arrivals,
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap()
}

/// What happened to one device's publishes.
#[derive(Debug, Clone)]
pub struct DeviceReport {
    pub name: String,
    pub sent: u64,
    pub acked: u64,
    /// Distinct publishes of this run received by the watcher.
    pub received: u64,
    pub lost: u64,
    /// Publishes received more than once, and ones never sent.
    pub duplicated: u64,
    /// Publishes received after a later one of the same device.
    pub reordered: u64,
    pub reset: Option<String>,
}

impl DeviceReport {
    fn new(name: String, end: DeviceEnd, arrivals: &[Arrival]) -> DeviceReport {
        let mut seen = vec![false; usize::try_from(end.sent).unwrap() + 1];
        let (mut received, mut duplicated, mut reordered, mut latest) = (0, 0, 0, 0);
        for a in arrivals {
            match seen.get_mut(usize::try_from(a.seq).unwrap()) {
                Some(s) if a.seq > 0 && !*s => {
                    *s = true;
                    received += 1;
                }
                _ => duplicated += 1,
            }
            if a.seq < latest {
                reordered += 1;
            }
            latest = latest.max(a.seq);
        }
        DeviceReport {
            name,
            sent: end.sent,
            acked: end.acked,
            received,
            lost: end.sent - received,
            duplicated,
            reordered,
            reset: end.reset,
        }
    }

    /// Whether everything sent was acknowledged and arrived once, in
    /// order, on a connection that stayed up.
    pub fn clean(&self) -> bool {
        self.acked == self.sent
            && self.lost == 0
            && self.duplicated == 0
            && self.reordered == 0
            && self.reset.is_none()
    }
}

/// What the fleet saw.
#[derive(Debug)]
pub struct Report {
    pub devices: Vec<DeviceReport>,
    /// Why the watcher's connection ended early, if it did.
    pub watcher_reset: Option<String>,
    arrivals: Vec<Vec<Arrival>>,
}

impl Report {
    /// No publish lost, duplicated or reordered, none unacknowledged, no
    /// connection reset.
    pub fn clean(&self) -> bool {
        self.watcher_reset.is_none() && self.devices.iter().all(DeviceReport::clean)
    }

    /// Connections that ended before their client closed them.
    pub fn resets(&self) -> usize {
        self.devices.iter().filter(|d| d.reset.is_some()).count()
            + usize::from(self.watcher_reset.is_some())
    }

    /// Latencies in ms of the publishes sent in `[from_us, to_us)`.
    pub fn latencies_ms(&self, from_us: u64, to_us: u64) -> Vec<f64> {
        (self.arrivals.iter().flatten())
            .filter(|a| (from_us..to_us).contains(&a.sent_us))
            .map(|a| a.latency_us as f64 / 1e3)
            .collect()
    }

    /// Per device and in total: sent, acknowledged, received, lost,
    /// duplicated, reordered, reset.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<10} {:>8} {:>8} {:>9} {:>5} {:>10} {:>9} {:>6}\n",
            "device", "sent", "acked", "received", "lost", "duplicated", "reordered", "resets"
        );
        let row = |out: &mut String, name: &str, d: [u64; 7]| {
            out.push_str(&format!(
                "{name:<10} {:>8} {:>8} {:>9} {:>5} {:>10} {:>9} {:>6}\n",
                d[0], d[1], d[2], d[3], d[4], d[5], d[6]
            ));
        };
        let mut total = [0u64; 7];
        for d in &self.devices {
            let cells = [
                d.sent,
                d.acked,
                d.received,
                d.lost,
                d.duplicated,
                d.reordered,
                u64::from(d.reset.is_some()),
            ];
            for (t, c) in total.iter_mut().zip(cells) {
                *t += c;
            }
            row(&mut out, &d.name, cells);
        }
        total[6] += u64::from(self.watcher_reset.is_some());
        row(&mut out, "total", total);
        for d in &self.devices {
            if let Some(r) = &d.reset {
                out.push_str(&format!("{}: connection ended: {r}\n", d.name));
            }
        }
        if let Some(r) = &self.watcher_reset {
            out.push_str(&format!("watcher (on the broker): connection ended: {r}\n"));
        }
        out
    }
}

/// Read one MQTT packet: its first byte and its body.
async fn read_packet<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<(u8, Vec<u8>)> {
    let first = r.read_u8().await?;
    let (mut len, mut shift) = (0usize, 0);
    loop {
        let b = r.read_u8().await?;
        len |= usize::from(b & 0x7f) << shift;
        shift += 7;
        if b & 0x80 == 0 || shift > 21 {
            break;
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).await?;
    Ok((first, body))
}

/// How the devices publish.
#[derive(Clone)]
struct Pace {
    /// The clock of send times.
    epoch: Instant,
    /// Set when the devices are to stop publishing.
    stop: Arc<AtomicBool>,
    /// One publish per device this often.
    every: Duration,
    /// Between the halves of a publish written in two.
    split_gap: Duration,
}

/// One device: connect through the appliance, publish `seq sent-at` with
/// QoS 1 at `pace` until it says stop, wait for the PUBACKs, close.
/// Every other publish is written in two halves.
async fn device(
    name: String,
    tls: TlsConnector,
    addr: SocketAddr,
    pace: Pace,
    connected: tokio::sync::mpsc::Sender<()>,
) -> DeviceEnd {
    let mut end = DeviceEnd::default();
    let stream = async {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let mut s = tls
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await?;
        s.write_all(&common::mqtt_connect(&name)).await?;
        let (first, body) = read_packet(&mut s).await?;
        if first != 0x20 || body.get(1) != Some(&0) {
            return Err(std::io::Error::other(format!(
                "CONNACK {first:#x} {body:?} refused the connection"
            )));
        }
        Ok(s)
    };
    let stream = match stream.await {
        Ok(s) => s,
        Err(e) => {
            end.reset = Some(format!("connecting: {e}"));
            return end;
        }
    };
    let _ = connected.send(()).await;
    drop(connected);
    let (mut r, mut w) = tokio::io::split(stream);
    let acked = Arc::new(AtomicU64::new(0));
    let closing = Arc::new(AtomicBool::new(false));
    let reader = {
        let (acked, closing) = (acked.clone(), closing.clone());
        tokio::spawn(async move {
            let mut expected: u16 = 1;
            loop {
                match read_packet(&mut r).await {
                    Ok((0x40, body)) => {
                        // The broker acknowledges in order (MQTT 3.1.1,
                        // 4.6): another id means one went missing.
                        let id = u16::from_be_bytes([body[0], body[1]]);
                        if id != expected {
                            return Err(format!("PUBACK {id}, expected {expected}"));
                        }
                        expected = if expected == u16::MAX {
                            1
                        } else {
                            expected + 1
                        };
                        acked.fetch_add(1, Ordering::Release);
                    }
                    Ok((other, _)) => return Err(format!("unexpected packet {other:#04x}")),
                    Err(e)
                        if closing.load(Ordering::Relaxed)
                            && e.kind() == std::io::ErrorKind::UnexpectedEof =>
                    {
                        return Ok(());
                    }
                    Err(e) => return Err(e.to_string()),
                }
            }
        })
    };
    let topic = format!("load/{name}");
    let mut tick = tokio::time::interval(pace.every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut failed = None;
    while !pace.stop.load(Ordering::Relaxed) && !reader.is_finished() {
        tick.tick().await;
        let seq = end.sent + 1;
        let id = u16::try_from((seq - 1) % u64::from(u16::MAX) + 1).unwrap();
        let payload = format!("{seq} {}", micros(pace.epoch.elapsed()));
        let publish = common::mqtt_publish_qos1(&topic, id, payload.as_bytes());
        // Every other publish goes in two TLS records, so that the
        // appliance reads half a frame, and a swap may fall inside it.
        let cut = if seq % 2 == 1 { publish.len() / 2 } else { 0 };
        let written = async {
            if cut > 0 {
                w.write_all(&publish[..cut]).await?;
                w.flush().await?;
                if !pace.split_gap.is_zero() {
                    tokio::time::sleep(pace.split_gap).await;
                }
            }
            w.write_all(&publish[cut..]).await?;
            w.flush().await
        };
        if let Err(e) = written.await {
            failed = Some(format!("publishing: {e}"));
            break;
        }
        end.sent = seq;
    }
    let start = Instant::now();
    while failed.is_none()
        && acked.load(Ordering::Acquire) < end.sent
        && !reader.is_finished()
        && start.elapsed() < PATIENCE
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    closing.store(true, Ordering::Relaxed);
    if failed.is_none()
        && let Err(e) = w.write_all(&[0xe0, 0]).await.and(w.flush().await)
    {
        failed = Some(format!("disconnecting: {e}"));
    }
    let read = match tokio::time::timeout(PATIENCE, reader).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Err(format!("reader task: {e}")),
        Err(_) => Err("not closed after DISCONNECT".into()),
    };
    end.acked = acked.load(Ordering::Acquire);
    end.reset = match (read.err(), failed) {
        (Some(read), Some(write)) => Some(format!("{read}; {write}")),
        (read, write) => read.or(write),
    };
    end
}

/// The watcher: subscribed to `load/#` with QoS 1 on the broker itself,
/// recording every publish; ends once `closing` is set.
async fn watch(
    broker: u16,
    delivered: Arc<Delivered>,
    epoch: Instant,
    closing: Arc<AtomicBool>,
    ready: tokio::sync::oneshot::Sender<()>,
) -> Result<(), String> {
    let tcp = TcpStream::connect(("127.0.0.1", broker))
        .await
        .map_err(|e| e.to_string())?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let (r, w) = tcp.into_split();
    let (mut r, mut w) = (BufReader::with_capacity(64 << 10, r), BufWriter::new(w));
    let io = |e: std::io::Error| e.to_string();
    w.write_all(&common::mqtt_connect("hot-swap-watcher"))
        .await
        .map_err(io)?;
    w.write_all(&common::mqtt_subscribe_at(1, &["load/#"]))
        .await
        .map_err(io)?;
    w.flush().await.map_err(io)?;
    let (connack, _) = read_packet(&mut r).await.map_err(io)?;
    let (suback, body) = read_packet(&mut r).await.map_err(io)?;
    if connack != 0x20 || suback != 0x90 || body.get(2) != Some(&1) {
        return Err(format!("subscribing: {connack:#x} {suback:#x} {body:?}"));
    }
    let _ = ready.send(());
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        // Wait for bytes (which, unlike reading a packet, can be given up
        // without losing any) or for the end.
        tokio::select! {
            read = r.fill_buf() => if read.map_err(io)?.is_empty() {
                return Err("the broker closed the connection".into());
            },
            _ = tick.tick() => {
                if closing.load(Ordering::Relaxed) {
                    let _ = w.write_all(&[0xe0, 0]).await;
                    let _ = w.flush().await;
                    return Ok(());
                }
                continue;
            }
        }
        let (first, body) = read_packet(&mut r).await.map_err(io)?;
        let now = micros(epoch.elapsed());
        if first >> 4 != 3 {
            return Err(format!("unexpected packet {first:#04x}"));
        }
        let qos = (first >> 1) & 3;
        let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
        let topic = std::str::from_utf8(&body[2..2 + topic_len]).map_err(|e| e.to_string())?;
        let mut rest = &body[2 + topic_len..];
        if qos > 0 {
            w.write_all(&[0x40, 2, rest[0], rest[1]])
                .await
                .map_err(io)?;
            rest = &rest[2..];
        }
        let device: usize = (topic.strip_prefix("load/meter-"))
            .and_then(|i| i.parse().ok())
            .ok_or_else(|| format!("publish to {topic}"))?;
        let payload = std::str::from_utf8(rest).map_err(|e| e.to_string())?;
        let mut words = payload.split(' ').map(|w| w.parse::<u64>());
        let (Some(Ok(seq)), Some(Ok(sent_us))) = (words.next(), words.next()) else {
            return Err(format!("payload {payload:?}"));
        };
        delivered.arrivals[device].lock().unwrap().push(Arrival {
            seq,
            sent_us,
            latency_us: now.saturating_sub(sent_us),
        });
        delivered
            .latest_sent_us
            .fetch_max(sent_us, Ordering::AcqRel);
        // Acknowledge in batches: flush once what was read is handled.
        if r.buffer().is_empty() {
            w.flush().await.map_err(io)?;
        }
    }
}

/// Resident memory of this process, KiB.
pub fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Wait, polling every 50 µs, until `done` holds; how long that took from
/// `since`. `None` after [`PATIENCE`].
pub fn wait_from(since: Instant, mut done: impl FnMut() -> bool) -> Option<Duration> {
    while !done() {
        if since.elapsed() > PATIENCE {
            return None;
        }
        std::thread::sleep(Duration::from_micros(50));
    }
    Some(since.elapsed())
}

/// The async runtime the appliance and the clients share.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

const DEVICES: usize = 5;
const SWAPS: usize = 20;
/// Between two swaps, so that each lands amid a device's frames.
const PACE: Duration = Duration::from_millis(20);

#[test]
fn parser_and_detector_swapped_under_load_lose_duplicate_and_reset_nothing() {
    use common::appliance::{KEEP_EVERY_MESSAGE, Mosquitto, require};
    if !require("mosquitto") {
        return;
    }
    let broker = Mosquitto::start_with(KEEP_EVERY_MESSAGE);
    let rt = runtime();
    let appliance = rt.block_on(Appliance::start(broker.port));
    let fleet = rt.block_on(Fleet::start(
        &appliance,
        broker.port,
        DEVICES,
        Duration::from_millis(2),
        // Half a frame waits in the appliance for a millisecond: swaps
        // land inside frames.
        Duration::from_millis(1),
        0,
    ));
    assert!(
        wait_from(Instant::now(), || fleet.fewest_delivered() > 0).is_some(),
        "the devices' publishes never reached the broker"
    );

    // While the devices publish, the operator swaps; each new version must
    // serve before the next swap, so every swap lands under load.
    let before = fleet.fewest_delivered();
    let mut unserved = None;
    'swaps: for i in 0..SWAPS {
        let version = VERSIONS[(i + 1) % 2];
        for name in [PARSER, DETECTOR] {
            let swap = appliance.swap(name, version);
            assert!(swap.cached, "{name} {version} was precompiled at start");
            if wait_from(Instant::now(), || swap.new.calls() > 0).is_none() {
                unserved = Some(format!("{name} {version} never served after swap {i}"));
                break 'swaps;
            }
            std::thread::sleep(PACE);
        }
    }
    let during = fleet.fewest_delivered() - before;
    let report = rt.block_on(fleet.finish());
    eprintln!("{}", report.table());
    assert!(
        report.clean(),
        "{SWAPS} swaps of {PARSER} and {DETECTOR} under load:\n{}",
        report.table()
    );
    assert_eq!(unserved, None);
    assert!(during > 0, "every device published during the swaps");
    for name in [PARSER, DETECTOR] {
        let active = appliance.slot(name).active();
        assert_eq!(active.version(), VERSIONS[SWAPS % 2], "{name}");
    }
    rt.block_on(appliance.stop());
}
