//! TLS over TCP listeners: one per TLS route, and the renewal listener.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

use super::certs::{ServerCertResolver, server_config};
use super::handshakes::Handshake;
use super::socket::SharedTcp;
use super::{Admitted, Holder, Route, Shared, TransportError, expiry, refused};
use crate::identity::Refusal;

/// What a TLS listener serves.
#[derive(Debug, Clone)]
pub(crate) enum Serves {
    /// A route: sessions relayed to its upstream.
    Route(Arc<Route>),
    /// Certificate renewal (EST simplereenroll).
    Renewal,
}

impl Serves {
    fn name(&self) -> &str {
        match self {
            Serves::Route(r) => &r.config.name,
            Serves::Renewal => "renewal",
        }
    }
}

/// A bound TLS listener.
pub(crate) struct Listener {
    listener: TcpListener,
    serves: Serves,
    acceptor: TlsAcceptor,
}

impl Listener {
    pub(crate) async fn bind(
        serves: Serves,
        addr: SocketAddr,
        shared: &Shared,
        resolver: &Arc<ServerCertResolver>,
    ) -> Result<Listener, TransportError> {
        let alpn = match &serves {
            Serves::Route(r) => r
                .config
                .alpn()
                .map(|a| vec![a.as_bytes().to_vec()])
                .unwrap_or_default(),
            Serves::Renewal => vec![b"http/1.1".to_vec()],
        };
        let config = server_config(
            shared.stages.verifier.clone(),
            resolver.clone(),
            alpn,
            false,
        )?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| TransportError::Bind {
                what: serves.name().to_owned(),
                addr,
                source,
            })?;
        Ok(Listener {
            listener,
            serves,
            acceptor: TlsAcceptor::from(config),
        })
    }

    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Accept connections until shutdown; each runs as a task of its own.
    pub(crate) async fn run(self, shared: Arc<Shared>) {
        loop {
            let accepted = tokio::select! {
                () = shared.shutdown.cancelled() => return,
                a = self.listener.accept() => a,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, most likely: wait for some to
                    // be freed instead of spinning.
                    warn!(listener = self.serves.name(), error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Some(handshake) = shared.handshakes.begin(peer.ip()) else {
                refused(
                    peer,
                    self.serves.name(),
                    &Refusal::new(None, "too many handshakes in progress from this address"),
                );
                drop(tcp);
                continue;
            };
            // Past the limit a connection is refused at once, as on QUIC: a
            // permit taken before accepting would sit idle on a quiet
            // listener while a busy one waits for it.
            let Ok(permit) = shared.connections.clone().try_acquire_owned() else {
                refused(
                    peer,
                    self.serves.name(),
                    &Refusal::new(None, "connection limit reached"),
                );
                drop(tcp);
                continue;
            };
            let _ = tcp.set_nodelay(true);
            shared.tasks.spawn(connection(
                shared.clone(),
                self.serves.clone(),
                self.acceptor.clone(),
                tcp,
                peer,
                (permit, handshake),
            ));
        }
    }
}

async fn connection(
    shared: Arc<Shared>,
    serves: Serves,
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    (_permit, in_progress): (OwnedSemaphorePermit, Handshake),
) {
    let name = serves.name();
    let tcp = SharedTcp::new(tcp);
    let hang_up = tcp.hang_up();
    let handshake = tokio::time::timeout(shared.handshake_timeout(), acceptor.accept(tcp)).await;
    drop(in_progress);
    let mut stream = match handshake {
        Err(_) => {
            let reason = format!(
                "handshake did not finish within {}s",
                shared.limits.handshake_timeout_secs
            );
            refused(peer, name, &Refusal::new(None, reason));
            return;
        }
        Ok(Err(e)) => {
            refused(peer, name, &handshake_refusal(&e));
            return;
        }
        Ok(Ok(s)) => s,
    };
    let route = match &serves {
        Serves::Route(r) => Some(&r.config),
        Serves::Renewal => None,
    };
    let certs = stream.get_ref().1.peer_certificates();
    let admitted = shared.admit(certs, route, peer);
    let Admitted {
        device,
        claims,
        mut membership,
    } = match admitted {
        Ok(a) => a,
        Err(r) => {
            refused(peer, name, &r);
            let _ = stream.shutdown().await;
            return;
        }
    };
    let id = shared.session_id();
    membership.hang_up_with(id, hang_up);
    let (closed, buffered) = (membership.watch(), membership.buffered());
    let ended = match &serves {
        Serves::Route(route) => tokio::select! {
            // A close says why first: hanging up the connection also ends
            // the session's relay, and the reason is the close's.
            biased;
            reason = membership.closed() => reason,
            _ = shared.session(
                Holder {
                    id,
                    device: &device,
                    role: claims.role.as_deref(),
                    closed,
                    buffered,
                },
                route,
                peer,
                stream,
            ) => return,
            () = shared.shutdown.cancelled() => "appliance shutting down".to_owned(),
            () = expiry(&claims) => "certificate expired".to_owned(),
        },
        Serves::Renewal => {
            let renewal = crate::identity::renewal::serve(
                stream,
                &device,
                &claims,
                &shared.stages.pki,
                &shared.stages.registry,
                Duration::from_secs(shared.pki.device_cert_hours.saturating_mul(3600)),
                shared.relay_settings().idle,
            );
            tokio::select! {
                biased;
                reason = membership.closed() => reason,
                r = renewal => match r {
                    Ok(served) => {
                        info!(%peer, device = %device.id, served = %served, "renewal served");
                        return;
                    }
                    Err(e) => format!("renewal failed: {e}"),
                },
                () = shared.shutdown.cancelled() => "appliance shutting down".to_owned(),
            }
        }
    };
    info!(session = id, %peer, route = %name, device = %device.id, reason = %ended, "session closed");
}

/// What a failed handshake says about why.
fn handshake_refusal(e: &std::io::Error) -> Refusal {
    let tls = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    let Some(tls) = tls else {
        return Refusal::new(
            None,
            match e.kind() {
                std::io::ErrorKind::UnexpectedEof => {
                    "connection closed during the handshake".to_owned()
                }
                _ => format!("handshake failed: {e}"),
            },
        );
    };
    if let Some(refusal) = Refusal::of(tls) {
        return refusal.clone();
    }
    Refusal::new(None, describe_tls(tls))
}

/// A TLS error that ended a handshake, in an operator's words.
pub(crate) fn describe_tls(tls: &rustls::Error) -> String {
    match tls {
        rustls::Error::NoCertificatesPresented => "no client certificate".into(),
        rustls::Error::InvalidMessage(m) => format!("not a TLS ClientHello ({m:?})"),
        rustls::Error::InappropriateMessage { .. }
        | rustls::Error::InappropriateHandshakeMessage { .. } => {
            format!("not a TLS handshake ({tls})")
        }
        rustls::Error::AlertReceived(alert) => format!("the client gave up: alert {alert:?}"),
        rustls::Error::NoApplicationProtocol => {
            "the client asked for an application protocol (ALPN) this route does not speak".into()
        }
        other => format!("handshake failed: {other}"),
    }
}
