//! The event vocabulary as the policy sees it: for each event kind, the
//! attributes a policy may test and their types. The Cedar schema is
//! generated from this table, so a policy that names an attribute a kind
//! does not have, or compares it with the wrong type, is refused when it is
//! checked, not silently never matched.

/// The type of an attribute in a policy's `context`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    /// Text, a Cedar `String`.
    Text,
    /// An integer, a Cedar `Long`.
    Int,
    /// A flag, a Cedar `Bool`.
    Flag,
    /// Bytes, given to Cedar as lowercase hex in a `String`.
    Bytes,
    /// Text that may occur several times in one event (MQTT's subscription
    /// filters), a Cedar `Set<String>`.
    TextSet,
}

/// One attribute.
pub type Attribute = (&'static str, Type);

use Type::{Bytes, Flag, Int, Text, TextSet};

/// Attributes the host adds to every event's context: which way the frame
/// travels (`to-upstream` or `to-device`).
pub const HOST_ATTRIBUTES: &[Attribute] = &[("direction", Text)];

/// One event kind: the attributes it always has, and those it may have. A
/// policy tests the second with `context has ...` first; the validator
/// says so when it forgets.
#[derive(Debug, Clone, Copy)]
pub struct Kind {
    /// The kind, for example `mqtt.publish`.
    pub name: &'static str,
    /// Attributes every event of the kind has.
    pub always: &'static [Attribute],
    /// Attributes it may have.
    pub optional: &'static [Attribute],
    /// Attributes every kind of its protocol may have (MQTT 5's
    /// properties).
    pub shared: &'static [Attribute],
}

const fn kind(
    name: &'static str,
    always: &'static [Attribute],
    optional: &'static [Attribute],
) -> Kind {
    Kind {
        name,
        always,
        optional,
        shared: &[],
    }
}

const fn mqtt(
    name: &'static str,
    always: &'static [Attribute],
    optional: &'static [Attribute],
) -> Kind {
    Kind {
        shared: MQTT5_PROPERTIES,
        ..kind(name, always, optional)
    }
}

/// The MQTT 5 properties, as the packet that carries one describes it.
/// `user-property` is `name=value`, once per property; of the
/// authentication data only its presence.
const MQTT5_PROPERTIES: &[Attribute] = &[
    ("payload-format", Int),
    ("message-expiry", Int),
    ("content-type", Text),
    ("response-topic", Text),
    ("correlation-data", Bytes),
    ("subscription-id", Int),
    ("session-expiry", Int),
    ("assigned-client-id", Text),
    ("server-keep-alive", Int),
    ("authentication-method", Text),
    ("has-authentication-data", Flag),
    ("request-problem-info", Int),
    ("will-delay", Int),
    ("request-response-info", Int),
    ("response-info", Text),
    ("server-reference", Text),
    ("reason-string", Text),
    ("receive-maximum", Int),
    ("topic-alias-maximum", Int),
    // A PUBLISH's Topic Alias; its `topic` is the topic the alias stands
    // for. Never above the Topic Alias Maximum the receiver allowed: a
    // PUBLISH with one higher is malformed.
    ("topic-alias", Int),
    ("maximum-qos", Int),
    ("retain-available", Int),
    ("user-property", TextSet),
    ("maximum-packet-size", Int),
    ("wildcard-subscription-available", Int),
    ("subscription-id-available", Int),
    ("shared-subscription-available", Int),
];

const MQTT_OPTIONAL: &[Attribute] = &[
    ("protocol-version", Int),
    ("packet-id", Int),
    ("reason-code", Int),
];

const MQTT_CONNECT: &[Attribute] = &[
    ("client-id", Text),
    ("has-username", Flag),
    ("has-password", Flag),
    ("keep-alive", Int),
    ("clean-start", Flag),
    ("protocol-version", Int),
];

const MQTT_CONNECT_OPTIONAL: &[Attribute] = &[
    ("username", Text),
    ("will-topic", Text),
    ("will-qos", Int),
    ("will-retain", Flag),
    ("reason-code", Int),
];

const MQTT_PUBLISH: &[Attribute] = &[
    // The topic the receiver publishes to. A PUBLISH that names it by an
    // MQTT 5 topic alias alone has the topic the alias was bound to in its
    // direction (and the alias in `topic-alias`), never an empty topic.
    ("topic", Text),
    // The number of `/`-separated levels of the topic, added by the host,
    // so that a policy can say what MQTT's `site/+/telemetry` says:
    // `context.topic like "site/*/telemetry" && context["topic-levels"] == 3`.
    ("topic-levels", Int),
    ("qos", Int),
    ("retain", Flag),
    ("dup", Flag),
    ("payload-size", Int),
];

const MQTT_PUBLISH_OPTIONAL: &[Attribute] = &[
    ("protocol-version", Int),
    ("packet-id", Int),
    ("payload", Bytes),
    // Set on a PUBLISH that binds a topic alias: the receiver keeps the
    // binding for the session, so the appliance cannot drop the frame
    // alone (its reading of later PUBLISHes would differ from the
    // receiver's); dropping it closes the session.
    (CHANGES_SESSION, Flag),
];

/// The flag of an event whose frame changes what the receiver keeps for
/// the session beyond the frame (an MQTT 5 topic alias bound): dropping
/// such a frame alone would put the parser's reading of what follows out
/// of step with the receiver's, so the host closes the session instead.
pub const CHANGES_SESSION: &str = "changes-session";

/// `filter` holds each topic filter as the broker serves it: a shared
/// subscription's (`$share/{ShareName}/{filter}`, MQTT 5 §4.8.2) is its
/// `{filter}`, so that a policy on `site/secret/#` also judges
/// `$share/x/site/secret/#`, and so are EMQX's `$queue/{filter}` and
/// `$exclusive/{filter}`. `subscription` holds each as the device sent
/// it, for a policy that cares which filter is shared in which group, or
/// whether one is also taken whole: sets of filters and of groups cannot
/// tell `[$share/a/x, y]` from `[x, $share/a/y]`.
const MQTT_SUBSCRIBE: &[Attribute] = &[
    ("packet-id", Int),
    ("filter", TextSet),
    ("subscription", TextSet),
];

/// The ShareName of each shared subscription among the filters, once per
/// shared filter; absent when none is shared.
const SHARE_GROUP: Attribute = ("share-group", TextSet);

/// A subscription's options, once for all its filters: of each, the value
/// that asks the most of the broker among the filters' (the policy sees one
/// value, and the first filter's would hide the others'). `subscribe-qos`
/// is the highest QoS asked for, `retain-handling` the lowest (0: retained
/// messages at every subscribe), `no-local` set only if every filter has
/// it, `retain-as-published` if any has. The last three are MQTT 5's.
const MQTT_SUBSCRIBE_OPTIONAL: &[Attribute] = &[
    ("protocol-version", Int),
    ("reason-code", Int),
    ("subscribe-qos", Int),
    ("no-local", Flag),
    ("retain-as-published", Flag),
    ("retain-handling", Int),
    SHARE_GROUP,
];

/// An UNSUBSCRIBE's filters name shared subscriptions as a SUBSCRIBE's do.
const MQTT_UNSUBSCRIBE_OPTIONAL: &[Attribute] = &[
    ("protocol-version", Int),
    ("packet-id", Int),
    ("reason-code", Int),
    SHARE_GROUP,
];

/// What a CoAP message may carry. `type` (`con`, `non`, `ack` or `rst`)
/// and `message-id` are in the UDP header only (RFC 7252): a message
/// over TCP (RFC 8323) has neither.
const COAP_OPTIONAL: &[Attribute] = &[
    ("type", Text),
    ("message-id", Int),
    ("query", Text),
    ("content-format", Int),
    ("accept", Int),
    ("observe", Int),
    ("block1", Int),
    ("block2", Int),
    // A request's Uri-Host and Uri-Port options: the host and port the
    // client named, which a server with several names or a proxy heeds.
    ("uri-host", Text),
    ("uri-port", Int),
    // A request for a proxy, when the parser's `proxy-requests` setting
    // allows one (otherwise it is malformed): the target it is forwarded
    // to. A request with `proxy-uri` has no other target (its `path` is
    // `/`); one with `proxy-scheme` has `uri-host`, `uri-port`, `path`.
    ("proxy-uri", Text),
    ("proxy-scheme", Text),
    // An OSCORE option (RFC 8613): the real method, path and options are
    // encrypted in the payload; `method` and `path` are the outer ones.
    ("oscore", Flag),
];

const COAP_REQUEST: &[Attribute] = &[
    ("method", Text),
    ("path", Text),
    ("token", Bytes),
    ("payload-size", Int),
];

const COAP_RESPONSE: &[Attribute] = &[("code", Text), ("token", Bytes), ("payload-size", Int)];

const COAP_SIGNAL: &[Attribute] = &[("code", Text)];

const MODBUS: &[Attribute] = &[("transaction", Int), ("unit", Int), ("function", Int)];

const MODBUS_ACCESS: &[Attribute] = &[
    ("transaction", Int),
    ("unit", Int),
    ("function", Int),
    ("access", Text),
    ("register-type", Text),
    ("address", Int),
    ("count", Int),
];

const MODBUS_OPTIONAL: &[Attribute] = &[
    ("access", Text),
    ("register-type", Text),
    ("address", Int),
    ("count", Int),
    ("write-address", Int),
    ("write-count", Int),
    ("exception-code", Int),
    ("user-defined", Flag),
    // A read response's data; the value a single write's response echoes.
    ("value", Int),
    ("values", Bytes),
    ("value-min", Int),
    ("value-max", Int),
    // Diagnostics (function 8).
    ("sub-function", Int),
    // Read device identification (function 43/14).
    ("mei-type", Int),
    ("read-device-id-code", Int),
    ("object-id", Int),
    ("vendor-name", Text),
    ("product-code", Text),
    ("revision", Text),
    // Set on a response or exception whose request the parser does not
    // know (its transaction id reused while in flight, the request
    // forgotten or never seen, or of another function): it names no
    // registers, whatever its request asked for.
    ("unmatched-request", Flag),
];

const MODBUS_ACCESS_OPTIONAL: &[Attribute] = &[
    ("write-address", Int),
    ("write-count", Int),
    ("user-defined", Flag),
    // What a write writes: a single coil (0 or 1) or register's `value`;
    // the data of a multiple write as `values`, and for registers their
    // lowest and highest, which a policy can bound. A mask write has no
    // one value: its `value-min` and `value-max` are the least and most
    // the register can hold after it, whatever it held before.
    ("value", Int),
    ("values", Bytes),
    ("value-min", Int),
    ("value-max", Int),
    // A mask write (function 22): the register becomes
    // (current & and-mask) | (or-mask & !and-mask).
    ("and-mask", Int),
    ("or-mask", Int),
];

/// Every protocol, with its event kinds.
pub const PROTOCOLS: &[(&str, &[Kind])] = &[
    (
        "mqtt",
        &[
            mqtt("mqtt.connect", MQTT_CONNECT, MQTT_CONNECT_OPTIONAL),
            mqtt(
                "mqtt.connack",
                &[],
                &[("session-present", Flag), ("reason-code", Int)],
            ),
            mqtt("mqtt.publish", MQTT_PUBLISH, MQTT_PUBLISH_OPTIONAL),
            mqtt("mqtt.puback", &[], MQTT_OPTIONAL),
            mqtt("mqtt.pubrec", &[], MQTT_OPTIONAL),
            mqtt("mqtt.pubrel", &[], MQTT_OPTIONAL),
            mqtt("mqtt.pubcomp", &[], MQTT_OPTIONAL),
            mqtt("mqtt.subscribe", MQTT_SUBSCRIBE, MQTT_SUBSCRIBE_OPTIONAL),
            mqtt("mqtt.suback", &[], MQTT_OPTIONAL),
            mqtt(
                "mqtt.unsubscribe",
                MQTT_SUBSCRIBE,
                MQTT_UNSUBSCRIBE_OPTIONAL,
            ),
            mqtt("mqtt.unsuback", &[], MQTT_OPTIONAL),
            mqtt("mqtt.pingreq", &[], MQTT_OPTIONAL),
            mqtt("mqtt.pingresp", &[], MQTT_OPTIONAL),
            mqtt("mqtt.disconnect", &[], MQTT_OPTIONAL),
            mqtt("mqtt.auth", &[], MQTT_OPTIONAL),
        ],
    ),
    (
        "coap",
        &[
            kind("coap.request", COAP_REQUEST, COAP_OPTIONAL),
            kind("coap.response", COAP_RESPONSE, COAP_OPTIONAL),
            kind("coap.signal", COAP_SIGNAL, COAP_OPTIONAL),
            kind("coap.empty", &[], COAP_OPTIONAL),
        ],
    ),
    (
        "modbus",
        &[
            kind("modbus.read", MODBUS_ACCESS, MODBUS_ACCESS_OPTIONAL),
            kind("modbus.write", MODBUS_ACCESS, MODBUS_ACCESS_OPTIONAL),
            kind("modbus.read-write", MODBUS_ACCESS, MODBUS_ACCESS_OPTIONAL),
            kind("modbus.diagnostics", MODBUS, MODBUS_OPTIONAL),
            kind("modbus.device-identification", MODBUS, MODBUS_OPTIONAL),
            kind("modbus.other", MODBUS, MODBUS_OPTIONAL),
            kind("modbus.response", MODBUS, MODBUS_OPTIONAL),
            kind("modbus.exception", MODBUS, MODBUS_OPTIONAL),
        ],
    ),
];

/// Event kind `name`, or `None` for a kind the vocabulary does not know.
pub fn find(name: &str) -> Option<&'static Kind> {
    let protocol = name.split('.').next()?;
    let (_, kinds) = PROTOCOLS.iter().find(|(p, _)| *p == protocol)?;
    kinds.iter().find(|k| k.name == name)
}

