//! The contract's types as plugin code uses them. Events live in
//! [`Batch`](crate::Batch); the rest are the contract's own records.

use crate::batch::{Batch, EventRef, EventWriter};
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

/// Findings one call of a detector may raise about any one event. The
/// contract asks for a finding for each event worth reporting; a detector
/// that sees several things wrong with one event may report them apart, up
/// to this many. More breaks the contract: the appliance refuses the call's
/// findings and the detector gets a strike. The cap is per event, not per
/// call, so that no device can push an honest detector past it by sending
/// many frames that each deserve a finding, and it bounds what a detector
/// can make the appliance record about one event (each finding is an audit
/// record carrying the event).
pub const MAX_FINDINGS_PER_EVENT: usize = 4;

/// Actions one call of a responder may ask for, per finding it was given:
/// an alert and a dropped frame each, as the first-party `escalate` asks.
/// On top, [`SPARE_ACTIONS`] more, for what concerns the session as a whole
/// (close it, quarantine the device). More breaks the contract: the
/// appliance carries out none of the call's actions and the responder gets
/// a strike.
pub const MAX_ACTIONS_PER_FINDING: usize = 2;

/// Actions a responder may ask for beyond [`MAX_ACTIONS_PER_FINDING`] per
/// finding.
pub const SPARE_ACTIONS: usize = 8;

/// Bytes of a finding's reason, or of an alert's message, that the
/// appliance keeps. A reason is for a person to read; it often quotes what a
/// device sent (a topic, a parser's reason), so its length is the device's
/// choice as much as the plugin's, and a longer one is cut, not refused: at
/// a character boundary, ending in `...[cut N bytes]`.
pub const MAX_REASON_BYTES: usize = 1024;

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

/// What a parser returns from one call: the complete frames at the start of
/// its input, each described by one event.
#[derive(Clone, Debug, PartialEq)]
pub struct Parsed {
    /// The length of each frame in bytes, in order.
    pub frame_lengths: Vec<u32>,
    /// The frames' events: event `i` describes frame `i`.
    pub events: Batch,
    /// The session state the host hands back on the next call, in either
    /// direction.
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
            frame_lengths: Vec::new(),
            events: Batch::new(),
            state,
            needed: None,
            malformed: None,
        }
    }

    /// Record a complete frame of `len` bytes, whose event is of `kind`;
    /// write the event's attributes with the returned writer.
    ///
    /// ```
    /// # use palisade_plugin_sdk::Parsed;
    /// let mut parsed = Parsed::new(Vec::new());
    /// parsed.frame(42, "mqtt.publish").text("topic", "a/b").int("qos", 0);
    /// assert_eq!(parsed.consumed(), 42);
    /// ```
    pub fn frame(&mut self, len: usize, kind: &str) -> EventWriter<'_> {
        if self.frame_lengths.capacity() == 0 {
            self.frame_lengths.reserve(crate::batch::FIRST_EVENTS);
        }
        self.frame_lengths
            .push(u32::try_from(len).unwrap_or(u32::MAX));
        self.events.push(kind)
    }

    /// The frames: each one's length and event.
    pub fn frames(&self) -> impl Iterator<Item = (u32, EventRef<'_>)> {
        self.frame_lengths.iter().copied().zip(self.events.iter())
    }

    /// The number of input bytes the frames cover.
    pub fn consumed(&self) -> usize {
        self.frame_lengths.iter().map(|&len| len as usize).sum()
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
    use super::Parsed;
    use crate::batch::{Batch, Columns, ValueType};
    use crate::wit::parser_world::exports::palisade::plugin::parser;
    use crate::wit::types;

    /// A parser's result as the contract carries it: the batch moves, no
    /// event is copied.
    pub fn parsed(parsed: Parsed) -> parser::Parsed {
        parser::Parsed {
            frame_lengths: parsed.frame_lengths,
            events: columns(parsed.events),
            state: parsed.state,
            needed: parsed.needed,
            malformed: parsed.malformed,
        }
    }

    /// A parser's result for one datagram as the contract carries it: the
    /// event and the state, or the malformed report's reason.
    pub fn message(
        parsed: Parsed,
    ) -> Result<
        crate::wit::datagram_world::exports::palisade::plugin::datagram_parser::Message,
        String,
    > {
        match parsed.malformed {
            Some(malformed) => Err(malformed.reason),
            None => Ok(
                crate::wit::datagram_world::exports::palisade::plugin::datagram_parser::Message {
                    event: columns(parsed.events),
                    state: parsed.state,
                },
            ),
        }
    }

    /// A batch received from the host: its columns move, no event is
    /// copied.
    pub fn batch(batch: types::Batch) -> Batch {
        Batch::from_columns(Columns {
            kinds: batch.kinds,
            fields: (batch.fields.into_iter())
                .map(|f| (f.name, value_type(f.type_)))
                .collect(),
            events: batch.events,
            attribute_ends: batch.attribute_ends,
            attribute_fields: batch.attribute_fields,
            attribute_values: batch.attribute_values,
            data: batch.data,
        })
    }

    /// A batch as the contract carries it.
    pub fn columns(batch: Batch) -> types::Batch {
        let c = batch.into_columns();
        types::Batch {
            kinds: c.kinds,
            fields: (c.fields.into_iter())
                .map(|(name, ty)| types::Field {
                    name,
                    type_: match ty {
                        ValueType::Text => types::ValueType::Text,
                        ValueType::Int => types::ValueType::Int,
                        ValueType::Flag => types::ValueType::Flag,
                        ValueType::Bytes => types::ValueType::Bytes,
                    },
                })
                .collect(),
            events: c.events,
            attribute_ends: c.attribute_ends,
            attribute_fields: c.attribute_fields,
            attribute_values: c.attribute_values,
            data: c.data,
        }
    }

    fn value_type(ty: types::ValueType) -> ValueType {
        match ty {
            types::ValueType::Text => ValueType::Text,
            types::ValueType::Int => ValueType::Int,
            types::ValueType::Flag => ValueType::Flag,
            types::ValueType::Bytes => ValueType::Bytes,
        }
    }
}
