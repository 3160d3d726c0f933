//! The connection policy: which devices may use which routes. Default
//! deny; each rule opens routes to the devices of a class and zone.
//!
//! On the path of a frame this runs once per connection, after the
//! handshake proved who the device is and before any session starts. The
//! detection work grows it into the per-event policy engine.

use crate::config::{AllowRule, PolicyConfig, RouteConfig};
use crate::identity::Device;

/// The connection policy in force.
#[derive(Debug, Clone)]
pub struct ConnectionPolicy {
    rules: Vec<AllowRule>,
    embedded: bool,
}

impl ConnectionPolicy {
    /// The policy of the configuration's `[policy]` table or, when there is
    /// none, the embedded default: every enrolled device may use every route.
    pub fn new(config: Option<&PolicyConfig>) -> ConnectionPolicy {
        match config {
            Some(p) => ConnectionPolicy {
                rules: p.allow.clone(),
                embedded: false,
            },
            None => ConnectionPolicy {
                rules: vec![AllowRule {
                    class: "*".into(),
                    zone: "*".into(),
                    routes: Vec::new(),
                    protocols: vec!["*".into()],
                    roles: Vec::new(),
                }],
                embedded: true,
            },
        }
    }

    /// Whether this is the embedded default.
    pub fn is_embedded_default(&self) -> bool {
        self.embedded
    }

    /// Decide whether `device`, whose certificate carries the Modbus role
    /// `role`, may use `route`; the error says why not.
    pub fn check(
        &self,
        device: &Device,
        role: Option<&str>,
        route: &RouteConfig,
    ) -> Result<(), String> {
        let matches = |pattern: &str, value: &str| pattern == "*" || pattern == value;
        let opens = |rule: &AllowRule| {
            matches(&rule.class, &device.class)
                && matches(&rule.zone, &device.zone)
                && (rule.routes.iter().any(|r| matches(r, &route.name))
                    || rule.protocols.iter().any(|p| matches(p, &route.protocol)))
        };
        let mut role_missing = false;
        for rule in self.rules.iter().filter(|r| opens(r)) {
            if rule.roles.is_empty() || role.is_some_and(|r| rule.roles.iter().any(|x| x == r)) {
                return Ok(());
            }
            role_missing = true;
        }
        Err(if role_missing {
            format!(
                "route {} needs a Modbus role its certificate does not carry (it carries {})",
                route.name,
                role.unwrap_or("none")
            )
        } else {
            format!(
                "class {} in zone {} is not allowed on route {}",
                device.class, device.zone, route.name
            )
        })
    }

    /// One line for the start-up log saying what the policy allows.
    pub fn describe(&self, routes: &[RouteConfig]) -> String {
        if self.embedded {
            let list: Vec<String> = routes
                .iter()
                .map(|r| format!("{} ({})", r.name, r.protocol))
                .collect();
            return format!(
                "embedded default policy: every enrolled device may use the routes of its protocol, here all of {}; add [[policy.allow]] rules to the config to restrict",
                list.join(", ")
            );
        }
        let rules: Vec<String> = self
            .rules
            .iter()
            .map(|r| {
                let mut opens: Vec<String> = r.routes.clone();
                opens.extend(r.protocols.iter().map(|p| format!("protocol {p}")));
                let roles = if r.roles.is_empty() {
                    String::new()
                } else {
                    format!(" with role {}", r.roles.join("|"))
                };
                format!(
                    "class {} zone {}{roles} -> {}",
                    r.class,
                    r.zone,
                    opens.join(", ")
                )
            })
            .collect();
        format!(
            "policy: default deny, {} rule(s): {}",
            rules.len(),
            rules.join("; ")
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use crate::config::Config;
    use crate::identity::{Authority, DeviceState};

    fn device(class: &str, zone: &str) -> Device {
        Device {
            id: "d".into(),
            class: class.into(),
            zone: zone.into(),
            state: DeviceState::Active,
            authority: Authority::Site,
            enrolled: 0,
            first_seen: None,
            last_seen: None,
            certificates: Vec::new(),
        }
    }

    #[test]
    fn embedded_default_allows_every_route() {
        let config = Config::default();
        let policy = ConnectionPolicy::new(None);
        for route in &config.routes {
            assert!(policy.check(&device("any", "where"), None, route).is_ok());
        }
        assert!(policy.describe(&config.routes).contains("embedded default"));
    }

    #[test]
    fn rules_deny_by_default() {
        let config = Config::default();
        let rules = PolicyConfig {
            allow: vec![
                AllowRule {
                    class: "thermostat".into(),
                    zone: "*".into(),
                    routes: vec!["mqtt-tls".into()],
                    protocols: Vec::new(),
                    roles: Vec::new(),
                },
                AllowRule {
                    class: "hmi".into(),
                    zone: "cell-1".into(),
                    routes: Vec::new(),
                    protocols: vec!["modbus".into()],
                    roles: vec!["operator".into()],
                },
            ],
        };
        let policy = ConnectionPolicy::new(Some(&rules));
        let route = |n: &str| config.routes.iter().find(|r| r.name == n).unwrap();
        let t = device("thermostat", "hall");
        assert!(policy.check(&t, None, route("mqtt-tls")).is_ok());
        let err = policy.check(&t, None, route("mqtt-quic")).unwrap_err();
        assert!(err.contains("class thermostat"), "{err}");
        let hmi = device("hmi", "cell-1");
        assert!(
            policy
                .check(&hmi, Some("operator"), route("modbus-tls"))
                .is_ok()
        );
        let err = policy.check(&hmi, None, route("modbus-tls")).unwrap_err();
        assert!(err.contains("Modbus role"), "{err}");
        assert!(
            policy
                .check(
                    &device("hmi", "cell-2"),
                    Some("operator"),
                    route("modbus-tls")
                )
                .is_err()
        );
    }
}
