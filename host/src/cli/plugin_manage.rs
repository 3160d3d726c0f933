//! `palisade plugin list|install|activate|rollback|remove|shadow|promote`:
//! the operator's plugin commands, sent to the running appliance's admin
//! socket (or, with no appliance running, applied to its data directory
//! for the next start).

use std::path::Path;
use std::process::ExitCode;

use serde_json::Value;

use super::{PluginCommand, console};
use crate::admin::Request;

/// Arguments of `palisade plugin install`.
#[derive(Debug, clap::Args)]
pub struct Install {
    /// NAME or NAME@VERSION; the newest version when none is given.
    plugin: String,
    /// Run it as a shadow beside the active version instead of activating
    /// it; `palisade plugin promote` makes it active.
    #[arg(long)]
    shadow: bool,
}

/// Arguments of `palisade plugin shadow`.
#[derive(Debug, clap::Args)]
pub struct Shadow {
    /// NAME@VERSION to shadow with, or NAME with `--stop`.
    plugin: String,
    /// Stop shadowing.
    #[arg(long)]
    stop: bool,
}

fn split(plugin: &str) -> (String, Option<String>) {
    match plugin.split_once('@') {
        Some((name, version)) => (name.to_owned(), Some(version.to_owned())),
        None => (plugin.to_owned(), None),
    }
}

fn with_version(plugin: &str) -> anyhow::Result<(String, String)> {
    match split(plugin) {
        (name, Some(version)) => Ok((name, version)),
        (name, None) => anyhow::bail!("name the version: {name}@VERSION"),
    }
}

pub(crate) fn run(data: &Path, command: PluginCommand) -> anyhow::Result<ExitCode> {
    let request = match command {
        PluginCommand::List => {
            let (answer, _) = console(data, &Request::PluginList)?;
            print_list(&answer);
            return Ok(ExitCode::SUCCESS);
        }
        PluginCommand::Install(args) => {
            let (name, version) = split(&args.plugin);
            Request::PluginInstall {
                name,
                version,
                shadow: args.shadow,
            }
        }
        PluginCommand::Activate { plugin } => {
            let (name, version) = with_version(&plugin)?;
            Request::PluginActivate { name, version }
        }
        PluginCommand::Rollback { name } => Request::PluginRollback { name },
        PluginCommand::Remove { plugin } => {
            let (name, version) = with_version(&plugin)?;
            Request::PluginRemove { name, version }
        }
        PluginCommand::Shadow(args) => {
            let (name, version) = split(&args.plugin);
            anyhow::ensure!(
                args.stop == version.is_none(),
                "either NAME@VERSION to shadow with, or NAME --stop"
            );
            Request::PluginShadow { name, version }
        }
        PluginCommand::Promote { name } => Request::PluginPromote { name },
        PluginCommand::Run(_) | PluginCommand::Config(_) | PluginCommand::New(_) => {
            anyhow::bail!("not a plugin management command")
        }
    };
    let (answer, remote) = console(data, &request)?;
    println!("{}", serde_json::to_string_pretty(&answer)?);
    if !remote {
        eprintln!("(no appliance running: the change applies at its next start)");
    }
    Ok(ExitCode::SUCCESS)
}

fn print_list(answer: &Value) {
    let empty = Vec::new();
    let plugins = answer
        .get("plugins")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    println!(
        "{:<16} {:<10} {:<14} {:<14} {:<8} {:<7} {:<24} INSTALLED",
        "NAME", "WORLD", "ACTIVE", "PUBLISHER", "STATE", "STRIKES", "ROUTES"
    );
    let s = |v: &Value, k: &str| match v.get(k) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".into(),
        Some(other) => other.to_string(),
    };
    for p in plugins {
        let routes = (p.get("routes").and_then(Value::as_array))
            .map(|r| {
                r.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        let installed = (p.get("installed").and_then(Value::as_array))
            .map(|r| {
                r.iter()
                    .filter_map(|v| v.get("version").and_then(Value::as_str))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        println!(
            "{:<16} {:<10} {:<14} {:<14} {:<8} {:<7} {:<24} {}",
            s(p, "name"),
            s(p, "world"),
            s(p, "active"),
            s(p, "publisher"),
            s(p, "state"),
            s(p, "strikes"),
            if routes.is_empty() { "-" } else { &routes },
            if installed.is_empty() {
                "-"
            } else {
                &installed
            },
        );
        if let Some(shadow) = p.get("shadow") {
            println!(
                "{:<16} shadow {}: {}",
                "",
                s(shadow, "version"),
                shadow
                    .get("report")
                    .map(Value::to_string)
                    .unwrap_or_default()
            );
        }
    }
}
