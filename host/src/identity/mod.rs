//! Device identity: who is at the other end of a connection, before one
//! byte of its traffic reaches a parser.
//!
//! On the path of a frame this stage sits between the transport's TLS or
//! QUIC handshake and the connection policy. The site's certificate
//! authority ([`Pki`]) issues each device a short-lived certificate that
//! names it; the [`Registry`] in the state store records every device's
//! class, zone, state and certificates; the [`ClientVerifier`] checks, during
//! the handshake, that a presented certificate chains to a trusted CA and
//! belongs to an enrolled device that is neither revoked nor quarantined.
//!
//! # What a device certificate carries
//!
//! A certificate issued by the site CA names its device three ways, all in
//! the subject alternative name as URIs (RFC 5280 §4.2.1.6):
//!
//! - `urn:palisade:device:<id>`: the device id (also the subject's CN),
//! - `urn:palisade:class:<class>`: the device class,
//! - `urn:palisade:zone:<zone>`: the zone it sits in,
//!
//! and, on request, the Modbus/TCP Security role (extension
//! 1.3.6.1.4.1.50316.802.1, a UTF8String). Ids, classes, zones and roles
//! are 1 to 64 characters of `A-Z a-z 0-9 . _ -`, so the URIs need no
//! escaping and no parser can be confused by them.
//!
//! A certificate from a trusted external (enterprise) CA names its device
//! by the same device URI or, failing that, by its subject CN; the device
//! must have been enrolled with `palisade device add`, which records its
//! class and zone.

mod claims;
pub(crate) use claims::hex;
mod operators;
mod pki;
mod registry;
pub mod renewal;
mod verifier;

pub use claims::{Claims, ClaimsError, OperatorClaims, ROLE_OID};
pub use operators::{Operator, OperatorCert, OperatorError, Operators, Role};
pub use pki::{DeviceCertRequest, IssuedCert, Pki, PkiError, ServerCertificate, pem_certificates};
pub use registry::{Authority, CertRecord, Device, DeviceState, Registry, RegistryError};
pub use verifier::{ClientVerifier, Refusal, VerifierError, operator_refusal};

/// Longest id, class, zone or role, in characters.
pub const MAX_NAME: usize = 64;

/// Why a device id, class, zone or role was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {value:?} is not 1 to {MAX_NAME} characters of letters, digits, '.', '_' and '-'")]
pub struct BadName {
    /// What the name was for (`device id`, `class`, ...).
    pub kind: &'static str,
    /// The refused value, cut to a printable length.
    pub value: String,
}

/// Check that `value` is a usable name of `kind`.
pub fn check_name(kind: &'static str, value: &str) -> Result<(), BadName> {
    let ok = !value.is_empty()
        && value.len() <= MAX_NAME
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(BadName {
            kind,
            value: value.chars().take(MAX_NAME + 8).collect(),
        })
    }
}

/// Write PEM `text` to `path` with permission `mode` (0600 for keys),
/// atomically.
pub fn write_pem(path: &std::path::Path, text: &str, mode: u32) -> Result<(), PkiError> {
    pki::write_file(path, text.as_bytes(), mode)
}

/// Seconds since the Unix epoch, now.
pub(crate) fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Why a certificate is not valid at some time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dates {
    /// Before its `not_before`.
    NotYetValid,
    /// After its `not_after`.
    Expired,
}

/// Whether a certificate valid from `not_before` through `not_after` is
/// valid at `now`, all in seconds since the Unix epoch. Both ends are in
/// its validity, as RFC 5280 §4.1.2.5 says and as the handshake's verifier
/// counts them: every later check of a device's or an operator's
/// certificate agrees with the handshake to the second.
pub(crate) fn check_dates(not_before: i64, not_after: i64, now: i64) -> Result<(), Dates> {
    if now < not_before {
        Err(Dates::NotYetValid)
    } else if now > not_after {
        Err(Dates::Expired)
    } else {
        Ok(())
    }
}

/// `unix` seconds as an RFC 3339 time, for people.
pub fn format_time(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_plain() {
        assert!(check_name("device id", "plc-7.cell_2").is_ok());
        for bad in ["", "a b", "a:b", "a/b", "é", &"x".repeat(65)] {
            assert!(check_name("device id", bad).is_err(), "{bad:?}");
        }
    }

    /// The admin API's check of an operator's certificate used to refuse
    /// it in the last second of its validity, which the handshake and a
    /// device's check both allow.
    #[test]
    fn a_certificate_is_valid_through_both_of_its_dates() {
        let (from, to) = (1_000, 2_000);
        assert_eq!(check_dates(from, to, from - 1), Err(Dates::NotYetValid));
        assert_eq!(check_dates(from, to, from), Ok(()));
        assert_eq!(check_dates(from, to, to), Ok(()));
        assert_eq!(check_dates(from, to, to + 1), Err(Dates::Expired));
    }
}
