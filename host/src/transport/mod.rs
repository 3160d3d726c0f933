//! The transport: where devices connect. TLS over TCP (tokio-rustls) and
//! QUIC (quinn), a client certificate mandatory on both.
//!
//! On the path of a frame this is the first stage. A listener's port (TLS)
//! or the ALPN a QUIC client offers picks the route. The handshake runs the
//! identity stage's [`ClientVerifier`](crate::identity::ClientVerifier):
//! unknown, expired, revoked and quarantined devices never finish it. Then
//! the connection policy decides whether the device may use the route, and
//! only then does a session open: a connection to the upstream, and the
//! relay through the route's parser (each QUIC bidirectional stream is a
//! session of its own, to its own upstream connection).
//!
//! Every refusal is one log line, `refused`, with the peer, the route, the
//! device when its certificate named one, and the reason. Every session is
//! a `session open` and a `session closed` line with the reason it ended.
//!
//! Bounds: a connection limit (a semaphore; connections past it are
//! refused at once, TLS and QUIC alike), a bound on the handshakes in
//! progress from one address, a retry that makes a QUIC peer prove its
//! address before it takes a slot, a handshake
//! timeout, an idle timeout, bounded buffers in the relay, and a grace
//! period at shutdown.

mod certs;
mod enforce;
pub(crate) mod handshakes;
mod quic;
mod socket;
mod tls;
mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

pub use certs::ServerCertResolver;
pub use enforce::Enforcement;
pub use upstream::{Duplex, Upstream};

use crate::audit::AuditQueue;
use crate::config::{Config, Limits, PkiConfig, RouteConfig, Transport, UpstreamConnect};
use crate::identity::{Claims, ClientVerifier, Device, Pki, Refusal, Registry};
use crate::plugins::{Installed, Slot};
use crate::policy::PolicyEngine;
use crate::session::{
    BufferBudget, Closed, Enforcer, Guards, LiveSessions, Membership, Pipeline, RelaySettings,
};

/// Why the transport could not start.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// A route's settings are unusable.
    #[error("route {route}: {reason}")]
    Route {
        /// The route.
        route: String,
        /// Why.
        reason: String,
    },
    /// A listener could not be bound.
    #[error("listening for {what} on {addr}: {source}")]
    Bind {
        /// What was to listen there.
        what: String,
        /// The address.
        addr: SocketAddr,
        /// What the system said.
        source: std::io::Error,
    },
    /// The TLS settings could not be built.
    #[error("TLS settings: {0}")]
    Tls(#[from] rustls::Error),
}

/// A route, ready to serve.
#[derive(Debug)]
pub struct Route {
    /// Its configuration.
    pub config: RouteConfig,
    /// Its parser; `None` relays uninspected.
    pub parser: Option<Slot>,
    /// Its detectors, in order.
    pub detectors: Vec<Slot>,
    /// Its responders, in order.
    pub responders: Vec<Slot>,
    /// Where its sessions go.
    pub upstream: Upstream,
}

/// What the transport uses of the other stages.
#[derive(Debug, Clone)]
pub struct Stages {
    /// The site CA, for renewal and the server certificate.
    pub pki: Arc<Pki>,
    /// The device registry.
    pub registry: Registry,
    /// The live sessions, which revocation and quarantine close.
    pub live: LiveSessions,
    /// The policy, for connections and events; reloaded live.
    pub policy: PolicyEngine,
    /// The handshake's client-certificate check.
    pub verifier: Arc<ClientVerifier>,
    /// Where findings and actions are recorded; `None`: nowhere.
    pub audit: Option<AuditQueue>,
    /// The served plugins.
    pub installed: Installed,
}

/// A listener and what it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listening {
    /// The route's name, or `renewal`.
    pub name: String,
    /// TLS or QUIC.
    pub transport: Transport,
    /// The bound address.
    pub addr: SocketAddr,
}

/// How stale a device's last-seen time may get, in seconds.
const SEEN_RESOLUTION_SECS: i64 = 60;

