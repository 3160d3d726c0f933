//! A CoAP parser plugin, for both of CoAP's message formats: CoAP over TCP
//! and TLS (RFC 8323), where [`parse`] cuts a stream into messages, and
//! CoAP over UDP (RFC 7252), where [`parse_datagram`] reads the one message
//! a datagram holds. Each message is described the same way, whichever
//! transport carried it: a request (method, path, query, token, the options
//! a policy or detector judges), a response (code), a signalling message
//! (CSM, Ping, Pong, Release, Abort; TCP only) or an empty message.
//!
//! RFC 8323 §3.2 frames a message as `Len|TKL`, an extended length of 0,
//! 1, 2 or 4 bytes, the code, the token, then the options and payload,
//! whose size `Len` gives.
//!
//! RFC 7252 §3 starts a message with four bytes, `Ver|T|TKL`, the code and
//! a 16-bit message ID, then the token, options and payload, up to the end
//! of the datagram. Its events also carry the message `type` (`con`,
//! `non`, `ack` or `rst`) and the `message-id`. An empty message (code
//! 0.00: a CON ping, an ACK, an RST) is a `coap.empty` event with them.
//!
//! ```
//! let get = [0x40, 0x01, 0x12, 0x34, 0xb4, b't', b'e', b'm', b'p'];
//! let parsed = coap::parse_datagram(&get);
//! let event = parsed.events.get(0).unwrap();
//! assert_eq!(event.kind(), "coap.request");
//! assert_eq!(event.text("path"), Some("/temp"));
//! assert_eq!(event.text("type"), Some("con"));
//! assert_eq!(event.int("message-id"), Some(0x1234));
//! ```
//!
//! The policy is to judge what the server will act on, so a message the
//! server could read otherwise than its event says is malformed: an
//! option RFC 7252 and its extensions do not let repeat, repeated (a
//! server reads the first copy, a parser keeping the last would show
//! another); a `.` or `..` Uri-Path segment; a Proxy-Uri beside Uri-Host,
//! Uri-Port, Uri-Path or Uri-Query (RFC 7252 §5.10.2). A request for a
//! proxy (Proxy-Uri, Proxy-Scheme) is malformed too unless the operator
//! allows them with the `proxy-requests` setting; its target is then in
//! `proxy-uri` or `proxy-scheme`. Within the joined `path`, `%`, `/` and
//! `?` in a segment are percent-encoded, and `%` and `&` within a query
//! item in `query`, as RFC 7252 §6.5 encodes them when it makes a URI of
//! the options, so that one string stands for one list of options.
//!
//! Messages are independent: the parser keeps no session state.

use palisade_plugin_sdk::host::config;
use palisade_plugin_sdk::{DatagramParser, Direction, EventWriter, Parsed, Parser, Session};

/// The parser as a plugin.
#[derive(Debug)]
pub struct Coap;

impl Parser for Coap {
    const PROTOCOL: &'static str = "coap";

    fn parse(_session: &Session, _direction: Direction, _state: &[u8], input: &[u8]) -> Parsed {
        parse(input)
    }
}

impl DatagramParser for Coap {
    fn parse_datagram(
        _session: &Session,
        _direction: Direction,
        _state: &[u8],
        datagram: &[u8],
    ) -> Parsed {
        parse_datagram(datagram)
    }
}

palisade_plugin_sdk::export!(datagram_parser: Coap);

/// The largest message accepted: far more than a constrained device sends
/// (RFC 8323's default Max-Message-Size is 1152 bytes), far less than the
/// 4-byte length field allows.
pub const MAX_MESSAGE: usize = 1 << 20;

/// Parse the complete messages at the start of `input`.
pub fn parse(input: &[u8]) -> Parsed {
    let mut parsed = Parsed::new(Vec::new());
    let mut offset = 0;
    while let Some(rest) = input.get(offset..).filter(|r| !r.is_empty()) {
        match frame(rest) {
            Framing::Complete {
                header_len,
                token_len,
                len,
            } => {
                let code = rest.get(header_len - 1).copied().unwrap_or(0);
                let token = rest
                    .get(header_len..header_len + token_len)
                    .unwrap_or_default();
                let body = rest.get(header_len + token_len..len).unwrap_or_default();
                let header = Header {
                    code,
                    token,
                    datagram: None,
                };
                if let Err(reason) = describe(&header, body, len, &mut parsed) {
                    parsed = parsed.malformed(offset, reason);
                    break;
                }
                offset += len;
            }
            Framing::Incomplete(needed) => {
                parsed = parsed.needing(needed);
                break;
            }
            Framing::Invalid(reason) => {
                parsed = parsed.malformed(offset, reason);
                break;
            }
        }
    }
    parsed
}

/// Read the one CoAP over UDP message (RFC 7252) that `datagram` holds:
/// one frame covering the whole datagram, or a malformed report at offset
/// 0 saying why the datagram is not a message.
pub fn parse_datagram(datagram: &[u8]) -> Parsed {
    let mut parsed = Parsed::new(Vec::new());
    let described = datagram_message(datagram)
        .and_then(|(header, body)| describe(&header, body, datagram.len(), &mut parsed));
    match described {
        Ok(()) => parsed,
        // `describe` writes nothing for a malformed message.
        Err(reason) => parsed.malformed(0, reason),
    }
}

/// The message types of RFC 7252 §4, as the `type` attribute names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MessageType {
    Confirmable,
    NonConfirmable,
    Acknowledgement,
    Reset,
}

impl MessageType {
    fn from_bits(bits: u8) -> Self {
        match bits & 0b11 {
            0 => MessageType::Confirmable,
            1 => MessageType::NonConfirmable,
            2 => MessageType::Acknowledgement,
            _ => MessageType::Reset,
        }
    }

