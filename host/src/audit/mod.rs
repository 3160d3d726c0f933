//! The audit trail: every finding and every action, recorded durably with
//! the device's identity, the event, and the plugin that produced it, then
//! exported to the site's SIEM.
//!
//! Records go to a sled tree under increasing identifiers. Each export sink
//! keeps a cursor, the last identifier it delivered, in the same database;
//! an exporter sends what lies after its cursor and moves the cursor only
//! once the sink has accepted it. So a SIEM that is down loses nothing: the
//! records wait on disk, and the exporter retries with backoff until the
//! SIEM takes them, in order, each once. The log is the exporters' buffer;
//! [`AuditLog::backlog`] says how far each sink is behind.
//!
//! The log is bounded ([`Retention`], the `[audit]` settings): the writer
//! thread prunes it every minute down to `max-records`, removing only
//! records every sink has delivered; only when a sink is so far behind that
//! the log passes `max-backlog` do the oldest records go undelivered, with
//! a warning saying how many ([`AuditLog::dropped`]). A
//! record that cannot be read back is skipped with a warning and counted
//! ([`AuditLog::damaged`]): it stops no exporter and no listing.

pub mod export;
pub mod format;
mod queue;

pub use queue::AuditQueue;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::plugins::{Action, EventRef, Finding, Session, Severity, Value};
use crate::store::{Store, StoreError};

const RECORDS: &str = "audit/records";
const CURSORS: &str = "audit/cursors";

/// Why the audit trail failed.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The state database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The state database failed.
    #[error("audit trail: {0}")]
    Sled(#[from] sled::Error),
    /// A stored record could not be read back.
    #[error("audit record {id} is damaged: {reason}")]
    Damaged {
        /// The record's identifier.
        id: u64,
        /// What is wrong.
        reason: String,
    },
}

/// The device a record is about, as its certificate proved it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceRef {
    /// Device identifier.
    pub id: String,
    /// Device class.
    pub class: String,
    /// Network zone.
    pub zone: String,
}

/// The plugin that produced a record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PluginRef {
    /// Plugin name.
    pub name: String,
    /// Plugin version, where known.
    pub version: Option<String>,
}

/// The event a record is about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    /// The event's kind, for example `mqtt.publish`.
    pub kind: String,
    /// Its attributes, as JSON values (bytes as hex).
    pub attributes: serde_json::Map<String, serde_json::Value>,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "type")]
pub enum What {
    /// A detector's finding.
    Finding {
        /// How serious.
        severity: String,
        /// Score between 0 and 1.
        score: f32,
        /// Why, for a person.
        reason: String,
    },
    /// An action a responder asked for, and what the host did.
    Action {
        /// The action, for example `quarantine-device`.
        action: String,
        /// Its detail (an alert's message, a frame index), if any.
        detail: Option<String>,
    },
    /// A request an operator made on the HTTPS admin API or the admin
    /// socket, and how it ended. The record's device is the one the
    /// request is about (none: an empty id), its route `admin`, its session
    /// 0, its plugin unnamed.
    OperatorAction {
        /// The operator, as their certificate names them (on the admin
        /// socket: `local user UID`).
        operator: String,
        /// Their role: `viewer`, `operator` or `admin`.
        role: String,
        /// The request, as its JSON `op` says, for example `quarantine`.
        request: String,
        /// Its arguments, without public keys, each string cut short.
        arguments: serde_json::Map<String, serde_json::Value>,
        /// `ok`, or `refused`: not allowed, or executed and refused.
        outcome: String,
        /// Why it was refused.
        reason: Option<String>,
    },
}

/// One audit record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Identifier, increasing in the order records were written.
    pub id: u64,
    /// When, in RFC 3339, UTC.
    pub time: String,
    /// The device.
    pub device: DeviceRef,
    /// The session, unique while the appliance runs.
    pub session: u64,
    /// The route's name.
    pub route: String,
    /// The plugin that raised it.
    pub plugin: PluginRef,
    /// The event, where there is one: shared with the other records about
    /// it until they are written.
    #[serde(default, with = "shared_event")]
    pub event: Option<Arc<EventRecord>>,
    /// The finding or action.
    pub what: What,
}

/// A record's event as its JSON has it, inline: shared in memory, written
/// out whole in each record.
mod shared_event {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::EventRecord;

