//! Builds the plugins in `plugins/` as WebAssembly components, with the
//! workspace's own toolchain (see rust-toolchain.toml), so that a plain
//! `cargo build` of the host also builds every plugin it embeds or tests.
//!
//! The plugins get a target directory of their own, so this nested cargo
//! never waits on the lock of the build that runs it.

#![allow(clippy::expect_used)] // A build script that cannot build the plugins must stop the build, loudly.

use std::env;
use std::path::PathBuf;
use std::process::Command;

const PLUGINS: &[&str] = &[
    "mqtt",
    "modbus",
    "coap",
    "new-topic",
    "baseline",
    "hygiene",
    "escalate",
    "hostile",
];
const TARGET: &str = "wasm32-wasip2";
const PROFILE: &str = "plugin";

fn main() {
    let manifest_dir =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let workspace = manifest_dir
        .parent()
        .expect("host/ is inside the workspace")
        .to_path_buf();
    let target_dir = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"))
        .join("plugins");

    for dir in ["plugins", "plugin-sdk", "wit"] {
        println!("cargo:rerun-if-changed={}", workspace.join(dir).display());
    }
    // The lock file pins the plugins' dependencies; the manifest holds the
    // plugin profile.
    for file in ["Cargo.lock", "Cargo.toml"] {
        println!("cargo:rerun-if-changed={}", workspace.join(file).display());
    }

    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .current_dir(&workspace)
        .args(["build", "--target", TARGET, "--profile", PROFILE])
        .arg("--target-dir")
        .arg(&target_dir);
    for plugin in PLUGINS {
        build.args(["-p", plugin]);
    }
    // What the outer build set for the host must not leak into the plugins'
    // build: clippy as the compiler, host rustflags, coverage instruments.
    for var in [
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_MAKEFLAGS",
        "MAKEFLAGS",
        "MFLAGS",
    ] {
        build.env_remove(var);
    }
    let status = build
        .status()
        .expect("cannot run cargo to build the plugins");
    assert!(status.success(), "building the plugins for {TARGET} failed");

    let out = target_dir.join(TARGET).join(PROFILE);
    println!("cargo:rustc-env=PALISADE_PLUGIN_DIR={}", out.display());
}
