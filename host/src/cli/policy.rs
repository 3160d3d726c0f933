//! `palisade policy`: show the active policy, check a policy file against
//! the schema (for a site's own pipelines), and try one on recorded events.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use serde_json::Value as Json;

use crate::plugins::{Batch, Device, Direction, Value};
use crate::policy::vocabulary::{self, Type};
use crate::policy::{EMBEDDED_DEFAULT, POLICY_FILE, Policy, schema_source};

/// `palisade policy` commands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Print the active policy.
    Show,
    /// Print the schema policies are checked against.
    Schema,
    /// Check a policy file against the schema; exit non-zero with each
    /// problem's line and reason when it is wrong.
    Check {
        /// The policy file.
        file: PathBuf,
    },
    /// Decide recorded events with a policy: one line per event, allow or
    /// deny and why.
    Test(TestArgs),
}

/// Arguments of `palisade policy test`.
#[derive(Debug, clap::Args)]
pub struct TestArgs {
    /// The policy file.
    file: PathBuf,
    /// Events as JSON lines, as `palisade plugin run` prints them.
    #[arg(long)]
    events: PathBuf,
    /// The device the events are from.
    #[arg(long, default_value = "device-1")]
    device: String,
    /// The device's class.
    #[arg(long, default_value = "default")]
    class: String,
    /// The device's zone.
    #[arg(long, default_value = "default")]
    zone: String,
    /// The Modbus/TCP Security role the device's certificate carries.
    #[arg(long)]
    role: Option<String>,
    /// The route the events travel on (default: their protocol).
    #[arg(long)]
    route: Option<String>,
    /// Which way the events travel.
    #[arg(long, default_value = "to-upstream", value_parser = ["to-upstream", "to-device"])]
    direction: String,
}

/// Run `command` with the state in `data`.
pub(crate) fn run(data: &Path, command: &Command) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    match command {
        Command::Show => {
            let path = data.join(POLICY_FILE);
            match std::fs::read_to_string(&path) {
                Ok(source) => {
                    writeln!(out, "// The site's policy, {}", path.display())?;
                    out.write_all(source.as_bytes())?;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    writeln!(
                        out,
                        "// No {} in the data directory: the embedded default is active.",
                        POLICY_FILE
                    )?;
                    out.write_all(EMBEDDED_DEFAULT.as_bytes())?;
                }
                Err(e) => return Err(e).context(format!("reading {}", path.display())),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Schema => {
            out.write_all(schema_source().as_bytes())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { file } => match read_policy(file)? {
            Ok(_) => {
                writeln!(
                    out,
                    "{}: the policy checks against the schema",
                    file.display()
                )?;
                Ok(ExitCode::SUCCESS)
            }
            Err(problems) => {
                for line in problems {
                    eprintln!("{line}");
                }
                Ok(ExitCode::FAILURE)
            }
        },
        Command::Test(args) => test(args, &mut out),
    }
}

/// The policy in `file`, or its problems as `FILE:LINE:COLUMN: reason`.
fn read_policy(file: &Path) -> anyhow::Result<Result<Policy, Vec<String>>> {
    let source =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    Ok(Policy::parse(&source).map_err(|e| {
        e.problems
            .iter()
            .map(|p| format!("{}:{}:{}: {}", file.display(), p.line, p.column, p.reason))
            .collect()
    }))
}

fn test(args: &TestArgs, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let policy = match read_policy(&args.file)? {
        Ok(p) => p,
        Err(problems) => {
            for line in problems {
                eprintln!("{line}");
            }
            return Ok(ExitCode::FAILURE);
        }
    };
    let device = Device {
        id: args.device.clone(),
        class: args.class.clone(),
        zone: args.zone.clone(),
    };
    let direction = match args.direction.as_str() {
        "to-device" => Direction::ToDevice,
        _ => Direction::ToUpstream,
    };
    let events = std::fs::File::open(&args.events)
        .with_context(|| format!("reading {}", args.events.display()))?;
    let mut subjects = std::collections::HashMap::new();
    for (number, line) in BufReader::new(events).lines().enumerate() {
        let line = line?;
        let json: Json = serde_json::from_str(&line).with_context(|| {
            format!("{}:{}: not a JSON line", args.events.display(), number + 1)
        })?;
        // `plugin run` prints findings and actions too; only events count.
        let is_event = json.get("type").and_then(Json::as_str) == Some("event");
        let Some(event) = json.get("event").filter(|_| is_event) else {
            continue;
        };
        let batch = batch_of(event)
            .with_context(|| format!("{}:{}: not an event", args.events.display(), number + 1))?;
        let Some(event) = batch.get(0) else { continue };
        let protocol = event.protocol().to_owned();
        let route = args.route.clone().unwrap_or_else(|| protocol.clone());
        let subject = subjects
            .entry((route.clone(), protocol.clone()))
            .or_insert_with(|| policy.subject(&device, args.role.as_deref(), &route, &protocol));
        let decision = policy.event(subject, direction, event);
        let verdict = serde_json::json!({
            "line": number + 1,
            "kind": event.kind(),
            "decision": if decision.allowed { "allow" } else { "deny" },
            "reason": decision.reason,
        });
        writeln!(out, "{verdict}")?;
    }
    Ok(ExitCode::SUCCESS)
}

/// One event from its JSON (`{"kind": ..., "attributes": {...}}`), typed by
/// the vocabulary where it knows the attribute.
pub(crate) fn batch_of(event: &Json) -> anyhow::Result<Batch> {
    let kind = event["kind"].as_str().context("no kind")?;
    let known = vocabulary::find(kind);
    let type_of = |name: &str| {
        known.and_then(|k| {
            k.attributes()
                .find(|((n, _), _)| *n == name)
                .map(|((_, t), _)| t)
        })
    };
    let mut batch = Batch::new();
    let mut writer = batch.push(kind);
    let empty = serde_json::Map::new();
    let attributes = event["attributes"].as_object().unwrap_or(&empty);
    for (name, value) in attributes {
        let values = match value {
            Json::Array(values) => values.as_slice(),
            one => std::slice::from_ref(one),
        };
        for value in values {
            match (type_of(name), value) {
                (Some(Type::Bytes), Json::String(hex)) => {
                    let bytes = super::decode_hex(hex.as_bytes())
                        .map_err(anyhow::Error::msg)
                        .context("bytes not in hex")?;
                    writer.value(name, Value::Bytes(&bytes));
                }
                (_, Json::String(t)) => {
                    writer.value(name, Value::Text(t));
                }
                (_, Json::Bool(f)) => {
                    writer.value(name, Value::Flag(*f));
                }
                (_, Json::Number(n)) => {
                    let i = n.as_i64().context("integer out of range")?;
                    writer.value(name, Value::Int(i));
                }
                _ => anyhow::bail!("attribute {name} is neither text, integer nor flag"),
            }
        }
    }
    Ok(batch)
}
