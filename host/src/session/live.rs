//! The live sessions of every device, so that a revocation or a quarantine
//! closes them at once.
//!
//! A session joins under its device's id and holds a [`Membership`]; the
//! admin side, after changing the registry, calls
//! [`LiveSessions::close_device`], and every member's
//! [`Membership::closed`] completes with the reason. A session whose
//! transport can be hung up from another thread registers how
//! ([`Membership::hang_up_with`]): `close_device` then ends its connection
//! itself, before it returns, and the device sees the end without waiting
//! for the session's task to be scheduled. A session that quarantines its
//! own device on a frame bound for the device may be spared the hang-up
//! ([`LiveSessions::close_device_except`]): it goes on writing the frames
//! allowed before the offending one, as far as the device's socket takes
//! them without waiting, and closes when it next waits. It is not spared
//! longer: a device that stopped reading would otherwise keep a session,
//! and its way upstream, for as long as it liked.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// Ends a session's connection at once, from whichever thread closes its
/// device; it is given the reason. It must be quick: it runs while the
/// registry is locked.
pub type HangUp = Box<dyn Fn(&str) + Send + Sync>;

/// Every live session, by device. Clones share it.
#[derive(Debug, Clone, Default)]
pub struct LiveSessions {
    devices: Arc<Mutex<HashMap<String, Sessions>>>,
    next_id: Arc<AtomicU64>,
}

/// The live sessions of one device. A close ends them all: the entry then
/// leaves the map, and sessions that join afterwards (the device back
/// after a release) make a new one, even while the closed ones wind down.
struct Sessions {
    /// Which entry of the device this is: members of an entry closed and
    /// gone leave the device's next entry alone.
    generation: u64,
    closing: watch::Sender<Option<String>>,
    /// Set by the close, for [`Closed`]: apart from `closing`, whose
    /// receivers count the live sessions.
    closed: Arc<AtomicBool>,
    /// Bytes of incomplete frames the device's sessions hold together.
    buffered: Arc<AtomicUsize>,
    /// By membership: the session's id, and how to hang it up.
    hang_ups: HashMap<u64, (u64, HangUp)>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("live", &self.closing.receiver_count())
            .field("hang_ups", &self.hang_ups.len())
            .finish()
    }
}

impl Sessions {
    fn close(&self, reason: &str, except: Option<u64>) {
        self.closed.store(true, Ordering::Release);
        self.closing.send_replace(Some(reason.to_owned()));
        for (session, hang_up) in self.hang_ups.values() {
            if except != Some(*session) {
                hang_up(reason);
            }
        }
    }
}

impl LiveSessions {
    fn devices(&self) -> std::sync::MutexGuard<'_, HashMap<String, Sessions>> {
        self.devices.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Join a session of `device`.
    pub fn join(&self, device: &str) -> Membership {
        let mut devices = self.devices();
        let sessions = devices
            .entry(device.to_owned())
            .or_insert_with(|| Sessions {
                generation: self.next_id.fetch_add(1, Ordering::Relaxed),
                closing: watch::channel(None).0,
                closed: Arc::new(AtomicBool::new(false)),
                buffered: Arc::default(),
                hang_ups: HashMap::new(),
            });
        self.member_of(device, sessions)
    }

    /// A new member of `device`'s entry `sessions`.
    fn member_of(&self, device: &str, sessions: &Sessions) -> Membership {
        Membership {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            generation: sessions.generation,
            closing: sessions.closing.subscribe(),
            closed: sessions.closed.clone(),
            buffered: sessions.buffered.clone(),
            device: device.to_owned(),
            live: self.clone(),
        }
    }

    /// Close every session of `device`, saying `reason`: hang up those
    /// that registered how, and wake every one. Returns how many there
    /// were.
    pub fn close_device(&self, device: &str, reason: &str) -> usize {
        self.close_device_except(device, reason, None)
    }

    /// As [`LiveSessions::close_device`], but session `except` (the one
    /// asking) is only woken, not hung up.
    pub fn close_device_except(&self, device: &str, reason: &str, except: Option<u64>) -> usize {
        match self.devices().remove(device) {
            Some(sessions) => {
                sessions.close(reason, except);
                sessions.closing.receiver_count()
            }
            None => 0,
        }
    }

    /// Close every session, saying `reason`.
    pub fn close_all(&self, reason: &str) {
        for (_, sessions) in self.devices().drain() {
            sessions.close(reason, None);
        }
    }

    /// Live sessions of `device`: those not closed. Sessions closed but
    /// still delivering what was allowed before the close (a spared one)
    /// or winding down are not counted.
    pub fn count(&self, device: &str) -> usize {
        (self.devices().get(device)).map_or(0, |s| s.closing.receiver_count())
    }
}

/// Whether a session's device was closed, read without waiting: for a
/// relay about to forward what it judged while the close happened.
#[derive(Debug, Clone)]
pub struct Closed(Arc<AtomicBool>);

impl Closed {
    /// A session no one closes: one relayed outside the appliance (a test,
    /// a benchmark).
    pub fn never() -> Closed {
        Closed(Arc::new(AtomicBool::new(false)))
    }

