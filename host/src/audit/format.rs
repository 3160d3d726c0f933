//! How audit records look to a SIEM: JSON lines, and RFC 5424 syslog
//! messages whose body is ArcSight's Common Event Format (CEF), which most
//! SIEMs parse without configuration.

use super::{Record, What};
use crate::plugins::Severity;

/// The vendor and product a CEF header names.
const VENDOR: &str = "Palisade";
const PRODUCT: &str = "Palisade";

/// The syslog facility of audit messages: 13, "log audit".
pub const FACILITY: u8 = 13;

/// The record as one line of JSON, without the newline.
pub fn json_line(record: &Record) -> String {
    // A record is plain data; serialising it cannot fail.
    serde_json::to_string(record).unwrap_or_default()
}

/// The record in CEF:
/// `CEF:0|Palisade|Palisade|VERSION|SIGNATURE|NAME|SEVERITY|EXTENSIONS`.
pub fn cef(record: &Record) -> String {
    let (signature, name) = match &record.what {
        What::Finding { reason, .. } => (format!("finding:{}", record.plugin.name), reason.clone()),
        What::Action { action, .. } => (format!("action:{action}"), action_name(action)),
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

/// CEF header fields escape `\` and `|`, and hold no line breaks.
fn escape_header(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '|' => out.push_str("\\|"),
            '\n' | '\r' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// CEF extension values escape `\` and `=`, and spell line breaks `\n`.
fn escape_extension(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '=' => out.push_str("\\="),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out
}

/// RFC 5424 structured-data parameter values escape `"`, `\` and `]`.
fn escape_param(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
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
