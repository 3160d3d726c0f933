//! Sessions: one device on one route. The inspection pipeline that every
//! session runs its bytes through, the relay that connects it to the
//! device's and the upstream's sockets, and the registry of live sessions
//! that revocation and quarantine close.

mod live;
mod pipeline;
mod relay;

pub use live::{HangUp, LiveSessions, Membership};
pub use pipeline::{FrameSpan, Inspected, POLICY, Pipeline, PipelineError, Verdict};
pub use relay::{
    Enforcer, Forwarded, NoEnforcer, RelayError, RelaySettings, Side, first_bytes, relay,
};
