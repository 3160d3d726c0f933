//! `palisade device`: the device registry.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use serde_json::Value;

use super::console;
use crate::admin::Request;
use crate::identity::{Device, format_time};

/// `palisade device` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// List every device.
    List,
    /// Show one device's record.
    Show {
        /// The device id.
        device: String,
    },
    /// Quarantine a device: its live sessions close at once and it is
    /// refused until released. Survives restarts.
    Quarantine {
        /// The device id.
        device: String,
    },
    /// Release a device from quarantine.
    Release {
        /// The device id.
        device: String,
    },
    /// Enroll a device whose certificate an external (enterprise) CA
    /// issued; the certificate names it by a urn:palisade:device URI or its
    /// subject CN.
    Add {
        /// The device id.
        device: String,
        /// The device class.
        #[arg(long)]
        class: String,
        /// The zone.
        #[arg(long, default_value = "default")]
        zone: String,
    },
}

pub(crate) fn run(data: &Path, command: &Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::List => {
            let (answer, _) = console(data, &Request::DeviceList)?;
            let devices: Vec<Device> =
                serde_json::from_value(answer.get("devices").cloned().unwrap_or_default())
                    .context("reading the registry's answer")?;
            println!(
                "{:<24} {:<16} {:<16} {:<12} {:<9} LAST-SEEN",
                "DEVICE", "CLASS", "ZONE", "STATE", "CA"
            );
            for d in devices {
                let ca = match d.authority {
                    crate::identity::Authority::Site => "site",
                    crate::identity::Authority::External => "external",
                };
                println!(
                    "{:<24} {:<16} {:<16} {:<12} {:<9} {}",
                    d.id,
                    d.class,
                    d.zone,
                    d.state.to_string(),
                    ca,
                    d.last_seen.map_or_else(|| "never".into(), format_time)
                );
            }
        }
        Command::Show { device } => {
            let (answer, _) = console(
                data,
                &Request::DeviceShow {
                    device: device.clone(),
                },
            )?;
            println!("{}", serde_json::to_string_pretty(&answer)?);
        }
        Command::Quarantine { device } => {
            let (answer, remote) = console(
                data,
                &Request::Quarantine {
                    device: device.clone(),
                },
            )?;
            let closed = answer.get("sessions-closed").and_then(Value::as_u64);
            match (remote, closed) {
                (true, Some(n)) => println!("quarantined {device}; {n} live session(s) closed"),
                _ => println!("quarantined {device}"),
            }
        }
        Command::Release { device } => {
            console(
                data,
                &Request::Release {
                    device: device.clone(),
                },
            )?;
            println!("released {device}");
        }
        Command::Add {
            device,
            class,
            zone,
        } => {
            console(
                data,
                &Request::DeviceAdd {
                    device: device.clone(),
                    class: class.clone(),
                    zone: zone.clone(),
                },
            )?;
            println!("enrolled {device} (class {class}, zone {zone}) for an external CA");
        }
    }
    Ok(ExitCode::SUCCESS)
}
