//! Administration: the operator's commands (`palisade pki ...`,
//! `palisade device ...`) as requests against the appliance's state.
//!
//! The state database is sled, which one process opens at a time. While
//! `palisade serve` runs it owns the database, so the command line sends
//! its [`Request`] over a Unix socket in the data directory
//! (`<data>/admin.sock`, reachable only by the appliance's user: the data
//! directory is mode 0700), and the running appliance executes it, closing
//! live sessions at once on a revocation or quarantine. When no appliance
//! runs, the command line opens the database itself and executes the same
//! request the same way ([`Admin::execute`]).
//!
//! The protocol is one JSON request line, then JSON response lines: progress
//! lines while a long request runs, then the answer.
//!
//! Operators on other machines reach the same requests through the HTTPS
//! admin API ([`serve_https`]) with a certificate from the site CA that
//! carries their role.

mod https;
mod plugins;
mod socket;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tracing::info;

pub use https::{API_PATH, MAX_CONNECTIONS_PER_OPERATOR, RemoteAdmin, serve_https};
pub use plugins::{RegistrySource, self_check};
pub use socket::{ADMIN_SOCKET, Console, bind_socket, serve_socket};

use crate::audit::{AuditQueue, Entry, PluginRef, What};
use crate::identity::{Device, DeviceCertRequest, Operators, Pki, Registry, Role, format_time};
use crate::plugins::{Installed, Runtime, RuntimeConfig};
use crate::registry::Library;
use crate::session::LiveSessions;
use crate::store::Store;

/// One operator command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    /// Issue a site certificate for a device, enrolling it if new.
    Issue {
        /// The device id.
        device: String,
        /// Its class.
        class: String,
        /// Its zone.
        zone: String,
        /// The Modbus/TCP Security role to carry.
        role: Option<String>,
        /// Lifetime in hours.
        hours: u64,
        /// The device's public key: SubjectPublicKeyInfo, DER, base64. The
        /// private key never leaves the command line.
        public_key: String,
    },
    /// Revoke a device and all its certificates; close its sessions.
    Revoke {
        /// The device id.
        device: String,
    },
    /// Every device's certificates.
    PkiList,
    /// Every device.
    DeviceList,
    /// One device.
    DeviceShow {
        /// The device id.
        device: String,
    },
    /// Quarantine a device; close its sessions.
    Quarantine {
        /// The device id.
        device: String,
    },
    /// Release a device from quarantine.
    Release {
        /// The device id.
        device: String,
    },
    /// Enroll a device whose certificates an external CA issues.
    DeviceAdd {
        /// The device id.
        device: String,
        /// Its class.
        class: String,
        /// Its zone.
        zone: String,
    },
    /// Every plugin: versions, publisher, world, state, strikes, routes.
    PluginList,
    /// Fetch a plugin from the signed registry, verify, precompile and
    /// self-check it, then make it active (or its slot's shadow).
    PluginInstall {
        /// The plugin's name.
        name: String,
        /// The version; the newest when absent.
        version: Option<String>,
        /// Run it as a shadow beside the active version instead.
        shadow: bool,
    },
    /// Make an installed version (or `first-party`) the active one.
    PluginActivate {
        /// The plugin's name.
        name: String,
        /// The version.
        version: String,
    },
    /// Make the previously active version active again.
    PluginRollback {
        /// The plugin's name.
        name: String,
    },
    /// Delete an installed version that is not active.
    PluginRemove {
        /// The plugin's name.
        name: String,
        /// The version.
        version: String,
    },
    /// Shadow the active version with an installed one, or stop (`None`).
    PluginShadow {
        /// The plugin's name.
        name: String,
        /// The version.
        version: Option<String>,
    },
    /// Make the shadow the active version.
    PluginPromote {
        /// The plugin's name.
        name: String,
    },
    /// Show or change a plugin's settings (`config/KEY` in its store).
    PluginConfig {
        /// The plugin's name.
        name: String,
        /// The setting; every setting when absent.
        key: Option<String>,
        /// The new value; the setting is shown when absent.
        value: Option<String>,
        /// Remove the setting, so the plugin's default applies.
        unset: bool,
    },
    /// Issue an operator a certificate for the HTTPS admin API.
    OperatorIssue {
        /// The operator's name.
        name: String,
        /// What they may do.
        role: Role,
        /// Lifetime in hours.
        hours: u64,
        /// Their public key: SubjectPublicKeyInfo, DER, base64.
        public_key: String,
    },
    /// Revoke an operator and every certificate issued to them.
    OperatorRevoke {
        /// The operator's name.
        name: String,
    },
    /// Every operator.
    OperatorList,
}

