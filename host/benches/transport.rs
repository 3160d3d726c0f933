//! What the transport costs, against baselines measured in the same run:
//!
//! 1. mTLS handshakes per second through Palisade (handshake, registry and
//!    policy check, upstream connection, one byte there and back) against a
//!    bare rustls server with client authentication that echoes the byte;
//! 2. MQTT PUBLISH with a 100-byte payload, through Palisade (TLS in, the
//!    MQTT parser plugin, TCP out to mosquitto), through a plain
//!    TLS-terminating relay with no inspection (tokio-rustls and
//!    `copy_bidirectional`), and straight to mosquitto: messages per second
//!    for a pipelined burst of QoS 0 PUBLISHes, and the latency of QoS 1
//!    PUBLISH to PUBACK, p50 and p99, with what each path adds to the direct
//!    one. Needs mosquitto; without it this part is skipped with a note.
//! 3. 10,000 concurrent idle mTLS sessions held by one appliance on this
//!    machine, and its resident memory per idle session.
//!
//! The baselines run in processes of their own (this binary, started again
//! in a role), as Palisade does, so every server pays the same process and
//! scheduling costs; clients run in this process. Every figure is a median
//! over rounds that alternate between the paths. Run it with
//! `cargo bench -p palisade --bench transport`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_debug_implementations
)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

// The integration tests' helpers: MQTT packets, mosquitto, child processes.
#[path = "../tests/common/mod.rs"]
mod common;

use common::appliance::{Child, Mosquitto};

mod support;

use support::{
    Palisade, burst, client_config, median, mqtt_connect, percentile, read_packet, route,
    start_mosquitto, tls_connect,
};

const ROLE: &str = "PALISADE_BENCH_ROLE";
const ROUNDS: usize = 5;
const HANDSHAKES: usize = 1000;
const HANDSHAKE_CLIENTS: usize = 16;
const BURST: usize = 20_000;
const PINGS: usize = 1000;
const IDLE_SESSIONS: usize = 10_000;
const CONNECTED_SESSIONS: usize = 9_000;
const PAYLOAD: [u8; 100] = [b'x'; 100];
const TOPIC: &str = "bench/telemetry";

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    if let Ok(role) = std::env::var(ROLE) {
        runtime.block_on(serve_role(&role));
        return;
    }
    raise_fd_limit();
    runtime.block_on(bench());
}

// ---------------------------------------------------------------- children

/// Run as a baseline server: print `port N`, serve until killed.
async fn serve_role(role: &str) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    println!("port {}", listener.local_addr().unwrap().port());
    let acceptor = match role {
        "sink" => None,
        _ => Some(bare_acceptor(Path::new(
            &std::env::var("BENCH_DATA").unwrap(),
        ))),
    };
    let upstream = std::env::var("BENCH_UPSTREAM").ok();
    loop {
        let (tcp, _) = listener.accept().await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let (acceptor, upstream, role) = (acceptor.clone(), upstream.clone(), role.to_owned());
        tokio::spawn(async move {
            match role.as_str() {
                // Holds each connection until its peer closes it, and says
                // so for each.
                "sink" => {
                    println!("accepted");
                    let mut tcp = tcp;
                    let mut buf = [0u8; 1024];
                    while tcp.read(&mut buf).await.is_ok_and(|n| n > 0) {}
                }
                // A bare rustls server with client auth: handshake, echo.
                "bare-tls" => {
                    let Ok(tls) = acceptor.unwrap().accept(tcp).await else {
                        return;
                    };
                    let (mut r, mut w) = tokio::io::split(tls);
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                }
                // A TLS-terminating relay without inspection.
                "plain-relay" => {
                    let Ok(mut tls) = acceptor.unwrap().accept(tcp).await else {
                        return;
                    };
                    let mut up = TcpStream::connect(upstream.unwrap()).await.unwrap();
                    up.set_nodelay(true).unwrap();
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
                }
                other => panic!("unknown role {other}"),
            }
        });
    }
}