    /// Whether the device was closed.
    pub fn is_closed(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// One session's place among the live ones; leaving is dropping it.
#[derive(Debug)]
pub struct Membership {
    id: u64,
    /// The generation of the device's entry joined.
    generation: u64,
    closing: watch::Receiver<Option<String>>,
    /// The entry's [`Sessions::closed`].
    closed: Arc<AtomicBool>,
    /// The entry's [`Sessions::buffered`].
    buffered: Arc<AtomicUsize>,
    device: String,
    live: LiveSessions,
}

impl Membership {
    /// Wait until the session must close, and say why.
    pub async fn closed(&mut self) -> String {
        match self.closing.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or_default(),
            // A close takes the sender out of the map, but only after
            // setting the reason, which `wait_for` still sees; this arm is
            // for completeness.
            Err(_) => "session registry gone".into(),
        }
    }

    /// Another session of this member's device, in the same entry: `None`
    /// when the device's sessions were closed since this member joined. A
    /// stream opened on a QUIC connection as its device is quarantined
    /// must not join afresh, as a session of the device back after a
    /// release would, and run until the connection notices.
    pub fn join_alongside(&self) -> Option<Membership> {
        let devices = self.live.devices();
        let sessions = devices
            .get(&self.device)
            .filter(|s| s.generation == self.generation)?;
        Some(self.live.member_of(&self.device, sessions))
    }

    /// Why the session must close, if it must: what [`Membership::closed`]
    /// says, without waiting.
    pub fn reason(&self) -> Option<String> {
        self.closing.borrow().clone()
    }

    /// The bytes of incomplete frames the device's sessions hold
    /// together: what its share of the buffer budget counts.
    pub fn buffered(&self) -> Arc<AtomicUsize> {
        self.buffered.clone()
    }

    /// Whether the device was closed, for whoever cannot wait on
    /// [`Membership::closed`] (the relay, mid-chunk).
    pub fn watch(&self) -> Closed {
        Closed(self.closed.clone())
    }

    /// Have [`LiveSessions::close_device`] end the connection of session
    /// `session` with `hang_up` itself, besides waking
    /// [`Membership::closed`].
    pub fn hang_up_with(&self, session: u64, hang_up: HangUp) {
        if let Some(sessions) = self.live.devices().get_mut(&self.device)
            && sessions.generation == self.generation
        {
            sessions.hang_ups.insert(self.id, (session, hang_up));
        }
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        let mut devices = self.live.devices();
        // An entry closed since this member joined has left the map.
        let Some(sessions) = devices
            .get_mut(&self.device)
            .filter(|s| s.generation == self.generation)
        else {
            return;
        };
        sessions.hang_ups.remove(&self.id);
        // This member still counts: it is the last one when the count is 1.
        if sessions.closing.receiver_count() <= 1 {
            devices.remove(&self.device);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn closing_a_device_reaches_its_sessions_only() {
        let live = LiveSessions::default();
        let mut a1 = live.join("a");
        let mut a2 = live.join("a");
        let b = live.join("b");
        assert_eq!(live.count("a"), 2);
        assert_eq!(live.close_device("a", "revoked"), 2);
        assert_eq!(a1.closed().await, "revoked");
        assert_eq!(a2.closed().await, "revoked");
        assert!(!b.closing.has_changed().unwrap_or(true));
        drop((a1, a2));
        assert_eq!(live.count("a"), 0);
        // A session joining after the close starts afresh.
        let a3 = live.join("a");
        assert!(a3.closing.borrow().is_none());
    }

    /// A session joined alongside another is closed with it, and none
    /// joins alongside one closed: it would start afresh, unclosed.
    #[tokio::test]
    async fn none_joins_alongside_a_closed_session() {
        let live = LiveSessions::default();
        let connection = live.join("a");
        let Some(mut stream) = connection.join_alongside() else {
            panic!("no session alongside a live one");
        };
        assert_eq!(live.count("a"), 2);
        assert_eq!(live.close_device("a", "quarantined"), 2);
        assert_eq!(stream.closed().await, "quarantined");
        assert!(connection.join_alongside().is_none());
        assert_eq!(live.count("a"), 0);
    }

    /// A device released from quarantine may reconnect while its closed
    /// sessions still wind down: the new session is not closed with them.
    #[tokio::test]
    async fn a_session_joining_while_closed_ones_wind_down_starts_afresh() {
        let live = LiveSessions::default();
        let mut old = live.join("a");
        assert_eq!(live.close_device("a", "quarantined"), 1);
        assert_eq!(live.count("a"), 0);
        let mut new = live.join("a");
        assert!(new.closing.borrow().is_none(), "born closed");
        // The closed session ending leaves the new one counted and closable.
        assert_eq!(old.closed().await, "quarantined");
        drop(old);
        assert_eq!(live.count("a"), 1);
        assert_eq!(live.close_device("a", "revoked"), 1);
        assert_eq!(new.closed().await, "revoked");
    }
}
