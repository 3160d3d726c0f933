//! The handshake's client-certificate check: chain, then registry (or, on
//! the admin API, the operators).
//!
//! rustls calls [`ClientVerifier`] while the device's handshake is under
//! way, on TLS over TCP and on QUIC alike. A refused certificate fails the
//! handshake (the device receives an alert), so a refused device never gets
//! a session, whatever route it asked for. The error carries a [`Refusal`]
//! that names the device (when its certificate could be read) and the
//! reason, for the transport's log line.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, RootCertStore,
};

use super::claims::{Claims, OperatorClaims};
use super::{Device, Operators, Pki, Registry};

/// Why a device was refused.
#[derive(Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {reason}", device.as_ref().map_or_else(|| "unknown device".to_owned(), |d| format!("device {d}")))]
pub struct Refusal {
    /// The device, as its certificate names it, when known. A certificate
    /// that did not verify only claims this name.
    pub device: Option<String>,
    /// Why it was refused.
    pub reason: String,
}

impl Refusal {
    /// A refusal of `device` for `reason`.
    pub fn new(device: Option<&str>, reason: impl Into<String>) -> Refusal {
        Refusal {
            device: device.map(str::to_owned),
            reason: reason.into(),
        }
    }

    /// The refusal inside a handshake error, if the verifier made it.
    pub fn of(error: &rustls::Error) -> Option<&Refusal> {
        match error {
            rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(e))) => {
                e.downcast_ref::<Refusal>()
            }
            _ => None,
        }
    }

    /// The refusal in the text of a handshake error: QUIC stacks hand the
    /// TLS error over as text only (quinn's reason string). The inverse of
    /// this type's `Display`, which its `Debug` also is so that it survives
    /// rustls's formatting.
    pub fn from_text(text: &str) -> Option<Refusal> {
        let start = text.find(MARK)? + MARK.len();
        let inner = text.get(start..)?;
        let inner = inner.get(..inner.rfind("))")?)?;
        if let Some(rest) = inner.strip_prefix("device ") {
            let (device, reason) = rest.split_once(": ")?;
            Some(Refusal::new(Some(device), reason))
        } else {
            let reason = inner.strip_prefix("unknown device: ")?;
            Some(Refusal::new(None, reason))
        }
    }

    fn into_rustls(self) -> rustls::Error {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(self))))
    }
}

/// How rustls writes an `OtherError` certificate error in its text.
const MARK: &str = "Other(OtherError(";

impl std::fmt::Debug for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// The verifier could not be built.
#[derive(Debug, thiserror::Error)]
pub enum VerifierError {
    /// A CA certificate was refused as a trust anchor.
    #[error("CA certificate unusable as a trust anchor: {0}")]
    Anchor(rustls::Error),
    /// The webpki verifier could not be built.
    #[error("client verifier: {0}")]
    Build(rustls::server::VerifierBuilderError),
}

/// Checks client certificates during the handshake: devices' on the
/// routes, operators' on the admin API.
#[derive(Debug)]
pub struct ClientVerifier {
    /// Trusts the site CA and every external CA, with the intermediates
    /// the client sends.
    chain: Arc<dyn ClientCertVerifier>,
    /// Trusts the site CA alone, with no intermediates: the site CA signs
    /// device certificates itself (its path length is 0), so a certificate
    /// this accepts is one the site CA signed. An issuer name equal to the
    /// site CA's proves nothing: an external CA can give an intermediate
    /// that name.
    site: Arc<dyn ClientCertVerifier>,
    /// Certificates found signed by the site CA, by a hash of their DER:
    /// the admission right after a handshake need not check the signature
    /// the handshake just checked (each check is a signature verification,
    /// a tenth of a handshake's cost). At most [`SITE_SIGNED_KEPT`], all
    /// forgotten at once when full.
    site_signed: Mutex<HashSet<blake3::Hash>>,
    admits: Admits,
}

/// Certificates a [`ClientVerifier`] remembers as the site CA's: those of
/// the devices connecting in a few seconds on a large site.
const SITE_SIGNED_KEPT: usize = 4096;

/// Whom a [`ClientVerifier`] lets in.
#[derive(Debug)]
enum Admits {
    /// Enrolled devices, with certificates from the site CA or a trusted
    /// external CA.
    Devices(Registry),
    /// Operators, with certificates from the site CA only.
    Operators(Operators),
}

