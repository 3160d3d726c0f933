//! The appliance's server certificate, replaced while running when it is
//! two thirds through its life.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::identity::{Pki, PkiError, ServerCertificate};

/// Hands every handshake the current server certificate.
#[derive(Debug)]
pub struct ServerCertResolver {
    current: RwLock<(Arc<CertifiedKey>, i64)>,
}

fn certified(cert: ServerCertificate) -> Result<(Arc<CertifiedKey>, i64), PkiError> {
    let provider = rustls::crypto::ring::default_provider();
    let key =
        CertifiedKey::from_der(cert.chain, cert.key, &provider).map_err(|e| PkiError::BadFile {
            path: "server.key".into(),
            reason: e.to_string(),
        })?;
    Ok((Arc::new(key), cert.renew_at))
}

impl ServerCertResolver {
    /// The certificate for `names` from `pki`, issued anew if needed.
    pub fn new(
        pki: &Pki,
        names: &[String],
        lifetime: Duration,
    ) -> Result<ServerCertResolver, PkiError> {
        let current = certified(pki.server_certificate(names, lifetime)?)?;
        Ok(ServerCertResolver {
            current: RwLock::new(current),
        })
    }

    fn renew_at(&self) -> i64 {
        self.current.read().unwrap_or_else(|p| p.into_inner()).1
    }
}

impl ResolvesServerCert for ServerCertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .0
                .clone(),
        )
    }
}

/// Replace the server certificate whenever it is due, until `shutdown`.
pub(crate) async fn keep_fresh(
    resolver: Arc<ServerCertResolver>,
    pki: Arc<Pki>,
    names: Vec<String>,
    lifetime: Duration,
    shutdown: CancellationToken,
) {
    loop {
        let left = resolver
            .renew_at()
            .saturating_sub(crate::identity::now_unix());
        // Look again at least hourly: a clock that jumps is noticed.
        let wait = Duration::from_secs(u64::try_from(left).unwrap_or(0).clamp(1, 3600));
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        if resolver.renew_at() > crate::identity::now_unix() {
            continue;
        }
        match pki.server_certificate(&names, lifetime).and_then(certified) {
            Ok(fresh) => {
                *resolver.current.write().unwrap_or_else(|p| p.into_inner()) = fresh;
                info!("server certificate renewed");
            }
            Err(e) => {
                warn!(error = %e, "cannot renew the server certificate; retrying in a minute");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(60)) => {}
                }
            }
        }
    }
}

/// The rustls settings of a listener: client certificates checked by
/// `verifier`, the server certificate from `resolver`, the ALPN ids
/// `alpn`. QUIC needs TLS 1.3 only; TLS listeners also speak TLS 1.2,
/// which Modbus/TCP Security devices may need.
pub(crate) fn server_config(
    verifier: Arc<crate::identity::ClientVerifier>,
    resolver: Arc<ServerCertResolver>,
    alpn: Vec<Vec<u8>>,
    tls13_only: bool,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider);
    let builder = if tls13_only {
        builder.with_protocol_versions(&[&rustls::version::TLS13])?
    } else {
        builder.with_safe_default_protocol_versions()?
    };
    let mut config = builder
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(resolver);
    config.alpn_protocols = alpn;
    // No session resumption: a resumed handshake skips the client
    // certificate verifier, so a device revoked or re-issued since would
    // come back on its old ticket. Devices reconnect rarely; a full
    // handshake each time is the price of checking each time.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}
