//! Connections to a route's upstream: plain TCP, or TLS with the
//! upstream's CA (and, for upstreams that want one, a client certificate).

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::TransportError;
use crate::client_tls::Connector;
use crate::config::RouteConfig;

/// A byte stream both ways: what a session relays between.
pub trait Duplex: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Duplex for T {}

/// Where a route's sessions go.
pub struct Upstream {
    addr: String,
    tls: Option<Connector>,
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
            Some(tls) => {
                let host = route.upstream.rsplit_once(':').map_or("", |(host, _)| host);
                Some(
                    tls.connector(host)
                        .map_err(|reason| TransportError::Route {
                            route: route.name.clone(),
                            reason: format!("upstream-tls {reason}"),
                        })?,
                )
            }
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
                Some(connector) => Box::new(connector.connect(tcp).await?),
            })
        };
        tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))?
    }
}