pub(crate) struct Shared {
    stages: Stages,
    enforcer: Arc<dyn Enforcer>,
    limits: Limits,
    pki: PkiConfig,
    connections: Arc<Semaphore>,
    handshakes: Arc<handshakes::Handshakes>,
    /// The bytes of incomplete frames the sessions may hold together.
    buffers: BufferBudget,
    next_session: AtomicU64,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

/// The bound listeners of every route, ready to run.
pub struct Server {
    shared: Arc<Shared>,
    tls: Vec<tls::Listener>,
    quic: Vec<quic::Listener>,
    resolver: Arc<ServerCertResolver>,
    server_names: Vec<String>,
    server_cert_lifetime: Duration,
    listening: Vec<Listening>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("listening", &self.listening)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Bind every listener of `config`, with `routes` (one per configured
    /// route, in order). Nothing is accepted before [`Server::run`].
    pub async fn bind(
        config: &Config,
        routes: Vec<Route>,
        stages: Stages,
        shutdown: CancellationToken,
    ) -> Result<Server, TransportError> {
        let names = config.certificate_names();
        let lifetime = Duration::from_secs(config.pki.server_cert_days.saturating_mul(86_400));
        let resolver = Arc::new(
            ServerCertResolver::new(&stages.pki, &names, lifetime).map_err(|e| {
                TransportError::Route {
                    route: "*".into(),
                    reason: format!("server certificate: {e}"),
                }
            })?,
        );
        let enforcer = Arc::new(Enforcement {
            registry: stages.registry.clone(),
            live: stages.live.clone(),
            audit: stages.audit.clone(),
            installed: stages.installed.clone(),
        });
        let shared = Arc::new(Shared {
            stages,
            enforcer,
            limits: config.limits.clone(),
            pki: config.pki.clone(),
            connections: Arc::new(Semaphore::new(config.limits.max_connections)),
            handshakes: handshakes::Handshakes::new(config.limits.max_handshakes_per_address),
            buffers: BufferBudget::new(config.limits.max_buffered_bytes),
            next_session: AtomicU64::new(1),
            tasks: TaskTracker::new(),
            shutdown,
        });
        let mut server = Server {
            shared: shared.clone(),
            tls: Vec::new(),
            quic: Vec::new(),
            resolver: resolver.clone(),
            server_names: names,
            server_cert_lifetime: lifetime,
            listening: Vec::new(),
        };
        let mut quic_routes: Vec<(SocketAddr, Vec<Arc<Route>>)> = Vec::new();
        for route in routes {
            let route = Arc::new(route);
            match route.config.transport {
                Transport::Tls => {
                    let listener = tls::Listener::bind(
                        tls::Serves::Route(route.clone()),
                        route.config.listen,
                        &shared,
                        &resolver,
                    )
                    .await?;
                    server.listening.push(Listening {
                        name: route.config.name.clone(),
                        transport: Transport::Tls,
                        addr: listener.local_addr(),
                    });
                    server.tls.push(listener);
                }
                Transport::Quic => {
                    match quic_routes
                        .iter_mut()
                        .find(|(a, _)| *a == route.config.listen)
                    {
                        Some((_, list)) => list.push(route),
                        None => quic_routes.push((route.config.listen, vec![route])),
                    }
                }
            }
        }
        for (addr, routes) in quic_routes {
            let listener = quic::Listener::bind(addr, routes, &shared, &resolver)?;
            for name in listener.route_names() {
                server.listening.push(Listening {
                    name,
                    transport: Transport::Quic,
                    addr: listener.local_addr(),
                });
            }
            server.quic.push(listener);
        }
        if let Some(addr) = config.renewal.listen {
            let listener =
                tls::Listener::bind(tls::Serves::Renewal, addr, &shared, &resolver).await?;
            server.listening.push(Listening {
                name: "renewal".into(),
                transport: Transport::Tls,
                addr: listener.local_addr(),
            });
            server.tls.push(listener);
        }
        Ok(server)
    }

    /// The rustls settings of another HTTPS endpoint of the appliance (the
    /// admin API): its clients checked by `verifier`, the routes' server
    /// certificate, renewed with theirs.
    pub fn https_config(
        &self,
        verifier: Arc<ClientVerifier>,
    ) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
        certs::server_config(
            verifier,
            self.resolver.clone(),
            vec![b"http/1.1".to_vec()],
            false,
        )
    }

    /// Where each route listens.
    pub fn listening(&self) -> &[Listening] {
        &self.listening
    }

