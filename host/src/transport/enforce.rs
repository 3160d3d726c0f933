//! The appliance's side of enforcement: what happens beyond the relay when
//! the policy or a responder acted on a frame. A quarantine reaches the
//! registry (so every later handshake is refused) and every live session
//! of the device before anything else; findings and actions go to the
//! audit trail, from which the exporters carry them to the SIEMs.

use tracing::{error, warn};

use std::collections::HashMap;
use std::sync::Arc;

use crate::audit::{AuditQueue, Entry, EventRecord, PluginRef, event_record};
use crate::identity::Registry;
use crate::plugins::{Action, Installed, Session};
use crate::session::{Enforcer, Inspected, LiveSessions, POLICY};

/// Enforcement for the sessions of one appliance.
#[derive(Debug, Clone)]
pub struct Enforcement {
    /// The device registry.
    pub registry: Registry,
    /// The live sessions.
    pub live: LiveSessions,
    /// The audit trail; `None` records nothing.
    pub audit: Option<AuditQueue>,
    /// The served plugins, for the versions records name.
    pub installed: Installed,
}

impl Enforcement {
    fn plugin(&self, name: &str) -> PluginRef {
        let version = if name == POLICY {
            None
        } else {
            (self.installed.get(name)).map(|slot| slot.active().version().to_owned())
        };
        PluginRef {
            name: name.to_owned(),
            version,
        }
    }
}

impl Enforcer for Enforcement {
    fn quarantine(&self, session: &Session, reason: &str, spare: bool) {
        let device = &session.device.id;
        if let Err(e) = self.registry.quarantine_unflushed(device) {
            error!(device = %device, error = %e, "cannot record the quarantine; closing the device's sessions anyway");
        }
        let closing = format!("device quarantined: {reason}");
        let spared = spare.then_some(session.id);
        let closed = (self.live).close_device_except(device, &closing, spared);
        warn!(device = %device, session = session.id, sessions = closed, reason = %reason, "device quarantined");
        // To disk by the store's writer thread: no task waits on the disk,
        // and no thread starts for it.
        self.registry.flush_soon();
    }

    fn record(&self, session: &Session, inspected: &Inspected) {
        let Some(audit) = &self.audit else { return };
        audit.push(entries(session, inspected, |by| self.plugin(by)));
    }
}

/// The audit entries for a chunk's findings and actions (allows record
/// nothing), each naming its plugin as `plugin` says. An event's record is
/// made once and shared by every entry about it: a copy per entry would
/// cost the event's attributes (a 64 KB topic, say) again for each finding
/// and each dropped frame.
fn entries(
    session: &Session,
    inspected: &Inspected,
    plugin: impl Fn(&str) -> PluginRef,
) -> Vec<Entry> {
    let mut recorded: HashMap<u32, Arc<EventRecord>> = HashMap::new();
    let mut event = |i: u32| {
        if let Some(record) = recorded.get(&i) {
            return Some(record.clone());
        }
        let record = Arc::new(event_record(inspected.batch.get(i as usize)?));
        recorded.insert(i, record.clone());
        Some(record)
    };
    let mut entries = Vec::with_capacity(inspected.findings.len() + inspected.actions.len());
    for (by, f) in &inspected.findings {
        entries.push(Entry::finding_about(session, plugin(by), event(f.event), f));
    }
    for (by, a) in &inspected.actions {
        let about = match a {
            Action::Allow => continue,
            Action::DropFrame(i) => event(*i),
            _ => None,
        };
        entries.push(Entry::action(session, plugin(by), about, a));
    }
    entries
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use crate::plugins::{Batch, Device, Finding, Severity};

    /// Findings by the thousand about one event with a long topic: one
    /// record of the event, shared, not a copy per finding and per drop.
    #[test]
    fn an_event_is_recorded_once_for_all_its_findings_and_drops() {
        let session = Session {
            id: 1,
            device: Device {
                id: "d".into(),
                class: "c".into(),
                zone: "z".into(),
            },
            route: "mqtt".into(),
        };
        let mut batch = Batch::new();
        batch
            .push("mqtt.publish")
            .text("topic", &"t".repeat(64_000));
        batch.push("mqtt.pingreq");
        let finding = |event| Finding {
            event,
            severity: Severity::High,
            score: 1.0,
            reason: "r".into(),
        };
        let inspected = Inspected {
            spans: Vec::new(),
            batch,
            findings: (0..1000).map(|i| ("d".into(), finding(i % 2))).collect(),
            actions: (0..1000)
                .flat_map(|i| [Action::Alert("a".into()), Action::DropFrame(i % 2)])
                .chain([Action::Allow])
                .map(|a| ("r".into(), a))
                .collect(),
            malformed: None,
            errors: Vec::new(),
            blocked: false,
            oversize: None,
        };
        let entries = entries(&session, &inspected, |name| PluginRef {
            name: name.into(),
            version: None,
        });
        assert_eq!(entries.len(), 3000, "allows record nothing");
        let events: Vec<&Arc<EventRecord>> =
            entries.iter().filter_map(|e| e.event.as_ref()).collect();
        assert_eq!(events.len(), 2000);
        let publish = events.iter().find(|e| e.kind == "mqtt.publish").unwrap();
        let shared = events.iter().filter(|e| Arc::ptr_eq(e, publish)).count();
        assert_eq!(shared, 1000, "one record of the publish for all");
    }
}
