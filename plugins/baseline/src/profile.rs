//! What a device, or a class of devices, normally does: a profile learnt
//! from its events, and the ways a new event can depart from it.
//!
//! A profile is kept in the plugin's key-value store in postcard's compact
//! binary form, read and written on every batch (the appliance reads it
//! too, with [`Profile::decode`], to show it as JSON, export it as policy
//! and accept a finding as normal). Every set in it is capped, every text
//! in it is short, and the whole is bounded ([`MAX_PROFILE_LEN`]): a
//! profile stays well inside one stored value, and a site's profiles share
//! the plugin's quota. What a profile could not learn is new to it once it
//! enforces.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use palisade_plugin_sdk::{Batch, EventRef, Field, KindId, Severity};
use serde::{Deserialize, Serialize};

/// Items kept per set: beyond it, a profile learns no more of that kind,
/// and what it did not learn is new to it when it enforces.
pub const MAX_ITEMS: usize = 256;

/// The longest text a profile learns (a topic, a filter, a CoAP request),
/// in bytes: the names on a site are far shorter, and a profile keeps
/// hundreds of them. Detectors see the events the policy denied too: a
/// longer name is not learnt, and once the profile enforces it is a
/// departure of its own.
pub const MAX_TEXT_LEN: usize = 256;

/// The most bytes a profile takes stored: a quarter of what the store holds
/// under one key, so that many profiles share the plugin's quota. Beyond
/// it a profile learns nothing new.
pub const MAX_PROFILE_LEN: usize = 16 << 10;

/// What the numbers of a profile may grow by, encoded, after it was
/// measured: nine varints of at most ten bytes (the mean is a float of
/// eight whatever its value). Learning leaves this much room for them.
const NUMBERS_LEN: usize = 9 * 10;

/// Bytes of a long name shown in a reason (fewer, to end on a character).
const SHOWN: usize = 32;

/// Items a reason names before it counts the rest ("and 38 more"): a
/// SUBSCRIBE may carry tens of thousands of filters, and a person reads
/// the first few.
pub const NAMED: usize = 5;

/// Bytes of a name shown in a list of [`NAMED`] (fewer, to end on a
/// character): most names on a site fit whole.
const LISTED: usize = 64;

/// The longest reason of a finding, in bytes: a few departures with their
/// names. The host caps what one call hands back (4 MiB by default) and
/// strikes a plugin that passes it, so a reason never grows with what an
/// event carries.
pub const MAX_REASON_LEN: usize = 1024;

/// A rate this many times the normal one is a burst.
pub const BURST_FACTOR: f64 = 10.0;

/// Fewer events than this in a minute are never a burst.
pub const BURST_FLOOR: u64 = 20;

/// Active minutes a profile must have learnt before it judges rates.
pub const RATE_MINUTES: u64 = 10;

/// What a device or class was seen doing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Events learnt from.
    pub events: u64,
    /// Routes used.
    pub routes: BTreeSet<String>,
    /// Event kinds sent.
    pub kinds: BTreeSet<String>,
    /// MQTT topics published to.
    pub topics: BTreeSet<String>,
    /// MQTT topic filters subscribed to, as the device sent them: a shared
    /// one with its group, `$share/{group}/{filter}`, since a group shares
    /// a filter's messages out with whoever else joins it.
    pub filters: BTreeSet<String>,
    /// Modbus function codes used.
    pub functions: BTreeSet<i64>,
    /// Modbus registers accessed, by `unit/register-type/access`, as merged
    /// ranges `[start, end)`. The access is `read` or `write`: a read/write
    /// request (function 23) is learnt as the read and the write it is.
    pub registers: BTreeMap<String, Vec<(i64, i64)>>,
    /// CoAP requests made, `METHOD path`.
    pub resources: BTreeSet<String>,
    /// Hours of the day (UTC) with activity, one bit each.
    pub hours: u32,
    /// Events per minute.
    pub rate: Rate,
    /// The largest payload seen, in bytes.
    pub max_payload: i64,
    /// Wall-clock milliseconds of the first and last event learnt.
    pub learnt_span: (u64, u64),
    /// What the profile takes encoded, as learning counts it.
    #[serde(skip)]
    len: EncodedLen,
}

/// The encoded length of a profile: measured when it first learns, then
/// counted on as it learns, so that learning tells whether an item fits
/// without encoding the profile again. It is not what a profile holds
/// (profiles that hold the same are equal, whatever they counted) and is
/// not stored: a profile changed other than by learning is measured afresh
/// once it is decoded again.
#[derive(Debug, Clone, Copy, Default)]
struct EncodedLen(Option<usize>);

