//! The admin socket: the running appliance's side, and the command line's.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::{Admin, OperatorRef, Request, Response, Running};
use crate::identity::{Operators, Pki, Registry, Role};
use crate::registry::Library;
use crate::store::Store;

/// The socket's name in the data directory.
pub const ADMIN_SOCKET: &str = "admin.sock";
/// Longest request or response line: a certificate and a CA in PEM, or a
/// registry listing of thousands of devices, fit many times.
const MAX_LINE: u64 = 64 << 20;

/// Serve admin requests on `<data>/admin.sock` until `shutdown`.
pub async fn serve_socket(listener: UnixListener, admin: Admin, shutdown: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                warn!(error = %e, "admin socket accept failed");
                continue;
            }
        };
        // Whoever may open the socket (mode 0600 in a 0700 directory: the
        // appliance's own user, or root) has every role; the audit trail
        // names them by their user id.
        let by = OperatorRef {
            name: match stream.peer_cred() {
                Ok(cred) => format!("local user {}", cred.uid()),
                Err(_) => "local user".to_owned(),
            },
            role: Role::Admin,
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            let mut reader =
                tokio::io::BufReader::new(tokio::io::AsyncReadExt::take(read, MAX_LINE));
            if reader.read_line(&mut line).await.is_err() {
                return;
            }
            let response = match serde_json::from_str::<Request>(&line) {
                Ok(request) => {
                    let mut running = Running::start_holding(admin, request, (), Some(by));
                    loop {
                        match running.next().await {
                            Response::Progress(step) => {
                                let mut out = serde_json::to_vec(&Response::Progress(step))
                                    .unwrap_or_default();
                                out.push(b'\n');
                                let _ = write.write_all(&out).await;
                            }
                            done => break done,
                        }
                    }
                }
                Err(e) => Response::Error(format!("not an admin request: {e}")),
            };
            let mut out = serde_json::to_vec(&response).unwrap_or_default();
            out.push(b'\n');
            let _ = write.write_all(&out).await;
        });
    }
}

/// Bind the admin socket in `data`, replacing a stale one.
pub fn bind_socket(data: &Path) -> std::io::Result<UnixListener> {
    let path = data.join(ADMIN_SOCKET);
    // A socket left by an appliance that did not shut down cleanly. A live
    // one cannot exist: its appliance would hold the state database, which
    // this one already opened.
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// The command line's way to the appliance's state.
#[derive(Debug)]
pub enum Console {
    /// A running appliance, through its admin socket.
    Remote(PathBuf),
    /// A running appliance elsewhere, through its HTTPS admin API.
    Https(super::RemoteAdmin),
    /// The state opened by the command line itself: the executor, whose
    /// database is flushed after each request.
    Local(Box<Admin>),
}

impl Console {
    /// Reach the state in `data`: the running appliance if there is one,
    /// else the database itself.
    pub fn open(data: &Path) -> Result<Console, String> {
        let socket = data.join(ADMIN_SOCKET);
        if UnixStream::connect(&socket).is_ok() {
            return Ok(Console::Remote(socket));
        }
        let pki = Pki::open(data).map_err(|e| e.to_string())?;
        let store = Store::open(&data.join("state")).map_err(|e| {
            format!(
                "{e} (is a `palisade serve` using {} without its admin socket?)",
                data.display()
            )
        })?;
        let registry = Registry::open(&store).map_err(|e| e.to_string())?;
        let operators = Operators::open(&store).map_err(|e| e.to_string())?;
        let library = Library::open(data, &store).map_err(|e| format!("{e:#}"))?;
        Ok(Console::Local(Box::new(
            Admin::new(store, Arc::new(pki), registry, operators, None).with_library(data, library),
        )))
    }

    /// Whether requests go to a running appliance.
    pub fn is_remote(&self) -> bool {
        matches!(self, Console::Remote(_) | Console::Https(_))
    }

    /// Execute `request`.
    pub fn execute(&self, request: &Request) -> Result<Response, String> {
        self.execute_with(request, &mut |_| {})
    }

    /// Execute `request`, passing each progress line of a long one to
    /// `progress`.
    pub fn execute_with(
        &self,
        request: &Request,
        progress: &mut dyn FnMut(String),
    ) -> Result<Response, String> {
        match self {
            Console::Https(remote) => remote.execute_with(request, progress),
            Console::Local(admin) => {
                let response = admin.execute_with(request.clone(), progress);
                admin.flush().map_err(|e| e.to_string())?;
                Ok(response)
            }
            Console::Remote(path) => {
                let io = |e: std::io::Error| format!("admin socket {}: {e}", path.display());
                let mut stream = UnixStream::connect(path).map_err(io)?;
                let mut line = serde_json::to_vec(request).map_err(|e| e.to_string())?;
                line.push(b'\n');
                stream.write_all(&line).map_err(io)?;
                let mut reader = BufReader::new(stream.take(MAX_LINE));
                loop {
                    let mut answer = String::new();
                    reader.read_line(&mut answer).map_err(io)?;
                    let response: Response = serde_json::from_str(&answer).map_err(|e| {
                        format!("admin socket {}: unreadable answer: {e}", path.display())
                    })?;
                    match response {
                        Response::Progress(step) => progress(step),
                        done => return Ok(done),
                    }
                }
            }
        }
    }
}