impl Request {
    /// The least role an operator needs to make this request over the
    /// HTTPS admin API; `None` for requests made only on the appliance
    /// itself (through the admin socket), which are the ones that decide
    /// who the operators are.
    pub fn role(&self) -> Option<Role> {
        match self {
            Request::PkiList
            | Request::DeviceList
            | Request::DeviceShow { .. }
            | Request::PluginList => Some(Role::Viewer),
            Request::Quarantine { .. }
            | Request::Release { .. }
            | Request::PluginInstall { .. }
            | Request::PluginActivate { .. }
            | Request::PluginRollback { .. }
            | Request::PluginRemove { .. }
            | Request::PluginShadow { .. }
            | Request::PluginPromote { .. }
            // Reading settings too: a setting may be a credential a plugin
            // needs (its audit record keeps only its size).
            | Request::PluginConfig { .. } => Some(Role::Operator),
            Request::Issue { .. } | Request::Revoke { .. } | Request::DeviceAdd { .. } => {
                Some(Role::Admin)
            }
            Request::OperatorIssue { .. }
            | Request::OperatorRevoke { .. }
            | Request::OperatorList => None,
        }
    }

    /// Whether the request only reads: what a viewer may make, the
    /// plugins' settings, and the list of operators.
    pub fn reads_only(&self) -> bool {
        self.role() == Some(Role::Viewer)
            || matches!(
                self,
                Request::OperatorList
                    | Request::PluginConfig {
                        value: None,
                        unset: false,
                        ..
                    }
            )
    }

    /// The request's name, as its JSON `op` says.
    pub fn op(&self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.get("op").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_default()
    }
}

/// The answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Response {
    /// Done; what the command shows.
    Ok(Value),
    /// Refused or failed; why.
    Error(String),
    /// A step of a long request (an install), before its answer.
    Progress(String),
}

/// A request executing on a blocking thread (registry changes are
/// flushed to disk before they are acknowledged, and installs compile),
/// whose progress lines are read while it runs.
#[derive(Debug)]
pub(crate) struct Running {
    steps: tokio::sync::mpsc::UnboundedReceiver<String>,
    job: Option<tokio::task::JoinHandle<Response>>,
}

impl Running {
    /// Start executing `request` with `admin`, holding `held` (a request
    /// slot) while it executes: it is released when the execution ends,
    /// however slowly the answer is then read. A request `by` an operator
    /// that changes something, or is refused, is recorded in the audit
    /// trail once answered, whether or not they are still there to read
    /// the answer; one that only reads and is answered is not (a
    /// monitoring script polling would fill the trail).
    pub(crate) fn start_holding<H: Send + 'static>(
        admin: Admin,
        request: Request,
        held: H,
        by: Option<OperatorRef>,
    ) -> Running {
        let (tx, steps) = tokio::sync::mpsc::unbounded_channel::<String>();
        let job = tokio::task::spawn_blocking(move || {
            let made = by.map(|by| (by, request.clone()));
            let answer = admin.execute_with(request, &mut |step| {
                let _ = tx.send(step);
            });
            if let Some((by, request)) = made {
                let outcome = match &answer {
                    Response::Error(e) => Err(e.as_str()),
                    _ => Ok(()),
                };
                // A change is recorded on disk, even one that failed
                // part-way (it may have taken effect); a read only when
                // refused, as the queue has room.
                let durable = !request.reads_only();
                if outcome.is_err() || durable {
                    let recorded = admin.record(&by, &request, outcome, durable);
                    if let (Err(e), true) = (recorded, durable) {
                        let _ = tx.send(format!("warning: not recorded in the audit trail: {e}"));
                    }
                }
            }
            // Held while the record is written too: the slots bound the
            // threads a stalled disk can hold.
            drop(held);
            answer
        });
        Running {
            steps,
            job: Some(job),
        }
    }

    /// The next progress line, or the answer. Every progress line comes
    /// before the answer; after it, only the answer again.
    pub(crate) async fn next(&mut self) -> Response {
        if let Some(step) = self.steps.recv().await {
            return Response::Progress(step);
        }
        // The channel closed: the job returned and dropped its sender.
        match self.job.take() {
            Some(job) => job
                .await
                .unwrap_or_else(|e| Response::Error(format!("admin request failed: {e}"))),
            None => Response::Error("the request has already been answered".into()),
        }
    }
}

