//! The host's bindings to the plugin contract (`wit/plugin.wit`), generated
//! once here and imported everywhere else.
//!
//! One `bindgen!` per world; the detector and responder worlds reuse the
//! types and the `host` interface generated for the parser world.
#![allow(missing_docs, missing_debug_implementations)]

/// The parser world, and with it the shared `types` and `host` interfaces.
pub mod parser {
    wasmtime::component::bindgen!({
        world: "parser-plugin",
        path: "../wit",
        imports: { default: trappable },
        additional_derives: [PartialEq],
    });
}

/// The optional `datagram-parser` export of a parser plugin, alone: the
/// `parser` export it sits beside is bound by [`parser`], and a plugin
/// without it is a parser all the same.
pub mod datagram {
    wasmtime::component::bindgen!({
        inline: "
            package palisade:host-bindings;
            world datagrams {
                import palisade:plugin/host@0.1.0;
                export palisade:plugin/datagram-parser@0.1.0;
            }
        ",
        path: "../wit",
        imports: { default: trappable },
        with: {
            "palisade:plugin/types": super::parser::palisade::plugin::types,
            "palisade:plugin/host": super::parser::palisade::plugin::host,
        },
    });
}

/// The detector world.
pub mod detector {
    wasmtime::component::bindgen!({
        world: "detector-plugin",
        path: "../wit",
        imports: { default: trappable },
        with: {
            "palisade:plugin/types": super::parser::palisade::plugin::types,
            "palisade:plugin/host": super::parser::palisade::plugin::host,
        },
    });
}

/// The responder world.
pub mod responder {
    wasmtime::component::bindgen!({
        world: "responder-plugin",
        path: "../wit",
        imports: { default: trappable },
        with: {
            "palisade:plugin/types": super::parser::palisade::plugin::types,
            "palisade:plugin/host": super::parser::palisade::plugin::host,
        },
    });
}

pub use parser::exports::palisade::plugin::parser::{Malformed, Parsed};
pub use parser::palisade::plugin::host;
pub use parser::palisade::plugin::types::{
    Action, Batch, Device, Direction, Field, Finding, Session, Severity, ValueType,
};
