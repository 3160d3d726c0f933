//! What a certificate says about its device, read from its DER bytes.
//!
//! Reading claims proves nothing: the chain is checked by the verifier. The
//! claims only name the device, so that a refusal can say who was refused
//! and an admitted device can be looked up in the registry.

use rustls::pki_types::CertificateDer;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::check_name;

/// The Modbus/TCP Security role extension (Modbus.org, "MODBUS/TCP Security
/// Protocol Specification", §6): a UTF8String naming the client's role.
pub const ROLE_OID: &[u64] = &[1, 3, 6, 1, 4, 1, 50316, 802, 1];
const ROLE_OID_TEXT: &str = "1.3.6.1.4.1.50316.802.1";

const DEVICE_URN: &str = "urn:palisade:device:";
const CLASS_URN: &str = "urn:palisade:class:";
const ZONE_URN: &str = "urn:palisade:zone:";
const OPERATOR_URN: &str = "urn:palisade:operator:";
const ROLE_URN: &str = "urn:palisade:role:";

/// Why a certificate's claims could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimsError {
    /// The bytes are not an X.509 certificate.
    #[error("not an X.509 certificate")]
    NotCertificate,
    /// The certificate names no device: no device URI and no usable CN.
    #[error("certificate names no device")]
    NoDevice,
    /// The certificate names a device, class, zone or role that is not a
    /// usable name, or names one twice.
    #[error("certificate has an unusable {0}")]
    BadClaim(&'static str),
    /// An operator's certificate offered as a device's, or the other way
    /// round: the two kinds are never interchangeable.
    #[error("certificate is {0}")]
    WrongKind(&'static str),
}

/// What a certificate says about the device holding it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The device id.
    pub device: String,
    /// The device class, when the certificate carries one.
    pub class: Option<String>,
    /// The zone, when the certificate carries one.
    pub zone: Option<String>,
    /// The Modbus/TCP Security role, when the certificate carries one.
    pub role: Option<String>,
    /// The serial number, as lowercase hex of its DER content bytes.
    pub serial: String,
    /// The end of the validity period, in Unix seconds.
    pub not_after: i64,
    /// The start of the validity period, in Unix seconds.
    pub not_before: i64,
    /// The certificate itself. Which CA issued it is decided by checking
    /// its signature (see [`super::ClientVerifier`]), never by the issuer
    /// name it carries: any CA can write another CA's name there.
    pub der: CertificateDer<'static>,
}

impl Claims {
    /// Read the claims of the DER certificate `der`.
    pub fn from_der(der: &[u8]) -> Result<Claims, ClaimsError> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|_| ClaimsError::NotCertificate)?;
        let mut device = None;
        let mut class = None;
        let mut zone = None;
        let mut role = None;
        for uri in san_uris(&cert) {
            if let Some(v) = uri.strip_prefix(DEVICE_URN) {
                claim(&mut device, "device id", v)?;
            } else if let Some(v) = uri.strip_prefix(CLASS_URN) {
                claim(&mut class, "class", v)?;
            } else if let Some(v) = uri.strip_prefix(ZONE_URN) {
                claim(&mut zone, "zone", v)?;
            } else if uri.starts_with(OPERATOR_URN) {
                return Err(ClaimsError::WrongKind("an operator's, not a device's"));
            }
        }
        for ext in cert.extensions() {
            if ext.oid.to_id_string() == ROLE_OID_TEXT {
                let value = utf8_string(ext.value).ok_or(ClaimsError::BadClaim("Modbus role"))?;
                claim(&mut role, "Modbus role", value)?;
            }
        }
        let device = match device {
            Some(d) => d,
            None => {
                let cn = cert
                    .subject()
                    .iter_common_name()
                    .next()
                    .and_then(|cn| cn.as_str().ok())
                    .ok_or(ClaimsError::NoDevice)?;
                check_name("device id", cn).map_err(|_| ClaimsError::NoDevice)?;
                cn.to_owned()
            }
        };
        let validity = cert.validity();
        Ok(Claims {
            device,
            class,
            zone,
            role,
            serial: hex(cert.raw_serial()),
            not_before: validity.not_before.timestamp(),
            not_after: validity.not_after.timestamp(),
            der: CertificateDer::from(der.to_vec()),
        })
    }
}

