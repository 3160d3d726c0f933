//! The README's third-party walk-through, as a new publisher and an
//! operator would run it: scaffold a detector with `palisade plugin new`,
//! test and build it, package, sign and publish it, have the registry
//! owner accept it, install it on an appliance, see it judge live traffic,
//! then upgrade it on the running appliance and roll it back.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::appliance::{
    Appliance, Mosquitto, install_before_start, mosquitto_pub, palisade_in, require, route,
    tls_args, wait_until,
};

fn cargo(dir: &Path, args: &[&str]) {
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/walkthrough");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(dir)
        .args(args)
        .env("CARGO_TARGET_DIR", &target)
        .status()
        .unwrap();
    assert!(status.success(), "cargo {args:?} in {}", dir.display());
}

fn findings(alerts: &Path) -> Vec<serde_json::Value> {
    common::json_lines(alerts)
        .into_iter()
        .filter(|r| r["what"]["type"] == "finding" && r["plugin"]["name"] == "acme-cmd-watch")
        .collect()
}

#[test]
fn a_new_publisher_goes_from_plugin_new_to_a_live_appliance() {
    if !require("mosquitto") || !require("mosquitto_pub") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    // The registry owner.
    palisade_in(w, &["registry", "init", "reg", "--keys", "owner-keys"]);
    // The publisher makes a key; the owner delegates it acme-*.
    palisade_in(
        w,
        &[
            "registry",
            "keygen",
            "acme",
            "--key",
            "acme.pem",
            "--card",
            "acme.card.json",
        ],
    );
    palisade_in(
        w,
        &[
            "registry",
            "delegate",
            "reg",
            "--keys",
            "owner-keys",
            "--card",
            "acme.card.json",
            "--names",
            "acme-*",
        ],
    );
    // The publisher scaffolds, tests and builds a detector.
    palisade_in(
        w,
        &["plugin", "new", "acme-cmd-watch", "--world", "detector"],
    );
    let krate = w.join("acme-cmd-watch");
    cargo(&krate, &["test", "--quiet"]);
    cargo(&krate, &["build", "--release", "--target", "wasm32-wasip2"]);
    let wasm: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/walkthrough/wasm32-wasip2/release/acme_cmd_watch.wasm");
    let publish = |version: &str| {
        let manifest = std::fs::read_to_string(krate.join("palisade-plugin.toml")).unwrap();
        let manifest = manifest.replace("version = \"0.1.0\"", &format!("version = \"{version}\""));
        std::fs::write(krate.join("palisade-plugin.toml"), manifest).unwrap();
        let bundle = format!("bundle-{version}");
        let outbox = format!("outbox-{version}");
        palisade_in(
            &krate,
            &[
                "registry",
                "package",
                "--component",
                wasm.to_str().unwrap(),
                "--lock",
                "Cargo.lock",
                "--out",
                &bundle,
            ],
        );
        palisade_in(
            &krate,
            &[
                "registry",
                "publish",
                &bundle,
                "--registry",
                "../reg",
                "--root",
                "../reg/metadata/root.json",
                "--publisher",
                "acme",
                "--key",
                "../acme.pem",
                "--outbox",
                &outbox,
            ],
        );
        palisade_in(
            w,
            &[
                "registry",
                "accept",
                &format!("acme-cmd-watch/{outbox}"),
                "--registry",
                "reg",
                "--keys",
                "owner-keys",
            ],
        );
    };
    publish("0.1.0");
    let sbom =
        std::fs::read_to_string(w.join("reg/targets/plugins/acme-cmd-watch/0.1.0/manifest.json"))
            .unwrap();
    assert!(
        sbom.contains("\"palisade-plugin-sdk\"") && sbom.contains("\"wit-bindgen\""),
        "the SBOM lists the crates: {sbom}"
    );

    // The operator trusts the registry and installs the detector before
    // the appliance starts; the route names it.
    let broker = Mosquitto::start();
    let alerts = w.join("alerts.jsonl");
    let config = format!(
        "{}detectors = [\"acme-cmd-watch\"]\n[[siem]]\nkind = \"file\"\nname = \"alerts\"\npath = \"{}\"\n",
        route(
            "mqtt-tls",
            "mqtt",
            "tls",
            Some("mqtt"),
            &format!("127.0.0.1:{}", broker.port)
        ),
        alerts.display()
    );
    let appliance = Appliance::start_prepared(&config, |data| {
        install_before_start(w, data, &["acme-cmd-watch"])
    });
    let device = appliance.issue("door-1", "door", "hall");
    let send = |topic: &str| {
        let mut args = tls_args(appliance.port("mqtt-tls"), &device);
        args.extend(["-t", topic, "-m", "x"].map(String::from));
        assert!(mosquitto_pub(&args).0);
    };
    let judged_by = |version: &str, topic: &str| {
        send(topic);
        wait_until(&format!("{version} flagged {topic}"), || {
            findings(&alerts).iter().any(|f| {
                f["plugin"]["version"] == version && f["event"]["attributes"]["topic"] == topic
            })
        });
    };
    judged_by("0.1.0", "site/door-1/cmd");

    // An upgrade, installed on the running appliance, serves at once...
    publish("0.2.0");
    let data = appliance.data.to_str().unwrap();
    let installed = palisade_in(w, &["--data", data, "plugin", "install", "acme-cmd-watch"]);
    assert!(installed.contains("\"state\": \"active\""), "{installed}");
    judged_by("0.2.0", "site/door-2/cmd");
    let list = palisade_in(w, &["--data", data, "plugin", "list"]);
    let line = list
        .lines()
        .find(|l| l.starts_with("acme-cmd-watch"))
        .unwrap_or_else(|| panic!("{list}"));
    for field in ["detector", "0.2.0", "acme", "mqtt-tls", "0.1.0,0.2.0"] {
        assert!(line.contains(field), "{field} not in {line}");
    }
    // ...and a rollback brings the earlier version back.
    palisade_in(w, &["--data", data, "plugin", "rollback", "acme-cmd-watch"]);
    judged_by("0.1.0", "site/door-3/cmd");
}
