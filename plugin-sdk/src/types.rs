//! The contract's types, with constructors and accessors that make plugin
//! code read like the domain rather than like the bindings.

use crate::wit::parser_world::exports::palisade::plugin::parser;
use crate::wit::types;

/// One complete frame a parser found.
pub use parser::Frame;
/// Why a parser cannot follow its input.
pub use parser::Malformed;
/// What a parser returns from one call.
pub use parser::Parsed;
/// An action a responder asks the host to take.
pub use types::Action;
/// One named attribute of an event.
pub use types::Attribute;
/// The device on a session, as proven by its certificate.
pub use types::Device;
/// Which way a chunk of bytes travels.
pub use types::Direction;
/// A protocol-independent description of one frame.
pub use types::Event;
/// A detector's judgement of one event.
pub use types::Finding;
/// One session: a device on a route.
pub use types::Session;
/// How serious a finding is.
pub use types::Severity;
/// The value of an event attribute.
pub use types::Value;

impl Event {
    /// An event of `kind` (for example `mqtt.publish`) in `protocol`, with no
    /// attributes yet.
    pub fn new(protocol: &str, kind: &str) -> Self {
        Event {
            protocol: protocol.to_owned(),
            kind: kind.to_owned(),
            attributes: Vec::new(),
        }
    }

    /// This event with one more attribute.
    #[must_use]
    pub fn with(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.attributes.push(Attribute {
            name: name.to_owned(),
            value: value.into(),
        });
        self
    }

    /// The value of the first attribute called `name`.
    pub fn attribute(&self, name: &str) -> Option<&Value> {
        self.attributes
            .iter()
            .find(|a| a.name == name)
            .map(|a| &a.value)
    }

    /// The attribute `name` if it is text.
    pub fn text(&self, name: &str) -> Option<&str> {
        match self.attribute(name) {
            Some(Value::Text(t)) => Some(t),
            _ => None,
        }
    }

    /// The attribute `name` if it is an integer.
    pub fn int(&self, name: &str) -> Option<i64> {
        match self.attribute(name) {
            Some(Value::Int(i)) => Some(*i),
            _ => None,
        }
    }

    /// The attribute `name` if it is a flag.
    pub fn flag(&self, name: &str) -> Option<bool> {
        match self.attribute(name) {
            Some(Value::Flag(f)) => Some(*f),
            _ => None,
        }
    }
}

impl From<&str> for Value {
    fn from(text: &str) -> Self {
        Value::Text(text.to_owned())
    }
}

impl From<String> for Value {
    fn from(text: String) -> Self {
        Value::Text(text)
    }
}

impl From<bool> for Value {
    fn from(flag: bool) -> Self {
        Value::Flag(flag)
    }
}

impl From<Vec<u8>> for Value {
    fn from(bytes: Vec<u8>) -> Self {
        Value::Bytes(bytes)
    }
}

macro_rules! int_values {
    ($($t:ty),*) => {$(
        impl From<$t> for Value {
            fn from(i: $t) -> Self {
                Value::Int(i64::from(i))
            }
        }
    )*};
}
int_values!(i8, i16, i32, i64, u8, u16, u32);

impl Finding {
    /// A finding on the event at `event` in the batch. `score` is clamped to
    /// 0.0..=1.0.
    pub fn new(event: usize, severity: Severity, score: f32, reason: impl Into<String>) -> Self {
        Finding {
            event: u32::try_from(event).unwrap_or(u32::MAX),
            severity,
            score: if score.is_nan() {
                0.0
            } else {
                score.clamp(0.0, 1.0)
            },
            reason: reason.into(),
        }
    }
}

impl Parsed {
    /// No frames yet, with the session state `state`.
    pub fn new(state: Vec<u8>) -> Self {
        Parsed {
            frames: Vec::new(),
            state,
            needed: None,
            malformed: None,
        }
    }

    /// Record a complete frame of `len` bytes described by `event`.
    pub fn push(&mut self, len: usize, event: Event) {
        self.frames.push(Frame {
            len: u32::try_from(len).unwrap_or(u32::MAX),
            event,
        });
    }

    /// The number of input bytes the frames cover.
    pub fn consumed(&self) -> usize {
        self.frames.iter().map(|f| f.len as usize).sum()
    }

    /// Record that the next frame needs `needed` more bytes.
    #[must_use]
    pub fn needing(mut self, needed: usize) -> Self {
        self.needed = u32::try_from(needed).ok();
        self
    }

    /// Record that the input is malformed at `offset`, for `reason`.
    #[must_use]
    pub fn malformed(mut self, offset: usize, reason: impl Into<String>) -> Self {
        self.malformed = Some(Malformed {
            offset: u32::try_from(offset).unwrap_or(u32::MAX),
            reason: reason.into(),
        });
        self
    }
}

impl Session {
    /// A session for tests and tools: `device` of `class` in `zone`, on
    /// `route`.
    pub fn new(id: u64, device: &str, class: &str, zone: &str, route: &str) -> Self {
        Session {
            id,
            device: Device {
                id: device.to_owned(),
                class: class.to_owned(),
                zone: zone.to_owned(),
            },
            route: route.to_owned(),
        }
    }
}
