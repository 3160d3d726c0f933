//! A bundle's manifest: what a plugin is, what it asks for, and what it was
//! built from. The publisher writes the first part in `palisade-plugin.toml`
//! beside the plugin's `Cargo.toml`; packaging adds the component's hashes
//! and the SBOM, and the registry signs the result.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::bundle::COMPONENT;
use crate::plugins::{CONTRACT, FailMode, Limits, World};

/// The manifest of one plugin version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Manifest {
    /// The name routes and operators know the plugin by.
    pub name: String,
    /// Its version, semantic: an appliance never installs an older one.
    pub version: semver::Version,
    /// The world it implements.
    pub world: World,
    /// The protocols it understands (a parser) or judges (a detector);
    /// empty for any.
    #[serde(default)]
    pub protocols: Vec<String>,
    /// The contract version it was built against.
    pub contract: String,
    /// What the host does with the traffic once the plugin is disabled.
    #[serde(default)]
    pub fail_mode: FailMode,
    /// What it may use beyond computing on its input.
    #[serde(default)]
    pub capabilities: Vec<Capability>,
    /// The bounds it asks for; unnamed ones take the host's defaults.
    #[serde(default)]
    pub limits: Limits,
    /// The component, by content. Filled in by packaging.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<ComponentRef>,
    /// The crates the component was built from. Filled in by packaging.
    #[serde(default)]
    pub sbom: Vec<SbomEntry>,
}

/// What a plugin may use, each granted only when its manifest asks and its
/// world allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Capability {
    /// Write log lines (`host::log`); without it they are dropped.
    Log,
    /// Keep state in its key-value store (`host::kv` writes, within the
    /// quota). Reading its settings needs no capability.
    Store,
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Capability::Log => "log",
            Capability::Store => "store",
        })
    }
}

impl Capability {
    /// Whether a plugin of `world` may have this capability. A parser may
    /// not keep state of its own: everything a session needs to continue
    /// is held by the host, which is what lets a parser be swapped at any
    /// frame boundary.
    pub fn allowed_for(self, world: World) -> bool {
        match self {
            Capability::Log => true,
            Capability::Store => world != World::Parser,
        }
    }
}

/// The component a manifest describes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ComponentRef {
    /// File name in the bundle.
    pub file: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256, hex.
    pub sha256: String,
}

/// One crate the component was built from, as `Cargo.lock` names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SbomEntry {
    /// Crate name.
    pub name: String,
    /// Crate version.
    pub version: String,
    /// Where it came from (a registry, a git repository); absent for the
    /// publisher's own path crates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// The most any manifest may ask for, whatever it says: an appliance runs
/// many plugins on a small box.
const CEILING: Limits = Limits {
    deadline_ms: 1_000,
    memory_bytes: 256 << 20,
    output_bytes: 64 << 20,
    state_bytes: 64 << 10,
    kv_quota_bytes: 256 << 20,
    kv_ops_per_call: 65_536,
    log_lines_per_call: 256,
    max_strikes: 1_000,
    fail_mode: FailMode::Closed,
};

/// Why a manifest is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("manifest of {name}: {reason}")]
pub struct ManifestError {
    /// The plugin's name as the manifest gives it.
    pub name: String,
    /// Why.
    pub reason: String,
}

impl Manifest {
    /// Parse the JSON form a bundle carries.
    pub fn from_json(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        serde_json::from_slice(bytes).map_err(|e| ManifestError {
            name: "(unreadable)".into(),
            reason: format!("not a manifest: {e}"),
        })
    }

