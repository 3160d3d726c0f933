//! The escalation responder: turns findings into the actions the host
//! enforces before it forwards, by severity and score.
//!
//! Each finding gets the strongest action its severity reaches, with the
//! thresholds in the plugin's configuration (`palisade plugin config
//! escalate KEY VALUE`), severities named `info` to `critical`:
//!
//! | key             | action                                   | default    |
//! |-----------------|------------------------------------------|------------|
//! | `alert-at`      | alert, with the finding's reason         | `low`      |
//! | `drop-at`       | drop the frame                           | `high`     |
//! | `close-at`      | close the session                        | `critical` |
//! | `quarantine-at` | quarantine the device                    | `critical` |
//! | `min-score`     | findings scoring less only alert         | `0.5`      |
//!
//! Every finding at or above `alert-at` also raises an alert, so what was
//! done is always recorded with why.

use palisade_plugin_sdk::host::config;
use palisade_plugin_sdk::{Action, Batch, Finding, Responder, Session, Severity};

/// The responder as a plugin.
#[derive(Debug)]
pub struct Escalate;

fn rank(severity: Severity) -> u8 {
    match severity {
        Severity::Info => 0,
        Severity::Low => 1,
        Severity::Medium => 2,
        Severity::High => 3,
        Severity::Critical => 4,
    }
}

/// The severity named `name`, as configuration spells it.
pub fn severity(name: &str) -> Option<Severity> {
    Some(match name {
        "info" => Severity::Info,
        "low" => Severity::Low,
        "medium" => Severity::Medium,
        "high" => Severity::High,
        "critical" => Severity::Critical,
        _ => return None,
    })
}

fn threshold(key: &str, default: Severity) -> u8 {
    let set: Option<String> = config::get(key);
    rank(set.as_deref().and_then(severity).unwrap_or(default))
}

impl Responder for Escalate {
    fn respond(_session: &Session, _events: &Batch, findings: &[Finding]) -> Vec<Action> {
        let alert_at = threshold("alert-at", Severity::Low);
        let drop_at = threshold("drop-at", Severity::High);
        let close_at = threshold("close-at", Severity::Critical);
        let quarantine_at = threshold("quarantine-at", Severity::Critical);
        let min_score: f32 = config::get("min-score").unwrap_or(0.5);
        let mut actions = Vec::new();
        let (mut close, mut quarantine) = (false, false);
        for finding in findings {
            let level = rank(finding.severity);
            if level >= alert_at {
                actions.push(Action::Alert(finding.reason.clone()));
            }
            if finding.score < min_score {
                continue;
            }
            if level >= drop_at {
                actions.push(Action::DropFrame(finding.event));
            }
            close |= level >= close_at;
            quarantine |= level >= quarantine_at;
        }
        if quarantine {
            actions.push(Action::QuarantineDevice);
        } else if close {
            actions.push(Action::CloseSession);
        }
        actions
    }
}

palisade_plugin_sdk::export!(responder: Escalate);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use palisade_plugin_sdk::host::kv;
    use palisade_plugin_sdk::testing::Host;

    fn finding(event: u32, severity: Severity, score: f32) -> Finding {
        Finding::new(
            event as usize,
            severity,
            score,
            format!("finding on {event}"),
        )
    }

    fn session() -> Session {
        Session::new(1, "d", "c", "z", "r")
    }

    #[test]
    fn defaults_alert_drop_and_quarantine_by_severity() {
        Host::reset();
        let actions = Escalate::respond(
            &session(),
            &Batch::new(),
            &[
                finding(0, Severity::Info, 0.9),
                finding(1, Severity::Medium, 0.9),
                finding(2, Severity::High, 0.9),
                finding(3, Severity::High, 0.2),
            ],
        );
        assert_eq!(
            actions,
            [
                Action::Alert("finding on 1".into()),
                Action::Alert("finding on 2".into()),
                Action::DropFrame(2),
                Action::Alert("finding on 3".into()),
            ]
        );
        let actions = Escalate::respond(
            &session(),
            &Batch::new(),
            &[finding(5, Severity::Critical, 1.0)],
        );
        assert_eq!(actions.last(), Some(&Action::QuarantineDevice));
        assert!(actions.contains(&Action::DropFrame(5)));
    }

    #[test]
    fn thresholds_come_from_the_configuration() {
        Host::reset();
        kv::set("config/quarantine-at", b"high").unwrap();
        kv::set("config/alert-at", b"critical").unwrap();
        let actions = Escalate::respond(
            &session(),
            &Batch::new(),
            &[finding(0, Severity::High, 0.9)],
        );
        assert_eq!(actions, [Action::DropFrame(0), Action::QuarantineDevice]);
        kv::set("config/quarantine-at", b"nonsense").unwrap();
        let actions = Escalate::respond(
            &session(),
            &Batch::new(),
            &[finding(0, Severity::High, 0.9)],
        );
        assert_eq!(
            actions,
            [Action::DropFrame(0)],
            "a bad value keeps the default"
        );
    }
}
