//! How audit records look to a SIEM: JSON lines, and RFC 5424 syslog
//! messages whose body is ArcSight's Common Event Format (CEF), which most
//! SIEMs parse without configuration.
//!
//! An exported record is at most [`MAX_MESSAGE_BYTES`] long: a device
//! chooses what goes into an event (a 65 000-byte MQTT topic), and a
//! message that no receiver takes would hold up every record after it.
//! [`fitted`] cuts the record's long strings, each with a visible marker,
//! before rendering it, so that the result is still valid syslog, CEF or
//! JSON. The audit trail itself keeps the whole record.

use std::sync::Arc;

use super::{Record, What};
use crate::plugins::Severity;

/// The vendor and product a CEF header names.
const VENDOR: &str = "Palisade";
const PRODUCT: &str = "Palisade";

/// The syslog facility of audit messages: 13, "log audit".
pub const FACILITY: u8 = 13;

/// The most bytes one exported record takes, where the record allows it.
/// 8 KiB: rsyslog's default `maxMessageSize`, so that what a receiver keeps
/// is what was sent, with the marker; well inside a UDP datagram (65 507
/// bytes); and a full batch of them is a webhook body of at most 2 MiB.
pub const MAX_MESSAGE_BYTES: usize = 8 * 1024;

/// What a cut string keeps at least, before attributes are left out.
const MIN_KEEP: usize = 64;

/// `render(record)` in at most `budget` bytes, where the record's fixed
/// fields allow it: the strings of a record that renders longer are cut,
/// each ending with `...[truncated N bytes]`, shorter and shorter, and as a
/// last resort its event's attributes are left out, with a note saying how
/// many. The record is cut, not its rendering, so the format's escaping
/// still applies to everything.
pub fn fitted(record: &Record, budget: usize, render: impl Fn(&Record) -> String) -> String {
    let whole = render(record);
    if whole.len() <= budget {
        return whole;
    }
    let mut keep = budget / 2;
    loop {
        keep = keep.max(MIN_KEEP);
        let text = render(&shortened(record, keep));
        if text.len() <= budget {
            return text;
        }
        if keep == MIN_KEEP {
            break;
        }
        keep /= 2;
    }
    // Many attributes, each short: leave them out.
    let mut bare = shortened(record, MIN_KEEP);
    if let Some(event) = &mut bare.event {
        let event = Arc::make_mut(event);
        let note = format!("{} attributes left out", event.attributes.len());
        event.attributes = serde_json::Map::from_iter([("truncated".to_owned(), note.into())]);
    }
    render(&bare)
}

/// A copy of `record` with every string it carries from a device or a
/// plugin cut to about `keep` bytes.
fn shortened(record: &Record, keep: usize) -> Record {
    let mut r = record.clone();
    for s in [
        &mut r.device.id,
        &mut r.device.class,
        &mut r.device.zone,
        &mut r.route,
        &mut r.plugin.name,
    ] {
        cut(s, keep);
    }
    if let Some(version) = &mut r.plugin.version {
        cut(version, keep);
    }
    if let Some(event) = &mut r.event {
        let event = Arc::make_mut(event);
        cut(&mut event.kind, keep);
        event.attributes = (std::mem::take(&mut event.attributes).into_iter())
            .map(|(mut name, mut value)| {
                cut(&mut name, keep);
                cut_json(&mut value, keep);
                (name, value)
            })
            .collect();
    }
    match &mut r.what {
        What::Finding {
            severity, reason, ..
        } => {
            cut(severity, keep);
            cut(reason, keep);
        }
        What::Action { action, detail } => {
            cut(action, keep);
            if let Some(detail) = detail {
                cut(detail, keep);
            }
        }
        What::OperatorAction {
            operator,
            role,
            request,
            arguments,
            outcome,
            reason,
        } => {
            for s in [operator, role, request, outcome] {
                cut(s, keep);
            }
            arguments.values_mut().for_each(|v| cut_json(v, keep));
            if let Some(reason) = reason {
                cut(reason, keep);
            }
        }
    }
    r
}

