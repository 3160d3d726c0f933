//! Helpers for tests that run the real `palisade serve` with real peers:
//! external programs, a mosquitto broker, the appliance with its log.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a test waits for something that should happen at once before
/// it fails with the log: a guard against hangs, not a speed assertion.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Whether `program` is installed. A test whose peer is missing is
/// skipped on a developer's machine, and fails under CI (`CI=true`),
/// where `scripts/test` installs every peer.
pub fn require(program: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    missing_is_fatal(found, program)
}

/// Whether the Python module `module` is importable; as [`require`].
pub fn require_python(module: &str) -> bool {
    let found = Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    missing_is_fatal(found, &format!("python module {module}"))
}

/// `found`, after failing under CI when it is not.
pub fn missing_is_fatal(found: bool, what: &str) -> bool {
    if !found {
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "{what} is missing under CI: scripts/test must install it"
        );
        eprintln!("SKIPPED: {what} is not installed (scripts/test installs it)");
    }
    found
}

/// A child process killed (and reaped) when dropped.
pub struct Child(pub std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Child {
    /// Wait for the process to exit, within [`PATIENCE`].
    pub fn wait(&mut self) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            assert!(start.elapsed() < PATIENCE, "child did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its output so far and at exit, once it exited.
    pub fn output(mut self) -> (std::process::ExitStatus, String, String) {
        let status = self.wait();
        let mut out = String::new();
        let mut err = String::new();
        if let Some(mut o) = self.0.stdout.take() {
            std::io::Read::read_to_string(&mut o, &mut out).unwrap();
        }
        if let Some(mut e) = self.0.stderr.take() {
            std::io::Read::read_to_string(&mut e, &mut err).unwrap();
        }
        (status, out, err)
    }
}

/// A TCP port free right now on loopback.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A loopback port bound but not listening, held until dropped: a
/// connection to it is refused, as by a receiver that is down, and no other
/// socket can take it meanwhile (it is bound without SO_REUSEADDR, which a
/// listener would need to share it). For a peer that is down for a while
/// and then starts on the port: [`free_port`] leaves the port to whoever
/// binds next.
pub struct HeldPort {
    pub port: u16,
    _socket: tokio::net::TcpSocket,
}

/// A port held as [`HeldPort`] says.
pub fn held_port() -> HeldPort {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = socket.local_addr().unwrap().port();
    HeldPort {
        port,
        _socket: socket,
    }
}

/// Wait until something accepts TCP connections on `port`.
pub fn wait_for_port(port: u16) {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < PATIENCE, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Broker configuration (for [`Mosquitto::start_with`]) that keeps every
/// message for a subscriber however far behind it falls: mosquitto's
/// default queues 1000 for a QoS 1 subscriber and drops the rest, and on a
/// loaded machine a stalled `mosquitto_sub` would count them as lost by
/// Palisade.
pub const KEEP_EVERY_MESSAGE: &str = "max_queued_messages 0\n";

/// A mosquitto broker on a free loopback port, plain TCP, anonymous.
pub struct Mosquitto {
    pub port: u16,
    _child: Child,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    pub fn start() -> Mosquitto {
        Mosquitto::start_with("")
    }

    /// A broker whose configuration also has `extra` (more listeners).
    pub fn start_with(extra: &str) -> Mosquitto {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("allow_anonymous true\npersistence false\nlistener {port} 127.0.0.1\n{extra}"),
        )
        .unwrap();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let child = Child(child);
        wait_for_port(port);
        Mosquitto {
            port,
            _child: child,
            _dir: dir,
        }
    }
}

/// A TCP listener that counts the connections it accepts and the bytes it
/// receives: an upstream that proves nothing was forwarded.
pub struct CountingUpstream {
    pub port: u16,
    pub connections: Arc<AtomicUsize>,
    pub bytes: Arc<AtomicUsize>,
    /// Connections read to their end: every byte they brought is counted.
    pub ended: Arc<AtomicUsize>,
}

impl CountingUpstream {
    pub fn start() -> CountingUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let bytes = Arc::new(AtomicUsize::new(0));
        let ended = Arc::new(AtomicUsize::new(0));
        let (c, b, e) = (connections.clone(), bytes.clone(), ended.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                c.fetch_add(1, Ordering::SeqCst);
                let (b, e) = (b.clone(), e.clone());
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = std::io::Read::read(&mut stream, &mut buf) {
                        if n == 0 {
                            break;
                        }
                        b.fetch_add(n, Ordering::SeqCst);
                    }
                    e.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        CountingUpstream {
            port,
            connections,
            bytes,
            ended,
        }
    }

    /// The bytes of every connection, once `n` connections ended: what
    /// reached the upstream in all, not what was counted so far.
    pub fn bytes_once_ended(&self, n: usize) -> usize {
        wait_until("the upstream connections ending", || {
            self.ended.load(Ordering::SeqCst) >= n
        });
        self.bytes()
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::SeqCst)
    }
}

/// A `[[route]]` table listening on a free port.
pub fn route(
    name: &str,
    protocol: &str,
    transport: &str,
    parser: Option<&str>,
    upstream: &str,
) -> String {
    let parser = parser.map_or(String::new(), |p| format!("parser = \"{p}\"\n"));
    format!(
        "[[route]]\nname = \"{name}\"\nprotocol = \"{protocol}\"\ntransport = \"{transport}\"\nlisten = \"127.0.0.1:0\"\n{parser}upstream = \"{upstream}\"\n"
    )
}

/// The running appliance, its data directory and its log.
pub struct Appliance {
    pub dir: tempfile::TempDir,
    pub data: PathBuf,
    child: Option<Child>,
    log: Arc<Mutex<Vec<String>>>,
    pub addrs: HashMap<String, SocketAddr>,
}

/// Whether a finished command succeeded, and its stdout and stderr.
pub fn outcome(out: &Output) -> (bool, String, String) {
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The `palisade` binary under test.
pub fn palisade() -> Command {
    Command::new(env!("CARGO_BIN_EXE_palisade"))
}

/// Run `palisade ARGS` in `dir`; its output, or a panic saying why it
/// failed.
pub fn palisade_in(dir: &Path, args: &[&str]) -> String {
    let out = palisade().current_dir(dir).args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "palisade {args:?}: {text}");
    text
}

/// A registry in `w/reg` where publisher `site` signed version 1.0.0 of
/// the first-party `mqtt` parser and `hygiene` detector.
pub fn first_party_registry(w: &Path) {
    palisade_in(w, &["registry", "init", "reg", "--keys", "keys"]);
    palisade_in(
        w,
        &[
            "registry",
            "keygen",
            "site",
            "--key",
            "site.pem",
            "--card",
            "site.json",
        ],
    );
    palisade_in(
        w,
        &[
            "registry",
            "delegate",
            "reg",
            "--keys",
            "keys",
            "--card",
            "site.json",
            "--names",
            "mqtt",
            "hygiene",
        ],
    );
    for (name, world, capabilities) in [
        ("mqtt", "parser", "[\"log\"]"),
        ("hygiene", "detector", "[\"log\", \"store\"]"),
    ] {
        let dir = w.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("palisade-plugin.toml"),
            format!(
                "name = \"{name}\"\nversion = \"1.0.0\"\nworld = \"{world}\"\n\
                 contract = \"palisade:plugin@0.1.0\"\ncapabilities = {capabilities}\n"
            ),
        )
        .unwrap();
        std::fs::write(dir.join("plugin.wasm"), super::component(name)).unwrap();
        palisade_in(
            &dir,
            &[
                "registry",
                "package",
                "--component",
                "plugin.wasm",
                "--out",
                "bundle",
            ],
        );
        palisade_in(
            &dir,
            &[
                "registry",
                "publish",
                "bundle",
                "--registry",
                "../reg",
                "--root",
                "../reg/metadata/root.json",
                "--publisher",
                "site",
                "--key",
                "../site.pem",
                "--outbox",
                "outbox",
            ],
        );
        palisade_in(
            w,
            &[
                "registry",
                "accept",
                &format!("{name}/outbox"),
                "--registry",
                "reg",
                "--keys",
                "keys",
            ],
        );
    }
}

