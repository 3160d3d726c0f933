//! What the benchmarks share: the release `palisade serve` in a process of
//! its own, device TLS clients, MQTT packets on the wire, and statistics.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::common;
use crate::common::appliance::{Child, Mosquitto};

/// The appliance under test, its listeners, and a count of the sessions
/// it opened (from its log).
pub struct Palisade {
    pub child: Child,
    pub addrs: std::collections::HashMap<String, SocketAddr>,
    pub sessions: Arc<AtomicUsize>,
}

impl Palisade {
    pub fn start(data: &Path, config: &str) -> Palisade {
        let path = data.with_extension("toml");
        std::fs::write(
            &path,
            format!("[renewal]\nlisten = \"127.0.0.1:0\"\n{config}"),
        )
        .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_palisade"))
            .arg("--data")
            .arg(data)
            .arg("serve")
            .arg("--config")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut addrs = std::collections::HashMap::new();
        for line in lines.by_ref() {
            let line = line.unwrap();
            if line.contains(" listening ") {
                let field = |name: &str| {
                    line.split_whitespace()
                        .find_map(|w| w.strip_prefix(&format!("{name}=")))
                        .unwrap()
                        .to_owned()
                };
                addrs.insert(field("route"), field("addr").parse().unwrap());
            }
            if line.contains(" ready ") {
                break;
            }
            assert!(!line.contains("ERROR"), "{line}");
        }
        let sessions = Arc::new(AtomicUsize::new(0));
        let counted = sessions.clone();
        std::thread::spawn(move || {
            for line in lines {
                let Ok(line) = line else { return };
                if line.contains("session open") {
                    counted.fetch_add(1, Ordering::Relaxed);
                } else if line.contains(" WARN ") || line.contains(" ERROR ") {
                    eprintln!("palisade: {line}");
                }
            }
        });
        Palisade {
            child: Child(child),
            addrs,
            sessions,
        }
    }

    pub fn port(&self, route: &str) -> u16 {
        self.addrs[route].port()
    }

    /// Resident memory, KiB.
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.child.0.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    pub fn stop(mut self) {
        let pid = rustix::process::Pid::from_raw(self.child.0.id() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        let _ = self.child.0.wait();
    }
}

/// A `[[route]]` table for MQTT over TLS on a free port.
pub fn route(name: &str, parser: Option<&str>, upstream: u16) -> String {
    let parser = parser.map_or(String::new(), |p| format!("parser = \"{p}\"\n"));
    format!(
        "[[route]]\nname = \"{name}\"\nprotocol = \"mqtt\"\ntransport = \"tls\"\nlisten = \"127.0.0.1:0\"\n{parser}upstream = \"127.0.0.1:{upstream}\"\n"
    )
}

/// A device's TLS client settings, from its `pki issue` directory.
pub fn client_config(device: &Path) -> TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(device.join("ca.pem")).unwrap() {
        roots.add(ca.unwrap()).unwrap();
    }
    let chain: Vec<_> = CertificateDer::pem_file_iter(device.join("cert.pem"))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(device.join("key.pem")).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    // Every handshake a full one, on both sides.
    config.resumption = rustls::client::Resumption::disabled();
    TlsConnector::from(Arc::new(config))
}

pub async fn tls_connect(
    tls: &TlsConnector,
    port: u16,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    tcp.set_nodelay(true)?;
    tls.connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// Read one MQTT packet; its first byte.
pub async fn read_packet<S: AsyncRead + Unpin>(s: &mut S) -> u8 {
    let first = s.read_u8().await.unwrap();
    let (mut len, mut shift) = (0usize, 0);
    loop {
        let b = s.read_u8().await.unwrap();
        len |= usize::from(b & 0x7f) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            break;
        }
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await.unwrap();
    first
}

pub async fn mqtt_connect<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, client: &str) {
    s.write_all(&common::mqtt_connect(client)).await.unwrap();
    assert_eq!(read_packet(s).await, 0x20, "CONNACK");
}

/// The median.
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The `p`th percentile.
pub fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v[i]
}

/// Messages per second of a pipelined burst of QoS 0 PUBLISHes (100-byte payloads to a
/// telemetry topic), timed to
/// the PINGRESP that the broker sends only after handling all of them.
pub async fn burst<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, messages: usize) -> f64 {
    mqtt_connect(&mut s, "bench-burst").await;
    let batch = common::mqtt_publish("site/bench/telemetry", &[b'x'; 100]).repeat(100);
    let start = Instant::now();
    for _ in 0..messages / 100 {
        s.write_all(&batch).await.unwrap();
    }
    s.write_all(&[0xc0, 0]).await.unwrap();
    s.flush().await.unwrap();
    while read_packet(&mut s).await != 0xd0 {}
    let rate = messages as f64 / start.elapsed().as_secs_f64();
    let _ = s.write_all(&[0xe0, 0]).await;
    rate
}

/// A mosquitto broker, if mosquitto is installed.
pub fn start_mosquitto() -> Option<Mosquitto> {
    let found = Command::new("sh")
        .args(["-c", "command -v mosquitto"])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    found.then(Mosquitto::start)
}
