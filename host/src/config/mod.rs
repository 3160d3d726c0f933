//! The appliance's configuration: a TOML file, every key optional.
//!
//! `palisade serve` without `--config` runs on [`Config::default`], the
//! embedded defaults: loopback listeners for MQTT over TLS and QUIC, CoAP
//! over TLS and Modbus/TCP Security, relaying to the usual local upstream
//! ports. A file sets what it names and keeps the defaults for the rest; a
//! file with `[[route]]` tables replaces the default routes. Unknown keys
//! are an error, and the whole file is checked before any port is bound.
//!
//! Which devices may use which routes, and what they may do on them, is the
//! policy's business, not the configuration's: `policy.cedar` in the data
//! directory (see [`crate::policy`]), reloaded live when it changes.
//!
//! ```toml
//! server-names = ["gateway.site.example", "10.0.0.5"]
//!
//! [limits]
//! idle-timeout-secs = 600
//!
//! [[route]]
//! name = "mqtt-tls"
//! protocol = "mqtt"
//! transport = "tls"
//! listen = "0.0.0.0:8883"
//! parser = "mqtt"
//! upstream = "10.0.0.20:1883"
//! ```

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::identity::check_name;

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this configuration (an unknown key, a
    /// wrong type); the message says where.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said, with the line.
        message: String,
    },
    /// The values do not make a working appliance.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    /// DNS names and IP addresses the appliance's server certificate is
    /// valid for. Default `["localhost", "127.0.0.1", "::1"]`. The address
    /// of every listener that is not a wildcard is added.
    pub server_names: Vec<String>,
    /// Bounds on connections and sessions.
    pub limits: Limits,
    /// Certificate lifetimes and trusted external CAs.
    pub pki: PkiConfig,
    /// Certificate renewal over the device's own mTLS connection.
    pub renewal: RenewalConfig,
    /// The HTTPS admin API, for operators with certificates from the site
    /// CA.
    pub admin: AdminConfig,
    /// How much of the audit trail the data directory keeps.
    pub audit: AuditConfig,
    /// The routes: one listener (or QUIC ALPN) each, to one upstream.
    /// Default: the four loopback routes of [`Config::default`].
    #[serde(rename = "route")]
    pub routes: Vec<RouteConfig>,
    /// Where findings and actions are exported, besides the audit trail in
    /// the data directory: `kind = "file"` (`path`), `"webhook"` (`url`,
    /// `http://` only) or `"syslog"` (`address`, `transport` `tcp` or
    /// `udp`, RFC 5424 with a CEF body), each with a `name` under which its
    /// delivery cursor is kept. Default none.
    #[serde(rename = "siem")]
    pub sinks: Vec<crate::audit::export::SinkConfig>,
}

/// The most connections `max-connections` may allow: each takes a socket
/// and memory, and a million is past what one appliance serves.
pub const MAX_CONNECTIONS: usize = 1_000_000;

