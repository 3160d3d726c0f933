//! A detector that flags a device publishing to an MQTT topic it has never
//! used before, once it has been watched for a learning period.
//!
//! What each device has used is kept in the plugin's key-value store, so it
//! survives restarts and upgrades of the plugin.

use palisade_plugin_sdk::host::{self, Level, kv};
use palisade_plugin_sdk::{Batch, Detector, Finding, Session, Severity};

/// Publishes watched per device before a new topic is worth a finding.
pub const LEARNING_PUBLISHES: u64 = 100;

/// The detector as a plugin.
#[derive(Debug)]
pub struct NewTopic;

impl Detector for NewTopic {
    fn detect(session: &Session, events: &Batch) -> Vec<Finding> {
        let device = &session.device.id;
        let count_key = format!("{device}/publishes");
        let stored = kv::get(&count_key).and_then(|v| v.try_into().ok());
        let mut publishes = stored.map_or(0, u64::from_le_bytes);
        let mut findings = Vec::new();
        for event in events.iter() {
            let Some(topic) = event
                .text("topic")
                .filter(|_| event.kind() == "mqtt.publish")
            else {
                continue;
            };
            let topic_key = format!("{device}/topic/{topic}");
            if kv::get(&topic_key).is_none() {
                if publishes >= LEARNING_PUBLISHES {
                    let reason = format!("first publish to {topic} after {publishes} publishes");
                    findings.push(Finding::new(event.index(), Severity::Medium, 0.7, reason));
                }
                if let Err(e) = kv::set(&topic_key, &[]) {
                    host::log(
                        Level::Warn,
                        &format!("cannot remember topic {topic}: {e:?}"),
                    );
                }
            }
            publishes += 1;
        }
        if let Err(e) = kv::set(&count_key, &publishes.to_le_bytes()) {
            host::log(
                Level::Warn,
                &format!("cannot store the publish count: {e:?}"),
            );
        }
        findings
    }
}

palisade_plugin_sdk::export!(detector: NewTopic);

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_plugin_sdk::testing::Host;

    fn publishes(topics: &[&str]) -> Batch {
        let mut batch = Batch::new();
        for topic in topics {
            batch.push("mqtt.publish").text("topic", topic);
        }
        batch
    }

    #[test]
    fn new_topic_after_learning_is_flagged_once() {
        Host::reset();
        let session = Session::new(1, "sensor-1", "thermostat", "cell-1", "mqtt");
        let normal = publishes(&["site/a/telemetry"; LEARNING_PUBLISHES as usize]);
        assert!(NewTopic::detect(&session, &normal).is_empty());

        let batch = publishes(&["site/a/telemetry", "site/a/cmd", "site/a/cmd"]);
        let findings = NewTopic::detect(&session, &batch);
        assert_eq!(findings.len(), 1);
        assert_eq!(findings.first().map(|f| f.event), Some(1));
        assert!(findings.iter().all(|f| f.reason.contains("site/a/cmd")));
    }

    #[test]
    fn devices_learn_separately() {
        Host::reset();
        let a = Session::new(1, "a", "thermostat", "cell-1", "mqtt");
        let b = Session::new(2, "b", "thermostat", "cell-1", "mqtt");
        NewTopic::detect(&a, &publishes(&["t"; LEARNING_PUBLISHES as usize]));
        assert!(
            NewTopic::detect(&b, &publishes(&["u"])).is_empty(),
            "b is still learning"
        );
        assert_eq!(NewTopic::detect(&a, &publishes(&["u"])).len(), 1);
    }
}
