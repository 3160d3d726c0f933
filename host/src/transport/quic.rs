//! QUIC listeners: one endpoint per UDP address; the ALPN a client offers
//! picks among the routes on it. Each bidirectional stream of an admitted
//! connection is a session of its own, relayed to its own upstream
//! connection, and counts, as the connection does, among the device's
//! connections (`max-connections-per-device`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use quinn::VarInt;
use rustls::pki_types::CertificateDer;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::certs::{ServerCertResolver, server_config};
use super::handshakes::Handshake;
use super::{Admitted, Holder, Route, Shared, TransportError, expiry, refused};
use crate::identity::{Device, Refusal};
use crate::session::Membership;

/// Bytes a device may send on one stream ahead of the appliance reading
/// them: four reads of the default chunk.
const STREAM_WINDOW: u32 = 64 << 10;

/// Bytes a device may send on all its streams together ahead of the
/// appliance reading them, and bytes the appliance sends a device ahead of
/// its acknowledgements.
const CONNECTION_WINDOW: u32 = 256 << 10;

/// Application close code: the device was refused (policy, registry).
const REFUSED: u32 = 0x100;
/// Application close code: the device was revoked or quarantined, or its
/// certificate expired, while connected.
const CLOSED: u32 = 0x101;
/// Application close code: the appliance is shutting down.
const SHUTDOWN: u32 = 0;

/// A bound QUIC endpoint and its routes.
pub(crate) struct Listener {
    endpoint: quinn::Endpoint,
    routes: Arc<Vec<Arc<Route>>>,
}

impl Listener {
    pub(crate) fn bind(
        addr: SocketAddr,
        routes: Vec<Arc<Route>>,
        shared: &Shared,
        resolver: &Arc<ServerCertResolver>,
    ) -> Result<Listener, TransportError> {
        let names: Vec<&str> = routes.iter().map(|r| r.config.name.as_str()).collect();
        let route_error = |reason: String| TransportError::Route {
            route: names.join(","),
            reason,
        };
        let alpn = routes
            .iter()
            .filter_map(|r| r.config.alpn().map(|a| a.as_bytes().to_vec()))
            .collect();
        let tls = server_config(shared.stages.verifier.clone(), resolver.clone(), alpn, true)?;
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
            .map_err(|e| route_error(format!("QUIC TLS settings: {e}")))?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        // A device keeps its address: one that moves is a new connection,
        // checked and judged from its new address.
        config.migration(false);
        let mut transport = quinn::TransportConfig::default();
        let idle = Duration::from_secs(shared.limits.idle_timeout_secs);
        // What a device may have the appliance hold for it, bounded per
        // connection whatever its number of streams; no datagrams, which
        // nothing reads. quinn's defaults (1.25 MB per stream, no bound per
        // connection, 1.25 MB of datagrams) let one device pin megabytes.
        transport
            .stream_receive_window(VarInt::from_u32(STREAM_WINDOW))
            .receive_window(VarInt::from_u32(CONNECTION_WINDOW))
            .send_window(u64::from(CONNECTION_WINDOW))
            .datagram_receive_buffer_size(None)
            .max_concurrent_bidi_streams(VarInt::from_u32(
                shared.limits.quic_streams_per_connection,
            ))
            .max_concurrent_uni_streams(VarInt::from_u32(0))
            .max_idle_timeout(Some(
                quinn::IdleTimeout::try_from(idle)
                    .map_err(|e| route_error(format!("idle timeout: {e}")))?,
            ));
        config.transport_config(Arc::new(transport));
        let endpoint =
            quinn::Endpoint::server(config, addr).map_err(|source| TransportError::Bind {
                what: names.join(","),
                addr,
                source,
            })?;
        Ok(Listener {
            endpoint,
            routes: Arc::new(routes),
        })
    }

    pub(crate) fn endpoint(&self) -> quinn::Endpoint {
        self.endpoint.clone()
    }

    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.endpoint
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    pub(crate) fn route_names(&self) -> Vec<String> {
        self.routes.iter().map(|r| r.config.name.clone()).collect()
    }

    /// Accept connections until shutdown.
    pub(crate) async fn run(self, shared: Arc<Shared>) {
        loop {
            let incoming = tokio::select! {
                () = shared.shutdown.cancelled() => return,
                i = self.endpoint.accept() => i,
            };
            let Some(incoming) = incoming else { return };
            // A peer first proves it receives at its address: a forged
            // address never answers the retry, and takes no slot.
            if !incoming.remote_address_validated() {
                if let Err(e) = incoming.retry() {
                    e.into_incoming().ignore();
                }
                continue;
            }
            let peer = incoming.remote_address();
            let Some(handshake) = shared.handshakes.begin(peer.ip()) else {
                refused(
                    peer,
                    "quic",
                    &Refusal::new(None, "too many handshakes in progress from this address"),
                );
                incoming.refuse();
                continue;
            };
            let Ok(permit) = shared.connections.clone().try_acquire_owned() else {
                refused(
                    incoming.remote_address(),
                    "quic",
                    &Refusal::new(None, "connection limit reached"),
                );
                incoming.refuse();
                continue;
            };
            shared.tasks.spawn(connection(
                shared.clone(),
                self.routes.clone(),
                incoming,
                (permit, handshake),
            ));
        }
    }
}