/// Bounds on connections and sessions. Every one has a default that suits
/// a small appliance with thousands of devices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Limits {
    /// Device connections (TLS connections and QUIC connections) open at
    /// once, all listeners together; more are refused, with a log line.
    /// Default 20000.
    pub max_connections: usize,
    /// Handshakes in progress at once from one address (one IPv6 /64: a
    /// host picks its addresses from one); more are refused.
    /// Connections take their slot before their handshake, so this keeps a
    /// peer that never finishes its handshakes from taking more than this
    /// many slots. Default 1024: a twentieth of the default connections,
    /// and room for a site gateway NATing many devices that all reconnect
    /// at once after a power cut.
    pub max_handshakes_per_address: usize,
    /// Connections one device may hold open at once, each QUIC stream
    /// counted as one more (a stream is a session, with an upstream
    /// connection of its own); more are refused. Default 64: a device
    /// needs a few, and one device must not take every slot.
    pub max_connections_per_device: usize,
    /// Seconds a device has to finish its handshake. Default 10.
    pub handshake_timeout_secs: u64,
    /// Seconds a session may stay silent both ways, or a write may stay
    /// blocked, before it is closed. Default 300.
    pub idle_timeout_secs: u64,
    /// Seconds to connect to an upstream. Default 10.
    pub connect_timeout_secs: u64,
    /// Seconds one direction of a session may hold an incomplete frame; a
    /// frame not whole by then closes the session, so that a device cannot
    /// keep its share of `max-buffered-bytes` by sending a byte now and
    /// then. Default 120: a frame of the default `max-frame-bytes` (256
    /// KiB) arrives over a link of 18 kbit/s, a 2 KiB one over 140 bit/s.
    /// Raise it with `max-frame-bytes`, or for slower links.
    pub frame_timeout_secs: u64,
    /// Largest frame held while incomplete, per direction, in bytes.
    /// Default 256 KiB: more than any MQTT, CoAP or Modbus frame a device
    /// sends, and bounded memory for thousands of sessions.
    pub max_frame_bytes: usize,
    /// Bytes of incomplete frames held at once, all sessions together
    /// (a frame waiting for its end is held twice: as read, and as the
    /// parser will be given it). A session whose frame would take the
    /// appliance past it is closed, with a log line, so that devices
    /// together cannot make the appliance hold `max-connections` times
    /// `max-frame-bytes`. Default 256 MiB: a thousand sessions halfway
    /// through the largest frame; at least twice `max-frame-bytes`.
    pub max_buffered_bytes: usize,
    /// Bytes of incomplete frames one device's sessions hold at once,
    /// together: past it, the device's session whose frame would take it
    /// further is closed, so that a few devices cannot hold all of
    /// `max-buffered-bytes` and have other devices' sessions closed for
    /// want of it. At least twice `max-frame-bytes`. Default: a
    /// sixteenth of `max-buffered-bytes`, and at least what one session
    /// holds with the largest frame halfway both ways (four times
    /// `max-frame-bytes`), within `max-buffered-bytes` (16 MiB with the
    /// defaults: 32 sessions halfway through the largest frame); see
    /// [`Limits::buffered_bytes_per_device`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_buffered_bytes_per_device: Option<usize>,
    /// Bytes read from a socket at once, and handed to the parser in one
    /// call. Default 16 KiB.
    pub read_chunk_bytes: usize,
    /// Bidirectional streams a QUIC connection may have open at once, each
    /// relayed to its own upstream connection. Default 16.
    pub quic_streams_per_connection: u32,
    /// Seconds sessions get to close at shutdown. Default 5.
    pub shutdown_grace_secs: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 20_000,
            max_handshakes_per_address: 1024,
            max_connections_per_device: 64,
            handshake_timeout_secs: 10,
            idle_timeout_secs: 300,
            connect_timeout_secs: 10,
            frame_timeout_secs: 120,
            max_frame_bytes: 256 << 10,
            max_buffered_bytes: 256 << 20,
            max_buffered_bytes_per_device: None,
            read_chunk_bytes: 16 << 10,
            quic_streams_per_connection: 16,
            shutdown_grace_secs: 5,
        }
    }
}

impl Limits {
    /// The bytes of incomplete frames one device's sessions may hold:
    /// `max-buffered-bytes-per-device`, or by default a sixteenth of
    /// `max-buffered-bytes`, and at least what one session holds with the
    /// largest frame halfway both ways (each held twice: four times
    /// `max-frame-bytes`), within `max-buffered-bytes`.
    pub fn buffered_bytes_per_device(&self) -> usize {
        self.max_buffered_bytes_per_device.unwrap_or_else(|| {
            let one_session = self.max_frame_bytes.saturating_mul(4);
            (self.max_buffered_bytes / 16)
                .max(one_session)
                .min(self.max_buffered_bytes)
        })
    }
}