impl PartialEq for EncodedLen {
    fn eq(&self, _: &EncodedLen) -> bool {
        true
    }
}

impl EncodedLen {
    /// Whether `more` bytes fit within [`MAX_PROFILE_LEN`]; if so they are
    /// counted. Nothing fits in a profile not measured.
    fn fits(&mut self, more: usize) -> bool {
        let Some(len) = self.0 else {
            return false;
        };
        let grown = len.saturating_add(more);
        let fits = grown.saturating_add(NUMBERS_LEN) <= MAX_PROFILE_LEN;
        if fits {
            self.0 = Some(grown);
        }
        fits
    }

    fn shrink(&mut self, less: usize) {
        if let Some(len) = &mut self.0 {
            *len = len.saturating_sub(less);
        }
    }
}

/// Bytes of `n` as a postcard varint.
fn varint_len(n: usize) -> usize {
    (usize::BITS - n.leading_zeros()).div_ceil(7).max(1) as usize
}

/// Bytes of `n` as postcard encodes an `i64`: zigzag, then a varint.
fn signed_len(n: i64) -> usize {
    let zigzag = (n << 1) ^ (n >> 63);
    (u64::BITS - (zigzag as u64).leading_zeros())
        .div_ceil(7)
        .max(1) as usize
}

/// Bytes of `text` encoded.
fn text_len(text: &str) -> usize {
    varint_len(text.len()) + text.len()
}

/// Bytes of `ranges` encoded.
fn ranges_len(ranges: &[(i64, i64)]) -> usize {
    let pairs: usize = (ranges.iter())
        .map(|&(start, end)| signed_len(start) + signed_len(end))
        .sum();
    varint_len(ranges.len()) + pairs
}

/// What an item of `item` bytes adds encoded to a collection of `n` items.
fn added_len(n: usize, item: usize) -> usize {
    varint_len(n + 1) - varint_len(n) + item
}

/// The learning must span this long before hours of the day are judged.
pub const HOURS_SPAN_MILLIS: u64 = 20 * 3_600_000;

/// Events per minute.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    /// The current minute (minutes since the epoch).
    pub minute: u64,
    /// Events in it so far.
    pub count: u64,
    /// Mean events per active minute, over the minutes learnt.
    pub mean: f64,
    /// Active minutes learnt.
    pub minutes: u64,
    /// The last minute a burst was reported in.
    pub reported: u64,
}

/// How an event departs from a profile.
#[derive(Debug, Clone, PartialEq)]
pub struct Novelty {
    /// How serious.
    pub severity: Severity,
    /// How sure, 0 to 1.
    pub score: f32,
    /// Why, for a person.
    pub reason: String,
}

fn novelty(severity: Severity, score: f32, reason: String) -> Novelty {
    Novelty {
        severity,
        score,
        reason,
    }
}

/// Learn `text` into `set` when it is short, the set has room and so has
/// the profile, whose encoded length is `len`. Allocates only for text not
/// yet in the set: a device mostly repeats itself.
fn insert_text(len: &mut EncodedLen, set: &mut BTreeSet<String>, text: &str) {
    if text.len() <= MAX_TEXT_LEN
        && set.len() < MAX_ITEMS
        && !set.contains(text)
        && len.fits(added_len(set.len(), text_len(text)))
    {
        set.insert(text.to_owned());
    }
}

/// As [`insert_text`], for a Modbus function code.
fn insert_function(len: &mut EncodedLen, set: &mut BTreeSet<i64>, function: i64) {
    if set.len() < MAX_ITEMS
        && !set.contains(&function)
        && len.fits(added_len(set.len(), signed_len(function)))
    {
        set.insert(function);
    }
}

/// The first `len` bytes of `text` at most, ending on a character.
fn cut(text: &str, len: usize) -> &str {
    let mut end = len.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.get(..end).unwrap_or_default()
}

/// The start of a name too long to learn, for a reason a person reads.
fn start_of(text: &str) -> &str {
    cut(text, SHOWN)
}

/// The first [`NAMED`] of some names, and how many more there are: what
/// a reason names, and what it counts ("a, b, c, d, e and 38 more").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirstNamed<'a> {
    /// The names shown, [`NAMED`] at most.
    pub shown: Vec<&'a str>,
    /// How many more there are.
    pub more: usize,
}

