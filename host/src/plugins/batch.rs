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

/// A batch to send to a plugin.
pub(crate) fn to_wire(batch: &Batch) -> bindings::Batch {
    let c = batch.columns();
    bindings::Batch {
        kinds: c.kinds.clone(),
        fields: (c.fields.iter())
            .map(|(name, ty)| Field {
                name: name.clone(),
                type_: match ty {
                    ValueType::Text => bindings::ValueType::Text,
                    ValueType::Int => bindings::ValueType::Int,
                    ValueType::Flag => bindings::ValueType::Flag,
                    ValueType::Bytes => bindings::ValueType::Bytes,
                },
            })
            .collect(),
        events: c.events.clone(),
        attribute_ends: c.attribute_ends.clone(),
        attribute_fields: c.attribute_fields.clone(),
        attribute_values: c.attribute_values.clone(),
        data: c.data.clone(),
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

fn value_type(ty: bindings::ValueType) -> ValueType {
    match ty {
        bindings::ValueType::Text => ValueType::Text,
        bindings::ValueType::Int => ValueType::Int,
        bindings::ValueType::Flag => ValueType::Flag,
        bindings::ValueType::Bytes => ValueType::Bytes,
    }
}
