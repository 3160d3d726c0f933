//! A CA of a server the appliance reaches (a broker, a SIEM receiver), in
//! a directory of PEM files, issuing server and client certificates.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};

pub struct TestCa {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    /// The CA's certificate, PEM.
    pub cert: PathBuf,
}

impl TestCa {
    /// A CA called `name`, its certificate in `dir/{name}.pem`.
    pub fn new(dir: &Path, name: &str) -> TestCa {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).unwrap();
        let cert = dir.join(format!("{name}.pem"));
        std::fs::write(&cert, ca.pem()).unwrap();
        TestCa {
            dir: dir.to_owned(),
            issuer: Issuer::new(params, key),
            cert,
        }
    }

    /// A certificate for `name` (also its subject alternative name) for
    /// `usage`: its certificate and key files, `{name}.pem` and `{name}.key`.
    pub fn leaf(&self, name: &str, usage: ExtendedKeyUsagePurpose) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![name.to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (cert_file, key_file) = (
            self.dir.join(format!("{name}.pem")),
            self.dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        (cert_file, key_file)
    }
}