/// Executes requests against the appliance's state.
#[derive(Debug, Clone)]
pub struct Admin {
    store: Store,
    pki: Arc<Pki>,
    registry: Registry,
    operators: Operators,
    /// The running appliance's live sessions; `None` in the command line.
    live: Option<LiveSessions>,
    /// The running appliance's plugin runtime and served plugins; `None`
    /// in the command line.
    plugins: Option<(Runtime, Installed)>,
    /// The data directory and the installed plugin bundles.
    library: Option<(std::path::PathBuf, Library)>,
    /// The running appliance's audit trail, where operators' requests on
    /// the HTTPS admin API and on the admin socket are recorded; `None` in
    /// the command line.
    audit: Option<AuditQueue>,
    /// Held while a plugin setting is counted and changed, so that two
    /// operators setting at once cannot both pass the settings' caps.
    settings: Arc<std::sync::Mutex<()>>,
}

/// An operator making a request on the HTTPS admin API, as their
/// certificate names them.
#[derive(Debug, Clone)]
pub(crate) struct OperatorRef {
    /// Their name.
    pub(crate) name: String,
    /// Their role.
    pub(crate) role: Role,
}

/// Bytes of each string argument an audit record keeps: any valid name,
/// device id or setting name whole, while a setting's value (up to 64 KiB,
/// and perhaps a credential a plugin needs) shows only its start.
const MAX_ARGUMENT_BYTES: usize = crate::identity::MAX_NAME;

/// Settings one plugin may have. A plugin reads a handful (the first-party
/// ones one to three); past this many, a script is writing names no
/// plugin reads. Operators' settings are written whatever the plugin's
/// store quota, so only these caps bound them.
const MAX_SETTINGS: usize = 256;
/// Bytes one plugin's settings may take together, counted as its store
/// counts them (key, value and [`ENTRY_OVERHEAD`] each): the default store
/// quota, so that a plugin's settings take at most as much disk again as
/// the plugin's own state may.
///
/// [`ENTRY_OVERHEAD`]: palisade_plugin_sdk::host::kv::ENTRY_OVERHEAD
const MAX_SETTINGS_BYTES: usize = 1 << 20;

impl Admin {
    /// An executor over `store` (plugins' settings), `pki`, `registry` and
    /// `operators`, closing sessions in `live`.
    pub fn new(
        store: Store,
        pki: Arc<Pki>,
        registry: Registry,
        operators: Operators,
        live: Option<LiveSessions>,
    ) -> Admin {
        Admin {
            store,
            pki,
            registry,
            operators,
            live,
            plugins: None,
            library: None,
            audit: None,
            settings: Arc::default(),
        }
    }

    /// Manage the plugin bundles of the appliance whose data directory is
    /// `data`.
    pub fn with_library(mut self, data: &std::path::Path, library: Library) -> Admin {
        self.library = Some((data.to_owned(), library));
        self
    }

    /// The executor of a running appliance, which serves the plugins in
    /// `installed` with `runtime`.
    pub fn serving(mut self, runtime: Runtime, installed: Installed) -> Admin {
        self.plugins = Some((runtime, installed));
        self
    }

    /// Record operators' requests in `audit`.
    pub fn recording(mut self, audit: AuditQueue) -> Admin {
        self.audit = Some(audit);
        self
    }

    /// Write every change to disk.
    pub fn flush(&self) -> Result<(), crate::store::StoreError> {
        self.store.flush()
    }

    /// Execute `request`.
    pub fn execute(&self, request: Request) -> Response {
        self.execute_with(request, &mut |_| {})
    }

    /// Execute `request`, telling `progress` each step of a long one.
    pub fn execute_with(&self, request: Request, progress: &mut dyn FnMut(String)) -> Response {
        let result = match request {
            Request::PluginList
            | Request::PluginInstall { .. }
            | Request::PluginActivate { .. }
            | Request::PluginRollback { .. }
            | Request::PluginRemove { .. }
            | Request::PluginShadow { .. }
            | Request::PluginPromote { .. } => self.run_plugin(request, progress),
            request => self.run(request),
        };
        match result {
            Ok(v) => Response::Ok(v),
            Err(e) => Response::Error(e),
        }
    }

