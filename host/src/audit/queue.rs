//! Recording off the frame's path: sessions hand their findings and
//! actions to a writer thread, which appends whatever has queued up in one
//! batch and one flush. The queue is bounded; when it is full the session
//! waits for room (its tokio worker hands its other tasks on meanwhile), so
//! a device that makes findings faster than the disk takes them is slowed
//! down, and no record is dropped. The writer is the only appender.
//!
//! The writer also keeps the log within its [`Retention`]: at start, then
//! every minute, a bounded prune between two appends.

use std::sync::mpsc::{
    Receiver, RecvTimeoutError, SendError, SyncSender, TrySendError, sync_channel,
};
use std::time::{Duration, Instant};

use tracing::{debug, error};

use super::{AuditLog, Entry, Retention};
use crate::runtime::blocking;

/// Items waiting for the writer.
const DEPTH: usize = 1024;
/// Entries one item carries at most: a session's entries go in items of
/// this many, so that the queue's depth bounds the entries waiting,
/// however many findings one chunk raised (a record's event is shared, its
/// reason at most 1 KiB: DEPTH items hold some 100 MB at the very worst).
const ENTRIES_PER_ITEM: usize = 64;
/// How often the writer prunes the log.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// Records one prune removes at most. The writer appends between two
/// prunes, so a log far over its bounds (a long SIEM outage, the first
/// start after an upgrade) comes down a chunk at a time without holding
/// up the sessions' records.
const PRUNE_AT_MOST: u64 = 10_000;

/// The sending side of the audit writer. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AuditQueue {
    log: AuditLog,
    sender: SyncSender<Item>,
}

#[derive(Debug)]
enum Item {
    Entries(Vec<Entry>),
    /// Answered once everything queued before it is appended.
    Drained(SyncSender<()>),
}

impl AuditQueue {
    /// A queue in front of `log`, with its writer thread, which keeps the
    /// log within `retention` and ends when the last clone of the queue is
    /// dropped.
    pub fn start(log: AuditLog, retention: Retention) -> std::io::Result<Self> {
        let (sender, receiver) = sync_channel(DEPTH);
        let writer = log.clone();
        std::thread::Builder::new()
            .name("palisade-audit".into())
            .spawn(move || write(&writer, &receiver, &retention))?;
        Ok(AuditQueue { log, sender })
    }

    /// Record `entries`, soon, in order.
    pub fn push(&self, entries: Vec<Entry>) {
        let mut entries = entries.into_iter().peekable();
        while entries.peek().is_some() {
            let item = entries.by_ref().take(ENTRIES_PER_ITEM).collect();
            self.send(Item::Entries(item));
        }
    }

    fn send(&self, item: Item) {
        match self.sender.try_send(item) {
            Ok(()) => {}
            Err(TrySendError::Full(item)) => blocking(|| {
                if let Err(SendError(item)) = self.sender.send(item) {
                    self.append_here(item);
                }
            }),
            // Only if the writer thread died: record in this thread.
            Err(TrySendError::Disconnected(item)) => blocking(|| self.append_here(item)),
        }
    }

    fn append_here(&self, item: Item) {
        if let Item::Entries(entries) = item {
            append(&self.log, entries);
        }
    }

    /// Wait until everything pushed so far is appended (at shutdown), for
    /// at most `patience`.
    pub fn drain(&self, patience: std::time::Duration) {
        let (done, wait) = sync_channel(1);
        if self.sender.send(Item::Drained(done)).is_ok() {
            let _ = wait.recv_timeout(patience);
        }
    }
}

fn write(log: &AuditLog, receiver: &Receiver<Item>, retention: &Retention) {
    let mut prune_at = Instant::now();
    loop {
        match receiver.recv_timeout(prune_at.saturating_duration_since(Instant::now())) {
            Ok(item) => write_queued(log, receiver, item),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        if Instant::now() >= prune_at {
            // Again at once while there is more to remove.
            let wait = if prune(log, retention) {
                Duration::ZERO
            } else {
                PRUNE_EVERY
            };
            prune_at = Instant::now() + wait;
        }
    }
}

/// Append `item` and whatever else has queued meanwhile, in one flush.
fn write_queued(log: &AuditLog, receiver: &Receiver<Item>, item: Item) {
    let mut entries = Vec::new();
    let mut drained = Vec::new();
    let mut next = Some(item);
    // Whatever else queued meanwhile goes in the same flush.
    while let Some(item) = next {
        match item {
            Item::Entries(more) => entries.extend(more),
            Item::Drained(done) => drained.push(done),
        }
        next = (entries.len() < 4096)
            .then(|| receiver.try_recv().ok())
            .flatten();
    }
    append(log, entries);
    for done in drained {
        let _ = done.send(());
    }
}

/// One bounded prune. Returns whether there is more to remove.
fn prune(log: &AuditLog, retention: &Retention) -> bool {
    match log.prune(retention, PRUNE_AT_MOST) {
        Ok(pruned) => {
            if pruned.delivered > 0 {
                debug!(
                    removed = pruned.delivered,
                    "pruned audit records every sink has delivered"
                );
            }
            pruned.more
        }
        Err(e) => {
            error!(error = %e, "cannot prune the audit trail; trying again in a minute");
            false
        }
    }
}

fn append(log: &AuditLog, entries: Vec<Entry>) {
    if entries.is_empty() {
        return;
    }
    let count = entries.len();
    if let Err(e) = log.append(entries) {
        error!(records = count, error = %e, "findings and actions not recorded");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use crate::audit::tests::entries;
    use crate::store::Store;

    /// The queue's depth counts items: a chunk's thousands of entries go
    /// in items of a bounded size, in order, so that a full queue holds a
    /// bounded number of entries.
    #[test]
    fn a_flood_of_entries_queues_in_items_of_bounded_size() {
        let store = Store::temporary().unwrap();
        let log = AuditLog::open(&store).unwrap();
        let (sender, receiver) = sync_channel(DEPTH);
        let queue = AuditQueue { log, sender };
        queue.push(entries(1000));
        drop(queue);
        let mut count = 0;
        for item in receiver {
            let Item::Entries(entries) = item else {
                panic!("only entries were pushed")
            };
            assert!(entries.len() <= ENTRIES_PER_ITEM, "{}", entries.len());
            count += entries.len();
        }
        assert_eq!(count, 1000);
    }

    #[test]
    fn the_writer_prunes_to_the_retention_and_keeps_the_undelivered() {
        let store = Store::temporary().unwrap();
        let log = AuditLog::open(&store).unwrap();
        let written = log.append(entries(10)).unwrap();
        log.advance("siem", written[6].id).unwrap();
        let retention = Retention {
            max_records: 4,
            max_backlog: 100,
            sinks: vec!["siem".into()],
        };
        let queue = AuditQueue::start(log.clone(), retention).unwrap();
        let start = Instant::now();
        while log.after(0, 100).unwrap().len() > 4 && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(10));
        }
        // Four records kept: the three the sink has not had, and the
        // newest it has.
        assert_eq!(log.after(0, 100).unwrap(), written[6..]);
        queue.push(entries(1));
        queue.drain(Duration::from_secs(5));
        assert_eq!(log.backlog("siem").unwrap(), 4);
    }
}
