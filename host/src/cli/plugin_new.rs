//! `palisade plugin new NAME --world parser|detector|responder`: a plugin
//! crate that builds as it is, with a unit test on the SDK's native test
//! host and the `palisade-plugin.toml` that packaging reads.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use crate::plugins::{CONTRACT, World};
use crate::registry::manifest::valid_name;

/// Arguments of `palisade plugin new`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The plugin's name: lowercase letters, digits and dashes, usually
    /// prefixed with the publisher's name (`acme-door-monitor`).
    name: String,
    /// The world the plugin implements.
    #[arg(long, value_parser = parse_world)]
    world: World,
    /// The directory to create; `./NAME` by default.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Where the plugin SDK is (a checkout's `plugin-sdk/`); the one this
    /// palisade was built from by default.
    #[arg(long)]
    sdk: Option<PathBuf>,
}

fn parse_world(text: &str) -> Result<World, String> {
    match text {
        "parser" => Ok(World::Parser),
        "detector" => Ok(World::Detector),
        "responder" => Ok(World::Responder),
        _ => Err("one of parser, detector, responder".into()),
    }
}

pub(crate) fn run(args: &Args) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        valid_name(&args.name),
        "a plugin name is 1 to 64 lowercase letters, digits and dashes, starting with a letter"
    );
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(&args.name));
    anyhow::ensure!(
        !dir.exists(),
        "{} already exists; choose another --dir",
        dir.display()
    );
    let sdk = match &args.sdk {
        Some(sdk) => sdk.clone(),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugin-sdk"),
    };
    let sdk = std::fs::canonicalize(&sdk).with_context(|| {
        format!(
            "no plugin SDK at {} (pass --sdk PATH to a checkout's plugin-sdk/)",
            sdk.display()
        )
    })?;
    for (file, text) in files(&args.name, args.world, &sdk) {
        let path = dir.join(file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    let artifact = args.name.replace('-', "_");
    println!(
        "created {world} plugin {name} in {dir}\n\n  cd {dir}\n  cargo test\n  cargo build --release --target wasm32-wasip2\n  palisade plugin run --{flag} target/wasm32-wasip2/release/{artifact}.wasm --input SOME.bin\n",
        world = args.world,
        name = args.name,
        dir = dir.display(),
        flag = if args.world == World::Parser {
            "parser"
        } else {
            "parser mqtt --detector"
        },
    );
    Ok(ExitCode::SUCCESS)
}

fn camel(name: &str) -> String {
    name.split('-')
        .map(|part| {
            let mut chars = part.chars();
            match chars.next() {
                Some(c) => c.to_ascii_uppercase().to_string() + chars.as_str(),
                None => String::new(),
            }
        })
        .collect()
}

fn files(name: &str, world: World, sdk: &Path) -> Vec<(&'static str, String)> {
    let ty = camel(name);
    let crate_name = name.replace('-', "_");
    let cargo = format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
crate-type = ["cdylib", "rlib"]

[dependencies]
palisade-plugin-sdk = {{ path = "{sdk}" }}

# A crate of its own, not a member of any workspace around it.
[workspace]

# Small components load and precompile faster on the appliance.
[profile.release]
codegen-units = 1
lto = true
strip = "debuginfo"
"#,
        sdk = sdk.display()
    );
    let (protocols, capabilities, code) = match world {
        World::Parser => ("[\"{name}\"]", "[]", parser(&ty, name, &crate_name)),
        World::Detector => ("[\"mqtt\"]", "[\"log\"]", detector(&ty, &crate_name)),
        World::Responder => ("[]", "[\"log\"]", responder(&ty, &crate_name)),
    };
    let protocols = protocols.replace("{name}", name);
    let manifest = format!(
        r#"# What the appliance needs to know about this plugin. `palisade registry
# package` adds the component's hash and the SBOM of Cargo.lock.
name = "{name}"
version = "0.1.0"
world = "{world}"
protocols = {protocols}
contract = "{CONTRACT}"
# What the appliance does with traffic this plugin judges once it is
# disabled after too many faults: "closed" (refuse) or "dangerous-open".
fail-mode = "closed"
# "log": write log lines. "store": keep state in the plugin's key-value
# store (detectors and responders only).
capabilities = {capabilities}

# Bounds the plugin asks for; the appliance's defaults apply to the rest.
[limits]
deadline-ms = 50
memory-bytes = 16777216
"#
    );
    vec![
        // The toolchain this appliance's SDK is built with, which brings
        // the wasm32-wasip2 target.
        (
            "rust-toolchain.toml",
            include_str!("../../../rust-toolchain.toml").to_owned(),
        ),
        ("Cargo.toml", cargo),
        ("palisade-plugin.toml", manifest),
        ("src/lib.rs", code),
        (".gitignore", "/target\n".into()),
    ]
}

