//! Events as plugins write and read them: a [`Batch`] laid out in columns
//! exactly as the contract carries it (see `batch` in `wit/plugin.wit`).
//!
//! A parser writes each event straight into the batch it returns, so an
//! event costs a few pushes onto vectors and no allocation of its own; the
//! batch then crosses the boundary as it is. A detector reads the batch it
//! is given through [`EventRef`]s, which borrow from it.
//!
//! The appliance reads and writes batches with these same types: it moves
//! the [`Columns`] in and out of its own bindings.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;

/// Kinds and fields looked up by a scan before the table gets a hash index:
/// a parser uses a few dozen, and a scan of short strings is cheaper than
/// hashing them.
const SCAN: usize = 32;

/// Slots of the cache of literals' fields: more than a parser's names.
const LITERAL_SLOTS: usize = 32;

/// Entries a batch's table of kinds, or of attribute names, may hold. The
/// contract's indices are 16-bit, so a table reaches 65536 entries; the
/// appliance adds entries of its own to a parser's batch (the kind of the
/// `PROTOCOL.malformed` event that follows the frames, and its `offset` and
/// `reason` fields), so a plugin's table leaves two of them free.
/// [`Columns::check`] refuses larger tables.
pub const MAX_TABLE_ENTRIES: usize = 65536 - 2;

/// The events a batch makes room for when its first event is written: a
/// 4 KiB chunk of small frames holds a few dozen.
pub(crate) const FIRST_EVENTS: usize = 64;

/// Events, in order, with their attributes.
///
/// Write one with [`Batch::push`], read one with [`Batch::iter`]:
///
/// ```
/// use palisade_plugin_sdk::{Batch, Value};
///
/// let mut batch = Batch::new();
/// batch
///     .push("mqtt.publish")
///     .text("topic", "site/cell-1/temp")
///     .int("qos", 1);
/// let event = batch.get(0).unwrap();
/// assert_eq!(event.kind(), "mqtt.publish");
/// assert_eq!(event.text("topic"), Some("site/cell-1/temp"));
/// assert_eq!(event.get("qos"), Some(Value::Int(1)));
/// ```
#[derive(Clone, Default)]
pub struct Batch {
    wire: Columns,
    /// Where the next attribute's field probably is: parsers write the same
    /// attributes in the same order, event after event.
    next_field: usize,
    /// For each field, the literal last used for its name.
    field_literals: Vec<Literal>,
    /// Where to look for a literal the hint missed: the field it was last
    /// seen as, in slot [`Literal::slot`]. Attributes that only some events
    /// have (a QoS 1 PUBLISH's packet id) break the order every time.
    literal_fields: [u16; LITERAL_SLOTS],
    /// The kind of the last event pushed.
    last_kind: usize,
    /// The field of the first attribute of the last event.
    first_field: usize,
    kind_index: HashMap<Box<str>, u16>,
    field_index: HashMap<(Box<str>, u8), u16>,
}

/// A name written as a string literal, known by where it lies: two
/// literals at one address with one length are the same string, since
/// static memory is never reused.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Literal {
    address: usize,
    len: usize,
    ty: ValueType,
}

impl Literal {
    const NONE: Literal = Literal {
        address: 0,
        len: usize::MAX,
        ty: ValueType::Int,
    };

    fn new(name: &str, ty: ValueType) -> Self {
        Literal {
            address: name.as_ptr() as usize,
            len: name.len(),
            ty,
        }
    }

    /// The literal's slot in [`Batch::literal_fields`]: a few bits of a
    /// multiplicative hash of its address, which tells apart the names a
    /// parser keeps side by side in its static data.
    fn slot(self) -> usize {
        (self.address.wrapping_mul(0x9E37_79B9) >> 16) % LITERAL_SLOTS
    }
}

/// A batch's columns, as `batch` in `wit/plugin.wit` lays them out. A
/// [`Batch`] made from columns that break the layout reads the broken parts
/// as empty names and values; [`Columns::check`] finds them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Columns {
    /// Event kinds.
    pub kinds: Vec<String>,
    /// Attribute names and types.
    pub fields: Vec<(String, ValueType)>,
    /// For each event, an index into `kinds`.
    pub events: Vec<u16>,
    /// For each event, where its attributes end.
    pub attribute_ends: Vec<u32>,
    /// For each attribute, an index into `fields`.
    pub attribute_fields: Vec<u16>,
    /// For each attribute, its value as its field's type says.
    pub attribute_values: Vec<i64>,
    /// The contents of text and bytes values.
    pub data: Vec<u8>,
}

/// The type of an attribute's values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ValueType {
    /// UTF-8 text.
    Text,
    /// A signed 64-bit integer.
    Int,
    /// A flag.
    Flag,
    /// Raw bytes.
    Bytes,
}

