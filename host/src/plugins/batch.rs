//! Reading events out of a [`Batch`]: the contract sends each kind and
//! attribute name once per batch and lets events refer to it by index;
//! [`EventRef`] puts the names back.

use super::bindings::{Attribute, Batch, Event, Value};

/// One event of a batch, with its names and attributes resolved.
#[derive(Debug, Clone, Copy)]
pub struct EventRef<'a> {
    names: &'a [String],
    attributes: &'a [Attribute],
    kind: u16,
}

impl Batch {
    /// An empty batch.
    pub fn empty() -> Self {
        Batch {
            names: Vec::new(),
            attributes: Vec::new(),
            events: Vec::new(),
        }
    }

    /// The event at `index`.
    pub fn get(&self, index: usize) -> Option<EventRef<'_>> {
        self.events.get(index).map(|e| self.resolve(e))
    }

    /// The events, in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = EventRef<'_>> {
        self.events.iter().map(|e| self.resolve(e))
    }

    fn resolve(&self, event: &Event) -> EventRef<'_> {
        let first = event.first_attribute as usize;
        // Checked on arrival (`check`); out of range reads as no attributes.
        let attributes = self
            .attributes
            .get(first..first.saturating_add(event.attribute_count as usize))
            .unwrap_or_default();
        EventRef {
            names: &self.names,
            attributes,
            kind: event.kind,
        }
    }

    /// Check that every index refers to something: each event's kind and
    /// attribute run, each attribute's name. A parser's result is checked
    /// with this before anything reads it.
    pub(crate) fn check<'e>(
        names: &[String],
        attributes: &[Attribute],
        events: impl IntoIterator<Item = &'e Event>,
    ) -> Result<(), String> {
        let count = names.len();
        let name_ok = |i: u16| usize::from(i) < count;
        if let Some(a) = attributes.iter().find(|a| !name_ok(a.name)) {
            return Err(format!(
                "attribute name {} outside a table of {count} names",
                a.name
            ));
        }
        for event in events {
            if !name_ok(event.kind) {
                return Err(format!(
                    "event kind {} outside a table of {count} names",
                    event.kind
                ));
            }
            let end = u64::from(event.first_attribute) + u64::from(event.attribute_count);
            if end > attributes.len() as u64 {
                return Err(format!(
                    "attributes up to {end} of a list of {}",
                    attributes.len()
                ));
            }
        }
        Ok(())
    }
}

impl<'a> EventRef<'a> {
    fn name(&self, index: u16) -> &'a str {
        // Batches are checked on arrival (`check_names`); an index out of
        // range cannot be here, and would read as an empty name.
        self.names
            .get(usize::from(index))
            .map_or("", String::as_str)
    }

    /// The kind, for example `mqtt.publish`.
    pub fn kind(&self) -> &'a str {
        self.name(self.kind)
    }

    /// The protocol: the kind up to its first dot.
    pub fn protocol(&self) -> &'a str {
        self.kind().split('.').next().unwrap_or_default()
    }

    /// The attributes as `(name, value)`, in order.
    pub fn attributes(&self) -> impl Iterator<Item = (&'a str, &'a Value)> + 'a {
        let names = self.names;
        self.attributes.iter().map(move |a| {
            (
                names.get(usize::from(a.name)).map_or("", String::as_str),
                &a.value,
            )
        })
    }

    /// The value of the first attribute called `name`.
    pub fn attribute(&self, name: &str) -> Option<&'a Value> {
        self.attributes().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// The attribute `name` if it is text.
    pub fn text(&self, name: &str) -> Option<&'a str> {
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
}
