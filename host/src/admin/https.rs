//! The HTTPS admin API: the admin socket's requests, for operators on other
//! machines.
//!
//! It listens where `[admin] listen` says (off by default) with the
//! appliance's server certificate, and admits only operators: a client
//! certificate from the site CA that names an operator and a role
//! (`palisade operator issue`), recorded and unrevoked. Device certificates
//! are refused in the handshake, and operator certificates on the routes.
//!
//! One request per connection: `POST /v1/admin` with the same JSON request
//! the admin socket takes, for example `{"op":"plugin-list"}`. The answer
//! is JSON lines (`application/x-ndjson`), the socket's too: progress lines
//! (`{"progress":"..."}`) while a long request runs, then the answer,
//! `{"ok":...}` or `{"error":"..."}`. The status is 200 when the answer is
//! ok or when progress came before it (then the last line decides), 422
//! when the request was executed and refused, 403 when the operator's role
//! does not allow it (or the operator was revoked meanwhile), 400, 404,
//! 405, 408 or 413 when it is not a request at all.
//!
//! ```sh
//! curl --cert ann/cert.pem --key ann/key.pem --cacert ann/ca.pem \
//!      --data '{"op":"plugin-list"}' https://gateway.site.example:9443/v1/admin
//! ```
//!
//! An operator's connection takes one of the [`MAX_REQUESTS`] request
//! slots only while its request executes: not while the request is read,
//! nor while the answer is written or the connection closed, so that no
//! credential, however slow its client, keeps an operator's quarantine
//! waiting for longer than the requests before it take to run.
//!
//! A connection is accepted at once, whatever comes before it, and closed
//! at once when [`MAX_HANDSHAKES`] handshakes are under way, or
//! [`MAX_HANDSHAKES_PER_ADDRESS`] from its address: so that one host
//! opening connections and saying nothing, which takes no certificate,
//! keeps no operator waiting behind them. A few hosts together can still
//! take every handshake; [`OPERATOR_HANDSHAKES`] more are kept for the
//! addresses operators were lately admitted from.
//!
//! An operator has at most [`MAX_CONNECTIONS_PER_OPERATOR`] connections
//! open at once, counted from the handshake to the close; more are
//! answered 503 at once. So a credential gone astray cannot pin the
//! appliance's memory with connections, nor lock the other operators out.
//!
//! Every request an operator makes that changes something, and every one
//! refused, is recorded in the audit trail once answered, with its
//! outcome: an `operator-action` record, which the SIEM sinks export like
//! any other (see [`super::Running::start_holding`]).
//!
//! The roles ([`Role`]): `viewer` lists; `operator` also installs,
//! activates, rolls back, removes, shadows and promotes plugins, changes
//! their settings, and quarantines and releases devices; `admin` also
//! issues and revokes device certificates and enrolls devices. Who the
//! operators are is decided only on the appliance itself.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{Admin, OperatorRef, Request, Response, Running};
use crate::identity::{OperatorClaims, Role};
use crate::transport::handshakes::{Handshake, Handshakes};