/// The value of one attribute, borrowed from its batch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value<'a> {
    /// Text, for example a topic.
    Text(&'a str),
    /// An integer, for example a register address.
    Int(i64),
    /// A flag.
    Flag(bool),
    /// Raw bytes, for example the first bytes of a payload.
    Bytes(&'a [u8]),
}

/// An attribute name looked up once in a batch's table of names, so that
/// finding it in each event compares numbers, not strings: for a detector
/// that reads the same few attributes of every event of a batch. Made by
/// [`Batch::field`], taken wherever [`EventRef::get`] and its kin take a
/// name, and meaningful for that batch only.
///
/// ```
/// use palisade_plugin_sdk::Batch;
///
/// let mut batch = Batch::new();
/// batch.push("mqtt.publish").text("topic", "site/a/temp").int("payload-size", 7);
/// batch.push("mqtt.publish").text("topic", "site/b/temp").int("payload-size", 9);
/// let size = batch.field("payload-size");
/// let total: i64 = batch.iter().filter_map(|e| e.int(size)).sum();
/// assert_eq!(total, 16);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    /// The entries of the batch's table with the name, one per type it has
    /// there; [`Field::NONE`] for the rest.
    entries: [u16; 4],
}

impl Field {
    const NONE: u16 = u16::MAX;
}

/// An event kind looked up once in a batch's table of kinds, so that
/// telling an event's kind compares numbers, not strings. Made by
/// [`Batch::kind_id`] and [`EventRef::kind_id`], meaningful for that batch
/// only.
///
/// ```
/// use palisade_plugin_sdk::Batch;
///
/// let mut batch = Batch::new();
/// batch.push("mqtt.publish");
/// batch.push("mqtt.pingreq");
/// let publish = batch.kind_id("mqtt.publish");
/// let publishes = batch.iter().filter(|e| e.kind_id() == publish).count();
/// assert_eq!(publishes, 1);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KindId(u16);

/// A name of an attribute, as [`EventRef::get`] and its kin take it: a
/// string, or a [`Field`] looked up once per batch.
pub trait Name: sealed::Sealed {
    /// Whether entry `field` of the batch's table of names is this name.
    #[doc(hidden)]
    fn is(&self, batch: &Columns, field: u16) -> bool;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for &str {}
    impl Sealed for &String {}
    impl Sealed for super::Field {}
}

impl Name for &str {
    #[inline]
    fn is(&self, batch: &Columns, field: u16) -> bool {
        (batch.fields.get(usize::from(field)))
            .is_some_and(|(n, _)| same(n.as_bytes(), self.as_bytes()))
    }
}

impl Name for &String {
    #[inline]
    fn is(&self, batch: &Columns, field: u16) -> bool {
        self.as_str().is(batch, field)
    }
}

impl Name for Field {
    #[inline]
    fn is(&self, _: &Columns, field: u16) -> bool {
        let [first, rest @ ..] = self.entries;
        // A name has one type, mostly: one entry.
        field != Field::NONE && (field == first || rest[0] != Field::NONE && rest.contains(&field))
    }
}

/// Writes the attributes of the event just pushed onto a batch.
#[derive(Debug)]
pub struct EventWriter<'b> {
    batch: &'b mut Batch,
    /// Whether no attribute is written yet.
    first: bool,
}

