//! `palisade plugin run`: the plugin author's offline loop. A recorded
//! stream goes through the same pipeline a live session uses, read in
//! chunks as a socket would deliver it; or, with `--datagrams`, recorded
//! datagrams (CoAP over UDP, say) go through it one by one.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use serde_json::{Value as Json, json};

use crate::plugins::{
    Action, CallError, Direction, EventRef, Limits, Plugin, Runtime, RuntimeConfig, Session,
    Severity, first_party,
};
use crate::session::{Inspected, Pipeline};
use crate::store::Store;

/// Arguments of `palisade plugin run`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The parser: a path to a component, or a first-party plugin's name.
    #[arg(long)]
    parser: String,
    /// A detector, the same way; may be repeated.
    #[arg(long)]
    detector: Vec<String>,
    /// A responder, the same way; may be repeated.
    #[arg(long)]
    responder: Vec<String>,
    /// The recorded bytes of one direction of one session; with
    /// `--datagrams`, its datagrams in hex.
    #[arg(long)]
    input: PathBuf,
    /// Read `--input` as datagrams, one per line in hex, as
    /// `tshark -r CAPTURE -T fields -e udp.payload` prints them (with or
    /// without `:` between bytes; blank lines are skipped), and give each
    /// to the parser as one datagram (CoAP over UDP, for example).
    #[arg(long, conflicts_with = "chunk")]
    datagrams: bool,
    /// Which way the recorded bytes travelled.
    #[arg(long, value_enum, default_value = "to-upstream")]
    direction: DirectionArg,
    /// Bytes handed to the parser per call, as a socket read would.
    #[arg(long, default_value_t = 4096)]
    chunk: usize,
    /// Largest frame buffered, in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    max_frame: usize,
    /// The device the stream is from.
    #[arg(long, default_value = "device-1")]
    device: String,
    /// The device's class.
    #[arg(long, default_value = "default")]
    class: String,
    /// The device's zone.
    #[arg(long, default_value = "default")]
    zone: String,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum DirectionArg {
    ToUpstream,
    ToDevice,
}

pub(crate) fn run(data: &Path, args: &Args) -> anyhow::Result<ExitCode> {
    crate::store::create_data_dir(data)
        .with_context(|| format!("creating the data directory {}", data.display()))?;
    let store = Store::open(&data.join("state")).context("opening the state database")?;
    let config = RuntimeConfig {
        cache_dir: Some(data.join("plugin-cache")),
        ..RuntimeConfig::default()
    };
    let runtime = Runtime::new(&config, store.clone()).context("starting the plugin runtime")?;
    let parser = load(&runtime, &args.parser)?;
    let detectors = args
        .detector
        .iter()
        .map(|d| load(&runtime, d))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let responders = args
        .responder
        .iter()
        .map(|r| load(&runtime, r))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let session = Session {
        id: 1,
        device: crate::plugins::Device {
            id: args.device.clone(),
            class: args.class.clone(),
            zone: args.zone.clone(),
        },
        route: parser.name().to_owned(),
    };
    let direction = match args.direction {
        DirectionArg::ToUpstream => Direction::ToUpstream,
        DirectionArg::ToDevice => Direction::ToDevice,
    };
    // A parser that cannot read datagrams, or a bad line, is reported
    // before anything runs.
    if args.datagrams && !parser.reads_datagrams() {
        anyhow::bail!(CallError::StreamsOnly {
            plugin: parser.name().to_owned()
        });
    }
    let datagrams = if args.datagrams {
        let text = std::fs::read_to_string(&args.input)
            .with_context(|| format!("reading {}", args.input.display()))?;
        let found = datagrams(&text)
            .with_context(|| format!("reading datagrams from {}", args.input.display()))?;
        Some(found)
    } else {
        None
    };
    let mut pipeline = Pipeline::new(session, parser, detectors, responders, args.max_frame);
    let mut out = BufWriter::new(std::io::stdout().lock());
    let code = match datagrams {
        Some(datagrams) => run_datagrams(&mut pipeline, direction, &datagrams, &mut out)?,
        None => run_stream(&mut pipeline, direction, args, &mut out)?,
    };
    out.flush()?;
    store.flush().context("saving plugin state")?;
    Ok(code)
}

