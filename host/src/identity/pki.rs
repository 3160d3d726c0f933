//! The site's certificate authority: one CA per appliance, created on the
//! first start, that issues device certificates and the appliance's own
//! server certificate.
//!
//! Everything lives in `<data>/pki/`: `ca.pem` and `ca.key`, `server.pem` and
//! `server.key`. Private keys are ECDSA P-256, written mode 0600 through a
//! temporary file and a rename, so a crash never leaves half a key.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType,
    SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::claims::{self, Claims, ClaimsError, OperatorClaims};
use super::{BadName, Role, check_name, now_unix};

/// How long the site CA is valid: ten years. It never leaves the appliance.
const CA_LIFETIME: time::Duration = time::Duration::days(3650);
/// How far back a new certificate's validity starts, for devices whose
/// clocks run a little behind the appliance's.
const CLOCK_SKEW: time::Duration = time::Duration::minutes(5);

/// Why a PKI operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// The data directory holds no site CA yet.
    #[error("no site CA in {0}: run `palisade pki init` (or `palisade serve`) first")]
    NotInitialised(PathBuf),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// A PKI file holds something unusable.
    #[error("{path}: {reason}")]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Certificate generation failed.
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// A device id, class, zone or role is not usable.
    #[error(transparent)]
    BadName(#[from] BadName),
    /// A requested lifetime is zero or absurdly long.
    #[error("a certificate lifetime must be between 1 hour and 10 years, not {0:?}")]
    Lifetime(Duration),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What a device certificate should say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceCertRequest {
    /// The device id.
    pub device: String,
    /// Its class.
    pub class: String,
    /// Its zone.
    pub zone: String,
    /// The Modbus/TCP Security role to carry, if any.
    pub role: Option<String>,
    /// How long the certificate is valid.
    pub lifetime: Duration,
}

impl DeviceCertRequest {
    /// Check every name and the lifetime.
    pub fn check(&self) -> Result<(), PkiError> {
        check_name("device id", &self.device)?;
        check_name("class", &self.class)?;
        check_name("zone", &self.zone)?;
        if let Some(role) = &self.role {
            check_name("Modbus role", role)?;
        }
        check_lifetime(self.lifetime)
    }
}

fn check_lifetime(lifetime: Duration) -> Result<(), PkiError> {
    let hours = lifetime.as_secs() / 3600;
    if (1..=24 * 3650).contains(&hours) {
        Ok(())
    } else {
        Err(PkiError::Lifetime(lifetime))
    }
}

/// A certificate the CA issued.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    /// The certificate, PEM.
    pub pem: String,
    /// The certificate, DER.
    pub der: CertificateDer<'static>,
    /// What it says.
    pub claims: Claims,
}

/// The appliance's own certificate and key, for its listeners.
#[derive(Debug)]
pub struct ServerCertificate {
    /// The certificate followed by the site CA's.
    pub chain: Vec<CertificateDer<'static>>,
    /// Its private key.
    pub key: PrivateKeyDer<'static>,
    /// When it should be replaced (two thirds into its lifetime), in Unix
    /// seconds.
    pub renew_at: i64,
}

/// The site CA.
pub struct Pki {
    dir: PathBuf,
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    /// The DER bytes of the site CA's subject, to tell the server
    /// certificate this CA wrote to disk from one left by another. Only a
    /// name: whether the site CA issued a certificate a device presents is
    /// decided by its signature, never by this.
    subject: Vec<u8>,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The issuer holds the CA's private key: never printed.
        f.debug_struct("Pki")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// Set aside `key`, a site CA key in `dir` whose certificate `cert` is
/// missing, so that a new CA can be made: when nothing else is in `dir`.
///
/// A first start cut short between writing the key and the certificate
/// leaves the key alone in the directory: it never signed anything anyone
/// holds. With anything else beside it (the server's certificate), the CA
/// did sign, and its certificate was lost since: made afresh, every
/// certificate would stop verifying, so that is refused.
fn set_aside_incomplete(dir: &Path, key: &Path, cert: &Path) -> Result<(), PkiError> {
    let made = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|name| !name.starts_with("ca.key"));
    if let Some(made) = made {
        return Err(PkiError::BadFile {
            path: cert.to_owned(),
            reason: format!(
                "missing, though this site CA has made {made}: restore it from a backup, or move {} aside to start a new site CA (every device and operator certificate then needs issuing again)",
                dir.display()
            ),
        });
    }
    // Set aside, not destroyed.
    let aside = dir.join("ca.key.incomplete");
    std::fs::rename(key, &aside).map_err(io(key))?;
    tracing::warn!(key = %aside.display(), "a site CA key without its certificate, from an interrupted first start, set aside: creating the site CA afresh");
    Ok(())
}

