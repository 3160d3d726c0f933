//! The contract's types as plugin code uses them.
//!
//! On the wire, the events of a batch refer to their kinds and attribute
//! names by index into one name table (see `batch` in `wit/plugin.wit`).
//! Plugin code never sees the indices: an [`Event`] carries its [`Name`]s,
//! which are `&'static str` literals when a parser writes them and shared
//! strings when a detector reads them, so neither side allocates a name per
//! event. The conversions live in [`wire`].

use std::fmt;
use std::ops::Deref;
use std::rc::Rc;

use crate::wit::parser_world::exports::palisade::plugin::parser;
use crate::wit::types;

/// Why a parser cannot follow its input.
pub use parser::Malformed;
/// An action a responder asks the host to take.
pub use types::Action;
/// The device on a session, as proven by its certificate.
pub use types::Device;
/// Which way a chunk of bytes travels.
pub use types::Direction;
/// A detector's judgement of one event.
pub use types::Finding;
/// One session: a device on a route.
pub use types::Session;
/// How serious a finding is.
pub use types::Severity;
/// The value of an event attribute.
pub use types::Value;

/// An event kind or attribute name: a string literal, or a string shared by
/// every event of a batch.
#[derive(Clone)]
pub enum Name {
    /// A literal in the plugin's code.
    Static(&'static str),
    /// A name received from the host, shared by the events that use it.
    Shared(Rc<str>),
}

impl Deref for Name {
    type Target = str;

    fn deref(&self) -> &str {
        match self {
            Name::Static(s) => s,
            Name::Shared(s) => s,
        }
    }
}

impl From<&'static str> for Name {
    fn from(s: &'static str) -> Self {
        Name::Static(s)
    }
}

impl From<String> for Name {
    fn from(s: String) -> Self {
        Name::Shared(s.into())
    }
}

impl PartialEq for Name {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl PartialEq<str> for Name {
    fn eq(&self, other: &str) -> bool {
        &**self == other
    }
}

impl PartialEq<&str> for Name {
    fn eq(&self, other: &&str) -> bool {
        &**self == *other
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self)
    }
}

/// One named attribute of an event.
#[derive(Clone, Debug, PartialEq)]
pub struct Attribute {
    /// Attribute name, lowercase kebab-case, for example `packet-id`.
    pub name: Name,
    /// Attribute value.
    pub value: Value,
}

/// A protocol-independent description of one frame.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// What happened, `protocol.what`, for example `mqtt.publish`.
    pub kind: Name,
    /// The event's attributes, in order.
    pub attributes: Vec<Attribute>,
}

impl Event {
    /// An event of `kind` (for example `mqtt.publish`) with no attributes
    /// yet.
    pub fn new(kind: impl Into<Name>) -> Self {
        Event {
            kind: kind.into(),
            attributes: Vec::new(),
        }
    }

    /// This event with one more attribute.
    #[must_use]
    pub fn with(mut self, name: impl Into<Name>, value: impl Into<Value>) -> Self {
        if self.attributes.capacity() == 0 {
            // Events have a handful of attributes: one allocation, not a
            // doubling per push.
            self.attributes.reserve_exact(8);
        }
        self.attributes.push(Attribute {
            name: name.into(),
            value: value.into(),
        });
        self
    }

