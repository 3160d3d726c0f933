//! The live sessions of every device, so that a revocation or a quarantine
//! closes them at once.
//!
//! A session joins under its device's id and holds a [`Membership`]; the
//! admin side, after changing the registry, calls
//! [`LiveSessions::close_device`], and every member's
//! [`Membership::closed`] completes with the reason.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// Every live session, by device. Clones share it.
#[derive(Debug, Clone, Default)]
pub struct LiveSessions {
    devices: Arc<Mutex<HashMap<String, watch::Sender<Option<String>>>>>,
}

impl LiveSessions {
    /// Join a session of `device`.
    pub fn join(&self, device: &str) -> Membership {
        let mut devices = self.devices.lock().unwrap_or_else(|p| p.into_inner());
        let sender = devices
            .entry(device.to_owned())
            .or_insert_with(|| watch::channel(None).0);
        Membership {
            closing: sender.subscribe(),
            device: device.to_owned(),
            live: self.clone(),
        }
    }

    /// Close every session of `device`, saying `reason`. Returns how many
    /// there were.
    pub fn close_device(&self, device: &str, reason: &str) -> usize {
        let devices = self.devices.lock().unwrap_or_else(|p| p.into_inner());
        match devices.get(device) {
            Some(sender) => {
                sender.send_replace(Some(reason.to_owned()));
                sender.receiver_count()
            }
            None => 0,
        }
    }

    /// Close every session, saying `reason`.
    pub fn close_all(&self, reason: &str) {
        let devices = self.devices.lock().unwrap_or_else(|p| p.into_inner());
        for sender in devices.values() {
            sender.send_replace(Some(reason.to_owned()));
        }
    }

    /// Live sessions of `device`.
    pub fn count(&self, device: &str) -> usize {
        let devices = self.devices.lock().unwrap_or_else(|p| p.into_inner());
        devices.get(device).map_or(0, watch::Sender::receiver_count)
    }
}

/// One session's place among the live ones; leaving is dropping it.
#[derive(Debug)]
pub struct Membership {
    closing: watch::Receiver<Option<String>>,
    device: String,
    live: LiveSessions,
}

impl Membership {
    /// Wait until the session must close, and say why.
    pub async fn closed(&mut self) -> String {
        match self.closing.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or_default(),
            // The sender lives in the map while any member does; this arm is
            // for completeness.
            Err(_) => "session registry gone".into(),
        }
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        let mut devices = self.live.devices.lock().unwrap_or_else(|p| p.into_inner());
        // This member still counts: it is the last one when the count is 1.
        if devices
            .get(&self.device)
            .is_some_and(|s| s.receiver_count() <= 1)
        {
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
}