impl<'a> FirstNamed<'a> {
    /// The first [`NAMED`] of `names`; the rest are counted, not kept (a
    /// SUBSCRIBE may carry tens of thousands of filters).
    pub fn of(names: impl IntoIterator<Item = &'a str>) -> Self {
        let mut names = names.into_iter();
        let shown = names.by_ref().take(NAMED).collect();
        FirstNamed {
            shown,
            more: names.count(),
        }
    }

    /// How many names there are in all.
    pub fn total(&self) -> usize {
        self.shown.len().saturating_add(self.more)
    }

    /// The names shown, each cut to `longest` bytes (with an ellipsis
    /// where cut), with `separator` between them, then `before_more` and
    /// how many more there are: `a, b and 3 more` (separated by `", "`,
    /// `" "` before the count), `a; b; and 3 more` (`"; "` and `"; "`).
    pub fn list(&self, separator: &str, before_more: &str, longest: usize) -> String {
        let mut list = String::new();
        for (i, name) in self.shown.iter().enumerate() {
            if i > 0 {
                list.push_str(separator);
            }
            let start = cut(name, longest);
            list.push_str(start);
            if start.len() < name.len() {
                list.push('…');
            }
        }
        if self.more > 0 {
            let _ = write!(list, "{before_more}and {} more", self.more);
        }
        list
    }
}

/// `reason` cut to [`MAX_REASON_LEN`] bytes, on a character, with an
/// ellipsis when it was cut.
pub fn bounded(mut reason: String) -> String {
    if reason.len() > MAX_REASON_LEN {
        let end = cut(&reason, MAX_REASON_LEN - '…'.len_utf8()).len();
        reason.truncate(end);
        reason.push('…');
    }
    reason
}

/// The kinds and attributes a profile reads, looked up once in a batch so
/// that reading them from each event compares numbers, not strings.
#[derive(Debug, Clone, Copy)]
pub struct Names {
    publish: KindId,
    subscribe: KindId,
    coap_request: KindId,
    coap_response: KindId,
    topic: Field,
    filter: Field,
    subscription: Field,
    payload_size: Field,
    function: Field,
    unit: Field,
    register_type: Field,
    access: Field,
    address: Field,
    count: Field,
    write_address: Field,
    write_count: Field,
    method: Field,
    path: Field,
}

impl Names {
    /// The names as `batch` holds them.
    pub fn of(batch: &Batch) -> Names {
        Names {
            publish: batch.kind_id("mqtt.publish"),
            subscribe: batch.kind_id("mqtt.subscribe"),
            coap_request: batch.kind_id("coap.request"),
            coap_response: batch.kind_id("coap.response"),
            topic: batch.field("topic"),
            filter: batch.field("filter"),
            subscription: batch.field("subscription"),
            payload_size: batch.field("payload-size"),
            function: batch.field("function"),
            unit: batch.field("unit"),
            register_type: batch.field("register-type"),
            access: batch.field("access"),
            address: batch.field("address"),
            count: batch.field("count"),
            write_address: batch.field("write-address"),
            write_count: batch.field("write-count"),
            method: batch.field("method"),
            path: batch.field("path"),
        }
    }

    /// The payload size of `event`, for the kinds that carry a payload.
    pub fn payload_size(&self, event: &EventRef<'_>) -> Option<i64> {
        let kind = event.kind_id();
        if kind == self.publish || kind == self.coap_request || kind == self.coap_response {
            event.int(self.payload_size)
        } else {
            None
        }
    }

    /// Whether `event` is a Modbus one. Publishes, the most common, are
    /// told without looking at the kind's text.
    fn modbus(&self, event: &EventRef<'_>) -> bool {
        event.kind_id() != self.publish && event.kind().starts_with("modbus.")
    }
}

/// A register access: `(unit/type/access, start, end)`, the access `read`
/// or `write`.
type Access = (String, i64, i64);

/// The register accesses of a Modbus event: its one access, or for a
/// read/write multiple registers (function 23, access `read-write`) its
/// read of `address`/`count` and its write of `write-address`/`write-count`,
/// each learnt and judged as what it is.
fn register_accesses(event: &EventRef<'_>, names: &Names) -> [Option<Access>; 2] {
    let (Some(unit), Some(register_type), Some(access)) = (
        event.int(names.unit),
        event.text(names.register_type),
        event.text(names.access),
    ) else {
        return [None, None];
    };
    let range = |address: Field, count: Field| {
        let address = event.int(address)?;
        let count = event.int(count)?.max(1);
        Some((address, address.saturating_add(count)))
    };
    let key = |access: &str| format!("{unit}/{register_type}/{access}");
    let both = access == "read-write";
    let first = range(names.address, names.count)
        .map(|(start, end)| (key(if both { "read" } else { access }), start, end));
    // A response to one has the read alone.
    let write = both
        .then(|| range(names.write_address, names.write_count))
        .flatten()
        .map(|(start, end)| (key("write"), start, end));
    [first, write]
}