/// One event of a batch.
#[derive(Clone, Copy)]
pub struct EventRef<'a> {
    batch: &'a Columns,
    index: usize,
    attributes: (usize, usize),
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Batch::default()
    }

    /// Append an event of `kind` (`protocol.what`, for example
    /// `mqtt.publish`), and write its attributes with the returned writer.
    ///
    /// # Panics
    ///
    /// When the batch would hold more than 65536 distinct kinds: the
    /// contract's indices are 16-bit, and a plugin that needs more has a bug.
    pub fn push(&mut self, kind: &str) -> EventWriter<'_> {
        let wire = &mut self.wire;
        if wire.events.capacity() == 0 {
            // A parser's batch holds dozens of events: grow in a few steps,
            // not in many small ones (each a copy, and slow in wasm).
            wire.events.reserve(FIRST_EVENTS);
            wire.attribute_ends.reserve(FIRST_EVENTS);
            wire.attribute_fields.reserve(FIRST_EVENTS * 8);
            wire.attribute_values.reserve(FIRST_EVENTS * 8);
            wire.data.reserve(FIRST_EVENTS * 64);
            wire.kinds.reserve(4);
            wire.fields.reserve(16);
            self.field_literals.reserve(16);
        }
        let previous = self.last_kind;
        let kind = self.kind_entry(kind);
        if usize::from(kind) == previous {
            // Events of a kind have the same attributes, mostly.
            self.next_field = self.first_field;
        }
        let end = self.wire.attribute_fields.len();
        self.wire.events.push(kind);
        self.wire.attribute_ends.push(index32(end));
        EventWriter {
            batch: self,
            first: true,
        }
    }

    /// Append copies of `other`'s events.
    pub fn extend(&mut self, other: &Batch) {
        for event in other.iter() {
            let mut writer = self.push(event.kind());
            for (name, value) in event.attributes() {
                writer.value(name, value);
            }
        }
    }

    /// How many events the batch holds.
    pub fn len(&self) -> usize {
        self.wire.events.len()
    }

    /// Whether the batch holds no event.
    pub fn is_empty(&self) -> bool {
        self.wire.events.is_empty()
    }

    /// Look `name` up in the batch's table of names, once, for reading it
    /// from many events (see [`Field`]).
    pub fn field(&self, name: &str) -> Field {
        let mut entries = [Field::NONE; 4];
        let found = (self.wire.fields.iter().enumerate())
            .filter(|(_, (n, _))| same(n.as_bytes(), name.as_bytes()))
            .map(|(i, _)| index16(i));
        for (entry, i) in entries.iter_mut().zip(found) {
            *entry = i;
        }
        Field { entries }
    }

    /// Look the event kind `name` up in the batch's table of kinds, once,
    /// for telling many events' kinds (see [`KindId`]). A kind no event of
    /// the batch has is no event's.
    pub fn kind_id(&self, name: &str) -> KindId {
        let kinds = &self.wire.kinds;
        KindId(
            kinds
                .iter()
                .position(|k| same(k.as_bytes(), name.as_bytes()))
                .map_or(u16::MAX, index16),
        )
    }

    /// The event at `index`.
    pub fn get(&self, index: usize) -> Option<EventRef<'_>> {
        (index < self.len()).then(|| self.event(index))
    }

    /// The events, in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = EventRef<'_>> {
        (0..self.len()).map(|i| self.event(i))
    }

    fn event(&self, index: usize) -> EventRef<'_> {
        let ends = &self.wire.attribute_ends;
        let end = ends.get(index).map_or(0, |&e| e as usize);
        let start = index
            .checked_sub(1)
            .and_then(|previous| ends.get(previous))
            .map_or(0, |&e| e as usize);
        EventRef {
            batch: &self.wire,
            index,
            attributes: (start, end),
        }
    }

    /// The batch's columns.
    pub fn columns(&self) -> &Columns {
        &self.wire
    }

    /// The batch's columns, moved out.
    pub fn into_columns(self) -> Columns {
        self.wire
    }

    /// A batch of `columns` as they are, unchecked: an index out of range
    /// reads as an empty name or value, never as a panic.
    pub fn from_columns(columns: Columns) -> Self {
        Batch {
            wire: columns,
            ..Batch::default()
        }
    }

    fn kind_entry(&mut self, kind: &str) -> u16 {
        let kinds = &mut self.wire.kinds;
        if kinds
            .get(self.last_kind)
            .is_some_and(|k| same(k.as_bytes(), kind.as_bytes()))
        {
            return index16(self.last_kind);
        }
        let i = self.find_kind(kind);
        self.last_kind = usize::from(i);
        i
    }

    fn find_kind(&mut self, kind: &str) -> u16 {
        let kinds = &mut self.wire.kinds;
        if kinds.len() <= SCAN {
            if let Some(i) = kinds
                .iter()
                .position(|k| same(k.as_bytes(), kind.as_bytes()))
            {
                return index16(i);
            }
        } else if let Some(&i) = self.kind_index.get(kind) {
            return i;
        }
        let i = table_index(kinds.len(), "kinds");
        kinds.push(kind.to_owned());
        if kinds.len() > SCAN {
            if self.kind_index.is_empty() {
                self.kind_index = (kinds.iter().enumerate())
                    .map(|(i, k)| (k.as_str().into(), index16(i)))
                    .collect();
            }
            self.kind_index.insert(kind.into(), i);
        }
        i
    }

    /// The index of field `name` of type `ty`. A name that is a literal
    /// (`&'static str`) is recognised by its address, without comparing
    /// its bytes, when it is the field the last attribute's successor had.
    #[inline(always)]
    fn field_entry(&mut self, name: &str, literal: bool, ty: ValueType) -> u16 {
        let hint = self.next_field;
        if literal {
            let key = Literal::new(name, ty);
            let i = if self.field_literals.get(hint) == Some(&key) {
                hint
            } else {
                let seen = (self.literal_fields.get(key.slot())).map_or(0, |&i| usize::from(i));
                if self.field_literals.get(seen) == Some(&key) {
                    seen
                } else {
                    self.new_literal(name, ty, key)
                }
            };
            self.next_field = i + 1;
            return index16(i);
        }
        let i = self.find_field(name, ty);
        self.next_field = i + 1;
        index16(i)
    }

    /// The index of field `name` of type `ty`, whose literal `key` is not
    /// known yet.
    #[cold]
    fn new_literal(&mut self, name: &str, ty: ValueType, key: Literal) -> usize {
        let i = self.find_field(name, ty);
        if self.field_literals.len() <= i {
            self.field_literals.resize(i + 1, Literal::NONE);
        }
        if let Some(slot) = self.field_literals.get_mut(i) {
            *slot = key;
        }
        if let Some(slot) = self.literal_fields.get_mut(key.slot()) {
            *slot = index16(i);
        }
        i
    }

    #[cold]
    fn find_field(&mut self, name: &str, ty: ValueType) -> usize {
        let fields = &mut self.wire.fields;
        let is = |(n, t): &(String, ValueType)| *t == ty && same(n.as_bytes(), name.as_bytes());
        let found = match fields.get(self.next_field) {
            Some(f) if is(f) => Some(self.next_field),
            _ if fields.len() <= SCAN => fields.iter().position(is),
            _ => (self.field_index.get(&(name.into(), ty as u8))).map(|&i| usize::from(i)),
        };
        if let Some(i) = found {
            return i;
        }
        let i = table_index(fields.len(), "attribute names");
        fields.push((name.to_owned(), ty));
        if fields.len() > SCAN {
            if self.field_index.is_empty() {
                self.field_index = (fields.iter().enumerate())
                    .map(|(i, (n, t))| ((n.as_str().into(), *t as u8), index16(i)))
                    .collect();
            }
            self.field_index.insert((name.into(), ty as u8), i);
        }
        usize::from(i)
    }
}