    fn name(self) -> &'static str {
        match self {
            MessageType::Confirmable => "con",
            MessageType::NonConfirmable => "non",
            MessageType::Acknowledgement => "ack",
            MessageType::Reset => "rst",
        }
    }
}

/// What a message's header says, whichever transport carried it.
struct Header<'a> {
    code: u8,
    token: &'a [u8],
    /// What only the UDP header has: the type and the message ID.
    datagram: Option<(MessageType, u16)>,
}

/// Split a datagram into its header and its body (options and payload),
/// checking what RFC 7252 §3 and §4 require of the header: version 1, a
/// token of at most 8 bytes, an empty message with nothing after the
/// message ID, a Reset that is empty, an Acknowledgement that is empty or
/// a response, a Non-confirmable message that is not empty.
fn datagram_message(datagram: &[u8]) -> Result<(Header<'_>, &[u8]), &'static str> {
    let Some((&[first, code, id_high, id_low], rest)) = datagram.split_first_chunk::<4>() else {
        return Err("datagram shorter than the 4-byte CoAP header");
    };
    if first >> 6 != 1 {
        return Err("version not 1");
    }
    let kind = MessageType::from_bits(first >> 4);
    let token_len = usize::from(first & 0x0f);
    if token_len > 8 {
        return Err("token length over 8 (reserved)");
    }
    let (token, body) = rest
        .split_at_checked(token_len)
        .ok_or("token cut short by the end of the datagram")?;
    let class = code >> 5;
    if code == 0 {
        if !rest.is_empty() {
            return Err("empty message (code 0.00) with bytes after the message ID");
        }
        if kind == MessageType::NonConfirmable {
            return Err("empty non-confirmable message");
        }
    } else if kind == MessageType::Reset {
        return Err("reset message not empty");
    } else if kind == MessageType::Acknowledgement && class == 0 {
        return Err("acknowledgement carrying a request");
    }
    if class == 7 {
        return Err("signalling code in a datagram (RFC 8323, reliable transports only)");
    }
    let header = Header {
        code,
        token,
        datagram: Some((kind, u16::from_be_bytes([id_high, id_low]))),
    };
    Ok((header, body))
}

enum Framing {
    /// A whole message: `header_len` bytes up to and with the code, then a
    /// token of `token_len`, `len` bytes in all.
    Complete {
        header_len: usize,
        token_len: usize,
        len: usize,
    },
    /// At least this many more bytes are needed.
    Incomplete(usize),
    /// Not a CoAP over TCP message.
    Invalid(&'static str),
}

fn frame(input: &[u8]) -> Framing {
    let Some(&first) = input.first() else {
        return Framing::Incomplete(1);
    };
    let (len_nibble, token_len) = (usize::from(first >> 4), usize::from(first & 0x0f));
    if token_len > 8 {
        return Framing::Invalid("token length over 8 (reserved)");
    }
    let extended = match len_nibble {
        13 => 1,
        14 => 2,
        15 => 4,
        _ => 0,
    };
    let Some(ext) = input.get(1..1 + extended) else {
        return Framing::Incomplete(1 + extended - input.len());
    };
    let value = ext.iter().fold(0usize, |v, b| (v << 8) | usize::from(*b));
    let body_len = match len_nibble {
        13 => value + 13,
        14 => value + 269,
        15 => value.saturating_add(65805),
        n => n,
    };
    if body_len > MAX_MESSAGE {
        return Framing::Invalid("message larger than 1 MiB");
    }
    let header_len = 1 + extended + 1;
    let len = header_len + token_len + body_len;
    if input.len() < len {
        return Framing::Incomplete(len - input.len());
    }
    Framing::Complete {
        header_len,
        token_len,
        len,
    }
}

/// The method of a request code (class 0).
fn method(detail: u8) -> Option<&'static str> {
    Some(match detail {
        1 => "GET",
        2 => "POST",
        3 => "PUT",
        4 => "DELETE",
        5 => "FETCH",
        6 => "PATCH",
        7 => "iPATCH",
        _ => return None,
    })
}

/// The signalling message of a 7.xx code.
fn signal(detail: u8) -> Option<&'static str> {
    Some(match detail {
        1 => "CSM",
        2 => "Ping",
        3 => "Pong",
        4 => "Release",
        5 => "Abort",
        _ => return None,
    })
}

/// The setting that lets requests for a proxy through to the policy (a
/// bool, `false` unless set): the upstream forwards them to, or serves
/// them as, the target their Proxy-Uri or Proxy-Scheme names.
pub const PROXY_REQUESTS: &str = "proxy-requests";

/// The options and payload of a message, as far as the events need them.
#[derive(Default)]
struct Options<'a> {
    path: Vec<&'a [u8]>,
    query: Vec<&'a [u8]>,
    content_format: Option<u64>,
    accept: Option<u64>,
    observe: Option<u64>,
    block1: Option<u64>,
    block2: Option<u64>,
    uri_host: Option<&'a [u8]>,
    uri_port: Option<u64>,
    proxy_uri: Option<&'a [u8]>,
    proxy_scheme: Option<&'a [u8]>,
    /// An OSCORE option (RFC 8613): the real request is in the payload.
    oscore: bool,
    payload: usize,
}