/// `holding-registers 40-49 on unit 1`, for a person.
fn span(event: &EventRef<'_>, names: &Names, start: i64, end: i64) -> String {
    let what = event.text(names.register_type).unwrap_or("register");
    let unit = event.int(names.unit).unwrap_or_default();
    if end - start > 1 {
        format!("{what} {start}-{} on unit {unit}", end - 1)
    } else {
        format!("{what} {start} on unit {unit}")
    }
}

/// What a profile's sets learn from `event` besides its route: its kind
/// and, for a publish, its topic. `None` for the kinds that carry more
/// (subscriptions, CoAP requests, Modbus), which are always learnt whole.
/// Two events with one signature on one route teach a profile the same:
/// the second only counts. A device mostly repeats itself.
pub fn signature<'a>(event: &EventRef<'a>, names: &Names) -> Option<(KindId, Option<&'a str>)> {
    let kind = event.kind_id();
    if kind == names.publish {
        Some((kind, event.text(names.topic)))
    } else if kind == names.subscribe || kind == names.coap_request || names.modbus(event) {
        None
    } else {
        Some((kind, None))
    }
}

/// Whether `event` has `signature`: `signature(event) == Some(signature)`,
/// quicker, as the topic is compared without being decoded. Most events
/// have the signature of the one before.
pub fn has_signature(
    event: &EventRef<'_>,
    names: &Names,
    (kind, topic): (KindId, Option<&str>),
) -> bool {
    // A kind other than a publish that has a signature has only its kind.
    event.kind_id() == kind
        && (kind != names.publish
            || match topic {
                Some(topic) => event.text_is(names.topic, topic),
                None => event.text(names.topic).is_none(),
            })
}

/// Whether `[start, end)` lies within `ranges`.
fn covered(ranges: &[(i64, i64)], start: i64, end: i64) -> bool {
    ranges.iter().any(|&(s, e)| s <= start && end <= e)
}

/// `ranges` with `[start, end)` added, merging what touches.
fn with_range(ranges: &[(i64, i64)], start: i64, end: i64) -> Vec<(i64, i64)> {
    let mut all = Vec::with_capacity(ranges.len() + 1);
    all.extend_from_slice(ranges);
    all.push((start, end));
    all.sort_unstable();
    let mut merged: Vec<(i64, i64)> = Vec::with_capacity(all.len());
    for (s, e) in all {
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    merged.truncate(MAX_ITEMS);
    merged
}

/// The filters of a subscription as the device sent them: its
/// `subscription`s, or its `filter`s from a parser that gives no
/// `subscription` (one from before it did).
fn filters<'a>(event: &EventRef<'a>, names: &Names) -> impl Iterator<Item = &'a str> + 'a {
    let sent = event.get(names.subscription).is_some();
    event.texts(if sent {
        names.subscription
    } else {
        names.filter
    })
}

fn resource(event: &EventRef<'_>, names: &Names) -> Option<String> {
    Some(format!(
        "{} {}",
        event.text(names.method)?,
        event.text(names.path)?
    ))
}

impl Profile {
    /// The profile stored as `bytes`; `None` when they are not one (a
    /// damaged value, or one a different version of the profile wrote).
    pub fn decode(bytes: &[u8]) -> Option<Profile> {
        postcard::from_bytes(bytes).ok()
    }

    /// The profile as it is stored.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// Learn `event`, sent on `route` at wall-clock `millis`; `names` are
    /// those of its batch.
    pub fn learn(&mut self, route: &str, event: &EventRef<'_>, names: &Names, millis: u64) {
        if self.len.0.is_none() {
            // Unmeasured, nothing fits: a profile that cannot be encoded
            // learns nothing new.
            let measured = postcard::experimental::serialized_size(self).ok();
            self.len = EncodedLen(measured);
        }
        let len = &mut self.len;
        insert_text(len, &mut self.routes, route);
        insert_text(len, &mut self.kinds, event.kind());
        // Only the attributes this kind has are looked up.
        let kind = event.kind_id();
        if kind == names.publish {
            if let Some(topic) = event.text(names.topic) {
                insert_text(len, &mut self.topics, topic);
            }
        } else if kind == names.subscribe {
            for filter in filters(event, names) {
                insert_text(len, &mut self.filters, filter);
            }
        } else if kind == names.coap_request {
            if let Some(r) = resource(event, names) {
                insert_text(len, &mut self.resources, &r);
            }
        } else if names.modbus(event) {
            if let Some(function) = event.int(names.function) {
                insert_function(len, &mut self.functions, function);
            }
            for (key, start, end) in register_accesses(event, names).into_iter().flatten() {
                self.learn_range(key, start, end);
            }
        }
        self.learn_again(names.payload_size(event), millis);
    }