    pub fn serialize<S: Serializer>(
        event: &Option<Arc<EventRecord>>,
        to: S,
    ) -> Result<S::Ok, S::Error> {
        event.as_deref().serialize(to)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        from: D,
    ) -> Result<Option<Arc<EventRecord>>, D::Error> {
        Ok(Option::<EventRecord>::deserialize(from)?.map(Arc::new))
    }
}

impl Record {
    /// The severity the record carries for a SIEM: a finding's own; for an
    /// action, by how much it changes.
    pub fn severity(&self) -> Severity {
        match &self.what {
            What::Finding { severity, .. } => match severity.as_str() {
                "critical" => Severity::Critical,
                "high" => Severity::High,
                "medium" => Severity::Medium,
                "low" => Severity::Low,
                _ => Severity::Info,
            },
            What::Action { action, .. } => match action.as_str() {
                "quarantine-device" => Severity::Critical,
                "close-session" | "drop-frame" => Severity::High,
                "alert" => Severity::Medium,
                _ => Severity::Info,
            },
            // A refusal may be a credential probing what it may do.
            What::OperatorAction { outcome, .. } => match outcome.as_str() {
                "ok" => Severity::Low,
                _ => Severity::Medium,
            },
        }
    }
}

/// A finding or action about to be recorded, before it has an identifier
/// and a time.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The device, session and route.
    pub session: Session,
    /// The plugin.
    pub plugin: PluginRef,
    /// The event: one record of it, shared by every entry about it.
    pub event: Option<Arc<EventRecord>>,
    /// The finding or action.
    pub what: What,
}

impl Entry {
    /// The entry for `finding`, raised by `plugin` on `event` of `session`.
    pub fn finding(
        session: &Session,
        plugin: PluginRef,
        event: Option<EventRef<'_>>,
        finding: &Finding,
    ) -> Self {
        let event = event.map(|e| Arc::new(event_record(e)));
        Entry::finding_about(session, plugin, event, finding)
    }

    /// The entry for `finding`, raised by `plugin` on the event recorded as
    /// `event`, which other entries may share.
    pub fn finding_about(
        session: &Session,
        plugin: PluginRef,
        event: Option<Arc<EventRecord>>,
        finding: &Finding,
    ) -> Self {
        Entry {
            session: session.clone(),
            plugin,
            event,
            what: What::Finding {
                severity: severity_name(finding.severity).to_owned(),
                // A non-finite score would be stored as `null` and never
                // read back.
                score: crate::plugins::score_in_range(finding.score),
                reason: finding.reason.clone(),
            },
        }
    }

    /// The entry for `action`, asked for by `plugin` on `session`, about
    /// the event recorded as `event`, which other entries may share.
    pub fn action(
        session: &Session,
        plugin: PluginRef,
        event: Option<Arc<EventRecord>>,
        action: &Action,
    ) -> Self {
        let (action, detail) = match action {
            Action::Allow => ("allow", None),
            Action::Alert(message) => ("alert", Some(message.clone())),
            Action::DropFrame(i) => ("drop-frame", Some(i.to_string())),
            Action::CloseSession => ("close-session", None),
            Action::QuarantineDevice => ("quarantine-device", None),
        };
        Entry {
            session: session.clone(),
            plugin,
            event,
            what: What::Action {
                action: action.to_owned(),
                detail,
            },
        }
    }
}

/// The name of a severity, as records and exports spell it.
pub fn severity_name(severity: Severity) -> &'static str {
    match severity {
        Severity::Info => "info",
        Severity::Low => "low",
        Severity::Medium => "medium",
        Severity::High => "high",
        Severity::Critical => "critical",
    }
}

/// An event as a record holds it.
pub fn event_record(event: EventRef<'_>) -> EventRecord {
    EventRecord {
        kind: event.kind().to_owned(),
        attributes: attributes_json(event),
    }
}

/// An event's attributes as a JSON object: bytes in hex, and a name that
/// repeats (several SUBSCRIBE filters) as an array. A text-set of the
/// vocabulary (`filter`, `subscription`, `share-group`, `user-property`) is an array even
/// when it holds one value, so that a SIEM finds the field of one shape in
/// every record.
pub fn attributes_json(event: EventRef<'_>) -> serde_json::Map<String, serde_json::Value> {
    use crate::policy::vocabulary::{self, Type};
    use serde_json::Value as Json;
    let sets: Vec<&str> = vocabulary::find(event.kind())
        .into_iter()
        .flat_map(|kind| kind.attributes())
        .filter(|((_, ty), _)| *ty == Type::TextSet)
        .map(|((name, _), _)| name)
        .collect();
    let mut attributes = serde_json::Map::new();
    for (name, value) in event.attributes() {
        let value = match value {
            Value::Text(t) => Json::from(t),
            Value::Int(i) => Json::from(i),
            Value::Flag(f) => Json::from(f),
            Value::Bytes(b) => Json::from(b.iter().map(|b| format!("{b:02x}")).collect::<String>()),
        };
        match attributes.get_mut(name) {
            Some(Json::Array(values)) => values.push(value),
            Some(first) => *first = Json::Array(vec![first.take(), value]),
            None if sets.contains(&name) => {
                attributes.insert(name.to_owned(), Json::Array(vec![value]));
            }
            None => {
                attributes.insert(name.to_owned(), value);
            }
        }
    }
    attributes
}