    /// The protocol: the kind up to its first dot.
    pub fn protocol(&self) -> &str {
        self.kind.split('.').next().unwrap_or_default()
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

/// One complete frame a parser found.
#[derive(Clone, Debug, PartialEq)]
pub struct Frame {
    /// Length of the frame in bytes.
    pub len: u32,
    /// What the frame means.
    pub event: Event,
}

/// What a parser returns from one call.
#[derive(Clone, Debug, PartialEq)]
pub struct Parsed {
    /// The complete frames at the start of the input, in order.
    pub frames: Vec<Frame>,
    /// The session state the host hands back on the next call.
    pub state: Vec<u8>,
    /// How many more bytes the next frame needs, if known.
    pub needed: Option<u32>,
    /// Set when the bytes after the last frame are malformed.
    pub malformed: Option<Malformed>,
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

/// Conversions between plugin types and the contract's wire types, used by
/// the code [`export!`](crate::export) writes.
#[doc(hidden)]
pub mod wire {
    use std::collections::HashMap;
    use std::rc::Rc;

    use super::{Attribute, Event, Name, Parsed};
    use crate::wit::parser_world::exports::palisade::plugin::parser;
    use crate::wit::types;

    /// Names looked up by scanning before the table gets an index: a parser
    /// uses a few dozen, and a scan of literals compares pointers first.
    const SCAN: usize = 32;

    /// The name table of one batch being written.
    #[derive(Default)]
    struct Names {
        names: Vec<Name>,
        index: HashMap<Rc<str>, u16>,
    }

    impl Names {
        fn index(&mut self, name: Name) -> u16 {
            let found = if self.names.len() <= SCAN {
                self.names.iter().position(|n| match (n, &name) {
                    (Name::Static(a), Name::Static(b)) if std::ptr::eq(*a, *b) => true,
                    _ => **n == *name,
                })
            } else {
                self.index.get(&*name).map(|&i| usize::from(i))
            };
            if let Some(i) = found {
                return u16::try_from(i).unwrap_or(u16::MAX);
            }
            let Ok(i) = u16::try_from(self.names.len()) else {
                // The contract's indices are 16-bit; a batch using more
                // distinct names is a bug in the plugin, and the trap says so.
                panic!("more than 65536 distinct kinds and attribute names in one batch");
            };
            if self.names.len() >= SCAN {
                if self.index.is_empty() {
                    for (j, n) in self.names.iter().enumerate() {
                        self.index
                            .insert(Rc::from(&**n), u16::try_from(j).unwrap_or(u16::MAX));
                    }
                }
                self.index.insert(Rc::from(&*name), i);
            }
            self.names.push(name);
            i
        }

        /// Add `event`'s names and attributes to the batch being written.
        fn event(&mut self, event: Event, attributes: &mut Vec<types::Attribute>) -> types::Event {
            let first_attribute = u32::try_from(attributes.len()).unwrap_or(u32::MAX);
            let attribute_count = u32::try_from(event.attributes.len()).unwrap_or(u32::MAX);
            let kind = self.index(event.kind);
            for a in event.attributes {
                attributes.push(types::Attribute {
                    name: self.index(a.name),
                    value: a.value,
                });
            }
            types::Event {
                kind,
                first_attribute,
                attribute_count,
            }
        }

        fn finish(self) -> Vec<String> {
            self.names.iter().map(|n| n.to_string()).collect()
        }
    }

    /// A parser's result as the contract carries it.
    pub fn parsed(parsed: Parsed) -> parser::Parsed {
        let mut names = Names::default();
        let mut attributes = Vec::new();
        let frames = parsed
            .frames
            .into_iter()
            .map(|f| parser::Frame {
                len: f.len,
                event: names.event(f.event, &mut attributes),
            })
            .collect();
        parser::Parsed {
            names: names.finish(),
            attributes,
            frames,
            state: parsed.state,
            needed: parsed.needed,
            malformed: parsed.malformed,
        }
    }

    /// Events as the contract carries them.
    pub fn batch(events: Vec<Event>) -> types::Batch {
        let mut names = Names::default();
        let mut attributes = Vec::new();
        let events = events
            .into_iter()
            .map(|e| names.event(e, &mut attributes))
            .collect();
        types::Batch {
            names: names.finish(),
            attributes,
            events,
        }
    }

    /// The events of a batch received from the host.
    pub fn events(batch: types::Batch) -> Vec<Event> {
        let types::Batch {
            names,
            attributes,
            events,
        } = batch;
        let names: Vec<Name> = names.into_iter().map(|n| Name::Shared(n.into())).collect();
        // The host builds batches and checks them; an index out of range
        // would be its bug, and reads as an empty name, not a trap.
        let name = |i: u16| {
            names
                .get(usize::from(i))
                .cloned()
                .unwrap_or(Name::Static(""))
        };
        let attribute = |a: types::Attribute| Attribute {
            name: name(a.name),
            value: a.value,
        };
        // Events' attributes normally follow each other in order, and are
        // moved out; any other layout is read by copying.
        let in_order = events
            .iter()
            .try_fold(0u64, |next, e| {
                (u64::from(e.first_attribute) == next).then(|| next + u64::from(e.attribute_count))
            })
            .is_some_and(|end| end == attributes.len() as u64);
        if in_order {
            let mut moved = attributes.into_iter();
            events
                .iter()
                .map(|e| Event {
                    kind: name(e.kind),
                    attributes: moved
                        .by_ref()
                        .take(e.attribute_count as usize)
                        .map(attribute)
                        .collect(),
                })
                .collect()
        } else {
            events
                .iter()
                .map(|e| {
                    let first = e.first_attribute as usize;
                    let run = attributes
                        .get(first..first.saturating_add(e.attribute_count as usize))
                        .unwrap_or_default();
                    Event {
                        kind: name(e.kind),
                        attributes: run.iter().cloned().map(attribute).collect(),
                    }
                })
                .collect()
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn names_cross_once_per_batch_and_come_back_equal() {
            let sent: Vec<Event> = (0..100)
                .map(|i| {
                    Event::new("mqtt.publish")
                        .with("topic", format!("t/{i}"))
                        .with("qos", 1u8)
                        .with(format!("custom-{}", i % 40), true)
                })
                .collect();
            let wire = batch(sent.clone());
            assert_eq!(wire.names.len(), 3 + 40);
            assert_eq!(wire.attributes.len(), 300);
            assert_eq!(events(wire.clone()), sent);

            let mut shuffled = wire;
            shuffled.events.reverse();
            let mut expected = sent;
            expected.reverse();
            assert_eq!(events(shuffled), expected, "out-of-order runs are copied");
        }
    }
}
