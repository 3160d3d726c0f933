//! Certificate renewal over the device's own mTLS connection: the EST
//! `simplereenroll` operation (RFC 7030 §4.2.2), and `cacerts` (§4.1).
//!
//! A device whose certificate is still valid connects to the renewal
//! listener with it, as on any route, and posts a PKCS #10 request for its
//! new key (base64 DER, `Content-Type: application/pkcs10`):
//!
//! ```text
//! POST /.well-known/est/simplereenroll HTTP/1.1
//! ```
//!
//! The answer is its new certificate as a certs-only PKCS #7 (base64 DER,
//! `application/pkcs7-mime`), valid for the configured device lifetime.
//! What the new certificate says comes from the registry and the current
//! certificate, never from the request: a device renews only itself, with
//! its own class, zone and Modbus role. Revoked, quarantined and expired
//! devices never get this far (the handshake refuses them), and one
//! revoked or quarantined during its renewal is refused (403) as the new
//! certificate is recorded: the renewal never undoes either. Devices renew
//! at about two thirds of their certificate's lifetime; the old certificate
//! stays valid until it expires.
//!
//! With curl and openssl:
//!
//! ```sh
//! openssl req -new -key new-key.pem -subj /CN=x -outform DER | base64 > req.b64
//! curl --cert cert.pem --key key.pem --cacert ca.pem \
//!      -H 'Content-Type: application/pkcs10' --data-binary @req.b64 \
//!      https://127.0.0.1:8443/.well-known/est/simplereenroll \
//!   | base64 -d | openssl pkcs7 -inform DER -print_certs > new-cert.pem
//! ```

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rustls::pki_types::CertificateSigningRequestDer;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::{Claims, Device, DeviceCertRequest, Pki, Registry};

/// Largest request body: a PKCS #10 request for any usable key, base64,
/// fits in a few KiB.
const MAX_BODY: usize = 16 << 10;

/// Why a renewal request failed. The device got an HTTP error saying so.
#[derive(Debug, thiserror::Error)]
pub enum RenewalError {
    /// The connection failed or went quiet.
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    /// The request is not one this endpoint serves.
    #[error("{0}")]
    BadRequest(String),
    /// Issuing or recording the certificate failed.
    #[error("issuing: {0}")]
    Issue(String),
    /// The device may no longer renew: revoked, quarantined or its
    /// certificate replaced since its handshake.
    #[error("{0}")]
    Refused(String),
}

/// What a renewal connection did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Served {
    /// Handed out the CA certificate.
    CaCerts,
    /// Issued a certificate with this serial.
    Renewed(String),
}

impl std::fmt::Display for Served {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Served::CaCerts => f.write_str("cacerts"),
            Served::Renewed(serial) => f.write_str(serial),
        }
    }
}

/// Serve one EST request from `device`, which connected with the
/// certificate of `claims`; each read and write must finish within
/// `idle`.
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    device: &Device,
    claims: &Claims,
    pki: &Pki,
    registry: &Registry,
    lifetime: Duration,
    idle: Duration,
) -> Result<Served, RenewalError> {
    let result = tokio::time::timeout(
        idle,
        handle(&mut stream, device, claims, pki, registry, lifetime),
    )
    .await
    .unwrap_or_else(|_| Err(RenewalError::BadRequest("request too slow".into())));
    let (status, content_type, body, outcome) = match result {
        Ok((body, served)) => (
            "200 OK",
            "application/pkcs7-mime; smime-type=certs-only",
            body,
            Ok(served),
        ),
        Err(RenewalError::Io(e)) => return Err(RenewalError::Io(e)),
        Err(e @ RenewalError::BadRequest(_)) => {
            ("400 Bad Request", "text/plain", format!("{e}\n"), Err(e))
        }
        Err(e @ RenewalError::Refused(_)) => {
            ("403 Forbidden", "text/plain", format!("{e}\n"), Err(e))
        }
        Err(e) => (
            "500 Internal Server Error",
            "text/plain",
            format!("{e}\n"),
            Err(e),
        ),
    };
    let head = crate::http::head(
        status,
        &[
            ("Content-Type", content_type),
            ("Content-Transfer-Encoding", "base64"),
        ],
        Some(body.len()),
    );
    let respond = async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        stream.shutdown().await
    };
    tokio::time::timeout(idle, respond)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "response not read"))??;
    outcome
}

