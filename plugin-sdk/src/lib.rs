//! Write Palisade plugins: protocol parsers, detectors and responders that the
//! appliance runs as sandboxed WebAssembly components.
//!
//! A plugin is a library crate with `crate-type = ["cdylib", "rlib"]`, built
//! with `cargo build --target wasm32-wasip2`. It implements one of the traits
//! [`Parser`], [`Detector`] or [`Responder`] and names its type in
//! [`export!`]. The same code runs natively in ordinary `cargo test`, where
//! the [`host`] functions are served by the in-memory [`testing`] host.
//!
//! A detector that flags publishes to a command topic:
//!
//! ```
//! use palisade_plugin_sdk::{Batch, Detector, Finding, Session, Severity};
//!
//! struct CommandTopics;
//!
//! impl Detector for CommandTopics {
//!     fn detect(_session: &Session, events: &Batch) -> Vec<Finding> {
//!         events
//!             .iter()
//!             .filter(|e| e.kind() == "mqtt.publish")
//!             .filter(|e| e.text("topic").is_some_and(|t| t.ends_with("/cmd")))
//!             .map(|e| Finding::new(e.index(), Severity::High, 0.9, "publish to a command topic"))
//!             .collect()
//!     }
//! }
//!
//! palisade_plugin_sdk::export!(detector: CommandTopics);
//! ```
//!
//! The contract these types come from is `wit/plugin.wit`
//! (`palisade:plugin@0.1.0`).
//!
//! # Limits
//!
//! The appliance bounds every call (its deadline, memory, the bytes a
//! call hands back: see "Limits on every plugin call" in the README), and
//! what a plugin returns:
//!
//! - a batch names at most [`MAX_TABLE_ENTRIES`] kinds and as many
//!   attribute names, none holding a control, line-separator or
//!   bidirectional character ([`Columns::check`]);
//! - a detector raises at most [`MAX_FINDINGS_PER_EVENT`] findings about
//!   any one event in one call;
//! - a responder asks for at most [`MAX_ACTIONS_PER_FINDING`] actions per
//!   finding it was given, and [`SPARE_ACTIONS`] more;
//! - a finding's reason and an alert's message are kept up to
//!   [`MAX_REASON_BYTES`], and cut past it; a parser's malformed reason is
//!   escaped and cut to a line of the appliance's log.
//!
//! Breaking a limit that is not cut is a breach of the contract: the
//! appliance discards what the call returned, and the plugin gets a
//! strike; after a few it is disabled.
#![deny(missing_docs)]

extern crate self as palisade_plugin_sdk;

mod batch;
pub mod host;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;
mod types;
#[doc(hidden)]
pub mod wit;

pub use batch::{
    Batch, Columns, EventRef, EventWriter, Field, KindId, MAX_TABLE_ENTRIES, Name, Value,
    ValueType, same,
};
#[doc(hidden)]
pub use types::wire as __wire;
pub use types::{
    Action, Device, Direction, Finding, MAX_ACTIONS_PER_FINDING, MAX_FINDINGS_PER_EVENT,
    MAX_REASON_BYTES, Malformed, Parsed, SPARE_ACTIONS, Session, Severity,
};

/// A protocol parser: cuts one direction of a session's byte stream into
/// frames and describes each with one event in a [`Batch`]; for a datagram
/// transport, describes each datagram as one frame.
///
/// The parser keeps nothing between calls. What it must remember about a
/// session (for example the protocol version agreed at connect) goes into
/// [`Parsed::state`], and the host hands it back with the next bytes. That is
/// what lets the appliance swap a parser for a new version in the middle of a
/// session without losing a frame.
pub trait Parser {
    /// The protocol this parser understands, for example `"mqtt"`.
    const PROTOCOL: &'static str;