async fn connection(
    shared: Arc<Shared>,
    routes: Arc<Vec<Arc<Route>>>,
    incoming: quinn::Incoming,
    (_permit, in_progress): (OwnedSemaphorePermit, Handshake),
) {
    let peer = incoming.remote_address();
    let connecting = match incoming.accept() {
        Ok(c) => c,
        Err(e) => {
            refused(peer, "quic", &Refusal::new(None, e.to_string()));
            return;
        }
    };
    let handshake = tokio::time::timeout(shared.handshake_timeout(), connecting).await;
    drop(in_progress);
    let conn = match handshake {
        Err(_) => {
            let reason = format!(
                "handshake did not finish within {}s",
                shared.limits.handshake_timeout_secs
            );
            refused(peer, "quic", &Refusal::new(None, reason));
            return;
        }
        Ok(Err(e)) => {
            refused(peer, "quic", &describe(&e));
            return;
        }
        Ok(Ok(c)) => c,
    };
    let alpn = conn
        .handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|h| h.protocol);
    let Some(route) = routes
        .iter()
        .find(|r| r.config.alpn().map(str::as_bytes) == alpn.as_deref())
        .cloned()
    else {
        let refusal = Refusal::new(None, "no route for the negotiated ALPN");
        refused(peer, "quic", &refusal);
        conn.close(VarInt::from_u32(REFUSED), refusal.reason.as_bytes());
        return;
    };
    let name = route.config.name.as_str();
    let certs = conn
        .peer_identity()
        .and_then(|i| i.downcast::<Vec<CertificateDer<'static>>>().ok());
    let admitted = shared.admit(
        certs.as_deref().map(Vec::as_slice),
        Some(&route.config),
        peer,
    );
    let Admitted {
        device,
        claims,
        mut membership,
    } = match admitted {
        Ok(a) => a,
        Err(r) => {
            refused(peer, name, &r);
            conn.close(VarInt::from_u32(REFUSED), r.reason.as_bytes());
            return;
        }
    };
    info!(%peer, route = %name, device = %device.id, "quic connection open");
    let device = Arc::new(device);
    let role: Option<Arc<str>> = claims.role.as_deref().map(Arc::from);
    // Cancelled when this connection ends, however it ends, and before it
    // is closed: its streams' sessions end with it, and read nothing more.
    let ending = CancellationToken::new();
    let _ending = ending.clone().drop_guard();
    let close = |code: u32, reason: &[u8]| {
        ending.cancel();
        conn.close(VarInt::from_u32(code), reason);
    };
    let ended = loop {
        tokio::select! {
            biased;
            reason = membership.closed() => {
                close(CLOSED, reason.as_bytes());
                break reason;
            }
            stream = conn.accept_bi() => match stream {
                // Each stream is a session: the policy as it is now
                // decides whether it may open.
                // The connection goes with it: the device may not use the
                // route any more, and must not keep trying on it.
                Ok(_) if let Err(reason) =
                    shared.may_connect(&device, role.as_deref(), &route.config, peer) =>
                {
                    refused(peer, name, &Refusal::new(Some(&device.id), reason.clone()));
                    close(REFUSED, reason.as_bytes());
                    break reason;
                }
                Ok((mut send, mut recv)) => {
                    // Each stream's session counts among the device's live
                    // ones, as a connection of its own would: a device
                    // holds no more sessions, and upstream connections,
                    // than its limit, whatever it has them on. One past it
                    // is refused alone; the device's other streams go on.
                    // Alongside the connection's: a quarantine that closed
                    // the device since leaves none to join.
                    let Some(stream_membership) = membership.join_alongside() else {
                        let reason = membership.reason().unwrap_or_else(|| "device closed".into());
                        close(CLOSED, reason.as_bytes());
                        break reason;
                    };
                    let within =
                        shared.within_device_limit(&device.id, "connections and streams");
                    if let Err(reason) = within {
                        refused(peer, name, &Refusal::new(Some(&device.id), reason));
                        let _ = send.reset(VarInt::from_u32(REFUSED));
                        let _ = recv.stop(VarInt::from_u32(REFUSED));
                        continue;
                    }
                    let stream = Stream {
                        send,
                        recv,
                        membership: stream_membership,
                        ending: ending.clone(),
                    };
                    let (shared, route, device, role) =
                        (shared.clone(), route.clone(), device.clone(), role.clone());
                    shared.tasks.clone().spawn(async move {
                        stream.relay(&shared, &route, &device, role.as_deref(), peer).await;
                    });
                }
                Err(e) => break format!("connection closed: {e}"),
            },
            () = shared.shutdown.cancelled() => {
                close(SHUTDOWN, b"shutting down");
                break "appliance shutting down".to_owned();
            }
            () = expiry(&claims) => {
                close(CLOSED, b"certificate expired");
                break "certificate expired".to_owned();
            }
        }
    };
    info!(%peer, route = %name, device = %device.id, reason = %ended, "quic connection closed");
}