impl<'b> EventWriter<'b> {
    /// Add a text attribute, for example `topic`.
    #[inline]
    pub fn text(&mut self, name: &'static str, value: &str) -> &mut Self {
        self.data(name, true, ValueType::Text, value.as_bytes())
    }

    /// Add an integer attribute, for example `packet-id`.
    #[inline]
    pub fn int(&mut self, name: &'static str, value: impl Into<i64>) -> &mut Self {
        self.attribute(name, true, ValueType::Int, value.into())
    }

    /// Add an integer attribute from a size or count, saturating at
    /// `i64::MAX`.
    #[inline]
    pub fn size(&mut self, name: &'static str, value: usize) -> &mut Self {
        self.int(name, i64::try_from(value).unwrap_or(i64::MAX))
    }

    /// Add a flag attribute, for example `retain`.
    #[inline]
    pub fn flag(&mut self, name: &'static str, value: bool) -> &mut Self {
        self.attribute(name, true, ValueType::Flag, i64::from(value))
    }

    /// Add a bytes attribute, for example the first bytes of a payload.
    #[inline]
    pub fn bytes(&mut self, name: &'static str, value: &[u8]) -> &mut Self {
        self.data(name, true, ValueType::Bytes, value)
    }

    /// Add an attribute of any type, under a name that need not be a
    /// literal (the typed methods take literals, which they look up
    /// faster).
    pub fn value(&mut self, name: &str, value: Value<'_>) -> &mut Self {
        match value {
            Value::Text(t) => self.data(name, false, ValueType::Text, t.as_bytes()),
            Value::Int(i) => self.attribute(name, false, ValueType::Int, i),
            Value::Flag(f) => self.attribute(name, false, ValueType::Flag, i64::from(f)),
            Value::Bytes(b) => self.data(name, false, ValueType::Bytes, b),
        }
    }

    #[inline(always)]
    fn data(&mut self, name: &str, literal: bool, ty: ValueType, bytes: &[u8]) -> &mut Self {
        let data = &mut self.batch.wire.data;
        let range = (u64::from(index32(data.len())) << 32) | u64::from(index32(bytes.len()));
        data.extend_from_slice(bytes);
        self.attribute(name, literal, ty, range.cast_signed())
    }

    #[inline(always)]
    fn attribute(&mut self, name: &str, literal: bool, ty: ValueType, value: i64) -> &mut Self {
        let field = self.batch.field_entry(name, literal, ty);
        if self.first {
            self.first = false;
            self.batch.first_field = usize::from(field);
        }
        let wire = &mut self.batch.wire;
        wire.attribute_fields.push(field);
        wire.attribute_values.push(value);
        if let Some(end) = wire.attribute_ends.last_mut() {
            *end += 1;
        }
        self
    }
}