/// An operator refused on the admin API.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct OperatorRefusal(String);

/// Why a handshake on the admin API failed, in an operator's words: the
/// verifier's reason when it refused the certificate.
pub fn operator_refusal(error: &std::io::Error) -> String {
    let reason = error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
        .and_then(|e| match e {
            rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(e))) => {
                e.downcast_ref::<OperatorRefusal>()
            }
            _ => None,
        });
    match reason {
        Some(refusal) => refusal.to_string(),
        None => error.to_string(),
    }
}

impl ClientVerifier {
    /// A verifier trusting the site CA of `pki` and the `external` CAs, that
    /// admits devices enrolled in `registry`.
    pub fn devices(
        pki: &Pki,
        external: &[CertificateDer<'static>],
        registry: Registry,
    ) -> Result<Arc<ClientVerifier>, VerifierError> {
        ClientVerifier::build(pki, external, Admits::Devices(registry))
    }

    /// A verifier trusting only the site CA of `pki`, that admits the
    /// unrevoked operators of `operators`.
    pub fn operators(
        pki: &Pki,
        operators: Operators,
    ) -> Result<Arc<ClientVerifier>, VerifierError> {
        ClientVerifier::build(pki, &[], Admits::Operators(operators))
    }

    fn build(
        pki: &Pki,
        external: &[CertificateDer<'static>],
        admits: Admits,
    ) -> Result<Arc<ClientVerifier>, VerifierError> {
        let chain = webpki(std::iter::once(pki.ca_der()).chain(external))?;
        let site = webpki(std::iter::once(pki.ca_der()))?;
        Ok(Arc::new(ClientVerifier {
            chain,
            site,
            site_signed: Mutex::default(),
            admits,
        }))
    }

    /// Whether the site CA itself signed `certificate`, a valid client
    /// certificate at `now` (its dates, its key usage: all of it checked).
    fn site_issued(&self, certificate: &CertificateDer<'_>, now: UnixTime) -> bool {
        let issued = self.site.verify_client_cert(certificate, &[], now).is_ok();
        if issued {
            let mut signed = lock(&self.site_signed);
            if signed.len() >= SITE_SIGNED_KEPT {
                signed.clear();
            }
            signed.insert(blake3::hash(certificate));
        }
        issued
    }

    /// Whether the site CA signed `certificate`, whose dates the caller
    /// checked: known at once for a certificate found so before (its
    /// signature cannot have changed), checked as [`Self::site_issued`]
    /// does otherwise.
    fn site_signed(&self, certificate: &CertificateDer<'_>, now: UnixTime) -> bool {
        lock(&self.site_signed).contains(&blake3::hash(certificate))
            || self.site_issued(certificate, now)
    }

    /// Check again, after the handshake, that the holder of a device
    /// certificate with `claims` may connect now: within the certificate's
    /// dates, enrolled, active, and with this certificate not revoked. The
    /// handshake checked all this, and the chain; this catches what changed
    /// since, and any handshake that skipped the verifier.
    pub fn readmit(&self, claims: &Claims) -> Result<Device, Refusal> {
        let Admits::Devices(registry) = &self.admits else {
            return Err(Refusal::new(
                Some(&claims.device),
                "this listener admits operators, not devices",
            ));
        };
        let now = super::now_unix();
        match super::check_dates(claims.not_before, claims.not_after, now) {
            Ok(()) => {}
            Err(super::Dates::Expired) => {
                return Err(Refusal::new(Some(&claims.device), "certificate expired"));
            }
            Err(super::Dates::NotYetValid) => {
                return Err(Refusal::new(
                    Some(&claims.device),
                    "certificate not valid yet",
                ));
            }
        }
        // The same second as the dates just checked: a certificate valid
        // now is not taken for another CA's for having expired meanwhile.
        let now = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            u64::try_from(now).unwrap_or(0),
        ));
        registry.admit(claims, self.site_signed(&claims.der, now))
    }

    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        match &self.admits {
            Admits::Devices(registry) => {
                let claims = Claims::from_der(end_entity)
                    .map_err(|e| Refusal::new(None, e.to_string()).into_rustls())?;
                let site_issued = self.site_issued(end_entity, now);
                if !site_issued {
                    self.chain
                        .verify_client_cert(end_entity, intermediates, now)
                        .map_err(|e| {
                            Refusal::new(Some(&claims.device), describe(&e)).into_rustls()
                        })?;
                }
                registry
                    .admit(&claims, site_issued)
                    .map(|_| ())
                    .map_err(Refusal::into_rustls)
            }
            Admits::Operators(operators) => {
                let refuse = |reason: String| {
                    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(
                        Arc::new(OperatorRefusal(reason)),
                    )))
                };
                let claims =
                    OperatorClaims::from_der(end_entity).map_err(|e| refuse(e.to_string()))?;
                self.chain
                    .verify_client_cert(end_entity, intermediates, now)
                    .map_err(|e| refuse(format!("operator {}: {}", claims.name, describe(&e))))?;
                operators.admit(&claims).map(|_| ()).map_err(refuse)
            }
        }
    }
}

