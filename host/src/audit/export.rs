//! Exporters: one task per configured sink, delivering the audit trail in
//! order, each record once, and never losing one to a sink that is down.
//!
//! An exporter reads the records after its sink's cursor, delivers them,
//! and moves the cursor only when the sink has accepted them; when the sink
//! fails, or a network sink takes longer than the deadline of one attempt
//! (half a minute) however little it answers at a time, it waits (one
//! second, doubling to half a minute) and tries the same records again.
//! Stopping does not wait for an attempt to a network sink: what it was
//! sending goes again at the next start. A delivery to a file is never cut
//! short, by the deadline or by stop: its lines and the cursor past them
//! are written together, so each line is in the file once, and whole; an
//! append that fails (a full disk) leaves the file as it was, and the same
//! lines go again at the next attempt. When the cursor cannot be moved
//! past records the sink took (the state database failing to write), the
//! exporter remembers in memory how far it delivered and tries only the
//! cursor again, so the sink gets no record twice while this process runs.
//! The audit log on disk is the
//! buffer, so a slow or absent SIEM never slows the traffic; its backlog
//! is in the log lines.
//!
//! What "accepted" means depends on the sink:
//! - `file`: appended and synced to disk;
//! - `webhook`: the server answered the POST with a 2xx status;
//! - `syslog` over TCP or TLS: the receiver took the whole batch and closed
//!   its side of the connection after ours (RFC 6587 and RFC 5425
//!   octet-counted frames, one connection per batch), so a receiver that
//!   died mid-batch gets the batch again, whole. Its close counts only if
//!   its TCP stack had acknowledged every byte of the batch by then: a
//!   receiver that closes a connection at once, unread (rsyslog past its
//!   `MaxSessions`, or refusing a client certificate), leaves them
//!   unacknowledged, and the batch goes again. Over TLS our side ends with
//!   a close_notify; the receiver may answer with its own or simply close
//!   (rsyslog's gtls driver does), and its connection must then end with a
//!   FIN, not the reset of a receiver that closed with the batch unread;
//! - `syslog` over UDP: sent. UDP gives no acknowledgement; use TCP where
//!   every record matters.
//!
//! Each record is cut to [`format::MAX_MESSAGE_BYTES`] as it is rendered.
//! A batch that fails is halved for the next attempt (and grows back as
//! deliveries succeed), so that one record a sink refuses for its size
//! (HTTP 413, a datagram too long) ends up alone. Refused alone, and
//! rendered near the cap ([`PASS_OVER_AT`]) or longer than any record the
//! sink took (a proxy's body limit between them), it can never be
//! delivered: it is logged, counted and passed over. Every other failure
//! is retried, however long the sink is down.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use super::{AuditLog, Record, format};
use crate::client_tls::{ClientTls, Connector};

/// Records delivered in one batch at most.
pub const BATCH: usize = 256;
/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long one delivery attempt to a network sink may take, from
/// connecting to the sink's last answer, by default: a receiver that drips
/// its answer must not keep an attempt alive for hours.
pub const DEADLINE: Duration = Duration::from_secs(30);
/// How much of a webhook's answer is read.
const MAX_ANSWER: usize = 8 * 1024;
/// A record the sink refuses for its size even alone is passed over only
/// if it renders at least this long: half of [`format::MAX_MESSAGE_BYTES`].
/// An alert renders in well under a kilobyte; one this long carries long
/// strings from a device and was most likely cut to fit already, so it
/// cannot get smaller and no retry would take it. A smaller record refused
/// alone says that the sink refuses more than this record (a proxy's small
/// body limit, a passing fault): it is tried again, so no alert is lost.
pub const PASS_OVER_AT: usize = format::MAX_MESSAGE_BYTES / 2;

/// One place audit records go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum SinkConfig {
    /// JSON lines appended to a file.
    File {
        /// The sink's name; its cursor is kept under it.
        name: String,
        /// The file.
        path: PathBuf,
    },
    /// Batches POSTed as a JSON array to an HTTPS URL (or plain HTTP, for a
    /// collector on the management network or a local forwarder).
    Webhook {
        /// The sink's name.
        name: String,
        /// Where to POST, `https://host[:port]/path` or `http://...`.
        url: String,
        /// TLS to an `https://` URL. Default: the system's public CAs, and
        /// the URL's host as the server's name.
        #[serde(default)]
        tls: Option<ClientTls>,
        /// A file holding the value of the `Authorization` header sent with
        /// each batch (`Splunk <token>`, `Bearer <token>`), read at start.
        /// Only with an `https://` URL: plain HTTP would carry the token in
        /// clear. Default: none sent.
        #[serde(default, rename = "authorization-file")]
        authorization_file: Option<PathBuf>,
    },
    /// RFC 5424 syslog messages with a CEF body.
    Syslog {
        /// The sink's name.
        name: String,
        /// The receiver, `host:port`.
        address: String,
        /// `tcp` (default), `tls` or `udp`.
        #[serde(default)]
        transport: SyslogTransport,
        /// With `transport = "tls"`: the receiver's CAs and name, and a
        /// client certificate if it wants one. Default: the system's public
        /// CAs, and the address's host as the name.
        #[serde(default)]
        tls: Option<ClientTls>,
        /// The hostname in the messages (default: the machine's).
        #[serde(default)]
        hostname: Option<String>,
    },
}

/// How syslog messages travel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SyslogTransport {
    /// TCP, octet-counted (RFC 6587).
    #[default]
    Tcp,
    /// TLS, octet-counted (RFC 5425; receivers listen on 6514).
    Tls,
    /// UDP, one message per datagram (RFC 5426).
    Udp,
}

impl SinkConfig {
    /// The sink's name.
    pub fn name(&self) -> &str {
        match self {
            SinkConfig::File { name, .. }
            | SinkConfig::Webhook { name, .. }
            | SinkConfig::Syslog { name, .. } => name,
        }
    }

    /// Check that the exporter can reach the sink's destination as
    /// written, its TLS files and credentials read: the configuration is
    /// refused at start, rather than every delivery failing and the records
    /// piling up. Says which field is wrong, and why. Names are not
    /// resolved: DNS may not answer yet.
    pub fn check(&self) -> Result<(), String> {
        self.reach().map(|_| ())
    }