/// The audit trail in the state database. Open it once per store and
/// share clones: the clones share the lock that keeps identifiers in order.
#[derive(Debug, Clone)]
pub struct AuditLog {
    store: Store,
    records: sled::Tree,
    cursors: sled::Tree,
    shared: Arc<Shared>,
}

/// What the clones of one [`AuditLog`] share.
#[derive(Debug, Default)]
struct Shared {
    /// Held from taking identifiers until their records are in the tree.
    /// Identifiers then become visible in increasing order: an exporter
    /// that has read record `n` never sees a record below `n` appear after
    /// it, which it would skip for good. It guards the number and size of
    /// the records in the tree, counted at the first prune (`None` before),
    /// for the same reason: no append may slip past the count.
    appending: Mutex<Option<Totals>>,
    /// Woken after each append.
    appended: tokio::sync::Notify,
    /// The damaged records readers have skipped.
    damaged: Mutex<Damaged>,
    /// Records pruned before every sink had them.
    dropped: AtomicU64,
    /// Test builds: writes made to fail, as a full disk fails them. sled
    /// keeps its first write error until the database is reopened, so no
    /// real disk fault fails one write and lets the next one through.
    #[cfg(test)]
    failing: Failing,
}

/// How many of the next writes of each kind fail, in test builds.
#[cfg(test)]
#[derive(Debug, Default)]
pub(crate) struct Failing {
    /// Putting records in the tree.
    pub(crate) inserts: std::sync::atomic::AtomicU32,
    /// Flushing them to disk.
    pub(crate) flushes: std::sync::atomic::AtomicU32,
    /// Moving a sink's cursor.
    pub(crate) cursors: std::sync::atomic::AtomicU32,
}

#[cfg(test)]
impl Failing {
    /// Fail, if `count` says the next write of its kind fails.
    fn check(count: &std::sync::atomic::AtomicU32) -> Result<(), AuditError> {
        match count.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)) {
            Ok(_) => Err(AuditError::Sled(sled::Error::Io(std::io::Error::other(
                "injected write failure",
            )))),
            Err(_) => Ok(()),
        }
    }
}

/// How much of the audit trail is kept: the `[audit]` settings, and the
/// sinks whose deliveries hold records back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    /// Records kept once every sink has delivered them.
    pub max_records: u64,
    /// Records kept at most, delivered or not: past it, the oldest go.
    pub max_backlog: u64,
    /// Bytes of records kept at most, delivered or not: past it, the
    /// oldest go. A record holds its event whole, and a device chooses
    /// how long that is (a topic of 64 KiB): counting records alone does
    /// not bound the disk.
    pub max_bytes: u64,
    /// The configured sinks, by name.
    pub sinks: Vec<String>,
}

/// How many records the log holds, and their bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Totals {
    records: u64,
    bytes: u64,
}

/// What one prune removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Records every sink had delivered.
    pub delivered: u64,
    /// Records some sink had not delivered, past `max-backlog`.
    pub dropped: u64,
    /// Whether the prune used up its limit: there may be more to remove.
    pub more: bool,
}

/// Damaged records met so far.
#[derive(Debug, Default)]
struct Damaged {
    /// How many.
    count: u64,
    /// The most recent of them, so that each is warned about and counted
    /// once however often it is read.
    ids: std::collections::BTreeSet<u64>,
}

/// How many damaged records are remembered. Past it, one read long ago
/// may be counted again: damaged records are rare, and a bounded set beats
/// an exact count.
const DAMAGED_REMEMBERED: usize = 4096;

/// Stored bytes one read returns at most, past its first record. A
/// record holds its event whole, and a parser may return megabytes of
/// event (bytes written as hex, twice as long): a page counted in records
/// alone could be gigabytes in memory.
pub const PAGE_BYTES: usize = 8 << 20;