    /// Parse the complete frames at the start of `input`.
    ///
    /// `state` is what the previous call on the session returned in
    /// [`Parsed::state`], in either direction (empty at the start of a
    /// session): one state per session, so that a response can be matched
    /// with its request. `input` is this direction's bytes and begins at a
    /// frame boundary; the bytes after the last complete frame are given
    /// again, with more, on the next call.
    fn parse(session: &Session, direction: Direction, state: &[u8], input: &[u8]) -> Parsed;
}

/// A parser that also reads a datagram transport (CoAP over UDP, say),
/// where a message is exactly one datagram. Export it with
/// `export!(datagram_parser: T)`; a parser exported with
/// `export!(parser: T)` reads streams only, and the appliance knows it
/// from the component.
///
/// ```
/// use palisade_plugin_sdk::{DatagramParser, Direction, Parsed, Parser, Session};
///
/// struct Beacon;
///
/// impl Parser for Beacon {
///     const PROTOCOL: &'static str = "beacon";
///
///     fn parse(_: &Session, _: Direction, state: &[u8], _: &[u8]) -> Parsed {
///         Parsed::new(state.to_vec()).malformed(0, "beacons come in datagrams only")
///     }
/// }
///
/// impl DatagramParser for Beacon {
///     fn parse_datagram(_: &Session, _: Direction, state: &[u8], datagram: &[u8]) -> Parsed {
///         let mut parsed = Parsed::new(state.to_vec());
///         match datagram.first() {
///             Some(&id) => {
///                 parsed.frame(datagram.len(), "beacon.seen").int("id", id);
///                 parsed
///             }
///             None => parsed.malformed(0, "empty datagram"),
///         }
///     }
/// }
///
/// palisade_plugin_sdk::export!(datagram_parser: Beacon);
/// ```
pub trait DatagramParser: Parser {
    /// Describe one whole `datagram`.
    ///
    /// `state` is as for [`Parser::parse`]. Return one frame covering the
    /// whole `datagram`, or no frame and [`Parsed::malformed`] at offset 0
    /// saying why the datagram is not a message; never
    /// [`Parsed::needing`]: a datagram does not continue. The appliance
    /// receives the event and the state, or the malformed report's
    /// reason (the state then stays as it was); more than one event is a
    /// breach of the contract. [`testing::parse_datagrams`] checks all
    /// this natively.
    fn parse_datagram(
        session: &Session,
        direction: Direction,
        state: &[u8],
        datagram: &[u8],
    ) -> Parsed;
}

/// A detector: judges batches of events and reports findings.
pub trait Detector {
    /// Judge `events`, all from `session` and in order. Return a [`Finding`]
    /// for each event worth reporting (by [`EventRef::index`]); normal
    /// events need none.
    ///
    /// At most [`MAX_FINDINGS_PER_EVENT`] findings about any one event: more
    /// is a breach of the contract, and the appliance discards the call's
    /// findings and gives the detector a strike. A reason longer than
    /// [`MAX_REASON_BYTES`] is cut.
    fn detect(session: &Session, events: &Batch) -> Vec<Finding>;
}

/// A responder: turns findings into the actions it asks the host to take.
pub trait Responder {
    /// Decide what to do about `findings`, raised on `events` of `session`.
    ///
    /// At most [`MAX_ACTIONS_PER_FINDING`] actions per finding, and
    /// [`SPARE_ACTIONS`] more: more is a breach of the contract, and the
    /// appliance carries out none of the call's actions and gives the
    /// responder a strike. An alert's message longer than
    /// [`MAX_REASON_BYTES`] is cut. The findings come from every detector;
    /// the bytes the call may hand back grow with them, so that a responder
    /// that answers each finding is not pushed past its output limit by a
    /// detector that raises many.
    fn respond(session: &Session, events: &Batch, findings: &[Finding]) -> Vec<Action>;
}

