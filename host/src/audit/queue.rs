//! Recording off the frame's path: sessions hand their findings and
//! actions to a writer thread, which appends whatever has queued up in one
//! batch and one flush. The queue is bounded; when it is full the session
//! waits for room (its tokio worker hands its other tasks on meanwhile), so
//! a device that makes findings faster than the disk takes them is slowed
//! down, and no record is dropped. The writer is the only appender.
//!
//! A write that fails (a full disk) loses nothing either: the writer keeps
//! the entries it could not write and writes them again, after one second,
//! doubling to half a minute, saying at error level how many wait. Until
//! they are written it takes nothing more from the queue, which fills, and
//! the sessions wait for room as they do for a slow disk. Records that
//! reached the tree but not the disk are flushed again, not written twice.
//!
//! A session waits for room for at most [`PUSH_PATIENCE`], twice the
//! longest wait between two attempts: the database keeps its first write
//! error until it is opened again, so a disk that failed for good never
//! makes room, and a session that waited on it would hold its thread until
//! the appliance stopped, and keep it from stopping. Past it, or once
//! [`AuditQueue::close`] gave up on the writer, the entries are counted
//! lost and said so at error level.
//!
//! The writer also keeps the log within its [`Retention`]: at start, then
//! every minute, a bounded prune between two appends.
//!
//! At shutdown, [`AuditQueue::close`] has the writer write everything
//! queued and end, and joins it, within a bound; past the bound it says at
//! error level how many entries were not written.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{debug, error};

use super::{AuditError, AuditLog, Entry, Retention};
use crate::runtime::blocking;

/// Items waiting for the writer.
const DEPTH: usize = 1024;
/// Entries one item carries at most: a session's entries go in items of
/// this many, so that the queue's depth bounds the entries waiting,
/// however many findings one chunk raised (a record's event is shared, its
/// reason at most 1 KiB: DEPTH items hold some 100 MB at the very worst).
const ENTRIES_PER_ITEM: usize = 64;
/// Entries the writer takes from the queue for one write at most.
const ENTRIES_PER_WRITE: usize = 4096;
/// How often the writer prunes the log.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// Records one prune removes at most. The writer appends between two
/// prunes, so a log far over its bounds (a long SIEM outage, the first
/// start after an upgrade) comes down a chunk at a time without holding
/// up the sessions' records.
const PRUNE_AT_MOST: u64 = 10_000;
/// The wait before writing again after a failed write; it doubles after
/// each further failure, up to [`MAX_RETRY_WAIT`].
const FIRST_RETRY_WAIT: Duration = Duration::from_secs(1);
/// The longest wait between two attempts at a write that fails.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(30);
/// The longest a session waits for room in a full queue.
const PUSH_PATIENCE: Duration = Duration::from_secs(60);
/// How often whoever waits for room in the queue tries again.
const PUSH_POLL: Duration = Duration::from_millis(2);

/// The sending side of the audit writer. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AuditQueue {
    log: AuditLog,
    sender: SyncSender<Item>,
    /// Entries pushed and not yet on disk.
    unwritten: Arc<AtomicU64>,
    /// Entries given up on: no room in the queue for [`PUSH_PATIENCE`],
    /// or none after [`AuditQueue::close`] gave up on the writer.
    lost: Arc<AtomicU64>,
    /// Set when [`AuditQueue::close`] gave up on the writer.
    abandoned: Arc<AtomicBool>,
    /// How long a push waits for room: [`PUSH_PATIENCE`], shorter in tests.
    patience: Duration,
    /// The writer thread, until [`AuditQueue::close`] joins it.
    writer: Arc<Mutex<Option<JoinHandle<()>>>>,
}

#[derive(Debug)]
enum Item {
    Entries(Vec<Entry>),
    /// Answered once everything queued before it is appended.
    Drained(SyncSender<()>),
    /// The writer writes everything queued, then ends.
    Close,
}

impl AuditQueue {
    /// A queue in front of `log`, with its writer thread, which keeps the
    /// log within `retention` and ends when the last clone of the queue is
    /// dropped.
    pub fn start(log: AuditLog, retention: Retention) -> std::io::Result<Self> {
        let (sender, receiver) = sync_channel(DEPTH);
        let unwritten = Arc::new(AtomicU64::new(0));
        let writer = Writer::new(log.clone(), Arc::clone(&unwritten));
        let writer = std::thread::Builder::new()
            .name("palisade-audit".into())
            .spawn(move || writer.run(&receiver, &retention))?;
        Ok(AuditQueue {
            log,
            sender,
            unwritten,
            lost: Arc::default(),
            abandoned: Arc::default(),
            patience: PUSH_PATIENCE,
            writer: Arc::new(Mutex::new(Some(writer))),
        })
    }