/// The API's one path.
pub const API_PATH: &str = "/v1/admin";
/// Largest request body: a request with a public key fits many times.
const MAX_BODY: usize = 64 << 10;
/// Handshakes under way at once; connections past it are closed at once.
/// Kept apart from the requests' limit, so that connections that never
/// finish a handshake (no certificate needed for that) cannot lock the
/// operators out: each gives way after [`HANDSHAKE_TIMEOUT`].
const MAX_HANDSHAKES: usize = 64;
/// Handshakes under way at once from one address (an IPv6 peer: its /64);
/// connections past it are closed at once. An eighth of
/// [`MAX_HANDSHAKES`], so that one host, which needs no certificate to
/// open connections, holds at most an eighth of the handshakes; a script
/// of an operator's opening a few connections at once still has room.
const MAX_HANDSHAKES_PER_ADDRESS: usize = MAX_HANDSHAKES / 8;
/// Handshakes held back for addresses an operator was lately admitted
/// from. A flood needs no certificate, so from a few addresses it can take
/// every other handshake; these still let the operators in (a TCP
/// connection cannot come from an address its sender does not hold).
const OPERATOR_HANDSHAKES: usize = 16;
/// Addresses remembered as operators', the latest.
const OPERATOR_ADDRESSES: usize = 256;
/// Requests of admitted operators executed at once; more wait.
const MAX_REQUESTS: usize = 16;
/// Connections one operator may have open at once: twice as many as the
/// API executes requests at once, so that a script keeping every request
/// slot busy still has room for connections closing and opening.
pub const MAX_CONNECTIONS_PER_OPERATOR: usize = 2 * MAX_REQUESTS;
/// Longest wait for a handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for a request, and for each write of the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest time the answer to a refused request waits for the rest of
/// what the client sent, before closing: long enough for a request body
/// still in flight, short enough that a client dribbling bytes cannot
/// keep the connection.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);
/// Longest silence while draining: a client that sent everything is not
/// kept waiting for the whole [`DRAIN_LIMIT`].
const DRAIN_IDLE: Duration = Duration::from_millis(200);
/// Longest answer line the command line reads (a listing of thousands of
/// devices fits).
const MAX_LINE: u64 = 64 << 20;

/// Serve the API on `listener` with `tls` until `shutdown`.
pub async fn serve_https(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    admin: Admin,
    shutdown: CancellationToken,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    let per_address = Handshakes::new(MAX_HANDSHAKES_PER_ADDRESS);
    let operators = Arc::new(Semaphore::new(OPERATOR_HANDSHAKES));
    let gates = Gates {
        requests: Arc::new(Semaphore::new(MAX_REQUESTS)),
        open: Open::default(),
        known: Known::default(),
    };
    loop {
        // Accept whatever comes, and close what is over a limit at once: a
        // connection left waiting to be accepted would wait behind every
        // one before it, an operator's behind a flood's.
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, say: trying again at once
                    // would spin, and fill the log.
                    warn!(error = %e, "admin API accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Some(from_peer) = per_address.begin(peer.ip()) else {
            warn!(%peer, "admin API: refused, too many handshakes from this address");
            continue;
        };
        let permit = handshakes.clone().try_acquire_owned().or_else(|e| {
            if gates.known.contains(peer.ip()) {
                operators.clone().try_acquire_owned()
            } else {
                Err(e)
            }
        });
        let Ok(permit) = permit else {
            warn!(%peer, "admin API: refused, too many handshakes");
            continue;
        };
        let (acceptor, admin, gates) = (acceptor.clone(), admin.clone(), gates.clone());
        tokio::spawn(async move {
            let handshake = (permit, from_peer);
            connection(stream, peer, &acceptor, handshake, &gates, admin).await;
        });
    }
}

/// What bounds the API's connections and requests beyond its handshakes.
#[derive(Debug, Clone)]
struct Gates {
    /// Requests executing.
    requests: Arc<Semaphore>,
    /// Connections open, per operator.
    open: Open,
    /// Addresses operators were admitted from.
    known: Known,
}

/// The addresses operators were lately admitted from, the latest last.
#[derive(Debug, Clone, Default)]
struct Known(Arc<Mutex<std::collections::VecDeque<std::net::IpAddr>>>);

impl Known {
    fn remember(&self, address: std::net::IpAddr) {
        let address = address.to_canonical();
        let mut known = self.0.lock().unwrap_or_else(|p| p.into_inner());
        known.retain(|a| *a != address);
        if known.len() >= OPERATOR_ADDRESSES {
            known.pop_front();
        }
        known.push_back(address);
    }

    fn contains(&self, address: std::net::IpAddr) -> bool {
        let known = self.0.lock().unwrap_or_else(|p| p.into_inner());
        known.contains(&address.to_canonical())
    }
}

