//! Zero-trust policy as code: one policy for connections and for events,
//! default deny, by device class and zone.
//!
//! The language is Cedar (the `cedar-policy` crate) rather than one of our
//! own: it has a schema and a validator, so a policy that names an
//! attribute an event does not have, or compares it with the wrong type,
//! is refused with its line and reason instead of silently never matching;
//! its semantics are formally specified; it denies by default and a
//! `forbid` always wins over a `permit`; and site engineers can read it.
//!
//! The model:
//! - the principal is the device, `Device::"plc-4"`, a member of its class,
//!   `Class::"plc"`, and of its zone, `Zone::"cell-3"`, with the attributes
//!   `class`, `zone` and, when its certificate carries the Modbus/TCP
//!   Security role extension, `role`;
//! - the action is `Action::"connect"` for a new connection, and the event's
//!   kind for a frame, for example `Action::"mqtt.publish"`; the kinds of a
//!   protocol are members of the protocol, `Action::"mqtt"`;
//! - the resource is the route, `Route::"mqtt"`, with its `protocol`;
//! - the context is the event's attributes (see [`vocabulary`]), for example
//!   `context.topic` or `context.address`, and for a connection the device's
//!   network `address`.
//!
//! ```cedar
//! @id("thermostats publish telemetry")
//! permit(principal in Class::"thermostat", action == Action::"mqtt.publish", resource)
//! when { context.topic like "site/*/telemetry" && context["topic-levels"] == 3 };
//! ```

mod file;
pub mod vocabulary;

pub use file::{LoadError, POLICY_FILE, load, source, watch};

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::str::FromStr;
use std::sync::{Arc, RwLock};

use cedar_policy::{
    ActionConstraint, Authorizer, Context, Entities, Entity, EntityId, EntityTypeName, EntityUid,
    PolicyId, PolicySet, Request, RestrictedExpression, Schema, ValidationMode, Validator,
};

use crate::plugins::{Columns, Device, Direction, EventRef, Severity, Value, ValueType};
use vocabulary::Type;

/// The policy a new appliance runs until the site installs its own.
pub const EMBEDDED_DEFAULT: &str = r#"// Palisade's embedded default policy: any enrolled device may connect to
// any route and send the events of that route's protocol. It lets a first
// run work; replace it with the site's own (`palisade policy check`).

@id("enrolled devices connect")
permit(principal, action == Action::"connect", resource);

@id("enrolled devices speak MQTT on MQTT routes")
permit(principal, action in Action::"mqtt", resource)
when { resource.protocol == "mqtt" };

@id("enrolled devices speak CoAP on CoAP routes")
permit(principal, action in Action::"coap", resource)
when { resource.protocol == "coap" };

@id("enrolled devices speak Modbus on Modbus routes")
permit(principal, action in Action::"modbus", resource)
when { resource.protocol == "modbus" };
"#;

/// One problem in a policy, where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Line, from 1 (0 when the problem has no place).
    pub line: usize,
    /// Column, from 1.
    pub column: usize,
    /// What is wrong.
    pub reason: String,
}

/// Why a policy was refused.
#[derive(Debug, thiserror::Error)]
#[error("{}", render(.problems))]
pub struct PolicyError {
    /// Every problem found.
    pub problems: Vec<Problem>,
}

fn render(problems: &[Problem]) -> String {
    let mut out = String::new();
    for (i, p) in problems.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let _ = write!(out, "line {}, column {}: {}", p.line, p.column, p.reason);
    }
    out
}

/// What the policy decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request is allowed.
    pub allowed: bool,
    /// Why: the policies that decided (their `@id`, or Cedar's id), or the
    /// default deny.
    pub reason: String,
    /// For a denied event, how grave it is: the highest `@severity` of the
    /// `forbid` policies that denied it; `high` for the default deny.
    pub severity: Severity,
    /// For a denied event, what the host does beyond dropping the frame:
    /// the strongest `@response` of the `forbid` policies that denied it.
    pub response: Response,
}

/// What a denied event costs its session, as a `forbid` policy's
/// `@response` annotation says. A denied frame is always dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Response {
    /// Drop the frame; the session goes on. The default.
    DropFrame,
    /// Drop the frame and close the session.
    CloseSession,
    /// Drop the frame, quarantine the device: all its sessions close and
    /// it is refused until an operator releases it.
    QuarantineDevice,
}

impl Response {
    fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "drop-frame" => Response::DropFrame,
            "close-session" => Response::CloseSession,
            "quarantine-device" => Response::QuarantineDevice,
            _ => return None,
        })
    }
}

fn parse_severity(text: &str) -> Option<Severity> {
    Some(match text {
        "info" => Severity::Info,
        "low" => Severity::Low,
        "medium" => Severity::Medium,
        "high" => Severity::High,
        "critical" => Severity::Critical,
        _ => return None,
    })
}