/// Why a second copy of option `number` is malformed, for the options
/// their RFCs do not let repeat (RFC 7252 §5.10, 7641, 7959, 7967, 8613,
/// 8768, 9175, 9177, 9668); `None` for a repeatable or unknown one. A
/// server reads one copy (libcoap's `coap_check_option` finds the
/// first), which need not be the one the event would show.
fn not_repeatable(number: u32) -> Option<&'static str> {
    Some(match number {
        3 => "Uri-Host option repeated (not repeatable)",
        5 => "If-None-Match option repeated (not repeatable)",
        6 => "Observe option repeated (not repeatable)",
        7 => "Uri-Port option repeated (not repeatable)",
        9 => "OSCORE option repeated (not repeatable)",
        12 => "Content-Format option repeated (not repeatable)",
        14 => "Max-Age option repeated (not repeatable)",
        16 => "Hop-Limit option repeated (not repeatable)",
        17 => "Accept option repeated (not repeatable)",
        19 => "Q-Block1 option repeated (not repeatable)",
        21 => "EDHOC option repeated (not repeatable)",
        23 => "Block2 option repeated (not repeatable)",
        27 => "Block1 option repeated (not repeatable)",
        28 => "Size2 option repeated (not repeatable)",
        31 => "Q-Block2 option repeated (not repeatable)",
        35 => "Proxy-Uri option repeated (not repeatable)",
        39 => "Proxy-Scheme option repeated (not repeatable)",
        60 => "Size1 option repeated (not repeatable)",
        252 => "Echo option repeated (not repeatable)",
        258 => "No-Response option repeated (not repeatable)",
        _ => return None,
    })
}

fn uint(value: &[u8]) -> Result<u64, &'static str> {
    if value.len() > 4 {
        return Err("uint option longer than 4 bytes");
    }
    Ok(value.iter().fold(0, |v, b| (v << 8) | u64::from(*b)))
}

/// Read the options of a message's `body` into `found`, which starts
/// empty; a signalling message's (7.xx) are numbered by its signal (RFC
/// 8323 §5), not as RFC 7252 numbers them. Filled in place, not returned:
/// the options are a few hundred bytes, and every message reads them.
fn options<'a>(
    body: &'a [u8],
    signalling: bool,
    found: &mut Options<'a>,
) -> Result<(), &'static str> {
    let mut number = 0u32;
    let mut previous = None;
    let mut rest = body;
    while let Some((&first, after)) = rest.split_first() {
        if first == 0xff {
            if after.is_empty() {
                return Err("payload marker without a payload");
            }
            found.payload = after.len();
            return Ok(());
        }
        let mut after = after;
        let mut extend = |nibble: u8| -> Result<u32, &'static str> {
            Ok(match nibble {
                13 => {
                    let (&b, r) = after.split_first().ok_or("option header cut short")?;
                    after = r;
                    u32::from(b) + 13
                }
                14 => {
                    let (v, r) = after
                        .split_first_chunk::<2>()
                        .ok_or("option header cut short")?;
                    after = r;
                    u32::from(u16::from_be_bytes(*v)) + 269
                }
                15 => return Err("option nibble 15 (reserved)"),
                n => u32::from(n),
            })
        };
        let delta = extend(first >> 4)?;
        let len = extend(first & 0x0f)? as usize;
        let (value, r) = after
            .split_at_checked(len)
            .ok_or("option value cut short")?;
        rest = r;
        // Option numbers are 0 to 65535 (RFC 7252 §12.2), but a delta alone
        // reaches 65804, and deltas add up without end.
        number = number
            .checked_add(delta)
            .filter(|&n| n <= u32::from(u16::MAX))
            .ok_or("option number past 65535")?;
        // Options come in order of their numbers: a copy follows the first.
        if previous == Some(number)
            && !signalling
            && let Some(reason) = not_repeatable(number)
        {
            return Err(reason);
        }
        previous = Some(number);
        match number {
            11 => found.path.push(value),
            15 => found.query.push(value),
            12 => found.content_format = Some(uint(value)?),
            17 => found.accept = Some(uint(value)?),
            6 => found.observe = Some(uint(value)?),
            27 => found.block1 = Some(uint(value)?),
            23 => found.block2 = Some(uint(value)?),
            // A signal's options are not numbered as the rest below.
            _ if signalling => {}
            // Lengths outside RFC 7252 §5.10's table make a critical
            // option unrecognised, and the request is refused (4.02): a
            // server reads them no further, and neither does the policy.
            3 if !(1..=255).contains(&value.len()) => {
                return Err("Uri-Host not 1 to 255 bytes long");
            }
            3 => found.uri_host = Some(value),
            7 if value.len() > 2 => return Err("Uri-Port longer than 2 bytes"),
            7 => found.uri_port = Some(uint(value)?),
            9 => found.oscore = true,
            35 => found.proxy_uri = Some(value),
            39 => found.proxy_scheme = Some(value),
            _ => {}
        }
    }
    Ok(())
}

fn text(value: &[u8]) -> Result<&str, &'static str> {
    std::str::from_utf8(value).map_err(|_| "option text not UTF-8")
}

/// The characters percent-encoded within a Uri-Path segment: `%` and the
/// separators of a path and of its query.
const PATH_ESCAPED: &[u8] = b"%/?";
/// The characters percent-encoded within a Uri-Query item: `%` and the
/// separator of items.
const QUERY_ESCAPED: &[u8] = b"%&";

/// `parts` joined by `separator` after `lead`, the characters `escaped`
/// names percent-encoded within each part (RFC 7252 §6.5), so that the
/// joined text maps back to one list of parts.
fn joined(
    parts: &[&[u8]],
    lead: &str,
    separator: char,
    escaped: &[u8],
) -> Result<String, &'static str> {
    let len = lead.len() + parts.iter().map(|p| p.len() + 1).sum::<usize>();
    let mut out = String::with_capacity(len);
    out.push_str(lead);
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            out.push(separator);
        }
        let mut rest = text(part)?;
        // Every escaped character is ASCII: found by a byte search (much
        // cheaper than a search by characters, on every request), one
        // byte long, with a char boundary on either side.
        while let Some(at) = rest.bytes().position(|b| escaped.contains(&b)) {
            let (before, after) = rest.split_at(at);
            out.push_str(before);
            out.push_str(match after.bytes().next() {
                Some(b'/') => "%2F",
                Some(b'?') => "%3F",
                Some(b'&') => "%26",
                _ => "%25",
            });
            rest = after.get(1..).unwrap_or_default();
        }
        out.push_str(rest);
    }
    Ok(out)
}