    /// A queue in front of `log` that nobody writes from, already full;
    /// for tests. It stays full while the returned receiver lives.
    #[cfg(test)]
    pub(crate) fn full(log: AuditLog) -> (Self, Box<dyn std::any::Any>) {
        let (sender, receiver) = sync_channel(DEPTH);
        while sender.try_send(Item::Entries(Vec::new())).is_ok() {}
        (Self::unattended(log, sender), Box::new(receiver))
    }

    /// A queue in front of `log` that sends to `sender`, with no writer;
    /// for tests.
    #[cfg(test)]
    fn unattended(log: AuditLog, sender: SyncSender<Item>) -> Self {
        AuditQueue {
            log,
            sender,
            unwritten: Arc::default(),
            lost: Arc::default(),
            abandoned: Arc::default(),
            patience: PUSH_PATIENCE,
            writer: Arc::default(),
        }
    }

    /// Record `entries`, soon, in order.
    pub fn push(&self, entries: Vec<Entry>) {
        (self.unwritten).fetch_add(entries.len() as u64, Ordering::Relaxed);
        let mut entries = entries.into_iter().peekable();
        while entries.peek().is_some() {
            let item = entries.by_ref().take(ENTRIES_PER_ITEM).collect();
            self.send(Item::Entries(item));
        }
    }

    /// Record `entries` if the queue has room for them now, and say
    /// whether it had: for whoever must not wait on the writer (an
    /// operator waiting for an answer). Nothing is counted when it had
    /// not. At most 64 entries go at once.
    pub fn try_push(&self, entries: Vec<Entry>) -> bool {
        let count = entries.len() as u64;
        if entries.len() > ENTRIES_PER_ITEM {
            return false;
        }
        self.unwritten.fetch_add(count, Ordering::Relaxed);
        match self.sender.try_send(Item::Entries(entries)) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                self.unwritten.fetch_sub(count, Ordering::Relaxed);
                false
            }
            Err(TrySendError::Disconnected(item)) => {
                self.append_here(item);
                true
            }
        }
    }

    /// Record `entries` now, past the queue, and return once they are on
    /// disk: for a record that must not be lost to a full queue nor to a
    /// crash after its caller goes on (an operator's change, answered
    /// once recorded).
    pub fn append_now(&self, entries: Vec<Entry>) -> Result<(), AuditError> {
        self.log.append(entries).map(drop)
    }

    /// How many entries pushed are not on disk yet.
    pub fn unwritten(&self) -> u64 {
        self.unwritten.load(Ordering::Relaxed)
    }

    /// How many entries pushed were given up on: no room in the queue
    /// for a minute, or none after [`AuditQueue::close`] gave up.
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    fn send(&self, item: Item) {
        match self.sender.try_send(item) {
            Ok(()) => {}
            Err(TrySendError::Full(item)) => blocking(|| self.send_patiently(item)),
            // Only if the writer thread died: record in this thread.
            Err(TrySendError::Disconnected(item)) => blocking(|| self.append_here(item)),
        }
    }

    /// Wait for room for `item` for at most the queue's patience, or until
    /// [`AuditQueue::close`] gave up on the writer; then give it up.
    fn send_patiently(&self, item: Item) {
        match self.send_by(item, Instant::now() + self.patience) {
            Ok(()) => {}
            Err(Unsent::WriterGone(item)) => self.append_here(item),
            Err(Unsent::NoRoom(item)) => self.lose(item),
        }
    }

    fn lose(&self, item: Item) {
        let Item::Entries(entries) = item else { return };
        let count = entries.len() as u64;
        self.unwritten.fetch_sub(count, Ordering::Relaxed);
        let lost = self.lost.fetch_add(count, Ordering::Relaxed) + count;
        error!(
            records = count,
            lost,
            patience = ?self.patience,
            "the audit writer has taken nothing for too long (see its errors): findings and actions are not recorded"
        );
    }

    fn append_here(&self, item: Item) {
        let Item::Entries(entries) = item else { return };
        let count = entries.len() as u64;
        match self.log.append(entries) {
            Ok(_) => {
                self.unwritten.fetch_sub(count, Ordering::Relaxed);
            }
            Err(e) => error!(
                records = count,
                unwritten = self.unwritten(),
                error = %e,
                "the audit writer is gone and findings and actions could not be recorded"
            ),
        }
    }

    /// Wait until everything pushed so far is appended, for at most
    /// `patience`.
    pub fn drain(&self, patience: Duration) {
        let deadline = Instant::now() + patience;
        let (done, wait) = sync_channel(1);
        if self.send_by(Item::Drained(done), deadline).is_ok() {
            let _ = wait.recv_timeout(deadline.saturating_duration_since(Instant::now()));
        }
    }

    /// At shutdown: have the writer write everything pushed so far and
    /// end, and join it, waiting at most `patience` in all. If that passes,
    /// say at error level how many entries are not on disk. Entries a
    /// clone pushes after the writer ended are written by the pushing
    /// thread itself.
    pub fn close(self, patience: Duration) {
        let deadline = Instant::now() + patience;
        let writer = (self.writer.lock())
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(writer) = writer
            && self.send_by(Item::Close, deadline).is_ok()
        {
            while !writer.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if writer.is_finished() && writer.join().is_err() {
                error!("the audit writer thread panicked");
            }
        }
        // Whoever still waits for room would wait on a writer that is not
        // coming back: they give up, so the appliance can stop.
        self.abandoned.store(true, Ordering::Release);
        let unwritten = self.unwritten();
        if unwritten > 0 {
            error!(
                entries = unwritten,
                ?patience,
                "the audit writer did not write everything before shutdown; these findings and actions are not recorded"
            );
        }
    }

    /// Queue `item`, waiting for room until `deadline`, or until
    /// [`AuditQueue::close`] gave up on the writer; give it back if it
    /// could not be queued.
    fn send_by(&self, mut item: Item, deadline: Instant) -> Result<(), Unsent> {
        loop {
            match self.sender.try_send(item) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Disconnected(back)) => return Err(Unsent::WriterGone(back)),
                Err(TrySendError::Full(back)) => {
                    if self.abandoned.load(Ordering::Acquire) || Instant::now() >= deadline {
                        return Err(Unsent::NoRoom(back));
                    }
                    item = back;
                    std::thread::sleep(PUSH_POLL);
                }
            }
        }
    }
}