/// A checked policy.
#[derive(Debug)]
pub struct Policy {
    source: String,
    set: PolicySet,
    schema: Arc<Schema>,
    types: Types,
    /// The event attributes the policy's text names anywhere (a safe
    /// over-approximation of those it tests): only these are put in a
    /// request's context, and only these can change a decision. A few
    /// names: a scan is cheaper than hashing each attribute's name.
    referenced: Vec<&'static str>,
    /// What each policy's annotations say, read once: Cedar parses the
    /// key of every annotation looked up, which took a third of a
    /// decision's time.
    annotations: HashMap<PolicyId, Annotations>,
    /// For each action, by name, the policies whose scope can take it:
    /// Cedar evaluates every policy of the set it is given, and a site's
    /// policy holds rules for every protocol and kind of event.
    by_action: HashMap<String, PolicySet>,
}

/// A policy's annotations, as decisions use them.
#[derive(Debug, Default)]
struct Annotations {
    /// How reasons name the policy: its `@id`, quoted, or Cedar's id.
    name: String,
    /// Its `@severity`, if valid.
    severity: Option<Severity>,
    /// Its `@response`, if valid.
    response: Option<Response>,
}

/// The Cedar schema the policies are checked against, generated from the
/// event vocabulary.
pub fn schema_source() -> String {
    let mut s = String::from(
        "// Generated by Palisade from its event vocabulary.\n\
         entity Class;\n\
         entity Zone;\n\
         entity Device in [Class, Zone] { class: String, zone: String, role?: String };\n\
         entity Route { protocol: String };\n\
         action connect appliesTo { principal: Device, resource: Route, context: { address?: ipaddr } };\n",
    );
    for (protocol, kinds) in vocabulary::PROTOCOLS {
        let _ = writeln!(s, "action \"{protocol}\";");
        for kind in *kinds {
            let mut context = Vec::new();
            for ((name, ty), always) in kind.attributes() {
                let ty = match ty {
                    Type::Text | Type::Bytes => "String",
                    Type::Int => "Long",
                    Type::Flag => "Bool",
                    Type::TextSet => "Set<String>",
                };
                let optional = if always { "" } else { "?" };
                context.push(format!("\"{name}\"{optional}: {ty}"));
            }
            let _ = writeln!(
                s,
                "action \"{}\" in [\"{protocol}\"] appliesTo {{ principal: Device, resource: Route, context: {{ {} }} }};",
                kind.name,
                context.join(", ")
            );
        }
    }
    s
}

fn schema() -> Result<Arc<Schema>, PolicyError> {
    let (schema, _warnings) =
        Schema::from_cedarschema_str(&schema_source()).map_err(|e| PolicyError {
            problems: vec![Problem {
                line: 0,
                column: 0,
                reason: format!("the generated schema is invalid (a bug): {e}"),
            }],
        })?;
    Ok(Arc::new(schema))
}

impl Policy {
    /// Parse `source` and check it against the schema: every problem is
    /// reported with its line and column.
    pub fn parse(source: &str) -> Result<Self, PolicyError> {
        let schema = schema()?;
        let set = PolicySet::from_str(source).map_err(|e| PolicyError {
            problems: located(source, &e),
        })?;
        let result = Validator::new((*schema).clone()).validate(&set, ValidationMode::Strict);
        if !result.validation_passed() {
            return Err(PolicyError {
                problems: result
                    .validation_errors()
                    .flat_map(|e| located(source, e))
                    .collect(),
            });
        }
        let mut problems = Vec::new();
        let mut annotations = HashMap::new();
        for policy in set.policies() {
            let mut read = Annotations {
                name: policy.id().to_string(),
                ..Annotations::default()
            };
            let mut bad = |key: &str, value: &str, allowed: &str| {
                // Where the annotation's value is written.
                let (line, column) = (source.find(&format!("\"{value}\"")))
                    .map_or((0, 0), |at| line_column(source, at));
                problems.push(Problem {
                    line,
                    column,
                    reason: format!("@{key}(\"{value}\") is not one of {allowed}"),
                });
            };
            for (key, value) in policy.annotations() {
                match key {
                    "id" => read.name = format!("\"{value}\""),
                    "severity" => {
                        read.severity = parse_severity(value);
                        if read.severity.is_none() {
                            bad("severity", value, "info, low, medium, high, critical");
                        }
                    }
                    "response" => {
                        read.response = Response::parse(value);
                        if read.response.is_none() {
                            bad(
                                "response",
                                value,
                                "drop-frame, close-session, quarantine-device",
                            );
                        }
                    }
                    _ => {}
                }
            }
            annotations.insert(policy.id().clone(), read);
        }
        if !problems.is_empty() {
            return Err(PolicyError { problems });
        }
        let mut referenced = (vocabulary::PROTOCOLS.iter())
            .flat_map(|(_, kinds)| kinds.iter())
            .flat_map(|kind| kind.attributes())
            .map(|((name, _), _)| name)
            .filter(|name| source.contains(name))
            .collect::<BTreeSet<_>>();
        // `topic-levels` is worked out from the topic: a decision on it
        // depends on the topic, whatever the text says.
        if referenced.contains("topic-levels") {
            referenced.insert("topic");
        }
        let referenced = referenced.into_iter().collect();
        Ok(Policy {
            source: source.to_owned(),
            by_action: by_action(&set, &schema),
            set,
            schema,
            types: Types::new()?,
            referenced,
            annotations,
        })
    }