async fn handle<S: AsyncRead + Unpin>(
    stream: &mut S,
    device: &Device,
    claims: &Claims,
    pki: &Pki,
    registry: &Registry,
    lifetime: Duration,
) -> Result<(String, Served), RenewalError> {
    let crate::http::Request { method, path, body } = crate::http::read_request(stream, MAX_BODY)
        .await
        .map_err(|e| match e {
            crate::http::HttpError::Io(e) => RenewalError::Io(e),
            bad => RenewalError::BadRequest(bad.to_string()),
        })?;
    match (method.as_str(), path.as_str()) {
        ("GET", "/.well-known/est/cacerts") => Ok((
            STANDARD.encode(certs_only(&[pki.ca_der()])),
            Served::CaCerts,
        )),
        ("POST", "/.well-known/est/simplereenroll") => {
            let text: Vec<u8> = body
                .into_iter()
                .filter(|b| !b.is_ascii_whitespace())
                .collect();
            let der = STANDARD
                .decode(&text)
                .map_err(|e| RenewalError::BadRequest(format!("body is not base64: {e}")))?;
            let csr = rcgen::CertificateSigningRequestParams::from_der(
                &CertificateSigningRequestDer::from(der),
            )
            .map_err(|e| RenewalError::BadRequest(format!("not a valid PKCS #10 request: {e}")))?;
            let request = DeviceCertRequest {
                device: device.id.clone(),
                class: device.class.clone(),
                zone: device.zone.clone(),
                role: claims.role.clone(),
                lifetime,
            };
            let issued = pki
                .issue_device(&request, &csr.public_key)
                .map_err(|e| RenewalError::Issue(e.to_string()))?;
            // The registry checks again, as it records the certificate,
            // that the device may renew: a revocation or a quarantine since
            // the handshake holds. The record reaches the disk before the
            // answer goes: that waits for the disk, which an async worker
            // must not.
            crate::runtime::blocking(|| registry.record_renewed(claims, &request, &issued.claims))
                .map_err(|e| match e {
                    e @ crate::identity::RegistryError::NotRenewable { .. } => {
                        RenewalError::Refused(e.to_string())
                    }
                    e => RenewalError::Issue(e.to_string()),
                })?;
            Ok((
                STANDARD.encode(certs_only(&[&issued.der, pki.ca_der()])),
                Served::Renewed(issued.claims.serial),
            ))
        }
        _ => Err(RenewalError::BadRequest(format!(
            "{method} {path}: this endpoint serves GET /.well-known/est/cacerts and POST /.well-known/est/simplereenroll"
        ))),
    }
}

/// A DER tag-length-value.
fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = (len as u64).to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        let significant = bytes.get(skip..).unwrap_or_default();
        out.push(0x80 | significant.len() as u8);
        out.extend_from_slice(significant);
    }
    out.extend_from_slice(content);
    out
}

/// A certs-only ("degenerate") PKCS #7 SignedData holding `certs`
/// (RFC 5652 §5; RFC 7030 §4.1.3).
fn certs_only(certs: &[&rustls::pki_types::CertificateDer<'_>]) -> Vec<u8> {
    const SIGNED_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02];
    const DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01];
    let all: Vec<u8> = certs
        .iter()
        .flat_map(|c| c.as_ref().iter().copied())
        .collect();
    let signed_data = [
        tlv(0x02, &[1]),             // version 1
        tlv(0x31, &[]),              // digestAlgorithms: none
        tlv(0x30, &tlv(0x06, DATA)), // encapContentInfo: data, absent
        tlv(0xa0, &all),             // [0] IMPLICIT certificates
        tlv(0x31, &[]),              // signerInfos: none
    ]
    .concat();
    tlv(
        0x30,
        &[tlv(0x06, SIGNED_DATA), tlv(0xa0, &tlv(0x30, &signed_data))].concat(),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use rcgen::{CertificateParams, KeyPair};
    use tokio::io::AsyncReadExt;

    use super::*;
    use crate::identity::DeviceState;
    use crate::store::Store;

    /// A device admitted at its handshake is revoked before its renewal
    /// request reaches the registry: the renewal is refused and the device
    /// stays revoked, where recording the new certificate used to make it
    /// active again.
    #[tokio::test]
    async fn a_device_revoked_during_its_renewal_stays_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let (pki, _) = Pki::init(dir.path()).unwrap();
        let registry = Registry::open(&Store::temporary().unwrap()).unwrap();
        let request = DeviceCertRequest {
            device: "plc-7".into(),
            class: "plc".into(),
            zone: "cell-1".into(),
            role: None,
            lifetime: Duration::from_secs(3600),
        };
        let current = pki
            .issue_device(&request, &KeyPair::generate().unwrap())
            .unwrap()
            .claims;
        registry.record_issued(&request, &current).unwrap();
        let device = registry.admit(&current, true).unwrap();
        registry.revoke("plc-7").unwrap();

        let csr = CertificateParams::default()
            .serialize_request(&KeyPair::generate().unwrap())
            .unwrap();
        let body = STANDARD.encode(csr.der());
        let (mut client, server) = tokio::io::duplex(64 << 10);
        client
            .write_all(
                format!(
                    "POST /.well-known/est/simplereenroll HTTP/1.1\r\n\
                     Content-Type: application/pkcs10\r\n\
                     Content-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            )
            .await
            .unwrap();
        let idle = Duration::from_secs(5);
        let lifetime = request.lifetime;
        let served = serve(server, &device, &current, &pki, &registry, lifetime, idle).await;
        assert!(
            matches!(served, Err(RenewalError::Refused(_))),
            "{served:?}"
        );
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");

        let after = registry.device("plc-7").unwrap().unwrap();
        assert_eq!(after.state, DeviceState::Revoked);
        assert!(after.certificates.iter().all(|c| c.revoked));
    }

    #[test]
    fn der_lengths() {
        assert_eq!(tlv(0x04, &[1, 2]), vec![0x04, 2, 1, 2]);
        let long = tlv(0x04, &[0; 300]);
        assert_eq!(long.get(..4), Some(&[0x04, 0x82, 0x01, 0x2c][..]));
        assert_eq!(long.len(), 304);
    }
}