/// The appliance's own server certificate and site CA, so that the bare
/// server does exactly the cryptography Palisade does.
fn bare_acceptor(data: &Path) -> TlsAcceptor {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(data.join("pki/ca.pem")).unwrap() {
        roots.add(ca.unwrap()).unwrap();
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let chain: Vec<_> = CertificateDer::pem_file_iter(data.join("pki/server.pem"))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(data.join("pki/server.key")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap();
    TlsAcceptor::from(Arc::new(config))
}

/// Start this binary in `role`; its child and port. The lines it prints
/// after the port are counted in `lines`.
fn start_role(role: &str, env: &[(&str, String)]) -> (Child, u16, Arc<AtomicUsize>) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(ROLE, role)
        .envs(env.iter().map(|(k, v)| (*k, v)))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let port = line.trim().strip_prefix("port ").unwrap().parse().unwrap();
    let lines = Arc::new(AtomicUsize::new(0));
    let counted = lines.clone();
    std::thread::spawn(move || {
        for line in out.lines() {
            if line.is_err() {
                return;
            }
            counted.fetch_add(1, Ordering::Relaxed);
        }
    });
    (Child(child), port, lines)
}

// ------------------------------------------------------------------ bench

async fn bench() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let echo = echo_server().await;
    let mosquitto = start_mosquitto();
    let mqtt_upstream = mosquitto.as_ref().map_or(echo, |m| m.port);
    let palisade = Palisade::start(
        &data,
        &format!(
            "{}{}",
            route("raw", None, echo),
            route("mqtt", Some("mqtt"), mqtt_upstream)
        ),
    );
    let device = work.path().join("device");
    let issued = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .arg("--data")
        .arg(&data)
        .args(["pki", "issue", "bench-1", "--class", "bench", "--out"])
        .arg(&device)
        .output()
        .unwrap();
    assert!(
        issued.status.success(),
        "{}",
        String::from_utf8_lossy(&issued.stderr)
    );
    let tls = client_config(&device);
    let data_env = [("BENCH_DATA", data.display().to_string())];
    let (_bare, bare_port, _) = start_role("bare-tls", &data_env);
    let relay_env = [
        ("BENCH_DATA", data.display().to_string()),
        ("BENCH_UPSTREAM", format!("127.0.0.1:{echo}")),
    ];
    let (_relay, relay_port, _) = start_role("plain-relay", &relay_env);

    println!(
        "== mTLS handshakes: ECDSA P-256 certificates, no resumption, {HANDSHAKE_CLIENTS} concurrent clients, {HANDSHAKES} per round"
    );
    println!("handshake, then close (the server closes after its side of the handshake):");
    let (mut bare, mut through) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        bare.push(handshakes(&tls, bare_port, false).await);
        through.push(handshakes(&tls, palisade.port("raw"), false).await);
    }
    let (bare, through) = (median(&mut bare), median(&mut through));
    println!("  bare rustls server, client auth            {bare:>9.0} handshakes/s");
    println!("  Palisade (chain, registry, policy)         {through:>9.0} handshakes/s");
    println!(
        "  Palisade / bare rustls                     {:>9.2} (target >= 0.80)",
        through / bare
    );
    println!(
        "handshake, then one byte there and back (for Palisade and the relay, through a new upstream connection):"
    );
    let (mut bare, mut relay, mut through) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        bare.push(handshakes(&tls, bare_port, true).await);
        relay.push(handshakes(&tls, relay_port, true).await);
        through.push(handshakes(&tls, palisade.port("raw"), true).await);
    }
    let (bare, relay, through) = (median(&mut bare), median(&mut relay), median(&mut through));
    println!("  bare rustls server, client auth, echo      {bare:>9.0} sessions/s");
    println!("  plain TLS relay to the echo upstream       {relay:>9.0} sessions/s");
    println!("  Palisade to the echo upstream              {through:>9.0} sessions/s");
    println!(
        "  Palisade / bare rustls                     {:>9.2}",
        through / bare
    );
    println!(
        "  Palisade / plain relay                     {:>9.2}",
        through / relay
    );

    match &mosquitto {
        None => {
            println!("\n== MQTT: skipped, mosquitto is not installed (apt-get install mosquitto)")
        }
        Some(Mosquitto { port: broker, .. }) => {
            let env = [
                ("BENCH_DATA", data.display().to_string()),
                ("BENCH_UPSTREAM", format!("127.0.0.1:{broker}")),
            ];
            let (_relay, relay_port, _) = start_role("plain-relay", &env);
            mqtt(&tls, *broker, relay_port, palisade.port("mqtt")).await;
        }
    }
    palisade.stop();

    idle_sessions(&data, &tls).await;
}

async fn echo_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut r, mut w) = tcp.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    port
}