fn detector(ty: &str, crate_name: &str) -> String {
    format!(
        r#"//! A detector: flags an MQTT publish to a command topic.

use palisade_plugin_sdk::{{Batch, Detector, Finding, Session, Severity}};

/// The detector.
#[derive(Debug)]
pub struct {ty};

impl Detector for {ty} {{
    fn detect(_session: &Session, events: &Batch) -> Vec<Finding> {{
        events
            .iter()
            .filter(|e| e.kind() == "mqtt.publish")
            .filter(|e| e.text("topic").is_some_and(|t| t.ends_with("/cmd")))
            .map(|e| Finding::new(e.index(), Severity::High, 0.9, "publish to a command topic"))
            .collect()
    }}
}}

palisade_plugin_sdk::export!(detector: {ty});

#[cfg(test)]
mod tests {{
    use super::*;

    #[test]
    fn a_command_publish_is_flagged() {{
        let session = Session::new(1, "door-1", "door", "hall", "mqtt");
        let mut events = Batch::new();
        events.push("mqtt.publish").text("topic", "site/door-1/telemetry");
        events.push("mqtt.publish").text("topic", "site/door-1/cmd");
        let findings = {ty}::detect(&session, &events);
        assert_eq!(findings.len(), 1);
        assert_eq!(findings.first().map(|f| f.event), Some(1));
    }}
}}

// The crate is `{crate_name}`; its component is
// target/wasm32-wasip2/release/{crate_name}.wasm.
"#
    )
}

fn parser(ty: &str, name: &str, crate_name: &str) -> String {
    format!(
        r#"//! A parser for a line protocol: each frame is one line ending in `\n`,
//! described by a `{name}.line` event with its length.

use palisade_plugin_sdk::{{Direction, Parsed, Parser, Session}};

/// The longest line accepted.
const MAX_LINE: usize = 4096;

/// The parser.
#[derive(Debug)]
pub struct {ty};

impl Parser for {ty} {{
    const PROTOCOL: &'static str = "{name}";

    fn parse(_session: &Session, _direction: Direction, _state: &[u8], input: &[u8]) -> Parsed {{
        let mut parsed = Parsed::new(Vec::new());
        let mut offset = 0;
        while let Some(end) = input.get(offset..).and_then(|rest| rest.iter().position(|b| *b == b'\n')) {{
            if end >= MAX_LINE {{
                return parsed.malformed(offset, "line longer than 4096 bytes");
            }}
            parsed.frame(end + 1, "{name}.line").int("length", end as i64);
            offset += end + 1;
        }}
        if input.len() - offset >= MAX_LINE {{
            return parsed.malformed(offset, "line longer than 4096 bytes");
        }}
        parsed
    }}
}}

palisade_plugin_sdk::export!(parser: {ty});

#[cfg(test)]
mod tests {{
    use super::*;

    #[test]
    fn lines_are_frames_and_a_partial_line_waits() {{
        let session = Session::new(1, "d", "c", "z", "{name}");
        let parsed = {ty}::parse(&session, Direction::ToUpstream, &[], b"one\ntwo\nthr");
        assert_eq!(parsed.frame_lengths, vec![4, 4]);
        assert_eq!(parsed.events.len(), 2);
        assert!(parsed.malformed.is_none());
    }}
}}

// The crate is `{crate_name}`; its component is
// target/wasm32-wasip2/release/{crate_name}.wasm.
"#
    )
}

fn responder(ty: &str, crate_name: &str) -> String {
    format!(
        r#"//! A responder: alerts on every finding, and drops the frame of a
//! critical one.

use palisade_plugin_sdk::{{Action, Batch, Finding, Responder, Session, Severity}};

/// The responder.
#[derive(Debug)]
pub struct {ty};

impl Responder for {ty} {{
    fn respond(_session: &Session, _events: &Batch, findings: &[Finding]) -> Vec<Action> {{
        let mut actions = Vec::new();
        for finding in findings {{
            actions.push(Action::Alert(finding.reason.clone()));
            if finding.severity == Severity::Critical {{
                actions.push(Action::DropFrame(finding.event));
            }}
        }}
        actions
    }}
}}

palisade_plugin_sdk::export!(responder: {ty});

#[cfg(test)]
mod tests {{
    use super::*;

    #[test]
    fn a_critical_finding_drops_its_frame() {{
        let session = Session::new(1, "d", "c", "z", "mqtt");
        let findings = [Finding::new(0, Severity::Critical, 1.0, "bad")];
        let actions = {ty}::respond(&session, &Batch::new(), &findings);
        assert_eq!(actions, vec![Action::Alert("bad".into()), Action::DropFrame(0)]);
    }}
}}

// The crate is `{crate_name}`; its component is
// target/wasm32-wasip2/release/{crate_name}.wasm.
"#
    )
}