impl<'a> EventRef<'a> {
    /// The event's position in its batch.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The kind, for example `mqtt.publish`.
    pub fn kind(&self) -> &'a str {
        let kind = self
            .batch
            .events
            .get(self.index)
            .copied()
            .unwrap_or(u16::MAX);
        (self.batch.kinds.get(usize::from(kind))).map_or("", String::as_str)
    }

    /// The kind as its entry in the batch's table (see [`KindId`]).
    pub fn kind_id(&self) -> KindId {
        let kind = self.batch.events.get(self.index).copied();
        // An event whose kind is outside the table is of no kind looked up.
        KindId(
            kind.filter(|&k| usize::from(k) < self.batch.kinds.len())
                .map_or(u16::MAX - 1, |k| k),
        )
    }

    /// The protocol: the kind up to its first dot.
    pub fn protocol(&self) -> &'a str {
        self.kind().split('.').next().unwrap_or_default()
    }

    /// The batch's columns, for a reader of the columns themselves.
    pub fn columns(&self) -> &'a Columns {
        self.batch
    }

    /// Where the event's attributes lie in the attribute columns.
    pub fn attribute_range(&self) -> Range<usize> {
        self.attributes.0..self.attributes.1
    }

    /// The attributes as `(name, value)`, in order.
    pub fn attributes(&self) -> impl Iterator<Item = (&'a str, Value<'a>)> + 'a {
        let batch = self.batch;
        let (start, end) = self.attributes;
        let fields = batch.attribute_fields.get(start..end).unwrap_or_default();
        let values = batch.attribute_values.get(start..end).unwrap_or_default();
        fields.iter().zip(values).map(move |(&field, &value)| {
            let Some((name, ty)) = batch.fields.get(usize::from(field)) else {
                return ("", Value::Bytes(&[]));
            };
            (name.as_str(), decode(batch, *ty, value))
        })
    }

    /// The value of the first attribute called `name`. Only that value is
    /// decoded: a detector looks up a few attributes of every event, and
    /// decoding (UTF-8 checking) the ones before them would cost more than
    /// the lookup.
    /// `name` is a string or a [`Field`] of the batch.
    pub fn get(&self, name: impl Name) -> Option<Value<'a>> {
        let (ty, raw) = self.raw(name)?;
        Some(decode(self.batch, ty, raw))
    }

    /// The type and the undecoded value of the first attribute called
    /// `name`.
    fn raw(&self, name: impl Name) -> Option<(ValueType, i64)> {
        let batch = self.batch;
        let (start, end) = self.attributes;
        let fields = batch.attribute_fields.get(start..end).unwrap_or_default();
        let values = batch.attribute_values.get(start..end).unwrap_or_default();
        let (field, &value) = (fields.iter().zip(values)).find(|(f, _)| name.is(batch, **f))?;
        let (_, ty) = batch.fields.get(usize::from(*field))?;
        Some((*ty, value))
    }

    /// The attribute `name` if it is text.
    pub fn text(&self, name: impl Name) -> Option<&'a str> {
        match self.get(name)? {
            Value::Text(t) => Some(t),
            _ => None,
        }
    }

    /// Every text value of the attribute `name`, in order: an attribute
    /// that repeats, such as an MQTT subscription's `filter`s.
    pub fn texts<N: Name>(&self, name: N) -> impl Iterator<Item = &'a str> + use<'a, N> {
        let batch = self.batch;
        let (start, end) = self.attributes;
        let fields = batch.attribute_fields.get(start..end).unwrap_or_default();
        let values = batch.attribute_values.get(start..end).unwrap_or_default();
        (fields.iter().zip(values)).filter_map(move |(&field, &raw)| {
            match batch.fields.get(usize::from(field)) {
                Some((_, ValueType::Text)) if name.is(batch, field) => {
                    std::str::from_utf8(batch.value_bytes(raw)?).ok()
                }
                _ => None,
            }
        })
    }

    /// Whether the attribute `name` is the text `text`. Quicker than
    /// comparing [`text`](Self::text): the bytes are compared as they lie,
    /// a word at a time, with no UTF-8 check (equal bytes are equal text).
    pub fn text_is(&self, name: impl Name, text: &str) -> bool {
        match self.raw(name) {
            Some((ValueType::Text, raw)) => {
                (self.batch.value_bytes(raw)).is_some_and(|bytes| same(bytes, text.as_bytes()))
            }
            _ => false,
        }
    }

    /// The attribute `name` if it is an integer.
    pub fn int(&self, name: impl Name) -> Option<i64> {
        match self.get(name)? {
            Value::Int(i) => Some(i),
            _ => None,
        }
    }

    /// The attribute `name` if it is a flag.
    pub fn flag(&self, name: impl Name) -> Option<bool> {
        match self.get(name)? {
            Value::Flag(f) => Some(f),
            _ => None,
        }
    }

    /// The attribute `name` if it is bytes.
    pub fn bytes(&self, name: impl Name) -> Option<&'a [u8]> {
        match self.get(name)? {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }
}

/// The value `raw` of an attribute of type `ty`.
fn decode(batch: &Columns, ty: ValueType, raw: i64) -> Value<'_> {
    let range = || batch.value_bytes(raw).unwrap_or_default();
    match ty {
        ValueType::Int => Value::Int(raw),
        ValueType::Flag => Value::Flag(raw != 0),
        ValueType::Text => Value::Text(std::str::from_utf8(range()).unwrap_or_default()),
        ValueType::Bytes => Value::Bytes(range()),
    }
}

/// Whether `a` and `b` hold the same bytes. In WebAssembly `==` on slices
/// calls a `memcmp` that goes a byte at a time; this compares words, the
/// last one overlapping the one before, with no loop up to 16 bytes. The
/// SDK compares names with it for every event a parser writes; a plugin
/// comparing byte strings on every event may too.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let u64_at = |s: &[u8], at: usize| {
        (s.get(at..at + 8)).map(|w| u64::from_le_bytes(w.try_into().unwrap_or_default()))
    };
    let u32_at = |s: &[u8], at: usize| {
        (s.get(at..at + 4)).map(|w| u32::from_le_bytes(w.try_into().unwrap_or_default()))
    };
    match a.len() {
        0..4 => a == b,
        4..8 => u32_at(a, 0) == u32_at(b, 0) && u32_at(a, a.len() - 4) == u32_at(b, b.len() - 4),
        len => {
            let last = len - 8;
            (0..last)
                .step_by(8)
                .all(|at| u64_at(a, at) == u64_at(b, at))
                && u64_at(a, last) == u64_at(b, last)
        }
    }
}

/// The range of `data` a text or bytes value `raw` refers to.
fn data_range(raw: i64) -> Range<usize> {
    let raw = raw.cast_unsigned();
    let offset = (raw >> 32) as usize;
    let len = (raw & u64::from(u32::MAX)) as usize;
    offset..offset.saturating_add(len)
}

impl Columns {
    /// The contents of a text or bytes value `raw`, undecoded; `None` when
    /// its range lies outside `data`.
    pub fn value_bytes(&self, raw: i64) -> Option<&[u8]> {
        self.data.get(data_range(raw))
    }

