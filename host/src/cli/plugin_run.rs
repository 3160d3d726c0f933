//! `palisade plugin run`: the plugin author's offline loop. A recorded
//! stream goes through the same pipeline a live session uses, read in
//! chunks as a socket would deliver it.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use serde_json::{Value as Json, json};

use crate::plugins::{
    Action, Direction, EventRef, Limits, Plugin, Runtime, RuntimeConfig, Session, Severity,
    first_party,
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
    /// The recorded bytes of one direction of one session.
    #[arg(long)]
    input: PathBuf,
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
    let mut pipeline = Pipeline::new(session, parser, detectors, responders, args.max_frame);
    let mut input =
        File::open(&args.input).with_context(|| format!("opening {}", args.input.display()))?;
    let mut out = BufWriter::new(std::io::stdout().lock());
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
                line(&mut out, json!({"type": "error", "error": e.to_string()}))?;
                code = ExitCode::FAILURE;
                break;
            }
        };
        print(&mut out, &inspected)?;
        if inspected.malformed.is_some() {
            code = ExitCode::FAILURE;
            break;
        }
    }
    let pending = pipeline.pending(direction);
    if pending > 0 && code == ExitCode::SUCCESS {
        line(&mut out, json!({"type": "incomplete", "bytes": pending}))?;
    }
    out.flush()?;
    store.flush().context("saving plugin state")?;
    Ok(code)
}

/// Load `plugin`, a path to a component or a first-party plugin's name.
pub(crate) fn load(runtime: &Runtime, plugin: &str) -> anyhow::Result<Plugin> {
    let (name, bytes) = match first_party::component(plugin) {
        Some(bytes) if !Path::new(plugin).exists() => (plugin.to_owned(), bytes.to_vec()),
        _ => {
            let path = Path::new(plugin);
            let bytes = std::fs::read(path).with_context(|| {
                let names: Vec<_> = first_party::names().collect();
                format!(
                    "reading plugin {plugin} (not a file, nor one of {})",
                    names.join(", ")
                )
            })?;
            let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or(plugin);
            (stem.replace('_', "-"), bytes)
        }
    };
    Ok(runtime.load(&name, &bytes, Limits::default())?)
}

fn print(out: &mut impl Write, inspected: &Inspected) -> anyhow::Result<()> {
    for (span, event) in inspected.frames() {
        line(
            out,
            json!({"type": "event", "offset": span.offset, "len": span.len, "event": event_json(event)}),
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
            json!({"type": "malformed", "offset": offset, "reason": m.reason}),
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
