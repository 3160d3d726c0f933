//! The first-party plugins, built by this crate's build script for
//! wasm32-wasip2 and embedded in the binary, so an appliance runs them with
//! nothing else installed.

/// `(name, component bytes)` of every embedded plugin.
const EMBEDDED: &[(&str, &[u8])] = &[
    (
        "mqtt",
        include_bytes!(concat!(env!("PALISADE_PLUGIN_DIR"), "/mqtt.wasm")),
    ),
    (
        "modbus",
        include_bytes!(concat!(env!("PALISADE_PLUGIN_DIR"), "/modbus.wasm")),
    ),
    (
        "coap",
        include_bytes!(concat!(env!("PALISADE_PLUGIN_DIR"), "/coap.wasm")),
    ),
    (
        "new-topic",
        include_bytes!(concat!(env!("PALISADE_PLUGIN_DIR"), "/new_topic.wasm")),
    ),
    (
        "baseline",
        include_bytes!(concat!(env!("PALISADE_PLUGIN_DIR"), "/baseline.wasm")),
    ),
    (
        "hygiene",
        include_bytes!(concat!(env!("PALISADE_PLUGIN_DIR"), "/hygiene.wasm")),
    ),
    (
        "escalate",
        include_bytes!(concat!(env!("PALISADE_PLUGIN_DIR"), "/escalate.wasm")),
    ),
];

/// The component of the first-party plugin `name`.
pub fn component(name: &str) -> Option<&'static [u8]> {
    EMBEDDED
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, bytes)| *bytes)
}

/// The names of the first-party plugins.
pub fn names() -> impl Iterator<Item = &'static str> {
    EMBEDDED.iter().map(|(n, _)| *n)
}

/// Where the build put the components it built, the test-only ones included.
pub const BUILD_DIR: &str = env!("PALISADE_PLUGIN_DIR");
