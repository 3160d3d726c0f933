//! Signing keys: Ed25519, PKCS#8 in PEM files readable only by their
//! owner.

use std::path::{Path, PathBuf};

use anyhow::Context;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::Ed25519KeyPair;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rustls::pki_types::PrivatePkcs8KeyDer;
use rustls::pki_types::pem::PemObject;
use tough::async_trait;
use tough::key_source::KeySource;
use tough::schema::key::Key;
use tough::sign::{Sign, parse_keypair};

const PEM_LABEL: &str = "PRIVATE KEY";

/// A signing key in a PEM file.
#[derive(Debug, Clone)]
pub struct PemKey {
    /// The file.
    pub path: PathBuf,
}

impl PemKey {
    /// Create a new key in `path` (mode 0600), refusing to overwrite one.
    pub fn generate(path: &Path) -> anyhow::Result<PemKey> {
        let rng = SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| anyhow::anyhow!("cannot generate an Ed25519 key"))?;
        let body = STANDARD.encode(pkcs8.as_ref());
        let mut pem = format!("-----BEGIN {PEM_LABEL}-----\n");
        for line in body.as_bytes().chunks(64) {
            pem.push_str(&String::from_utf8_lossy(line));
            pem.push('\n');
        }
        pem.push_str(&format!("-----END {PEM_LABEL}-----\n"));
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("creating key {}", path.display()))?;
        file.write_all(pem.as_bytes())?;
        file.sync_all()?;
        Ok(PemKey {
            path: path.to_owned(),
        })
    }

    /// The key's public half, as TUF metadata names it.
    pub fn public(&self) -> anyhow::Result<Key> {
        Ok(self.signer()?.tuf_key())
    }

    fn signer(&self) -> anyhow::Result<impl Sign + use<>> {
        let text = std::fs::read_to_string(&self.path)
            .with_context(|| format!("reading key {}", self.path.display()))?;
        let der = PrivatePkcs8KeyDer::from_pem_slice(text.as_bytes()).map_err(|e| {
            anyhow::anyhow!(
                "{} is not a PKCS#8 PEM private key: {e}",
                self.path.display()
            )
        })?;
        parse_keypair(der.secret_pkcs8_der())
            .map_err(|e| anyhow::anyhow!("key {}: {e}", self.path.display()))
    }

    /// The key as tough signs with it.
    pub fn source(&self) -> Box<dyn KeySource> {
        Box::new(self.clone())
    }
}

#[async_trait]
impl KeySource for PemKey {
    async fn as_sign(
        &self,
    ) -> Result<Box<dyn Sign>, Box<dyn std::error::Error + Send + Sync + 'static>> {
        let signer = self.signer().map_err(|e| e.to_string())?;
        Ok(Box::new(signer))
    }

    async fn write(
        &self,
        _value: &str,
        _key_id_hex: &str,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        Err("palisade keys are written only by `palisade registry keygen`".into())
    }
}

/// The key ID TUF derives from a public key, hex.
pub fn key_id(key: &Key) -> anyhow::Result<String> {
    Ok(crate::identity::hex(&key.key_id()?))
}