    fn run_plugin(
        &self,
        request: Request,
        progress: &mut dyn FnMut(String),
    ) -> Result<Value, String> {
        let Some((data, library)) = &self.library else {
            return Err("plugin commands need the appliance's data directory".into());
        };
        // From the command line, a runtime of its own precompiles into the
        // same cache the appliance loads from at its next start.
        let own;
        let (runtime, installed) = match &self.plugins {
            Some((runtime, installed)) => (runtime, Some(installed)),
            None => {
                own = Runtime::new(
                    &RuntimeConfig {
                        cache_dir: Some(data.join("plugin-cache")),
                        ..RuntimeConfig::default()
                    },
                    crate::store::Store::temporary().map_err(|e| e.to_string())?,
                )
                .map_err(|e| e.to_string())?;
                (&own, None)
            }
        };
        let admin = plugins::PluginAdmin {
            data,
            library,
            runtime,
            installed,
        };
        match request {
            Request::PluginList => admin.list(),
            Request::PluginInstall {
                name,
                version,
                shadow,
            } => admin.install(&name, version.as_deref(), shadow, progress),
            Request::PluginActivate { name, version } => admin.activate(&name, &version, progress),
            Request::PluginRollback { name } => admin.rollback(&name, progress),
            Request::PluginRemove { name, version } => admin.remove(&name, &version),
            Request::PluginShadow { name, version } => {
                admin.shadow(&name, version.as_deref(), progress)
            }
            Request::PluginPromote { name } => admin.promote(&name),
            _ => Err("not a plugin command".into()),
        }
    }

    fn close(&self, device: &str, reason: &str) -> usize {
        self.live
            .as_ref()
            .map_or(0, |live| live.close_device(device, reason))
    }

    /// Close the live sessions of a device whose class or zone changed
    /// from `before` to `after`: each session was judged, and its policy
    /// subject made, with the old ones. How many were closed.
    fn close_if_moved(&self, before: Option<&Device>, after: &Device) -> usize {
        match before {
            Some(b) if b.class != after.class || b.zone != after.zone => {
                let closed = self.close(&after.id, "class or zone changed");
                info!(device = %after.id, closed, "device moved: its sessions closed");
                closed
            }
            _ => 0,
        }
    }

    fn run(&self, request: Request) -> Result<Value, String> {
        let text = |e: &dyn std::fmt::Display| e.to_string();
        match request {
            Request::Issue {
                device,
                class,
                zone,
                role,
                hours,
                public_key,
            } => {
                let key = public_key_of(&public_key)?;
                let request = DeviceCertRequest {
                    device,
                    class,
                    zone,
                    role,
                    lifetime: Duration::from_secs(hours.saturating_mul(3600)),
                };
                let issued = self
                    .pki
                    .issue_device(&request, &key)
                    .map_err(|e| text(&e))?;
                let before = self.registry.device(&request.device).ok().flatten();
                let record = self
                    .registry
                    .record_issued(&request, &issued.claims)
                    .map_err(|e| text(&e))?;
                info!(device = %record.id, class = %record.class, zone = %record.zone, serial = %issued.claims.serial, "certificate issued");
                let closed = self.close_if_moved(before.as_ref(), &record);
                Ok(json!({
                    "device": record,
                    "sessions-closed": closed,
                    "serial": issued.claims.serial,
                    "not-after": format_time(issued.claims.not_after),
                    "certificate": issued.pem,
                    "ca": self.pki.ca_pem(),
                }))
            }
            Request::Revoke { device } => {
                let record = self.registry.revoke(&device).map_err(|e| text(&e))?;
                let closed = self.close(&device, "device revoked");
                info!(device = %device, closed, "device revoked");
                Ok(json!({"device": record, "sessions-closed": closed}))
            }
            Request::Quarantine { device } => {
                let record = self.registry.quarantine(&device).map_err(|e| text(&e))?;
                let closed = self.close(&device, "device quarantined");
                info!(device = %device, closed, "device quarantined");
                Ok(json!({"device": record, "sessions-closed": closed}))
            }
            Request::Release { device } => {
                let record = self.registry.release(&device).map_err(|e| text(&e))?;
                info!(device = %device, "device released");
                Ok(json!({"device": record}))
            }
            Request::DeviceAdd {
                device,
                class,
                zone,
            } => {
                let before = self.registry.device(&device).ok().flatten();
                let record = self
                    .registry
                    .add_external(&device, &class, &zone)
                    .map_err(|e| text(&e))?;
                info!(device = %device, class = %class, zone = %zone, "external device enrolled");
                let closed = self.close_if_moved(before.as_ref(), &record);
                Ok(json!({"device": record, "sessions-closed": closed}))
            }
            Request::PkiList | Request::DeviceList => {
                let devices = self.registry.devices().map_err(|e| text(&e))?;
                Ok(json!({"devices": devices}))
            }
            Request::PluginList
            | Request::PluginInstall { .. }
            | Request::PluginActivate { .. }
            | Request::PluginRollback { .. }
            | Request::PluginRemove { .. }
            | Request::PluginShadow { .. }
            | Request::PluginPromote { .. } => Err("a plugin command, run elsewhere".into()),
            Request::OperatorIssue {
                name,
                role,
                hours,
                public_key,
            } => {
                let key = public_key_of(&public_key)?;
                let lifetime = Duration::from_secs(hours.saturating_mul(3600));
                let (pem, claims) = self
                    .pki
                    .issue_operator(&name, role, lifetime, &key)
                    .map_err(|e| text(&e))?;
                let record = self
                    .operators
                    .record_issued(&claims, role)
                    .map_err(|e| text(&e))?;
                info!(operator = %name, role = %role, serial = %claims.serial, "operator certificate issued");
                Ok(json!({
                    "operator": record,
                    "serial": claims.serial,
                    "not-after": format_time(claims.not_after),
                    "certificate": pem,
                    "ca": self.pki.ca_pem(),
                }))
            }
            Request::PluginConfig {
                name,
                key,
                value,
                unset,
            } => self.plugin_config(&name, key.as_deref(), value.as_deref(), unset),
            Request::OperatorRevoke { name } => {
                let record = self.operators.revoke(&name).map_err(|e| text(&e))?;
                info!(operator = %name, "operator revoked");
                Ok(json!({"operator": record}))
            }
            Request::OperatorList => {
                let operators = self.operators.list().map_err(|e| text(&e))?;
                Ok(json!({"operators": operators}))
            }
            Request::DeviceShow { device } => {
                let record = self
                    .registry
                    .device(&device)
                    .map_err(|e| text(&e))?
                    .ok_or_else(|| format!("no device {device} in the registry"))?;
                let live = self.live.as_ref().map(|l| l.count(&device));
                Ok(json!({"device": record, "live-sessions": live}))
            }
        }
    }
}

