//! How the appliance reaches a registry: a local directory (an air-gapped
//! site, a USB stick) through `file://` URLs, or a web server over HTTP or
//! HTTPS. Everything fetched is verified by TUF afterwards, so the
//! transport only has to be bounded: a size cap, a deadline, and a clear
//! "not found" for the root-rotation probe. In a directory only regular
//! files are read: a FIFO or a device on a stick would otherwise keep an
//! install waiting forever.

use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tough::async_trait;
use tough::{Bytes, Transport, TransportError, TransportErrorKind, TransportStream};
use url::Url;

use crate::client_tls::ClientTls;

/// The largest file fetched: the largest component, with room for headers.
const MAX_FILE: usize = (super::bundle::MAX_COMPONENT as usize) + (64 << 10);
/// How long one fetch may take.
const DEADLINE: Duration = Duration::from_secs(60);

/// `file://`, `http://` and `https://`.
#[derive(Debug, Clone)]
pub struct RegistryTransport {
    /// Certificates trusted for `https://` registries.
    ca_file: Option<PathBuf>,
}

impl RegistryTransport {
    /// A transport trusting the system's CAs for HTTPS, or `ca_file` when
    /// given.
    pub fn new(ca_file: Option<PathBuf>) -> Self {
        RegistryTransport { ca_file }
    }
}

#[async_trait]
impl Transport for RegistryTransport {
    async fn fetch(&self, url: Url) -> Result<TransportStream, TransportError> {
        let body = match url.scheme() {
            "file" => {
                let local = url.clone();
                let read = tokio::task::spawn_blocking(move || read_file(&local));
                tokio::time::timeout(DEADLINE, read)
                    .await
                    .map_err(|_| other(&url, "timed out"))?
                    .map_err(|e| other(&url, e))??
            }
            "http" | "https" => tokio::time::timeout(DEADLINE, self.get(&url))
                .await
                .map_err(|_| other(&url, "timed out"))??,
            _ => {
                return Err(TransportError::new(
                    TransportErrorKind::UnsupportedUrlScheme,
                    url,
                ));
            }
        };
        let once = futures_util::stream::once(async move { Ok(Bytes::from(body)) });
        Ok(Box::pin(once))
    }
}

/// The regular file at `url` (`file://`), at most [`MAX_FILE`] bytes; a
/// missing one is [`TransportErrorKind::FileNotFound`].
fn read_file(url: &Url) -> Result<Vec<u8>, TransportError> {
    use rustix::fs::{Mode, OFlags};
    use std::io::Read;
    let path = url
        .to_file_path()
        .map_err(|()| other(url, "not a local path"))?;
    // Looked at before it is opened: opening a device node may act (a
    // watchdog, a tape), and a link may lead to one. Then opened without
    // following links nor waiting (opening a FIFO waits for a writer), and
    // refused unless what was opened is a regular file; reading a regular
    // file never waits for anyone.
    match std::fs::symlink_metadata(&path) {
        Ok(m) if m.file_type().is_symlink() => {
            return Err(other(url, "a symbolic link, not a regular file"));
        }
        Ok(m) if !(m.is_file() || m.is_dir()) => {
            return Err(other(
                url,
                "not a regular file but a device, FIFO or socket",
            ));
        }
        _ => {}
    }
    let flags =
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NOFOLLOW;
    let file = match rustix::fs::open(&path, flags, Mode::empty()) {
        Ok(fd) => std::fs::File::from(fd),
        Err(rustix::io::Errno::NOENT) => {
            return Err(TransportError::new(
                TransportErrorKind::FileNotFound,
                url.as_str(),
            ));
        }
        Err(e) => return Err(other(url, e)),
    };
    let kind = file.metadata().map_err(|e| other(url, e))?.file_type();
    if !kind.is_file() {
        use std::os::unix::fs::FileTypeExt;
        let what = if kind.is_dir() {
            "a directory"
        } else if kind.is_fifo() {
            "a FIFO"
        } else {
            "a device or a socket"
        };
        return Err(other(url, format!("not a regular file but {what}")));
    }
    let mut body = Vec::new();
    file.take(MAX_FILE as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| other(url, e))?;
    if body.len() > MAX_FILE {
        return Err(other(url, format!("larger than {MAX_FILE} bytes")));
    }
    Ok(body)
}

impl RegistryTransport {
    async fn get(&self, url: &Url) -> Result<Vec<u8>, TransportError> {
        let host = url.host_str().ok_or_else(|| other(url, "no host"))?;
        let port = url
            .port_or_known_default()
            .ok_or_else(|| other(url, "no port"))?;
        let tcp = TcpStream::connect((host, port))
            .await
            .map_err(|e| other(url, e))?;
        let mut path = url.path().to_owned();
        if let Some(q) = url.query() {
            path = format!("{path}?{q}");
        }
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: palisade\r\nConnection: close\r\n\r\n"
        );
        let answer = if url.scheme() == "https" {
            let connector = ClientTls {
                ca: self.ca_file.clone(),
                ..ClientTls::default()
            }
            .connector(host)
            .map_err(|e| other(url, e))?;
            let mut tls = connector.connect(tcp).await.map_err(|e| other(url, e))?;
            exchange(&mut tls, request.as_bytes(), url).await?
        } else {
            let mut tcp = tcp;
            exchange(&mut tcp, request.as_bytes(), url).await?
        };
        response_body(answer, url)
    }
}

