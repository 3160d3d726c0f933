//! The HTTPS admin API, used as a remote operator would: curl and the
//! `palisade --remote` command line, with operator certificates from the
//! site CA whose roles decide what each may do. Device certificates never
//! open the API, and operator certificates never open a route.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::appliance::{
    Appliance, CountingUpstream, first_party_registry, install_before_start, outcome, palisade,
    require, route, wait_until,
};

/// `curl` posting `body` to the API at `port` with the credentials in
/// `dir` (none: no client certificate); the HTTP status (0 when no
/// response came) and the body.
fn curl(port: u16, dir: Option<&Path>, body: &str) -> (u16, String) {
    let mut command = Command::new("curl");
    // No answer within a minute is an answer: the API is blocked.
    command.args(["--silent", "--show-error", "--max-time", "60"]);
    command.args(["--write-out", "\n%{http_code}"]);
    if let Some(dir) = dir {
        command
            .arg("--cert")
            .arg(dir.join("cert.pem"))
            .arg("--key")
            .arg(dir.join("key.pem"))
            .arg("--cacert")
            .arg(dir.join("ca.pem"));
    } else {
        command.arg("--insecure");
    }
    let out = command
        .args(["--data", body])
        .arg(format!("https://127.0.0.1:{port}/v1/admin"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    (status.trim().parse().unwrap_or(0), body.to_owned())
}

/// `palisade --remote ... args` with the credentials in `dir`: whether it
/// succeeded, stdout, stderr.
fn remote(port: u16, dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = palisade()
        .args(["--remote", &format!("https://127.0.0.1:{port}")])
        .arg("--credentials")
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    outcome(&out)
}

/// A configuration with the admin API and one route, each on a port of
/// its own: the embedded defaults listen on fixed ports, which tests
/// running at once would share.
fn admin_and_a_route() -> String {
    let upstream = "127.0.0.1:9";
    let route = route("mqtt-tls", "mqtt", "tls", Some("mqtt"), upstream);
    format!("[admin]\nlisten = \"127.0.0.1:0\"\n{route}")
}

#[test]
fn operators_administer_by_role_over_https() {
    if !require("curl") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    first_party_registry(w);
    let upstream = CountingUpstream::start();
    let config = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n{}",
        route(
            "mqtt-tls",
            "mqtt",
            "tls",
            Some("mqtt"),
            &format!("127.0.0.1:{}", upstream.port)
        )
    );
    let appliance = Appliance::start_prepared(&config, |data| install_before_start(w, data, &[]));
    let port = appliance.port("admin");
    let operator = |name: &str, role: &str| {
        let out = w.join("operators").join(name);
        let said = appliance.cli_ok(&[
            "operator",
            "issue",
            name,
            "--role",
            role,
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(said.contains(&format!("to {name} ({role})")), "{said}");
        out
    };
    let (val, ann, root) = (
        operator("val", "viewer"),
        operator("ann", "operator"),
        operator("root", "admin"),
    );
    let plc = appliance.issue("plc-1", "plc", "cell-1");

    // A viewer lists: the plugins with the routes that use them.
    let (status, body) = curl(port, Some(&val), r#"{"op":"plugin-list"}"#);
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(body.trim()).unwrap();
    assert!(answer["ok"].to_string().contains("mqtt-tls"), "{body}");
    let (status, body) = curl(port, Some(&val), r#"{"op":"device-show","device":"plc-1"}"#);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""state":"active""#), "{body}");

    // ... and may do nothing more.
    let (status, body) = curl(port, Some(&val), r#"{"op":"quarantine","device":"plc-1"}"#);
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("operator val has the viewer role; quarantine needs operator"),
        "{body}"
    );

    // An operator quarantines, through the command line; an admin's role
    // covers an operator's.
    let (ok, out, err) = remote(port, &ann, &["device", "quarantine", "plc-1"]);
    assert!(ok, "{out}{err}");
    let (ok, out, err) = remote(port, &root, &["device", "release", "plc-1"]);
    assert!(ok, "{out}{err}");
    // An operator may not enroll devices or issue certificates.
    let (ok, _, err) = remote(
        port,
        &ann,
        &["pki", "issue", "plc-2", "--class", "plc", "--out", "x"],
    );
    assert!(
        !ok && err.contains("operator ann has the operator role; issue needs admin"),
        "{err}"
    );
    // An admin issues a device certificate from afar: the key is made on
    // the admin's machine, and the device then connects.
    let far = w.join("far-plc");
    let (ok, out, err) = remote(
        port,
        &root,
        &[
            "pki",
            "issue",
            "plc-2",
            "--class",
            "plc",
            "--out",
            far.to_str().unwrap(),
        ],
    );
    assert!(ok && out.contains("issued certificate"), "{out}{err}");
    assert!(far.join("key.pem").exists());
    let list = appliance.cli_ok(&["pki", "list"]);
    assert!(list.contains("plc-2"), "{list}");

    // A plugin install from the signed registry, with its progress shown
    // as it happens, and the new version serving the route.
    let (ok, out, err) = remote(port, &ann, &["plugin", "install", "mqtt"]);
    assert!(ok, "{out}{err}");
    for step in [
        "fetching mqtt",
        "verified mqtt 1.0.0",
        "precompiling",
        "self-checks",
    ] {
        assert!(err.contains(step), "no progress line {step:?}: {err}");
    }
    let (status, body) = curl(port, Some(&val), r#"{"op":"plugin-list"}"#);
    assert_eq!(status, 200);
    assert!(body.contains("1.0.0"), "{body}");

    // Plugin settings: an operator's to change, and to read (one may be a
    // credential), not a viewer's.
    let (ok, out, err) = remote(
        port,
        &ann,
        &["plugin", "config", "mqtt", "payload-bytes", "8"],
    );
    assert!(ok, "{out}{err}");
    let (ok, out, _) = remote(port, &ann, &["plugin", "config", "mqtt", "payload-bytes"]);
    assert!(ok && out == "8\n", "{out}");
    for read in [
        &["plugin", "config", "mqtt"][..],
        &["plugin", "config", "mqtt", "payload-bytes"],
    ] {
        let (ok, out, err) = remote(port, &val, read);
        assert!(
            !ok && err.contains("plugin-config needs operator"),
            "{out}{err}"
        );
        assert!(!out.contains('8'), "{out}");
    }
    let (ok, _, err) = remote(
        port,
        &val,
        &["plugin", "config", "mqtt", "payload-bytes", "0"],
    );
    assert!(!ok && err.contains("plugin-config needs operator"), "{err}");
    let (ok, _, err) = remote(
        port,
        &ann,
        &["plugin", "config", "mqt", "payload-bytes", "8"],
    );
    assert!(!ok && err.contains("no plugin mqt"), "{err}");

    // Who the operators are is decided on the appliance only, whatever
    // the role.
    let (status, body) = curl(port, Some(&root), r#"{"op":"operator-list"}"#);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("only on the appliance itself"), "{body}");
    let (ok, _, err) = remote(port, &root, &["operator", "revoke", "ann"]);
    assert!(!ok && err.contains("this one runs here"), "{err}");

    // Not requests: refused with a reason, nothing executed.
    let (status, body) = curl(port, Some(&ann), "{not json");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("not an admin request"), "{body}");
    // A refusal by the appliance comes back as 422 with its reason.
    let (status, body) = curl(port, Some(&ann), r#"{"op":"quarantine","device":"nobody"}"#);
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("no device nobody"), "{body}");

    // No certificate, or a device's: no handshake, no request.
    let (status, _) = curl(port, None, r#"{"op":"plugin-list"}"#);
    assert_eq!(status, 0);
    let (status, _) = curl(port, Some(&plc), r#"{"op":"plugin-list"}"#);
    assert_eq!(status, 0);
    appliance.wait_log(|l| {
        l.contains("admin API: handshake refused") && l.contains("a device's, not an operator's")
    });
    // An operator's certificate opens no route.
    let (status, _) = curl_route(appliance.port("mqtt-tls"), &ann);
    assert_eq!(status, 0);
    appliance.wait_refused(&["an operator's, not a device's"]);

    // A revoked operator is refused at the next request.
    appliance.cli_ok(&["operator", "revoke", "ann"]);
    let (status, _) = curl(port, Some(&ann), r#"{"op":"plugin-list"}"#);
    assert_eq!(status, 0);
    appliance.wait_log(|l| {
        l.contains("admin API: handshake refused") && l.contains("operator ann: revoked")
    });
    let list = appliance.cli_ok(&["operator", "list"]);
    assert!(
        list.lines()
            .any(|l| l.starts_with("ann") && l.ends_with("revoked")),
        "{list}"
    );
    assert!(
        list.lines()
            .any(|l| l.starts_with("val") && l.contains("viewer") && l.ends_with("valid")),
        "{list}"
    );
}

/// curl's TLS handshake with a route's listener, with the credentials in
/// `dir`.
fn curl_route(port: u16, dir: &Path) -> (u16, String) {
    let out = Command::new("curl")
        .args(["--silent", "--write-out", "%{http_code}"])
        .arg("--cert")
        .arg(dir.join("cert.pem"))
        .arg("--key")
        .arg(dir.join("key.pem"))
        .arg("--cacert")
        .arg(dir.join("ca.pem"))
        .arg(format!("https://127.0.0.1:{port}/"))
        .output()
        .unwrap();
    let code = String::from_utf8_lossy(&out.stdout);
    (code.trim().parse().unwrap_or(0), code.into_owned())
}

/// A TLS client with the operator credentials in `dir`.
fn operator_tls(dir: &Path) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(dir.join("cert.pem"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(dir.join("key.pem")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(dir.join("ca.pem")).unwrap() {
        roots.add(ca.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(certs, key)
    .unwrap();
    Arc::new(config)
}

/// Operator `name` with `role`, issued on `appliance`, its credentials in
/// a directory of its name under `work`.
fn issue_operator(appliance: &Appliance, work: &Path, name: &str, role: &str) -> PathBuf {
    let out = work.join(name);
    let dir = out.to_str().unwrap();
    appliance.cli_ok(&["operator", "issue", name, "--role", role, "--out", dir]);
    out
}

type OperatorStream = rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>;

/// A TLS connection to the API at `port` as `tls`'s operator, its
/// handshake to be done by the first read or write.
fn connect_as(port: u16, tls: Arc<rustls::ClientConfig>) -> std::io::Result<OperatorStream> {
    connect_as_from(std::net::TcpStream::connect(("127.0.0.1", port))?, tls)
}

/// A TLS connection on `tcp` as `tls`'s operator, its handshake to be done
/// by the first read or write.
fn connect_as_from(
    tcp: std::net::TcpStream,
    tls: Arc<rustls::ClientConfig>,
) -> std::io::Result<OperatorStream> {
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let session = rustls::ClientConnection::new(tls, name).map_err(std::io::Error::other)?;
    Ok(rustls::StreamOwned::new(session, tcp))
}

/// Send `body` to the API at `port` from `source` as `tls`'s operator, wait for the
/// answer's status line, then send one byte every 150 ms (one TLS record
/// each) until the API closes the connection. The status line, and how
/// long after it the connection stayed open (`None`: still open after 20
/// seconds). `answered` is told when the status line came.
fn drip_after(
    port: u16,
    source: [u8; 4],
    tls: Arc<rustls::ClientConfig>,
    body: &str,
    answered: &std::sync::mpsc::Sender<()>,
) -> Result<(String, Option<Duration>), String> {
    let mut stream = connect_as_from(tcp_from(source, port), tls).map_err(|e| e.to_string())?;
    stream
        .sock
        // Answered at once; waiting behind the connections that drip
        // took twenty seconds.
        .set_read_timeout(Some(Duration::from_secs(15)))
        .map_err(|e| e.to_string())?;
    let request = format!(
        "POST /v1/admin HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            other => return Err(format!("no answer: {other:?}")),
        }
    }
    let _ = answered.send(());
    let status = String::from_utf8_lossy(&head).trim().to_owned();
    let since = Instant::now();
    stream
        .sock
        .set_read_timeout(Some(Duration::from_millis(150)))
        .map_err(|e| e.to_string())?;
    let mut sink = [0u8; 4096];
    while since.elapsed() < Duration::from_secs(20) {
        if stream
            .write_all(b"x")
            .and_then(|()| stream.flush())
            .is_err()
        {
            return Ok((status, Some(since.elapsed())));
        }
        match stream.read(&mut sink) {
            Ok(0) => return Ok((status, Some(since.elapsed()))),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return Ok((status, Some(since.elapsed()))),
        }
    }
    Ok((status, None))
}

#[test]
fn a_viewer_dripping_after_a_refusal_neither_lingers_nor_blocks_a_quarantine() {
    if !require("curl") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let appliance = Appliance::start(&admin_and_a_route());
    let port = appliance.port("admin");
    let val = issue_operator(&appliance, w, "val", "viewer");
    let ann = issue_operator(&appliance, w, "ann", "operator");
    appliance.issue("plc-1", "plc", "cell-1");

    // More connections than the API executes requests at once, each
    // refused (a viewer may not quarantine), then dripping. Each from an
    // address of its own: the API handshakes only a few connections at once
    // from one address.
    let tls = operator_tls(&val);
    let (answered, answers) = std::sync::mpsc::channel();
    let drippers: Vec<_> = (1..=20)
        .map(|i| {
            let (tls, answered) = (tls.clone(), answered.clone());
            std::thread::spawn(move || {
                drip_after(
                    port,
                    [127, 0, 1, i],
                    tls,
                    r#"{"op":"quarantine","device":"plc-1"}"#,
                    &answered,
                )
            })
        })
        .collect();
    for _ in 0..drippers.len() {
        answers
            .recv_timeout(Duration::from_secs(15))
            .expect("every refusal answered at once");
    }

    // While they drip, an operator quarantines.
    let started = Instant::now();
    let (status, body) = curl(port, Some(&ann), r#"{"op":"quarantine","device":"plc-1"}"#);
    assert_eq!(status, 200, "{body}");
    // At once; waiting behind the drippers took twenty seconds. The bound
    // is just below that, for a loaded machine.
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the quarantine waited {:?}",
        started.elapsed()
    );

    for dripper in drippers {
        let (status, open) = dripper.join().unwrap().unwrap();
        assert!(status.contains("403"), "{status}");
        let open = open.expect("a dripping connection was held open for 20 s");
        // The API drains a refused request for two seconds.
        assert!(open < Duration::from_secs(15), "held open for {open:?}");
    }
}

/// A TCP connection to `port` on 127.0.0.1 from `source`, another
/// loopback address (Linux answers on the whole 127/8), as a second host
/// would open it.
fn tcp_from(source: [u8; 4], port: u16) -> std::net::TcpStream {
    use rustix::net::{AddressFamily, SocketType, bind, connect, socket};
    let fd = socket(AddressFamily::INET, SocketType::STREAM, None).unwrap();
    bind(&fd, &std::net::SocketAddr::from((source, 0))).unwrap();
    connect(&fd, &std::net::SocketAddr::from(([127, 0, 0, 1], port))).unwrap();
    std::net::TcpStream::from(fd)
}

/// A host that opens connections to the API and sends nothing on them,
/// which anyone may without a certificate, locks no operator out: past
/// its share of the handshakes its connections are closed at once, and an
/// operator's request from another address is answered.
#[test]
fn idle_connections_from_one_address_lock_no_operator_out() {
    if !require("curl") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let appliance = Appliance::start(&admin_and_a_route());
    let port = appliance.port("admin");
    let ann = issue_operator(&appliance, work.path(), "ann", "operator");

    // Four times as many connections as the API handshakes at once, each
    // of which, let wait, holds a handshake for its whole timeout.
    let idle: Vec<_> = (0..256).map(|_| tcp_from([127, 0, 0, 2], port)).collect();
    let started = Instant::now();
    let (status, body) = curl(port, Some(&ann), r#"{"op":"plugin-list"}"#);
    assert_eq!(status, 200, "{body}");
    // Answered in a moment; waiting behind the idle connections took
    // twenty seconds. The bound is just below that, for a loaded machine.
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the operator waited {:?}",
        started.elapsed()
    );
    drop(idle);
}

/// A flood from a few addresses, none of which needs a certificate, takes
/// every handshake the API runs at once; an operator who was admitted
/// before, from an address of their own, still gets in.
#[test]
fn idle_connections_from_a_few_addresses_lock_no_known_operator_out() {
    if !require("curl") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let appliance = Appliance::start(&admin_and_a_route());
    let port = appliance.port("admin");
    let ann = issue_operator(&appliance, work.path(), "ann", "operator");
    let (status, body) = curl(port, Some(&ann), r#"{"op":"plugin-list"}"#);
    assert_eq!(status, 200, "{body}");

    // Nine addresses, each holding as many handshakes as one may: more
    // than the API runs at once, each held for the handshake's timeout.
    let idle: Vec<_> = (2..11)
        .flat_map(|host| (0..8).map(move |_| host))
        .map(|host| tcp_from([127, 0, 0, host], port))
        .collect();
    let (status, body) = curl(port, Some(&ann), r#"{"op":"plugin-list"}"#);
    assert_eq!(status, 200, "{body}");
    drop(idle);
}

/// A TLS connection to the API at `port` as `tls`'s operator, handshake
/// done, on which nothing is sent.
fn idle_connection(port: u16, tls: Arc<rustls::ClientConfig>) -> OperatorStream {
    let mut stream = connect_as(port, tls).unwrap();
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock).unwrap();
    }
    stream
}

/// curl's status for a listing as the operator in `dir`, until it is
/// `wanted` (the appliance counts a connection a moment after the client's
/// handshake ends) or `deadline` passed; the body of that answer.
fn listing_before(port: u16, dir: &Path, wanted: u16, deadline: Instant) -> Result<String, String> {
    loop {
        let (status, body) = curl(port, Some(dir), r#"{"op":"plugin-list"}"#);
        if status == wanted {
            return Ok(body);
        }
        if Instant::now() >= deadline {
            return Err(format!("still {status}, not {wanted}: {body}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// How long the API waits for a request on a connection before it closes
/// it (`IO_TIMEOUT` in `admin::https`).
const API_IO_TIMEOUT: Duration = Duration::from_secs(30);

/// An operator's credential that opens connections and holds them, as a
/// stolen one might, is answered 503 past the cap at once, while another
/// operator is served; a connection it closes frees its place.
#[test]
fn an_operator_holding_connections_open_locks_no_one_out() {
    if !require("curl") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let appliance = Appliance::start(&admin_and_a_route());
    let port = appliance.port("admin");
    let ann = issue_operator(&appliance, w, "ann", "operator");
    let val = issue_operator(&appliance, w, "val", "viewer");

    // The API closes Ann's silent connections at its IO timeout: each
    // step must be seen before. On a machine so loaded that it was not
    // (the connections' first opened that long ago), it is tried again;
    // a step that failed sooner is a failure.
    let tls = operator_tls(&ann);
    for attempt in 1.. {
        let expires = Instant::now() + API_IO_TIMEOUT - Duration::from_secs(2);
        let Err(e) = holding(port, &ann, &val, &tls, expires) else {
            return;
        };
        assert!(Instant::now() >= expires && attempt < 3, "{e}");
    }
}

/// The steps of [`an_operator_holding_connections_open_locks_no_one_out`],
/// each seen before `expires`.
fn holding(
    port: u16,
    ann: &Path,
    val: &Path,
    tls: &Arc<rustls::ClientConfig>,
    expires: Instant,
) -> Result<(), String> {
    // Ann's credential opens as many connections as an operator may,
    // and says nothing on them.
    let mut held: Vec<_> = (0..palisade::admin::MAX_CONNECTIONS_PER_OPERATOR)
        .map(|_| idle_connection(port, tls.clone()))
        .collect();
    let refused = listing_before(port, ann, 503, expires)?;
    assert!(
        refused.contains(&format!(
            "ann already has {} connections open",
            palisade::admin::MAX_CONNECTIONS_PER_OPERATOR
        )),
        "{refused}"
    );
    // Another operator is served meanwhile.
    let (status, body) = curl(port, Some(val), r#"{"op":"plugin-list"}"#);
    assert_eq!(status, 200, "{body}");
    // A connection Ann closes frees its place.
    held.pop();
    listing_before(port, ann, 200, expires)?;
    // And the ones she keeps still count.
    held.pop();
    held.push(idle_connection(port, tls.clone()));
    held.push(idle_connection(port, tls.clone()));
    listing_before(port, ann, 503, expires)?;
    Ok(())
}

/// The status line of the answer on `stream`.
fn status_line(stream: &mut OperatorStream) -> String {
    stream
        .sock
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            other => panic!("no answer: {other:?}, after {head:?}"),
        }
    }
    String::from_utf8_lossy(&head).trim().to_owned()
}

/// An operator revoked while their request is on its way is refused when
/// it arrives: revoking takes effect at the next request, not at the next
/// connection.
#[test]
fn an_operator_revoked_while_sending_a_request_is_refused() {
    let work = tempfile::tempdir().unwrap();
    let appliance = Appliance::start(&admin_and_a_route());
    let port = appliance.port("admin");
    let ann = issue_operator(&appliance, work.path(), "ann", "operator");
    appliance.issue("plc-1", "plc", "cell-1");

    // Ann's connection is admitted and her request's head sent ...
    let body = r#"{"op":"quarantine","device":"plc-1"}"#;
    let mut stream = connect_as(port, operator_tls(&ann)).unwrap();
    let head = format!(
        "POST /v1/admin HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.flush().unwrap();
    // (admitted by the server, not only handshaken by the client: a
    // revocation before would be refused at the handshake, with no answer)
    appliance.wait_log(|l| l.contains("connection admitted") && l.contains("operator=ann"));
    // ... when she is revoked; then the rest of it comes.
    appliance.cli_ok(&["operator", "revoke", "ann"]);
    stream.write_all(body.as_bytes()).unwrap();
    stream.flush().unwrap();

    let status = status_line(&mut stream);
    assert!(status.contains("403"), "{status}");
    let show = appliance.cli_ok(&["device", "show", "plc-1"]);
    assert!(show.contains("\"state\": \"active\""), "{show}");
}

/// The operator-action records in the SIEM file at `path`.
fn operator_actions(path: &Path) -> Vec<serde_json::Value> {
    common::json_lines(path)
        .into_iter()
        .filter(|r| r["what"]["type"] == "operator-action")
        .collect()
}

/// Operators' requests reach the audit trail, and through it the SIEM:
/// who, with which role, asked what about which device, and how it ended.
#[test]
fn operators_requests_reach_the_audit_trail() {
    if !require("curl") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let siem = w.join("siem.jsonl");
    let config = format!(
        "{}[[siem]]\nkind = \"file\"\nname = \"siem\"\npath = \"{}\"\n",
        admin_and_a_route(),
        siem.display()
    );
    let appliance = Appliance::start(&config);
    let port = appliance.port("admin");
    let ann = issue_operator(&appliance, w, "ann", "operator");
    let val = issue_operator(&appliance, w, "val", "viewer");
    appliance.issue("plc-1", "plc", "cell-1");

    let quarantine = r#"{"op":"quarantine","device":"plc-1"}"#;
    let (status, body) = curl(port, Some(&ann), quarantine);
    assert_eq!(status, 200, "{body}");
    let (status, body) = curl(port, Some(&val), quarantine);
    assert_eq!(status, 403, "{body}");

    wait_until("two operator actions exported", || {
        operator_actions(&siem).len() >= 2
    });
    let records = operator_actions(&siem);
    let by = |name: &str| {
        records
            .iter()
            .find(|r| r["what"]["operator"] == name)
            .unwrap_or_else(|| panic!("nothing by {name}: {records:?}"))
    };
    let done = by("ann");
    assert_eq!(done["what"]["request"], "quarantine", "{done}");
    assert_eq!(done["what"]["role"], "operator", "{done}");
    assert_eq!(done["what"]["outcome"], "ok", "{done}");
    assert_eq!(done["what"]["arguments"]["device"], "plc-1", "{done}");
    assert_eq!(done["device"]["id"], "plc-1", "{done}");
    assert_eq!(done["device"]["class"], "plc", "{done}");
    let refused = by("val");
    assert_eq!(refused["what"]["outcome"], "refused", "{refused}");
    let reason = refused["what"]["reason"].as_str().unwrap();
    assert!(reason.contains("has the viewer role"), "{reason}");
}
