//! Revoking or quarantining a device closes its live sessions at once,
//! through the running appliance's admin socket, and its reconnections are
//! refused; releasing it lets it in again. The state survives a restart.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::appliance::{
    Appliance, Child, Mosquitto, PATIENCE, aioquic, require, require_python, route, tls_args,
};

/// A mosquitto_sub through Palisade, and its output lines as they come.
struct Subscriber {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Subscriber {
    fn start(port: u16, device: &Path, topic: &str) -> Subscriber {
        let mut args = tls_args(port, device);
        args.extend(["-t", topic, "-v"].map(String::from));
        let mut child = Command::new("mosquitto_sub")
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Subscriber {
            child: Child(child),
            lines,
        }
    }

    fn next(&self) -> String {
        self.lines
            .recv_timeout(PATIENCE)
            .expect("no message arrived")
    }

    /// Every line it printed, once stopped.
    fn stop(self) -> Vec<String> {
        drop(self.child);
        self.lines.try_iter().collect()
    }
}

fn publish_direct(broker: &Mosquitto, topic: &str, message: &str) {
    let status = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &broker.port.to_string()])
        .args(["-t", topic, "-m", message, "-r", "-q", "1"])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Subscribe through Palisade and wait for one message; whether one came.
fn subscribe_once(port: u16, device: &Path, topic: &str) -> bool {
    let mut args = tls_args(port, device);
    args.extend(["-t", topic, "-C", "1", "-W", "30"].map(String::from));
    let out = Command::new("mosquitto_sub").args(&args).output().unwrap();
    out.status.success()
}

fn setup() -> Option<(Mosquitto, Appliance)> {
    if !(require("mosquitto") && require("mosquitto_sub") && require("mosquitto_pub")) {
        return None;
    }
    let broker = Mosquitto::start();
    let upstream = format!("127.0.0.1:{}", broker.port);
    let palisade = Appliance::start(&route("mqtt-tls", "mqtt", "tls", Some("mqtt"), &upstream));
    Some((broker, palisade))
}

#[test]
fn revocation_closes_a_live_session() {
    let Some((broker, palisade)) = setup() else {
        return;
    };
    let device = palisade.issue("therm-live", "thermostat", "hall");
    publish_direct(&broker, "hall/setpoint", "before");
    let sub = Subscriber::start(palisade.port("mqtt-tls"), &device, "hall/#");
    assert_eq!(sub.next(), "hall/setpoint before");

    let out = palisade.cli_ok(&["pki", "revoke", "therm-live"]);
    assert_eq!(out, "revoked therm-live; 1 live session(s) closed\n");
    palisade.wait_log(|l| {
        l.contains("session closed")
            && l.contains("device=therm-live")
            && l.contains("reason=device revoked")
    });
    publish_direct(&broker, "hall/setpoint", "after");
    // A new connection's handshake is refused.
    assert!(!subscribe_once(
        palisade.port("mqtt-tls"),
        &device,
        "hall/#"
    ));
    palisade.wait_refused(&["device=therm-live", "reason=revoked"]);
    let rest = sub.stop();
    assert!(!rest.iter().any(|l| l.contains("after")), "{rest:?}");
}

/// A device moved to another zone (or class) by a new certificate has
/// its live sessions closed: they were judged as the old zone's.
#[test]
fn a_new_zone_closes_the_sessions_of_the_old_one() {
    let Some((broker, palisade)) = setup() else {
        return;
    };
    let device = palisade.issue("therm-moved", "thermostat", "hall");
    publish_direct(&broker, "hall/mode", "before");
    let sub = Subscriber::start(palisade.port("mqtt-tls"), &device, "hall/#");
    assert_eq!(sub.next(), "hall/mode before");
    // A new certificate for the same zone leaves the session open.
    palisade.issue("therm-moved", "thermostat", "hall");
    publish_direct(&broker, "hall/mode", "renewed");
    assert_eq!(sub.next(), "hall/mode renewed");
    palisade.issue("therm-moved", "thermostat", "yard");
    palisade.wait_log(|l| {
        l.contains("session closed")
            && l.contains("device=therm-moved")
            && l.contains("reason=class or zone changed")
    });
    drop(sub.stop());
}

#[test]
fn quarantine_closes_sessions_until_release_even_across_a_restart() {
    let Some((broker, mut palisade)) = setup() else {
        return;
    };
    let device = palisade.issue("plc-9", "thermostat", "cell-1");
    publish_direct(&broker, "cell/state", "running");
    let sub = Subscriber::start(palisade.port("mqtt-tls"), &device, "cell/#");
    assert_eq!(sub.next(), "cell/state running");

    let out = palisade.cli_ok(&["device", "quarantine", "plc-9"]);
    assert_eq!(out, "quarantined plc-9; 1 live session(s) closed\n");
    palisade.wait_log(|l| {
        l.contains("session closed") && l.contains("device=plc-9") && l.contains("quarantined")
    });
    assert!(!subscribe_once(
        palisade.port("mqtt-tls"),
        &device,
        "cell/#"
    ));
    palisade.wait_refused(&["device=plc-9", "reason=quarantined"]);
    drop(sub.stop());

    // The quarantine is on disk: after a restart, with the command line
    // opening the database itself in between, it still holds.
    assert!(palisade.terminate().success());
    let listing = palisade.cli_ok(&["device", "list"]);
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("plc-9") && l.contains("quarantined")),
        "{listing}"
    );
    let config = palisade.dir.path().join("palisade.toml");
    palisade.restart(&config);
    assert!(!subscribe_once(
        palisade.port("mqtt-tls"),
        &device,
        "cell/#"
    ));
    palisade.wait_refused(&["device=plc-9", "reason=quarantined"]);

    assert_eq!(
        palisade.cli_ok(&["device", "release", "plc-9"]),
        "released plc-9\n"
    );
    let sub = Subscriber::start(palisade.port("mqtt-tls"), &device, "cell/#");
    assert_eq!(sub.next(), "cell/state running");
    drop(sub.stop());
}