    /// How the exporter reaches the sink, its files read.
    fn reach(&self) -> Result<Reach, String> {
        match self {
            SinkConfig::File { path, .. } => {
                if path.as_os_str().is_empty() || path.is_dir() {
                    return Err(format!("path {path:?} is not a file name"));
                }
                // Not created here: a missing directory is most likely a
                // typo, or a volume not mounted.
                match path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    Some(dir) if !dir.is_dir() => Err(format!(
                        "path {path:?}: its directory {dir:?} does not exist"
                    )),
                    _ => Ok(Reach::default()),
                }
            }
            SinkConfig::Webhook {
                url,
                tls,
                authorization_file,
                ..
            } => {
                let target = WebhookTarget::parse(url).map_err(|e| format!("url {url:?}: {e}"))?;
                let tls = match (target.https, tls) {
                    (true, tls) => Some(tls.clone().unwrap_or_default().connector(target.host)),
                    (false, Some(_)) => {
                        return Err(format!("tls is for https:// URLs, not {url:?}"));
                    }
                    // The header goes with every batch: over plain HTTP,
                    // anyone on the path reads the token and can post as
                    // the appliance.
                    (false, None) if authorization_file.is_some() => {
                        return Err(format!(
                            "authorization-file sends its token with each batch, and {url:?} would carry it in clear: give an https:// URL"
                        ));
                    }
                    (false, None) => None,
                };
                Ok(Reach {
                    tls: tls.transpose().map_err(|e| format!("tls: {e}"))?,
                    authorization: authorization_file
                        .as_deref()
                        .map(Authorization::read)
                        .transpose()?,
                })
            }
            SinkConfig::Syslog {
                address,
                transport,
                tls,
                ..
            } => {
                let (host, _) =
                    host_port(address, None).map_err(|e| format!("address {address:?}: {e}"))?;
                let tls = match (transport, tls) {
                    (SyslogTransport::Tls, tls) => {
                        Some(tls.clone().unwrap_or_default().connector(host))
                    }
                    (_, Some(_)) => return Err("tls is for transport = \"tls\"".into()),
                    (_, None) => None,
                };
                Ok(Reach {
                    tls: tls.transpose().map_err(|e| format!("tls: {e}"))?,
                    authorization: None,
                })
            }
        }
    }
}

/// How the exporter reaches a network sink: TLS, and the credentials it
/// presents; read from their files once, at start.
#[derive(Debug, Default)]
struct Reach {
    /// TLS to the sink, for an `https://` webhook or syslog over TLS.
    tls: Option<Connector>,
    /// The webhook's `Authorization` header value.
    authorization: Option<Authorization>,
}

/// The value of an `Authorization` header: a secret, never logged.
struct Authorization(String);

impl std::fmt::Debug for Authorization {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Authorization(..)")
    }
}

impl Authorization {
    /// Longest value taken: tokens are tens of bytes, a JWT a kilobyte.
    const MAX: usize = 4096;

    /// The value in the file at `path`, without its surrounding whitespace.
    fn read(path: &Path) -> Result<Authorization, String> {
        let bad = |e: &dyn std::fmt::Display| format!("authorization-file {}: {e}", path.display());
        let mut file = std::fs::File::open(path).map_err(|e| bad(&e))?;
        let mut value = String::new();
        std::io::Read::read_to_string(
            &mut std::io::Read::take(&mut file, Self::MAX as u64 + 1),
            &mut value,
        )
        .map_err(|e| bad(&e))?;
        let value = value.trim();
        if value.len() > Self::MAX {
            return Err(bad(&format!("longer than {} bytes", Self::MAX)));
        }
        // Written into the request's head as it is.
        if value.is_empty() || value.chars().any(char::is_control) {
            return Err(bad(
                &"must hold one line, the header's value (`Bearer <token>`, say)",
            ));
        }
        Ok(Authorization(value.to_owned()))
    }
}

/// Where a webhook's batches go: what the HTTP/1.1 client speaks,
/// `https://host[:port][/path]` or `http://...`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct WebhookTarget<'a> {
    /// Whether over TLS.
    https: bool,
    /// `host[:port]` as written, for the `Host` header.
    authority: &'a str,
    /// The host, for the certificate's name.
    host: &'a str,
    /// Where to connect, `host:port`.
    address: String,
    /// The request's path, from `/`.
    path: &'a str,
}

impl<'a> WebhookTarget<'a> {
    fn parse(url: &'a str) -> Result<Self, String> {
        let (https, rest) = match (url.strip_prefix("https://"), url.strip_prefix("http://")) {
            (Some(rest), _) => (true, rest),
            (None, Some(rest)) => (false, rest),
            (None, None) => {
                return Err("not https://host[:port]/path (nor http://)".into());
            }
        };
        let (authority, path) = match rest.find(['/', '?', '#']) {
            Some(i) => rest.split_at(i),
            None => (rest, "/"),
        };
        if !path.starts_with('/') {
            return Err("the path must start with /".into());
        }
        // Written into the request line as it is.
        if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("the path holds spaces or control characters".into());
        }
        if authority.contains('@') {
            return Err("user names and passwords in the URL are not supported".into());
        }
        let (host, port) = host_port(authority, Some(if https { 443 } else { 80 }))?;
        Ok(WebhookTarget {
            https,
            authority,
            host,
            address: format!("{host}:{port}"),
            path,
        })
    }
}

/// `host:port` split into its host (an IPv6 address keeps its brackets)
/// and port, the port `default` when left out (required without one).
fn host_port(address: &str, default: Option<u16>) -> Result<(&str, u16), String> {
    let (host, port) = match address.rsplit_once(':') {
        // A colon inside an IPv6 address's brackets is not a port's.
        Some((host, port)) if !port.contains(']') => (host, Some(port)),
        _ => (address, None),
    };
    let port = match (port, default) {
        (Some(port), _) => match port.parse::<u16>() {
            Ok(0) | Err(_) => return Err(format!("port {port:?} is not a port from 1 to 65535")),
            Ok(port) => port,
        },
        (None, Some(default)) => default,
        (None, None) => return Err("not host:port: the port is missing".into()),
    };
    let valid = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => {
            !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        }
    };
    if !valid {
        return Err(format!(
            "host {host:?} is not a name, an IPv4 address or a bracketed IPv6 address"
        ));
    }
    Ok((host, port))
}

/// Why a delivery failed. The records are tried again.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The sink could not be reached or written.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The sink did not take the records within the deadline.
    #[error("not delivered within {0:?}")]
    Timeout(Duration),
    /// The webhook answered with something other than success.
    #[error("webhook answered `{0}`")]
    Refused(String),
    /// The sink refused the records for their size: a webhook answered
    /// 413, or a datagram was too long to send. Retried, in a smaller
    /// batch.
    #[error("too large for the sink: {0}")]
    TooLarge(String),
    /// The sink's configuration cannot work.
    #[error("{0}")]
    Config(String),
    /// A syslog receiver closed the connection before it took the batch:
    /// so many bytes of it were never acknowledged.
    #[error(
        "the receiver closed the connection before taking the batch ({0} bytes unacknowledged)"
    )]
    Unread(u32),
    /// The audit trail could not be read, or the sink's cursor moved.
    #[error(transparent)]
    Trail(#[from] super::AuditError),
}

/// Delivers the audit trail to one sink.
#[derive(Debug)]
pub struct Exporter {
    log: AuditLog,
    sink: SinkConfig,
    /// How the sink is reached, or why it cannot be (its files changed
    /// since the configuration was checked): each attempt fails with that.
    reach: Result<Reach, String>,
    hostname: String,
    /// Records read for the next attempt: [`BATCH`], half of the records
    /// tried after each failure, doubled after each success.
    batch: usize,
    /// Records the sink refused for their size even alone, rendered near
    /// the cap or longer than any it took, and that were passed over.
    undeliverable: u64,
    /// The longest record, as rendered, the sink took so far.
    longest_taken: usize,
    /// How long one attempt to a network sink may take.
    deadline: Duration,
    /// The last record delivered when moving the cursor past it failed
    /// (the state database failing to write): the next attempt moves the
    /// cursor again, and delivers nothing before it has, so that the sink
    /// does not get those records twice.
    delivered: Option<u64>,
}

