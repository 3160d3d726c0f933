//! Plugin bundles: a component and its manifest, as files.
//!
//! A bundle is a directory with `manifest.json` and the component the
//! manifest names (`component.wasm`). In a registry it is published as the
//! two targets `plugins/NAME/VERSION/manifest.json` and
//! `plugins/NAME/VERSION/component.wasm`, so TUF's signed hashes cover both.

use std::path::Path;

use anyhow::Context;
use aws_lc_rs::digest::{SHA256, digest};
use serde::Deserialize;

use super::manifest::{ComponentRef, Manifest, SbomEntry};

/// The manifest's file name in a bundle.
pub const MANIFEST: &str = "manifest.json";
/// The component's file name in a bundle.
pub const COMPONENT: &str = "component.wasm";
/// The publisher's manifest source, beside the plugin's `Cargo.toml`.
pub const MANIFEST_SOURCE: &str = "palisade-plugin.toml";
/// The largest component a bundle may carry.
pub const MAX_COMPONENT: u64 = 64 << 20;
/// The largest manifest a bundle may carry.
pub const MAX_MANIFEST: u64 = 1 << 20;

/// A manifest and the component it describes, checked against each other.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// The manifest.
    pub manifest: Manifest,
    /// The component's bytes.
    pub component: Vec<u8>,
}

impl Bundle {
    /// Pair `manifest` with `component`, refusing them unless the manifest
    /// is valid and names exactly these bytes.
    pub fn new(manifest: Manifest, component: Vec<u8>) -> anyhow::Result<Bundle> {
        manifest.validate()?;
        let name = &manifest.name;
        let Some(expected) = &manifest.component else {
            anyhow::bail!("manifest of {name} names no component: package it first");
        };
        anyhow::ensure!(
            expected.size == component.len() as u64 && expected.sha256 == sha256_hex(&component),
            "component of {name} {} does not match its manifest (tampered, or another build)",
            manifest.version
        );
        Ok(Bundle {
            manifest,
            component,
        })
    }

    /// A detector's bundle of `name` at `version`, holding `component`,
    /// with a manifest that asks for nothing: for tests.
    #[cfg(test)]
    pub(crate) fn detector(name: &str, version: &str, component: Vec<u8>) -> Bundle {
        use crate::plugins::{CONTRACT, FailMode, Limits, World};
        let manifest = Manifest {
            name: name.into(),
            version: semver::Version::parse(version).unwrap_or_else(|e| panic!("{version}: {e}")),
            world: World::Detector,
            protocols: Vec::new(),
            contract: CONTRACT.into(),
            fail_mode: FailMode::Closed,
            capabilities: Vec::new(),
            limits: Limits::default(),
            component: Some(ComponentRef {
                file: COMPONENT.into(),
                size: component.len() as u64,
                sha256: sha256_hex(&component),
            }),
            sbom: Vec::new(),
        };
        Bundle::new(manifest, component).unwrap_or_else(|e| panic!("{name} {version}: {e:#}"))
    }

    /// Read the bundle in `dir`.
    pub fn read(dir: &Path) -> anyhow::Result<Bundle> {
        let manifest = read_capped(&dir.join(MANIFEST), MAX_MANIFEST)?;
        let manifest =
            Manifest::from_json(&manifest).with_context(|| format!("bundle {}", dir.display()))?;
        // Checked before the component is read: it names the component's
        // file, which must be this bundle's.
        manifest
            .validate()
            .with_context(|| format!("bundle {}", dir.display()))?;
        let component = read_capped(&dir.join(COMPONENT), MAX_COMPONENT)?;
        Bundle::new(manifest, component).with_context(|| format!("bundle {}", dir.display()))
    }

    /// Write the bundle into `dir`, creating it.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let manifest = serde_json::to_vec_pretty(&self.manifest)?;
        for (file, bytes) in [(COMPONENT, &self.component), (MANIFEST, &manifest)] {
            let path = dir.join(file);
            crate::store::write_atomic(&path, bytes, 0o644)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }

    /// `NAME VERSION`, for messages.
    pub fn id(&self) -> String {
        format!("{} {}", self.manifest.name, self.manifest.version)
    }
}

/// Package a built component: read the publisher's `palisade-plugin.toml`,
/// add the component's hashes and the SBOM from `Cargo.lock` (when given),
/// and return the bundle.
pub fn package(
    manifest_source: &Path,
    component: &Path,
    lock: Option<&Path>,
) -> anyhow::Result<Bundle> {
    let text = std::fs::read_to_string(manifest_source)
        .with_context(|| format!("reading {}", manifest_source.display()))?;
    let mut manifest: Manifest =
        toml::from_str(&text).with_context(|| format!("{}", manifest_source.display()))?;
    anyhow::ensure!(
        manifest.component.is_none() && manifest.sbom.is_empty(),
        "{}: `component` and `sbom` are written by packaging, not by hand",
        manifest_source.display()
    );
    let bytes = read_capped(component, MAX_COMPONENT)?;
    anyhow::ensure!(
        bytes.starts_with(b"\0asm"),
        "{} is not WebAssembly (build it with --target wasm32-wasip2)",
        component.display()
    );
    manifest.component = Some(ComponentRef {
        file: COMPONENT.into(),
        size: bytes.len() as u64,
        sha256: sha256_hex(&bytes),
    });
    if let Some(lock) = lock {
        manifest.sbom = sbom(lock)?;
    }
    Bundle::new(manifest, bytes)
}

/// The crates `Cargo.lock` names.
fn sbom(lock: &Path) -> anyhow::Result<Vec<SbomEntry>> {
    #[derive(Deserialize)]
    struct Locked {
        #[serde(default)]
        package: Vec<LockedPackage>,
    }
    #[derive(Deserialize)]
    struct LockedPackage {
        name: String,
        version: String,
        source: Option<String>,
    }
    let text =
        std::fs::read_to_string(lock).with_context(|| format!("reading {}", lock.display()))?;
    let locked: Locked = toml::from_str(&text).with_context(|| format!("{}", lock.display()))?;
    Ok(locked
        .package
        .into_iter()
        .map(|p| SbomEntry {
            name: p.name,
            version: p.version,
            source: p.source,
        })
        .collect())
}

/// SHA-256 of `bytes`, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    crate::identity::hex(digest(&SHA256, bytes).as_ref())
}

/// Read at most `cap` bytes of `path`; a longer file is an error, not a
/// truncation.
pub fn read_capped(path: &Path, cap: u64) -> anyhow::Result<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(cap + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading {}", path.display()))?;
    anyhow::ensure!(
        bytes.len() as u64 <= cap,
        "{} is larger than {cap} bytes",
        path.display()
    );
    Ok(bytes)
}