/// Records read from the log, and how far the read went.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Page {
    /// The records that could be read, in order.
    pub records: Vec<Record>,
    /// How many damaged records were left out.
    pub damaged: usize,
    /// The last identifier read, damaged records included: where the next
    /// read starts. `None` when there was nothing to read.
    pub last: Option<u64>,
}

impl AuditLog {
    /// The audit trail of `store`.
    pub fn open(store: &Store) -> Result<Self, AuditError> {
        Ok(AuditLog {
            store: store.clone(),
            records: store.tree(RECORDS)?,
            cursors: store.tree(CURSORS)?,
            shared: Arc::default(),
        })
    }

    /// Record `entries`, in order, and wait until they are on disk. Returns
    /// the records as written. Safe to call from several threads at once.
    pub fn append(&self, entries: Vec<Entry>) -> Result<Vec<Record>, AuditError> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let records = self.write(&entries)?;
        self.flush()?;
        Ok(records)
    }

    /// Give `entries` identifiers and put them in the tree, in order, not
    /// yet on disk ([`AuditLog::flush`]). On failure none of them is in the
    /// tree, and they can be written again.
    fn write(&self, entries: &[Entry]) -> Result<Vec<Record>, AuditError> {
        let mut totals = (self.shared.appending.lock()).unwrap_or_else(|p| p.into_inner());
        let (records, bytes) = self.insert(entries)?;
        if let Some(totals) = &mut *totals {
            totals.records = totals.records.saturating_add(records.len() as u64);
            totals.bytes = totals.bytes.saturating_add(bytes);
        }
        Ok(records)
    }

    /// Wait until the records written so far are on disk, and wake the
    /// exporters. Outside the appending lock, so that appenders share one
    /// another's flushes.
    fn flush(&self) -> Result<(), AuditError> {
        #[cfg(test)]
        Failing::check(&self.shared.failing.flushes)?;
        self.records.flush()?;
        self.shared.appended.notify_waiters();
        Ok(())
    }

    /// Give `entries` identifiers and put them in the tree, in one batch.
    /// Returns the records and their bytes in the tree. The caller holds
    /// [`Shared::appending`].
    fn insert(&self, entries: &[Entry]) -> Result<(Vec<Record>, u64), AuditError> {
        #[cfg(test)]
        Failing::check(&self.shared.failing.inserts)?;
        // Microseconds: the finest RFC 5424 timestamps carry.
        let time = jiff::Timestamp::now()
            .round(jiff::Unit::Microsecond)
            .unwrap_or_else(|_| jiff::Timestamp::now())
            .to_string();
        let mut records = Vec::with_capacity(entries.len());
        let mut size = 0u64;
        let mut batch = sled::Batch::default();
        for entry in entries {
            let record = Record {
                // From 1: a cursor of 0 means nothing delivered yet.
                id: self.store.next_id()?.saturating_add(1),
                time: time.clone(),
                device: DeviceRef {
                    id: entry.session.device.id.clone(),
                    class: entry.session.device.class.clone(),
                    zone: entry.session.device.zone.clone(),
                },
                session: entry.session.id,
                route: entry.session.route.clone(),
                plugin: entry.plugin.clone(),
                event: entry.event.clone(),
                what: entry.what.clone(),
            };
            let bytes = serde_json::to_vec(&record).map_err(|e| AuditError::Damaged {
                id: record.id,
                reason: e.to_string(),
            })?;
            size = size.saturating_add(stored_size(&bytes));
            batch.insert(&record.id.to_be_bytes(), bytes);
            records.push(record);
        }
        self.records.apply_batch(batch)?;
        Ok((records, size))
    }

    /// The writes made to fail, in test builds.
    #[cfg(test)]
    pub(crate) fn failing(&self) -> &Failing {
        &self.shared.failing
    }

    /// Resolves when records are next appended through this log or a
    /// clone of it.
    pub fn appended(&self) -> tokio::sync::futures::Notified<'_> {
        self.shared.appended.notified()
    }

    /// The records among the next `limit` after identifier `after` (0 for
    /// the first), in order, fewer where they pass [`PAGE_BYTES`]. Damaged
    /// ones are left out, as in [`AuditLog::read`].
    pub fn after(&self, after: u64, limit: usize) -> Result<Vec<Record>, AuditError> {
        Ok(self.read(after, limit)?.records)
    }

    /// The next `limit` records after identifier `after` (0 for the
    /// first), in order, and the identifier the read reached: fewer where
    /// their stored lengths would pass [`PAGE_BYTES`], and always at least
    /// one where there is one. A record that does not parse is left out,
    /// with a warning and [`AuditLog::damaged`] counting it, so that it
    /// stops no reader.
    pub fn read(&self, after: u64, limit: usize) -> Result<Page, AuditError> {
        let start = after.saturating_add(1).to_be_bytes();
        let mut page = Page::default();
        let mut bytes = 0usize;
        for entry in self.records.range(start..).take(limit) {
            let (key, value) = entry?;
            bytes = bytes.saturating_add(value.len());
            if bytes > PAGE_BYTES && page.last.is_some() {
                break;
            }
            // Keys are written as eight bytes, in `insert`.
            let id = key
                .as_ref()
                .try_into()
                .map(u64::from_be_bytes)
                .unwrap_or_default();
            page.last = Some(id);
            match serde_json::from_slice(&value) {
                Ok(record) => page.records.push(record),
                Err(e) => {
                    page.damaged += 1;
                    self.skip_damaged(id, &e);
                }
            }
        }
        Ok(page)
    }

    /// Warn about damaged record `id`, and count it, the first time it is
    /// read.
    fn skip_damaged(&self, id: u64, error: &serde_json::Error) {
        let mut seen = (self.shared.damaged.lock()).unwrap_or_else(|p| p.into_inner());
        if !seen.ids.insert(id) {
            return;
        }
        if seen.ids.len() > DAMAGED_REMEMBERED {
            seen.ids.pop_first();
        }
        seen.count = seen.count.saturating_add(1);
        tracing::warn!(
            record = id,
            error = %error,
            damaged = seen.count,
            "audit record is damaged; skipped"
        );
    }

    /// How many damaged records readers have skipped since the log was
    /// opened.
    pub fn damaged(&self) -> u64 {
        (self.shared.damaged.lock())
            .unwrap_or_else(|p| p.into_inner())
            .count
    }

    /// The last identifier `sink` delivered (0 before the first).
    pub fn cursor(&self, sink: &str) -> Result<u64, AuditError> {
        Ok(self
            .cursors
            .get(sink)?
            .and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0))
    }

    /// Record that `sink` has delivered everything up to `id`.
    pub fn advance(&self, sink: &str, id: u64) -> Result<(), AuditError> {
        #[cfg(test)]
        Failing::check(&self.shared.failing.cursors)?;
        self.cursors.insert(sink, &id.to_be_bytes())?;
        self.cursors.flush()?;
        Ok(())
    }

    /// How many records `sink` has still to deliver.
    pub fn backlog(&self, sink: &str) -> Result<usize, AuditError> {
        let start = self.cursor(sink)?.saturating_add(1).to_be_bytes();
        Ok(self.records.range(start..).count())
    }

    /// Bring the log within `retention`, removing at most `at_most`
    /// records, oldest first: those every sink has delivered, down to
    /// `max_records` and `max_bytes`; then, if the log still holds more
    /// than `max_backlog` records or `max_bytes` bytes, undelivered ones
    /// down to them, with a warning.
    pub fn prune(&self, retention: &Retention, at_most: u64) -> Result<Pruned, AuditError> {
        let mut delivered = u64::MAX;
        for sink in &retention.sinks {
            delivered = delivered.min(self.cursor(sink)?);
        }
        let delivered = self.remove_oldest(delivered, |removed, t| {
            removed < at_most
                && (t.records > retention.max_records || t.bytes > retention.max_bytes)
        })?;
        let budget = at_most.saturating_sub(delivered);
        // Only undelivered records are left to remove: the delivered ones
        // are older, and went first unless the log is within bounds.
        let dropped = self.remove_oldest(u64::MAX, |removed, t| {
            removed < budget && (t.records > retention.max_backlog || t.bytes > retention.max_bytes)
        })?;
        let pruned = Pruned {
            delivered,
            dropped,
            more: delivered.saturating_add(dropped) >= at_most,
        };
        if pruned.dropped > 0 {
            let total = self
                .shared
                .dropped
                .fetch_add(pruned.dropped, Ordering::Relaxed);
            tracing::warn!(
                dropped = pruned.dropped,
                dropped_in_all = total.saturating_add(pruned.dropped),
                max_backlog = retention.max_backlog,
                max_bytes = retention.max_bytes,
                "audit trail over max-backlog or max-bytes: its oldest records were removed before every SIEM sink had them"
            );
        }
        Ok(pruned)
    }

    /// How many records pruning removed before every sink had them, since
    /// the log was opened.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// How many records the log holds, and their bytes: counted once, then
    /// kept up to date by appending and pruning.
    fn totals(&self) -> Result<Totals, AuditError> {
        let mut totals = (self.shared.appending.lock()).unwrap_or_else(|p| p.into_inner());
        if let Some(totals) = *totals {
            return Ok(totals);
        }
        let mut counted = Totals::default();
        for record in self.records.iter() {
            let (_, value) = record?;
            counted.records += 1;
            counted.bytes = counted.bytes.saturating_add(stored_size(&value));
        }
        *totals = Some(counted);
        Ok(counted)
    }

    /// Remove the oldest records, none past identifier `upto`, one by one
    /// while `go_on` (given how many it removed so far and the log's
    /// totals) says so. Returns how many were removed.
    fn remove_oldest(
        &self,
        upto: u64,
        mut go_on: impl FnMut(u64, Totals) -> bool,
    ) -> Result<u64, AuditError> {
        /// Keys held in memory at once.
        const CHUNK: usize = 1024;
        let end = upto.saturating_add(1).to_be_bytes();
        let mut removed = 0u64;
        // Within bounds, as at most prunes: no key read.
        if !go_on(removed, self.totals()?) {
            return Ok(removed);
        }
        loop {
            let keys: Vec<sled::IVec> =
                (self.records.range(..end).keys().take(CHUNK)).collect::<Result<_, _>>()?;
            if keys.is_empty() {
                return Ok(removed);
            }
            for key in &keys {
                if !go_on(removed, self.totals()?) {
                    return Ok(removed);
                }
                if let Some(value) = self.records.remove(key)? {
                    removed += 1;
                    let mut totals =
                        (self.shared.appending.lock()).unwrap_or_else(|p| p.into_inner());
                    if let Some(totals) = &mut *totals {
                        totals.records = totals.records.saturating_sub(1);
                        totals.bytes = totals.bytes.saturating_sub(stored_size(&value));
                    }
                }
            }
        }
    }
}