/// An item [`AuditQueue::send_by`] could not queue.
enum Unsent {
    /// The writer thread has ended.
    WriterGone(Item),
    /// The queue had no room in time.
    NoRoom(Item),
}

/// The writer thread's state.
struct Writer {
    log: AuditLog,
    /// Entries pushed and not yet on disk, shared with the queue.
    unwritten: Arc<AtomicU64>,
    /// Entries taken from the queue and not yet in the tree, in order. A
    /// write that fails keeps them for the next attempt.
    entries: Vec<Entry>,
    /// Records in the tree whose flush to disk failed: only the flush is
    /// tried again, so that they are not written twice.
    unflushed: u64,
    /// Drain markers, answered once everything before them is on disk.
    drained: Vec<SyncSender<()>>,
    /// After a failed write: when to try again, and the wait before it.
    retry: Option<(Instant, Duration)>,
}

impl Writer {
    fn new(log: AuditLog, unwritten: Arc<AtomicU64>) -> Self {
        Writer {
            log,
            unwritten,
            entries: Vec::new(),
            unflushed: 0,
            drained: Vec::new(),
            retry: None,
        }
    }

    /// Write what the queue brings until every sender is gone and all is
    /// written, and prune the log between writes.
    fn run(mut self, receiver: &Receiver<Item>, retention: &Retention) {
        let mut prune_at = Instant::now();
        let mut closing = false;
        loop {
            match self.retry {
                // Nothing more from the queue until what the writer holds
                // is written: the queue fills, and sessions wait for room.
                Some((retry_at, _)) => {
                    let until = retry_at.min(prune_at);
                    std::thread::sleep(until.saturating_duration_since(Instant::now()));
                    if Instant::now() >= retry_at {
                        self.write();
                    }
                }
                // Closing: what the queue still holds, then the end.
                None if closing => match receiver.try_recv() {
                    Ok(item) => {
                        self.take(item, receiver);
                        self.write();
                    }
                    Err(_) => return,
                },
                None => {
                    match receiver.recv_timeout(prune_at.saturating_duration_since(Instant::now()))
                    {
                        Ok(item) => {
                            closing = self.take(item, receiver);
                            self.write();
                        }
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
            }
            if !closing && Instant::now() >= prune_at {
                // Again at once while there is more to remove.
                let wait = if prune(&self.log, retention) {
                    Duration::ZERO
                } else {
                    PRUNE_EVERY
                };
                prune_at = Instant::now() + wait;
            }
        }
    }

    /// Take `item` and whatever else has queued meanwhile, for one write.
    /// Returns whether they asked the writer to close.
    fn take(&mut self, item: Item, receiver: &Receiver<Item>) -> bool {
        let mut close = false;
        let mut next = Some(item);
        while let Some(item) = next {
            match item {
                Item::Entries(more) => self.entries.extend(more),
                Item::Drained(done) => self.drained.push(done),
                Item::Close => close = true,
            }
            next = (self.entries.len() < ENTRIES_PER_WRITE)
                .then(|| receiver.try_recv().ok())
                .flatten();
        }
        close
    }

    /// Write the entries taken, in one batch and one flush; on failure,
    /// keep them and set when to try again.
    fn write(&mut self) {
        if !self.entries.is_empty() {
            match self.log.write(&self.entries) {
                Ok(records) => {
                    self.unflushed = self.unflushed.saturating_add(records.len() as u64);
                    self.entries.clear();
                }
                // A record that cannot be serialized never will be: writing
                // it again would stop the trail for good.
                Err(e @ AuditError::Damaged { .. }) => {
                    let count = self.entries.len() as u64;
                    error!(records = count, error = %e, "findings and actions cannot be recorded");
                    self.unwritten.fetch_sub(count, Ordering::Relaxed);
                    self.entries.clear();
                }
                Err(e) => return self.failed(&e),
            }
        }
        if self.unflushed > 0 {
            if let Err(e) = self.log.flush() {
                return self.failed(&e);
            }
            self.unwritten.fetch_sub(self.unflushed, Ordering::Relaxed);
            self.unflushed = 0;
        }
        self.retry = None;
        for done in self.drained.drain(..) {
            let _ = done.send(());
        }
    }

    /// After a failed write: say what waits, and when it goes again.
    fn failed(&mut self, e: &AuditError) {
        let wait = self
            .retry
            .map_or(FIRST_RETRY_WAIT, |(_, wait)| (wait * 2).min(MAX_RETRY_WAIT));
        error!(
            error = %e,
            pending = self.entries.len() as u64 + self.unflushed,
            unwritten = self.unwritten.load(Ordering::Relaxed),
            retry_in = ?wait,
            "cannot write the audit trail; its entries are kept and written again, and sessions wait once the queue is full"
        );
        self.retry = Some((Instant::now() + wait, wait));
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
        let queue = AuditQueue::unattended(log, sender);
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
            max_bytes: u64::MAX,
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

    #[test]
    fn entries_a_failed_write_kept_are_written_once_when_the_disk_recovers() {
        let store = Store::temporary().unwrap();
        let log = AuditLog::open(&store).unwrap();
        let retention = Retention {
            max_records: 1000,
            max_backlog: 1000,
            max_bytes: u64::MAX,
            sinks: Vec::new(),
        };
        let queue = AuditQueue::start(log.clone(), retention).unwrap();
        // The first write fails before its records are in the tree; the
        // second puts them there and fails to flush.
        log.failing().inserts.store(1, Ordering::SeqCst);
        log.failing().flushes.store(1, Ordering::SeqCst);
        queue.push(entries(5));
        queue.drain(Duration::from_secs(10));
        let reasons: Vec<String> = (log.after(0, 100).unwrap().into_iter())
            .map(|r| match r.what {
                crate::audit::What::Finding { reason, .. } => reason,
                crate::audit::What::Action { action, .. } => action,
                crate::audit::What::OperatorAction { request, .. } => request,
            })
            .collect();
        let expected: Vec<String> = (0..5)
            .map(|i| format!("write {i} to a register only ever read"))
            .collect();
        assert_eq!(reasons, expected, "each entry recorded once, in order");
        assert_eq!(queue.unwritten(), 0);
    }

    fn retention() -> Retention {
        Retention {
            max_records: 1_000_000,
            max_backlog: 1_000_000,
            max_bytes: u64::MAX,
            sinks: Vec::new(),
        }
    }

    #[test]
    fn close_writes_everything_queued_before_the_store_is_reopened() {
        let dir = tempfile::tempdir().unwrap();
        let pushed = 20_000;
        {
            let store = Store::open(dir.path()).unwrap();
            let log = AuditLog::open(&store).unwrap();
            let queue = AuditQueue::start(log, retention()).unwrap();
            // A session past the grace period still holds a clone at
            // shutdown, and records after the writer closed: on disk when
            // its push returns, as the process is about to exit.
            let session = queue.clone();
            for _ in 0..pushed / 100 {
                queue.push(entries(100));
            }
            queue.close(Duration::from_secs(60));
            session.push(entries(5));
            assert_eq!(session.unwritten(), 0);
        }
        let store = Store::open(dir.path()).unwrap();
        let log = AuditLog::open(&store).unwrap();
        let mut count = 0;
        let mut after = 0;
        loop {
            let page = log.read(after, 10_000).unwrap();
            let Some(last) = page.last else { break };
            count += page.records.len();
            after = last;
        }
        assert_eq!(count, pushed + 5);
    }

    #[test]
    fn close_returns_within_its_bound_when_the_writer_is_stuck() {
        let store = Store::temporary().unwrap();
        let log = AuditLog::open(&store).unwrap();
        // Every write fails: the writer backs off, and the queue fills.
        log.failing().inserts.store(u32::MAX, Ordering::SeqCst);
        let queue = AuditQueue::start(log.clone(), retention()).unwrap();
        let session = queue.clone();
        // More than the writer takes for one write and the queue holds
        // together: this session ends up waiting for room.
        let (began, first) = sync_channel(1);
        let pushing = std::thread::spawn(move || {
            for _ in 0..ENTRIES_PER_WRITE + DEPTH + 10 {
                session.push(entries(1));
                let _ = began.try_send(());
            }
        });
        // Its first entries are unwritten before close gives up on them.
        first.recv_timeout(Duration::from_secs(10)).unwrap();
        // Fill what room the queue has left, with empty items.
        let start = Instant::now();
        let full = loop {
            match queue.sender.try_send(Item::Entries(Vec::new())) {
                Err(TrySendError::Full(_)) => break true,
                _ if start.elapsed() > Duration::from_secs(10) => break false,
                _ => std::thread::sleep(Duration::from_millis(1)),
            }
        };
        assert!(full, "the queue never filled");
        let (closed, wait) = sync_channel(1);
        let closing = queue.clone();
        std::thread::spawn(move || {
            closing.close(Duration::from_millis(300));
            closed.send(()).unwrap();
        });
        assert!(
            wait.recv_timeout(Duration::from_secs(5)).is_ok(),
            "close did not return"
        );
        assert!(queue.unwritten() > 0);
        // The session still waiting for room gives up, rather than keep
        // the appliance from stopping.
        let (joined, wait) = sync_channel(1);
        std::thread::spawn(move || {
            pushing.join().unwrap();
            joined.send(()).unwrap();
        });
        assert!(
            wait.recv_timeout(Duration::from_secs(5)).is_ok(),
            "a session still waits on the writer"
        );
        assert!(queue.lost() > 0);
    }

    /// A disk that failed for good never makes room: a session waits for
    /// it no longer than the queue's patience, and says what it lost.
    #[test]
    fn a_session_waits_for_a_stuck_writer_no_longer_than_its_patience() {
        let store = Store::temporary().unwrap();
        let log = AuditLog::open(&store).unwrap();
        log.failing().inserts.store(u32::MAX, Ordering::SeqCst);
        let mut queue = AuditQueue::start(log.clone(), retention()).unwrap();
        queue.patience = Duration::from_millis(200);
        // The writer takes one entry, fails to write it, and takes nothing
        // more until it has.
        queue.push(entries(1));
        let start = Instant::now();
        while log.failing().inserts.load(Ordering::SeqCst) == u32::MAX {
            assert!(start.elapsed() < Duration::from_secs(10), "no write tried");
            std::thread::sleep(Duration::from_millis(1));
        }
        // The queue fills, and the last three find no room.
        let start = Instant::now();
        for _ in 0..DEPTH + 3 {
            queue.push(entries(1));
        }
        let waited = start.elapsed();
        assert!(waited < Duration::from_secs(30), "{waited:?}");
        assert_eq!(queue.lost(), 3);
        assert_eq!(queue.unwritten(), 1 + DEPTH as u64);
        // Whoever must not wait is told at once that there is no room.
        assert!(!queue.try_push(entries(1)));
        assert_eq!(queue.lost(), 3);
        assert_eq!(queue.unwritten(), 1 + DEPTH as u64);
    }
}
