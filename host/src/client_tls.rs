//! TLS from the appliance to the servers it reaches: a route's upstream, a
//! SIEM receiver, a registry over HTTPS. One table in the configuration,
//! `{ ca, server-name, client-cert, client-key }`, whose files are read
//! once, when the connector is made (at start), so that a wrong path stops
//! the start rather than every connection failing later.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// The CAs a SIEM sink or the registry trusts when its table names none:
/// Debian's bundle of public CAs (package `ca-certificates`).
pub const SYSTEM_CAS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// How the appliance connects to a server over TLS.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ClientTls {
    /// PEM file of the CAs trusted to have issued the server's certificate.
    /// Each certificate in it must be one that can be used: one that
    /// cannot stops the start, the file and the certificate named (the
    /// system bundle, named here, is read as the system's: see [`Cas`]).
    /// Default for a SIEM sink or the registry, often public services: the
    /// system's public CAs ([`SYSTEM_CAS`]). A route's `upstream-tls` has
    /// no default: its upstream is the site's own broker or PLC, whose
    /// certificate the site's CA issued, and any certificate for its name
    /// from a public CA must not pass.
    pub ca: Option<PathBuf>,
    /// The name the server's certificate must carry. Default: the host the
    /// connection goes to.
    pub server_name: Option<String>,
    /// PEM certificate chain the appliance presents, for servers that
    /// authenticate their clients (a Modbus/TCP Security server, a syslog
    /// receiver in x509 mode). Default none.
    pub client_cert: Option<PathBuf>,
    /// The key of `client-cert`, PEM. Required with it.
    pub client_key: Option<PathBuf>,
}

/// Connects to one server, checking its certificate against the table's
/// CAs and name.
#[derive(Clone)]
pub struct Connector {
    tls: TlsConnector,
    name: ServerName<'static>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// A connector to `host` (a name or an address, an IPv6 one with or
    /// without its brackets), its files read now. The error names the field
    /// and the file.
    pub fn connector(&self, host: &str) -> Result<Connector, String> {
        // The system bundle named as `ca` (which a route's upstream-tls
        // must do for a public upstream), by any path, is still the
        // system's file.
        let system = |ca: &Path| {
            let real = |p: &Path| std::fs::canonicalize(p).ok();
            ca == Path::new(SYSTEM_CAS)
                || real(ca).is_some_and(|c| Some(c) == real(Path::new(SYSTEM_CAS)))
        };
        let roots = match &self.ca {
            Some(ca) if !system(ca) => roots(ca, Cas::Named)?,
            _ => roots(Path::new(SYSTEM_CAS), Cas::System)?,
        };
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
        let config = match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => {
                let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                    .and_then(|i| i.collect())
                    .map_err(|e| format!("client-cert {}: {e}", cert.display()))?;
                if chain.is_empty() {
                    return Err(format!(
                        "client-cert {}: holds no certificate",
                        cert.display()
                    ));
                }
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| format!("client-key {}: {e}", key.display()))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("client-cert and client-key: {e}"))?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => return Err("client-cert and client-key go together, or neither".into()),
        };
        let host = self.server_name.as_deref().unwrap_or(host);
        let bare = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let name = ServerName::try_from(bare.to_owned())
            .map_err(|_| format!("server name {host:?} is not a name or an address"))?;
        Ok(Connector {
            tls: TlsConnector::from(Arc::new(config)),
            name,
        })
    }
}

/// Whose CA file it is, which says what a certificate in it that cannot be
/// read means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cas {
    /// The operator's `ca`: each certificate in it is one they mean to
    /// trust, so one that cannot be read is a mistake (a bad copy, a key
    /// pasted in place of a certificate) to be told at start, not a CA
    /// quietly missing and a connection failing later.
    Named,
    /// The system bundle, [`SYSTEM_CAS`], which the operator did not write:
    /// it may hold a certificate webpki cannot read, and the others serve.
    System,
}