async fn connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: &tokio_rustls::TlsAcceptor,
    handshake: (tokio::sync::OwnedSemaphorePermit, Handshake),
    gates: &Gates,
    admin: Admin,
) {
    let handshaken = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await;
    drop(handshake);
    let mut tls = match handshaken {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            let reason = crate::identity::operator_refusal(&e);
            warn!(%peer, reason = %reason, "admin API: handshake refused");
            return;
        }
        Err(_) => {
            warn!(%peer, "admin API: handshake too slow");
            return;
        }
    };
    // The verifier admitted the certificate; read who it names, and check
    // the operator again now, so that a revocation made while the
    // connection was opening is seen.
    let operator = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or_else(|| "no client certificate".to_owned())
        .and_then(|cert| OperatorClaims::from_der(cert).map_err(|e| e.to_string()))
        .and_then(|claims| Ok((admin.operators.admit(&claims)?, claims)));
    let (role, claims) = match operator {
        Ok(o) => o,
        Err(e) => {
            warn!(%peer, reason = %e, "admin API: refused");
            let _ = reply(&mut tls, "403 Forbidden", &Response::Error(e)).await;
            return;
        }
    };
    gates.known.remember(peer.ip());
    let name = claims.name.clone();
    let Some(_open) = gates.open.enter(&name) else {
        warn!(%peer, operator = %name, "admin API: refused, too many connections");
        let error = format!(
            "operator {name} already has {MAX_CONNECTIONS_PER_OPERATOR} connections open to \
             this API: close one"
        );
        let _ = reply(&mut tls, "503 Service Unavailable", &Response::Error(error)).await;
        return;
    };
    // Tests wait for this line: from here on, a revocation is seen at the
    // request, not at the handshake.
    debug!(%peer, operator = %name, %role, "admin API: connection admitted");
    let request =
        match tokio::time::timeout(IO_TIMEOUT, crate::http::read_request(&mut tls, MAX_BODY)).await
        {
            Ok(Ok(r)) => r,
            Ok(Err(crate::http::HttpError::Bad { status, reason })) => {
                let _ = reply(&mut tls, status, &Response::Error(reason)).await;
                return;
            }
            Ok(Err(crate::http::HttpError::Io(_))) => return,
            Err(_) => {
                let error = Response::Error("request too slow".into());
                let _ = reply(&mut tls, "408 Request Timeout", &error).await;
                return;
            }
        };
    let request = match decide(&request) {
        Ok(r) => r,
        Err((status, reason)) => {
            warn!(%peer, operator = %name, %role, reason = %reason, "admin API: request refused");
            let _ = reply(&mut tls, status, &Response::Error(reason)).await;
            return;
        }
    };
    let by = OperatorRef {
        name: name.clone(),
        role,
    };
    if let Err(reason) = allowed(&request, role, &name) {
        warn!(%peer, operator = %name, %role, reason = %reason, "admin API: request refused");
        refused(&admin, &by, &request, &reason).await;
        let _ = reply(&mut tls, "403 Forbidden", &Response::Error(reason)).await;
        return;
    }
    // Only a request an operator may make waits for a slot, and holds it
    // only while it executes.
    let Ok(slot) = gates.requests.clone().acquire_owned().await else {
        return;
    };
    // Reading the request and waiting for the slot took a while: an
    // operator revoked meanwhile, or whose role changed, is refused now,
    // before the request executes, as a revocation promises.
    if let Err(e) = still_admitted(&admin, &claims, role) {
        warn!(%peer, operator = %name, reason = %e, "admin API: refused");
        drop(slot);
        refused(&admin, &by, &request, &e).await;
        let _ = reply(&mut tls, "403 Forbidden", &Response::Error(e)).await;
        return;
    }
    info!(%peer, operator = %name, %role, op = %request.op(), "admin API request");
    let mut running = Running::start_holding(admin, request, slot, Some(by));
    let first = running.next().await;
    let status = match first {
        Response::Error(_) => "422 Unprocessable Content",
        _ => "200 OK",
    };
    let mut next = Some(first);
    let mut head = Some(status);
    while let Some(line) = next.take() {
        let last = !matches!(line, Response::Progress(_));
        let written = match head.take() {
            Some(status) => reply_head(&mut tls, status, &line).await,
            None => write_line(&mut tls, &line).await,
        };
        if written.is_err() {
            // The operator went away; the request still completes.
            return;
        }
        if !last {
            next = Some(running.next().await);
        }
    }
    let _ = tokio::time::timeout(IO_TIMEOUT, tls.shutdown()).await;
}