/// Describe a message of `len` bytes, its header and `body` (options and
/// payload), with one event in `parsed`. Nothing is written when the
/// message is malformed.
fn describe(
    header: &Header<'_>,
    body: &[u8],
    len: usize,
    parsed: &mut Parsed,
) -> Result<(), &'static str> {
    let Header { code, token, .. } = *header;
    let (class, detail) = (code >> 5, code & 0x1f);
    let mut found = Options::default();
    options(body, class == 7, &mut found)?;
    let mut event = match (class, detail) {
        (0, 0) => {
            // Nothing but the header: RFC 7252 §4.1 forbids more over UDP,
            // and RFC 8323 has the receiver ignore an empty message.
            datagram_attributes(header, &mut parsed.frame(len, "coap.empty"));
            return Ok(());
        }
        (0, _) => {
            let method = method(detail).ok_or("unknown request method")?;
            // Everything that can fail is read before the frame is written:
            // a malformed message leaves no event behind.
            let target = Target::of(&found)?;
            let mut event = parsed.frame(len, "coap.request");
            event
                .text("method", method)
                .text("path", &target.path)
                .bytes("token", token)
                .size("payload-size", found.payload);
            target.write(&mut event);
            event
        }
        (2..=5, _) => {
            // "c.dd", as RFC 7252 writes codes (2.05 Content): without the
            // formatting machinery, which most of a message's time went to.
            let digits = [b'0' + class, b'.', b'0' + detail / 10, b'0' + detail % 10];
            let code_text = std::str::from_utf8(&digits).unwrap_or_default();
            let mut event = parsed.frame(len, "coap.response");
            event
                .text("code", code_text)
                .bytes("token", token)
                .size("payload-size", found.payload);
            event
        }
        (7, _) => {
            let name = signal(detail).ok_or("unknown signalling code")?;
            let mut event = parsed.frame(len, "coap.signal");
            event.text("code", name);
            event
        }
        _ => return Err("reserved code class"),
    };
    for (name, value) in [
        ("content-format", found.content_format),
        ("accept", found.accept),
        ("observe", found.observe),
        ("block1", found.block1),
        ("block2", found.block2),
    ] {
        if let Some(v) = value {
            event.int(name, i64::try_from(v).unwrap_or(i64::MAX));
        }
    }
    if found.oscore {
        event.flag("oscore", true);
    }
    datagram_attributes(header, &mut event);
    Ok(())
}

/// What a request asks for: its path and query, the host and port it
/// names, and, where the operator allows requests for a proxy, the
/// Proxy-Uri or Proxy-Scheme it is to be forwarded by.
struct Target<'a> {
    path: String,
    query: Option<String>,
    uri_host: Option<&'a str>,
    uri_port: Option<u64>,
    proxy_uri: Option<&'a str>,
    proxy_scheme: Option<&'a str>,
}