/// Cut the strings in `value` to about `keep` bytes.
fn cut_json(value: &mut serde_json::Value, keep: usize) {
    match value {
        serde_json::Value::String(s) => cut(s, keep),
        serde_json::Value::Array(values) => values.iter_mut().for_each(|v| cut_json(v, keep)),
        serde_json::Value::Object(map) => map.values_mut().for_each(|v| cut_json(v, keep)),
        _ => {}
    }
}

/// Cut `s` to `keep` bytes (fewer at a character boundary), marked as the
/// audit exports mark what they cut.
pub(crate) fn cut(s: &mut String, keep: usize) {
    if s.len() <= keep {
        return;
    }
    let end = s.floor_char_boundary(keep);
    let cut = s.len() - end;
    s.truncate(end);
    s.push_str(&format!("...[truncated {cut} bytes]"));
}

/// The record as one line of JSON, without the newline.
///
/// JSON requires escaping only below U+0020: DEL, the C1 controls, the
/// Unicode line separators and the bidirectional controls would stay raw,
/// and break or reorder the line where a SIEM or a terminal shows it (a
/// device's topic `site/\u{202e}dmc/x` shows as `site/x/cmd`). They are
/// written `\uXXXX`, which reads back as the same character. They occur
/// only inside strings.
pub fn json_line(record: &Record) -> String {
    // A record is plain data; serialising it cannot fail.
    let line = serde_json::to_string(record).unwrap_or_default();
    if !line.chars().any(breaks_lines) {
        return line;
    }
    let mut escaped = String::with_capacity(line.len() + 32);
    for c in line.chars() {
        if breaks_lines(c) {
            escaped.push_str(&format!("\\u{:04x}", u32::from(c)));
        } else {
            escaped.push(c);
        }
    }
    escaped
}

/// The record in CEF:
/// `CEF:0|Palisade|Palisade|VERSION|SIGNATURE|NAME|SEVERITY|EXTENSIONS`.
pub fn cef(record: &Record) -> String {
    let (signature, name) = match &record.what {
        What::Finding { reason, .. } => (format!("finding:{}", record.plugin.name), reason.clone()),
        What::Action { action, .. } => (format!("action:{action}"), action_name(action)),
        What::OperatorAction {
            operator,
            request,
            outcome,
            ..
        } => (
            format!("operator:{request}"),
            format!("{request} by operator {operator}: {outcome}"),
        ),
    };
    let mut extensions = vec![
        ("rt", record_millis(record)),
        ("externalId", record.id.to_string()),
        ("suser", record.device.id.clone()),
        ("cs1Label", "deviceClass".to_owned()),
        ("cs1", record.device.class.clone()),
        ("cs2Label", "zone".to_owned()),
        ("cs2", record.device.zone.clone()),
        ("cs3Label", "route".to_owned()),
        ("cs3", record.route.clone()),
        ("cn1Label", "session".to_owned()),
        ("cn1", record.session.to_string()),
        ("cs4Label", "plugin".to_owned()),
        (
            "cs4",
            match &record.plugin.version {
                Some(v) => format!("{}@{v}", record.plugin.name),
                None => record.plugin.name.clone(),
            },
        ),
    ];
    if let Some(event) = &record.event {
        extensions.push(("cs5Label", "event".to_owned()));
        extensions.push(("cs5", event.kind.clone()));
        extensions.push(("cs6Label", "attributes".to_owned()));
        extensions.push((
            "cs6",
            serde_json::Value::Object(event.attributes.clone()).to_string(),
        ));
    }
    match &record.what {
        What::Finding { score, reason, .. } => {
            extensions.push(("msg", reason.clone()));
            extensions.push(("cfp1Label", "score".to_owned()));
            extensions.push(("cfp1", format!("{score:.3}")));
        }
        What::Action { action, detail } => {
            extensions.push(("act", action.clone()));
            if let Some(detail) = detail {
                extensions.push(("msg", detail.clone()));
            }
        }
        // An operator's record has no event: the operator and the
        // request's arguments take the event's custom strings.
        What::OperatorAction {
            operator,
            role,
            request,
            arguments,
            outcome,
            reason,
        } => {
            extensions.push(("cs5Label", "operator".to_owned()));
            extensions.push(("cs5", operator.clone()));
            extensions.push(("cs6Label", "arguments".to_owned()));
            extensions.push((
                "cs6",
                serde_json::Value::Object(arguments.clone()).to_string(),
            ));
            extensions.push(("spriv", role.clone()));
            extensions.push(("act", request.clone()));
            extensions.push(("outcome", outcome.clone()));
            if let Some(reason) = reason {
                extensions.push(("reason", reason.clone()));
            }
        }
    }
    let extensions: Vec<String> = extensions
        .into_iter()
        .map(|(key, value)| format!("{key}={}", escape_extension(&value)))
        .collect();
    format!(
        "CEF:0|{VENDOR}|{PRODUCT}|{}|{}|{}|{}|{}",
        escape_header(env!("CARGO_PKG_VERSION")),
        escape_header(&signature),
        escape_header(&name),
        cef_severity(record.severity()),
        extensions.join(" ")
    )
}

