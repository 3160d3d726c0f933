//! Batches cross the boundary as the contract's columns; on the host they
//! are the plugin SDK's [`Batch`], read through its [`EventRef`]s, so the
//! host and the plugins read events with the same code. Converting moves
//! the columns; no event is copied.
//!
//! [`EventRef`]: palisade_plugin_sdk::EventRef

use palisade_plugin_sdk::{Batch, Columns, Malformed, Parsed, ValueType};

use super::bindings::{self, Field};

/// A batch returned by a plugin.
pub(crate) fn from_wire(batch: bindings::Batch) -> Batch {
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

/// A batch as detectors and responders receive it: the contract's columns.
/// A session's pipeline moves its batch into one for all of them, and back
/// after, instead of copying it for each call.
#[derive(Debug, Clone)]
pub struct WireBatch(pub(crate) bindings::Batch);

impl WireBatch {
    /// The events, in order.
    pub fn len(&self) -> usize {
        self.0.events.len()
    }

    /// Whether there are no events.
    pub fn is_empty(&self) -> bool {
        self.0.events.is_empty()
    }

    /// The batch back, as it was.
    pub fn into_batch(self) -> Batch {
        from_wire(self.0)
    }
}

impl From<Batch> for WireBatch {
    fn from(batch: Batch) -> Self {
        let c = batch.into_columns();
        WireBatch(bindings::Batch {
            kinds: c.kinds,
            fields: (c.fields.into_iter())
                .map(|(name, ty)| Field {
                    name,
                    type_: wire_type(ty),
                })
                .collect(),
            events: c.events,
            attribute_ends: c.attribute_ends,
            attribute_fields: c.attribute_fields,
            attribute_values: c.attribute_values,
            data: c.data,
        })
    }
}

/// A copy of `batch`.
impl From<&Batch> for WireBatch {
    fn from(batch: &Batch) -> Self {
        WireBatch::from(batch.clone())
    }
}

/// A parser's result, unchecked.
pub(crate) fn parsed_from_wire(parsed: bindings::Parsed) -> Parsed {
    Parsed {
        frame_lengths: parsed.frame_lengths,
        events: from_wire(parsed.events),
        state: parsed.state,
        needed: parsed.needed,
        malformed: parsed.malformed.map(|m| Malformed {
            offset: m.offset,
            reason: m.reason,
        }),
    }
}

fn wire_type(ty: ValueType) -> bindings::ValueType {
    match ty {
        ValueType::Text => bindings::ValueType::Text,
        ValueType::Int => bindings::ValueType::Int,
        ValueType::Flag => bindings::ValueType::Flag,
        ValueType::Bytes => bindings::ValueType::Bytes,
    }
}

fn value_type(ty: bindings::ValueType) -> ValueType {
    match ty {
        bindings::ValueType::Text => ValueType::Text,
        bindings::ValueType::Int => ValueType::Int,
        bindings::ValueType::Flag => ValueType::Flag,
        bindings::ValueType::Bytes => ValueType::Bytes,
    }
}
