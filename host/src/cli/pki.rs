//! `palisade pki`: the site CA and device certificates.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rcgen::PublicKeyData;
use serde_json::Value;

use super::console;
use crate::admin::Request;
use crate::identity::{Device, Pki, format_time};

/// `palisade pki` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Create the site CA in the data directory (once; `serve` does it too).
    Init,
    /// Issue a certificate for a device, enrolling it if new, and write
    /// `cert.pem`, `key.pem` and `ca.pem` to `--out`.
    Issue(IssueArgs),
    /// Revoke a device and every certificate issued to it; its live
    /// sessions close at once.
    Revoke {
        /// The device id.
        device: String,
    },
    /// List the certificates issued to every device.
    List,
}

/// Arguments of `palisade pki issue`.
#[derive(Debug, clap::Args)]
pub struct IssueArgs {
    /// The device id: 1 to 64 of A-Z a-z 0-9 . _ -
    pub(crate) device: String,
    /// The device class, which the connection policy matches.
    #[arg(long)]
    pub(crate) class: String,
    /// The zone the device sits in.
    #[arg(long, default_value = "default")]
    pub(crate) zone: String,
    /// Lifetime in hours; the device renews at about two thirds of it.
    #[arg(long, default_value_t = 168)]
    pub(crate) hours: u64,
    /// A Modbus/TCP Security role for the certificate to carry (extension
    /// 1.3.6.1.4.1.50316.802.1).
    #[arg(long)]
    pub(crate) role: Option<String>,
    /// Directory to write cert.pem, key.pem (mode 0600) and ca.pem to.
    #[arg(long)]
    pub(crate) out: PathBuf,
}

pub(crate) fn run(data: &Path, command: &Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Init => {
            crate::store::create_data_dir(data)
                .with_context(|| format!("creating the data directory {}", data.display()))?;
            let (_, created) = Pki::init(data)?;
            let ca = data.join("pki").join("ca.pem");
            if created {
                println!("created the site CA: {}", ca.display());
            } else {
                println!("the site CA exists already: {}", ca.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Issue(args) => issue(data, args),
        Command::Revoke { device } => {
            let (answer, remote) = console(
                data,
                &Request::Revoke {
                    device: device.clone(),
                },
            )?;
            let closed = answer.get("sessions-closed").and_then(Value::as_u64);
            match (remote, closed) {
                (true, Some(n)) => println!("revoked {device}; {n} live session(s) closed"),
                _ => println!("revoked {device}"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::List => {
            let (answer, _) = console(data, &Request::PkiList)?;
            let devices: Vec<Device> =
                serde_json::from_value(answer.get("devices").cloned().unwrap_or_default())
                    .context("reading the registry's answer")?;
            println!(
                "{:<24} {:<32} {:<26} STATUS",
                "DEVICE", "SERIAL", "NOT-AFTER"
            );
            for d in devices {
                for c in &d.certificates {
                    let status = if c.revoked { "revoked" } else { "valid" };
                    println!(
                        "{:<24} {:<32} {:<26} {status}",
                        d.id,
                        c.serial,
                        format_time(c.not_after)
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn issue(data: &Path, args: &IssueArgs) -> anyhow::Result<ExitCode> {
    let (serial, not_after) = issue_to(data, args)?;
    println!(
        "issued certificate {serial} to {} (class {}, zone {}), valid until {not_after}",
        args.device, args.class, args.zone
    );
    println!(
        "wrote {0}/cert.pem, {0}/key.pem, {0}/ca.pem",
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Issue what `args` asks for and write the device's files; the serial
/// and the end of validity.
pub(crate) fn issue_to(data: &Path, args: &IssueArgs) -> anyhow::Result<(String, String)> {
    request_certificate(data, &args.out, |public_key| Request::Issue {
        device: args.device.clone(),
        class: args.class.clone(),
        zone: args.zone.clone(),
        role: args.role.clone(),
        hours: args.hours,
        public_key,
    })
}

/// Make a key, send the request `for_key` makes of its public half, and
/// write the issued `cert.pem`, the key (`key.pem`, mode 0600) and the CA's
/// `ca.pem` to `out`; the serial and the end of validity.
pub(crate) fn request_certificate(
    data: &Path,
    out: &Path,
    for_key: impl FnOnce(String) -> Request,
) -> anyhow::Result<(String, String)> {
    // The key is made here and only its public half travels: the appliance
    // never holds a device's or an operator's private key.
    let key = rcgen::KeyPair::generate().context("generating the key")?;
    let (answer, _) = console(
        data,
        &for_key(STANDARD.encode(key.subject_public_key_info())),
    )?;
    let text = |field: &str| {
        answer
            .get(field)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .with_context(|| format!("the answer has no {field}"))
    };
    let (cert, ca, serial, not_after) = (
        text("certificate")?,
        text("ca")?,
        text("serial")?,
        text("not-after")?,
    );
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    crate::identity::write_pem(&out.join("key.pem"), &key.serialize_pem(), 0o600)?;
    crate::identity::write_pem(&out.join("cert.pem"), &cert, 0o644)?;
    crate::identity::write_pem(&out.join("ca.pem"), &ca, 0o644)?;
    Ok((serial, not_after))
}
