//! The appliance's side of enforcement: what happens beyond the relay when
//! the policy or a responder acted on a frame. A quarantine reaches the
//! registry (so every later handshake is refused) and every live session
//! of the device before anything else; findings and actions go to the
//! audit trail, from which the exporters carry them to the SIEMs.

use tracing::{error, warn};

use crate::audit::{AuditQueue, Entry, PluginRef};
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
        let event = |i: u32| inspected.batch.get(i as usize);
        let findings = (inspected.findings.iter())
            .map(|(by, f)| Entry::finding(session, self.plugin(by), event(f.event), f));
        let actions = (inspected.actions.iter())
            .filter(|(_, a)| !matches!(a, Action::Allow))
            .map(|(by, a)| {
                let about = match a {
                    Action::DropFrame(i) => event(*i),
                    _ => None,
                };
                Entry::action(session, self.plugin(by), about, a)
            });
        audit.push(findings.chain(actions).collect());
    }
}