/// The record as an RFC 5424 syslog message from `hostname`, its body in
/// CEF.
pub fn syslog(record: &Record, hostname: &str) -> String {
    let priority = u16::from(FACILITY) * 8 + u16::from(syslog_severity(record.severity()));
    let msgid = match record.what {
        What::Finding { .. } => "finding",
        What::Action { .. } => "action",
        What::OperatorAction { .. } => "operator-action",
    };
    format!(
        "<{priority}>1 {} {} palisade - {msgid} [palisade@32473 id=\"{}\" device=\"{}\"] {}",
        record.time,
        header_field(hostname),
        record.id,
        escape_param(&record.device.id),
        cef(record),
    )
}

fn action_name(action: &str) -> String {
    match action {
        "quarantine-device" => "device quarantined".into(),
        "close-session" => "session closed".into(),
        "drop-frame" => "frame dropped".into(),
        "alert" => "alert".into(),
        other => other.into(),
    }
}

fn record_millis(record: &Record) -> String {
    record
        .time
        .parse::<jiff::Timestamp>()
        .map(|t| t.as_millisecond().to_string())
        .unwrap_or_default()
}

/// CEF severity, 0 to 10.
fn cef_severity(severity: Severity) -> u8 {
    match severity {
        Severity::Info => 1,
        Severity::Low => 3,
        Severity::Medium => 5,
        Severity::High => 8,
        Severity::Critical => 10,
    }
}

/// Syslog severity, 0 (emergency) to 7 (debug).
fn syslog_severity(severity: Severity) -> u8 {
    match severity {
        Severity::Critical => 2,
        Severity::High => 3,
        Severity::Medium => 4,
        Severity::Low => 5,
        Severity::Info => 6,
    }
}

/// CEF header fields escape `\` and `|`, and hold no line breaks: those
/// become spaces, and other characters that break or reorder a line are
/// written as escapes ([`push_escape`]).
fn escape_header(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '|' => out.push_str("\\|"),
            '\n' | '\r' => out.push(' '),
            c if breaks_lines(c) => push_escape(&mut out, c),
            c => out.push(c),
        }
    }
    out
}

/// CEF extension values escape `\` and `=`, and spell line breaks `\n`
/// and `\r`; other characters that break or reorder a line are written as
/// escapes ([`push_escape`]).
fn escape_extension(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '=' => out.push_str("\\="),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if breaks_lines(c) => push_escape(&mut out, c),
            c => out.push(c),
        }
    }
    out
}

