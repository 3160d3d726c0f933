//! Palisade, an inline zero-trust security gateway for IoT and OT device
//! traffic.
//!
//! The crate follows the path of a frame (see `DESIGN.md`): one module per
//! stage. `transport` accepts devices over TLS and QUIC, `identity` proves
//! who they are, `policy` decides which routes they may use and which
//! events they may send, `session` relays their bytes through the
//! `plugins`, `store` keeps the state, `audit` records findings and actions
//! and exports them to SIEMs, `admin` carries the operator's commands to a
//! running appliance, and `config` and `cli` tie it together.

pub mod admin;
pub mod audit;
pub mod cli;
pub mod client_tls;
pub mod config;
mod http;
pub mod identity;
pub mod plugins;
pub mod policy;
pub mod registry;
mod runtime;
pub mod session;
pub mod store;
pub mod transport;
