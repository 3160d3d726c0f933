//! The `palisade` command line: the operator's and the plugin author's
//! entry point.

mod baseline;
mod demo;
mod device;
mod operator;
mod pki;
mod plugin_config;
mod plugin_manage;
mod plugin_new;
mod plugin_run;
mod policy;
mod registry;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Palisade: an inline zero-trust security gateway for IoT and OT devices.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    /// Where the appliance keeps its state (created if missing).
    #[arg(long, global = true, default_value = "./palisade-data")]
    data: PathBuf,
    /// Send the command to the HTTPS admin API of an appliance elsewhere,
    /// `https://HOST:PORT`, instead of the one on this machine (pki
    /// issue|revoke|list, device, plugin list|install|activate|rollback|
    /// remove|shadow|promote|config).
    #[arg(long, global = true, value_name = "URL", requires = "credentials")]
    remote: Option<String>,
    /// The operator's credentials for `--remote`: a directory with
    /// cert.pem, key.pem and ca.pem, as `palisade operator issue` writes.
    #[arg(long, global = true, value_name = "DIR", requires = "remote")]
    credentials: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the appliance: terminate devices' TLS and QUIC, check who they
    /// are, relay their traffic through the parsers to the upstreams.
    Serve(serve::Args),
    /// See Palisade work: simulated sensors on loopback, one turns rogue
    /// and is stopped. Uses a fresh data directory of its own.
    Demo(demo::Args),
    /// The site CA and device certificates.
    #[command(subcommand)]
    Pki(pki::Command),
    /// The device registry.
    #[command(subcommand)]
    Device(device::Command),
    /// Work with plugins.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// The baseline detector's profiles: show, export as policy, accept a
    /// finding as normal.
    #[command(subcommand)]
    Baseline(baseline::Command),
    /// The zero-trust policy: show, check, test.
    #[command(subcommand)]
    Policy(policy::Command),
    /// The signed plugin registry: keys, delegations, packaging and
    /// publishing, and which registry this appliance trusts.
    #[command(subcommand)]
    Registry(registry::Command),
    /// Operators of the HTTPS admin API and their roles.
    #[command(subcommand)]
    Operator(operator::Command),
}

impl Command {
    /// Whether the command is an admin request that a remote appliance's
    /// admin API can take.
    fn is_admin_request(&self) -> bool {
        match self {
            Command::Pki(command) => !matches!(command, pki::Command::Init),
            // Who the operators are is decided on the appliance itself.
            Command::Device(_) => true,
            Command::Plugin(command) => {
                !matches!(command, PluginCommand::Run(_) | PluginCommand::New(_))
            }
            _ => false,
        }
    }
}

/// Where admin requests go when `--remote` is given: the URL and the
/// operator's credentials.
static REMOTE: std::sync::OnceLock<(String, PathBuf)> = std::sync::OnceLock::new();

#[derive(Debug, Subcommand)]
pub(crate) enum PluginCommand {
    /// Feed a recorded byte stream (or, with --datagrams, recorded
    /// datagrams in hex) through a parser and detectors, and print every
    /// event, finding and action as a JSON line.
    Run(plugin_run::Args),
    /// Show or change a plugin's settings (for example the escalate
    /// responder's `quarantine-at`).
    Config(plugin_config::Args),
    /// Scaffold a new plugin crate that builds as it is.
    New(plugin_new::Args),
    /// Every plugin: versions, publisher, world, state, strikes, routes.
    List,
    /// Install NAME[@VERSION] from the signed registry and make it active.
    Install(plugin_manage::Install),
    /// Make an installed version (or `first-party`) active: NAME@VERSION.
    Activate {
        /// NAME@VERSION.
        plugin: String,
    },
    /// Make the previously active version active again.
    Rollback {
        /// The plugin's name.
        name: String,
    },
    /// Delete an installed version that is not active: NAME@VERSION.
    Remove {
        /// NAME@VERSION.
        plugin: String,
    },
    /// Run an installed version as a shadow beside the active one and
    /// compare their results: NAME@VERSION; `--stop` ends it.
    Shadow(plugin_manage::Shadow),
    /// Make the shadow the active version.
    Promote {
        /// The plugin's name.
        name: String,
    },
}