/// Export a type as the plugin's entry point.
///
/// Write `export!(parser: T)`, `export!(datagram_parser: T)`,
/// `export!(detector: T)` or `export!(responder: T)` once in the plugin
/// crate, where `T` implements [`Parser`], [`DatagramParser`],
/// [`Detector`] or [`Responder`].
#[macro_export]
macro_rules! export {
    (parser: $plugin:ty) => {
        // Exports exist only in the component; natively the plugin is a
        // library its tests call directly.
        #[cfg(target_arch = "wasm32")]
        #[allow(unsafe_code)]
        const _: () = {
            struct PalisadeGlue;
            impl $crate::wit::parser_world::exports::palisade::plugin::parser::Guest for PalisadeGlue {
                fn protocol() -> ::std::string::String {
                    <$plugin as $crate::Parser>::PROTOCOL.into()
                }
                fn parse(
                    session: $crate::Session,
                    direction: $crate::Direction,
                    state: ::std::vec::Vec<u8>,
                    input: ::std::vec::Vec<u8>,
                ) -> $crate::wit::parser_world::exports::palisade::plugin::parser::Parsed {
                    $crate::__wire::parsed(<$plugin as $crate::Parser>::parse(&session, direction, &state, &input))
                }
            }
            $crate::wit::parser_world::export_parser!(PalisadeGlue with_types_in $crate::wit::parser_world);
        };
    };
    (datagram_parser: $plugin:ty) => {
        $crate::export!(parser: $plugin);
        // Exports exist only in the component; natively the plugin is a
        // library its tests call directly.
        #[cfg(target_arch = "wasm32")]
        #[allow(unsafe_code)]
        const _: () = {
            struct PalisadeDatagramGlue;
            impl $crate::wit::datagram_world::exports::palisade::plugin::datagram_parser::Guest for PalisadeDatagramGlue {
                fn parse_datagram(
                    session: $crate::Session,
                    direction: $crate::Direction,
                    state: ::std::vec::Vec<u8>,
                    datagram: ::std::vec::Vec<u8>,
                ) -> ::std::result::Result<
                    $crate::wit::datagram_world::exports::palisade::plugin::datagram_parser::Message,
                    ::std::string::String,
                > {
                    $crate::__wire::message(<$plugin as $crate::DatagramParser>::parse_datagram(&session, direction, &state, &datagram))
                }
            }
            $crate::wit::datagram_world::export_datagrams!(PalisadeDatagramGlue with_types_in $crate::wit::datagram_world);
        };
    };
    (detector: $plugin:ty) => {
        // Exports exist only in the component; natively the plugin is a
        // library its tests call directly.
        #[cfg(target_arch = "wasm32")]
        #[allow(unsafe_code)]
        const _: () = {
            struct PalisadeGlue;
            impl $crate::wit::detector_world::exports::palisade::plugin::detector::Guest for PalisadeGlue {
                fn detect(
                    session: $crate::Session,
                    batch: $crate::wit::types::Batch,
                ) -> ::std::vec::Vec<$crate::Finding> {
                    let events = $crate::__wire::batch(batch);
                    <$plugin as $crate::Detector>::detect(&session, &events)
                }
            }
            $crate::wit::detector_world::export_detector!(PalisadeGlue with_types_in $crate::wit::detector_world);
        };
    };
    (responder: $plugin:ty) => {
        // Exports exist only in the component; natively the plugin is a
        // library its tests call directly.
        #[cfg(target_arch = "wasm32")]
        #[allow(unsafe_code)]
        const _: () = {
            struct PalisadeGlue;
            impl $crate::wit::responder_world::exports::palisade::plugin::responder::Guest for PalisadeGlue {
                fn respond(
                    session: $crate::Session,
                    batch: $crate::wit::types::Batch,
                    findings: ::std::vec::Vec<$crate::Finding>,
                ) -> ::std::vec::Vec<$crate::Action> {
                    let events = $crate::__wire::batch(batch);
                    <$plugin as $crate::Responder>::respond(&session, &events, &findings)
                }
            }
            $crate::wit::responder_world::export_responder!(PalisadeGlue with_types_in $crate::wit::responder_world);
        };
    };
}