/// What an operator does before an appliance's first start: create its
/// CA in `data`, trust the registry `work/reg`, and install `plugins`.
pub fn install_before_start(work: &Path, data: &Path, plugins: &[&str]) {
    let d = data.to_str().unwrap();
    let reg = work.join("reg");
    palisade_in(work, &["--data", d, "pki", "init"]);
    palisade_in(
        work,
        &[
            "--data",
            d,
            "registry",
            "trust",
            "reg/metadata/1.root.json",
            "--registry",
            reg.to_str().unwrap(),
        ],
    );
    for plugin in plugins {
        palisade_in(work, &["--data", d, "plugin", "install", plugin]);
    }
}

impl Appliance {
    /// Start `palisade serve` with the configuration `config` (TOML; a
    /// renewal listener on a free port is added unless it sets one), and
    /// wait until it is ready.
    pub fn start(config: &str) -> Appliance {
        Appliance::start_with_policy(config, None)
    }

    /// As [`Appliance::start`], with the site policy `policy` (Cedar) in
    /// the data directory; `None`: the embedded default.
    pub fn start_with_policy(config: &str, policy: Option<&str>) -> Appliance {
        Appliance::start_prepared(config, |data| {
            if let Some(policy) = policy {
                std::fs::create_dir_all(data).unwrap();
                std::fs::write(data.join("policy.cedar"), policy).unwrap();
            }
        })
    }