/// Certificate lifetimes and trust.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct PkiConfig {
    /// Lifetime of a renewed device certificate, in hours. Default 168
    /// (seven days); devices renew at about two thirds of it.
    pub device_cert_hours: u64,
    /// Lifetime of the appliance's server certificate, in days. Default 90;
    /// it is replaced two thirds through, at start or while running.
    pub server_cert_days: u64,
    /// PEM files of external (enterprise) CAs trusted beside the site CA.
    /// Their devices must be enrolled with `palisade device add`. Default
    /// none.
    pub external_ca: Vec<PathBuf>,
}

impl Default for PkiConfig {
    fn default() -> Self {
        PkiConfig {
            device_cert_hours: 168,
            server_cert_days: 90,
            external_ca: Vec::new(),
        }
    }
}

/// The renewal listener: EST `simplereenroll` (RFC 7030 §4.2.2) over mTLS.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct RenewalConfig {
    /// Where devices renew their certificates. `None` turns renewal off.
    /// Default `127.0.0.1:8443`.
    pub listen: Option<SocketAddr>,
}

impl Default for RenewalConfig {
    fn default() -> Self {
        RenewalConfig {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 8443))),
        }
    }
}

/// The HTTPS admin API: the admin socket's requests, for operators on
/// other machines (see [`crate::admin`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct AdminConfig {
    /// Where the API listens, for example `0.0.0.0:9443`. Default `None`:
    /// off, the local admin socket only.
    pub listen: Option<SocketAddr>,
}

/// How much of the audit trail (findings and actions, in the state
/// database) is kept. The SIEM sinks are the long-term record; the trail
/// is their buffer and the appliance's own recent history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct AuditConfig {
    /// Records kept once every `[[siem]]` sink has delivered them; older
    /// ones are pruned every minute, oldest first. Default 200000, about
    /// 120 MB of disk at a typical 400 bytes a record. With no sink, the
    /// newest this many are kept.
    pub max_records: u64,
    /// Records kept at most while a sink is behind: past it, the oldest are
    /// pruned even though a sink has not had them, and a warning says how
    /// many. At least `max-records`. Default 1000000, about 600 MB.
    pub max_backlog: u64,
    /// Bytes the trail takes at most, delivered or not: past it, the
    /// oldest records go, and a warning says how many went undelivered. A
    /// record holds its event whole, and a device chooses how long that is
    /// (an MQTT topic of 64 KiB): the record counts above bound the disk
    /// only for records of a typical size. Default 1 GiB, at least 64 MiB.
    /// A device that makes its records large makes the trail hold fewer
    /// (about 17000 of 60 KB each): while a sink is down, the oldest then
    /// go undelivered sooner, with the warning.
    pub max_bytes: u64,
}

/// The least `max-bytes` of the audit trail: sixteen of the largest
/// records (an event as large as a plugin's default output limit).
const MIN_AUDIT_BYTES: u64 = 64 << 20;

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            max_records: 200_000,
            max_backlog: 1_000_000,
            max_bytes: 1 << 30,
        }
    }
}

/// How devices reach a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    /// TLS over TCP; the listening port picks the route.
    Tls,
    /// QUIC over UDP; the ALPN picks the route among those on one port.
    Quic,
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::Tls => "tls",
            Transport::Quic => "quic",
        })
    }
}

/// One route: devices connecting here are relayed to one upstream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RouteConfig {
    /// The route's name, in logs and policy rules. Required.
    pub name: String,
    /// The protocol spoken on it (`mqtt`, `coap`, `modbus`, ...). Required.
    pub protocol: String,
    /// `tls` or `quic`. Required.
    pub transport: Transport,
    /// Address and port to listen on; port 0 picks a free one (logged).
    /// Required.
    pub listen: SocketAddr,
    /// The ALPN protocol id. On QUIC it picks the route; default: the
    /// protocol. On TLS it is offered to clients that ask for one; default
    /// none (any client ALPN, or none, is accepted).
    pub alpn: Option<String>,
    /// The parser plugin that cuts the traffic into frames: a first-party
    /// or installed plugin's name, or a path to a component (with a `/`, or
    /// ending in `.wasm`). `None`: frames are relayed
    /// uninspected, and the log says so at start.
    pub parser: Option<String>,
    /// Detector plugins that judge the parser's events, in order (names or
    /// paths, as `parser`). Default none.
    #[serde(default)]
    pub detectors: Vec<String>,
    /// Responder plugins that turn findings into actions, in order.
    /// Default none: the policy's own verdicts still apply.
    #[serde(default)]
    pub responders: Vec<String>,
    /// The upstream's `host:port`. Required.
    pub upstream: String,
    /// TLS to the upstream. `None`: plain TCP. Its `ca` is required: the
    /// system's public CAs are trusted only where they are named.
    pub upstream_tls: Option<crate::client_tls::ClientTls>,
    /// When a session's upstream connection opens: `first-bytes` (the
    /// default), when the device sends its first bytes, so that a device
    /// that connects and says nothing costs the upstream nothing; or
    /// `at-once`, as soon as the device is admitted, for protocols whose
    /// server speaks first.
    #[serde(default)]
    pub upstream_connect: UpstreamConnect,
}

