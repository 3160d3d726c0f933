//! `palisade plugin config`: a plugin's settings, kept as text under
//! `config/KEY` in the plugin's own store, where the SDK's
//! `host::config::get` reads them.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

use crate::plugins::Limits;
use crate::store::Store;

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

const PREFIX: &str = "config/";

pub(crate) fn run(data: &Path, args: &Args) -> anyhow::Result<ExitCode> {
    crate::store::create_data_dir(data)?;
    let store = Store::open(&data.join("state")).context("opening the state database")?;
    let kv = store
        .plugin_kv(&args.name, Limits::default().kv_quota_bytes)
        .with_context(|| format!("opening the store of plugin {}", args.name))?;
    let mut out = std::io::stdout().lock();
    match (&args.key, &args.value) {
        (None, _) => {
            for (key, value) in kv.scan_prefix(PREFIX)? {
                let key = key.strip_prefix(PREFIX).unwrap_or(&key);
                writeln!(out, "{key} = {}", String::from_utf8_lossy(&value))?;
            }
        }
        (Some(key), None) if args.unset => {
            kv.delete(&format!("{PREFIX}{key}"))?;
        }
        (Some(key), None) => match kv.get(&format!("{PREFIX}{key}"))? {
            Some(value) => writeln!(out, "{}", String::from_utf8_lossy(&value))?,
            None => {
                eprintln!("{} has no setting {key}: its default applies", args.name);
                return Ok(ExitCode::FAILURE);
            }
        },
        (Some(key), Some(value)) => {
            kv.set(&format!("{PREFIX}{key}"), value.as_bytes())?;
        }
    }
    store.flush()?;
    Ok(ExitCode::SUCCESS)
}
