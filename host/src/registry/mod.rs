//! The signed plugin registry: bundles, their manifests, the TUF metadata
//! that secures them, and the appliance's library of installed versions.
//!
//! The registry is static files secured the TUF way (The Update
//! Framework). We verify and edit the metadata with awslabs' `tough`, the
//! maintained Rust TUF implementation (it also runs Bottlerocket's
//! updates), rather than a home-made scheme: root of trust held by the
//! appliance, signed and expiring metadata, versions that only grow (no
//! rollback, no freeze), root keys rotated with a threshold of the old
//! ones, and delegations that let a publisher's key sign only its own
//! plugin names are all TUF's, checked by tough.
//!
//! - [`manifest`]: what a plugin is and asks for, checked against its world.
//! - [`bundle`]: a manifest and its component, as files.
//! - [`publish`]: the registry owner's and the publishers' commands.
//! - [`library`]: the appliance fetching verified bundles and keeping the
//!   installed ones.
//! - [`fetch`]: reaching a registry in a directory or over HTTP(S).

pub mod bundle;
pub mod fetch;
pub mod keys;
pub mod library;
pub mod manifest;
pub mod publish;

pub use bundle::Bundle;
pub use library::{Fetched, Library, RegistryClient, Trusted, trust_root, trusted_root};
pub use manifest::{Capability, Manifest};

use tough::TargetName;
use tough::schema::{Target, Targets};

/// A target's entry as TUF's search finds it, and whose it is.
#[derive(Debug)]
pub(crate) struct Found<'a> {
    /// The role whose metadata holds the entry (`targets` for the owner's
    /// own).
    pub role: String,
    /// The entry: the length and hashes the file is verified against.
    pub entry: &'a Target,
}

/// The entry of `target` an appliance reads, and whose: the one TUF's
/// search from the top-level role `top` reaches, following delegations in
/// order, only where their paths match, and stopping at a terminating one
/// (`find_target` not permissive, as `read_target` searches).
/// `None` when the search reaches no entry. The owner's `accept` asks the
/// same question an install does, so it takes in only what an appliance
/// reads as the publisher's.
pub(crate) fn search<'a>(top: &'a Targets, target: &TargetName) -> Option<Found<'a>> {
    let entry = top.find_target(target, false).ok()?;
    let role = holder(top, "targets", target, entry)?;
    Some(Found { role, entry })
}

/// The name of the role, `role` (named `name`) or one it delegates to,
/// whose metadata holds `entry` as its target `target`. tough's search
/// returns the entry but not whose it is; the entry itself, not an equal
/// one, says whose. The tree is finite: tough loads each role once.
fn holder(role: &Targets, name: &str, target: &TargetName, entry: &Target) -> Option<String> {
    if (role.targets.get(target)).is_some_and(|own| std::ptr::eq(own, entry)) {
        return Some(name.to_owned());
    }
    let mut delegated = role.delegations.iter().flat_map(|d| &d.roles);
    delegated.find_map(|d| {
        let targets = d.targets.as_ref()?;
        holder(&targets.signed, &d.name, target, entry)
    })
}