/// When a session's upstream connection opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamConnect {
    /// When the device sends its first bytes. MQTT, CoAP over TCP and
    /// Modbus clients all speak first.
    #[default]
    FirstBytes,
    /// As soon as the device is admitted.
    AtOnce,
}

impl RouteConfig {
    /// The ALPN protocol id the route uses, if any.
    pub fn alpn(&self) -> Option<&str> {
        match (self.transport, &self.alpn) {
            (_, Some(a)) => Some(a),
            (Transport::Quic, None) => Some(&self.protocol),
            (Transport::Tls, None) => None,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        // Inspected routes run the first-party detectors and responder:
        // the baseline only learns in its first day, hygiene flags what no
        // device should send, and escalate acts on high and critical
        // findings only.
        let route = |name: &str,
                     protocol: &str,
                     transport,
                     port: u16,
                     parser: Option<String>,
                     upstream: u16| {
            let inspected = parser.is_some();
            let names = |names: &[&str]| names.iter().map(|n| (*n).to_owned()).collect();
            RouteConfig {
                name: name.into(),
                protocol: protocol.into(),
                transport,
                listen: SocketAddr::from(([127, 0, 0, 1], port)),
                alpn: None,
                parser,
                detectors: if inspected {
                    names(&["hygiene", "baseline"])
                } else {
                    Vec::new()
                },
                responders: if inspected {
                    names(&["escalate"])
                } else {
                    Vec::new()
                },
                upstream: format!("127.0.0.1:{upstream}"),
                upstream_tls: None,
                upstream_connect: UpstreamConnect::default(),
            }
        };
        let mut coap = route(
            "coap-tls",
            "coap",
            Transport::Tls,
            5684,
            Some("coap".into()),
            5683,
        );
        // RFC 8323 §4.1: CoAP over TLS is negotiated with ALPN "coap".
        coap.alpn = Some("coap".into());
        Config {
            server_names: vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
            limits: Limits::default(),
            pki: PkiConfig::default(),
            renewal: RenewalConfig::default(),
            admin: AdminConfig::default(),
            audit: AuditConfig::default(),
            routes: vec![
                route(
                    "mqtt-tls",
                    "mqtt",
                    Transport::Tls,
                    8883,
                    Some("mqtt".into()),
                    1883,
                ),
                route(
                    "mqtt-quic",
                    "mqtt",
                    Transport::Quic,
                    14567,
                    Some("mqtt".into()),
                    1883,
                ),
                coap,
                route(
                    "modbus-tls",
                    "modbus",
                    Transport::Tls,
                    8802,
                    Some("modbus".into()),
                    502,
                ),
            ],
            sinks: Vec::new(),
        }
    }
}

impl Config {
    /// Read and check the configuration in `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    /// Parse and check a configuration from TOML text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<config>"),
            message: e.to_string(),
        })?;
        config.check()?;
        Ok(config)
    }

    /// The configuration as TOML, as `palisade serve --print-config` shows
    /// it.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot print: {e}\n"))
    }

    /// Names for the server certificate: the configured ones and every
    /// non-wildcard listener address.
    pub fn certificate_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.server_names.clone();
        let listeners = self
            .routes
            .iter()
            .map(|r| r.listen)
            .chain(self.renewal.listen)
            .chain(self.admin.listen);
        for addr in listeners {
            let ip = addr.ip();
            if !ip.is_unspecified() && !names.contains(&ip.to_string()) {
                names.push(ip.to_string());
            }
        }
        names
    }

    /// Check that the values make a working appliance.
    pub fn check(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        let l = &self.limits;
        for (key, value) in [
            ("max-connections", l.max_connections as u64),
            (
                "max-handshakes-per-address",
                l.max_handshakes_per_address as u64,
            ),
            (
                "max-connections-per-device",
                l.max_connections_per_device as u64,
            ),
            ("handshake-timeout-secs", l.handshake_timeout_secs),
            ("idle-timeout-secs", l.idle_timeout_secs),
            ("connect-timeout-secs", l.connect_timeout_secs),
            ("frame-timeout-secs", l.frame_timeout_secs),
            ("max-frame-bytes", l.max_frame_bytes as u64),
            ("read-chunk-bytes", l.read_chunk_bytes as u64),
            (
                "quic-streams-per-connection",
                u64::from(l.quic_streams_per_connection),
            ),
            ("device-cert-hours", self.pki.device_cert_hours),
            ("max-records", self.audit.max_records),
            ("server-cert-days", self.pki.server_cert_days),
        ] {
            if value == 0 {
                return invalid(format!("{key} must be more than 0"));
            }
        }
        if l.read_chunk_bytes > 1 << 20 {
            return invalid("read-chunk-bytes must be at most 1 MiB".into());
        }
        if l.max_connections > MAX_CONNECTIONS {
            return invalid(format!("max-connections must be at most {MAX_CONNECTIONS}"));
        }
        if l.max_frame_bytes > 256 << 20 {
            return invalid(
                "max-frame-bytes must be at most 256 MiB, MQTT's largest packet".into(),
            );
        }
        if (l.max_buffered_bytes_per_device).is_some_and(|bytes| bytes / 2 < l.max_frame_bytes) {
            return invalid(format!(
                "max-buffered-bytes-per-device must be at least twice max-frame-bytes ({}): a frame waiting for its end is held twice",
                l.max_frame_bytes
            ));
        }
        if l.max_buffered_bytes / 2 < l.max_frame_bytes {
            return invalid(format!(
                "max-buffered-bytes must be at least twice max-frame-bytes ({}): a frame waiting for its end is held twice",
                l.max_frame_bytes
            ));
        }
        if self.pki.device_cert_hours > 24 * 3650 || self.pki.server_cert_days > 3650 {
            return invalid("certificate lifetimes must be at most 10 years".into());
        }
        if self.server_names.is_empty() {
            return invalid("server-names must name at least one name or address".into());
        }
        if self.routes.is_empty() {
            return invalid("at least one [[route]] is needed".into());
        }
        let mut names = HashSet::new();
        let mut tls_ports = HashSet::new();
        let mut quic_alpns = HashSet::new();
        for r in &self.routes {
            check_name("route name", &r.name).map_err(|e| ConfigError::Invalid(e.to_string()))?;
            check_name("protocol", &r.protocol)
                .map_err(|e| ConfigError::Invalid(format!("route {}: {e}", r.name)))?;
            if !names.insert(r.name.as_str()) {
                return invalid(format!("two routes are named {}", r.name));
            }
            if r.upstream
                .rsplit_once(':')
                .is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
            {
                return invalid(format!(
                    "route {}: upstream {:?} is not host:port",
                    r.name, r.upstream
                ));
            }
            if r.parser.as_deref() == Some("") {
                return invalid(format!(
                    "route {}: parser is empty (leave it out to relay uninspected)",
                    r.name
                ));
            }
            if r.parser.is_none() && !(r.detectors.is_empty() && r.responders.is_empty()) {
                return invalid(format!(
                    "route {}: detectors and responders judge a parser's events; give it a parser",
                    r.name
                ));
            }
            if let Some(tls) = &r.upstream_tls {
                if tls.client_cert.is_some() != tls.client_key.is_some() {
                    return invalid(format!(
                        "route {}: upstream-tls needs both client-cert and client-key, or neither",
                        r.name
                    ));
                }
                // An upstream is the site's own broker or PLC, its
                // certificate issued by the site's CA: trusting the
                // system's public CAs would take any certificate for its
                // name that one of them issued. The public bundle is there
                // to be named, for an upstream that has a public
                // certificate.
                if tls.ca.is_none() {
                    return invalid(format!(
                        "route {}: upstream-tls needs ca, the CA that issued the upstream's certificate: the site CA's PEM file (or {}, the system's public CAs, if the upstream has a public certificate)",
                        r.name,
                        crate::client_tls::SYSTEM_CAS
                    ));
                }
            }
            if let Some(alpn) = r.alpn()
                && (alpn.is_empty() || alpn.len() > 255)
            {
                return invalid(format!("route {}: alpn must be 1 to 255 bytes", r.name));
            }
            let fresh = match r.transport {
                Transport::Tls => r.listen.port() == 0 || tls_ports.insert(r.listen),
                Transport::Quic => quic_alpns.insert((r.listen, r.alpn().map(str::to_owned))),
            };
            if !fresh {
                return invalid(format!(
                    "route {} listens where another route does ({} {}); TLS routes need a port each, QUIC routes on one port an ALPN each",
                    r.name, r.transport, r.listen
                ));
            }
        }
        if self.audit.max_backlog < self.audit.max_records {
            return invalid(format!(
                "audit: max-backlog ({}) must be at least max-records ({})",
                self.audit.max_backlog, self.audit.max_records
            ));
        }
        if self.audit.max_bytes < MIN_AUDIT_BYTES {
            return invalid(format!(
                "audit: max-bytes ({}) must be at least {MIN_AUDIT_BYTES} (64 MiB): the trail holds what the SIEM sinks have yet to send",
                self.audit.max_bytes
            ));
        }
        let mut sinks = HashSet::new();
        for sink in &self.sinks {
            check_name("siem name", sink.name())
                .map_err(|e| ConfigError::Invalid(e.to_string()))?;
            if !sinks.insert(sink.name()) {
                return invalid(format!("two [[siem]] sinks are named {}", sink.name()));
            }
            if let Err(reason) = sink.check() {
                return invalid(format!("[[siem]] sink {}: {reason}", sink.name()));
            }
        }
        if let Some(renewal) = self.renewal.listen
            && renewal.port() != 0
            && tls_ports.contains(&renewal)
        {
            return invalid(format!(
                "renewal listens on {renewal}, where a TLS route does"
            ));
        }
        if let Some(admin) = self.admin.listen
            && admin.port() != 0
            && (tls_ports.contains(&admin) || self.renewal.listen == Some(admin))
        {
            return invalid(format!(
                "the admin API listens on {admin}, where a TLS route or renewal does"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn defaults_are_valid_and_round_trip() {
        let config = Config::default();
        config.check().unwrap();
        assert_eq!(Config::parse(&config.to_toml()).unwrap(), config);
        assert_eq!(Config::parse("").unwrap(), config);
    }

    #[test]
    fn a_file_overrides_what_it_names() {
        let config = Config::parse("[limits]\nidle-timeout-secs = 7\n").unwrap();
        assert_eq!(config.limits.idle_timeout_secs, 7);
        assert_eq!(config.limits.max_connections, 20_000);
        assert_eq!(config.routes.len(), 4);
    }

    #[test]
    fn limits_past_what_an_appliance_can_hold_are_refused() {
        for (key, value) in [
            ("max-connections", "3000000000000000000"),
            ("max-frame-bytes", "1099511627776"),
        ] {
            let err = Config::parse(&format!("[limits]\n{key} = {value}\n")).unwrap_err();
            assert!(err.to_string().contains(key), "{err}");
        }
        assert!(Config::parse("[limits]\nmax-connections = 1000000\n").is_ok());
        let err =
            Config::parse("[limits]\nmax-frame-bytes = 1048576\nmax-buffered-bytes = 2097151\n")
                .unwrap_err();
        assert!(err.to_string().contains("max-buffered-bytes"), "{err}");
        assert!(
            Config::parse("[limits]\nmax-frame-bytes = 1048576\nmax-buffered-bytes = 2097152\n")
                .is_ok()
        );
    }

    /// A device's share of the buffer budget: a sixteenth of it by
    /// default, never less than one session with the largest frame
    /// halfway both ways (as configurations valid before the share
    /// existed allow), and a configured share below one frame held twice
    /// refused.
    #[test]
    fn a_devices_share_of_the_buffers_is_checked() {
        let limits = Config::parse("").unwrap().limits;
        assert_eq!(limits.buffered_bytes_per_device(), 16 << 20);
        let big_frames =
            Config::parse("[limits]\nmax-frame-bytes = 16777216\nmax-buffered-bytes = 67108864\n")
                .unwrap();
        assert_eq!(big_frames.limits.buffered_bytes_per_device(), 64 << 20);
        let set = Config::parse("[limits]\nmax-buffered-bytes-per-device = 1048576\n").unwrap();
        assert_eq!(set.limits.buffered_bytes_per_device(), 1 << 20);
        let err = Config::parse("[limits]\nmax-buffered-bytes-per-device = 524287\n").unwrap_err();
        assert!(
            err.to_string().contains("max-buffered-bytes-per-device"),
            "{err}"
        );
    }

    #[test]
    fn audit_retention_is_checked() {
        let config = Config::parse("[audit]\nmax-records = 10\n").unwrap();
        assert_eq!(config.audit.max_records, 10);
        assert_eq!(config.audit.max_backlog, 1_000_000);
        let err = Config::parse("[audit]\nmax-records = 10\nmax-backlog = 9\n").unwrap_err();
        assert!(err.to_string().contains("max-backlog"), "{err}");
        assert_eq!(config.audit.max_bytes, 1 << 30);
        let err = Config::parse("[audit]\nmax-bytes = 1000\n").unwrap_err();
        assert!(
            err.to_string()
                .contains("max-bytes (1000) must be at least"),
            "{err}"
        );
        assert!(Config::parse("[audit]\nmax-records = 0\n").is_err());
    }

    #[test]
    fn siem_destinations_the_exporter_cannot_reach_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no-such-dir/audit.jsonl");
        let here = dir.path().join("audit.jsonl");
        let webhook = |url: &str| format!("kind = \"webhook\"\nurl = \"{url}\"\n");
        let syslog = |address: &str| format!("kind = \"syslog\"\naddress = \"{address}\"\n");
        let file = |path: &Path| format!("kind = \"file\"\npath = {:?}\n", path);
        let ca_file = crate::client_tls::tests::ca_file(dir.path());
        let tls = |ca: &Path| format!("tls = {{ ca = {ca:?} }}\n");
        let token = dir.path().join("token");
        std::fs::write(&token, "Splunk 1f2e3d\n").unwrap();
        let two_lines = dir.path().join("two-lines");
        std::fs::write(&two_lines, "Bearer a\nHost: elsewhere\n").unwrap();
        let authorization = |path: &Path| format!("authorization-file = {path:?}\n");
        let https = webhook("https://siem.example/audit") + &tls(&ca_file);
        for (sink, field) in [
            (webhook("ftp://siem.example/audit"), "url"),
            (
                webhook("https://siem.example/audit") + &tls(&missing),
                "tls: ca",
            ),
            (
                webhook("https://siem.example/audit") + &tls(&token),
                "tls: ca",
            ),
            (webhook("http://siem.example/audit") + &tls(&ca_file), "tls"),
            (
                https.clone() + &authorization(&missing),
                "authorization-file",
            ),
            (
                https.clone() + &authorization(&two_lines),
                "authorization-file",
            ),
            (
                webhook("http://siem.example/audit") + &authorization(&token),
                "authorization-file",
            ),
            (syslog("siem.example:6514") + &tls(&ca_file), "tls"),
            (
                syslog("siem.example:6514") + "transport = \"tls\"\n" + &tls(&missing),
                "tls: ca",
            ),
            (webhook("siem.example/audit"), "url"),
            (webhook("http://"), "url"),
            (webhook("http://siem.example:http/audit"), "url"),
            (webhook("http://siem.example:99999/audit"), "url"),
            (webhook("http://user:secret@siem.example/audit"), "url"),
            (webhook("http://siem example/audit"), "url"),
            (webhook("http://siem.example/a b"), "url"),
            (syslog("10.0.0.9"), "address"),
            (syslog("10.0.0.9:"), "address"),
            (syslog("10.0.0.9:syslog"), "address"),
            (syslog(":514"), "address"),
            (syslog("::1:514"), "address"),
            (syslog("10.0.0.9:0"), "address"),
            (file(&missing), "path"),
            (file(dir.path()), "path"),
        ] {
            let text = format!("[[siem]]\nname = \"soc\"\n{sink}");
            let err = Config::parse(&text).unwrap_err().to_string();
            assert!(
                err.contains("sink soc") && err.contains(field),
                "{sink}: {err}"
            );
        }
        for sink in [
            webhook("http://10.0.0.9:8080/audit"),
            https.clone() + &authorization(&token),
            syslog("siem.example:6514"),
            syslog("siem.example:6514") + "transport = \"tls\"\n" + &tls(&ca_file),
            file(&here),
        ] {
            let text = format!("[[siem]]\nname = \"soc\"\n{sink}");
            assert!(Config::parse(&text).is_ok(), "{sink}");
        }
    }

    #[test]
    fn unknown_keys_are_refused_with_their_line() {
        let err = Config::parse("[limits]\nidle-timeout = 7\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("idle-timeout"), "{msg}");
        assert!(msg.contains("line 2") || msg.contains("2:"), "{msg}");
    }

    fn route(name: &str, port: u16, upstream: &str) -> String {
        format!(
            "[[route]]\nname = \"{name}\"\nprotocol = \"mqtt\"\ntransport = \"tls\"\nlisten = \"127.0.0.1:{port}\"\nupstream = \"{upstream}\"\n"
        )
    }

    #[test]
    fn inconsistent_routes_are_refused() {
        let one = route("a", 9000, "127.0.0.1:1883");
        assert!(Config::parse(&one).is_ok());
        let same_port = one.clone() + &route("b", 9000, "127.0.0.1:1883");
        let err = Config::parse(&same_port).unwrap_err().to_string();
        assert!(err.contains("listens where"), "{err}");
        let same_name = one.clone() + &route("a", 9001, "127.0.0.1:1883");
        assert!(Config::parse(&same_name).is_err());
        let bad_upstream = route("a", 9000, "nowhere");
        assert!(Config::parse(&bad_upstream).is_err());
        // The policy lives in its own file, in Cedar.
        let policy = one + "[[policy.allow]]\nclass = \"x\"\nroutes = [\"a\"]\n";
        let err = Config::parse(&policy).unwrap_err().to_string();
        assert!(err.contains("policy"), "{err}");
    }

    /// The site's broker must not be trusted on a certificate any public CA
    /// issued for its name: a route's upstream-tls names its CAs.
    #[test]
    fn an_upstream_tls_without_its_ca_is_refused() {
        use crate::client_tls::SYSTEM_CAS;
        let tls = |table: &str| {
            route("a", 9000, "broker.plant:8883") + &format!("upstream-tls = {{ {table} }}\n")
        };
        let err = Config::parse(&tls("server-name = \"broker\""))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("route a: upstream-tls needs ca") && err.contains(SYSTEM_CAS),
            "{err}"
        );
        let named = tls(&format!("ca = {SYSTEM_CAS:?}, server-name = \"broker\""));
        assert!(Config::parse(&named).is_ok());
    }
}