async fn exchange<S>(stream: &mut S, request: &[u8], url: &Url) -> Result<Vec<u8>, TransportError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    stream.write_all(request).await.map_err(|e| other(url, e))?;
    let mut answer = Vec::new();
    let mut limited = stream.take(MAX_FILE as u64 + 1);
    limited
        .read_to_end(&mut answer)
        .await
        .map_err(|e| other(url, e))?;
    if answer.len() > MAX_FILE {
        return Err(other(url, format!("larger than {MAX_FILE} bytes")));
    }
    Ok(answer)
}

/// The body of a complete HTTP/1.1 response read to the end of the
/// connection. Only 200 is a success; 404 says the file does not exist.
fn response_body(answer: Vec<u8>, url: &Url) -> Result<Vec<u8>, TransportError> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    let head = match response.parse(&answer) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Err(other(url, "incomplete HTTP response")),
        Err(e) => return Err(other(url, format!("bad HTTP response: {e}"))),
    };
    match response.code {
        Some(200) => {}
        Some(404) => {
            return Err(TransportError::new(
                TransportErrorKind::FileNotFound,
                url.as_str(),
            ));
        }
        code => return Err(other(url, format!("HTTP status {code:?}"))),
    }
    let chunked = response.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("transfer-encoding")
            && String::from_utf8_lossy(h.value).contains("chunked")
    });
    let length = response
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| {
            std::str::from_utf8(h.value)
                .ok()?
                .trim()
                .parse::<usize>()
                .ok()
        });
    let body = answer.get(head..).unwrap_or_default();
    if chunked {
        return dechunk(body).ok_or_else(|| other(url, "bad chunked body"));
    }
    match length {
        Some(n) if body.len() < n => Err(other(url, "connection closed before the body ended")),
        Some(n) => Ok(body.get(..n).unwrap_or_default().to_vec()),
        None => Ok(body.to_vec()),
    }
}

fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n")?;
        let size = std::str::from_utf8(body.get(..line_end)?).ok()?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        body = body.get(line_end + 2..)?;
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(body.get(..size)?);
        body = body.get(size + 2..)?;
    }
}

fn other(url: &Url, cause: impl std::fmt::Display) -> TransportError {
    TransportError::new_with_cause(
        TransportErrorKind::Other,
        url.as_str(),
        std::io::Error::other(cause.to_string()),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::registry::library::chain;

    #[test]
    fn bodies_are_read_by_length_or_chunks_and_404_is_not_found() {
        let url = Url::parse("http://registry.example/x").unwrap();
        let plain = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello".to_vec();
        assert_eq!(response_body(plain, &url).unwrap(), b"hello");
        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n"
                .to_vec();
        assert_eq!(response_body(chunked, &url).unwrap(), b"hello");
        let missing = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec();
        assert_eq!(
            response_body(missing, &url).unwrap_err().kind(),
            TransportErrorKind::FileNotFound
        );
        let short = b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nhello".to_vec();
        assert!(response_body(short, &url).is_err());
    }

    /// What fetching `path` gives, or `None` if it took more than 5 s (a
    /// read still blocked is left behind, not waited for).
    fn fetch_file(path: &std::path::Path) -> Option<Result<Vec<u8>, TransportError>> {
        use futures_util::TryStreamExt;
        let url = Url::from_file_path(path).unwrap();
        let fetched = async {
            let stream = RegistryTransport::new(None).fetch(url).await?;
            let chunks: Vec<Bytes> = stream.try_collect().await?;
            Ok(chunks.concat())
        };
        let rt = tokio::runtime::Runtime::new().unwrap();
        let done =
            rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), fetched).await });
        rt.shutdown_background();
        done.ok()
    }

    #[test]
    fn a_registry_directory_serves_regular_files_only() {
        let dir = tempfile::tempdir().unwrap();
        // Mounted under a name a URL percent-encodes.
        let metadata = dir.path().join("USB STICK").join("metadata");
        std::fs::create_dir_all(&metadata).unwrap();
        // A stick whose timestamp is a FIFO: no writer ever comes.
        let fifo = metadata.join("timestamp.json");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        let refused = fetch_file(&fifo).expect("the FIFO hung the fetch");
        let e = refused.unwrap_err();
        assert_eq!(e.kind(), TransportErrorKind::Other);
        assert!(chain(&e).contains("not a regular file"), "{}", chain(&e));
        let e = fetch_file(&metadata).unwrap().unwrap_err();
        assert!(chain(&e).contains("not a regular file"));

        // A missing file is "not found", which ends the root-rotation probe.
        let missing = fetch_file(&metadata.join("2.root.json")).unwrap();
        assert_eq!(
            missing.unwrap_err().kind(),
            TransportErrorKind::FileNotFound
        );

        let root = metadata.join("1.root.json");
        std::fs::write(&root, b"{}").unwrap();
        assert_eq!(fetch_file(&root).unwrap().unwrap(), b"{}");

        // A link is not followed: it could lead to a device that acts when
        // opened.
        let link = metadata.join("snapshot.json");
        std::os::unix::fs::symlink("/dev/null", &link).unwrap();
        let e = fetch_file(&link).unwrap().unwrap_err();
        assert!(chain(&e).contains("symbolic link"), "{}", chain(&e));
    }
}