impl Kind {
    /// Every attribute of the kind, the host's included, each once, with
    /// whether it is always there.
    pub fn attributes(&self) -> impl Iterator<Item = (Attribute, bool)> + '_ {
        let always = (self.always.iter().chain(HOST_ATTRIBUTES)).map(|a| (*a, true));
        let optional = (self.optional.iter().chain(self.shared))
            .filter(|(name, _)| !self.always.iter().any(|(n, _)| n == name))
            .map(|a| (*a, false));
        always.chain(optional)
    }
}

/// The vocabulary as Markdown: `wit/VOCABULARY.md`, beside the contract,
/// for plugin and policy authors. A test keeps the file equal to this.
pub fn markdown() -> String {
    use std::fmt::Write as _;
    let mut out = String::from(
        "# The event vocabulary\n\n\
         Generated from `host/src/policy/vocabulary.rs` (a test keeps the two \
         equal). Parsers emit these kinds with these attributes; detectors \
         read them; the policy's schema is made from them, so a policy that \
         names an attribute a kind does not have is refused.\n\n\
         Types: text, int (64-bit), flag, bytes, text-set (an attribute that \
         may repeat, a `Set<String>` to the policy). Every event also has \
         `direction` (`to-upstream` or `to-device`), added by the host; \
         `mqtt.publish` also has `topic-levels`. An `mqtt.publish` that \
         names its topic by an MQTT 5 topic alias has in `topic` the topic \
         the alias stands for; one that binds an alias has \
         `changes-session`, and dropping it closes the session, since the \
         broker would keep the binding the appliance's reading lost. Its \
         `topic-alias`, if any, is never above the Topic Alias Maximum its receiver \
         allowed (a PUBLISH that uses one is malformed). An `mqtt.subscribe` \
         has every filter in `filter`, and each subscription option once, \
         the most any of its filters asks of the broker: `subscribe-qos` the \
         highest QoS, `retain-handling` the lowest (0 has retained messages \
         sent at every subscribe), `no-local` only if every filter has it, \
         `retain-as-published` if any has. The `filter` of an \
         `mqtt.subscribe` or `mqtt.unsubscribe` is each topic filter as the \
         broker serves it: a shared subscription's, \
         `$share/{ShareName}/{filter}`, is its `{filter}`, and its ShareName \
         is in `share-group` (EMQX's `$queue/{filter}` is read as \
         `$share/$queue/{filter}`, and its `$exclusive/{filter}` as \
         `{filter}`); `subscription` has each filter as the device sent it, \
         which pairs a shared filter with its group; a malformed shared filter (no ShareName, one \
         with `+` or `#`, no filter after it), No Local on a shared \
         subscription, and a filter with `#` other than as its last level \
         or `+` beside other characters are malformed. A CoAP message has \
         `type` \
         (`con`, `non`, `ack` or `rst`) and `message-id` when it came over \
         UDP (RFC 7252), never over TCP (RFC 8323). A CoAP request's `path` \
         and `query` are its Uri-Path and Uri-Query options joined with `/` \
         and `&`, each option's `%`, `/` and `?` (path) or `%` and `&` \
         (query) percent-encoded, so one string is one list of options; one \
         with a `.` or `..` segment is malformed, and so is any CoAP message \
         with a second copy of an option that may not repeat. A CoAP request for a proxy (Proxy-Uri, Proxy-Scheme) is \
         malformed unless the parser's `proxy-requests` setting allows it, \
         and then has `proxy-uri` (the whole target: its `path` is `/`) or \
         `proxy-scheme`. A CoAP message with `oscore` (RFC 8613) carries its \
         real method, path and options encrypted: its `method` and `path` \
         are the outer ones (`POST` or `FETCH`, `/`), so a policy that has \
         not decided to let end-to-end protected requests through unjudged \
         forbids `context has oscore`. A Modbus request whose address range \
         runs past 65535 is malformed. A Modbus write's \
         `value-min` and `value-max` bound the register values it leaves; \
         for a mask write (function 22), whatever the register held \
         before. A Modbus response names the registers its request asked \
         for; one whose request is not known (its transaction id reused \
         while in flight, the request forgotten, as all but the latest 32 \
         outstanding are, or never seen) names none and has \
         `unmatched-request`, and so does such an exception.\n",
    );
    let name = |ty: Type| match ty {
        Type::Text => "text",
        Type::Int => "int",
        Type::Flag => "flag",
        Type::Bytes => "bytes",
        Type::TextSet => "text-set",
    };
    for (protocol, kinds) in PROTOCOLS {
        let _ = write!(
            out,
            "\n## {protocol}\n\n| kind | always | may have |\n| --- | --- | --- |\n"
        );
        for kind in *kinds {
            let list = |attrs: &mut dyn Iterator<Item = &Attribute>| {
                let items: Vec<String> =
                    attrs.map(|(n, t)| format!("`{n}` {}", name(*t))).collect();
                items.join(", ")
            };
            let optional = list(
                &mut kind
                    .optional
                    .iter()
                    .filter(|(n, _)| !kind.always.iter().any(|(a, _)| a == n)),
            );
            let _ = writeln!(
                out,
                "| `{}` | {} | {} |",
                kind.name,
                list(&mut kind.always.iter()),
                optional
            );
        }
        if let Some(shared) = kinds.first().map(|k| k.shared).filter(|s| !s.is_empty()) {
            let items: Vec<String> = (shared.iter())
                .map(|(n, t)| format!("`{n}` {}", name(*t)))
                .collect();
            let _ = writeln!(
                out,
                "\nEvery {protocol} kind may also have the MQTT 5 properties its packet carries: {}.",
                items.join(", ")
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    #[test]
    fn the_documented_vocabulary_is_the_one_in_force() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../wit/VOCABULARY.md");
        let generated = super::markdown();
        if std::env::var_os("PALISADE_WRITE_VOCABULARY").is_some() {
            std::fs::write(path, &generated).unwrap();
        }
        let written = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            written == generated,
            "wit/VOCABULARY.md is out of date: run PALISADE_WRITE_VOCABULARY=1 cargo test -p palisade --lib vocabulary"
        );
    }
}