impl Exporter {
    /// An exporter of `log` to `sink`.
    pub fn new(log: AuditLog, sink: SinkConfig) -> Self {
        let hostname = match &sink {
            SinkConfig::Syslog {
                hostname: Some(h), ..
            } => h.clone(),
            _ => std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "palisade".into()),
        };
        Exporter {
            log,
            reach: sink.reach(),
            sink,
            hostname,
            batch: BATCH,
            undeliverable: 0,
            longest_taken: 0,
            deadline: DEADLINE,
            delivered: None,
        }
    }

    /// The same exporter, whose attempts to a network sink may each take
    /// `deadline` (default [`DEADLINE`]).
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// How many records the sink refused for their size even alone,
    /// rendered near the cap ([`PASS_OVER_AT`]) or longer than any it took,
    /// and were passed over.
    pub fn undeliverable(&self) -> u64 {
        self.undeliverable
    }

    /// Deliver records until `stop` turns true (or its sender goes), then
    /// return at once, even in the middle of an attempt to a network sink.
    /// A delivery to a file ends first.
    pub async fn run(mut self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let name = self.sink.name().to_owned();
        let mut backoff = Duration::from_secs(1);
        loop {
            // Between attempts too: a file sink goes straight on to its next
            // batch, and a long backlog must not hold a shutdown.
            if *stop.borrow() || stop.has_changed().is_err() {
                return;
            }
            let attempt = match self.sink {
                // Waited for, so that when `run` returns the cursor is past
                // the lines written, and the next start writes none again.
                SinkConfig::File { .. } => self.deliver_next().await,
                _ => tokio::select! {
                    attempt = self.deliver_next() => attempt,
                    _ = stop.wait_for(|stop| *stop) => return,
                },
            };
            let wait = match attempt {
                Ok(0) => None,
                Ok(_) => {
                    backoff = Duration::from_secs(1);
                    continue;
                }
                // The batch is halved already: while it can still shrink,
                // try again at once, to find the record the sink refuses.
                Err(e @ DeliveryError::TooLarge(_)) if self.batch > 1 => {
                    tracing::warn!(sink = %name, error = %e, batch = self.batch, "audit export refused for its size; trying a smaller batch");
                    continue;
                }
                Err(e) => {
                    // Counting scans every record after the cursor (a
                    // second or more after a long outage): off the worker,
                    // and stop does not wait for it.
                    let backlog = tokio::select! {
                        backlog = self.on_log(|log, sink| Ok(log.backlog(sink)?)) => backlog.unwrap_or(0),
                        _ = stop.wait_for(|stop| *stop) => return,
                    };
                    tracing::warn!(sink = %name, error = %e, backlog, "audit export failed; will retry");
                    let wait = backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    Some(wait)
                }
            };
            let notified = self.log.appended();
            tokio::select! {
                _ = notified, if wait.is_none() => {}
                () = tokio::time::sleep(wait.unwrap_or(Duration::from_secs(1))) => {}
                _ = stop.wait_for(|stop| *stop) => return,
            }
        }
    }

    /// Deliver the next batch, if there is one. Returns how many records
    /// the sink's cursor moved past: delivered, or skipped as damaged.
    pub async fn deliver_next(&mut self) -> Result<usize, DeliveryError> {
        if let Some(last) = self.delivered {
            self.on_log(move |log, sink| Ok(log.advance(sink, last)?))
                .await?;
            self.delivered = None;
        }
        let batch = self.batch;
        let page = self
            .on_log(move |log, sink| Ok(log.read(log.cursor(sink)?, batch)?))
            .await?;
        let Some(last) = page.last else {
            return Ok(0);
        };
        // Each record as the network sink gets it, rendered once. A page of
        // damaged records only (skipped and counted by `read`) moves the
        // cursor too; a file's lines are appended below, with no deadline,
        // by the task that moves the cursor.
        let messages: Vec<String> = match self.sink {
            SinkConfig::File { .. } => Vec::new(),
            _ => page.records.iter().map(|r| self.rendered(r)).collect(),
        };
        let delivered = if messages.is_empty() {
            Ok(())
        } else {
            tokio::time::timeout(self.deadline, self.deliver(&messages))
                .await
                .unwrap_or(Err(DeliveryError::Timeout(self.deadline)))
        };
        let longest = messages.iter().map(String::len).max().unwrap_or(0);
        match (delivered, page.records.as_slice()) {
            (Ok(()), _) => {
                self.batch = self.batch.saturating_mul(2).min(BATCH);
                self.longest_taken = self.longest_taken.max(longest);
            }
            (Err(e @ DeliveryError::TooLarge(_)), [record]) if self.never_taken(longest) => {
                self.undeliverable = self.undeliverable.saturating_add(1);
                tracing::error!(
                    sink = %self.sink.name(),
                    record = record.id,
                    error = %e,
                    undeliverable = self.undeliverable,
                    "audit record refused by the sink for its size even alone, and rendered near the cap or longer than any it took; passed over (it stays in the audit trail)"
                );
            }
            (Err(e), records) => {
                self.batch = (records.len() / 2).max(1);
                return Err(e);
            }
        }
        let file = match &self.sink {
            SinkConfig::File { path, .. } => Some((path.clone(), json_lines(&page.records))),
            _ => None,
        };
        // A task on the blocking pool runs to its end even if the attempt
        // that started it is dropped (by stop, or by serve giving up on the
        // exporter), so a file's lines go with the cursor past them: had the
        // attempt been cut short between the two, the lines would go again,
        // twice in the file; cut short within a write (tokio writes a file
        // 2 MiB at a time, a full batch can be more), a line would stop half
        // way.
        let advanced = self
            .on_log(move |log, sink| {
                if let Some((path, lines)) = file {
                    append(&path, &lines)?;
                }
                Ok(log.advance(sink, last))
            })
            .await?;
        if let Err(e) = advanced {
            self.delivered = Some(last);
            return Err(e.into());
        }
        Ok(page.records.len() + page.damaged)
    }

    /// `f` on the audit log and the sink's name, in a task on the blocking
    /// pool: sled reads, scans and flushes wait for the disk, which an
    /// async worker must not (its other tasks are sessions).
    async fn on_log<T: Send + 'static>(
        &self,
        f: impl FnOnce(&AuditLog, &str) -> Result<T, DeliveryError> + Send + 'static,
    ) -> Result<T, DeliveryError> {
        let (log, sink) = (self.log.clone(), self.sink.name().to_owned());
        tokio::task::spawn_blocking(move || f(&log, &sink))
            .await
            .map_err(|e| DeliveryError::Io(std::io::Error::other(e)))?
    }

    /// Whether a record rendered `length` bytes long, refused alone for
    /// its size, is one the sink will never take: near the cap (it cannot
    /// get smaller), or longer than any the sink took while it takes
    /// others (a size limit between them). A record no longer than one it
    /// took was refused by a passing fault, and is tried again.
    fn never_taken(&self, length: usize) -> bool {
        length >= PASS_OVER_AT || (self.longest_taken > 0 && length > self.longest_taken)
    }

    /// `record` as the sink gets it, cut to fit.
    fn rendered(&self, record: &Record) -> String {
        match &self.sink {
            SinkConfig::File { .. } | SinkConfig::Webhook { .. } => json(record),
            SinkConfig::Syslog { .. } => format::fitted(record, format::MAX_MESSAGE_BYTES, |r| {
                format::syslog(r, &self.hostname)
            }),
        }
    }

    /// Send `messages`, the records rendered for this network sink.
    async fn deliver(&self, messages: &[String]) -> Result<(), DeliveryError> {
        let reach = (self.reach.as_ref())
            .map_err(|e| DeliveryError::Config(format!("sink {}: {e}", self.sink.name())))?;
        match &self.sink {
            // Appended in `deliver_next`, by the task that moves the cursor.
            SinkConfig::File { .. } => Ok(()),
            SinkConfig::Webhook { url, .. } => post(url, reach, messages).await,
            SinkConfig::Syslog {
                address, transport, ..
            } => match transport {
                SyslogTransport::Tcp | SyslogTransport::Tls => {
                    syslog_stream(address, reach.tls.as_ref(), messages).await
                }
                SyslogTransport::Udp => {
                    let socket = UdpSocket::bind(("0.0.0.0", 0)).await?;
                    socket.connect(address).await?;
                    for message in messages {
                        socket.send(message.as_bytes()).await.map_err(|e| {
                            match rustix::io::Errno::from_io_error(&e) {
                                Some(rustix::io::Errno::MSGSIZE) => {
                                    DeliveryError::TooLarge(e.to_string())
                                }
                                _ => DeliveryError::Io(e),
                            }
                        })?;
                    }
                    Ok(())
                }
            },
        }
    }
}