impl Pki {
    /// Open the site CA in the data directory `data`, creating it first if
    /// there is none. Says whether it was created.
    pub fn init(data: &Path) -> Result<(Pki, bool), PkiError> {
        let dir = data.join("pki");
        let (key_path, cert_path) = (dir.join("ca.key"), dir.join("ca.pem"));
        if key_path.exists() {
            if cert_path.exists() {
                return Ok((Pki::open(data)?, false));
            }
            set_aside_incomplete(&dir, &key_path, &cert_path)?;
        }
        crate::store::create_data_dir(&dir).map_err(io(&dir))?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, "Palisade");
        // A name of its own, so that operators (and TLS clients listing
        // acceptable CAs) can tell two sites' CAs apart.
        name.push(
            DnType::CommonName,
            format!("Palisade site CA {}", &claims::hex(&random_bytes::<4>())),
        );
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - CLOCK_SKEW;
        params.not_after = now + CA_LIFETIME;
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key)?;
        // The key first: a CA certificate without its key is useless, a key
        // without its certificate is set aside on the next init (above).
        write_file(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
        write_file(&cert_path, cert.pem().as_bytes(), 0o644)?;
        Ok((Pki::open(data)?, true))
    }

    /// Open the site CA in the data directory `data`.
    pub fn open(data: &Path) -> Result<Pki, PkiError> {
        let dir = data.join("pki");
        let key_path = dir.join("ca.key");
        let cert_path = dir.join("ca.pem");
        if !key_path.exists() || !cert_path.exists() {
            return Err(PkiError::NotInitialised(data.to_owned()));
        }
        let key_pem = std::fs::read_to_string(&key_path).map_err(io(&key_path))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| PkiError::BadFile {
            path: key_path.clone(),
            reason: e.to_string(),
        })?;
        let ca_pem = std::fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
        let bad_cert = |reason: String| PkiError::BadFile {
            path: cert_path.clone(),
            reason,
        };
        let ca_der = pem_certificates(&ca_pem)
            .map_err(bad_cert)?
            .into_iter()
            .next()
            .ok_or_else(|| bad_cert("no certificate".into()))?;
        let subject = X509Certificate::from_der(&ca_der)
            .map_err(|e| bad_cert(e.to_string()))?
            .1
            .subject()
            .as_raw()
            .to_vec();
        let issuer = Issuer::from_ca_cert_der(&ca_der, key).map_err(|e| bad_cert(e.to_string()))?;
        Ok(Pki {
            dir,
            ca_pem,
            ca_der,
            issuer,
            subject,
        })
    }

    /// The site CA's certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The site CA's certificate, DER.
    pub fn ca_der(&self) -> &CertificateDer<'static> {
        &self.ca_der
    }

    /// Issue a certificate for the device of `request`, for the key
    /// `public_key`.
    pub fn issue_device(
        &self,
        request: &DeviceCertRequest,
        public_key: &impl PublicKeyData,
    ) -> Result<IssuedCert, PkiError> {
        request.check()?;
        let mut params = client_params(
            &request.device,
            [
                claims::device_uri(&request.device),
                claims::class_uri(&request.class),
                claims::zone_uri(&request.zone),
            ],
            request.lifetime,
        )?;
        if let Some(role) = &request.role {
            params
                .custom_extensions
                .push(CustomExtension::from_oid_content(
                    claims::ROLE_OID,
                    claims::der_utf8_string(role),
                ));
        }
        let cert = params.signed_by(public_key, &self.issuer)?;
        let der = cert.der().clone();
        let claims = Claims::from_der(&der).map_err(|e| self.unreadable(&e))?;
        Ok(IssuedCert {
            pem: cert.pem(),
            der,
            claims,
        })
    }

    /// Issue operator `name` a certificate with `role` for the admin API,
    /// for the key `public_key`.
    pub fn issue_operator(
        &self,
        name: &str,
        role: Role,
        lifetime: Duration,
        public_key: &impl PublicKeyData,
    ) -> Result<(String, OperatorClaims), PkiError> {
        check_name("operator name", name)?;
        check_lifetime(lifetime)?;
        let params = client_params(
            // Not a usable device id: an operator's certificate never names
            // a device, even by its CN.
            &format!("operator {name}"),
            [claims::operator_uri(name), claims::role_uri(role.as_str())],
            lifetime,
        )?;
        let cert = params.signed_by(public_key, &self.issuer)?;
        let claims = OperatorClaims::from_der(cert.der()).map_err(|e| self.unreadable(&e))?;
        Ok((cert.pem(), claims))
    }

    fn unreadable(&self, e: &ClaimsError) -> PkiError {
        PkiError::BadFile {
            path: self.dir.join("ca.pem"),
            reason: format!("the CA issued a certificate it cannot read: {e}"),
        }
    }

    /// The appliance's server certificate for `names` (DNS names and IP
    /// addresses). The one on disk is kept while it covers every name, was
    /// issued by this CA and is less than two thirds through its life;
    /// otherwise a new one valid for `lifetime` replaces it.
    pub fn server_certificate(
        &self,
        names: &[String],
        lifetime: Duration,
    ) -> Result<ServerCertificate, PkiError> {
        let cert_path = self.dir.join("server.pem");
        let key_path = self.dir.join("server.key");
        if let Some(current) = self.current_server_certificate(&cert_path, &key_path, names) {
            return Ok(current);
        }
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, "Palisade");
        name.push(DnType::CommonName, "Palisade appliance");
        params.distinguished_name = name;
        params.subject_alt_names = names
            .iter()
            .map(|n| match n.parse::<IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => Ok(SanType::DnsName(n.clone().try_into()?)),
            })
            .collect::<Result<_, rcgen::Error>>()?;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - CLOCK_SKEW;
        params.not_after = now + lifetime;
        params.serial_number = Some(random_serial());
        let cert = params.signed_by(&key, &self.issuer)?;
        write_file(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
        write_file(&cert_path, cert.pem().as_bytes(), 0o644)?;
        let start = now.unix_timestamp();
        let lifetime = i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX / 2);
        Ok(ServerCertificate {
            chain: vec![cert.der().clone(), self.ca_der.clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            renew_at: start.saturating_add(lifetime / 3 * 2),
        })
    }

    fn current_server_certificate(
        &self,
        cert_path: &Path,
        key_path: &Path,
        names: &[String],
    ) -> Option<ServerCertificate> {
        let pem = std::fs::read_to_string(cert_path).ok()?;
        let der = pem_certificates(&pem).ok()?.into_iter().next()?;
        let (_, cert) = X509Certificate::from_der(&der).ok()?;
        if cert.issuer().as_raw() != self.subject.as_slice() {
            return None;
        }
        let validity = cert.validity();
        let (start, end) = (
            validity.not_before.timestamp(),
            validity.not_after.timestamp(),
        );
        let renew_at = start.saturating_add((end.saturating_sub(start)) / 3 * 2);
        if now_unix() >= renew_at {
            return None;
        }
        let san = cert.subject_alternative_name().ok()??;
        let covered = |name: &String| {
            san.value.general_names.iter().any(|g| match g {
                GeneralName::DNSName(d) => d.eq_ignore_ascii_case(name),
                GeneralName::IPAddress(bytes) => name.parse::<IpAddr>().is_ok_and(|ip| match ip {
                    IpAddr::V4(v4) => *bytes == v4.octets().as_slice(),
                    IpAddr::V6(v6) => *bytes == v6.octets().as_slice(),
                }),
                _ => false,
            })
        };
        if !names.iter().all(covered) {
            return None;
        }
        let key_pem = std::fs::read_to_string(key_path).ok()?;
        let key = KeyPair::from_pem(&key_pem).ok()?;
        Some(ServerCertificate {
            chain: vec![der, self.ca_der.clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            renew_at,
        })
    }
}