    /// Learn the access `[start, end)` to the registers `key`, when the
    /// profile has room for it.
    fn learn_range(&mut self, key: String, start: i64, end: i64) {
        let ranges = self.registers.get(&key);
        if ranges.is_some_and(|r| covered(r, start, end)) {
            return;
        }
        let merged = with_range(ranges.map_or(&[], Vec::as_slice), start, end);
        let fits = match ranges {
            None => {
                self.registers.len() < MAX_ITEMS
                    && self.len.fits(added_len(
                        self.registers.len(),
                        text_len(&key) + ranges_len(&merged),
                    ))
            }
            Some(ranges) => {
                let (was, is) = (ranges_len(ranges), ranges_len(&merged));
                if is > was {
                    self.len.fits(is - was)
                } else {
                    self.len.shrink(was - is);
                    true
                }
            }
        };
        if fits {
            self.registers.insert(key, merged);
        }
    }

    /// Learn an event with the [`signature`] of the event learnt last on
    /// the same route, and a payload of `payload_size` bytes
    /// ([`Names::payload_size`]): only the counts, the hour and the payload
    /// size can be new.
    pub fn learn_again(&mut self, payload_size: Option<i64>, millis: u64) {
        if self.events == 0 {
            self.learnt_span.0 = millis;
        }
        self.learnt_span.1 = self.learnt_span.1.max(millis);
        self.events += 1;
        self.hours |= 1 << hour(millis);
        if let Some(size) = payload_size {
            self.max_payload = self.max_payload.max(size);
        }
        self.count(millis, true);
    }

    /// Count an event at `millis` in the per-minute rate; a finished minute
    /// joins the mean when `learning`. Returns the current minute's count.
    pub fn count(&mut self, millis: u64, learning: bool) -> u64 {
        let minute = millis / 60_000;
        let rate = &mut self.rate;
        if minute != rate.minute {
            if learning && rate.count > 0 {
                let n = rate.minutes as f64;
                rate.mean = (rate.mean * n + rate.count as f64) / (n + 1.0);
                rate.minutes += 1;
            }
            rate.minute = minute;
            rate.count = 0;
        }
        rate.count += 1;
        rate.count
    }