/// What a record of `value` bytes counts for against `max-bytes`: its key
/// too.
fn stored_size(value: &[u8]) -> u64 {
    (value.len() + size_of::<u64>()) as u64
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use crate::plugins::{Batch, Device};

    pub(crate) fn session() -> Session {
        Session {
            id: 7,
            device: Device {
                id: "plc-4".into(),
                class: "plc".into(),
                zone: "cell-3".into(),
            },
            route: "modbus".into(),
        }
    }

    pub(crate) fn entries(n: usize) -> Vec<Entry> {
        let mut batch = Batch::new();
        batch
            .push("modbus.write")
            .int("unit", 1)
            .int("address", 40_001)
            .bytes("values", &[0, 1]);
        let plugin = PluginRef {
            name: "baseline".into(),
            version: Some("1.2.0".into()),
        };
        (0..n)
            .map(|i| {
                let finding = Finding {
                    event: 0,
                    severity: Severity::High,
                    score: 0.9,
                    reason: format!("write {i} to a register only ever read"),
                };
                Entry::finding(&session(), plugin.clone(), batch.get(0), &finding)
            })
            .collect()
    }

    /// A SIEM finds a text-set as an array whatever the number of values;
    /// an attribute the vocabulary does not have is an array only when it
    /// repeats.
    #[test]
    fn text_sets_are_arrays_even_with_one_value() {
        let mut batch = Batch::new();
        batch
            .push("mqtt.subscribe")
            .int("packet-id", 9)
            .text("filter", "site/+/telemetry")
            .text("custom", "a");
        batch
            .push("mqtt.subscribe")
            .int("packet-id", 10)
            .text("filter", "a")
            .text("filter", "b")
            .text("custom", "a")
            .text("custom", "b");
        let one = attributes_json(batch.get(0).unwrap());
        assert_eq!(one["filter"], serde_json::json!(["site/+/telemetry"]));
        assert_eq!(one["custom"], serde_json::json!("a"));
        assert_eq!(one["packet-id"], serde_json::json!(9));
        let two = attributes_json(batch.get(1).unwrap());
        assert_eq!(two["filter"], serde_json::json!(["a", "b"]));
        assert_eq!(two["custom"], serde_json::json!(["a", "b"]));
    }

    #[test]
    fn records_are_kept_in_order_and_read_after_a_cursor() {
        let store = Store::temporary().unwrap();
        let log = AuditLog::open(&store).unwrap();
        let written = log.append(entries(5)).unwrap();
        assert!(written.windows(2).all(|w| w[0].id < w[1].id));
        let event = written[0].event.as_ref().unwrap();
        assert_eq!(event.kind, "modbus.write");
        assert_eq!(event.attributes["values"], "0001");
        assert_eq!(written[0].device.id, "plc-4");

        assert_eq!(log.after(0, 100).unwrap(), written);
        assert_eq!(log.after(written[1].id, 2).unwrap(), written[2..4]);
        assert_eq!(log.backlog("siem").unwrap(), 5);
        log.advance("siem", written[2].id).unwrap();
        assert_eq!(log.backlog("siem").unwrap(), 2);
    }

    fn retention(max_records: u64, max_backlog: u64) -> Retention {
        Retention {
            max_records,
            max_backlog,
            max_bytes: u64::MAX,
            sinks: vec!["file".into(), "syslog".into()],
        }
    }

    #[test]
    fn pruning_keeps_max_records_and_what_a_sink_has_not_delivered() {
        let store = Store::temporary().unwrap();
        let log = AuditLog::open(&store).unwrap();
        let written = log.append(entries(10)).unwrap();
        log.advance("file", written[9].id).unwrap();
        log.advance("syslog", written[6].id).unwrap();
        // Seven delivered everywhere: the oldest six go, down to four.
        let pruned = log.prune(&retention(4, 100), u64::MAX).unwrap();
        assert_eq!((pruned.delivered, pruned.dropped), (6, 0));
        assert_eq!(log.after(0, 100).unwrap(), written[6..]);

        // The syslog sink falls behind: what it has not had stays, past
        // max-records.
        let more = log.append(entries(6)).unwrap();
        assert_eq!(
            log.prune(&retention(4, 100), u64::MAX).unwrap().delivered,
            1
        );
        assert_eq!(log.after(0, 100).unwrap().len(), 9);
        assert_eq!(log.backlog("syslog").unwrap(), 9);
        assert_eq!(log.dropped(), 0);

        // Past max-backlog the oldest go all the same, and are counted.
        let pruned = log.prune(&retention(4, 6), u64::MAX).unwrap();
        assert_eq!((pruned.delivered, pruned.dropped), (0, 3));
        assert_eq!(log.after(0, 100).unwrap(), more);
        assert_eq!(log.dropped(), 3);

        // A prune removes at most its limit, and says whether it stopped
        // there.
        log.advance("syslog", more[5].id).unwrap();
        log.advance("file", more[5].id).unwrap();
        let steps: Vec<(u64, bool)> = (0..3)
            .map(|_| log.prune(&retention(1, 6), 2).unwrap())
            .map(|p| (p.delivered, p.more))
            .collect();
        assert_eq!(steps, [(2, true), (2, true), (1, false)]);
        assert_eq!(log.after(0, 100).unwrap(), more[5..]);
    }

    /// new-topic's finding about the first event of `batch`.
    fn new_topic_finding(batch: &Batch) -> Entry {
        let plugin = PluginRef {
            name: "new-topic".into(),
            version: None,
        };
        let finding = Finding {
            event: 0,
            severity: Severity::Medium,
            score: 0.7,
            reason: "first publish to a new topic".into(),
        };
        Entry::finding(&session(), plugin, batch.get(0), &finding)
    }

    /// Records as long as a device makes them (each about a 60 KB topic)
    /// are pruned by their bytes: the delivered ones first, then, still
    /// over, undelivered ones, counted as dropped. Counting records alone
    /// let a device fill the disk.
    #[test]
    fn pruning_bounds_the_bytes_records_take() {
        let store = Store::temporary().unwrap();
        let log = AuditLog::open(&store).unwrap();
        let mut batch = Batch::new();
        batch
            .push("mqtt.publish")
            .text("topic", &"t/".repeat(30_000));
        let written = log.append(vec![new_topic_finding(&batch); 10]).unwrap();
        let stored =
            |r: &Record| stored_size(&log.records.get(r.id.to_be_bytes()).unwrap().unwrap());
        let size = stored(&written[0]);
        assert!(size > 60_000, "{size}");
        let kept: u64 = written[7..].iter().map(stored).sum();
        log.advance("file", written[9].id).unwrap();
        log.advance("syslog", written[4].id).unwrap();
        let retention = Retention {
            max_bytes: 3 * size + size / 2,
            ..retention(1000, 1000)
        };
        let pruned = log.prune(&retention, u64::MAX).unwrap();
        assert_eq!((pruned.delivered, pruned.dropped), (5, 2));
        assert_eq!(log.after(0, 100).unwrap(), written[7..]);
        assert_eq!(log.dropped(), 2);
        let kept_up = log.totals().unwrap();
        // Counted afresh, as at a restart: the same, within the bound.
        *log.shared.appending.lock().unwrap() = None;
        let totals = log.totals().unwrap();
        assert_eq!(
            totals,
            Totals {
                records: 3,
                bytes: kept
            }
        );
        assert_eq!(kept_up, totals);
    }

    #[test]
    fn a_read_stops_at_its_byte_bound_and_takes_at_least_one_record() {
        let store = Store::temporary().unwrap();
        let log = AuditLog::open(&store).unwrap();
        // 1.5 MiB of bytes, 3 MiB stored as hex: two records fit a page.
        let mut batch = Batch::new();
        batch
            .push("mqtt.publish")
            .bytes("payload", &vec![0xab; 3 << 19]);
        let written = log.append(vec![new_topic_finding(&batch); 9]).unwrap();
        let stored = |records: &[Record]| -> usize {
            (records.iter())
                .map(|r| log.records.get(r.id.to_be_bytes()).unwrap().unwrap().len())
                .sum()
        };
        let mut read = Vec::new();
        let mut after = 0;
        loop {
            let page = log.read(after, 256).unwrap();
            let Some(last) = page.last else { break };
            assert!(
                stored(&page.records) <= PAGE_BYTES,
                "{} records, {} bytes",
                page.records.len(),
                stored(&page.records)
            );
            assert!(!page.records.is_empty());
            read.extend(page.records);
            after = last;
        }
        assert_eq!(read, written, "every record, once, in order");

        // A record larger than the bound alone still comes, alone.
        let mut huge = Batch::new();
        huge.push("mqtt.publish")
            .bytes("payload", &vec![0xcd; 5 << 20]);
        let entry = new_topic_finding(&huge);
        let more = log.append(vec![entry.clone(), entry]).unwrap();
        assert_eq!(log.read(after, 256).unwrap().records, more[..1]);
    }

    #[test]
    fn a_finding_scored_nan_or_infinite_reads_back() {
        let store = Store::temporary().unwrap();
        let log = AuditLog::open(&store).unwrap();
        let plugin = PluginRef {
            name: "odd".into(),
            version: None,
        };
        let scored = |score| {
            let finding = Finding {
                event: 0,
                severity: Severity::High,
                score,
                reason: "odd score".into(),
            };
            Entry::finding(&session(), plugin.clone(), None, &finding)
        };
        let odd = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1.5];
        log.append(odd.into_iter().map(scored).collect()).unwrap();
        let scores: Vec<f32> = (log.after(0, 10).unwrap().iter())
            .filter_map(|r| match r.what {
                What::Finding { score, .. } => Some(score),
                What::Action { .. } | What::OperatorAction { .. } => None,
            })
            .collect();
        assert_eq!(scores, [0.0, 1.0, 0.0, 1.0]);
    }

    #[test]
    fn a_damaged_record_is_skipped_not_fatal() {
        let store = Store::temporary().unwrap();
        let log = AuditLog::open(&store).unwrap();
        let written = log.append(entries(3)).unwrap();
        // The second record no longer parses: a non-finite score written
        // as `null` by an older version.
        (log.records)
            .insert(written[1].id.to_be_bytes(), &br#"{"score":null}"#[..])
            .unwrap();
        let read = log.after(0, 10).unwrap();
        assert_eq!(read, [written[0].clone(), written[2].clone()]);
        assert_eq!(log.damaged(), 1);
        // Read again: skipped again, counted once.
        assert_eq!(log.after(written[0].id, 10).unwrap(), written[2..]);
        assert_eq!(log.damaged(), 1);
    }

    #[test]
    fn records_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let ids: Vec<u64> = {
            let store = Store::open(dir.path()).unwrap();
            let log = AuditLog::open(&store).unwrap();
            let written = log.append(entries(3)).unwrap();
            log.advance("siem", written[0].id).unwrap();
            written.iter().map(|r| r.id).collect()
        };
        let store = Store::open(dir.path()).unwrap();
        let log = AuditLog::open(&store).unwrap();
        let after = log.after(log.cursor("siem").unwrap(), 10).unwrap();
        assert_eq!(after.iter().map(|r| r.id).collect::<Vec<_>>(), ids[1..]);
        let more = log.append(entries(1)).unwrap();
        assert!(more[0].id > ids[2], "identifiers keep increasing");
    }
}