/// A webpki client verifier trusting `cas`.
fn webpki<'a>(
    cas: impl IntoIterator<Item = &'a CertificateDer<'static>>,
) -> Result<Arc<dyn ClientCertVerifier>, VerifierError> {
    let mut roots = RootCertStore::empty();
    for ca in cas {
        roots.add(ca.clone()).map_err(VerifierError::Anchor)?;
    }
    WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .map_err(VerifierError::Build)
}

/// A chain error in words an operator reads in a log.
fn describe(error: &rustls::Error) -> String {
    match error {
        rustls::Error::InvalidCertificate(e) => match e {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "certificate expired".into()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "certificate not valid yet".into()
            }
            CertificateError::UnknownIssuer => "certificate from an untrusted CA".into(),
            CertificateError::BadSignature => "certificate signature invalid".into(),
            CertificateError::Revoked => "certificate revoked".into(),
            other => format!("certificate refused: {other:?}"),
        },
        other => other.to_string(),
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.chain.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity, intermediates, now)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use std::time::Duration;

    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
        IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
    };
    use x509_parser::prelude::{FromDer, X509Certificate};

    use super::*;
    use crate::identity::{DeviceCertRequest, DeviceState, IssuedCert, now_unix};
    use crate::store::Store;

    /// A site CA, an external CA the site trusts, and a device verifier over
    /// a fresh registry. The directory holds both CAs.
    struct Site {
        _dir: tempfile::TempDir,
        ca: Pki,
        external: Pki,
        registry: Registry,
        verifier: Arc<ClientVerifier>,
    }

    fn site() -> Site {
        let dir = tempfile::tempdir().unwrap();
        let (ca, _) = Pki::init(&dir.path().join("site")).unwrap();
        let (external, _) = Pki::init(&dir.path().join("external")).unwrap();
        let registry = Registry::open(&Store::temporary().unwrap()).unwrap();
        let verifier =
            ClientVerifier::devices(&ca, &[external.ca_der().clone()], registry.clone()).unwrap();
        Site {
            _dir: dir,
            ca,
            external,
            registry,
            verifier,
        }
    }

    /// `device`, of class sensor in the hall, for an hour.
    fn request(device: &str) -> DeviceCertRequest {
        DeviceCertRequest {
            device: device.into(),
            class: "sensor".into(),
            zone: "hall".into(),
            role: None,
            lifetime: Duration::from_secs(3600),
        }
    }

    /// A certificate `ca` issues to `device`.
    fn certificate(ca: &Pki, device: &str) -> IssuedCert {
        ca.issue_device(&request(device), &KeyPair::generate().unwrap())
            .unwrap()
    }

    impl Site {
        /// A certificate the site CA issues to `device`, recorded in the
        /// registry as `palisade device issue` does.
        fn issue(&self, device: &str) -> Claims {
            let issued = certificate(&self.ca, device);
            self.registry
                .record_issued(&request(device), &issued.claims)
                .unwrap();
            issued.claims
        }

        /// Why readmit refuses `claims`.
        #[track_caller]
        fn refusal(&self, claims: &Claims) -> String {
            let refusal = self.verifier.readmit(claims).unwrap_err();
            assert_eq!(refusal.device.as_deref(), Some(claims.device.as_str()));
            refusal.reason
        }
    }

    /// What changed in the registry after a handshake counts: a device
    /// quarantined or revoked since, or whose certificate was replaced, is
    /// refused with the reason; the same certificate is admitted while
    /// nothing changed.
    #[test]
    fn readmit_sees_the_registry_as_it_is_now() {
        let site = site();
        let old = site.issue("plc-7");
        let device = site.verifier.readmit(&old).unwrap();
        assert_eq!(
            (device.id.as_str(), device.state),
            ("plc-7", DeviceState::Active)
        );

        site.registry.quarantine("plc-7").unwrap();
        assert_eq!(site.refusal(&old), "quarantined");
        site.registry.release("plc-7").unwrap();
        assert!(site.verifier.readmit(&old).is_ok());

        site.registry.revoke("plc-7").unwrap();
        assert_eq!(site.refusal(&old), "revoked");

        // Re-issued: the device is active again on its new certificate
        // only; the one it held when it was revoked stays refused.
        let new = site.issue("plc-7");
        assert!(site.verifier.readmit(&new).is_ok());
        assert_eq!(
            site.refusal(&old),
            format!("certificate {} revoked", old.serial)
        );

        // Signed by the site CA, but not recorded for the device (never
        // recorded, or dropped since): not a current certificate.
        let unrecorded = certificate(&site.ca, "plc-7").claims;
        assert_eq!(
            site.refusal(&unrecorded),
            format!(
                "certificate {} is not one the registry holds for it",
                unrecorded.serial
            )
        );

        let unknown = certificate(&site.ca, "plc-8").claims;
        assert_eq!(site.refusal(&unknown), "not enrolled");
    }

    /// A certificate's dates are checked against the clock now, not at the
    /// handshake: one that expired since is refused, though the registry
    /// still holds it unrevoked.
    #[test]
    fn readmit_checks_the_certificates_dates_now() {
        let site = site();
        let claims = site.issue("plc-7");
        let now = now_unix();

        let mut expired = claims.clone();
        expired.not_after = now - 1;
        assert_eq!(site.refusal(&expired), "certificate expired");

        let mut early = claims.clone();
        early.not_before = now + 60;
        assert_eq!(site.refusal(&early), "certificate not valid yet");

        assert!(site.verifier.readmit(&claims).is_ok());
    }

    /// The CA that issued a certificate must be the one the device was
    /// enrolled with: the site CA's serials are checked, an external CA's
    /// certificate stands for a device enrolled as external only.
    #[test]
    fn readmit_checks_which_ca_issued_the_certificate() {
        let site = site();
        site.issue("plc-7");
        site.registry
            .add_external("badge-1", "sensor", "hall")
            .unwrap();

        let external = certificate(&site.external, "badge-1").claims;
        assert_eq!(site.verifier.readmit(&external).unwrap().id, "badge-1");
        assert_eq!(
            site.refusal(&certificate(&site.ca, "badge-1").claims),
            "enrolled with an external CA but presented a site certificate"
        );
        assert_eq!(
            site.refusal(&certificate(&site.external, "plc-7").claims),
            "enrolled with the site CA but presented a certificate from another CA"
        );

        site.registry.revoke("badge-1").unwrap();
        assert_eq!(site.refusal(&external), "revoked");
        // Enrolled again, for a replacement: the certificate it held when
        // revoked (a stolen key's, say) stays refused.
        site.registry
            .add_external("badge-1", "sensor", "hall")
            .unwrap();
        assert!(
            site.refusal(&external).starts_with(&format!(
                "certificate {} was issued before the device's revocation",
                external.serial
            )),
            "{}",
            site.refusal(&external)
        );
    }

    /// An external CA the site trusts, of the usual enterprise kind that
    /// signs intermediates: its certificate and its issuer.
    fn enterprise_ca() -> (CertificateDer<'static>, Issuer<'static, KeyPair>) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "Enterprise root");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let der = params.self_signed(&key).unwrap().der().clone();
        let issuer = Issuer::from_ca_cert_der(&der, key).unwrap();
        (der, issuer)
    }

    /// An external CA gives an intermediate the site CA's exact name and,
    /// under it, forges site device plc-7's certificate with the serial the
    /// registry holds for it (serials are no secret). The chain checks out
    /// against the trusted CAs, but the site CA signed none of it: the
    /// handshake and the check after it refuse it as another CA's.
    #[test]
    fn a_certificate_under_the_site_cas_name_is_not_the_site_cas() {
        let site = site();
        let genuine = site.issue("plc-7");
        let (root, enterprise) = enterprise_ca();
        let verifier = ClientVerifier::devices(&site.ca, &[root], site.registry.clone()).unwrap();

        // The site CA's name, attribute by attribute as rcgen wrote it
        // (UTF8Strings): checked byte for byte below.
        let (_, ca) = X509Certificate::from_der(site.ca.ca_der()).unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        let subject = ca.subject();
        let organization = subject.iter_organization().next().unwrap();
        let common_name = subject.iter_common_name().next().unwrap();
        let name = &mut params.distinguished_name;
        name.push(DnType::OrganizationName, organization.as_str().unwrap());
        name.push(DnType::CommonName, common_name.as_str().unwrap());
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let impostor_key = KeyPair::generate().unwrap();
        let intermediate = params
            .signed_by(&impostor_key, &enterprise)
            .unwrap()
            .der()
            .clone();
        let impostor = Issuer::from_ca_cert_der(&intermediate, impostor_key).unwrap();

        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, "plc-7");
        params.subject_alt_names = [
            "urn:palisade:device:plc-7",
            "urn:palisade:class:sensor",
            "urn:palisade:zone:hall",
        ]
        .map(|uri| SanType::URI(uri.try_into().unwrap()))
        .to_vec();
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let serial: Vec<u8> = (0..genuine.serial.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&genuine.serial[i..i + 2], 16).unwrap())
            .collect();
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let forged = params
            .signed_by(&KeyPair::generate().unwrap(), &impostor)
            .unwrap()
            .der()
            .clone();

        let claims = Claims::from_der(&forged).unwrap();
        assert_eq!(claims.serial, genuine.serial);
        let (_, parsed) = X509Certificate::from_der(&forged).unwrap();
        assert_eq!(parsed.issuer().as_raw(), ca.subject().as_raw());
        let now = UnixTime::now();
        assert!(
            (verifier.chain)
                .verify_client_cert(&forged, std::slice::from_ref(&intermediate), now)
                .is_ok(),
            "the chain alone checks out: the attack is real"
        );

        let another_ca = "enrolled with the site CA but presented a certificate from another CA";
        let refused = verifier
            .verify_client_cert(&forged, std::slice::from_ref(&intermediate), now)
            .unwrap_err();
        assert_eq!(
            Refusal::of(&refused).map(|r| r.reason.as_str()),
            Some(another_ca)
        );
        assert_eq!(verifier.readmit(&claims).unwrap_err().reason, another_ca);

        // The genuine certificate still passes both.
        assert!(verifier.verify_client_cert(&genuine.der, &[], now).is_ok());
        assert!(verifier.readmit(&genuine).is_ok());
    }

    /// The admission after a handshake takes the handshake's word that the
    /// site CA signed the certificate; a handshake never takes an earlier
    /// one's: the certificate's dates are checked every time.
    #[test]
    fn a_certificate_found_the_site_cas_is_still_checked_at_every_handshake() {
        let site = site();
        let claims = site.issue("plc-7");
        let now = UnixTime::now();
        assert!(
            site.verifier
                .verify_client_cert(&claims.der, &[], now)
                .is_ok()
        );
        assert!(site.verifier.readmit(&claims).is_ok());
        let later = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            u64::try_from(claims.not_after).unwrap() + 1,
        ));
        assert!(
            site.verifier
                .verify_client_cert(&claims.der, &[], later)
                .is_err(),
            "an expired certificate admitted for having been the site CA's"
        );
    }

    /// The operators' verifier (the admin API's) never admits a device.
    #[test]
    fn readmit_on_the_admin_listener_refuses_devices() {
        let site = site();
        let claims = site.issue("plc-7");
        let operators = Operators::open(&Store::temporary().unwrap()).unwrap();
        let admin = ClientVerifier::operators(&site.ca, operators).unwrap();
        assert_eq!(
            admin.readmit(&claims).unwrap_err().reason,
            "this listener admits operators, not devices"
        );
    }

    #[test]
    fn refusal_survives_the_text_of_a_handshake_error() {
        for refusal in [
            Refusal::new(Some("plc-1"), "revoked"),
            Refusal::new(None, "certificate names no device"),
            Refusal::new(Some("s"), "certificate says class a, the registry says b"),
        ] {
            let text = refusal.clone().into_rustls().to_string();
            assert_eq!(Refusal::from_text(&text), Some(refusal), "{text}");
        }
        assert_eq!(Refusal::from_text("handshake failed"), None);
    }
}