    /// How `event`, sent by `who` on `route` at `millis`, departs from this
    /// profile. `own` says the profile is the device's own: it is then held
    /// to everything, its rate included (the caller counts the event
    /// first). A class's profile judges a device of the class only on what
    /// the class shares: routes, kinds, Modbus functions, and whether it
    /// ever writes a kind of register; not on each device's own topics,
    /// ranges or hours.
    pub fn check(
        &self,
        who: &str,
        route: &str,
        event: &EventRef<'_>,
        names: &Names,
        millis: u64,
        own: bool,
    ) -> Vec<Novelty> {
        let mut found = Vec::new();
        let n = self.events;
        let kind = event.kind();
        if !self.routes.contains(route) {
            found.push(novelty(
                Severity::High,
                0.85,
                format!("{who} used route {route}, never seen in {n} events"),
            ));
        } else if !self.kinds.contains(kind) {
            found.push(novelty(
                Severity::Medium,
                0.7,
                format!("{who} sent {kind}, never seen in {n} events"),
            ));
        }
        let modbus = names.modbus(event);
        let accesses = || register_accesses(event, names).into_iter().flatten();
        if !own {
            if let Some((_, start, end)) = accesses()
                .filter(|_| modbus)
                .find(|(key, ..)| key.ends_with("/write") && !self.registers.contains_key(key))
            {
                found.push(novelty(
                    Severity::High,
                    0.85,
                    format!(
                        "{who} wrote {}, which its class never writes",
                        span(event, names, start, end)
                    ),
                ));
            }
            return found;
        }
        if let Some(topic) = event
            .text(names.topic)
            .filter(|_| event.kind_id() == names.publish)
            && !self.topics.contains(topic)
        {
            // Flagged even when the profile holds all the topics it may:
            // what it could not learn is new to it.
            found.push(novelty(
                Severity::Medium,
                0.7,
                if topic.len() > MAX_TEXT_LEN {
                    format!(
                        "{who} published to a {}-byte topic ({}…), longer than any it learns",
                        topic.len(),
                        start_of(topic)
                    )
                } else {
                    format!("{who} published to {topic}, a topic it never used")
                },
            ));
        }
        if event.kind_id() == names.subscribe {
            // One departure for all the new filters, however many: the
            // first few named, the rest counted.
            let new = FirstNamed::of(filters(event, names).filter(|f| !self.filters.contains(*f)));
            let reason = match (new.shown.as_slice(), new.more) {
                ([], _) => None,
                ([filter], 0) if filter.len() > MAX_TEXT_LEN => Some(format!(
                    "{who} subscribed to a {}-byte filter ({}…), longer than any it learns",
                    filter.len(),
                    start_of(filter)
                )),
                ([filter], 0) => Some(format!(
                    "{who} subscribed to {filter}, a filter it never used"
                )),
                _ => Some(format!(
                    "{who} subscribed to {} filters it never used: {}",
                    new.total(),
                    new.list(", ", " ", LISTED)
                )),
            };
            if let Some(reason) = reason {
                found.push(novelty(Severity::Medium, 0.7, reason));
            }
        }
        if let Some(function) = event.int(names.function).filter(|_| modbus)
            && !self.functions.contains(&function)
        {
            found.push(novelty(
                Severity::High,
                0.8,
                format!("{who} used Modbus function {function}, never seen in {n} events"),
            ));
        }
        for (key, start, end) in accesses().filter(|_| modbus) {
            let known = self
                .registers
                .get(&key)
                .is_some_and(|r| covered(r, start, end));
            if !known {
                let written = key.strip_suffix("/write");
                let only_read = written.is_some_and(|unit_type| {
                    self.registers
                        .get(&format!("{unit_type}/read"))
                        .is_some_and(|r| covered(r, start, end))
                });
                let span = span(event, names, start, end);
                found.push(if only_read {
                    novelty(
                        Severity::High,
                        0.9,
                        format!("{who} wrote {span}, which it only ever read"),
                    )
                } else if written.is_some() {
                    novelty(
                        Severity::High,
                        0.85,
                        format!("{who} wrote {span}, which it never accessed"),
                    )
                } else {
                    novelty(
                        Severity::Medium,
                        0.6,
                        format!("{who} read {span}, outside what it reads"),
                    )
                });
            }
        }
        if event.kind_id() == names.coap_request
            && let Some(r) = resource(event, names)
            && !self.resources.contains(&r)
        {
            found.push(novelty(
                Severity::Medium,
                0.7,
                match (r.len() > MAX_TEXT_LEN, r.split_once(' ')) {
                    (true, Some((method, path))) => format!(
                        "{who} requested {method} on a {}-byte path ({}…), longer than any it learns",
                        path.len(),
                        start_of(path)
                    ),
                    _ => format!("{who} requested {r}, never seen in {n} events"),
                },
            ));
        }
        self.check_counts(who, event, names, millis, &mut found);
        found
    }

    /// How `event` departs from this profile in what [`Profile::check`]
    /// judges of it besides its [`signature`]: the hour, the payload size
    /// and, for the device's own profile, the rate. For an event with the
    /// signature of the last one checked, when that one departed in
    /// nothing: the rest would be the same again.
    pub fn check_again(
        &self,
        who: &str,
        event: &EventRef<'_>,
        names: &Names,
        millis: u64,
    ) -> Vec<Novelty> {
        let mut found = Vec::new();
        self.check_counts(who, event, names, millis, &mut found);
        found
    }

    fn check_counts(
        &self,
        who: &str,
        event: &EventRef<'_>,
        names: &Names,
        millis: u64,
        found: &mut Vec<Novelty>,
    ) {
        let h = hour(millis);
        let daylong = self.learnt_span.1.saturating_sub(self.learnt_span.0) >= HOURS_SPAN_MILLIS;
        if daylong && self.hours & (1 << h) == 0 {
            found.push(novelty(
                Severity::Low,
                0.5,
                format!("{who} active at {h:02}h UTC, an hour it never was"),
            ));
        }
        if let Some(size) = event.int(names.payload_size)
            && size > 1024
            && size > self.max_payload.saturating_mul(10)
        {
            found.push(novelty(
                Severity::Medium,
                0.6,
                format!(
                    "{who} sent a {size}-byte payload, over ten times its largest ({})",
                    self.max_payload
                ),
            ));
        }
        let count = self.rate.count;
        let normal = self.rate.mean.max(1.0);
        if self.rate.reported != self.rate.minute
            && self.rate.minutes >= RATE_MINUTES
            && count >= BURST_FLOOR
            && count as f64 > BURST_FACTOR * normal
        {
            found.push(novelty(
                Severity::High,
                0.8,
                format!(
                    "{who} sent {count} events this minute, {:.0} times its normal {normal:.1}",
                    count as f64 / normal
                ),
            ));
        }
    }