/// Whether the operator `claims` names, admitted with `role`, is still
/// admitted with it.
fn still_admitted(admin: &Admin, claims: &OperatorClaims, role: Role) -> Result<(), String> {
    match admin.operators.admit(claims)? {
        now if now == role => Ok(()),
        now => Err(format!(
            "operator {}: role changed from {role} to {now}",
            claims.name
        )),
    }
}

/// The connections each operator has open, by name.
#[derive(Debug, Default, Clone)]
struct Open(Arc<Mutex<HashMap<String, usize>>>);

/// One connection of an operator, counted in [`Open`] while it lives.
struct Held {
    open: Open,
    name: String,
}

impl Open {
    /// Count a connection of operator `name`, unless it has
    /// [`MAX_CONNECTIONS_PER_OPERATOR`] open already.
    fn enter(&self, name: &str) -> Option<Held> {
        let mut open = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(name.to_owned()).or_default();
        if *count >= MAX_CONNECTIONS_PER_OPERATOR {
            return None;
        }
        *count += 1;
        Some(Held {
            open: self.clone(),
            name: name.to_owned(),
        })
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut open = self.open.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.name) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.name);
            }
        }
    }
}

/// Record in the audit trail that `by` was refused `request`, for
/// `reason`. Off the runtime's workers: recording may write to the
/// database itself when the audit writer is gone.
async fn refused(admin: &Admin, by: &OperatorRef, request: &Request, reason: &str) {
    let (admin, by, request, reason) = (
        admin.clone(),
        by.clone(),
        request.clone(),
        reason.to_owned(),
    );
    // Refused before it ran, it changed nothing: recorded as the queue has
    // room, so that no one slows the appliance by being refused. The
    // record logs its own failure.
    let _ =
        tokio::task::spawn_blocking(move || admin.record(&by, &request, Err(&reason), false)).await;
}

/// The request in `http`.
fn decide(http: &crate::http::Request) -> Result<Request, (&'static str, String)> {
    if http.path != API_PATH {
        return Err((
            "404 Not Found",
            format!(
                "no {}: this API serves POST {API_PATH} with one JSON request",
                http.path
            ),
        ));
    }
    if http.method != "POST" {
        return Err((
            "405 Method Not Allowed",
            format!("{} {API_PATH}: send the request with POST", http.method),
        ));
    }
    serde_json::from_slice(&http.body)
        .map_err(|e| ("400 Bad Request", format!("not an admin request: {e}")))
}

/// Whether operator `name` with `role` may make `request`; why not.
fn allowed(request: &Request, role: Role, name: &str) -> Result<(), String> {
    match request.role() {
        None => Err(format!(
            "{} is done only on the appliance itself, through its admin socket",
            request.op()
        )),
        Some(needed) if role < needed => Err(format!(
            "operator {name} has the {role} role; {} needs {needed}",
            request.op()
        )),
        Some(_) => Ok(()),
    }
}

async fn reply<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    status: &str,
    line: &Response,
) -> std::io::Result<()> {
    reply_head(stream, status, line).await?;
    // What the client sent and was not read would make the close a reset,
    // which can destroy the answer before the client reads it: take in a
    // little of it first, for a little while.
    let drain = async {
        let mut sink = [0u8; 4096];
        let mut left = MAX_BODY * 2;
        while left > 0 {
            match tokio::time::timeout(DRAIN_IDLE, stream.read(&mut sink)).await {
                Ok(Ok(n)) if n > 0 => left = left.saturating_sub(n),
                _ => break,
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_LIMIT, drain).await;
    tokio::time::timeout(IO_TIMEOUT, stream.shutdown())
        .await
        .unwrap_or(Ok(()))
}

async fn reply_head<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: &str,
    first: &Response,
) -> std::io::Result<()> {
    let head = crate::http::head(status, &[("Content-Type", "application/x-ndjson")], None);
    timed(stream.write_all(head.as_bytes())).await?;
    write_line(stream, first).await
}

async fn write_line<S: AsyncWrite + Unpin>(stream: &mut S, line: &Response) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec(line).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    timed(stream.write_all(&bytes)).await?;
    timed(stream.flush()).await
}