    /// Check that the columns keep the layout: tables of at most
    /// [`MAX_TABLE_ENTRIES`] names, none holding a character that breaks or
    /// reorders a line (a control character, a Unicode line or paragraph
    /// separator, a bidirectional control), every index in range, the event
    /// runs in order and covering the attributes, every text and bytes range
    /// inside `data`, every text valid UTF-8. The appliance checks each
    /// batch a plugin returns with this before anything reads it.
    ///
    /// The contract's vocabulary says what names look like (kinds
    /// `protocol.what`, names lowercase kebab-case) but the appliance has
    /// never held plugins to it, so it refuses only the names that could
    /// pass for something else in a log line or a SIEM's view.
    pub fn check(&self) -> Result<(), String> {
        for (what, len) in [("kinds", self.kinds.len()), ("fields", self.fields.len())] {
            if len > MAX_TABLE_ENTRIES {
                return Err(format!(
                    "{len} {what}, more than the {MAX_TABLE_ENTRIES} a batch may name"
                ));
            }
        }
        if let Some(i) = self.kinds.iter().position(|k| k.chars().any(breaks_lines)) {
            return Err(format!(
                "kind {i} holds a control or line-breaking character"
            ));
        }
        if let Some(i) = (self.fields.iter()).position(|(n, _)| n.chars().any(breaks_lines)) {
            return Err(format!(
                "field {i} holds a control or line-breaking character"
            ));
        }
        let attributes = self.attribute_fields.len();
        if self.attribute_values.len() != attributes {
            return Err(format!(
                "{attributes} attribute fields but {} values",
                self.attribute_values.len()
            ));
        }
        if self.attribute_ends.len() != self.events.len() {
            return Err(format!(
                "{} events but {} attribute ends",
                self.events.len(),
                self.attribute_ends.len()
            ));
        }
        let kinds = self.kinds.len();
        if let Some(kind) = self.events.iter().find(|&&k| usize::from(k) >= kinds) {
            return Err(format!("event kind {kind} outside a table of {kinds}"));
        }
        let mut previous = 0;
        for &end in &self.attribute_ends {
            if end < previous {
                return Err(format!("attribute ends go back from {previous} to {end}"));
            }
            previous = end;
        }
        if previous as usize != attributes {
            return Err(format!(
                "events cover {previous} attributes of {attributes}"
            ));
        }
        // Every range of ASCII is UTF-8: one pass over the data spares a
        // check per text, which is most of the work for a parser's batch.
        let ascii = self.data.is_ascii();
        for (&field, &raw) in self.attribute_fields.iter().zip(&self.attribute_values) {
            let Some((name, ty)) = self.fields.get(usize::from(field)) else {
                return Err(format!(
                    "attribute field {field} outside a table of {}",
                    self.fields.len()
                ));
            };
            match ty {
                ValueType::Int => {}
                ValueType::Flag if raw == 0 || raw == 1 => {}
                ValueType::Flag => {
                    return Err(format!("flag {} is {raw}, not 0 or 1", shown(name)));
                }
                ValueType::Text | ValueType::Bytes => {
                    let range = data_range(raw);
                    let Some(bytes) = self.data.get(range.clone()) else {
                        return Err(format!(
                            "{} at {range:?} outside {} bytes of data",
                            shown(name),
                            self.data.len()
                        ));
                    };
                    if *ty == ValueType::Text && !ascii && std::str::from_utf8(bytes).is_err() {
                        return Err(format!("text {} is not UTF-8", shown(name)));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Whether `c` breaks or reorders a line where a person reads it: a control
/// character (line breaks, escape sequences, NUL, NEL), the Unicode line and
/// paragraph separators, and the bidirectional marks, embeddings, overrides
/// and isolates.
fn breaks_lines(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{061c}'
        )
        || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// A plugin's attribute name as an error message shows it: quoted, its
/// special characters escaped, and at most 64 characters of it. The message
/// ends up in the appliance's log, and the name is the plugin's choice.
fn shown(name: &str) -> String {
    const SHOWN: usize = 64;
    let mut chars = name.chars();
    let head: String = chars.by_ref().take(SHOWN).collect();
    let more = if chars.next().is_some() { "..." } else { "" };
    format!("{head:?}{more}")
}

fn index16(i: usize) -> u16 {
    u16::try_from(i).unwrap_or(u16::MAX)
}

fn index32(i: usize) -> u32 {
    // A wasm32 plugin cannot hold 4 GiB; natively this is a plugin's bug.
    u32::try_from(i).unwrap_or_else(|_| panic!("batch larger than 4 GiB"))
}

fn table_index(len: usize, what: &str) -> u16 {
    // The contract's indices are 16-bit; a batch using more distinct names
    // is a bug in the plugin, and the trap says so.
    u16::try_from(len).unwrap_or_else(|_| panic!("more than 65536 distinct {what} in one batch"))
}

impl PartialEq for Batch {
    /// Batches are equal when their events are: the same kinds with the same
    /// attributes, in the same order, however the tables are laid out.
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().zip(other.iter()).all(|(a, b)| a == b)
    }
}

impl PartialEq for EventRef<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.kind() == other.kind() && self.attributes().eq(other.attributes())
    }
}

impl fmt::Display for Value<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Text(t) => write!(f, "{t:?}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Flag(b) => write!(f, "{b}"),
            Value::Bytes(b) => {
                f.write_str("0x")?;
                b.iter().try_for_each(|byte| write!(f, "{byte:02x}"))
            }
        }
    }
}

impl fmt::Display for EventRef<'_> {
    /// `kind name=value ...`, for example `mqtt.publish topic="a/b" qos=1`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind())?;
        self.attributes()
            .try_for_each(|(name, value)| write!(f, " {name}={value}"))
    }
}