    /// Serve until the shutdown token is cancelled, then give open
    /// sessions the grace period to close.
    pub async fn run(self) {
        let shared = self.shared;
        for listener in self.tls {
            shared.tasks.spawn(listener.run(shared.clone()));
        }
        let mut endpoints = Vec::new();
        for listener in self.quic {
            endpoints.push(listener.endpoint());
            shared.tasks.spawn(listener.run(shared.clone()));
        }
        shared.tasks.spawn(certs::keep_fresh(
            self.resolver,
            shared.stages.pki.clone(),
            self.server_names,
            self.server_cert_lifetime,
            shared.shutdown.clone(),
        ));
        shared.shutdown.cancelled().await;
        let open = shared
            .limits
            .max_connections
            .saturating_sub(shared.connections.available_permits());
        info!(connections = open, "shutting down");
        for endpoint in &endpoints {
            endpoint.close(quinn::VarInt::from_u32(0), b"shutting down");
        }
        shared.tasks.close();
        let grace = Duration::from_secs(shared.limits.shutdown_grace_secs);
        if tokio::time::timeout(grace, shared.tasks.wait())
            .await
            .is_err()
        {
            warn!(
                grace_secs = shared.limits.shutdown_grace_secs,
                "sessions still open after the grace period; closing them"
            );
        }
        for endpoint in &endpoints {
            let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
        }
    }
}

/// Whom a session serves: its id, the device admitted and its role, and
/// whether the device was closed since (see [`Membership::watch`]).
struct Holder<'a> {
    id: u64,
    device: &'a Device,
    role: Option<&'a str>,
    closed: Closed,
    /// What the device's sessions hold of incomplete frames.
    buffered: Arc<AtomicUsize>,
}

/// A device that passed the handshake, the registry and the policy.
#[derive(Debug)]
pub(crate) struct Admitted {
    device: Device,
    claims: Claims,
    membership: Membership,
}

impl Shared {
    fn relay_settings(&self) -> RelaySettings {
        RelaySettings {
            idle: Duration::from_secs(self.limits.idle_timeout_secs),
            chunk: self.limits.read_chunk_bytes,
            frame: Duration::from_secs(self.limits.frame_timeout_secs),
        }
    }