impl Admin {
    /// Record in the audit trail, if this executor has one, that `by` made
    /// `request`, and how it ended: `Err` with the reason when refused.
    /// With `durable`, on disk before it returns; else as the audit
    /// queue has room. Fails, saying why, when the record could not be
    /// made.
    pub(crate) fn record(
        &self,
        by: &OperatorRef,
        request: &Request,
        outcome: Result<(), &str>,
        durable: bool,
    ) -> Result<(), String> {
        let Some(audit) = &self.audit else {
            return Ok(());
        };
        let mut arguments = match serde_json::to_value(request) {
            Ok(Value::Object(arguments)) => arguments,
            _ => serde_json::Map::new(),
        };
        arguments.remove("op");
        // Long, and of no use to a SIEM.
        arguments.remove("public_key");
        // A setting may be a credential a plugin needs: that it was set is
        // recorded, not what to.
        if let Some(Value::String(value)) = arguments.get_mut("value") {
            *value = format!("[{} bytes, not recorded]", value.len());
        }
        for value in arguments.values_mut() {
            if let Value::String(s) = value {
                crate::audit::format::cut(s, MAX_ARGUMENT_BYTES);
            }
        }
        // The device the request is about, as enrolled; an unknown one by
        // its id alone, and none by an empty id.
        let id = arguments
            .get("device")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let enrolled = (!id.is_empty())
            .then(|| self.registry.device(id).ok().flatten())
            .flatten();
        let device = enrolled.map_or_else(
            || crate::plugins::Device {
                id: id.to_owned(),
                class: String::new(),
                zone: String::new(),
            },
            |d| d.plugin_view(),
        );
        let (outcome, reason) = match outcome {
            Ok(()) => ("ok", None),
            Err(reason) => ("refused", Some(reason.to_owned())),
        };
        let entry = vec![Entry {
            session: crate::plugins::Session {
                id: 0,
                device,
                route: "admin".into(),
            },
            plugin: PluginRef {
                name: String::new(),
                version: None,
            },
            event: None,
            what: What::OperatorAction {
                operator: by.name.clone(),
                role: by.role.to_string(),
                request: request.op(),
                arguments,
                outcome: outcome.to_owned(),
                reason,
            },
        }];
        // A change is on disk before the operator is answered: through
        // the queue, a full one (findings coming faster than the disk
        // takes them) dropped it, and a crash after the answer lost it.
        let recorded = if durable {
            audit.append_now(entry).map_err(|e| e.to_string())
        } else {
            (audit.try_push(entry))
                .then_some(())
                .ok_or_else(|| "the audit queue is full".to_owned())
        };
        if let Err(e) = &recorded {
            tracing::error!(
                operator = %by.name,
                request = %request.op(),
                error = %e,
                "this operator's request is not recorded in the audit trail"
            );
        }
        recorded
    }

