//! `palisade baseline`: what the baseline detector has learnt, exported as
//! policy a person can review and adopt, and findings accepted as normal.
//!
//! The profiles live in the detector's key-value store; these commands read
//! and amend it with the detector's own types, while the appliance is
//! stopped (the state database has one user at a time).

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};
use baseline::{Names, Profile, class_key, device_key};

use crate::audit::AuditLog;
use crate::plugins::Limits;
use crate::policy::Policy;
use crate::store::{PluginKv, Store};

/// The detector's name, which is its store's name.
const PLUGIN: &str = "baseline";

/// `palisade baseline` commands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Print a device's or a class's profile as JSON.
    Show(Whose),
    /// Print a profile as Cedar policy that permits what it holds.
    Export(Whose),
    /// Accept a finding as normal: its event joins the device's profile and
    /// its class's.
    Accept(AcceptArgs),
}

/// Whose profile.
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
pub struct Whose {
    /// A device's id.
    #[arg(long)]
    device: Option<String>,
    /// A device class.
    #[arg(long)]
    class: Option<String>,
}

/// Arguments of `palisade baseline accept`.
#[derive(Debug, clap::Args)]
pub struct AcceptArgs {
    /// The audit record of the finding.
    #[arg(long)]
    audit: u64,
}

fn store_of(data: &Path) -> anyhow::Result<(Store, PluginKv)> {
    let store = Store::open(&data.join("state")).context("opening the state database")?;
    let kv = store
        .plugin_kv(PLUGIN, Limits::default().kv_quota_bytes)
        .context("opening the baseline detector's store")?;
    Ok((store, kv))
}

fn load(kv: &PluginKv, key: &str) -> anyhow::Result<Option<Profile>> {
    let Some(bytes) = kv.get(key)? else {
        return Ok(None);
    };
    Ok(Some(
        Profile::decode(&bytes).with_context(|| format!("profile {key} is damaged"))?,
    ))
}

/// Run `command` with the state in `data`.
pub(crate) fn run(data: &Path, command: &Command) -> anyhow::Result<ExitCode> {
    let (store, kv) = store_of(data)?;
    let mut out = std::io::stdout().lock();
    match command {
        Command::Show(whose) | Command::Export(whose) => {
            let (key, scope, label) = match (&whose.device, &whose.class) {
                (Some(d), _) => (
                    device_key(d),
                    format!("principal == Device::{d:?}"),
                    d.clone(),
                ),
                (None, Some(c)) => (
                    class_key(c),
                    format!("principal in Class::{c:?}"),
                    format!("class {c}"),
                ),
                (None, None) => bail!("name a --device or a --class"),
            };
            let Some(profile) = load(&kv, &key)? else {
                bail!("the baseline detector has no profile of {label}");
            };
            if matches!(command, Command::Show(_)) {
                serde_json::to_writer_pretty(&mut out, &profile)?;
                writeln!(out)?;
                return Ok(ExitCode::SUCCESS);
            }
            let policy = profile.to_policy(&scope, &label);
            // What is exported must be adoptable as it is.
            Policy::parse(&policy)
                .map_err(|e| anyhow::anyhow!("exported policy does not check (a bug): {e}"))?;
            out.write_all(policy.as_bytes())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Accept(args) => {
            let log = AuditLog::open(&store)?;
            let record = log
                .after(args.audit.saturating_sub(1), 1)?
                .into_iter()
                .find(|r| r.id == args.audit)
                .with_context(|| format!("no audit record {}", args.audit))?;
            let Some(event) = &record.event else {
                bail!("audit record {} has no event to accept", args.audit);
            };
            let json = serde_json::json!({"kind": event.kind, "attributes": event.attributes});
            let batch = super::policy::batch_of(&json)?;
            let event = batch.get(0).context("the record's event is empty")?;
            let when = record
                .time
                .parse::<jiff::Timestamp>()
                .map(|t| u64::try_from(t.as_millisecond()).unwrap_or(0))
                .unwrap_or(0);
            for key in [
                device_key(&record.device.id),
                class_key(&record.device.class),
            ] {
                let mut profile = load(&kv, &key)?.unwrap_or_default();
                profile.learn(&record.route, &event, &Names::of(&batch), when);
                kv.set(&key, &profile.encode())
                    .map_err(|e| anyhow::anyhow!("storing {key}: {e}"))?;
            }
            store.flush()?;
            writeln!(
                out,
                "accepted as normal for {} ({}): {}",
                record.device.id, record.device.class, event
            )?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