    /// As [`Appliance::start`], after `prepare` has had the data directory
    /// (not yet created) to set up as an operator would before a start.
    pub fn start_prepared(config: &str, prepare: impl FnOnce(&Path)) -> Appliance {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        prepare(&data);
        let mut config = config.to_owned();
        if !config.contains("[renewal]") {
            config.insert_str(0, "[renewal]\nlisten = \"127.0.0.1:0\"\n");
        }
        let path = dir.path().join("palisade.toml");
        std::fs::write(&path, &config).unwrap();
        let mut appliance = Appliance {
            dir,
            data,
            child: None,
            log: Arc::default(),
            addrs: HashMap::new(),
        };
        appliance.spawn(&path);
        appliance
    }

    fn spawn(&mut self, config: &Path) {
        let mut child = palisade()
            .arg("--data")
            .arg(&self.data)
            .arg("serve")
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "palisade=debug,rustls=error,warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        self.child = Some(Child(child));
        let log = self.log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                if std::env::var_os("PALISADE_TEST_LOG").is_some() {
                    eprintln!("palisade| {line}");
                }
                log.lock().unwrap().push(line);
            }
        });
        self.wait_log(|l| l.contains(" ready "));
        for line in self.log() {
            if line.contains(" listening ") {
                let field = |name: &str| {
                    line.split_whitespace()
                        .find_map(|w| w.strip_prefix(&format!("{name}=")))
                        .unwrap()
                        .to_owned()
                };
                self.addrs
                    .insert(field("route"), field("addr").parse().unwrap());
            }
        }
    }

    /// The address route `name` listens on.
    pub fn addr(&self, name: &str) -> SocketAddr {
        self.addrs[name]
    }

    /// The port route `name` listens on.
    pub fn port(&self, name: &str) -> u16 {
        self.addr(name).port()
    }

    /// The log so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Wait for a log line matching `pred`, and return it.
    pub fn wait_log(&self, pred: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            if let Some(l) = self.log().into_iter().find(|l| pred(l)) {
                return l;
            }
            assert!(
                start.elapsed() < PATIENCE,
                "no such log line; the log:\n{}",
                self.log().join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait for a `refused` line that mentions every one of `words`.
    pub fn wait_refused(&self, words: &[&str]) -> String {
        self.wait_log(|l| l.contains(" refused ") && words.iter().all(|w| l.contains(w)))
    }

    /// Run `palisade --data <data> args...`.
    pub fn cli(&self, args: &[&str]) -> Output {
        palisade()
            .arg("--data")
            .arg(&self.data)
            .args(args)
            .output()
            .unwrap()
    }

    /// Run the command line and insist that it succeeds; its stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "palisade {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Issue a certificate for `device` of `class` in zone `zone`; the
    /// directory holding cert.pem, key.pem and ca.pem.
    pub fn issue(&self, device: &str, class: &str, zone: &str) -> PathBuf {
        let out = self.dir.path().join("devices").join(device);
        self.cli_ok(&[
            "pki",
            "issue",
            device,
            "--class",
            class,
            "--zone",
            zone,
            "--out",
            out.to_str().unwrap(),
        ]);
        out
    }

    /// Start the appliance again on the same data directory, with the
    /// configuration file `config`, after [`Appliance::terminate`].
    pub fn restart(&mut self, config: &Path) {
        self.log.lock().unwrap().clear();
        self.addrs.clear();
        self.spawn(config);
    }

    /// Send SIGTERM and wait for the appliance to exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        let pid = rustix::process::Pid::from_raw(child.0.id() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        child.wait()
    }
}