/// Feed the recorded stream to the pipeline in chunks; stop at the first
/// malformed frame.
fn run_stream(
    pipeline: &mut Pipeline,
    direction: Direction,
    args: &Args,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let mut input =
        File::open(&args.input).with_context(|| format!("opening {}", args.input.display()))?;
    let mut chunk = vec![0; args.chunk.max(1)];
    let mut code = ExitCode::SUCCESS;
    loop {
        let n = input
            .read(&mut chunk)
            .with_context(|| format!("reading {}", args.input.display()))?;
        let Some(bytes) = chunk.get(..n).filter(|b| !b.is_empty()) else {
            break;
        };
        let inspected = match pipeline.push(direction, bytes) {
            Ok(i) => i,
            Err(e) => {
                line(out, json!({"type": "error", "error": e.to_string()}))?;
                code = ExitCode::FAILURE;
                break;
            }
        };
        print(out, &inspected, None)?;
        if inspected.malformed.is_some() {
            code = ExitCode::FAILURE;
            break;
        }
    }
    let pending = pipeline.pending(direction);
    if pending > 0 && code == ExitCode::SUCCESS {
        line(out, json!({"type": "incomplete", "bytes": pending}))?;
    }
    Ok(code)
}

/// Feed each datagram, found on its line of the input, to the pipeline. A
/// malformed datagram spoils only itself: the others are still parsed, and
/// the exit code says that one was.
fn run_datagrams(
    pipeline: &mut Pipeline,
    direction: Direction,
    datagrams: &[(usize, Vec<u8>)],
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let mut code = ExitCode::SUCCESS;
    for (number, datagram) in datagrams {
        let inspected = match pipeline.push_datagram(direction, datagram) {
            Ok(i) => i,
            Err(e) => {
                line(
                    out,
                    json!({"type": "error", "line": number, "error": e.to_string()}),
                )?;
                return Ok(ExitCode::FAILURE);
            }
        };
        print(out, &inspected, Some(*number))?;
        if inspected.malformed.is_some() {
            code = ExitCode::FAILURE;
        }
    }
    Ok(code)
}

/// The datagrams of `text`, one per line in hex, each with its line number
/// (from 1). Bytes may be separated by `:`; blank lines are skipped.
fn datagrams(text: &str) -> anyhow::Result<Vec<(usize, Vec<u8>)>> {
    let mut found = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let number = i + 1;
        let digits: Vec<u8> = (line.trim().bytes()).filter(|b| *b != b':').collect();
        if digits.is_empty() {
            continue;
        }
        let datagram =
            super::decode_hex(&digits).map_err(|e| anyhow::anyhow!("line {number}: {e}"))?;
        found.push((number, datagram));
    }
    Ok(found)
}

/// Load `plugin`: a path to a component when it has a `/` or ends in
/// `.wasm`, otherwise a first-party plugin's name. A bare name is never
/// looked for in the current directory: a file there named `mqtt` would
/// otherwise become the parser on the security path.
///
/// A component loaded from a path is named by its absolute path, which is
/// also the name its key-value store goes by: apart from every first-party
/// or installed plugin's (their names have no `/`), so that
/// `/opt/x/baseline.wasm` can neither read nor rewrite the first-party
/// baseline's profiles, and apart from another file's of the same name.
pub(crate) fn load(runtime: &Runtime, plugin: &str) -> anyhow::Result<Plugin> {
    let (name, bytes) = if is_path(plugin) {
        let path =
            std::path::absolute(plugin).with_context(|| format!("reading plugin {plugin}"))?;
        let bytes =
            std::fs::read(&path).with_context(|| format!("reading plugin {}", path.display()))?;
        (path.display().to_string(), std::borrow::Cow::Owned(bytes))
    } else {
        let bytes = first_party::component(plugin).with_context(|| {
            let names: Vec<_> = first_party::names().collect();
            format!(
                "{plugin} is not a first-party plugin ({}); a component's path has a / or ends in .wasm",
                names.join(", ")
            )
        })?;
        (plugin.to_owned(), std::borrow::Cow::Borrowed(bytes))
    };
    Ok(runtime.load(&name, &bytes, Limits::default())?)
}

/// Whether `plugin`, as a command line or a route names it, is a path to a
/// component rather than a first-party plugin's name.
fn is_path(plugin: &str) -> bool {
    plugin.contains('/') || plugin.ends_with(".wasm")
}

