//! Recording off the frame's path: sessions hand their findings and
//! actions to a writer thread, which appends whatever has queued up in one
//! batch and one flush. The queue is bounded; when it is full the session
//! waits for room (its tokio worker hands its other tasks on meanwhile), so
//! a device that makes findings faster than the disk takes them is slowed
//! down, and no record is dropped. The writer is the only appender.

use std::sync::mpsc::{Receiver, SendError, SyncSender, TrySendError, sync_channel};

use tracing::error;

use super::{AuditLog, Entry};

/// Batches of entries waiting for the writer.
const DEPTH: usize = 1024;

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
    /// A queue in front of `log`, with its writer thread, which ends when
    /// the last clone of the queue is dropped.
    pub fn start(log: AuditLog) -> std::io::Result<Self> {
        let (sender, receiver) = sync_channel(DEPTH);
        let writer = log.clone();
        std::thread::Builder::new()
            .name("palisade-audit".into())
            .spawn(move || write(&writer, &receiver))?;
        Ok(AuditQueue { log, sender })
    }

    /// Record `entries`, soon.
    pub fn push(&self, entries: Vec<Entry>) {
        if entries.is_empty() {
            return;
        }
        match self.sender.try_send(Item::Entries(entries)) {
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

/// Run `f`, which blocks; on a multi-threaded tokio runtime, first let the
/// worker's other tasks move to another worker, so that sessions on the
/// same worker carry on.
fn blocking<R>(f: impl FnOnce() -> R) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        // No runtime, or one whose only thread is this one: nothing to move.
        _ => f(),
    }
}

fn write(log: &AuditLog, receiver: &Receiver<Item>) {
    while let Ok(item) = receiver.recv() {
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