    /// The embedded default policy.
    pub fn embedded_default() -> Result<Self, PolicyError> {
        Policy::parse(EMBEDDED_DEFAULT)
    }

    /// The policy's text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Who a session's requests come from and go to: `device`, whose
    /// certificate carries the Modbus/TCP Security `role` if any, on
    /// `route`, which speaks `protocol`.
    pub fn subject(
        &self,
        device: &Device,
        role: Option<&str>,
        route: &str,
        protocol: &str,
    ) -> Subject {
        let t = &self.types;
        let device_uid = uid(&t.device, &device.id);
        let class = uid(&t.class, &device.class);
        let zone = uid(&t.zone, &device.zone);
        let route_uid = uid(&t.route, route);
        let mut attributes = HashMap::from([
            (
                "class".to_owned(),
                RestrictedExpression::new_string(device.class.clone()),
            ),
            (
                "zone".to_owned(),
                RestrictedExpression::new_string(device.zone.clone()),
            ),
        ]);
        if let Some(role) = role {
            attributes.insert(
                "role".to_owned(),
                RestrictedExpression::new_string(role.to_owned()),
            );
        }
        let entities = [
            Entity::new(
                device_uid.clone(),
                attributes,
                HashSet::from([class.clone(), zone.clone()]),
            ),
            Entity::new(
                route_uid.clone(),
                HashMap::from([(
                    "protocol".to_owned(),
                    RestrictedExpression::new_string(protocol.to_owned()),
                )]),
                HashSet::new(),
            ),
        ];
        let entities = entities.into_iter().filter_map(Result::ok).chain([
            Entity::new_no_attrs(class, HashSet::new()),
            Entity::new_no_attrs(zone, HashSet::new()),
        ]);
        let entities = Entities::from_entities(entities, Some(&self.schema)).unwrap_or_else(|e| {
            tracing::error!(error = %e, device = %device.id, "policy entities refused; the device's requests will be denied");
            Entities::empty()
        });
        Subject {
            device: device_uid,
            route: route_uid,
            entities,
        }
    }

    /// May the device of `subject` connect, from `address`?
    pub fn connect(&self, subject: &Subject, address: Option<std::net::IpAddr>) -> Decision {
        let context = address.map(|a| {
            (
                "address".to_owned(),
                RestrictedExpression::new_ip(a.to_string()),
            )
        });
        self.decide(subject, "connect", context.into_iter().collect())
    }

    /// May the device of `subject` send (or be sent) `event`, travelling
    /// in `direction`?
    pub fn event(&self, subject: &Subject, direction: Direction, event: EventRef<'_>) -> Decision {
        let kind = event.kind();
        let Some(known) = vocabulary::find(kind) else {
            return Decision {
                allowed: false,
                reason: format!("{kind} is not in the event vocabulary (default deny)"),
                severity: Severity::High,
                response: Response::DropFrame,
            };
        };
        let mut context: Vec<(String, RestrictedExpression)> = Vec::new();
        for ((name, ty), _) in known.attributes() {
            if !self.references(name) {
                continue;
            }
            let value = match (name, ty) {
                ("direction", _) => Some(RestrictedExpression::new_string(
                    match direction {
                        Direction::ToUpstream => "to-upstream",
                        Direction::ToDevice => "to-device",
                    }
                    .to_owned(),
                )),
                ("topic-levels", _) => event
                    .text("topic")
                    .map(|t| RestrictedExpression::new_long(t.split('/').count() as i64)),
                (_, Type::TextSet) => {
                    let all: Vec<RestrictedExpression> = (event.texts(name))
                        .map(|t| RestrictedExpression::new_string(t.to_owned()))
                        .collect();
                    (!all.is_empty()).then(|| RestrictedExpression::new_set(all))
                }
                (_, ty) => event.get(name).and_then(|v| match (ty, v) {
                    (Type::Text, Value::Text(t)) => {
                        Some(RestrictedExpression::new_string(t.to_owned()))
                    }
                    (Type::Int, Value::Int(i)) => Some(RestrictedExpression::new_long(i)),
                    (Type::Flag, Value::Flag(f)) => Some(RestrictedExpression::new_bool(f)),
                    (Type::Bytes, Value::Bytes(b)) => Some(RestrictedExpression::new_string(
                        b.iter().map(|b| format!("{b:02x}")).collect(),
                    )),
                    // A parser that gives an attribute another type than
                    // the vocabulary's: the policy does not see it.
                    _ => None,
                }),
            };
            if let Some(value) = value {
                context.push((name.to_owned(), value));
            }
        }
        self.decide(subject, kind, context)
    }

    fn references(&self, name: &str) -> bool {
        self.referenced.contains(&name)
    }

