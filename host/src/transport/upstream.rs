//! Connections to a route's upstream: plain TCP, or TLS with the
//! upstream's CA (and, for upstreams that want one, a client certificate).

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::TransportError;
use crate::config::{RouteConfig, UpstreamTls};

/// A byte stream both ways: what a session relays between.
pub trait Duplex: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Duplex for T {}

/// Where a route's sessions go.
pub struct Upstream {
    addr: String,
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("addr", &self.addr)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Upstream {
    /// The upstream of `route`, with its TLS settings loaded.
    pub fn new(route: &RouteConfig) -> Result<Upstream, TransportError> {
        let tls = match &route.upstream_tls {
            None => None,
            Some(tls) => Some(connector(route, tls)?),
        };
        Ok(Upstream {
            addr: route.upstream.clone(),
            tls,
        })
    }

    /// The upstream's address, `host:port`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Open a connection, TLS included, within `timeout`.
    pub async fn connect(&self, timeout: Duration) -> std::io::Result<Box<dyn Duplex>> {
        let connect = async {
            let tcp = TcpStream::connect(&self.addr).await?;
            tcp.set_nodelay(true)?;
            Ok::<_, std::io::Error>(match &self.tls {
                None => Box::new(tcp) as Box<dyn Duplex>,
                Some((connector, name)) => Box::new(connector.connect(name.clone(), tcp).await?),
            })
        };
        tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))?
    }
}

fn connector(
    route: &RouteConfig,
    tls: &UpstreamTls,
) -> Result<(TlsConnector, ServerName<'static>), TransportError> {
    let bad = |what: String| TransportError::Route {
        route: route.name.clone(),
        reason: what,
    };
    let mut roots = rustls::RootCertStore::empty();
    let cas: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.ca)
        .and_then(|i| i.collect())
        .map_err(|e| bad(format!("upstream-tls ca {}: {e}", tls.ca.display())))?;
    if cas.is_empty() {
        return Err(bad(format!(
            "upstream-tls ca {} holds no certificate",
            tls.ca.display()
        )));
    }
    for ca in cas {
        roots
            .add(ca)
            .map_err(|e| bad(format!("upstream-tls ca {}: {e}", tls.ca.display())))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| bad(e.to_string()))?
    .with_root_certificates(roots);
    let config = match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .and_then(|i| i.collect())
                .map_err(|e| bad(format!("upstream-tls client-cert {}: {e}", cert.display())))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| bad(format!("upstream-tls client-key {}: {e}", key.display())))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| bad(format!("upstream-tls client certificate: {e}")))?
        }
        _ => builder.with_no_client_auth(),
    };
    let host = match &tls.server_name {
        Some(n) => n.clone(),
        None => route
            .upstream
            .rsplit_once(':')
            .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']').to_owned())
            .unwrap_or_default(),
    };
    let name = ServerName::try_from(host.clone()).map_err(|_| {
        bad(format!(
            "upstream-tls server name {host:?} is not a name or address"
        ))
    })?;
    Ok((TlsConnector::from(Arc::new(config)), name))
}