/// Print what a chunk became; `datagram` is the input line of the datagram
/// it was, if it was one.
fn print(
    out: &mut impl Write,
    inspected: &Inspected,
    datagram: Option<usize>,
) -> anyhow::Result<()> {
    let with_line = |mut value: Json| {
        if let (Some(n), Some(object)) = (datagram, value.as_object_mut()) {
            object.insert("line".into(), n.into());
        }
        value
    };
    for (span, event) in inspected.frames() {
        line(
            out,
            with_line(
                json!({"type": "event", "offset": span.offset, "len": span.len, "event": event_json(event)}),
            ),
        )?;
    }
    for (detector, f) in &inspected.findings {
        let offset = inspected.spans.get(f.event as usize).map(|s| s.offset);
        line(
            out,
            json!({"type": "finding", "detector": detector, "offset": offset, "severity": severity(f.severity), "score": (f64::from(f.score) * 1000.0).round() / 1000.0, "reason": f.reason}),
        )?;
    }
    for (responder, a) in &inspected.actions {
        line(
            out,
            json!({"type": "action", "responder": responder, "action": action_json(a)}),
        )?;
    }
    for e in &inspected.errors {
        line(out, json!({"type": "error", "error": e.to_string()}))?;
    }
    if let Some(m) = &inspected.malformed {
        let offset = inspected
            .spans
            .last()
            .map_or(0, |s| s.offset + u64::from(s.len));
        line(
            out,
            with_line(json!({"type": "malformed", "offset": offset, "reason": m.reason})),
        )?;
    }
    Ok(())
}

fn line(out: &mut impl Write, value: Json) -> anyhow::Result<()> {
    serde_json::to_writer(&mut *out, &value)?;
    out.write_all(b"\n")?;
    Ok(())
}

/// An event as JSON: attributes become an object; a name that repeats
/// (several SUBSCRIBE filters) becomes an array.
pub(crate) fn event_json(event: EventRef<'_>) -> Json {
    let attributes = crate::audit::attributes_json(event);
    json!({"protocol": event.protocol(), "kind": event.kind(), "attributes": attributes})
}

fn severity(s: Severity) -> &'static str {
    match s {
        Severity::Info => "info",
        Severity::Low => "low",
        Severity::Medium => "medium",
        Severity::High => "high",
        Severity::Critical => "critical",
    }
}

fn action_json(a: &Action) -> Json {
    match a {
        Action::Allow => json!("allow"),
        Action::Alert(m) => json!({"alert": m}),
        Action::DropFrame(i) => json!({"drop-frame": i}),
        Action::CloseSession => json!("close-session"),
        Action::QuarantineDevice => json!("quarantine-device"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A component from a path keeps its state apart from the first-party
    /// plugin its file is named after.
    #[test]
    fn a_component_from_a_path_is_named_by_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = Runtime::new(
            &crate::plugins::RuntimeConfig::default(),
            Store::temporary().unwrap(),
        )
        .unwrap();
        let file = dir.path().join("baseline.wasm");
        std::fs::write(&file, first_party::component("baseline").unwrap()).unwrap();
        let from_file = load(&runtime, file.to_str().unwrap()).unwrap();
        assert_eq!(from_file.name(), file.to_str().unwrap());
        assert_eq!(load(&runtime, "baseline").unwrap().name(), "baseline");
        let unknown = load(&runtime, "baselin").unwrap_err().to_string();
        assert!(unknown.contains("not a first-party plugin"), "{unknown}");
        assert!(is_path("x.wasm") && is_path("./mqtt") && !is_path("mqtt"));
    }

    #[test]
    fn datagrams_are_read_as_tshark_prints_them() {
        let text = "40011234b474656d70\n\n  60:00:12:34 \n";
        let found = datagrams(text).unwrap();
        assert_eq!(
            found,
            [
                (
                    1,
                    vec![0x40, 0x01, 0x12, 0x34, 0xb4, b't', b'e', b'm', b'p']
                ),
                (3, vec![0x60, 0x00, 0x12, 0x34]),
            ]
        );
    }

    #[test]
    fn a_bad_line_is_named() {
        let odd = datagrams("4001\n400\n").unwrap_err().to_string();
        assert_eq!(odd, "line 2: an odd number of hex digits");
        let bad = datagrams("4001\n\n40zz\n").unwrap_err().to_string();
        assert_eq!(bad, "line 3: `zz` is not a byte in hex");
    }
}
