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