    /// Plugin `name`'s settings: `key`'s value, or all of them; set to
    /// `value`, or removed when `unset`. Plugins read them with the SDK's
    /// `host::config::get`, so a change applies from their next call.
    fn plugin_config(
        &self,
        name: &str,
        key: Option<&str>,
        value: Option<&str>,
        unset: bool,
    ) -> Result<Value, String> {
        use palisade_plugin_sdk::host::config::PREFIX;
        crate::identity::check_name("plugin name", name).map_err(|e| e.to_string())?;
        // A mistyped name would otherwise be set and never read.
        let first_party = crate::plugins::first_party::component(name).is_some();
        let installed = (self.library.as_ref())
            .is_some_and(|(_, library)| library.entry(name).is_ok_and(|e| !e.versions.is_empty()));
        let served = (self.plugins.as_ref()).is_some_and(|(_, served)| served.get(name).is_some());
        if !(first_party || installed || served) {
            let names: Vec<&str> = crate::plugins::first_party::names().collect();
            return Err(format!(
                "no plugin {name}: the first-party ones are {}, and no other of that name is installed or served",
                names.join(", ")
            ));
        }
        let kv = self
            .store
            .plugin_kv(name, crate::plugins::Limits::default().kv_quota_bytes)
            .map_err(|e| e.to_string())?;
        let Some(key) = key else {
            let settings: serde_json::Map<String, Value> = (kv.scan_prefix(PREFIX))
                .map_err(|e| e.to_string())?
                .into_iter()
                .map(|(k, v)| {
                    let k = k.strip_prefix(PREFIX).unwrap_or(&k).to_owned();
                    (k, Value::String(String::from_utf8_lossy(&v).into_owned()))
                })
                .collect();
            return Ok(json!({"settings": settings}));
        };
        if key.is_empty() || key.len() > 64 || key.chars().any(char::is_whitespace) {
            return Err(format!("{key:?} is not a setting name"));
        }
        let stored = format!("{PREFIX}{key}");
        match (value, unset) {
            (_, true) => {
                kv.delete(&stored).map_err(|e| format!("{e:?}"))?;
                self.store.flush().map_err(|e| e.to_string())?;
                info!(plugin = name, setting = key, "plugin setting removed");
                Ok(json!({"unset": key}))
            }
            (Some(value), false) => {
                if value.len() > palisade_plugin_sdk::host::kv::MAX_VALUE_LEN {
                    return Err(format!(
                        "the value of {key} is {} bytes, more than the {} a setting may hold",
                        value.len(),
                        palisade_plugin_sdk::host::kv::MAX_VALUE_LEN
                    ));
                }
                let _counted = self.settings.lock().unwrap_or_else(|p| p.into_inner());
                within_caps(name, &kv, &stored, value)?;
                kv.set_regardless_of_quota(&stored, value.as_bytes())
                    .map_err(|e| format!("{name}'s store refused {key}: {e}"))?;
                self.store.flush().map_err(|e| e.to_string())?;
                info!(
                    plugin = name,
                    setting = key,
                    bytes = value.len(),
                    "plugin setting changed"
                );
                Ok(json!({"set": key, "value": value}))
            }
            (None, false) => match kv.get(&stored).map_err(|e| e.to_string())? {
                Some(v) => Ok(json!({"value": String::from_utf8_lossy(&v)})),
                None => Err(format!("{name} has no setting {key}: its default applies")),
            },
        }
    }
}

/// Whether plugin `name`'s settings in `kv` stay within [`MAX_SETTINGS`]
/// and [`MAX_SETTINGS_BYTES`] with `value` stored under `stored`, in place
/// of what is there: a setting replaced is always within them when the
/// new value is no longer than the old.
fn within_caps(
    name: &str,
    kv: &crate::store::PluginKv,
    stored: &str,
    value: &str,
) -> Result<(), String> {
    use palisade_plugin_sdk::host::config::PREFIX;
    use palisade_plugin_sdk::host::kv::ENTRY_OVERHEAD;
    let size = |key: &str, value: usize| key.len() + value + ENTRY_OVERHEAD;
    let others = (kv.scan_prefix(PREFIX))
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|(k, _)| k != stored);
    let (mut count, mut bytes) = (0usize, 0usize);
    for (k, v) in others {
        count += 1;
        bytes = bytes.saturating_add(size(&k, v.len()));
    }
    let key = stored.strip_prefix(PREFIX).unwrap_or(stored);
    if count >= MAX_SETTINGS {
        return Err(format!(
            "{name} has {count} settings, as many as a plugin may have: unset one before adding {key}"
        ));
    }
    let total = bytes.saturating_add(size(stored, value.len()));
    if total > MAX_SETTINGS_BYTES {
        return Err(format!(
            "{name}'s settings would take {total} bytes with this value of {key}, more than the \
             {MAX_SETTINGS_BYTES} a plugin's settings may: unset some first"
        ));
    }
    Ok(())
}