    /// The profile as Cedar policy that permits what it holds for the
    /// principals of `scope` (for example `principal == Device::"plc-4"` or
    /// `principal in Class::"plc"`), for a person to review and adopt.
    pub fn to_policy(&self, scope: &str, label: &str) -> String {
        let mut out = format!(
            "// What {label} did in {} events, as learnt by the baseline detector.\n",
            self.events
        );
        let quoted = |s: &str| format!("{s:?}");
        let mut permit = |id: String, action: &str, when: Option<String>| {
            let _ = write!(
                out,
                "\n@id({})\npermit({scope}, action == Action::{}, resource)",
                quoted(&id),
                quoted(action)
            );
            match when {
                Some(w) => {
                    let _ = writeln!(out, "\nwhen {{ {w} }};");
                }
                None => out.push_str(";\n"),
            }
        };
        // Kinds permitted by what they carry, below.
        let covered_kinds = [
            "mqtt.publish",
            "modbus.read",
            "modbus.write",
            "modbus.read-write",
            "coap.request",
        ];
        // Nothing learnt is nothing permitted (and Cedar refuses an empty
        // set literal).
        let filters = (!self.filters.is_empty()).then(|| {
            let filters: Vec<String> = self.filters.iter().map(|f| quoted(f)).collect();
            format!("[{}].containsAll(context.subscription)", filters.join(", "))
        });
        let functions = (!self.functions.is_empty()).then(|| {
            let functions: Vec<String> = self.functions.iter().map(i64::to_string).collect();
            format!("[{}].contains(context.function)", functions.join(", "))
        });
        for kind in self
            .kinds
            .iter()
            .filter(|k| !covered_kinds.contains(&k.as_str()))
        {
            // A subscription may be to the filters seen; any other Modbus
            // event may carry the functions seen.
            let when = if kind == "mqtt.subscribe" {
                match &filters {
                    Some(filters) => Some(filters.clone()),
                    None => continue,
                }
            } else if kind.starts_with("modbus.") {
                match &functions {
                    Some(functions) => Some(functions.clone()),
                    None => continue,
                }
            } else {
                None
            };
            permit(format!("{label}: {kind}"), kind, when);
        }
        for topic in &self.topics {
            permit(
                format!("{label}: publish to {topic}"),
                "mqtt.publish",
                Some(format!("context.topic == {}", quoted(topic))),
            );
        }
        for (key, ranges) in &self.registers {
            let mut parts = key.splitn(3, '/');
            let (Some(unit), Some(register_type), Some(access)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let action = match access {
                "read" => "modbus.read",
                "write" => "modbus.write",
                // A `read-write` range is what an earlier baseline learnt of
                // function 23, its read alone: a permit made of it would let
                // the function write anything.
                _ => continue,
            };
            for &(start, end) in ranges {
                permit(
                    format!(
                        "{label}: {access} {register_type} {start}-{} on unit {unit}",
                        end - 1
                    ),
                    action,
                    Some(format!(
                        "context.unit == {unit} && context[\"register-type\"] == {} && context.address >= {start} && context.address + context.count <= {end}",
                        quoted(register_type)
                    )),
                );
            }
        }
        // Function 23 reads and writes in one request: it may read what
        // was read and write what was written, on one unit's registers of
        // one type.
        if self.kinds.contains("modbus.read-write") {
            let within = |address: &str, count: &str, ranges: &[(i64, i64)]| {
                let ranges: Vec<String> = (ranges.iter())
                    .map(|(start, end)| {
                        format!("{address} >= {start} && {address} + {count} <= {end}")
                    })
                    .collect();
                ranges.join(" || ")
            };
            for (key, reads) in &self.registers {
                let Some(unit_type) = key.strip_suffix("/read") else {
                    continue;
                };
                let (Some((unit, register_type)), Some(writes)) = (
                    unit_type.split_once('/'),
                    self.registers.get(&format!("{unit_type}/write")),
                ) else {
                    continue;
                };
                permit(
                    format!("{label}: read and write {register_type} on unit {unit}"),
                    "modbus.read-write",
                    Some(format!(
                        "context.unit == {unit} && context[\"register-type\"] == {} && ({}) && context has \"write-address\" && context has \"write-count\" && ({})",
                        quoted(register_type),
                        within("context.address", "context.count", reads),
                        within(
                            "context[\"write-address\"]",
                            "context[\"write-count\"]",
                            writes
                        ),
                    )),
                );
            }
        }
        for r in &self.resources {
            let Some((method, path)) = r.split_once(' ') else {
                continue;
            };
            permit(
                format!("{label}: {r}"),
                "coap.request",
                Some(format!(
                    "context.method == {} && context.path == {}",
                    quoted(method),
                    quoted(path)
                )),
            );
        }
        out
    }
}

/// The hour of the day, UTC, of wall-clock `millis`.
pub fn hour(millis: u64) -> u32 {
    ((millis / 3_600_000) % 24) as u32
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    /// What the numbers of `profile` take encoded, with its sets empty.
    fn numbers_len(profile: &Profile) -> usize {
        let numbers = Profile {
            events: profile.events,
            hours: profile.hours,
            rate: profile.rate.clone(),
            max_payload: profile.max_payload,
            learnt_span: profile.learnt_span,
            ..Profile::default()
        };
        numbers.encode().len()
    }

    fn read(batch: &mut Batch, unit: i64, function: i64, address: i64, count: i64) {
        batch
            .push("modbus.read")
            .int("unit", unit)
            .int("function", function)
            .text("access", "read")
            .text("register-type", "holding-register")
            .int("address", address)
            .int("count", count);
    }

    #[test]
    fn learning_counts_what_the_profile_takes_encoded() {
        let mut batch = Batch::new();
        for i in 0..200_i64 {
            // Texts either side of a one-byte length, sets past 128 items.
            let long = if i % 10 == 0 { 130 } else { i as usize % 20 };
            let topic = format!("t/{i}/{}", "x".repeat(long));
            batch
                .push("mqtt.publish")
                .text("topic", &topic)
                .int("payload-size", i * 1000);
            // Ranges on many units; functions and addresses of every
            // varint size.
            let function = [3, -1, 1 << 40, i][i as usize % 4];
            let address = (i * 37) % 300 * [1, 1000][i as usize % 2];
            read(&mut batch, i % 7, function, address, 1 + i % 5);
        }
        // Ranges that extend, then merge into fewer.
        for address in [0, 2, 4, 6, 8, 1, 3, 5, 7, 100_000, 99_999] {
            read(&mut batch, 9, 3, address, 1);
        }
        let names = Names::of(&batch);
        let mut profile = Profile::default();
        let numbers_before = numbers_len(&profile);
        for (i, event) in batch.iter().enumerate() {
            profile.learn("r", &event, &names, 1_000 + 60_000 * i as u64);
            // The sets are counted exactly; the numbers are left room for.
            let counted = profile.len.0.unwrap() - numbers_before;
            let encoded = profile.encode().len() - numbers_len(&profile);
            assert_eq!(counted, encoded, "event {i}");
            assert!(numbers_len(&profile) - numbers_before <= NUMBERS_LEN);
        }
        assert!(profile.topics.len() > 128 && profile.registers.len() == 8);
        assert_eq!(
            profile.registers["9/holding-register/read"],
            [(0, 9), (99_999, 100_001)]
        );
    }

    #[test]
    fn lengths_are_postcards() {
        for n in [0, 1, 127, 128, 16_383, 16_384, u32::MAX as usize] {
            assert_eq!(
                varint_len(n),
                postcard::to_allocvec(&n).unwrap().len(),
                "{n}"
            );
        }
        for n in [0, -1, 63, -64, 64, -65, 1 << 40, i64::MIN, i64::MAX] {
            assert_eq!(
                signed_len(n),
                postcard::to_allocvec(&n).unwrap().len(),
                "{n}"
            );
        }
    }

    #[test]
    fn a_list_names_the_first_few_each_cut_and_counts_the_rest() {
        let long = "é".repeat(40);
        let named = FirstNamed::of(["a", long.as_str(), "c", "d", "e", "f", "g"]);
        assert_eq!(named.total(), 7);
        assert_eq!(
            named.list(", ", " ", LISTED),
            format!("a, {}…, c, d, e and 2 more", "é".repeat(32))
        );
        assert_eq!(
            named.list("; ", "; ", usize::MAX),
            format!("a; {long}; c; d; e; and 2 more")
        );
        assert_eq!(FirstNamed::of(["a", "b"]).list(", ", " ", LISTED), "a, b");
    }
}