/// Handshakes per second: each one a new connection and a full mTLS
/// handshake. With `echo`, then one byte to the server and back; without,
/// the client closes and waits for the server to close too, which it does
/// only after its side of the handshake (the client certificate checked).
async fn handshakes(tls: &TlsConnector, port: u16, echo: bool) -> f64 {
    let left = Arc::new(AtomicUsize::new(HANDSHAKES));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..HANDSHAKE_CLIENTS {
        let (tls, left) = (tls.clone(), left.clone());
        tasks.push(tokio::spawn(async move {
            while left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
            {
                let mut s = tls_connect(&tls, port).await.unwrap();
                if echo {
                    s.write_all(b"x").await.unwrap();
                    let mut b = [0u8; 1];
                    s.read_exact(&mut b).await.unwrap();
                } else {
                    s.shutdown().await.unwrap();
                    let mut rest = Vec::new();
                    let _ = s.read_to_end(&mut rest).await;
                    assert!(rest.is_empty());
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    HANDSHAKES as f64 / start.elapsed().as_secs_f64()
}

// ------------------------------------------------------------------- MQTT

/// Round trips of QoS 1 PUBLISH to PUBACK, one at a time, in microseconds.
async fn round_trips<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, out: &mut Vec<f64>) {
    mqtt_connect(&mut s, "bench-latency").await;
    for i in 0..(PINGS + 100) {
        let id = (i % 60_000 + 1) as u16;
        let start = Instant::now();
        s.write_all(&common::mqtt_publish_qos1(TOPIC, id, &PAYLOAD))
            .await
            .unwrap();
        assert_eq!(read_packet(&mut s).await, 0x40, "PUBACK");
        if i >= 100 {
            out.push(start.elapsed().as_secs_f64() * 1e6);
        }
    }
    let _ = s.write_all(&[0xe0, 0]).await;
}

async fn direct(port: u16) -> TcpStream {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    tcp
}

async fn mqtt(tls: &TlsConnector, broker: u16, relay: u16, palisade: u16) {
    println!("\n== MQTT PUBLISH, 100-byte payload, to mosquitto");
    let (mut d, mut r, mut p) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        d.push(burst(direct(broker).await, BURST).await);
        r.push(burst(tls_connect(tls, relay).await.unwrap(), BURST).await);
        p.push(burst(tls_connect(tls, palisade).await.unwrap(), BURST).await);
    }
    let (d, r, p) = (median(&mut d), median(&mut r), median(&mut p));
    println!("pipelined QoS 0 bursts of {BURST}, messages per second:");
    println!("  direct to mosquitto (TCP)            {d:>9.0}");
    println!("  plain TLS relay, no inspection       {r:>9.0}");
    println!("  Palisade (TLS, mqtt parser, TCP)     {p:>9.0}");
    println!(
        "  Palisade / plain relay               {:>9.2} (target >= 0.90)",
        p / r
    );
    println!("  Palisade / direct                    {:>9.2}", p / d);

    let (mut d, mut r, mut p) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..3 {
        round_trips(direct(broker).await, &mut d).await;
        round_trips(tls_connect(tls, relay).await.unwrap(), &mut r).await;
        round_trips(tls_connect(tls, palisade).await.unwrap(), &mut p).await;
    }
    let (d50, d99) = (percentile(&mut d, 50.0), percentile(&mut d, 99.0));
    let (r50, r99) = (percentile(&mut r, 50.0), percentile(&mut r, 99.0));
    let (p50, p99) = (percentile(&mut p, 50.0), percentile(&mut p, 99.0));
    println!(
        "QoS 1 PUBLISH to PUBACK, one at a time, {} round trips per path (us):",
        3 * PINGS
    );
    println!("                                          p50      p99   added p50  added p99");
    println!("  direct to mosquitto (TCP)         {d50:>9.1} {d99:>8.1}");
    println!(
        "  plain TLS relay, no inspection    {r50:>9.1} {r99:>8.1} {:>10.1} {:>10.1}",
        r50 - d50,
        r99 - d99
    );
    println!(
        "  Palisade (TLS, mqtt parser, TCP)  {p50:>9.1} {p99:>8.1} {:>10.1} {:>10.1}",
        p50 - d50,
        p99 - d99
    );
}

// ------------------------------------------------------------ idle sessions

async fn idle_sessions(data: &Path, tls: &TlsConnector) {
    println!("\n== {IDLE_SESSIONS} concurrent idle mTLS sessions");
    let (_sink, sink, accepted) = start_role("sink", &[]);
    // One certificate stands for ten thousand devices here.
    let config = format!(
        "[limits]\nmax-connections-per-device = {}\n{}",
        IDLE_SESSIONS + 1000,
        route("idle", Some("mqtt"), sink)
    );
    let palisade = Palisade::start(data, &config);
    let port = palisade.port("idle");
    // Warm up: the allocator and the runtime reach their working shape.
    let mut warm = Vec::new();
    for _ in 0..200 {
        let mut s = tls_connect(tls, port).await.unwrap();
        mqtt_connect_only(&mut s).await;
        warm.push(s);
    }
    wait_for(&palisade.sessions, 200).await;
    wait_for(&accepted, 200).await;
    drop(warm);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = palisade.rss_kib();

    // Idle sessions: handshake done, admitted, nothing said yet.
    let held = Arc::new(Mutex::new(Vec::with_capacity(IDLE_SESSIONS)));
    let left = Arc::new(AtomicUsize::new(IDLE_SESSIONS));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (tls, left, held) = (tls.clone(), left.clone(), held.clone());
        tasks.push(tokio::spawn(async move {
            while left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
            {
                let s = tls_connect(&tls, port).await.unwrap();
                held.lock().unwrap().push(s);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    wait_for(&palisade.sessions, 200 + IDLE_SESSIONS).await;
    let opened = start.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = palisade.rss_kib();
    let fds = |p: &Palisade| {
        std::fs::read_dir(format!("/proc/{}/fd", p.child.0.id()))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    println!(
        "opened {IDLE_SESSIONS} sessions in {:.1} s, all held; the appliance holds {} file descriptors",
        opened.as_secs_f64(),
        fds(&palisade)
    );
    println!(
        "appliance resident memory: {:.1} MiB before, {:.1} MiB with them open",
        before as f64 / 1024.0,
        idle as f64 / 1024.0
    );
    println!(
        "memory per idle session (device TLS, session task, relay):          {:>6.1} KiB",
        (idle.saturating_sub(before)) as f64 / IDLE_SESSIONS as f64
    );

    // Connected sessions: most of them send an MQTT CONNECT and then stay
    // quiet, with their upstream connection open. Not all: every one is two
    // sockets in the appliance, and this machine's open-file limit is
    // 20,000.
    let streams: Vec<_> = std::mem::take(&mut *held.lock().unwrap());
    let connected = CONNECTED_SESSIONS.min(streams.len());
    let mut streams = streams.into_iter();
    let mut talking = Vec::with_capacity(connected);
    for mut s in streams.by_ref().take(connected) {
        mqtt_connect_only(&mut s).await;
        talking.push(s);
    }
    wait_for(&accepted, 200 + connected).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let busy = palisade.rss_kib();
    println!(
        "{connected} of them sent an MQTT CONNECT (upstream connection open): {:.1} MiB, {} file descriptors",
        busy as f64 / 1024.0,
        fds(&palisade)
    );
    // What one idle session costs, plus what its CONNECT added.
    let per_idle = (idle.saturating_sub(before)) as f64 / IDLE_SESSIONS as f64;
    let per_connected = per_idle + (busy.saturating_sub(idle)) as f64 / connected as f64;
    println!(
        "memory per connected idle session (also upstream TCP, parser state): {per_connected:>6.1} KiB"
    );
    drop(talking);
    drop(streams);
    palisade.stop();
}

/// Send an MQTT CONNECT and nothing more; the broker behind is a sink.
async fn mqtt_connect_only<S: AsyncWrite + Unpin>(s: &mut S) {
    s.write_all(&common::mqtt_connect("idle")).await.unwrap();
    s.flush().await.unwrap();
}

async fn wait_for(counter: &AtomicUsize, n: usize) {
    let start = Instant::now();
    while counter.load(Ordering::Relaxed) < n {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "only {} of {n} sessions opened",
            counter.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ------------------------------------------------------------------ utils

/// Room for 10,000 sessions: each is two sockets in the appliance and one
/// in this process (and one in the sink). As root the hard limit is raised
/// too; the children inherit it.
fn raise_fd_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let want = 65_536;
    let limit = getrlimit(Resource::Nofile);
    let raised = Rlimit {
        current: Some(want),
        maximum: Some(limit.maximum.map_or(want, |m| m.max(want))),
    };
    if setrlimit(Resource::Nofile, raised).is_err() {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            },
        );
    }
    let now = getrlimit(Resource::Nofile);
    if now
        .current
        .is_some_and(|c| c < 2 * IDLE_SESSIONS as u64 + 100)
    {
        println!(
            "note: open-file limit {:?} is below what {IDLE_SESSIONS} sessions need",
            now.current
        );
    }
}