/// `records` as JSON lines, each cut to fit.
fn json_lines(records: &[Record]) -> String {
    let mut lines = String::new();
    for record in records {
        lines.push_str(&json(record));
        lines.push('\n');
    }
    lines
}

/// Append `lines` to the file at `path` (created 0600), and wait until
/// they are on disk; or, when that fails, leave the file as it was. Blocks.
///
/// A write can fail part way (the disk full, the file at its size limit,
/// an I/O error): the batch is tried again later, and a torn line left
/// behind would be glued to the first line of the next attempt. A sync
/// that fails leaves lines that may or may not be on disk, and the next
/// attempt writes them again. So on any failure the file is cut back to
/// its length before the attempt.
fn append(path: &Path, lines: &str) -> std::io::Result<()> {
    if lines.is_empty() {
        return Ok(());
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    // Only this sink's exporter appends to the file, one batch at a time:
    // its end does not move between here and the write.
    let before = file.metadata()?.len();
    let Err(error) = (file.write_all(lines.as_bytes())).and_then(|()| file.sync_data()) else {
        return Ok(());
    };
    match file.set_len(before).and_then(|()| file.sync_data()) {
        Ok(()) => Err(error),
        Err(undo) => Err(std::io::Error::new(
            error.kind(),
            format!(
                "{error}; and cutting {} back to its {before} bytes failed too (it may end in a partial line): {undo}",
                path.display()
            ),
        )),
    }
}

/// `record` as one line of JSON, cut to fit.
fn json(record: &Record) -> String {
    format::fitted(record, format::MAX_MESSAGE_BYTES, format::json_line)
}

/// Send `messages` octet-counted over one connection, TCP or TLS, then
/// wait for the receiver to close its side: it has read everything.
async fn syslog_stream(
    address: &str,
    tls: Option<&Connector>,
    messages: &[String],
) -> Result<(), DeliveryError> {
    let mut frames = Vec::new();
    for message in messages {
        frames.extend_from_slice(format!("{} ", message.len()).as_bytes());
        frames.extend_from_slice(message.as_bytes());
    }
    let tcp = TcpStream::connect(address).await?;
    match tls {
        Some(tls) => send_until_closed(tls.connect(tcp).await?, &frames).await,
        None => send_until_closed(tcp, &frames).await,
    }
}

/// A stream over a TCP connection.
trait OverTcp: AsyncRead + AsyncWrite + Unpin {
    fn tcp(&self) -> &TcpStream;
}

impl OverTcp for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl OverTcp for tokio_rustls::client::TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

/// Write `frames`, end our side, read until the receiver ends its, and
/// check that it took every byte before.
async fn send_until_closed<S: OverTcp>(mut stream: S, frames: &[u8]) -> Result<(), DeliveryError> {
    stream.write_all(frames).await?;
    stream.shutdown().await?;
    let mut rest = [0u8; 512];
    loop {
        // A receiver sends nothing back; anything it does send is ignored.
        match stream.read(&mut rest).await {
            Ok(0) => break,
            Ok(_) => {}
            // A TLS receiver that closed without a close_notify of its own.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e.into()),
        }
    }
    // A TLS receiver's close_notify is not the end of its connection: one
    // that sends it and then closes with the batch unread (a TLS library's
    // "bye", then `close`) resets the connection after it, with every byte
    // acknowledged by its kernel. So the connection is read to its end,
    // which is a FIN, or the reset that says the batch was dropped. (Over
    // TCP the loop above ended on the FIN already.)
    let tcp = stream.tcp();
    loop {
        tcp.readable().await?;
        match tcp.try_read(&mut rest) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e.into()),
        }
    }
    // A receiver that read the batch sent its FIN after acknowledging every
    // byte of it, and the FIN carries that acknowledgement; one that closed
    // before the batch arrived acknowledged none of it. Our own FIN counts
    // one, and a receiver that closed on our close_notify, before our FIN
    // arrived, did not acknowledge it.
    match unacknowledged(stream.tcp())? {
        0 | 1 => Ok(()),
        n => Err(DeliveryError::Unread(n)),
    }
}

/// How much of what we sent on `tcp` its peer has not acknowledged, a FIN
/// counting one (Linux's `SIOCOUTQ`: our sequence number less the peer's
/// last acknowledgement).
fn unacknowledged(tcp: &TcpStream) -> std::io::Result<u32> {
    const SIOCOUTQ: rustix::ioctl::Opcode = 0x5411;
    // SAFETY: SIOCOUTQ (TIOCOUTQ) on a TCP socket writes one C `int`, the
    // type the getter reserves, and reads nothing else.
    #[allow(unsafe_code)]
    let n = unsafe {
        rustix::ioctl::ioctl(
            tcp,
            rustix::ioctl::Getter::<SIOCOUTQ, std::ffi::c_int>::new(),
        )
    }?;
    Ok(u32::try_from(n).unwrap_or(0))
}