async fn timed(io: impl std::future::Future<Output = std::io::Result<()>>) -> std::io::Result<()> {
    tokio::time::timeout(IO_TIMEOUT, io)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "answer not read"))?
}

/// The command line's way to a remote appliance's admin API.
#[derive(Debug)]
pub struct RemoteAdmin {
    url: url::Url,
    tls: Arc<rustls::ClientConfig>,
}

impl RemoteAdmin {
    /// The API at `url` (`https://HOST:PORT`), reached with the operator
    /// credentials in `dir`: `cert.pem`, `key.pem` and the site CA's
    /// `ca.pem`, as `palisade operator issue --out DIR` writes them.
    pub fn new(url: &str, dir: &Path) -> Result<RemoteAdmin, String> {
        let url = url::Url::parse(url).map_err(|e| format!("admin URL {url}: {e}"))?;
        if url.scheme() != "https" || url.host_str().is_none() {
            return Err(format!("admin URL {url}: must be https://HOST:PORT"));
        }
        let read = |file: &str| {
            let path = dir.join(file);
            std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))
        };
        let bad =
            |file: &str, e: &dyn std::fmt::Display| format!("{}: {e}", dir.join(file).display());
        let certs = CertificateDer::pem_slice_iter(&read("cert.pem")?)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad("cert.pem", &e))?;
        let key =
            PrivateKeyDer::from_pem_slice(&read("key.pem")?).map_err(|e| bad("key.pem", &e))?;
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(&read("ca.pem")?) {
            roots
                .add(ca.map_err(|e| bad("ca.pem", &e))?)
                .map_err(|e| bad("ca.pem", &e))?;
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(|e| bad("cert.pem", &e))?;
        Ok(RemoteAdmin {
            url,
            tls: Arc::new(tls),
        })
    }

    /// Execute `request`, passing each progress line to `progress`.
    pub fn execute_with(
        &self,
        request: &Request,
        progress: &mut dyn FnMut(String),
    ) -> Result<Response, String> {
        let failed = |e: &dyn std::fmt::Display| format!("admin API {}: {e}", self.url);
        let host = self
            .url
            .host_str()
            .unwrap_or_default()
            .trim_matches(['[', ']']);
        let port = self.url.port_or_known_default().unwrap_or(443);
        let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
            .map_err(|e| failed(&e))?
            .next()
            .ok_or_else(|| failed(&"no address"))?;
        let tcp = TcpStream::connect_timeout(&addr, IO_TIMEOUT).map_err(|e| failed(&e))?;
        // An install precompiles, which takes a while; progress lines come
        // meanwhile.
        tcp.set_read_timeout(Some(Duration::from_secs(600)))
            .map_err(|e| failed(&e))?;
        tcp.set_write_timeout(Some(IO_TIMEOUT))
            .map_err(|e| failed(&e))?;
        let name = ServerName::try_from(host.to_owned()).map_err(|e| failed(&e))?;
        let session =
            rustls::ClientConnection::new(self.tls.clone(), name).map_err(|e| failed(&e))?;
        let mut stream = rustls::StreamOwned::new(session, tcp);
        let body = serde_json::to_vec(request).map_err(|e| failed(&e))?;
        let authority = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let head = format!(
            "POST {API_PATH} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        stream
            .write_all(&[head.as_bytes(), &body].concat())
            .map_err(|e| failed(&e))?;
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        // One line of the answer, each at most MAX_LINE long.
        let mut next_line = |line: &mut String| {
            line.clear();
            match (&mut reader).take(MAX_LINE).read_line(line) {
                Ok(0) => Err(failed(&"closed before answering")),
                Ok(_) => Ok(()),
                Err(e) => Err(failed(&e)),
            }
        };
        // The status says nothing the lines do not: skip the head.
        loop {
            next_line(&mut line)?;
            if line == "\r\n" {
                break;
            }
        }
        loop {
            next_line(&mut line)?;
            match serde_json::from_str::<Response>(&line)
                .map_err(|e| failed(&format!("unreadable answer: {e}")))?
            {
                Response::Progress(step) => progress(step),
                done => return Ok(done),
            }
        }
    }
}
