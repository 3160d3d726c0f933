//! `palisade operator`: who may use the HTTPS admin API, and as what.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use super::console;
use crate::admin::Request;
use crate::identity::{Operator, Role, format_time};

/// `palisade operator` subcommands. They run on the appliance itself
/// (the admin API refuses them): who administers the appliance is decided
/// by whoever holds its data directory.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Issue an operator a certificate for the admin API and write
    /// `cert.pem`, `key.pem` and `ca.pem` to `--out`, for `--credentials`.
    Issue {
        /// The operator's name: 1 to 64 of A-Z a-z 0-9 . _ -
        name: String,
        /// viewer lists; operator also manages plugins and quarantines;
        /// admin also issues and revokes device certificates.
        #[arg(long)]
        role: Role,
        /// Lifetime in hours.
        #[arg(long, default_value_t = 720)]
        hours: u64,
        /// Directory to write cert.pem, key.pem (mode 0600) and ca.pem to.
        #[arg(long)]
        out: PathBuf,
    },
    /// Revoke an operator and every certificate issued to them: their next
    /// request is refused.
    Revoke {
        /// The operator's name.
        name: String,
    },
    /// List the operators, their roles and certificates.
    List,
}

pub(crate) fn run(data: &Path, command: &Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Issue {
            name,
            role,
            hours,
            out,
        } => {
            let (serial, not_after) =
                super::pki::request_certificate(data, out, |public_key| Request::OperatorIssue {
                    name: name.clone(),
                    role: *role,
                    hours: *hours,
                    public_key,
                })?;
            println!(
                "issued operator certificate {serial} to {name} ({role}), valid until {not_after}"
            );
            println!("wrote {0}/cert.pem, {0}/key.pem, {0}/ca.pem", out.display());
        }
        Command::Revoke { name } => {
            console(data, &Request::OperatorRevoke { name: name.clone() })?;
            println!("revoked operator {name}");
        }
        Command::List => {
            let (answer, _) = console(data, &Request::OperatorList)?;
            let operators: Vec<Operator> =
                serde_json::from_value(answer.get("operators").cloned().unwrap_or_default())
                    .context("reading the appliance's answer")?;
            println!(
                "{:<24} {:<9} {:<32} {:<26} STATUS",
                "OPERATOR", "ROLE", "SERIAL", "NOT-AFTER"
            );
            for o in operators {
                for c in &o.certificates {
                    let status = if c.cert.revoked { "revoked" } else { "valid" };
                    println!(
                        "{:<24} {:<9} {:<32} {:<26} {status}",
                        o.name,
                        c.role,
                        c.cert.serial,
                        format_time(c.cert.not_after)
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
