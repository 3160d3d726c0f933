//! `palisade plugin config`: a plugin's settings, kept as text under
//! `config/KEY` in the plugin's own store, where the SDK's
//! `host::config::get` reads them. A running appliance (or, with
//! `--remote`, one elsewhere) changes them as an admin request; plugins
//! see a change from their next call.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use serde_json::Value;

use super::console;
use crate::admin::Request;

/// Arguments of `palisade plugin config`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The plugin's name.
    name: String,
    /// The setting; without it, every setting is printed.
    key: Option<String>,
    /// The new value; without it, the setting is printed.
    value: Option<String>,
    /// Remove the setting, so the plugin's default applies.
    #[arg(long, conflicts_with = "value", requires = "key")]
    unset: bool,
}

pub(crate) fn run(data: &Path, args: &Args) -> anyhow::Result<ExitCode> {
    crate::store::create_data_dir(data)?;
    let request = Request::PluginConfig {
        name: args.name.clone(),
        key: args.key.clone(),
        value: args.value.clone(),
        unset: args.unset,
    };
    let (answer, _) = console(data, &request)?;
    let mut out = std::io::stdout().lock();
    if let Some(settings) = answer.get("settings").and_then(Value::as_object) {
        for (key, value) in settings {
            writeln!(out, "{key} = {}", value.as_str().unwrap_or_default())?;
        }
    } else if let Some(value) = answer.get("value").filter(|_| args.value.is_none()) {
        writeln!(out, "{}", value.as_str().unwrap_or_default())?;
    }
    Ok(ExitCode::SUCCESS)
}