/// The trust anchors in the PEM file `ca`. The error names the file and
/// what is wrong with it.
fn roots(ca: &Path, cas: Cas) -> Result<rustls::RootCertStore, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca)
        .and_then(|i| i.collect())
        .map_err(|e| format!("ca {}: {e}", ca.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    match cas {
        Cas::Named => {
            for (n, cert) in certs.into_iter().enumerate() {
                roots.add(cert).map_err(|e| {
                    format!(
                        "ca {}: certificate {} in the file cannot be used: {e}",
                        ca.display(),
                        n + 1
                    )
                })?;
            }
        }
        Cas::System => {
            roots.add_parsable_certificates(certs);
        }
    }
    // A bundle of none that can be read serves nothing.
    if roots.is_empty() {
        return Err(format!(
            "ca {}: holds no CA certificate that can be used",
            ca.display()
        ));
    }
    Ok(roots)
}

impl Connector {
    /// TLS over `tcp`, the server's certificate checked.
    pub async fn connect(&self, tcp: TcpStream) -> std::io::Result<TlsStream<TcpStream>> {
        self.tls.connect(self.name.clone(), tcp).await
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    /// A CA certificate of its own, in `ca.pem` in `dir`.
    pub(crate) fn ca_file(dir: &Path) -> PathBuf {
        let key = rcgen::KeyPair::generate().unwrap();
        let ca = rcgen::CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let path = dir.join("ca.pem");
        std::fs::write(&path, ca.pem()).unwrap();
        path
    }

    #[test]
    fn each_wrong_field_is_named_with_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca_file(dir.path());
        let tls = |ca: &Path| ClientTls {
            ca: Some(ca.to_owned()),
            ..ClientTls::default()
        };
        let missing = dir.path().join("missing.pem");
        let err = tls(&missing).connector("siem").unwrap_err();
        assert!(
            err.starts_with(&format!("ca {}:", missing.display())),
            "{err}"
        );
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = tls(&empty).connector("siem").unwrap_err();
        assert!(err.contains("holds no CA certificate"), "{err}");

        let half = ClientTls {
            client_cert: Some(ca.clone()),
            ..tls(&ca)
        };
        let err = half.connector("siem").unwrap_err();
        assert!(err.contains("go together"), "{err}");
        let no_key = ClientTls {
            client_key: Some(missing.clone()),
            ..half
        };
        let err = no_key.connector("siem").unwrap_err();
        assert!(err.starts_with("client-key"), "{err}");

        let err = tls(&ca).connector("not a host").unwrap_err();
        assert!(err.contains("is not a name or an address"), "{err}");
        for host in ["siem.example", "10.0.0.9", "[::1]", "::1"] {
            tls(&ca).connector(host).unwrap();
        }
    }

    /// A CA file with one good certificate and one that cannot be read:
    /// refused when the operator named it, the good one kept in a system
    /// bundle.
    #[test]
    fn a_named_ca_file_with_a_broken_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let good = std::fs::read_to_string(ca_file(dir.path())).unwrap();
        let der = CertificateDer::from_pem_slice(good.as_bytes()).unwrap();
        // A certificate cut short: the PEM is sound, what it holds is not.
        let cut = &der.as_ref()[..der.as_ref().len() / 2];
        let cut = pem_block(cut);
        // A block whose base64 is broken.
        let garbled =
            "-----BEGIN CERTIFICATE-----\nMIIB!!not base64!!\n-----END CERTIFICATE-----\n";
        for (broken, why) in [(cut.as_str(), "certificate 2"), (garbled, "base64")] {
            let path = dir.path().join("bundle.pem");
            std::fs::write(&path, format!("{good}{broken}")).unwrap();
            let named = ClientTls {
                ca: Some(path.clone()),
                ..ClientTls::default()
            };
            let err = named.connector("broker.plant").unwrap_err();
            assert!(
                err.starts_with(&format!("ca {}:", path.display())) && err.contains(why),
                "{err}"
            );
            if broken == cut {
                assert_eq!(roots(&path, Cas::System).unwrap().len(), 1);
            }
        }
    }

    fn pem_block(der: &[u8]) -> String {
        use base64::Engine as _;
        let text = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = text
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            lines.join("\n")
        )
    }
}
