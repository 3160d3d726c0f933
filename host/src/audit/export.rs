//! Exporters: one task per configured sink, delivering the audit trail in
//! order, each record once, and never losing one to a sink that is down.
//!
//! An exporter reads the records after its sink's cursor, delivers them,
//! and moves the cursor only when the sink has accepted them; when the sink
//! fails, it waits (one second, doubling to half a minute) and tries the
//! same records again. The audit log on disk is the buffer, so a slow or
//! absent SIEM never slows the traffic; its backlog is in the log lines.
//!
//! What "accepted" means depends on the sink:
//! - `file`: appended and synced to disk;
//! - `webhook`: the server answered the POST with a 2xx status;
//! - `syslog` over TCP: the receiver read the whole batch and closed its
//!   side of the connection after ours (RFC 6587 octet-counted frames, one
//!   connection per batch), so a receiver that died mid-batch gets the batch
//!   again, whole;
//! - `syslog` over UDP: sent. UDP gives no acknowledgement; use TCP where
//!   every record matters.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use super::{AuditLog, Record, format};

/// Records delivered in one batch at most.
pub const BATCH: usize = 256;
/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long a sink may take to connect or to answer.
const TIMEOUT: Duration = Duration::from_secs(10);
/// How much of a webhook's answer is read.
const MAX_ANSWER: usize = 8 * 1024;

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
    /// Batches POSTed as a JSON array to an `http://` URL.
    Webhook {
        /// The sink's name.
        name: String,
        /// Where to POST, `http://host:port/path`.
        url: String,
    },
    /// RFC 5424 syslog messages with a CEF body.
    Syslog {
        /// The sink's name.
        name: String,
        /// The receiver, `host:port`.
        address: String,
        /// `tcp` (default) or `udp`.
        #[serde(default)]
        transport: SyslogTransport,
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
}

/// Why a delivery failed. The records are tried again.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The sink could not be reached or written.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The sink did not answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The webhook answered with something other than success.
    #[error("webhook answered `{0}`")]
    Refused(String),
    /// The sink's configuration cannot work.
    #[error("{0}")]
    Config(String),
}

/// Delivers the audit trail to one sink.
#[derive(Debug)]
pub struct Exporter {
    log: AuditLog,
    sink: SinkConfig,
    hostname: String,
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
            sink,
            hostname,
        }
    }

    /// Deliver records until `stop` turns true, then return.
    pub async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let name = self.sink.name().to_owned();
        let mut backoff = Duration::from_secs(1);
        while !*stop.borrow() {
            let wait = match self.deliver_next().await {
                Ok(0) => None,
                Ok(_) => {
                    backoff = Duration::from_secs(1);
                    continue;
                }
                Err(e) => {
                    let backlog = self.log.backlog(&name).unwrap_or(0);
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
                _ = stop.changed() => {}
            }
        }
    }

    /// Deliver the next batch, if there is one. Returns how many records
    /// the sink's cursor moved past: delivered, or skipped as damaged.
    pub async fn deliver_next(&self) -> Result<usize, DeliveryError> {
        let name = self.sink.name();
        let io = |e: super::AuditError| DeliveryError::Io(std::io::Error::other(e));
        let cursor = self.log.cursor(name).map_err(io)?;
        let page = self.log.read(cursor, BATCH).map_err(io)?;
        let Some(last) = page.last else {
            return Ok(0);
        };
        // A page of damaged records only (skipped and counted by `read`)
        // moves the cursor too.
        if !page.records.is_empty() {
            self.deliver(&page.records).await?;
        }
        self.log.advance(name, last).map_err(io)?;
        Ok(page.records.len() + page.damaged)
    }

    async fn deliver(&self, records: &[Record]) -> Result<(), DeliveryError> {
        match &self.sink {
            SinkConfig::File { path, .. } => {
                let mut lines = String::new();
                for record in records {
                    lines.push_str(&format::json_line(record));
                    lines.push('\n');
                }
                let mut file = tokio::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(path)
                    .await?;
                file.write_all(lines.as_bytes()).await?;
                file.sync_data().await?;
                Ok(())
            }
            SinkConfig::Webhook { url, .. } => post(url, records).await,
            SinkConfig::Syslog {
                address, transport, ..
            } => {
                let messages = records.iter().map(|r| format::syslog(r, &self.hostname));
                match transport {
                    SyslogTransport::Tcp => syslog_tcp(address, messages).await,
                    SyslogTransport::Udp => {
                        let socket = UdpSocket::bind(("0.0.0.0", 0)).await?;
                        socket.connect(address).await?;
                        for message in messages {
                            socket.send(message.as_bytes()).await?;
                        }
                        Ok(())
                    }
                }
            }
        }
    }
}

async fn timed<T>(future: impl Future<Output = std::io::Result<T>>) -> Result<T, DeliveryError> {
    Ok(tokio::time::timeout(TIMEOUT, future)
        .await
        .map_err(|_| DeliveryError::Timeout(TIMEOUT))??)
}

/// Send `messages` octet-counted over one connection, then wait for the
/// receiver to close its side: it has read everything.
async fn syslog_tcp(
    address: &str,
    messages: impl Iterator<Item = String>,
) -> Result<(), DeliveryError> {
    let mut stream = timed(TcpStream::connect(address)).await?;
    let mut frames = Vec::new();
    for message in messages {
        frames.extend_from_slice(format!("{} ", message.len()).as_bytes());
        frames.extend_from_slice(message.as_bytes());
    }
    timed(stream.write_all(&frames)).await?;
    timed(stream.shutdown()).await?;
    let mut rest = [0u8; 512];
    loop {
        // A receiver sends nothing back; anything it does send is ignored.
        if timed(stream.read(&mut rest)).await? == 0 {
            return Ok(());
        }
    }
}

/// POST `records` as a JSON array to `url` over HTTP/1.1.
async fn post(url: &str, records: &[Record]) -> Result<(), DeliveryError> {
    let Some(rest) = url.strip_prefix("http://") else {
        return Err(DeliveryError::Config(format!(
            "webhook {url}: only http:// URLs are supported"
        )));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    let address = if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let body = serde_json::to_vec(records)
        .map_err(|e| DeliveryError::Config(format!("records do not serialise: {e}")))?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let mut stream = timed(TcpStream::connect(&address)).await?;
    timed(stream.write_all(head.as_bytes())).await?;
    timed(stream.write_all(&body)).await?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !answer.contains(&b'\n') && answer.len() < MAX_ANSWER {
        let n = timed(stream.read(&mut buf)).await?;
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
    } else {
        Err(DeliveryError::Refused(status_line.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use std::collections::BTreeSet;
    use std::time::Instant;

    use super::*;
    use crate::audit::tests::entries;
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

        // Sessions that find the writer's queue full append side by side.
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
        let exporter = Exporter::new(log.clone(), sink);
        let rt = runtime();
        for _ in 0..3 {
            rt.block_on(exporter.deliver_next()).unwrap();
        }
        let expected: Vec<u64> = written[BATCH..].iter().map(|r| r.id).collect();
        assert_eq!(ids_in(&out), expected);
        assert_eq!(log.backlog("file").unwrap(), 0);
        assert_eq!(log.damaged(), BATCH as u64);
    }
}
