//! The little HTTP/1.1 the appliance serves: one request per connection,
//! read with bounds on its head and body, answered with `Connection: close`.
//! Both of its HTTPS endpoints (certificate renewal and the admin API) take
//! a handful of requests an hour; a full HTTP stack would be more code to
//! trust than these few lines.

use tokio::io::{AsyncRead, AsyncReadExt};

/// Largest request head (request line and headers).
const MAX_HEAD: usize = 8 << 10;
/// Headers read at most.
const MAX_HEADERS: usize = 32;

/// One request.
#[derive(Debug)]
pub(crate) struct Request {
    /// The method, as sent.
    pub method: String,
    /// The path, as sent.
    pub path: String,
    /// The body (`Content-Length` bytes).
    pub body: Vec<u8>,
}

/// Why a request could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HttpError {
    /// The connection failed.
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    /// The request is malformed or over a bound; the client is told this
    /// with a 400 or 413.
    #[error("{reason}")]
    Bad {
        /// The status line's code and phrase.
        status: &'static str,
        /// Why.
        reason: String,
    },
}

fn bad(reason: impl Into<String>) -> HttpError {
    HttpError::Bad {
        status: "400 Bad Request",
        reason: reason.into(),
    }
}

/// Read one request from `stream`, refusing a body over `max_body` bytes.
pub(crate) async fn read_request<S: AsyncRead + Unpin>(
    stream: &mut S,
    max_body: usize,
) -> Result<Request, HttpError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let (method, path, length, head_len) = loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(bad("connection closed mid-request"));
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&buf) {
            Ok(httparse::Status::Complete(head_len)) => {
                if request
                    .headers
                    .iter()
                    .any(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
                {
                    return Err(bad("chunked request bodies are not served"));
                }
                let length = request
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .map(|h| {
                        std::str::from_utf8(h.value)
                            .ok()
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .ok_or_else(|| bad("bad Content-Length"))
                    })
                    .transpose()?
                    .unwrap_or(0);
                break (
                    request.method.unwrap_or_default().to_owned(),
                    request.path.unwrap_or_default().to_owned(),
                    length,
                    head_len,
                );
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
            Ok(httparse::Status::Partial) => return Err(bad("request head too large")),
            Err(e) => return Err(bad(format!("not HTTP: {e}"))),
        }
    };
    if length > max_body {
        return Err(HttpError::Bad {
            status: "413 Content Too Large",
            reason: format!("request body over {max_body} bytes"),
        });
    }
    let mut body = buf.split_off(head_len.min(buf.len()));
    while body.len() < length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(bad("body cut short"));
        }
        body.extend_from_slice(chunk.get(..n).unwrap_or_default());
    }
    body.truncate(length);
    Ok(Request { method, path, body })
}

/// A response head: `status` (code and phrase), `headers`, and the body's
/// length when known (else the body ends when the connection does).
pub(crate) fn head(status: &str, headers: &[(&str, &str)], length: Option<usize>) -> String {
    let mut head = format!("HTTP/1.1 {status}\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(n) = length {
        head.push_str(&format!("Content-Length: {n}\r\n"));
    }
    head.push_str("Connection: close\r\n\r\n");
    head
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    async fn read(bytes: &[u8], max_body: usize) -> Result<Request, HttpError> {
        read_request(&mut &bytes[..], max_body).await
    }

    #[tokio::test]
    async fn reads_head_and_body_within_bounds() {
        let r = read(
            b"POST /v1/admin HTTP/1.1\r\nContent-Length: 4\r\n\r\nabcdEXTRA",
            16,
        )
        .await
        .unwrap();
        assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/v1/admin"));
        assert_eq!(r.body, b"abcd");
        let refused = |r: Result<Request, HttpError>| match r {
            Err(HttpError::Bad { status, .. }) => status,
            other => panic!("accepted: {other:?}"),
        };
        let big = read(b"POST / HTTP/1.1\r\nContent-Length: 17\r\n\r\n", 16).await;
        assert_eq!(refused(big), "413 Content Too Large");
        let short = read(b"POST / HTTP/1.1\r\nContent-Length: 9\r\n\r\nabc", 16).await;
        assert_eq!(refused(short), "400 Bad Request");
        let chunked = read(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 16).await;
        assert_eq!(refused(chunked), "400 Bad Request");
        let endless = [b"GET / HTTP/1.1\r\nX: ".as_slice(), &[b'a'; MAX_HEAD]].concat();
        assert_eq!(refused(read(&endless, 16).await), "400 Bad Request");
        assert_eq!(
            refused(read(b"\x16\x03\x01 garbage\r\n\r\n", 16).await),
            "400 Bad Request"
        );
    }
}