impl fmt::Debug for EventRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Debug for Batch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn publishes(n: usize) -> Batch {
        let mut batch = Batch::new();
        for i in 0..n {
            batch
                .push("mqtt.publish")
                .text("topic", &format!("t/{i}"))
                .int("qos", 1)
                .value(&format!("custom-{}", i % 40), Value::Flag(true))
                .bytes("payload", &[1, 2, 3]);
        }
        batch
    }

    #[test]
    fn texts_are_every_text_value_of_a_name_in_order() {
        let mut batch = Batch::new();
        batch.push("t.a").int("n", 1);
        batch
            .push("mqtt.subscribe")
            .text("filter", "a")
            .int("filter", 7)
            .text("other", "x")
            .text("filter", "b/#");
        let event = batch.get(1).unwrap();
        assert_eq!(event.texts("filter").collect::<Vec<_>>(), ["a", "b/#"]);
        let field = batch.field("filter");
        assert_eq!(event.texts(field).collect::<Vec<_>>(), ["a", "b/#"]);
        assert_eq!(batch.get(0).unwrap().texts("filter").count(), 0);
        assert_eq!(event.texts("absent").count(), 0);
    }

    #[test]
    fn a_field_finds_what_its_name_finds() {
        let mut batch = Batch::new();
        batch.push("t.a").text("x", "one").int("y", 1);
        // The same name with another type is another entry of the table.
        batch.push("t.b").int("x", 2).flag("z", true);
        batch.push("t.c");
        for name in ["x", "y", "z", "absent"] {
            let field = batch.field(name);
            for event in batch.iter() {
                assert_eq!(event.get(field), event.get(name), "{name}");
            }
        }
        let other = Batch::new();
        assert_eq!(batch.get(0).unwrap().get(other.field("x")), None);
    }

    #[test]
    fn names_cross_once_per_batch() {
        let batch = publishes(100);
        assert_eq!(batch.wire.kinds.len(), 1);
        assert_eq!(batch.wire.fields.len(), 3 + 40);
        assert_eq!(batch.wire.attribute_values.len(), 400);
        let event = batch.get(57).unwrap();
        assert_eq!(
            event.to_string(),
            r#"mqtt.publish topic="t/57" qos=1 custom-17=true payload=0x010203"#
        );
        assert_eq!(event.bytes("payload"), Some(&[1, 2, 3][..]));
        assert_eq!(event.flag("custom-17"), Some(true));
        assert_eq!(event.int("topic"), None, "a text attribute is not an int");
    }

    #[test]
    fn names_are_the_same_exactly_when_their_bytes_are() {
        let names: Vec<String> = (0..40)
            .map(|n| {
                "abcdefghijklmnopqrstuvwxyz0123456789-._~"
                    .chars()
                    .take(n)
                    .collect()
            })
            .collect();
        for a in &names {
            for b in &names {
                assert_eq!(same(a.as_bytes(), b.as_bytes()), a == b, "{a:?} {b:?}");
            }
            for at in 0..a.len() {
                let mut other = a.clone().into_bytes();
                other[at] ^= 0x01;
                let other = String::from_utf8(other).unwrap();
                assert!(!same(a.as_bytes(), other.as_bytes()), "{a:?} {other:?}");
            }
        }
    }

    #[test]
    fn text_is_tells_what_text_tells() {
        let texts = [
            "",
            "a",
            "site/a/telemetry",
            "site/a/telemetrx",
            "site/b/telemetry/long",
        ];
        let mut batch = Batch::new();
        for t in texts {
            batch
                .push("mqtt.publish")
                .text("topic", t)
                .bytes("payload", t.as_bytes());
        }
        batch.push("mqtt.pingreq");
        for event in batch.iter() {
            for t in texts {
                assert_eq!(
                    event.text_is("topic", t),
                    event.text("topic") == Some(t),
                    "{t:?}"
                );
                let topic = batch.field("topic");
                assert_eq!(
                    event.text_is(topic, t),
                    event.text("topic") == Some(t),
                    "{t:?}"
                );
                assert!(!event.text_is("payload", t), "bytes are not text");
            }
        }
    }

    #[test]
    fn attributes_only_some_events_have_keep_their_fields() {
        let mut batch = Batch::new();
        for i in 0..50_i64 {
            let mut event = batch.push("mqtt.publish");
            event.text("topic", "a/b").int("qos", i % 3);
            if i % 3 > 0 {
                event.int("packet-id", i);
            }
            if i % 5 == 0 {
                event.flag("retain", true);
            }
            event.size("payload-size", 10);
        }
        assert_eq!(batch.wire.fields.len(), 5);
        for (i, event) in (0..50_i64).zip(batch.iter()) {
            assert_eq!(event.int("qos"), Some(i % 3));
            assert_eq!(event.int("packet-id"), (i % 3 > 0).then_some(i));
            assert_eq!(event.flag("retain"), (i % 5 == 0).then_some(true));
            assert_eq!(event.int("payload-size"), Some(10));
            assert_eq!(
                event.attributes().count(),
                3 + usize::from(i % 3 > 0) + usize::from(i % 5 == 0)
            );
        }
    }

    #[test]
    fn a_name_with_two_types_is_two_fields() {
        let mut batch = Batch::new();
        batch.push("x.y").int("v", 1);
        batch.push("x.y").text("v", "one");
        assert_eq!(batch.wire.fields.len(), 2);
        assert_eq!(batch.get(0).unwrap().get("v"), Some(Value::Int(1)));
        assert_eq!(batch.get(1).unwrap().get("v"), Some(Value::Text("one")));
    }

    #[test]
    fn extend_copies_events_into_other_tables() {
        let mut batch = Batch::new();
        batch.push("coap.request").text("path", "/a");
        batch.extend(&publishes(3));
        assert_eq!(batch.len(), 4);
        assert_eq!(batch.get(3).unwrap().text("topic"), Some("t/2"));
        let mut expected = Batch::new();
        expected.push("coap.request").text("path", "/a");
        for e in publishes(3).iter() {
            let mut w = expected.push(e.kind());
            e.attributes().for_each(|(n, v)| {
                w.value(n, v);
            });
        }
        assert_eq!(batch, expected);
    }

    #[test]
    fn events_without_attributes_and_bad_indices_read_as_empty() {
        let mut batch = Batch::new();
        batch.push("mqtt.pingreq");
        batch.push("mqtt.publish").text("topic", "t");
        assert_eq!(batch.get(0).unwrap().attributes().count(), 0);
        assert_eq!(batch.get(1).unwrap().text("topic"), Some("t"));
        assert!(batch.get(2).is_none());

        assert_eq!(batch.columns().check(), Ok(()));
        let mut wire = batch.into_columns();
        wire.events[0] = 9;
        wire.attribute_values[0] = i64::MAX;
        assert!(wire.check().is_err());
        let broken = Batch::from_columns(wire);
        assert_eq!(broken.get(0).unwrap().kind(), "");
        assert_eq!(broken.get(1).unwrap().text("topic"), Some(""));
    }

    #[test]
    fn check_finds_every_break_of_the_layout() {
        let good = publishes(3).into_columns();
        assert_eq!(good.check(), Ok(()));
        type Ruin = fn(&mut Columns);
        let breaks: [(&str, Ruin); 8] = [
            ("kind", |c| c.events[1] = 7),
            ("field", |c| c.attribute_fields[0] = 99),
            ("ends back", |c| c.attribute_ends[1] = 1),
            ("ends short", |c| c.attribute_ends[2] = 11),
            ("values", |c| {
                c.attribute_values.pop();
            }),
            ("data", |c| c.attribute_values[0] = (1000 << 32) | 3),
            ("utf-8", |c| c.data[0] = 0xff),
            ("flag", |c| c.attribute_values[2] = 2),
        ];
        for (what, ruin) in breaks {
            let mut bad = good.clone();
            ruin(&mut bad);
            assert!(bad.check().is_err(), "{what}");
        }
    }

    /// Tables the appliance could not add its malformed event to, and names
    /// that would break a log line, are refused; a name in a message is
    /// shown escaped and short.
    #[test]
    fn check_refuses_full_tables_and_names_that_break_lines() {
        let good = publishes(1).into_columns();
        let mut full = good.clone();
        full.kinds.resize(MAX_TABLE_ENTRIES, String::new());
        assert_eq!(full.check(), Ok(()), "a table with room for the host");
        full.kinds.push(String::new());
        assert!(full.check().is_err(), "no room left for the host's kind");
        let mut full = good.clone();
        full.fields
            .resize(MAX_TABLE_ENTRIES + 1, ("x".into(), ValueType::Int));
        assert!(full.check().is_err(), "no room left for the host's fields");
        for name in [
            "a\nb",
            "a\rb",
            "\u{1b}[31m",
            "a\u{0}",
            "a\u{85}",
            "a\u{2028}",
            "a\u{202e}",
        ] {
            let mut bad = good.clone();
            bad.kinds[0] = format!("mqtt.{name}");
            assert!(bad.check().is_err(), "kind {name:?}");
            let mut bad = good.clone();
            bad.fields[0].0 = name.into();
            assert!(bad.check().is_err(), "field {name:?}");
        }
        let mut bad = good.clone();
        bad.fields[1].0 = format!("\"{}", "q".repeat(5000));
        bad.attribute_values[1] = 7;
        let qos = bad.fields[1].1;
        assert_eq!(qos, ValueType::Int);
        bad.fields[1].1 = ValueType::Flag;
        let message = bad.check().unwrap_err();
        assert!(message.starts_with("flag \"\\\"qqq"), "{message}");
        assert!(message.len() < 100, "{message}");
    }

    #[test]
    fn many_distinct_names_use_the_index() {
        let mut batch = Batch::new();
        for i in 0..1000 {
            batch
                .push(&format!("k.{}", i % 100))
                .value(&format!("f{}", i % 500), Value::Int(i));
        }
        assert_eq!(batch.wire.kinds.len(), 100);
        assert_eq!(batch.wire.fields.len(), 500);
        assert_eq!(batch.get(999).unwrap().to_string(), "k.99 f499=999");
    }
}