    /// Of `batch`'s names of attributes, by their index in its table, those
    /// the policy references: what [`Policy::event_key`] reads, looked up
    /// once a batch rather than once an attribute.
    pub fn key_names(&self, batch: &Columns) -> Vec<bool> {
        (batch.fields.iter())
            .map(|(name, _)| self.references(name))
            .collect()
    }

    /// Everything [`Policy::event`]'s decision on `event` depends on for
    /// one subject, written to `key`: two events with the same key get the
    /// same decision, so a session may keep decisions by key. `names` are
    /// [`Policy::key_names`] of the event's batch. Values go in as their
    /// bytes, undecoded: equal bytes decode alike.
    pub fn event_key(
        &self,
        direction: Direction,
        event: EventRef<'_>,
        names: &[bool],
        key: &mut Vec<u8>,
    ) {
        key.clear();
        // Names come from the parser: each goes in with its length, so that
        // no kind or name can be made to read as another's key.
        let put_name = |key: &mut Vec<u8>, name: &str| {
            key.extend_from_slice(&(name.len() as u64).to_le_bytes());
            key.extend_from_slice(name.as_bytes());
        };
        put_name(key, event.kind());
        key.push(match direction {
            Direction::ToUpstream => 0,
            Direction::ToDevice => 1,
        });
        let batch = event.columns();
        let attributes = event.attribute_range();
        let fields = batch.attribute_fields.get(attributes.clone());
        let values = batch.attribute_values.get(attributes);
        for (&field, &value) in fields
            .unwrap_or_default()
            .iter()
            .zip(values.unwrap_or_default())
        {
            let field = usize::from(field);
            let (true, Some((field_name, ty))) =
                (names.get(field) == Some(&true), batch.fields.get(field))
            else {
                continue;
            };
            put_name(key, field_name);
            match ty {
                ValueType::Text | ValueType::Bytes => {
                    let bytes = batch.value_bytes(value).unwrap_or_default();
                    key.push(if *ty == ValueType::Text { b't' } else { b'b' });
                    key.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
                    key.extend_from_slice(bytes);
                }
                ValueType::Int => {
                    key.push(b'i');
                    key.extend_from_slice(&value.to_le_bytes());
                }
                ValueType::Flag => key.extend_from_slice(&[b'f', u8::from(value != 0)]),
            }
        }
    }

    fn decide(
        &self,
        subject: &Subject,
        action: &str,
        context: Vec<(String, RestrictedExpression)>,
    ) -> Decision {
        let deny = |reason: String| Decision {
            allowed: false,
            reason,
            severity: Severity::High,
            response: Response::DropFrame,
        };
        let context = match Context::from_pairs(context) {
            Ok(c) => c,
            Err(e) => return deny(format!("context refused: {e}")),
        };
        let request = match Request::new(
            subject.device.clone(),
            uid(&self.types.action, action),
            subject.route.clone(),
            context,
            None,
        ) {
            Ok(r) => r,
            Err(e) => return deny(format!("request refused: {e}")),
        };
        let set = self.by_action.get(action).unwrap_or(&self.set);
        let response = Authorizer::new().is_authorized(&request, set, &subject.entities);
        // In one order, whatever order Cedar found them in.
        let mut reasons: Vec<String> = response
            .diagnostics()
            .reason()
            .map(|id| self.name(id))
            .collect();
        reasons.sort_unstable();
        let errors: Vec<String> = response
            .diagnostics()
            .errors()
            .map(|e| e.to_string())
            .collect();
        let allowed = response.decision() == cedar_policy::Decision::Allow;
        let reason = match (allowed, reasons.is_empty()) {
            (true, _) => format!("permitted by {}", reasons.join(", ")),
            (false, false) => format!("forbidden by {}", reasons.join(", ")),
            (false, true) if errors.is_empty() => "no policy permits it (default deny)".into(),
            (false, true) => format!("denied: {}", errors.join("; ")),
        };
        let mut decision = Decision {
            allowed,
            reason,
            severity: Severity::High,
            response: Response::DropFrame,
        };
        if !allowed {
            let deciding =
                || (response.diagnostics().reason()).filter_map(|id| self.annotations.get(id));
            if let Some(severity) = deciding()
                .filter_map(|a| a.severity)
                .max_by_key(|s| *s as u8)
            {
                decision.severity = severity;
            }
            if let Some(r) = deciding().filter_map(|a| a.response).max() {
                decision.response = r;
            }
        }
        decision
    }

    fn name(&self, id: &PolicyId) -> String {
        (self.annotations.get(id)).map_or_else(|| id.to_string(), |a| a.name.clone())
    }
}

/// The device and route of one session, as the policy sees them.
#[derive(Debug, Clone)]
pub struct Subject {
    device: EntityUid,
    route: EntityUid,
    entities: Entities,
}

/// The entity types of the schema, parsed once.
#[derive(Debug)]
struct Types {
    device: EntityTypeName,
    class: EntityTypeName,
    zone: EntityTypeName,
    route: EntityTypeName,
    action: EntityTypeName,
}