/// The settings of a client certificate with subject CN `common_name` and
/// the subject alternative name URIs `uris`, valid from now for `lifetime`.
fn client_params(
    common_name: &str,
    uris: impl IntoIterator<Item = String>,
    lifetime: Duration,
) -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    params.distinguished_name = name;
    params.subject_alt_names = uris
        .into_iter()
        .map(|uri| Ok(SanType::URI(uri.try_into()?)))
        .collect::<Result<_, rcgen::Error>>()?;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - CLOCK_SKEW;
    params.not_after = now + lifetime;
    params.serial_number = Some(random_serial());
    Ok(params)
}

/// The certificates in PEM text `pem`.
pub fn pem_certificates(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not PEM certificates: {e}"))
}

/// Write `contents` to `path` with permission `mode`, atomically: a reader
/// (or a crash) sees the old file or the new one, never half of one.
pub(crate) fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    crate::store::write_atomic(path, contents, mode).map_err(io(path))
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    // The provider's generator reads the kernel's; it fails only when the
    // kernel cannot give randomness, and then a zero-filled value is still
    // unique enough for a name (serials below add the clock).
    let _ = rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes);
    bytes
}

/// A random positive 128-bit serial whose DER content is exactly its 16
/// bytes (top bit clear, second-highest set), so the serial read back from
/// a certificate is the one written.
fn random_serial() -> SerialNumber {
    let mut bytes = random_bytes::<16>();
    let [first, rest @ ..] = &mut bytes;
    *first = (*first & 0x7f) | 0x40;
    // Mix in the clock: two serials never repeat even if the generator did.
    for (b, t) in rest.iter_mut().zip(now_unix().to_be_bytes()) {
        *b ^= t;
    }
    SerialNumber::from_slice(&bytes)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn request(device: &str) -> DeviceCertRequest {
        DeviceCertRequest {
            device: device.into(),
            class: "plc".into(),
            zone: "cell-1".into(),
            role: Some("operator".into()),
            lifetime: Duration::from_secs(3600),
        }
    }

    #[test]
    fn init_creates_once_with_private_keys_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (first, created) = Pki::init(dir.path()).unwrap();
        assert!(created);
        let (again, created) = Pki::init(dir.path()).unwrap();
        assert!(!created);
        assert_eq!(first.ca_pem(), again.ca_pem());
        let mode = std::fs::metadata(dir.path().join("pki/ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    /// A first start cut short after the key was written left a key
    /// without its certificate, and every later start failed on it.
    #[test]
    fn a_first_start_cut_short_is_started_again() {
        let dir = tempfile::tempdir().unwrap();
        let (first, _) = Pki::init(dir.path()).unwrap();
        let pki = dir.path().join("pki");
        let old_key = std::fs::read(pki.join("ca.key")).unwrap();
        std::fs::remove_file(pki.join("ca.pem")).unwrap();

        let (again, created) = Pki::init(dir.path()).unwrap();
        assert!(created);
        assert_ne!(again.ca_pem(), first.ca_pem());
        assert_eq!(
            std::fs::read(pki.join("ca.key.incomplete")).unwrap(),
            old_key
        );
        let (reopened, created) = Pki::init(dir.path()).unwrap();
        assert!(!created);
        assert_eq!(reopened.ca_pem(), again.ca_pem());

        // A CA that has signed (the server's certificate) and then lost
        // its certificate is not made afresh: that would void every
        // certificate it issued.
        (reopened.server_certificate(&["gate.example".into()], Duration::from_secs(86_400)))
            .unwrap();
        std::fs::remove_file(pki.join("ca.pem")).unwrap();
        let error = Pki::init(dir.path()).unwrap_err().to_string();
        assert!(
            error.contains("ca.pem: missing, though this site CA has made server"),
            "{error}"
        );
        assert!(pki.join("ca.key").exists());
    }

    #[test]
    fn device_certificate_carries_its_claims() {
        let dir = tempfile::tempdir().unwrap();
        let (pki, _) = Pki::init(dir.path()).unwrap();
        let key = KeyPair::generate().unwrap();
        let issued = pki.issue_device(&request("plc-7"), &key).unwrap();
        let c = &issued.claims;
        assert_eq!(c.device, "plc-7");
        assert_eq!(c.class.as_deref(), Some("plc"));
        assert_eq!(c.zone.as_deref(), Some("cell-1"));
        assert_eq!(c.role.as_deref(), Some("operator"));
        assert_eq!(c.der, issued.der);
        assert_eq!(c.serial.len(), 32);
        assert!((c.not_after - c.not_before - 3600 - 300).abs() <= 1);
    }

    #[test]
    fn bad_requests_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (pki, _) = Pki::init(dir.path()).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut r = request("a:b");
        assert!(matches!(
            pki.issue_device(&r, &key),
            Err(PkiError::BadName(_))
        ));
        r = request("ok");
        r.lifetime = Duration::ZERO;
        assert!(matches!(
            pki.issue_device(&r, &key),
            Err(PkiError::Lifetime(_))
        ));
    }

    #[test]
    fn server_certificate_is_kept_until_names_change() {
        let dir = tempfile::tempdir().unwrap();
        let (pki, _) = Pki::init(dir.path()).unwrap();
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let day = Duration::from_secs(86400);
        let first = pki.server_certificate(&names, day).unwrap();
        let second = pki.server_certificate(&names, day).unwrap();
        assert_eq!(first.chain[0], second.chain[0]);
        let more = vec!["localhost".to_string(), "10.0.0.1".to_string()];
        let third = pki.server_certificate(&more, day).unwrap();
        assert_ne!(first.chain[0], third.chain[0]);
    }
}