/// RFC 5424 structured-data parameter values escape `"`, `\` and `]`; the
/// characters that break or reorder a line are written as escapes
/// ([`push_escape`]): a line break would end the message on a receiver
/// that frames messages by lines.
fn escape_param(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if breaks_lines(c) {
            push_escape(&mut out, c);
            continue;
        }
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Whether `c` breaks or reorders a line where a SIEM shows it, or cuts a
/// message short on a receiver: a control character (NUL, escape
/// sequences, NEL, line breaks), the Unicode line and paragraph
/// separators, the bidirectional marks, embeddings, overrides and
/// isolates. The same characters the log import escapes.
fn breaks_lines(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{061c}'
        )
        || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Write `c` as `\uXXXX`, its backslash escaped as CEF and syslog's
/// structured data escape one (`\\`): a receiver reads `\u001b`, which JSON (the
/// attributes in `cs6`) reads back as the character itself, and a person
/// as its code. Every such character is in the Basic Multilingual Plane,
/// so four digits spell it.
fn push_escape(out: &mut String, c: char) {
    out.push_str(&format!("\\\\u{:04x}", u32::from(c)));
}

/// RFC 5424 header fields are printable ASCII without spaces, at most 255
/// characters; `-` stands for none.
fn header_field(s: &str) -> String {
    let field: String = s
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(255)
        .collect();
    if field.is_empty() { "-".into() } else { field }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use crate::audit::{AuditLog, severity_name, tests::entries};
    use crate::store::Store;

    fn record() -> Record {
        let store = Store::temporary().unwrap();
        let mut entries = entries(1);
        if let What::Finding { reason, .. } = &mut entries[0].what {
            *reason = "write to 40001 | a=b \\ new\nline".into();
        }
        AuditLog::open(&store)
            .unwrap()
            .append(entries)
            .unwrap()
            .remove(0)
    }

    #[test]
    fn cef_escapes_headers_and_extensions() {
        let cef = cef(&record());
        assert!(cef.starts_with("CEF:0|Palisade|Palisade|"), "{cef}");
        assert!(
            cef.contains("|finding:baseline|write to 40001 \\| a=b \\\\ new line|8|"),
            "{cef}"
        );
        assert!(cef.contains(" suser=plc-4 "), "{cef}");
        assert!(
            cef.contains("msg=write to 40001 | a\\=b \\\\ new\\nline"),
            "{cef}"
        );
        assert!(cef.contains("cs5=modbus.write"), "{cef}");
        assert!(!cef.contains('\n'));
    }

    #[test]
    fn syslog_is_rfc5424_with_a_cef_body() {
        let line = syslog(&record(), "gate 1");
        // facility 13 (log audit) * 8 + severity 3 (error) for a high finding
        assert!(line.starts_with("<107>1 "), "{line}");
        let fields: Vec<&str> = line.splitn(8, ' ').collect();
        assert!(fields[1].parse::<jiff::Timestamp>().is_ok(), "{line}");
        assert_eq!(&fields[2..6], ["gate1", "palisade", "-", "finding"]);
        assert_eq!(fields[6], "[palisade@32473", "{line}");
        let secfrac = fields[1].split('.').nth(1).unwrap_or_default();
        assert!(secfrac.len() <= 7, "at most 6 digits and Z: {line}");
        assert!(fields[7].starts_with("id=\""), "{line}");
        assert!(line.contains("] CEF:0|"), "{line}");
    }

    /// Characters that break or reorder a line, from a plugin's reason, an
    /// event's kind and attribute names, and a device's identifier: none
    /// reaches a syslog message raw, and the formats stay valid.
    #[test]
    fn every_control_and_separator_is_escaped_in_cef_and_syslog() {
        let hostile = "a\0b\tc\u{1b}[31md\u{7f}e\u{85}f\u{2028}g\u{2029}h\u{202e}i\rj\nk";
        let mut record = record_with(&[(hostile, hostile)]);
        record.device.id = hostile.into();
        Arc::make_mut(record.event.as_mut().unwrap()).kind = format!("mqtt.{hostile}");
        if let What::Finding { reason, .. } = &mut record.what {
            *reason = hostile.into();
        }
        let line = syslog(&record, "gate-1");
        let raw: Vec<char> = line.chars().filter(|&c| breaks_lines(c)).collect();
        assert!(raw.is_empty(), "{raw:?} in {line}");
        assert!(
            line.contains("device=\"a\\\\u0000b\\\\u0009c\\\\u001b[31m"),
            "{line}"
        );
        assert!(line.contains("msg=a\\\\u0000b\\\\u0009c\\\\u001b[31md\\\\u007fe\\\\u0085f\\\\u2028g\\\\u2029h\\\\u202ei\\rj\\nk"), "{line}");
        // The header keeps its fields: no `|` but the separators.
        let cef = line.split("] ").nth(1).unwrap();
        assert_eq!(cef.split('|').count(), 8, "{cef}");
        // The attributes in cs6 read back as JSON, with the characters.
        let cs6 = line
            .split(" cs6=")
            .nth(1)
            .unwrap()
            .split(" msg=")
            .next()
            .unwrap();
        let json = cs6.replace("\\\\", "\\").replace("\\=", "=");
        let attributes: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(attributes[hostile], hostile, "{json}");
    }

    /// A record whose event carries `attributes`.
    fn record_with(attributes: &[(&str, &str)]) -> Record {
        let mut record = record();
        let event = Arc::make_mut(record.event.as_mut().unwrap());
        for (name, value) in attributes {
            event.attributes.insert((*name).to_owned(), (*value).into());
        }
        record
    }

    #[test]
    fn a_huge_attribute_is_cut_and_every_format_stays_valid() {
        // Escapes on both sides of the cut.
        let topic = format!("a=b\\c|\"]{}", "x\\=é".repeat(20_000));
        let record = record_with(&[("topic", &topic)]);
        let budget = MAX_MESSAGE_BYTES;

        let line = fitted(&record, budget, |r| syslog(r, "gate-1"));
        assert!(line.len() <= budget, "{}", line.len());
        assert!(line.starts_with("<107>1 "), "{line}");
        assert!(line.contains("[palisade@32473 id=\""), "{line}");
        assert!(line.contains("...[truncated "), "visible marker");
        assert!(line.contains(&format!("externalId={} ", record.id)));
        assert!(!line.contains('\n'));
        // CEF: every `=` in an extension value is escaped.
        let cs6 = line.split(" cs6=").nth(1).unwrap();
        let value = cs6.split(" msg=").next().unwrap();
        let mut chars = value.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => assert!(matches!(chars.next(), Some('\\' | '=' | 'n' | 'r'))),
                '=' => panic!("unescaped = in {value}"),
                _ => {}
            }
        }

        let json = fitted(&record, budget, json_line);
        assert!(json.len() <= budget, "{}", json.len());
        let back: Record = serde_json::from_str(&json).unwrap();
        let cut = back.event.unwrap().attributes["topic"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(cut.starts_with("a=b\\c|\"]x"), "{cut}");
        assert!(cut.ends_with(" bytes]"), "{cut}");
        assert_eq!(back.id, record.id);
    }

    #[test]
    fn a_flood_of_attributes_is_left_out_with_a_note() {
        let names: Vec<String> = (0..5_000).map(|i| format!("attribute-{i}")).collect();
        let attributes: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
        let record = record_with(&attributes);
        let json = fitted(&record, MAX_MESSAGE_BYTES, json_line);
        assert!(json.len() <= MAX_MESSAGE_BYTES, "{}", json.len());
        let back: Record = serde_json::from_str(&json).unwrap();
        let note = &back.event.unwrap().attributes["truncated"];
        assert!(
            note.as_str().unwrap().contains("attributes left out"),
            "{note}"
        );
        // A record that fits is left whole.
        assert_eq!(fitted(&record, usize::MAX, json_line), json_line(&record));
    }

    #[test]
    fn json_lines_show_no_separator_or_bidi_control_raw() {
        let mut record = record();
        let hostile = "a\u{2028}b\u{202e}c\u{85}d\u{7f}e\u{2067}f\u{1b}g";
        if let What::Finding { reason, .. } = &mut record.what {
            *reason = hostile.to_owned();
        }
        let line = json_line(&record);
        assert!(!line.chars().any(breaks_lines), "{line:?}");
        assert!(
            line.contains(r"a\u2028b\u202ec\u0085d\u007fe\u2067f\u001bg"),
            "{line}"
        );
        assert_eq!(serde_json::from_str::<Record>(&line).unwrap(), record);
    }

    #[test]
    fn json_lines_read_back_as_the_record() {
        let record = record();
        let line = json_line(&record);
        assert!(!line.contains('\n'));
        assert_eq!(serde_json::from_str::<Record>(&line).unwrap(), record);
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["what"]["type"], "finding");
        assert_eq!(value["what"]["severity"], "high");
        assert_eq!(severity_name(Severity::High), "high");
    }
}