/// What an operator's certificate says: who, and with which role on the
/// admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorClaims {
    /// The operator's name.
    pub name: String,
    /// The role, as written in the certificate.
    pub role: String,
    /// The serial number, as lowercase hex of its DER content bytes.
    pub serial: String,
    /// The start of the validity period, in Unix seconds.
    pub not_before: i64,
    /// The end of the validity period, in Unix seconds.
    pub not_after: i64,
}

impl OperatorClaims {
    /// Read the claims of the DER operator certificate `der`. It names
    /// exactly one operator and one role, and nothing a device certificate
    /// carries.
    pub fn from_der(der: &[u8]) -> Result<OperatorClaims, ClaimsError> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|_| ClaimsError::NotCertificate)?;
        let mut name = None;
        let mut role = None;
        for uri in san_uris(&cert) {
            if let Some(v) = uri.strip_prefix(OPERATOR_URN) {
                claim(&mut name, "operator name", v)?;
            } else if let Some(v) = uri.strip_prefix(ROLE_URN) {
                claim(&mut role, "operator role", v)?;
            } else if [DEVICE_URN, CLASS_URN, ZONE_URN]
                .iter()
                .any(|urn| uri.starts_with(urn))
            {
                return Err(ClaimsError::WrongKind("a device's, not an operator's"));
            }
        }
        let (Some(name), Some(role)) = (name, role) else {
            return Err(ClaimsError::WrongKind(
                "not an operator's: it names no operator and role",
            ));
        };
        let validity = cert.validity();
        Ok(OperatorClaims {
            name,
            role,
            serial: hex(cert.raw_serial()),
            not_before: validity.not_before.timestamp(),
            not_after: validity.not_after.timestamp(),
        })
    }
}

/// The URIs among the subject alternative names of `cert`.
fn san_uris<'a>(cert: &'a X509Certificate<'_>) -> Vec<&'a str> {
    cert.extensions()
        .iter()
        .filter_map(|ext| match ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => Some(&san.general_names),
            _ => None,
        })
        .flatten()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        })
        .collect()
}

fn claim(slot: &mut Option<String>, kind: &'static str, value: &str) -> Result<(), ClaimsError> {
    if slot.is_some() || check_name(kind, value).is_err() {
        return Err(ClaimsError::BadClaim(kind));
    }
    *slot = Some(value.to_owned());
    Ok(())
}

/// The text of a DER UTF8String of at most 127 bytes (every usable role).
fn utf8_string(der: &[u8]) -> Option<&str> {
    let [0x0c, len, rest @ ..] = der else {
        return None;
    };
    if usize::from(*len) != rest.len() || *len > 127 {
        return None;
    }
    std::str::from_utf8(rest).ok()
}

/// The DER UTF8String of `s`, which is at most 127 bytes.
pub(crate) fn der_utf8_string(s: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len() + 2);
    out.push(0x0c);
    out.push(u8::try_from(s.len()).unwrap_or(0).min(127));
    out.extend_from_slice(s.as_bytes().get(..127.min(s.len())).unwrap_or_default());
    out
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

pub(crate) fn device_uri(id: &str) -> String {
    format!("{DEVICE_URN}{id}")
}

pub(crate) fn class_uri(class: &str) -> String {
    format!("{CLASS_URN}{class}")
}

pub(crate) fn zone_uri(zone: &str) -> String {
    format!("{ZONE_URN}{zone}")
}

pub(crate) fn operator_uri(name: &str) -> String {
    format!("{OPERATOR_URN}{name}")
}

pub(crate) fn role_uri(role: &str) -> String {
    format!("{ROLE_URN}{role}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_string_round_trips() {
        assert_eq!(utf8_string(&der_utf8_string("operator")), Some("operator"));
        assert_eq!(utf8_string(&[0x0c, 5, b'a']), None);
        assert_eq!(utf8_string(&[0x04, 1, b'a']), None);
        assert_eq!(utf8_string(&[]), None);
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert_eq!(
            Claims::from_der(b"\x16\x03\x01garbage"),
            Err(ClaimsError::NotCertificate)
        );
    }
}