    fn handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.limits.handshake_timeout_secs)
    }

    /// Decide, after the handshake, whether the holder of `certs` may use
    /// `route` (`None`: renewal, open to every enrolled device that passed
    /// the handshake). The device joins the live sessions first, so that a
    /// revocation racing with this check either is seen here or closes the
    /// session right after.
    fn admit(
        &self,
        certs: Option<&[CertificateDer<'_>]>,
        route: Option<&RouteConfig>,
        peer: SocketAddr,
    ) -> Result<Admitted, Refusal> {
        let cert = certs
            .and_then(|c| c.first())
            .ok_or_else(|| Refusal::new(None, "no client certificate"))?;
        let claims = Claims::from_der(cert).map_err(|e| Refusal::new(None, e.to_string()))?;
        let refuse = |reason: String| Refusal::new(Some(&claims.device), reason);
        let membership = self.stages.live.join(&claims.device);
        // This connection counts among the device's live ones.
        self.within_device_limit(&claims.device, "connections")
            .map_err(refuse)?;
        // Checked again, not taken from the handshake: what changed since
        // (a revocation, a quarantine, a new certificate) counts.
        let device = self.stages.verifier.readmit(&claims)?;
        if let Some(route) = route {
            self.may_connect(&device, claims.role.as_deref(), route, peer)
                .map_err(refuse)?;
        }
        // Last-seen times are kept to the minute: a device reconnecting in
        // a loop must not turn every handshake into a database write.
        let now = crate::identity::now_unix();
        if device
            .last_seen
            .is_none_or(|t| now.saturating_sub(t) >= SEEN_RESOLUTION_SECS)
            && let Err(e) = self.stages.registry.seen(&device.id)
        {
            warn!(device = %device.id, error = %e, "cannot record when the device was seen");
        }
        Ok(Admitted {
            device,
            claims,
            membership,
        })
    }

    /// Whether `device` holds no more live sessions than its limit, those
    /// just joined included; why not if not, naming them `what`.
    fn within_device_limit(&self, device: &str, what: &str) -> Result<(), String> {
        let limit = self.limits.max_connections_per_device;
        if self.stages.live.count(device) > limit {
            return Err(format!(
                "the device already holds {limit} {what} (max-connections-per-device)"
            ));
        }
        Ok(())
    }

    /// Whether the connection policy, as it is now, lets `device` (in
    /// `role`) use `route` from `peer`; why not if not.
    fn may_connect(
        &self,
        device: &Device,
        role: Option<&str>,
        route: &RouteConfig,
        peer: SocketAddr,
    ) -> Result<(), String> {
        let policy = self.stages.policy.active();
        let subject = policy.subject(&device.plugin_view(), role, &route.name, &route.protocol);
        let decision = policy.connect(&subject, Some(peer.ip()));
        if decision.allowed {
            return Ok(());
        }
        Err(format!(
            "policy denies class {} in zone {} on route {}: {}",
            device.class, device.zone, route.name, decision.reason
        ))
    }

    fn session_id(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    /// The pipeline of a new session of `device` on `route`.
    fn pipeline(
        &self,
        id: u64,
        device: &Device,
        role: Option<&str>,
        route: &Route,
    ) -> Option<Pipeline> {
        let parser = route.parser.clone()?;
        let session = crate::plugins::Session {
            id,
            device: device.plugin_view(),
            route: route.config.name.clone(),
        };
        let pipeline = Pipeline::with_slots(
            session,
            parser,
            route.detectors.clone(),
            route.responders.clone(),
            self.limits.max_frame_bytes,
        );
        Some(pipeline.with_policy(
            self.stages.policy.clone(),
            role.map(str::to_owned),
            &route.config.protocol,
        ))
    }

    /// Relay one session of an admitted device, from `device_stream` to a
    /// new upstream connection, until it ends; log both ends.
    async fn session(
        &self,
        holder: Holder<'_>,
        route: &Route,
        peer: SocketAddr,
        mut device_stream: impl Duplex,
    ) -> String {
        let Holder {
            id,
            device,
            role,
            closed: device_closed,
            buffered,
        } = holder;
        let name = &route.config.name;
        let settings = self.relay_settings();
        let lazy = route.config.upstream_connect == UpstreamConnect::FirstBytes;
        info!(session = id, %peer, route = %name, device = %device.id, class = %device.class, zone = %device.zone, upstream = %route.upstream.addr(), inspected = route.parser.is_some(), "session open");
        let closed = |reason: String| {
            info!(session = id, route = %name, device = %device.id, reason = %reason, "session closed");
            reason
        };
        let first = if lazy {
            match crate::session::first_bytes(&mut device_stream, settings).await {
                Ok(Some(first)) => first,
                Ok(None) => return closed("the device closed before sending anything".into()),
                Err(e) => return closed(e.to_string()),
            }
        } else {
            Vec::new()
        };
        let upstream = match route
            .upstream
            .connect(Duration::from_secs(self.limits.connect_timeout_secs))
            .await
        {
            Ok(u) => u,
            Err(e) => {
                warn!(session = id, %peer, route = %name, device = %device.id, upstream = %route.upstream.addr(), error = %e, "upstream unreachable; session closed");
                return format!("upstream {} unreachable: {e}", route.upstream.addr());
            }
        };
        debug!(session = id, upstream = %route.upstream.addr(), "upstream connected");
        let pipeline = self.pipeline(id, device, role, route);
        let result = crate::session::relay(
            device_stream,
            upstream,
            first,
            pipeline,
            settings,
            self.enforcer.clone(),
            Guards {
                closed: device_closed,
                buffers: self.buffers.clone(),
                device_buffers: BufferBudget::counted_in(
                    buffered,
                    self.limits.buffered_bytes_per_device(),
                ),
            },
        )
        .await;
        match result {
            Ok(f) => {
                info!(session = id, route = %name, device = %device.id, to_upstream = f.to_upstream, to_device = f.to_device, "session closed: both sides closed");
                "both sides closed".into()
            }
            Err(e) => closed(e.to_string()),
        }
    }
}

/// Sleep until the certificate with `claims` expires.
async fn expiry(claims: &Claims) {
    let left = claims.not_after.saturating_sub(crate::identity::now_unix());
    tokio::time::sleep(Duration::from_secs(u64::try_from(left).unwrap_or(0))).await;
}

fn refused(peer: SocketAddr, route: &str, refusal: &Refusal) {
    warn!(
        %peer,
        route = %route,
        device = %refusal.device.as_deref().unwrap_or("-"),
        reason = %refusal.reason,
        "refused"
    );
}