impl Types {
    fn new() -> Result<Self, PolicyError> {
        let name = |n: &str| {
            EntityTypeName::from_str(n).map_err(|e| PolicyError {
                problems: vec![Problem {
                    line: 0,
                    column: 0,
                    reason: format!("entity type {n}: {e}"),
                }],
            })
        };
        Ok(Types {
            device: name("Device")?,
            class: name("Class")?,
            zone: name("Zone")?,
            route: name("Route")?,
            action: name("Action")?,
        })
    }
}

/// For each action of `schema`, the policies of `set` whose action scope
/// takes it (as itself, or as a member of a group it names). The others
/// cannot apply to a request for the action, so leaving them out changes
/// no decision. An action whose subset cannot be made is decided with the
/// whole set.
fn by_action(set: &PolicySet, schema: &Schema) -> HashMap<String, PolicySet> {
    let Ok(actions) = schema.action_entities() else {
        return HashMap::new();
    };
    (schema.actions())
        .filter_map(|action| {
            let groups: Vec<&EntityUid> = actions.ancestors(action).into_iter().flatten().collect();
            let takes = |p: &&cedar_policy::Policy| match p.action_constraint() {
                ActionConstraint::Any => true,
                ActionConstraint::Eq(a) => &a == action,
                ActionConstraint::In(named) => {
                    (named.iter()).any(|a| a == action || groups.contains(&a))
                }
            };
            let subset = PolicySet::from_policies(set.policies().filter(takes).cloned()).ok()?;
            Some((action.id().unescaped().to_owned(), subset))
        })
        .collect()
}

fn uid(ty: &EntityTypeName, id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(ty.clone(), EntityId::new(id))
}

/// The problems of a Cedar diagnostic, with line and column.
fn located(source: &str, diagnostic: &dyn miette::Diagnostic) -> Vec<Problem> {
    let mut reason = diagnostic.to_string();
    if let Some(help) = diagnostic.help() {
        let _ = write!(reason, " ({help})");
    }
    let mut problems: Vec<Problem> = diagnostic
        .labels()
        .into_iter()
        .flatten()
        .map(|label| {
            let (line, column) = line_column(source, label.offset());
            Problem {
                line,
                column,
                reason: reason.clone(),
            }
        })
        .take(1)
        .collect();
    for related in diagnostic.related().into_iter().flatten() {
        problems.extend(located(source, related));
    }
    if problems.is_empty() {
        problems.push(Problem {
            line: 0,
            column: 0,
            reason,
        });
    }
    problems
}

