//! Palisade, an inline zero-trust security gateway for IoT and OT device
//! traffic.
//!
//! The crate follows the path of a frame (see `DESIGN.md`): one module per
//! stage. This far it holds the plugin runtime, the state store and the
//! command line.

pub mod audit;
pub mod cli;
pub mod plugins;
pub mod policy;
pub mod session;
pub mod store;