/// Standard error, for the log. A line that cannot be written is dropped:
/// when the log's reader has gone (a closed pipe to a logger), the
/// appliance goes on serving, and stops when asked. Given the error,
/// tracing would report it on standard error too, and that report panics
/// wherever the line was logged: in a session's task, or in the shutdown.
struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        Ok(std::io::stderr().write(line).unwrap_or(line.len()))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

/// Run the command line with the process's arguments.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo prints its own story on stdout; the log says only what goes
    // wrong.
    let default = match cli.command {
        Command::Demo(_) => "palisade=warn,rustls=error,warn",
        _ => "palisade=info,rustls=error,warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default.into()),
        )
        .with_writer(|| LogWriter)
        // Colours only for a person at a terminal; logs read by tools
        // (journald, tests) get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let (Some(url), Some(credentials)) = (&cli.remote, &cli.credentials) {
        if !cli.command.is_admin_request() {
            eprintln!(
                "palisade: --remote applies to the admin commands (pki, device, plugin list|install|config|...); this one runs here"
            );
            return ExitCode::FAILURE;
        }
        let _ = REMOTE.set((url.clone(), credentials.clone()));
    }
    let result = match cli.command {
        Command::Plugin(PluginCommand::Run(args)) => plugin_run::run(&cli.data, &args),
        Command::Plugin(PluginCommand::Config(args)) => plugin_config::run(&cli.data, &args),
        Command::Plugin(PluginCommand::New(args)) => plugin_new::run(&args),
        Command::Plugin(command) => plugin_manage::run(&cli.data, command),
        Command::Registry(command) => registry::run(&cli.data, &command),
        Command::Policy(command) => policy::run(&cli.data, &command),
        Command::Baseline(command) => baseline::run(&cli.data, &command),
        Command::Serve(args) => serve::run(&cli.data, &args),
        Command::Demo(args) => demo::run(&args),
        Command::Pki(command) => pki::run(&cli.data, &command),
        Command::Device(command) => device::run(&cli.data, &command),
        Command::Operator(command) => operator::run(&cli.data, &command),
    };
    match result {
        Ok(code) => code,
        // A reader that stopped reading (`| head`) is not an error.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("palisade: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Execute an admin request: on the remote appliance of `--remote`, else
/// against the state in `data`, through the running appliance's admin
/// socket if there is one, else directly. Returns the answer and whether a
/// running appliance gave it.
fn console(
    data: &std::path::Path,
    request: &crate::admin::Request,
) -> anyhow::Result<(serde_json::Value, bool)> {
    let console = match REMOTE.get() {
        Some((url, credentials)) => {
            crate::admin::RemoteAdmin::new(url, credentials).map(crate::admin::Console::Https)
        }
        None => crate::admin::Console::open(data),
    }
    .map_err(anyhow::Error::msg)?;
    let progress = &mut |step: String| eprintln!("  {step}");
    match (console.execute_with(request, progress)).map_err(anyhow::Error::msg)? {
        crate::admin::Response::Ok(value) => Ok((value, console.is_remote())),
        crate::admin::Response::Error(e) | crate::admin::Response::Progress(e) => {
            Err(anyhow::Error::msg(e))
        }
    }
}

/// `hex` as bytes: pairs of hex digits and nothing else (no sign, no
/// prefix, no separator). The error names the first pair that is not one.
fn decode_hex(hex: &[u8]) -> Result<Vec<u8>, String> {
    if !hex.len().is_multiple_of(2) {
        return Err("an odd number of hex digits".into());
    }
    let digit = |b: &u8| char::from(*b).to_digit(16);
    (hex.chunks_exact(2))
        .map(|pair| {
            let byte = match pair {
                [high, low] => digit(high).zip(digit(low)),
                _ => None,
            };
            byte.and_then(|(high, low)| u8::try_from(high * 16 + low).ok())
                .ok_or_else(|| format!("`{}` is not a byte in hex", String::from_utf8_lossy(pair)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::decode_hex;

    #[test]
    fn hex_is_pairs_of_digits_only() {
        assert_eq!(decode_hex(b"00ffA5"), Ok(vec![0, 0xff, 0xa5]));
        assert_eq!(decode_hex(b""), Ok(vec![]));
        assert_eq!(
            decode_hex(b"abc"),
            Err("an odd number of hex digits".into())
        );
        assert_eq!(decode_hex(b"0azz"), Err("`zz` is not a byte in hex".into()));
        // What `u8::from_str_radix` would take.
        assert_eq!(decode_hex(b"+f"), Err("`+f` is not a byte in hex".into()));
    }
}