/// The public key in a request: SubjectPublicKeyInfo, DER, base64.
fn public_key_of(base64: &str) -> Result<rcgen::SubjectPublicKeyInfo, String> {
    let der = STANDARD
        .decode(base64.as_bytes())
        .map_err(|e| format!("public key is not base64: {e}"))?;
    rcgen::SubjectPublicKeyInfo::from_der(&der).map_err(|e| format!("unusable public key: {e}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use super::*;

    /// An executor over a new data directory in `dir`.
    fn admin(dir: &std::path::Path) -> Admin {
        let (pki, _) = Pki::init(dir).unwrap();
        let store = Store::temporary().unwrap();
        let registry = Registry::open(&store).unwrap();
        let operators = Operators::open(&store).unwrap();
        Admin::new(store, Arc::new(pki), registry, operators, None)
    }

    /// A request on the admin socket (every command of `palisade` on the
    /// appliance's box) reaches the audit trail, naming the local user who
    /// made it, as an operator's over HTTPS does.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_on_the_admin_socket_reach_the_audit_trail() {
        use crate::audit::Retention;
        let dir = tempfile::tempdir().unwrap();
        let (pki, _) = Pki::init(dir.path()).unwrap();
        let store = Store::temporary().unwrap();
        let log = crate::audit::AuditLog::open(&store).unwrap();
        let retention = Retention {
            max_records: 100,
            max_backlog: 100,
            max_bytes: u64::MAX,
            sinks: Vec::new(),
        };
        let queue = AuditQueue::start(log.clone(), retention).unwrap();
        let (registry, operators) = (Registry::open(&store).unwrap(), Operators::open(&store));
        let admin = Admin::new(store, Arc::new(pki), registry, operators.unwrap(), None)
            .recording(queue.clone());
        let listener = socket::bind_socket(dir.path()).unwrap();
        let shutdown = tokio_util::sync::CancellationToken::new();
        tokio::spawn(socket::serve_socket(listener, admin, shutdown.clone()));
        let console = socket::Console::Remote(dir.path().join(socket::ADMIN_SOCKET));
        let request = Request::Quarantine {
            device: "plc-9".into(),
        };
        let response = tokio::task::spawn_blocking(move || console.execute(&request))
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(response, Response::Error(_)), "{response:?}");
        queue.drain(std::time::Duration::from_secs(10));
        shutdown.cancel();
        let records = log.after(0, 10).unwrap();
        let [record] = &records[..] else {
            panic!("{records:?}");
        };
        let What::OperatorAction {
            operator,
            role,
            request,
            outcome,
            ..
        } = &record.what
        else {
            panic!("{record:?}");
        };
        let uid = rustix::process::getuid().as_raw();
        assert_eq!(operator, &format!("local user {uid}"));
        assert_eq!((role.as_str(), request.as_str()), ("admin", "quarantine"));
        assert_eq!(outcome, "refused");
        assert_eq!(record.device.id, "plc-9");
    }

    /// An operator's change is on disk when they are answered, even with
    /// the audit queue full (findings coming faster than the disk takes
    /// them): it went through the queue, and a full one dropped it, with
    /// the operator told nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_change_is_recorded_before_the_answer_even_with_the_queue_full() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::temporary().unwrap();
        let log = crate::audit::AuditLog::open(&store).unwrap();
        let (queue, _full) = AuditQueue::full(log.clone());
        let admin = admin(dir.path()).recording(queue);
        let by = OperatorRef {
            name: "ann".into(),
            role: Role::Operator,
        };
        let request = Request::PluginConfig {
            name: "mqtt".into(),
            key: Some("payload-bytes".into()),
            value: Some("8".into()),
            unset: false,
        };
        let mut running = Running::start_holding(admin, request, (), Some(by));
        let mut steps = Vec::new();
        let answer = loop {
            match running.next().await {
                Response::Progress(step) => steps.push(step),
                answer => break answer,
            }
        };
        assert!(!matches!(answer, Response::Error(_)), "{answer:?}");
        assert!(
            steps.iter().all(|s| !s.contains("not recorded")),
            "{steps:?}"
        );
        let records = log.after(0, 10).unwrap();
        let [record] = &records[..] else {
            panic!("{records:?}");
        };
        let What::OperatorAction {
            request, outcome, ..
        } = &record.what
        else {
            panic!("{record:?}");
        };
        assert_eq!(
            (request.as_str(), outcome.as_str()),
            ("plugin-config", "ok")
        );
    }

    /// What changes the appliance is recorded, with a setting's value
    /// left out (it may be a credential); what only reads is recorded only
    /// when refused.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_trail_keeps_changes_and_refusals_and_no_setting_values() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::temporary().unwrap();
        let log = crate::audit::AuditLog::open(&store).unwrap();
        let retention = crate::audit::Retention {
            max_records: 100,
            max_backlog: 100,
            max_bytes: u64::MAX,
            sinks: Vec::new(),
        };
        let queue = AuditQueue::start(log.clone(), retention).unwrap();
        let admin = admin(dir.path()).recording(queue.clone());
        let by = OperatorRef {
            name: "ann".into(),
            role: Role::Operator,
        };
        let requests = [
            Request::PluginConfig {
                name: "mqtt".into(),
                key: Some("api-token".into()),
                value: Some("hunter2-hunter2".into()),
                unset: false,
            },
            // An operator's to read, and only a read: not recorded.
            Request::PluginConfig {
                name: "mqtt".into(),
                key: Some("api-token".into()),
                value: None,
                unset: false,
            },
            Request::DeviceList,
            Request::DeviceShow {
                device: "no-such-device".into(),
            },
        ];
        for request in requests {
            let mut running = Running::start_holding(admin.clone(), request, (), Some(by.clone()));
            while let Response::Progress(_) = running.next().await {}
        }
        queue.drain(Duration::from_secs(10));
        let records = log.after(0, 10).unwrap();
        let ops: Vec<(String, String)> = (records.iter())
            .map(|r| match &r.what {
                What::OperatorAction {
                    request, outcome, ..
                } => (request.clone(), outcome.clone()),
                other => panic!("{other:?}"),
            })
            .collect();
        let expected = [("plugin-config", "ok"), ("device-show", "refused")];
        assert_eq!(ops, expected.map(|(r, o)| (r.to_owned(), o.to_owned())));
        let What::OperatorAction { arguments, .. } = &records[0].what else {
            unreachable!()
        };
        assert_eq!(arguments["value"], "[15 bytes, not recorded]");
        assert_eq!(arguments["key"], "api-token");
    }

    fn set(admin: &Admin, key: &str, value: &str) -> Response {
        admin.execute(Request::PluginConfig {
            name: "mqtt".into(),
            key: Some(key.into()),
            value: Some(value.into()),
            unset: false,
        })
    }

    fn refusal(response: Response) -> String {
        match response {
            Response::Error(e) => e,
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn a_plugin_has_at_most_max_settings() {
        let dir = tempfile::tempdir().unwrap();
        let admin = admin(dir.path());
        for i in 0..MAX_SETTINGS {
            let set = set(&admin, &format!("key-{i}"), "1");
            assert!(matches!(set, Response::Ok(_)), "{i}: {set:?}");
        }
        let refused = refusal(set(&admin, "one-more", "1"));
        assert!(
            refused.contains(&format!("mqtt has {MAX_SETTINGS} settings")),
            "{refused}"
        );
        // At the cap, a setting is still changed, and one removed makes
        // room for another.
        assert!(matches!(set(&admin, "key-0", "2"), Response::Ok(_)));
        admin.execute(Request::PluginConfig {
            name: "mqtt".into(),
            key: Some("key-1".into()),
            value: None,
            unset: true,
        });
        assert!(matches!(set(&admin, "one-more", "1"), Response::Ok(_)));
    }

    #[test]
    fn a_plugins_settings_take_at_most_max_settings_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let admin = admin(dir.path());
        let big = "x".repeat(palisade_plugin_sdk::host::kv::MAX_VALUE_LEN);
        let mut written = 0;
        let refused = loop {
            match set(&admin, &format!("big-{written}"), &big) {
                Response::Ok(_) => written += 1,
                other => break refusal(other),
            }
            assert!(written <= MAX_SETTINGS, "never refused");
        };
        assert!(refused.contains("more than the 1048576"), "{refused}");
        assert_eq!(written, MAX_SETTINGS_BYTES / big.len() - 1);
        // A setting replaced by one no longer still fits.
        assert!(matches!(set(&admin, "big-0", &big), Response::Ok(_)));
        assert!(matches!(set(&admin, "big-1", "small"), Response::Ok(_)));
        assert!(matches!(set(&admin, "big-1", &big), Response::Ok(_)));
    }
}