impl<'a> Target<'a> {
    fn of(found: &Options<'a>) -> Result<Self, &'static str> {
        if found.proxy_uri.is_some()
            && (found.uri_host.is_some()
                || found.uri_port.is_some()
                || !found.path.is_empty()
                || !found.query.is_empty())
        {
            return Err(
                "Proxy-Uri with Uri-Host, Uri-Port, Uri-Path or Uri-Query (RFC 7252 §5.10.2)",
            );
        }
        // Read only when a request asks for a proxy: most never do.
        if (found.proxy_uri.is_some() || found.proxy_scheme.is_some())
            && !config::get::<bool>(PROXY_REQUESTS).unwrap_or(false)
        {
            return Err(
                "Proxy-Uri or Proxy-Scheme: the upstream would act on a target the policy does not see (the proxy-requests setting allows them)",
            );
        }
        if (found.path.iter()).any(|segment| matches!(*segment, b"." | b"..")) {
            return Err("Uri-Path segment . or .. (RFC 7252 §6.4 removes dot-segments)");
        }
        let path = if found.path.is_empty() {
            "/".to_owned()
        } else {
            joined(&found.path, "/", '/', PATH_ESCAPED)?
        };
        let query = if found.query.is_empty() {
            None
        } else {
            Some(joined(&found.query, "", '&', QUERY_ESCAPED)?)
        };
        Ok(Target {
            path,
            query,
            uri_host: found.uri_host.map(text).transpose()?,
            uri_port: found.uri_port,
            proxy_uri: found.proxy_uri.map(text).transpose()?,
            proxy_scheme: found.proxy_scheme.map(text).transpose()?,
        })
    }

    /// The attributes besides the path.
    fn write(&self, event: &mut EventWriter<'_>) {
        if let Some(query) = &self.query {
            event.text("query", query);
        }
        if let Some(host) = self.uri_host {
            event.text("uri-host", host);
        }
        if let Some(port) = self.uri_port {
            event.int("uri-port", i64::try_from(port).unwrap_or(i64::MAX));
        }
        if let Some(uri) = self.proxy_uri {
            event.text("proxy-uri", uri);
        }
        if let Some(scheme) = self.proxy_scheme {
            event.text("proxy-scheme", scheme);
        }
    }
}

/// What the UDP header adds to an event: the message type and ID.
fn datagram_attributes(header: &Header<'_>, event: &mut EventWriter<'_>) {
    if let Some((kind, message_id)) = header.datagram {
        event
            .text("type", kind.name())
            .int("message-id", message_id);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    /// A message: Len|TKL, code, token, then `body` (options and payload).
    fn message(code: u8, token: &[u8], body: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        let tkl = token.len() as u8;
        match body.len() {
            n @ 0..=12 => m.push(((n as u8) << 4) | tkl),
            n @ 13..=268 => m.extend_from_slice(&[(13 << 4) | tkl, (n - 13) as u8]),
            n => {
                m.push((14 << 4) | tkl);
                m.extend_from_slice(&((n - 269) as u16).to_be_bytes());
            }
        }
        m.push(code);
        m.extend_from_slice(token);
        m.extend_from_slice(body);
        m
    }

    #[test]
    fn a_get_with_path_query_and_its_response() {
        // Uri-Path "sensors" (11), Uri-Path "temp", Uri-Query "unit=c" (15),
        // Accept 50 (17).
        let mut body = vec![0xb7];
        body.extend_from_slice(b"sensors");
        body.push(0x04);
        body.extend_from_slice(b"temp");
        body.push(0x46);
        body.extend_from_slice(b"unit=c");
        body.extend_from_slice(&[0x21, 50]);
        let get = message(0x01, &[0xab, 0xcd], &body);
        let content = message(0x45, &[0xab, 0xcd], &[0xc1, 0, 0xff, b'2', b'1']);
        let p = parse(&[get.clone(), content.clone()].concat());
        assert_eq!(p.frame_lengths, [get.len() as u32, content.len() as u32]);
        let e = p.events.get(0).unwrap();
        assert_eq!(e.kind(), "coap.request");
        assert_eq!(e.text("method"), Some("GET"));
        assert_eq!(e.text("path"), Some("/sensors/temp"));
        assert_eq!(e.text("query"), Some("unit=c"));
        assert_eq!(e.int("accept"), Some(50));
        assert_eq!(e.bytes("token"), Some(&[0xab, 0xcd][..]));
        let r = p.events.get(1).unwrap();
        assert_eq!((r.kind(), r.text("code")), ("coap.response", Some("2.05")));
        assert_eq!(
            (r.int("content-format"), r.int("payload-size")),
            (Some(0), Some(2))
        );
    }

    #[test]
    fn every_response_code_reads_as_rfc_7252_writes_it() {
        for class in 2..=5u8 {
            for detail in 0..32u8 {
                let p = parse(&message(class << 5 | detail, &[1], &[]));
                let e = p.events.get(0).unwrap();
                let expected = format!("{class}.{detail:02}");
                assert_eq!(e.text("code"), Some(expected.as_str()));
            }
        }
    }

    #[test]
    fn signals_and_long_messages_split_anywhere() {
        let csm = message(0xe1, &[], &[]);
        let post = message(0x02, &[1], &[[0xff].as_slice(), &[9u8; 400]].concat());
        let stream = [csm, post.clone()].concat();
        let whole = parse(&stream);
        assert_eq!(whole.events.get(0).unwrap().text("code"), Some("CSM"));
        assert_eq!(whole.events.get(1).unwrap().int("payload-size"), Some(400));
        for cut in 1..stream.len() {
            let first = parse(&stream[..cut]);
            let second = parse(&stream[first.consumed()..]);
            let events: Vec<String> = (first.events.iter().chain(second.events.iter()))
                .map(|e| e.to_string())
                .collect();
            let expected: Vec<String> = whole.events.iter().map(|e| e.to_string()).collect();
            assert_eq!(events, expected, "cut at {cut}");
        }
    }

    #[test]
    fn malformed_messages_are_reported_with_a_reason() {
        for (bytes, reason) in [
            (vec![0x09, 0x01], "token length"),
            (message(0x01, &[], &[0xf0]), "reserved"),
            (message(0x01, &[], &[0xff]), "payload marker"),
            (message(0x08, &[], &[]), "unknown request method"),
            (message(0x20, &[], &[]), "reserved code class"),
            // Found by fuzzing: a query that is not UTF-8 left its
            // message's event behind.
            (message(0x01, &[], &[0xd1, 0x02, 0xff]), "not UTF-8"),
            (vec![0xf0, 0xff, 0xff, 0xff, 0xff], "larger than"),
        ] {
            let p = parse(&bytes);
            assert!(p.events.is_empty(), "{bytes:?} left an event");
            let m = p.malformed.unwrap_or_else(|| panic!("{bytes:?} accepted"));
            assert!(m.reason.contains(reason), "{bytes:?}: {}", m.reason);
        }
    }

    #[test]
    fn option_numbers_past_65535_are_malformed() {
        // Option delta 65804 (nibble 14, extended 0xffff): no option has
        // such a number (RFC 7252 §12.2: 0 to 65535); summed 65 269
        // times it wrapped the option number round.
        let get = message(0x01, &[], &[0xe0, 0xff, 0xff]);
        let datagram = [&[0x40, 0x01, 0, 1][..], &[0xe0, 0xff, 0xff]].concat();
        for p in [parse(&get), parse_datagram(&datagram)] {
            assert!(p.events.is_empty(), "an event left behind");
            let m = (p.malformed).unwrap_or_else(|| panic!("option 65804 accepted"));
            assert!(m.reason.contains("option number"), "{}", m.reason);
        }
        // Two options whose numbers add up past 65535.
        let p = parse(&message(0x01, &[], &[0xe0, 0x80, 0, 0xe0, 0x80, 0]));
        assert!(p.malformed.is_some(), "option 65810 accepted");
        // 65535 itself is an option number (nibble 14, 65535 - 269).
        let p = parse(&message(0x01, &[], &[0xe0, 0xfe, 0xf2]));
        assert_eq!(p.malformed, None);
        assert_eq!(p.events.len(), 1);
    }

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    /// The one event of a datagram that must parse.
    fn datagram_event(datagram: &[u8]) -> String {
        let p = parse_datagram(datagram);
        assert_eq!(p.malformed, None, "{datagram:02x?}");
        assert_eq!(p.frame_lengths, [datagram.len() as u32]);
        p.events.get(0).unwrap().to_string()
    }

    #[test]
    fn datagrams_libcoap_sent_are_described_with_type_and_message_id() {
        // Captured on loopback between libcoap 4.3.1's coap-client and
        // coap-server: an Observe registration (Uri-Port, Uri-Path "time",
        // Observe 0) and its piggybacked 2.05 with Observe 2 and a payload.
        let register = hex("4101e2cc016012aa1a4474696d65");
        let p = parse_datagram(&register);
        let e = p.events.get(0).unwrap();
        assert_eq!(e.kind(), "coap.request");
        assert_eq!(
            (e.text("method"), e.text("path"), e.int("observe")),
            (Some("GET"), Some("/time"), Some(0))
        );
        assert_eq!(e.int("uri-port"), Some(0xaa1a));
        assert_eq!(
            (e.text("type"), e.int("message-id"), e.bytes("token")),
            (Some("con"), Some(0xe2cc), Some(&[1u8][..]))
        );
        let content = hex("6145e2cc0161028101ff4e6f762032352030393a33333a3132");
        let p = parse_datagram(&content);
        let e = p.events.get(0).unwrap();
        assert_eq!((e.kind(), e.text("code")), ("coap.response", Some("2.05")));
        assert_eq!(
            (e.text("type"), e.int("observe"), e.int("payload-size")),
            (Some("ack"), Some(2), Some(15))
        );
        // Block-wise: the third Block1 block of a PUT (Content-Format 0,
        // Block1 2/more/64, Size1 300), and a Block2 answer.
        let put = hex(
            "4703b0be0300000000000372aa1a4c6578616d706c655f6461746110d1022ad214012cd4db89de5cd2ff",
        );
        let put = [put, vec![b'x'; 64]].concat();
        let e = datagram_event(&put);
        assert!(e.contains("method=\"PUT\""), "{e}");
        assert!(e.contains("block1=42 "), "{e}");
        assert!(e.contains("content-format=0 "), "{e}");
        let block2 = hex("6745231b030000000000024101d1062a52012cff");
        let block2 = [block2, vec![b'x'; 64]].concat();
        let p = parse_datagram(&block2);
        let e = p.events.get(0).unwrap();
        assert_eq!(
            (e.int("block2"), e.int("payload-size")),
            (Some(0x2a), Some(64))
        );
        assert_eq!(e.bytes("token"), Some(&[3, 0, 0, 0, 0, 0, 2][..]));
    }

    #[test]
    fn empty_messages_say_their_type() {
        for (datagram, kind) in [
            (hex("4000abcd"), "con"), // a CoAP ping
            (hex("6000abcd"), "ack"),
            (hex("7000abcd"), "rst"),
        ] {
            let p = parse_datagram(&datagram);
            let e = p.events.get(0).unwrap();
            assert_eq!(e.kind(), "coap.empty");
            assert_eq!(e.text("type"), Some(kind));
            assert_eq!(e.int("message-id"), Some(0xabcd));
            assert_eq!(e.attributes().count(), 2, "{e}");
        }
    }

    #[test]
    fn a_request_reads_the_same_over_tcp_and_udp() {
        let body = [
            [0xb4].as_slice(),
            b"temp",
            &[0x46],
            b"unit=c",
            &[0xff, 1, 2],
        ]
        .concat();
        let tcp = parse(&message(0x02, &[7, 7], &body));
        let udp = parse_datagram(&[&[0x52, 0x02, 0, 9, 7, 7][..], &body].concat());
        let tcp = tcp.events.get(0).unwrap().to_string();
        let udp = udp.events.get(0).unwrap().to_string();
        assert_eq!(udp, format!("{tcp} type=\"non\" message-id=9"));
    }

    #[test]
    fn malformed_datagrams_are_reported_with_a_reason() {
        for (datagram, reason) in [
            (vec![], "shorter than"),
            (vec![0x40, 0x01, 0x00], "shorter than"),
            (vec![0x80, 0x01, 0, 1], "version not 1"),
            (
                vec![0x49, 0x01, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8, 9],
                "token length",
            ),
            (vec![0x44, 0x01, 0, 1, 1, 2], "token cut short"),
            (vec![0x40, 0x00, 0, 1, 0xff], "empty message"),
            (vec![0x41, 0x00, 0, 1, 1], "empty message"),
            (vec![0x50, 0x00, 0, 1], "empty non-confirmable"),
            (vec![0x70, 0x45, 0, 1], "reset message not empty"),
            (vec![0x60, 0x01, 0, 1], "acknowledgement carrying a request"),
            (vec![0x40, 0xe1, 0, 1], "signalling code"),
            (vec![0x40, 0x20, 0, 1], "reserved code class"),
            (vec![0x40, 0x08, 0, 1], "unknown request method"),
            (vec![0x40, 0x01, 0, 1, 0xff], "payload marker"),
            (vec![0x40, 0x01, 0, 1, 0xf0], "reserved"),
            (vec![0x40, 0x01, 0, 1, 0xb2, b'a'], "cut short"),
            (vec![0x40, 0x01, 0, 1, 0xb1, 0xff], "not UTF-8"),
            (
                vec![0x40, 0x45, 0, 1, 0xc5, 1, 2, 3, 4, 5],
                "longer than 4 bytes",
            ),
        ] {
            let p = parse_datagram(&datagram);
            assert!(p.events.is_empty(), "{datagram:02x?} left an event");
            assert_eq!(p.needed, None);
            let m = p
                .malformed
                .unwrap_or_else(|| panic!("{datagram:02x?} accepted"));
            assert_eq!(m.offset, 0);
            assert!(m.reason.contains(reason), "{datagram:02x?}: {}", m.reason);
        }
    }

    /// A confirmable datagram of `code`, message ID 1, no token, with
    /// `options` (number and value, in order) and no payload.
    fn with_options(code: u8, options: &[(u16, &[u8])]) -> Vec<u8> {
        let mut d = vec![0x40, code, 0, 1];
        let mut last = 0;
        for (number, value) in options {
            let delta = number - last;
            last = *number;
            let nibble = |n: usize| match n {
                0..13 => (n as u8, vec![]),
                13..269 => (13, vec![(n - 13) as u8]),
                _ => (14, ((n - 269) as u16).to_be_bytes().to_vec()),
            };
            let (d_nibble, d_ext) = nibble(usize::from(delta));
            let (l_nibble, l_ext) = nibble(value.len());
            d.push(d_nibble << 4 | l_nibble);
            d.extend_from_slice(&d_ext);
            d.extend_from_slice(&l_ext);
            d.extend_from_slice(value);
        }
        d
    }

    /// The reason a datagram that must not parse is malformed.
    fn malformed_reason(datagram: &[u8]) -> String {
        let p = parse_datagram(datagram);
        assert!(p.events.is_empty(), "{datagram:02x?} left an event");
        let m = (p.malformed).unwrap_or_else(|| panic!("{datagram:02x?} accepted"));
        m.reason.to_string()
    }

    /// Allow requests for a proxy, as `palisade plugin config coap
    /// proxy-requests true` does, or not (`None`: unset).
    fn proxy_requests(setting: Option<&[u8]>) {
        palisade_plugin_sdk::testing::Host::reset();
        if let Some(value) = setting {
            let key = format!("config/{PROXY_REQUESTS}");
            palisade_plugin_sdk::host::kv::set(&key, value).unwrap();
        }
    }

    #[test]
    fn a_request_for_a_proxy_is_malformed_unless_the_operator_allows_it() {
        // Uri-Path "public", then Proxy-Uri coap://plc.local/admin: the
        // upstream acts on the Proxy-Uri, the path said /public.
        let mixed = [
            &[0x40, 0x01, 0x12, 0x34, 0xb6][..],
            b"public",
            &[0xdd, 0x0b, 0x09],
            b"coap://plc.local/admin",
        ]
        .concat();
        let proxy_uri = with_options(0x01, &[(35, b"coap://plc.local/admin")]);
        let proxy_scheme = with_options(0x01, &[(3, b"plc.local"), (11, b"admin"), (39, b"coap")]);
        for setting in [None, Some(&b"false"[..]), Some(b"yes")] {
            proxy_requests(setting);
            malformed_reason(&mixed);
            for request in [&proxy_uri, &proxy_scheme] {
                let reason = malformed_reason(request);
                assert!(reason.contains("does not see"), "{setting:?}: {reason}");
            }
            let tcp = message(0x01, &[], &proxy_uri[4..]);
            assert!(parse(&tcp).malformed.is_some(), "{setting:?}: over TCP");
        }

        proxy_requests(Some(b"true"));
        let e = datagram_event(&proxy_uri);
        assert!(e.contains("path=\"/\""), "{e}");
        assert!(e.contains("proxy-uri=\"coap://plc.local/admin\""), "{e}");
        let e = datagram_event(&proxy_scheme);
        assert!(e.contains("path=\"/admin\""), "{e}");
        assert!(e.contains("uri-host=\"plc.local\""), "{e}");
        assert!(e.contains("proxy-scheme=\"coap\""), "{e}");
        // Allowed or not, a Proxy-Uri beside any Uri-* option is one the
        // RFC forbids (§5.10.2): which of the two would the server follow?
        for request in [
            mixed,
            with_options(0x01, &[(3, b"plc"), (35, b"coap://plc.local/admin")]),
            with_options(0x01, &[(7, &[0x16, 0x33]), (35, b"coap://plc/")]),
            with_options(0x01, &[(15, b"a=1"), (35, b"coap://plc/")]),
        ] {
            let reason = malformed_reason(&request);
            assert!(reason.contains("§5.10.2"), "{reason}");
        }
        palisade_plugin_sdk::testing::Host::reset();
    }

    #[test]
    fn uri_host_uri_port_and_oscore_are_seen() {
        // What libcoap's coap-client sends for coap://localhost:5683/temp.
        let get = with_options(
            0x01,
            &[(3, b"localhost"), (7, &[0x16, 0x33]), (11, b"temp")],
        );
        let p = parse_datagram(&get);
        let e = p.events.get(0).unwrap();
        assert_eq!(
            (e.text("uri-host"), e.int("uri-port"), e.text("path")),
            (Some("localhost"), Some(5683), Some("/temp"))
        );
        assert_eq!(e.flag("oscore"), None);
        // An OSCORE request (RFC 8613): the outer POST to / is all there
        // is to see; the real request is in the payload.
        let protected = [
            with_options(0x02, &[(9, &[0x09, 0x14, 0x01])]),
            vec![0xff, 0x61, 0x62],
        ]
        .concat();
        let p = parse_datagram(&protected);
        let e = p.events.get(0).unwrap();
        assert_eq!(
            (e.text("method"), e.text("path"), e.flag("oscore")),
            (Some("POST"), Some("/"), Some(true))
        );
        let answer = [&[0x60, 0x44, 0, 1, 0x90, 0xff][..], b"x"].concat();
        let p = parse_datagram(&answer);
        assert_eq!(p.events.get(0).unwrap().flag("oscore"), Some(true));
    }

    #[test]
    fn uri_host_and_uri_port_of_lengths_outside_the_rfcs_are_malformed() {
        let long_host = [b'h'; 256];
        for (options, reason) in [
            (&[(3, &b""[..])][..], "Uri-Host not 1 to 255 bytes long"),
            (&[(3, &long_host[..])], "Uri-Host not 1 to 255 bytes long"),
            (&[(7, &[0, 0x16, 0x33][..])], "Uri-Port longer than 2 bytes"),
        ] {
            let p = parse_datagram(&with_options(0x01, options));
            assert!(p.events.is_empty());
            assert_eq!(p.malformed.unwrap().reason, reason);
        }
        // At the bounds: read.
        let p = parse_datagram(&with_options(0x01, &[(3, &long_host[..255]), (7, &[])]));
        let e = p.events.get(0).unwrap();
        assert_eq!(
            (e.text("uri-host").map(str::len), e.int("uri-port")),
            (Some(255), Some(0))
        );
    }

    #[test]
    fn a_non_repeatable_option_repeated_is_malformed() {
        // GET /sensors/temp with Observe 0, then Observe 1: libcoap acts
        // on the first and registers the observer.
        let observe_twice = [
            &[0x40, 0x01, 0x12, 0x35, 0x60, 0x01, 0x01, 0x57][..],
            b"sensors",
            &[0x04],
            b"temp",
        ]
        .concat();
        let reason = malformed_reason(&observe_twice);
        assert!(reason.contains("Observe option repeated"), "{reason}");
        for number in [
            3, 5, 6, 7, 9, 12, 14, 16, 17, 19, 21, 23, 27, 28, 31, 35, 39, 60, 252, 258,
        ] {
            let twice = with_options(0x01, &[(number, b"1"), (number, b"1")]);
            let reason = malformed_reason(&twice);
            assert!(reason.contains("repeated"), "option {number}: {reason}");
        }
        // A response too: the client reads the first Content-Format.
        let mut content = with_options(0x45, &[(12, &[50]), (12, &[0])]);
        content[0] = 0x60;
        let reason = malformed_reason(&content);
        assert!(reason.contains("Content-Format"), "{reason}");
        // If-Match, ETag, Location-Path, Uri-Path, Uri-Query and
        // Location-Query repeat; so may an option no RFC defines.
        for number in [1, 4, 8, 11, 15, 20, 2050] {
            let twice = with_options(0x01, &[(number, b"1"), (number, b"1")]);
            datagram_event(&twice);
        }
        // Signalling options are numbered by their signal (RFC 8323 §5):
        // a Release's Alternative-Address (2) repeats.
        let release = message(0xe4, &[], &[0x21, b'a', 0x01, b'b']);
        assert_eq!(parse(&release).malformed, None);
    }

    #[test]
    fn a_path_and_query_stand_for_one_list_of_options() {
        let target = |path: &[&[u8]], query: &[&[u8]]| {
            let options: Vec<(u16, &[u8])> = (path.iter().map(|s| (11, *s)))
                .chain(query.iter().map(|q| (15, *q)))
                .collect();
            let p = parse_datagram(&with_options(0x01, &options));
            assert_eq!(p.malformed, None);
            let e = p.events.get(0).unwrap();
            let query = e.text("query").map(str::to_owned);
            (e.text("path").unwrap().to_owned(), query)
        };
        assert_eq!(target(&[b"a", b"b"], &[]).0, "/a/b");
        assert_eq!(target(&[b"a/b"], &[]).0, "/a%2Fb");
        assert_eq!(target(&[b"50%", b"a?b"], &[]).0, "/50%25/a%3Fb");
        assert_eq!(target(&[b"...", b".a"], &[]).0, "/.../.a");
        assert_eq!(
            target(&[], &[b"a", b"b"]),
            ("/".to_owned(), Some("a&b".to_owned()))
        );
        assert_eq!(target(&[], &[b"a&b"]).1.unwrap(), "a%26b");
        assert_eq!(target(&[], &[b"x=5%", b"y=/?"]).1.unwrap(), "x=5%25&y=/?");
        // A client following RFC 7252 §6.4 never sends a dot-segment; a
        // server may resolve one: /public/../admin is /admin.
        for path in [
            &[&b"public"[..], b"..", b"admin"][..],
            &[b"."],
            &[b"a", b".", b"b"],
        ] {
            let options: Vec<(u16, &[u8])> = path.iter().map(|s| (11, *s)).collect();
            let reason = malformed_reason(&with_options(0x01, &options));
            assert!(reason.contains("dot-segments"), "{path:?}: {reason}");
        }
    }

    #[test]
    fn every_cut_of_a_datagram_is_a_message_or_malformed() {
        let datagram = hex(
            "4703b0be0300000000000372aa1a4c6578616d706c655f6461746110d1022ad214012cd4db89de5cd2ff7878",
        );
        for cut in 0..=datagram.len() {
            let p = parse_datagram(&datagram[..cut]);
            match (p.frame_lengths.as_slice(), &p.malformed) {
                ([len], None) => assert_eq!(*len as usize, cut),
                ([], Some(m)) => assert_eq!(m.offset, 0),
                other => panic!("cut at {cut}: {other:?}"),
            }
            assert_eq!(p.needed, None);
        }
    }
}