fn line_column(source: &str, offset: usize) -> (usize, usize) {
    let before = source.get(..offset).unwrap_or(source);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// The active policy, replaced atomically: a policy that does not check is
/// refused and the active one stays.
#[derive(Debug, Clone)]
pub struct PolicyEngine {
    active: Arc<RwLock<Arc<Policy>>>,
}

impl PolicyEngine {
    /// An engine running `policy`.
    pub fn new(policy: Policy) -> Self {
        PolicyEngine {
            active: Arc::new(RwLock::new(Arc::new(policy))),
        }
    }

    /// The active policy.
    pub fn active(&self) -> Arc<Policy> {
        self.active
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Check `source` and make it the active policy. On any problem the
    /// active policy stays, and the problems are returned.
    pub fn reload(&self, source: &str) -> Result<(), PolicyError> {
        let policy = Arc::new(Policy::parse(source)?);
        *self.active.write().unwrap_or_else(|p| p.into_inner()) = policy;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use crate::plugins::Batch;

    fn device(class: &str) -> Device {
        Device {
            id: "dev-1".into(),
            class: class.into(),
            zone: "cell-3".into(),
        }
    }

    fn publish(topic: &str) -> Batch {
        let mut batch = Batch::new();
        batch
            .push("mqtt.publish")
            .text("topic", topic)
            .int("qos", 1);
        batch
    }

    const SITE: &str = r#"
@id("thermostats connect")
permit(principal in Class::"thermostat", action == Action::"connect", resource == Route::"mqtt");

@id("thermostats publish telemetry")
permit(principal in Class::"thermostat", action == Action::"mqtt.publish", resource)
when { context.topic like "site/*/telemetry" && context["topic-levels"] == 3 };

@id("nobody publishes with qos 2 in cell-3")
forbid(principal in Zone::"cell-3", action == Action::"mqtt.publish", resource)
when { context has qos && context.qos == 2 };
"#;

    /// Each action is decided with the policies whose scope takes it: the
    /// decisions are those of the whole set, whatever the scope's form.
    #[test]
    fn each_action_is_decided_as_by_the_whole_set() {
        let text = r#"
@id("group") permit(principal, action in Action::"mqtt", resource) when { context.direction == "to-device" };
@id("list") permit(principal in Class::"sensor", action in [Action::"mqtt.connect", Action::"mqtt.subscribe"], resource);
@id("one") permit(principal, action == Action::"mqtt.publish", resource) when { context.topic like "site/*" };
@id("any") forbid(principal in Zone::"cell-9", action, resource);
@id("group forbid") @severity("critical") forbid(principal, action in Action::"modbus", resource) when { context.direction == "to-upstream" };
"#;
        let subsets = Policy::parse(text).unwrap();
        let mut whole = Policy::parse(text).unwrap();
        whole.by_action.clear();
        assert!(subsets.by_action["mqtt.publish"].policies().count() < 5);
        let mut events = Batch::new();
        events.push("mqtt.publish").text("topic", "site/a");
        events.push("mqtt.publish").text("topic", "other");
        events.push("mqtt.connect").text("client-id", "c");
        events.push("mqtt.subscribe").text("filter", "a/#");
        events.push("mqtt.pingreq");
        events.push("modbus.read").int("unit", 1);
        for (class, zone) in [
            ("sensor", "cell-1"),
            ("plc", "cell-1"),
            ("sensor", "cell-9"),
        ] {
            let device = Device {
                id: "d".into(),
                class: class.into(),
                zone: zone.into(),
            };
            let (a, b) = (
                subsets.subject(&device, None, "r", "mqtt"),
                whole.subject(&device, None, "r", "mqtt"),
            );
            assert_eq!(subsets.connect(&a, None), whole.connect(&b, None));
            for event in events.iter() {
                for direction in [Direction::ToUpstream, Direction::ToDevice] {
                    let (mine, theirs) = (
                        subsets.event(&a, direction, event),
                        whole.event(&b, direction, event),
                    );
                    assert_eq!(
                        mine,
                        theirs,
                        "{} {class} {zone} {direction:?}",
                        event.kind()
                    );
                }
            }
        }
    }

    #[test]
    fn the_embedded_default_checks_and_allows_a_protocol_on_its_routes() {
        let policy = Policy::embedded_default().unwrap();
        assert!(!policy.source().is_empty());
        let subject = policy.subject(&device("plc"), None, "mqtt", "mqtt");
        let batch = publish("a/b");
        assert!(
            policy
                .event(&subject, Direction::ToUpstream, batch.get(0).unwrap())
                .allowed
        );
        assert!(policy.connect(&subject, None).allowed);
        let coap_route = policy.subject(&device("plc"), None, "coap", "coap");
        let d = policy.event(&coap_route, Direction::ToUpstream, batch.get(0).unwrap());
        assert!(!d.allowed, "MQTT on a CoAP route: {d:?}");
    }

    #[test]
    fn class_zone_and_topic_decide_with_default_deny() {
        let policy = Policy::parse(SITE).unwrap();
        let thermostat = policy.subject(&device("thermostat"), None, "mqtt", "mqtt");
        let telemetry = publish("site/floor-2/telemetry");
        let d = policy.event(
            &thermostat,
            Direction::ToUpstream,
            telemetry.get(0).unwrap(),
        );
        assert!(d.allowed, "{d:?}");
        assert!(d.reason.contains("thermostats publish telemetry"), "{d:?}");

        for topic in ["site/x/cmd", "site/a/b/telemetry"] {
            let d = policy.event(
                &thermostat,
                Direction::ToUpstream,
                publish(topic).get(0).unwrap(),
            );
            assert!(!d.allowed, "{topic}: {d:?}");
            assert_eq!(d.reason, "no policy permits it (default deny)");
        }

        let mut qos2 = Batch::new();
        qos2.push("mqtt.publish")
            .text("topic", "site/a/telemetry")
            .int("qos", 2);
        let d = policy.event(&thermostat, Direction::ToUpstream, qos2.get(0).unwrap());
        assert!(!d.allowed);
        assert!(
            d.reason
                .contains("forbidden by \"nobody publishes with qos 2 in cell-3\""),
            "{d:?}"
        );

        let plc = policy.subject(&device("plc"), None, "mqtt", "mqtt");
        assert!(!policy.connect(&plc, None).allowed);
        assert!(policy.connect(&thermostat, None).allowed);
    }

    #[test]
    fn events_with_one_key_get_one_decision() {
        let policy = Policy::parse(SITE).unwrap();
        let mut batch = Batch::new();
        let publishes = [
            ("site/a/telemetry", 0, 7),
            ("site/a/telemetry", 0, 8),
            ("site/a/telemetry", 2, 7),
            ("site/b/telemetry", 0, 7),
            ("site/a/telemetrx", 0, 7),
        ];
        for (topic, qos, size) in publishes {
            // payload-size is in no policy text: it cannot change a decision.
            (batch.push("mqtt.publish").text("topic", topic))
                .int("qos", qos)
                .int("payload-size", size);
        }
        batch
            .push("mqtt.publish")
            .bytes("topic", b"site/a/telemetry");
        let names = policy.key_names(batch.columns());
        let key = |i: usize, direction| {
            let mut key = Vec::new();
            policy.event_key(direction, batch.get(i).unwrap(), &names, &mut key);
            key
        };
        let up = Direction::ToUpstream;
        assert_eq!(key(0, up), key(1, up), "differs in what no policy reads");
        for other in 2..6 {
            assert_ne!(key(0, up), key(other, up), "event {other}");
        }
        assert_ne!(key(0, up), key(0, Direction::ToDevice));
        // Same key, same decision, across batches too.
        let thermostat = policy.subject(&device("thermostat"), None, "mqtt", "mqtt");
        let mut alone = Batch::new();
        (alone.push("mqtt.publish").text("topic", "site/a/telemetry")).int("qos", 0);
        let mut again = Vec::new();
        let alone_names = policy.key_names(alone.columns());
        policy.event_key(up, alone.get(0).unwrap(), &alone_names, &mut again);
        assert_eq!(again, key(0, up));
        for i in 0..6 {
            let d = policy.event(&thermostat, up, batch.get(i).unwrap());
            assert_eq!(d.allowed, [0, 1, 3].contains(&i), "event {i}: {d:?}");
        }
        // A parser names the kinds: one named to spell an allowed event's
        // key (its kind, direction, then `qos`, `i` and a zero) gets a key
        // of its own, and so no cached decision but its own: denied.
        let mut forged = Batch::new();
        forged.push("mqtt.publish").int("qos", 0);
        forged.push("mqtt.publish\0qosi\0\0\0\0\0\0\0");
        let names = policy.key_names(forged.columns());
        let [mut real, mut fake] = [Vec::new(), Vec::new()];
        policy.event_key(up, forged.get(0).unwrap(), &names, &mut real);
        policy.event_key(up, forged.get(1).unwrap(), &names, &mut fake);
        assert_ne!(real, fake);
        assert!(
            !policy
                .event(&thermostat, up, forged.get(1).unwrap())
                .allowed
        );
    }

    #[test]
    fn a_wrong_policy_is_refused_with_line_and_reason() {
        let typo = "permit(principal, action == Action::\"mqtt.publish\", resource)\nwhen { context.topik == \"a\" };";
        let e = Policy::parse(typo).unwrap_err();
        assert_eq!(e.problems[0].line, 2, "{e}");
        assert!(e.to_string().contains("topik"), "{e}");

        let syntax = "permit(principal, action, resource)\nwhen { context.topic like };";
        let e = Policy::parse(syntax).unwrap_err();
        assert_eq!(e.problems[0].line, 2, "{e}");

        let wrong_type = "permit(principal, action == Action::\"mqtt.publish\", resource)\nwhen { context.qos == \"one\" };";
        assert!(Policy::parse(wrong_type).is_err());
    }

    #[test]
    fn reload_is_atomic_and_refuses_a_broken_policy() {
        let engine = PolicyEngine::new(Policy::embedded_default().unwrap());
        assert!(
            engine
                .reload("permit(principal, action, resource) when {")
                .is_err()
        );
        assert_eq!(engine.active().source(), EMBEDDED_DEFAULT);
        engine.reload(SITE).unwrap();
        assert_eq!(engine.active().source(), SITE);
    }

    #[test]
    fn subscription_filters_are_a_set() {
        let policy = Policy::parse(
            "permit(principal, action == Action::\"mqtt.subscribe\", resource)\nwhen { context has filter && context.filter.contains(\"site/#\") };",
        )
        .unwrap();
        let subject = policy.subject(&device("x"), None, "mqtt", "mqtt");
        let mut batch = Batch::new();
        batch
            .push("mqtt.subscribe")
            .int("packet-id", 1)
            .text("filter", "a")
            .text("filter", "site/#");
        assert!(
            policy
                .event(&subject, Direction::ToUpstream, batch.get(0).unwrap())
                .allowed
        );
    }

    /// A forbidden filter stays forbidden when the device asks for it as a
    /// shared subscription, `$share/{group}/{filter}`: the MQTT parser
    /// describes the filter the broker serves, and the group apart.
    #[test]
    fn a_forbidden_filter_is_forbidden_as_a_shared_subscription() {
        let policy = Policy::parse(
            r#"permit(principal, action in Action::"mqtt", resource);
@id("no secrets")
forbid(principal, action in [Action::"mqtt.subscribe", Action::"mqtt.unsubscribe"], resource)
when { context.filter.contains("site/secret/#") };
@id("no group x")
forbid(principal, action == Action::"mqtt.subscribe", resource)
when { context has "share-group" && context["share-group"].contains("x") };"#,
        )
        .unwrap();
        let subject = policy.subject(&device("x"), None, "mqtt", "mqtt");
        // A SUBSCRIBE (0x82, options QoS 0) or UNSUBSCRIBE (0xa2),
        // packet id 1, of site/a and `filter`.
        let judge = |kind: u8, filter: &str| {
            let mut body = vec![0, 1, 0, 6];
            body.extend_from_slice(b"site/a");
            if kind == 0x82 {
                body.push(0);
            }
            body.extend_from_slice(&(filter.len() as u16).to_be_bytes());
            body.extend_from_slice(filter.as_bytes());
            if kind == 0x82 {
                body.push(0);
            }
            let mut frame = vec![kind, body.len() as u8];
            frame.extend_from_slice(&body);
            let parsed = mqtt::parse(&[4, 4], &frame);
            assert_eq!(parsed.malformed, None, "{filter}");
            policy.event(
                &subject,
                Direction::ToUpstream,
                parsed.events.get(0).unwrap(),
            )
        };
        for kind in [0x82, 0xa2] {
            for filter in ["site/secret/#", "$share/g/site/secret/#"] {
                let d = judge(kind, filter);
                assert!(!d.allowed, "{kind:#x} {filter} passed: {d:?}");
                assert!(d.reason.contains("no secrets"), "{}", d.reason);
            }
            assert!(judge(kind, "$share/g/site/b/#").allowed, "{kind:#x}");
        }
        // The group is the policy's to judge too.
        let d = judge(0x82, "$share/x/site/b/#");
        assert!(d.reason.contains("no group x"), "{d:?}");
        assert!(!d.allowed);
    }

    /// A rule on a subscription option holds for every filter of a
    /// SUBSCRIBE, as the MQTT parser describes it, not for the first
    /// alone.
    #[test]
    fn a_subscription_option_of_any_filter_is_judged() {
        let policy = Policy::parse(
            r#"permit(principal, action in Action::"mqtt", resource);
@id("no qos 2 subscriptions")
forbid(principal, action == Action::"mqtt.subscribe", resource)
when { context has "subscribe-qos" && context["subscribe-qos"] == 2 };"#,
        )
        .unwrap();
        let subject = policy.subject(&device("x"), None, "mqtt", "mqtt");
        // SUBSCRIBE, packet id 1: a/b at QoS 0, site/cmd/# at QoS `qos`.
        let judge = |qos: u8| {
            let mut body = vec![0, 1, 0, 3, b'a', b'/', b'b', 0, 0, 10];
            body.extend_from_slice(b"site/cmd/#");
            body.push(qos);
            let mut frame = vec![0x82, body.len() as u8];
            frame.extend_from_slice(&body);
            let parsed = mqtt::parse(&[4, 4], &frame);
            assert_eq!(parsed.malformed, None);
            policy.event(
                &subject,
                Direction::ToUpstream,
                parsed.events.get(0).unwrap(),
            )
        };
        let d = judge(2);
        assert!(!d.allowed, "QoS 2 for the second filter passed: {d:?}");
        assert!(d.reason.contains("no qos 2 subscriptions"), "{}", d.reason);
        assert!(judge(1).allowed);
    }

    #[test]
    fn a_forbid_says_how_grave_and_what_to_do() {
        let policy = Policy::parse(
            r#"permit(principal, action in Action::"mqtt", resource);
@id("firmware") @severity("critical") @response("quarantine-device")
forbid(principal, action == Action::"mqtt.publish", resource) when { context.topic like "*/firmware" };
@id("commands") @response("close-session")
forbid(principal, action == Action::"mqtt.publish", resource) when { context.topic like "*/cmd" };
"#,
        )
        .unwrap();
        let subject = policy.subject(&device("x"), None, "mqtt", "mqtt");
        let decide = |topic: &str| {
            let batch = publish(topic);
            policy.event(&subject, Direction::ToUpstream, batch.get(0).unwrap())
        };
        let firmware = decide("a/firmware");
        assert!(!firmware.allowed);
        assert_eq!(firmware.severity as u8, Severity::Critical as u8);
        assert_eq!(firmware.response, Response::QuarantineDevice);
        let cmd = decide("a/cmd");
        assert_eq!(cmd.severity as u8, Severity::High as u8, "the default");
        assert_eq!(cmd.response, Response::CloseSession);
        assert!(decide("a/telemetry").allowed);
        // Denied by default: the frame is dropped, nothing more.
        let none =
            Policy::parse("permit(principal, action == Action::\"connect\", resource);").unwrap();
        let subject = none.subject(&device("x"), None, "mqtt", "mqtt");
        let batch = publish("a/b");
        let d = none.event(&subject, Direction::ToUpstream, batch.get(0).unwrap());
        assert_eq!((d.allowed, d.response), (false, Response::DropFrame));
    }

    #[test]
    fn an_unknown_response_is_refused_where_it_is_written() {
        let err = Policy::parse(
            "permit(principal, action == Action::\"connect\", resource);\n@response(\"explode\")\nforbid(principal, action, resource);",
        )
        .unwrap_err();
        let problem = &err.problems[0];
        assert_eq!(problem.line, 2, "{err}");
        assert!(problem.reason.contains("explode"), "{err}");
    }

    #[test]
    fn a_role_is_a_device_attribute() {
        let policy = Policy::parse(
            r#"permit(principal, action == Action::"connect", resource) when { principal has role && principal.role == "operator" };"#,
        )
        .unwrap();
        let operator = policy.subject(&device("hmi"), Some("operator"), "modbus", "modbus");
        assert!(policy.connect(&operator, None).allowed);
        let viewer = policy.subject(&device("hmi"), Some("viewer"), "modbus", "modbus");
        assert!(!policy.connect(&viewer, None).allowed);
        let none = policy.subject(&device("hmi"), None, "modbus", "modbus");
        assert!(!policy.connect(&none, None).allowed);
    }
}