#[test]
fn quarantine_closes_a_live_quic_connection() {
    let Some((broker, _)) = setup() else {
        return;
    };
    if !require_python("aioquic") {
        return;
    }
    let upstream = format!("127.0.0.1:{}", broker.port);
    let palisade = Appliance::start(&route("mqtt-quic", "mqtt", "quic", Some("mqtt"), &upstream));
    let device = palisade.issue("quic-q", "meter", "roof");
    let mut peer = aioquic(&palisade, "mqtt-quic", &device, &["roof/q", "1", "hold"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(peer.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "puback");
    let peer = Child(peer);

    // The connection and the session of its one stream.
    let out = palisade.cli_ok(&["device", "quarantine", "quic-q"]);
    assert_eq!(out, "quarantined quic-q; 2 live session(s) closed\n");
    palisade.wait_log(|l| {
        l.contains("quic connection closed")
            && l.contains("device=quic-q")
            && l.contains("reason=device quarantined")
    });
    // The stream's session ends with the quarantine itself, not later when
    // its relay finds the connection gone: quinn hands a relay what the
    // device sent before the close, which it would go on forwarding.
    palisade.wait_log(|l| {
        l.contains("session closed")
            && l.contains("device=quic-q")
            && l.contains("reason=device quarantined")
    });
    assert_eq!(lines.next().unwrap().unwrap(), "closed");
    let (status, _, _) = peer.output();
    assert!(status.success());
}

/// An upstream that keeps a connection waiting: its accept queue is full,
/// so the SYNs of a new connection are dropped (and sent again, a second
/// later, then three) until [`GatedUpstream::open`] takes the queued one.
struct GatedUpstream {
    listener: TcpListener,
    addr: SocketAddr,
    _queued: Vec<TcpStream>,
}

impl GatedUpstream {
    fn start() -> GatedUpstream {
        use rustix::net::{AddressFamily, SocketType, bind, listen, socket};
        let fd = socket(AddressFamily::INET, SocketType::STREAM, None).unwrap();
        bind(&fd, &SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        listen(&fd, 0).unwrap();
        let listener = TcpListener::from(fd);
        let addr = listener.local_addr().unwrap();
        let mut queued = Vec::new();
        while let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            queued.push(s);
        }
        assert!(!queued.is_empty(), "the accept queue never filled");
        GatedUpstream {
            listener,
            addr,
            _queued: queued,
        }
    }

    /// Accept every connection for `time`; the bytes they sent.
    fn open(self, time: Duration) -> usize {
        let bytes = Arc::new(AtomicUsize::new(0));
        self.listener.set_nonblocking(true).unwrap();
        let start = Instant::now();
        while start.elapsed() < time {
            match self.listener.accept() {
                Ok((mut stream, _)) => {
                    let bytes = bytes.clone();
                    stream.set_nonblocking(false).unwrap();
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 4096];
                        while let Ok(n @ 1..) = stream.read(&mut buf) {
                            bytes.fetch_add(n, Ordering::SeqCst);
                        }
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        bytes.load(Ordering::SeqCst)
    }
}

/// What a QUIC device sent before its quarantine and the appliance had not
/// forwarded yet (its session was still connecting to the upstream) is
/// never forwarded: the stream's session ends with the quarantine.
#[test]
fn nothing_a_quarantined_quic_device_sent_reaches_the_upstream_after() {
    if !require_python("aioquic") {
        return;
    }
    let upstream = GatedUpstream::start();
    let palisade = Appliance::start(&route(
        "mqtt-quic",
        "mqtt",
        "quic",
        Some("mqtt"),
        &upstream.addr.to_string(),
    ));
    let device = palisade.issue("quic-g", "meter", "roof");
    let mut peer = aioquic(
        &palisade,
        "mqtt-quic",
        &device,
        &["roof/g", "1", "unanswered"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut lines = BufReader::new(peer.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "sent");
    assert_eq!(lines.next().unwrap().unwrap(), "sent");
    let peer = Child(peer);
    palisade.wait_log(|l| l.contains("session open") && l.contains("device=quic-g"));

    palisade.cli_ok(&["device", "quarantine", "quic-g"]);
    assert_eq!(lines.next().unwrap().unwrap(), "closed");
    // The session's connection would get through within three seconds.
    assert_eq!(upstream.open(Duration::from_secs(5)), 0);
    drop(peer);
}