/// One bidirectional stream of an admitted connection: a session.
struct Stream {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    /// The session's place among the device's live ones.
    membership: Membership,
    /// Cancelled when the stream's connection ends.
    ending: CancellationToken,
}

impl Stream {
    /// Relay the stream until it ends, its device is closed (revoked,
    /// quarantined) or its connection ends.
    ///
    /// A close ends it before anything else, and the relay reads nothing
    /// from the device from the moment of the close: after
    /// `Connection::close`, quinn still hands out what the device sent
    /// before and the relay had not read yet (up to the stream's window),
    /// which the relay would otherwise go on judging and forwarding.
    async fn relay(
        mut self,
        shared: &Shared,
        route: &Route,
        device: &Device,
        role: Option<&str>,
        peer: SocketAddr,
    ) {
        let id = shared.session_id();
        // Set by the close itself, before `closed()` can wake this task.
        let hung_up = Arc::new(AtomicBool::new(false));
        let flag = hung_up.clone();
        self.membership
            .hang_up_with(id, Box::new(move |_| flag.store(true, Ordering::Release)));
        let recv = Closable {
            recv: &mut self.recv,
            hung_up,
            ending: self.ending.clone(),
            shutdown: shared.shutdown.clone(),
        };
        let holder = Holder {
            id,
            device,
            role,
            closed: self.membership.watch(),
            buffered: self.membership.buffered(),
        };
        let session = shared.session(holder, route, peer, tokio::io::join(recv, &mut self.send));
        let ended = tokio::select! {
            biased;
            reason = self.membership.closed() => reason,
            () = shared.shutdown.cancelled() => "appliance shutting down".to_owned(),
            () = self.ending.cancelled() => "its QUIC connection closed".to_owned(),
            _ = session => return,
        };
        // tokio may defer a ready `closed()` (when the task has used up its
        // budget), and the connection, closed for the same reason, can end
        // first: a close's reason is the one to give.
        let ended = self.membership.reason().unwrap_or(ended);
        // What the device sent and the relay had not read is discarded,
        // and the device told to send no more on the stream.
        let _ = self.recv.stop(VarInt::from_u32(CLOSED));
        let _ = self.send.reset(VarInt::from_u32(CLOSED));
        info!(session = id, %peer, route = %route.config.name, device = %device.id, reason = %ended, "session closed");
    }
}

/// A stream's device side, read by its session's relay until the session
/// is closed, and not a byte after: a read then waits, for ever, and
/// [`Stream::relay`], woken by the same close, ends the session. Without
/// this, a relay polled before it (tokio may defer a ready `closed()` when
/// the task has used up its budget; the tests saw it) could still forward
/// what quinn holds.
struct Closable<'a> {
    recv: &'a mut quinn::RecvStream,
    /// The device's sessions were closed (revoked, quarantined).
    hung_up: Arc<AtomicBool>,
    /// The connection ended.
    ending: CancellationToken,
    /// The appliance is shutting down.
    shutdown: CancellationToken,
}

impl tokio::io::AsyncRead for Closable<'_> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.hung_up.load(Ordering::Acquire)
            || self.ending.is_cancelled()
            || self.shutdown.is_cancelled()
        {
            return std::task::Poll::Pending;
        }
        std::pin::Pin::new(&mut *self.recv).poll_read(cx, buf)
    }
}

/// A failed QUIC handshake in an operator's words. The verifier's refusal
/// reaches here only as the text of the TLS error.
fn describe(e: &quinn::ConnectionError) -> Refusal {
    match e {
        quinn::ConnectionError::TransportError(t) => Refusal::from_text(&t.reason)
            .unwrap_or_else(|| Refusal::new(None, format!("handshake failed: {t}"))),
        quinn::ConnectionError::TimedOut => Refusal::new(None, "handshake timed out"),
        other => Refusal::new(None, format!("handshake failed: {other}")),
    }
}