/// POST `records`, each one rendered as JSON, as a JSON array to `url`
/// over HTTP/1.1, over TLS for an `https://` URL.
async fn post(url: &str, reach: &Reach, records: &[String]) -> Result<(), DeliveryError> {
    let WebhookTarget {
        authority,
        address,
        path,
        ..
    } = WebhookTarget::parse(url)
        .map_err(|e| DeliveryError::Config(format!("webhook {url}: {e}")))?;
    let body = format!("[{}]", records.join(","));
    let authorization = (reach.authorization.as_ref())
        .map_or(String::new(), |a| format!("Authorization: {}\r\n", a.0));
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\n{authorization}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let tcp = TcpStream::connect(&address).await?;
    match &reach.tls {
        Some(tls) => exchange(tls.connect(tcp).await?, &head, &body).await,
        None => exchange(tcp, &head, &body).await,
    }
}

/// Send one request, and read the status of its answer.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    head: &str,
    body: &str,
) -> Result<(), DeliveryError> {
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.flush().await?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !answer.contains(&b'\n') && answer.len() < MAX_ANSWER {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        answer.extend_from_slice(buf.get(..n).unwrap_or_default());
    }
    let status_line = String::from_utf8_lossy(&answer);
    let status_line = status_line.lines().next().unwrap_or_default();
    let code = status_line.split_whitespace().nth(1).unwrap_or_default();
    if code.starts_with('2') && code.len() == 3 {
        Ok(())
    } else if code == "413" {
        Err(DeliveryError::TooLarge(status_line.to_owned()))
    } else {
        Err(DeliveryError::Refused(status_line.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use std::collections::BTreeSet;
    use std::sync::atomic::Ordering;
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    use super::*;
    use crate::audit::tests::{entries, session};
    use crate::audit::{Entry, PluginRef, What};
    use crate::plugins::{Batch, Finding, Severity};
    use crate::store::Store;

    /// A multi-threaded runtime with one worker, as a small appliance has.
    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
    }

    fn ids_in(path: &std::path::Path) -> Vec<u64> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<Record>(l).unwrap().id)
            .collect()
    }

    #[test]
    fn records_appended_side_by_side_all_reach_the_sink() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state")).unwrap();
        let log = AuditLog::open(&store).unwrap();
        let out = dir.path().join("audit.jsonl");
        let sink = SinkConfig::File {
            name: "file".into(),
            path: out.clone(),
        };
        let rt = runtime();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let exporter = rt.spawn(Exporter::new(log.clone(), sink).run(stopped));

        // Eight threads append at once while the exporter reads: a record
        // whose identifier became visible after a higher one would be
        // skipped for good.
        let appenders: Vec<_> = (0..8)
            .map(|_| {
                let log = log.clone();
                std::thread::spawn(move || {
                    (0..150)
                        .map(|_| log.append(entries(1)).unwrap()[0].id)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let written: BTreeSet<u64> = appenders
            .into_iter()
            .flat_map(|a| a.join().unwrap())
            .collect();

        let start = Instant::now();
        while log.backlog("file").unwrap() > 0 && start.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(20));
        }
        stop.send(true).unwrap();
        rt.block_on(exporter).unwrap();
        let delivered = ids_in(&out);
        let missing: Vec<_> = written
            .iter()
            .filter(|id| !delivered.contains(id))
            .collect();
        assert!(missing.is_empty(), "never exported: {missing:?}");
        assert_eq!(delivered.len(), written.len(), "each once");
    }

    #[test]
    fn damaged_records_do_not_stop_the_ones_after_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::temporary().unwrap();
        let log = AuditLog::open(&store).unwrap();
        let out = dir.path().join("audit.jsonl");
        let sink = SinkConfig::File {
            name: "file".into(),
            path: out.clone(),
        };
        let written = log.append(entries(BATCH + 2)).unwrap();
        // A whole batch's worth of records that no longer parse.
        for record in &written[..BATCH] {
            (log.records)
                .insert(record.id.to_be_bytes(), &b"not json"[..])
                .unwrap();
        }
        let mut exporter = Exporter::new(log.clone(), sink);
        let rt = runtime();
        for _ in 0..3 {
            rt.block_on(exporter.deliver_next()).unwrap();
        }
        let expected: Vec<u64> = written[BATCH..].iter().map(|r| r.id).collect();
        assert_eq!(ids_in(&out), expected);
        assert_eq!(log.backlog("file").unwrap(), 0);
        assert_eq!(log.damaged(), BATCH as u64);
    }

    #[test]
    fn a_cursor_that_cannot_be_moved_once_sends_no_record_twice() {
        let siem = Webhook::start(|_| false);
        let log = &siem.log;
        let written = log.append(entries(5)).unwrap();
        let mut exporter = Exporter::new(log.clone(), siem.sink.clone());
        // The sink takes the batch; moving its cursor past it fails once.
        log.failing().cursors.store(1, Ordering::SeqCst);
        assert!(siem.rt.block_on(exporter.deliver_next()).is_err());
        assert_eq!(log.cursor("webhook").unwrap(), 0);
        let more = log.append(entries(3)).unwrap();
        siem.drain(&mut exporter);
        let expected: Vec<u64> = written.iter().chain(&more).map(|r| r.id).collect();
        assert_eq!(siem.kept(), expected, "each record once, in order");
        assert_eq!(log.cursor("webhook").unwrap(), more[2].id);
    }

    #[test]
    fn destinations_the_exporter_can_reach_pass_the_check() {
        for url in [
            "http://10.0.0.9:8080/audit",
            "http://siem.example/audit?token=x",
            "http://siem",
            "http://[::1]:8080/",
            "http://[fe80::1]/a",
        ] {
            let target = WebhookTarget::parse(url).unwrap();
            assert!(target.path.starts_with('/'), "{url}");
            assert!(!target.https);
        }
        assert_eq!(
            WebhookTarget::parse("http://[::1]/x").unwrap().address,
            "[::1]:80"
        );
        let https = WebhookTarget::parse("https://[::1]/x").unwrap();
        assert!(https.https);
        assert_eq!((https.address.as_str(), https.host), ("[::1]:443", "[::1]"));
        for address in ["10.0.0.9:514", "siem.example:6514", "[::1]:514"] {
            host_port(address, None).unwrap();
        }
    }

    /// A webhook's token goes only over HTTPS: with an `http://` URL the
    /// sink is refused at start; an exporter reaches its sink only through
    /// this check, so it never sends the token in clear.
    #[test]
    fn a_webhook_token_is_refused_over_plain_http() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "Bearer 1f2e3d\n").unwrap();
        let ca_file = crate::client_tls::tests::ca_file(dir.path());
        let webhook = |url: &str, tls: Option<ClientTls>| SinkConfig::Webhook {
            name: "soc".into(),
            url: url.into(),
            tls,
            authorization_file: Some(token.clone()),
        };
        for url in ["http://siem.example/audit", "http://10.0.0.9:8088/x"] {
            let err = webhook(url, None).check().unwrap_err();
            assert!(
                err.contains("authorization-file") && err.contains("https://"),
                "{err}"
            );
        }
        let tls = ClientTls {
            ca: Some(ca_file),
            ..ClientTls::default()
        };
        webhook("https://siem.example/audit", Some(tls))
            .check()
            .unwrap();
    }

    /// A finding on an MQTT publish to `topic`, with `reason`.
    fn publish(topic: &str, reason: &str) -> Entry {
        let mut batch = Batch::new();
        batch.push("mqtt.publish").text("topic", topic);
        let finding = Finding {
            event: 0,
            severity: Severity::High,
            score: 0.9,
            reason: reason.into(),
        };
        let plugin = PluginRef {
            name: "new-topic".into(),
            version: None,
        };
        Entry::finding(&session(), plugin, batch.get(0), &finding)
    }

    #[test]
    fn a_huge_record_reaches_a_udp_sink_cut_and_the_next_ones_follow() {
        let rt = runtime();
        let receiver = rt.block_on(UdpSocket::bind("127.0.0.1:0")).unwrap();
        let store = Store::temporary().unwrap();
        let log = AuditLog::open(&store).unwrap();
        let mut exporter = Exporter::new(
            log.clone(),
            SinkConfig::Syslog {
                name: "udp".into(),
                address: receiver.local_addr().unwrap().to_string(),
                transport: SyslogTransport::Udp,
                tls: None,
                hostname: Some("gate-1".into()),
            },
        );
        let huge = log
            .append(vec![publish(&"t".repeat(70_000), "denied")])
            .unwrap();
        assert_eq!(rt.block_on(exporter.deliver_next()).unwrap(), 1);
        assert_eq!(log.cursor("udp").unwrap(), huge[0].id);

        let later = log.append(entries(3)).unwrap();
        assert_eq!(rt.block_on(exporter.deliver_next()).unwrap(), 3);
        let mut buf = vec![0; 128 << 10];
        for (i, record) in huge.iter().chain(&later).enumerate() {
            let received = rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(5), receiver.recv(&mut buf)).await
            });
            let n = received.unwrap().unwrap();
            let message = std::str::from_utf8(&buf[..n]).unwrap();
            assert!(n <= format::MAX_MESSAGE_BYTES, "{n} bytes");
            assert!(message.starts_with("<107>1 "), "{message}");
            assert!(message.contains(&format!("externalId={} ", record.id)));
            assert_eq!(message.contains("...[truncated "), i == 0, "{message}");
        }
        assert_eq!(log.backlog("udp").unwrap(), 0);
    }

    #[test]
    fn a_stop_during_a_large_file_delivery_leaves_each_line_whole_and_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state")).unwrap();
        let log = AuditLog::open(&store).unwrap();
        let out = dir.path().join("audit.jsonl");
        let sink = SinkConfig::File {
            name: "file".into(),
            path: out.clone(),
        };
        let rt = runtime();
        let mut written = Vec::new();
        for _ in 0..5 {
            // A full batch of records rendered near the cap: about 2 MiB
            // of lines, what tokio writes to a file in one go.
            let big = (0..BATCH).map(|_| publish(&"t".repeat(7_800), "big"));
            written.extend(log.append(big.collect()).unwrap());
            let size = std::fs::metadata(&out).map_or(0, |m| m.len());
            let (stop, stopped) = tokio::sync::watch::channel(false);
            let running = rt.spawn(Exporter::new(log.clone(), sink.clone()).run(stopped));
            // Stop as soon as the delivery has begun to write.
            let start = Instant::now();
            while std::fs::metadata(&out).map_or(0, |m| m.len()) == size
                && start.elapsed() < Duration::from_secs(10)
            {
                std::hint::spin_loop();
            }
            stop.send(true).unwrap();
            rt.block_on(running).unwrap();
        }
        let mut exporter = Exporter::new(log.clone(), sink);
        while rt.block_on(exporter.deliver_next()).unwrap() > 0 {}

        let text = std::fs::read_to_string(&out).unwrap();
        let delivered: Vec<u64> = (text.lines())
            .map(|l| match serde_json::from_str::<Record>(l) {
                Ok(record) => record.id,
                Err(e) => panic!("a torn line ({e}): {}...", &l[..80.min(l.len())]),
            })
            .collect();
        let expected: Vec<u64> = written.iter().map(|r| r.id).collect();
        assert_eq!(delivered.len(), expected.len(), "each line once");
        assert_eq!(delivered, expected, "in order");
        assert!(
            text.len() > 5 * 2_000_000,
            "{} bytes: lines cut",
            text.len()
        );
    }

    /// Set only in the child process of
    /// [`an_append_that_fails_part_way_leaves_the_file_as_it_was`]: the file
    /// it appends to under a file size limit.
    const LIMITED: &str = "PALISADE_TEST_APPEND_UNDER_A_SIZE_LIMIT";
    /// What that child prints once its append has failed.
    const REFUSED: &str = "append refused by the size limit:";

    #[test]
    fn an_append_that_fails_part_way_leaves_the_file_as_it_was() {
        if let Some(out) = std::env::var_os(LIMITED) {
            return append_under_a_size_limit(Path::new(&out));
        }
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(&Store::temporary().unwrap()).unwrap();
        let earlier = log.append(entries(2)).unwrap();
        let batch = log.append(entries(40)).unwrap();
        let out = dir.path().join("audit.jsonl");
        append(&out, &json_lines(&earlier)).unwrap();
        let before = std::fs::read_to_string(&out).unwrap();
        std::fs::write(out.with_extension("batch"), json_lines(&batch)).unwrap();

        // The file size limit is process-wide and this process runs other
        // tests at once: the append runs in a child, this same test alone.
        // A process the limit stops gets SIGXFSZ, which kills it unless
        // ignored; ignored (the shell's `trap ''`), it stays ignored
        // through exec, and the write fails with EFBIG instead. The limit
        // binds root too.
        let test = concat!(
            module_path!(),
            "::an_append_that_fails_part_way_leaves_the_file_as_it_was"
        );
        let test = test.split_once("::").unwrap().1;
        let child = std::process::Command::new("sh")
            .args(["-c", r#"trap '' XFSZ && exec "$0" "$@""#])
            .arg(std::env::current_exe().unwrap())
            .args([test, "--exact", "--nocapture", "--test-threads=1"])
            .env(LIMITED, &out)
            .output()
            .unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&child.stdout),
            String::from_utf8_lossy(&child.stderr)
        );
        assert!(
            child.status.success() && said.contains(REFUSED),
            "the append under a size limit did not run, or did not fail: {said}"
        );
        let after = std::fs::read_to_string(&out).unwrap();
        assert!(
            after == before,
            "the failed append left the file {} bytes long, {} before it; it ends {:?}",
            after.len(),
            before.len(),
            after
                .get(after.len().saturating_sub(60)..)
                .unwrap_or_default()
        );

        // The exporter tries the same batch again, and the file holds each
        // line once, whole.
        append(&out, &json_lines(&batch)).unwrap();
        let expected: Vec<u64> = earlier.iter().chain(&batch).map(|r| r.id).collect();
        assert_eq!(ids_in(&out), expected);
    }

    /// In the child: append the batch beside `out` under a file size limit
    /// that stops it half way, and say how it failed.
    fn append_under_a_size_limit(out: &Path) {
        use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
        let batch = std::fs::read_to_string(out.with_extension("batch")).unwrap();
        let half_way = std::fs::metadata(out).unwrap().len() + batch.len() as u64 / 2;
        let hard = getrlimit(Resource::Fsize).maximum;
        setrlimit(
            Resource::Fsize,
            Rlimit {
                current: Some(half_way),
                maximum: hard,
            },
        )
        .unwrap();
        let error = append(out, &batch).unwrap_err();
        assert_eq!(
            rustix::io::Errno::from_io_error(&error),
            Some(rustix::io::Errno::FBIG),
            "{error}"
        );
        println!("{REFUSED} {error}");
    }

    /// A webhook that answers 413 to the batches `refuses`, and keeps the
    /// identifiers of the rest.
    async fn webhook(
        listener: tokio::net::TcpListener,
        kept: Arc<Mutex<Vec<u64>>>,
        mut refuses: impl FnMut(&[Record]) -> bool,
    ) {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            let body = loop {
                let n = stream.read(&mut buf).await.unwrap();
                request.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&request).into_owned();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let length: usize = (head.lines())
                        .find_map(|l| l.strip_prefix("Content-Length: "))
                        .unwrap()
                        .parse()
                        .unwrap();
                    if body.len() >= length || n == 0 {
                        break body.to_owned();
                    }
                }
            };
            let records: Vec<Record> = serde_json::from_str(&body).unwrap();
            let answer = if refuses(&records) {
                "HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n"
            } else {
                kept.lock().unwrap().extend(records.iter().map(|r| r.id));
                "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
            };
            stream.write_all(answer.as_bytes()).await.unwrap();
        }
    }

    /// A webhook SIEM answering 413 to the batches `refuses`, and an empty
    /// audit trail to export to it.
    struct Webhook {
        rt: tokio::runtime::Runtime,
        /// The identifiers of the records the webhook took, in order.
        kept: Arc<Mutex<Vec<u64>>>,
        log: AuditLog,
        sink: SinkConfig,
        _store: Store,
    }

    impl Webhook {
        fn start(refuses: impl FnMut(&[Record]) -> bool + Send + 'static) -> Webhook {
            let rt = runtime();
            let listener = rt
                .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
                .unwrap();
            let url = format!("http://{}/audit", listener.local_addr().unwrap());
            let kept = Arc::default();
            rt.spawn(webhook(listener, Arc::clone(&kept), refuses));
            let store = Store::temporary().unwrap();
            let log = AuditLog::open(&store).unwrap();
            let sink = SinkConfig::Webhook {
                name: "webhook".into(),
                url,
                tls: None,
                authorization_file: None,
            };
            Webhook {
                rt,
                kept,
                log,
                sink,
                _store: store,
            }
        }

        /// Deliver with `exporter` until nothing is left, 40 attempts at
        /// most.
        fn drain(&self, exporter: &mut Exporter) {
            for _ in 0..40 {
                if self.log.backlog("webhook").unwrap() == 0 {
                    break;
                }
                let _ = self.rt.block_on(exporter.deliver_next());
            }
        }

        fn kept(&self) -> Vec<u64> {
            self.kept.lock().unwrap().clone()
        }
    }

    #[test]
    fn a_record_refused_even_alone_is_passed_over_and_the_rest_arrive() {
        // Any batch that holds a finding whose reason says `poison`.
        let poisoned = |records: &[Record]| {
            records.iter().any(|r| match &r.what {
                What::Finding { reason, .. } => reason.contains("poison"),
                What::Action { .. } | What::OperatorAction { .. } => false,
            })
        };
        let siem = Webhook::start(poisoned);
        let log = &siem.log;
        let mut exporter = Exporter::new(log.clone(), siem.sink.clone());
        let before = log.append(entries(40)).unwrap();
        // Cut to fit, and still refused.
        let poison = log
            .append(vec![publish(&"t".repeat(70_000), "poison")])
            .unwrap();
        let after = log.append(entries(40)).unwrap();
        siem.drain(&mut exporter);
        let expected: Vec<u64> = before.iter().chain(&after).map(|r| r.id).collect();
        assert_eq!(siem.kept(), expected, "in order, each once");
        assert_eq!(log.cursor("webhook").unwrap(), after[39].id);
        assert_eq!(exporter.undeliverable(), 1, "{poison:?}");
    }

    #[test]
    fn a_webhook_that_answers_413_for_a_while_gets_every_record() {
        // A proxy in front of the SIEM answers 413 to the first twelve
        // requests, whatever their size, then lets everything through.
        let mut refusals = 12;
        let refuses = move |_: &[Record]| {
            let refuse = refusals > 0;
            refusals -= usize::from(refuse);
            refuse
        };
        let siem = Webhook::start(refuses);
        let mut exporter = Exporter::new(siem.log.clone(), siem.sink.clone());
        let written = siem.log.append(entries(40)).unwrap();
        siem.drain(&mut exporter);
        let expected: Vec<u64> = written.iter().map(|r| r.id).collect();
        assert_eq!(siem.kept(), expected, "in order, each once");
        assert_eq!(exporter.undeliverable(), 0);
    }

    /// A proxy whose body limit lies between the sink's usual records and
    /// one longer record: that one can never pass, and the others are not
    /// held up behind it for ever.
    #[test]
    fn a_record_longer_than_any_the_sink_takes_is_passed_over() {
        let refuses = |records: &[Record]| {
            records
                .iter()
                .any(|r| matches!(&r.what, What::Finding { reason, .. } if reason.len() > 1000))
        };
        let siem = Webhook::start(refuses);
        let mut exporter = Exporter::new(siem.log.clone(), siem.sink.clone());
        let mut list = entries(21);
        if let What::Finding { reason, .. } = &mut list[10].what {
            *reason = "r".repeat(2000);
        }
        let written = siem.log.append(list).unwrap();
        siem.drain(&mut exporter);
        let expected: Vec<u64> = (written.iter().map(|r| r.id))
            .filter(|&id| id != written[10].id)
            .collect();
        assert_eq!(siem.kept(), expected);
        assert_eq!(exporter.undeliverable(), 1);
    }

    #[test]
    fn a_small_record_refused_for_its_size_waits_its_turn_and_does_not_spin() {
        let requests = Arc::new(Mutex::new(0));
        let counted = Arc::clone(&requests);
        let refuses = move |_: &[Record]| {
            *counted.lock().unwrap() += 1;
            true
        };
        let siem = Webhook::start(refuses);
        siem.log.append(entries(40)).unwrap();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let exporter = Exporter::new(siem.log.clone(), siem.sink.clone());
        let running = siem.rt.spawn(exporter.run(stopped));
        let start = Instant::now();
        while *requests.lock().unwrap() == 0 && start.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(1500));
        stop.send(true).unwrap();
        siem.rt.block_on(running).unwrap();
        // 40, 20, 10, 5 and 2 records at once; then one alone, again
        // after a second: not a request per millisecond.
        let requests = *requests.lock().unwrap();
        assert!((1..=8).contains(&requests), "{requests} requests");
        assert!(siem.kept().is_empty());
        assert_eq!(siem.log.backlog("webhook").unwrap(), 40, "none passed over");
    }

    /// A receiver that takes whatever it is sent and answers one byte
    /// every 100 ms, never closing: a SIEM on its last legs.
    async fn dripping(listener: tokio::net::TcpListener) {
        while let Ok((stream, _)) = listener.accept().await {
            let (mut reader, mut writer) = stream.into_split();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while matches!(reader.read(&mut buf).await, Ok(n) if n > 0) {}
            });
            tokio::spawn(async move {
                while writer.write_all(b"x").await.is_ok() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
        }
    }

    /// A syslog receiver that hangs up on a connection as soon as it
    /// accepts it, reading nothing, with a receive window smaller than the
    /// batch: it never acknowledged what it did not take. (Over a network,
    /// a receiver that closes as soon as it accepts, refusing a client
    /// certificate say, sends its FIN before the batch reaches it, and the
    /// batch goes unacknowledged the same way.)
    #[test]
    fn a_receiver_that_hangs_up_unread_gets_the_batch_again() {
        let rt = runtime();
        let listener = rt.block_on(async {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.set_recv_buffer_size(1024).unwrap();
            socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
            socket.listen(8).unwrap()
        });
        let address = listener.local_addr().unwrap();
        rt.spawn(async move {
            let mut hung_up = Vec::new();
            while let Ok((mut stream, _)) = listener.accept().await {
                let _ = stream.shutdown().await;
                hung_up.push(stream);
            }
        });
        let (attempt, waiting) = syslog_attempt(&rt, address, SyslogTransport::Tcp, None);
        assert!(
            matches!(attempt, Err(DeliveryError::Unread(n)) if n > 1),
            "{attempt:?}"
        );
        assert_eq!(waiting, 40);
    }

    /// One attempt to deliver 40 records (21 KiB) to the syslog receiver
    /// at `address`, and how many records wait after it.
    fn syslog_attempt(
        rt: &tokio::runtime::Runtime,
        address: std::net::SocketAddr,
        transport: SyslogTransport,
        tls: Option<ClientTls>,
    ) -> (Result<usize, DeliveryError>, usize) {
        let store = Store::temporary().unwrap();
        let log = AuditLog::open(&store).unwrap();
        log.append(entries(40)).unwrap();
        let sink = SinkConfig::Syslog {
            name: "syslog".into(),
            address: address.to_string(),
            transport,
            tls,
            hostname: None,
        };
        let mut exporter = Exporter::new(log.clone(), sink).deadline(Duration::from_secs(10));
        let attempt = rt.block_on(exporter.deliver_next());
        (attempt, log.backlog("syslog").unwrap())
    }

    /// Whether the kernel holds the TCP connection from `local` to `remote`
    /// in CLOSE_WAIT: its peer's FIN, and so everything the peer sent
    /// before it, has arrived (`/proc/net/tcp`, IPv4).
    fn close_wait(local: std::net::SocketAddr, remote: std::net::SocketAddr) -> bool {
        let hex = |a: std::net::SocketAddr| match a {
            std::net::SocketAddr::V4(a) => {
                format!(
                    "{:08X}:{:04X}",
                    u32::from_le_bytes(a.ip().octets()),
                    a.port()
                )
            }
            std::net::SocketAddr::V6(_) => String::new(),
        };
        let (local, remote) = (hex(local), hex(remote));
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
        table.lines().any(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.get(1..4) == Some(&[local.as_str(), remote.as_str(), "08"][..])
        })
    }

    /// A TLS syslog receiver that lets the whole batch arrive, our FIN
    /// last, reads none of it, sends its close_notify and closes: a TLS
    /// library's "bye" then `close`, as a receiver does when it stops. Its
    /// kernel acknowledged every byte, but it resets the connection, since
    /// it closed with them unread, and the batch goes again.
    #[test]
    fn a_tls_receiver_that_says_bye_and_drops_the_batch_gets_it_again() {
        let rt = runtime();
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let ca = dir.path().join("receiver.pem");
        std::fs::write(&ca, cert.pem()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let address = listener.local_addr().unwrap();
        rt.spawn(async move {
            while let Ok((tcp, peer)) = listener.accept().await {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    continue;
                };
                while !close_wait(address, peer) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                tls.get_mut().1.send_close_notify();
                let _ = tls.flush().await;
            }
        });
        // The batch's 21 KiB are more than the receiver's handshake can
        // read past its end (rustls reads 4 KiB at a time), so most of it
        // is in its socket, unread, when it closes; less than its socket
        // takes unread, or our writes would wait for it.
        let tls = ClientTls {
            ca: Some(ca),
            server_name: Some("localhost".into()),
            ..ClientTls::default()
        };
        let (attempt, waiting) = syslog_attempt(&rt, address, SyslogTransport::Tls, Some(tls));
        assert!(
            matches!(&attempt, Err(DeliveryError::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset),
            "{attempt:?}"
        );
        assert_eq!(waiting, 40);
    }

    #[test]
    fn a_dripping_sink_fails_within_the_deadline_and_stop_is_prompt() {
        let rt = runtime();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let address = listener.local_addr().unwrap();
        rt.spawn(dripping(listener));
        let store = Store::temporary().unwrap();
        let log = AuditLog::open(&store).unwrap();
        log.append(entries(3)).unwrap();
        let syslog = SinkConfig::Syslog {
            name: "syslog".into(),
            address: address.to_string(),
            transport: SyslogTransport::Tcp,
            tls: None,
            hostname: None,
        };
        let webhook = SinkConfig::Webhook {
            name: "webhook".into(),
            url: format!("http://{address}/audit"),
            tls: None,
            authorization_file: None,
        };
        for sink in [syslog.clone(), webhook] {
            let mut exporter =
                Exporter::new(log.clone(), sink).deadline(Duration::from_millis(500));
            let start = Instant::now();
            let attempt = rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(5), exporter.deliver_next()).await
            });
            assert!(
                matches!(attempt, Ok(Err(DeliveryError::Timeout(_)))),
                "{attempt:?}"
            );
            // Well under the 5 s the attempt would take without its own
            // deadline, and under the default deadline of 30 s.
            assert!(
                start.elapsed() < Duration::from_secs(4),
                "{:?}",
                start.elapsed()
            );
        }
        assert_eq!(log.backlog("syslog").unwrap(), 3, "tried again later");

        // With the default deadline, stop still ends the exporter at once.
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let running = rt.spawn(Exporter::new(log.clone(), syslog).run(stopped));
        std::thread::sleep(Duration::from_millis(300));
        let start = Instant::now();
        stop.send(true).unwrap();
        let ended =
            rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), running).await });
        assert!(ended.is_ok(), "run did not return");
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{:?}",
            start.elapsed()
        );
    }
}