    /// Check everything that can be checked without the component: the
    /// name, the component's file name, the contract, and that the
    /// capabilities and limits asked for are allowed to the world. Every
    /// way a bundle enters the appliance (fetched, read from disk,
    /// packaged) goes through this one check, so what is installed can
    /// always be read back at the next start.
    pub fn validate(&self) -> Result<(), ManifestError> {
        let refuse = |reason: String| ManifestError {
            name: self.name.clone(),
            reason,
        };
        if !valid_name(&self.name) {
            return Err(refuse(
                "a name is 1 to 64 lowercase letters, digits and dashes, starting with a letter"
                    .into(),
            ));
        }
        if let Some(c) = &self.component
            && c.file != COMPONENT
        {
            return Err(refuse(format!(
                "names its component {:?}; a bundle's component is {COMPONENT}",
                c.file
            )));
        }
        if self.contract != CONTRACT {
            return Err(refuse(format!(
                "built against contract {}, this appliance speaks {CONTRACT}",
                self.contract
            )));
        }
        for c in &self.capabilities {
            if !c.allowed_for(self.world) {
                return Err(refuse(format!(
                    "asks for capability {c}, which a {} plugin may not have",
                    self.world
                )));
            }
        }
        let l = &self.limits;
        let over = [
            ("deadline-ms", l.deadline_ms, CEILING.deadline_ms),
            (
                "memory-bytes",
                l.memory_bytes as u64,
                CEILING.memory_bytes as u64,
            ),
            (
                "output-bytes",
                l.output_bytes as u64,
                CEILING.output_bytes as u64,
            ),
            (
                "state-bytes",
                l.state_bytes as u64,
                CEILING.state_bytes as u64,
            ),
            ("kv-quota-bytes", l.kv_quota_bytes, CEILING.kv_quota_bytes),
            (
                "kv-ops-per-call",
                u64::from(l.kv_ops_per_call),
                u64::from(CEILING.kv_ops_per_call),
            ),
            (
                "log-lines-per-call",
                u64::from(l.log_lines_per_call),
                u64::from(CEILING.log_lines_per_call),
            ),
            (
                "max-strikes",
                u64::from(l.max_strikes),
                u64::from(CEILING.max_strikes),
            ),
        ];
        for (what, asked, most) in over {
            if asked > most {
                return Err(refuse(format!(
                    "asks for {what} = {asked}, more than the {most} any plugin may have"
                )));
            }
        }
        Ok(())
    }

    /// The limits the plugin runs with: what it asked for, with every
    /// capability it did not ask for taken away.
    pub fn granted_limits(&self) -> Limits {
        let mut limits = self.limits.clone();
        limits.fail_mode = self.fail_mode;
        if !self.capabilities.contains(&Capability::Store) {
            limits.kv_quota_bytes = 0;
        }
        if !self.capabilities.contains(&Capability::Log) {
            limits.log_lines_per_call = 0;
        }
        limits
    }
}

/// Plugin names are path segments in the registry and keys in the store.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 64
        && chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn manifest(world: World, capabilities: Vec<Capability>) -> Manifest {
        Manifest {
            name: "acme-thermostat".into(),
            version: semver::Version::new(1, 0, 0),
            world,
            protocols: vec!["mqtt".into()],
            contract: CONTRACT.into(),
            fail_mode: FailMode::Closed,
            capabilities,
            limits: Limits::default(),
            component: None,
            sbom: Vec::new(),
        }
    }

    #[test]
    fn a_parser_may_not_keep_state_of_its_own() {
        let parser = manifest(World::Parser, vec![Capability::Store]);
        let e = parser.validate().unwrap_err();
        assert!(e.reason.contains("capability store"), "{e}");
        manifest(World::Detector, vec![Capability::Store, Capability::Log])
            .validate()
            .unwrap();
    }

    #[test]
    fn capabilities_not_asked_for_are_not_granted() {
        let m = manifest(World::Detector, vec![Capability::Log]);
        assert_eq!(m.granted_limits().kv_quota_bytes, 0);
        assert!(m.granted_limits().log_lines_per_call > 0);
    }

    #[test]
    fn limits_past_the_ceiling_and_bad_names_are_refused() {
        let mut m = manifest(World::Detector, vec![]);
        m.limits.memory_bytes = 1 << 40;
        assert!(m.validate().unwrap_err().reason.contains("memory-bytes"));
        let mut m = manifest(World::Detector, vec![]);
        m.name = "../mqtt".into();
        assert!(m.validate().is_err());
        let mut m = manifest(World::Detector, vec![]);
        m.contract = "palisade:plugin@9.0.0".into();
        assert!(m.validate().unwrap_err().reason.contains("contract"));
    }

    #[test]
    fn a_component_file_other_than_the_bundles_is_refused() {
        let mut m = manifest(World::Detector, vec![]);
        m.component = Some(ComponentRef {
            file: "x.wasm".into(),
            size: 0,
            sha256: String::new(),
        });
        assert!(m.validate().unwrap_err().reason.contains("\"x.wasm\""));
        m.component = Some(ComponentRef {
            file: COMPONENT.into(),
            size: 0,
            sha256: String::new(),
        });
        m.validate().unwrap();
    }
}
