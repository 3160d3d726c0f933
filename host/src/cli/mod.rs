//! The `palisade` command line: the operator's and the plugin author's
//! entry point.

mod baseline;
mod plugin_config;
mod plugin_run;
mod policy;

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
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
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
}

#[derive(Debug, Subcommand)]
enum PluginCommand {
    /// Feed a recorded byte stream through a parser and detectors, and print
    /// every event, finding and action as a JSON line.
    Run(plugin_run::Args),
    /// Show or change a plugin's settings (for example the escalate
    /// responder's `quarantine-at`).
    Config(plugin_config::Args),
}

/// Run the command line with the process's arguments.
pub fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "palisade=info,warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Plugin(PluginCommand::Run(args)) => plugin_run::run(&cli.data, &args),
        Command::Plugin(PluginCommand::Config(args)) => plugin_config::run(&cli.data, &args),
        Command::Policy(command) => policy::run(&cli.data, &command),
        Command::Baseline(command) => baseline::run(&cli.data, &command),
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