/// mosquitto_pub/mosquitto_sub arguments for TLS with the device in `dir`.
pub fn tls_args(port: u16, dir: &Path) -> Vec<String> {
    vec![
        "-h".into(),
        "127.0.0.1".into(),
        "-p".into(),
        port.to_string(),
        "--cafile".into(),
        dir.join("ca.pem").display().to_string(),
        "--cert".into(),
        dir.join("cert.pem").display().to_string(),
        "--key".into(),
        dir.join("key.pem").display().to_string(),
    ]
}

/// Run mosquitto_pub with `args`; whether it succeeded, and its stderr.
pub fn mosquitto_pub(args: &[String]) -> (bool, String) {
    let out = Command::new("mosquitto_pub").args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Start mosquitto_sub with `args`, printing `topic payload` lines.
pub fn mosquitto_sub(args: &[String]) -> Child {
    Child(
        Command::new("mosquitto_sub")
            .args(args)
            .arg("-v")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    )
}

/// Publish `payload` to `topic` with the aioquic MQTT-over-QUIC peer, as
/// the device in `dir`, on QUIC route `route`.
pub fn aioquic_publish(
    palisade: &Appliance,
    route: &str,
    dir: &Path,
    topic: &str,
    payload: &str,
) -> Output {
    aioquic(palisade, route, dir, &[topic, payload])
        .output()
        .unwrap()
}

/// The aioquic MQTT-over-QUIC peer (`tests/peers/aioquic_mqtt.py`) as the
/// device in `dir`, on QUIC route `route`, with `args` (topic, payload and
/// a mode), to run.
pub fn aioquic(palisade: &Appliance, route: &str, dir: &Path, args: &[&str]) -> Command {
    let mut peer = Command::new("python3");
    peer.arg(peer_script("aioquic_mqtt.py"))
        .args(["127.0.0.1", &palisade.port(route).to_string()])
        .arg(dir)
        .args(args);
    peer
}

/// The path of a peer script in `tests/peers/`.
pub fn peer_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/peers")
        .join(name)
}

/// A TLS client with the device certificate in `dir`, connected to `addr`,
/// its handshake done: plain rustls over a blocking socket.
pub fn tls_client(
    addr: SocketAddr,
    dir: &Path,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    tls_client_with(addr, device_tls(dir)).unwrap()
}

/// A TLS client's settings with the device certificate in `dir`. Like any
/// rustls client's, they keep the session tickets servers give, and offer
/// them on the next connection made with them.
pub fn device_tls(dir: &Path) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(dir.join("ca.pem")).unwrap() {
        roots.add(ca.unwrap()).unwrap();
    }
    let chain: Vec<_> = CertificateDer::pem_file_iter(dir.join("cert.pem"))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(dir.join("key.pem")).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    Arc::new(config)
}

/// A TLS client with `config`, connected to `addr`, its handshake done;
/// the handshake's error if it failed.
pub fn tls_client_with(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
    let conn = rustls::ClientConnection::new(
        config,
        rustls::pki_types::ServerName::try_from("localhost").unwrap(),
    )
    .unwrap();
    let tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(PATIENCE))?;
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    Ok(stream)
}

/// Wait until `f` is true.
pub fn wait_until(what: &str, f: impl Fn() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < PATIENCE, "{what} never happened");
        std::thread::sleep(Duration::from_millis(10));
    }
}
