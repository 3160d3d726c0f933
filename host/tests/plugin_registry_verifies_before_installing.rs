//! The signed registry from both sides: a publisher packages and signs, the
//! registry owner delegates and accepts, the appliance installs. Every
//! way a bundle can be wrong is refused with a clear message and nothing
//! changed on the appliance.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::path::{Path, PathBuf};

use common::appliance::palisade;
use common::component;
use palisade::registry::keys::PemKey;
use palisade::registry::publish::{self, Signer};
use tough::editor::signed::SignedRole;
use tough::schema::{KeyHolder, Root, Signed, Snapshot, Timestamp};

struct Site {
    _dir: tempfile::TempDir,
    root: PathBuf,
    reg: PathBuf,
    keys: PathBuf,
    acme_key: PathBuf,
    data: PathBuf,
}

fn run(args: &[&str]) -> (bool, String) {
    let out = palisade().args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn ok(args: &[&str]) -> String {
    let (success, text) = run(args);
    assert!(success, "palisade {args:?} failed: {text}");
    text
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A registry with publisher acme delegated `acme-*`, and an appliance
/// trusting it.
fn site() -> Site {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    let (reg, keys) = (root.join("reg"), root.join("owner-keys"));
    let data = root.join("data");
    ok(&["registry", "init", s(&reg), "--keys", s(&keys)]);
    let site = Site {
        _dir: dir,
        acme_key: root.join("acme.pem"),
        root,
        reg,
        keys,
        data,
    };
    site.delegate_to("acme", "acme-*");
    ok(&["--data", s(&site.data), "pki", "init"]);
    ok(&[
        "--data",
        s(&site.data),
        "registry",
        "trust",
        s(&site.reg.join("metadata/1.root.json")),
        "--registry",
        s(&site.reg),
    ]);
    site
}

impl Site {
    /// Package `component` as `name` `version` of `world`, publish it as
    /// acme and accept it into the registry.
    fn publish(&self, name: &str, version: &str, world: &str, component: &str) {
        let out = self.package(name, version, world, component);
        self.sign_and_accept(&out);
    }

    fn package(&self, name: &str, version: &str, world: &str, plugin: &str) -> PathBuf {
        let work = self.root.join(format!("{name}-{version}"));
        std::fs::create_dir_all(&work).unwrap();
        let manifest = work.join("palisade-plugin.toml");
        std::fs::write(
            &manifest,
            format!(
                "name = \"{name}\"\nversion = \"{version}\"\nworld = \"{world}\"\n\
                 contract = \"palisade:plugin@0.1.0\"\ncapabilities = [\"log\"]\n"
            ),
        )
        .unwrap();
        let wasm = work.join("plugin.wasm");
        std::fs::write(&wasm, component(plugin)).unwrap();
        let bundle = work.join("bundle");
        ok(&[
            "registry",
            "package",
            "--manifest",
            s(&manifest),
            "--component",
            s(&wasm),
            "--out",
            s(&bundle),
        ]);
        bundle
    }

    fn sign_and_accept(&self, bundle: &Path) {
        let outbox = self.sign(bundle);
        self.accept(&outbox);
    }

    /// A new publisher, delegated the plugin names matching `names` after
    /// those delegated before; returns its key.
    fn delegate_to(&self, publisher: &str, names: &str) -> PathBuf {
        let key = self.root.join(format!("{publisher}.pem"));
        let card = self.root.join(format!("{publisher}.card.json"));
        ok(&[
            "registry",
            "keygen",
            publisher,
            "--key",
            s(&key),
            "--card",
            s(&card),
        ]);
        ok(&[
            "registry",
            "delegate",
            s(&self.reg),
            "--keys",
            s(&self.keys),
            "--card",
            s(&card),
            "--names",
            names,
        ]);
        key
    }

    /// Sign `bundle` as acme into an outbox beside it.
    fn sign(&self, bundle: &Path) -> PathBuf {
        self.sign_as(bundle, "acme", &self.acme_key)
    }

    /// Sign `bundle` as `publisher`, with `key`, into an outbox beside it.
    fn sign_as(&self, bundle: &Path, publisher: &str, key: &Path) -> PathBuf {
        let outbox = bundle.with_file_name(format!("{publisher}-outbox"));
        ok(&[
            "registry",
            "publish",
            s(bundle),
            "--registry",
            s(&self.reg),
            "--root",
            s(&self.reg.join("metadata/root.json")),
            "--publisher",
            publisher,
            "--key",
            s(key),
            "--outbox",
            s(&outbox),
        ]);
        outbox
    }

    fn accept(&self, outbox: &Path) -> (bool, String) {
        run(&[
            "registry",
            "accept",
            s(outbox),
            "--registry",
            s(&self.reg),
            "--keys",
            s(&self.keys),
        ])
    }

    /// Accept `outbox` and expect a refusal saying each of `why`, with the
    /// registry's files as they were.
    fn accept_refused(&self, outbox: &Path, why: &[&str]) {
        let before = files(&self.reg);
        let (accepted, text) = self.accept(outbox);
        assert!(!accepted, "{} accepted: {text}", outbox.display());
        for says in why {
            assert!(text.contains(says), "refusal does not say {says:?}: {text}");
        }
        assert!(
            files(&self.reg) == before,
            "the refusal changed the registry"
        );
    }

    /// Put `outbox` in the registry the way a tool other than `accept`
    /// (or `accept` before it checked what TUF's search reads) would: its
    /// roles and files copied in, the snapshot and timestamp re-signed,
    /// nothing checked. What the appliance then reads is its own check.
    fn serve_unchecked(&self, outbox: &Path) {
        for entry in std::fs::read_dir(outbox.join("metadata")).unwrap() {
            let path = entry.unwrap().path();
            let dest = self.reg.join("metadata").join(path.file_name().unwrap());
            std::fs::copy(&path, dest).unwrap();
        }
        for (file, bytes) in files(&outbox.join("targets")) {
            let dest = self.reg.join("targets").join(file);
            std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
            std::fs::write(dest, bytes).unwrap();
        }
        self.forge_snapshot();
    }

    /// Sign `manifest` (as a careless or hostile publisher wrote it) and
    /// `component` as acme, checking nothing, and accept them into the
    /// registry.
    fn publish_by_hand(&self, manifest: &serde_json::Value, component: &[u8]) {
        let name = manifest["name"].as_str().unwrap();
        let version = semver::Version::parse(manifest["version"].as_str().unwrap()).unwrap();
        let bytes = serde_json::to_vec(manifest).unwrap();
        let outbox = self.root.join(format!("{name}-outbox"));
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(publish::publish_files(
            &publish::location(s(&self.reg)).unwrap(),
            &self.reg.join("metadata/root.json"),
            &Signer {
                publisher: "acme",
                key: &self.acme_key,
                days: 30,
            },
            name,
            &version,
            &[("manifest.json", &bytes), ("component.wasm", component)],
            &outbox,
        ))
        .unwrap();
        assert!(self.accept(&outbox).0);
    }

    /// Rotate the registry's root to the next version, signed by both.
    fn rotate_root(&self) {
        ok(&[
            "registry",
            "rotate-root",
            s(&self.reg),
            "--keys",
            s(&self.keys),
        ]);
    }

    /// Trust the registry's `root` (a file in its metadata) on the
    /// appliance, with `--force` or not.
    fn trust(&self, root: &str, force: bool) -> (bool, String) {
        let root = self.reg.join("metadata").join(root);
        let mut args = vec!["--data", s(&self.data), "registry", "trust", s(&root)];
        args.extend(["--registry", s(&self.reg)]);
        if force {
            args.push("--force");
        }
        run(&args)
    }

    /// The version of the root the appliance trusts.
    fn trusted_root_version(&self) -> serde_json::Value {
        let root = std::fs::read(self.data.join("registry/root.json")).unwrap();
        serde_json::from_slice::<serde_json::Value>(&root).unwrap()["signed"]["version"].clone()
    }

    /// The versions of `name` the appliance sees the registry offer.
    fn versions(&self, name: &str) -> Vec<String> {
        let url = publish::location(s(&self.reg)).unwrap();
        let client = palisade::registry::RegistryClient::new(url, &self.data, None);
        let rt = tokio::runtime::Runtime::new().unwrap();
        let versions = rt.block_on(client.versions(name)).unwrap();
        versions.iter().map(ToString::to_string).collect()
    }

    fn install(&self, plugin: &str) -> (bool, String) {
        run(&["--data", s(&self.data), "plugin", "install", plugin])
    }

    fn list(&self) -> String {
        ok(&["--data", s(&self.data), "plugin", "list"])
    }

    /// Install `plugin` and expect a refusal saying `why`, with the
    /// appliance's plugins as they were.
    fn refused(&self, plugin: &str, why: &str) {
        let before = self.list();
        let (success, text) = self.install(plugin);
        assert!(!success, "{plugin} was installed: {text}");
        assert!(
            text.to_lowercase().contains(&why.to_lowercase()),
            "refusal of {plugin} does not say {why:?}: {text}"
        );
        assert_eq!(
            self.list(),
            before,
            "refusing {plugin} changed the appliance"
        );
    }

    fn target(&self, name: &str, version: &str, file: &str) -> PathBuf {
        self.reg
            .join("targets/plugins")
            .join(name)
            .join(version)
            .join(file)
    }

    /// Re-sign the snapshot and timestamp over whatever the metadata
    /// directory holds, checking nothing: what an attacker with the online
    /// keys (or a broken owner tool) could serve.
    fn forge_snapshot(&self) {
        let metadata = self.reg.join("metadata");
        let root: Signed<Root> =
            serde_json::from_slice(&std::fs::read(metadata.join("root.json")).unwrap()).unwrap();
        let old: serde_json::Value =
            serde_json::from_slice(&std::fs::read(metadata.join("snapshot.json")).unwrap())
                .unwrap();
        let version = old["signed"]["version"].as_u64().unwrap() + 1;
        let expires = old["signed"]["expires"].clone();
        let mut meta = serde_json::Map::new();
        for entry in std::fs::read_dir(&metadata).unwrap() {
            let path = entry.unwrap().path();
            let file = path.file_name().unwrap().to_str().unwrap().to_owned();
            if ["root.json", "snapshot.json", "timestamp.json"].contains(&file.as_str())
                || file.starts_with(|c: char| c.is_ascii_digit())
            {
                continue;
            }
            let bytes = std::fs::read(&path).unwrap();
            let role: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            meta.insert(
                file,
                serde_json::json!({
                    "version": role["signed"]["version"],
                    "length": bytes.len(),
                    "hashes": {"sha256": palisade::registry::bundle::sha256_hex(&bytes)},
                }),
            );
        }
        let snapshot: Snapshot = serde_json::from_value(serde_json::json!({
            "_type": "snapshot", "spec_version": "1.0.0", "version": version,
            "expires": expires, "meta": meta,
        }))
        .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let keys = |role: &str| {
            vec![
                PemKey {
                    path: self.keys.join(format!("{role}.pem")),
                }
                .source(),
            ]
        };
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let holder = KeyHolder::Root(root.signed.clone());
        let snapshot = rt
            .block_on(SignedRole::new(snapshot, &holder, &keys("snapshot"), &rng))
            .unwrap();
        std::fs::write(metadata.join("snapshot.json"), snapshot.buffer()).unwrap();
        let timestamp: Timestamp = serde_json::from_value(serde_json::json!({
            "_type": "timestamp", "spec_version": "1.0.0", "version": version,
            "expires": expires,
            "meta": {"snapshot.json": {
                "version": version,
                "length": snapshot.buffer().len(),
                "hashes": {"sha256": palisade::registry::bundle::sha256_hex(snapshot.buffer())},
            }},
        }))
        .unwrap();
        let timestamp = rt
            .block_on(SignedRole::new(
                timestamp,
                &holder,
                &keys("timestamp"),
                &rng,
            ))
            .unwrap();
        std::fs::write(metadata.join("timestamp.json"), timestamp.buffer()).unwrap();
    }
}

#[test]
fn a_published_plugin_installs_and_older_versions_never_do() {
    let site = site();
    site.publish("acme-topics", "1.0.0", "detector", "new-topic");
    let (success, text) = site.install("acme-topics");
    assert!(success, "{text}");
    for step in ["verified acme-topics 1.0.0, signed by acme", "self-checks"] {
        assert!(text.contains(step), "no progress line {step:?}: {text}");
    }
    let list = site.list();
    assert!(
        list.contains("acme-topics") && list.contains("1.0.0") && list.contains("acme"),
        "{list}"
    );

    site.publish("acme-topics", "0.9.0", "detector", "new-topic");
    site.refused("acme-topics@0.9.0", "not newer than 1.0.0");
    site.refused("acme-topics@1.0.0", "not newer than 1.0.0");
}

#[test]
fn a_shadow_install_with_nothing_to_shadow_installs_nothing() {
    let site = site_with("acme-topics");
    let before = site.list();
    // No appliance runs, so no route uses the plugin.
    let (success, text) = run(&[
        "--data",
        s(&site.data),
        "plugin",
        "install",
        "acme-topics",
        "--shadow",
    ]);
    assert!(!success, "{text}");
    assert!(text.contains("no route"), "{text}");
    assert_eq!(
        site.list(),
        before,
        "the refused shadow changed the appliance"
    );
    // Not counted as installed: the same version installs now.
    let (success, text) = site.install("acme-topics");
    assert!(success, "{text}");
}

#[test]
fn tampered_unsigned_and_mismatched_bundles_are_refused() {
    let site = site();
    // A component changed after signing.
    site.publish("acme-topics", "1.1.0", "detector", "new-topic");
    let wasm = site.target("acme-topics", "1.1.0", "component.wasm");
    let mut bytes = std::fs::read(&wasm).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&wasm, bytes).unwrap();
    site.refused("acme-topics@1.1.0", "hash");

    // A bundle copied into the registry that no one signed.
    let unsigned = site.package("acme-topics", "1.2.0", "detector", "new-topic");
    let dest = site.target("acme-topics", "1.2.0", "");
    std::fs::create_dir_all(&dest).unwrap();
    for file in ["manifest.json", "component.wasm"] {
        std::fs::copy(unsigned.join(file), dest.join(file)).unwrap();
    }
    site.refused("acme-topics@1.2.0", "no signed");

    // A component that is not of the world its manifest declares.
    site.publish("acme-liar", "1.0.0", "parser", "new-topic");
    site.refused(
        "acme-liar",
        "declares a parser but the component is a detector",
    );

    // A manifest asking for what its world may not have: a parser that
    // keeps state of its own. The publisher's tool refuses to package it,
    // so it is signed by hand.
    let component = component("mqtt");
    let manifest = serde_json::json!({
        "name": "acme-greedy", "version": "1.0.0", "world": "parser",
        "contract": "palisade:plugin@0.1.0", "capabilities": ["store"],
        "component": {
            "file": "component.wasm", "size": component.len(),
            "sha256": palisade::registry::bundle::sha256_hex(&component),
        },
    });
    site.publish_by_hand(&manifest, &component);
    site.refused("acme-greedy", "capability store");
}

#[test]
fn a_bundle_naming_another_component_file_is_refused_at_install() {
    // Signed, hashes right, but a manifest an appliance could not read
    // back from its own disk at the next start.
    let site = site();
    let component = component("new-topic");
    let manifest = serde_json::json!({
        "name": "acme-odd", "version": "1.0.0", "world": "detector",
        "contract": "palisade:plugin@0.1.0",
        "component": {
            "file": "x.wasm", "size": component.len(),
            "sha256": palisade::registry::bundle::sha256_hex(&component),
        },
    });
    site.publish_by_hand(&manifest, &component);
    site.refused("acme-odd", "x.wasm");
}

#[test]
fn a_publisher_signs_only_its_own_names_and_only_with_its_key() {
    let site = site();
    // acme was delegated acme-*; it signs an `mqtt`. The owner's accept
    // refuses it...
    let bundle = site.package("mqtt", "9.0.0", "parser", "mqtt");
    let outbox = site.sign(&bundle);
    let (accepted, text) = site.accept(&outbox);
    assert!(!accepted, "{text}");
    assert!(text.contains("not delegated"), "{text}");
    // ...and served anyway (the role copied in, the snapshot re-signed),
    // the appliance refuses a target its signer was not delegated.
    std::fs::copy(
        outbox.join("metadata/acme.json"),
        site.reg.join("metadata/acme.json"),
    )
    .unwrap();
    let dest = site.target("mqtt", "9.0.0", "");
    std::fs::create_dir_all(&dest).unwrap();
    for file in ["manifest.json", "component.wasm"] {
        std::fs::copy(bundle.join(file), dest.join(file)).unwrap();
    }
    site.forge_snapshot();
    site.refused("mqtt@9.0.0", "not delegated: plugins/mqtt/9.0.0");

    // A role whose signature is not acme's.
    let site = site_with("acme-topics");
    let role = site.reg.join("metadata/acme.json");
    let mut value: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&role).unwrap()).unwrap();
    let sig = value["signatures"][0]["sig"].as_str().unwrap().to_owned();
    let flipped = if sig.starts_with('0') { "1" } else { "0" };
    value["signatures"][0]["sig"] = format!("{flipped}{}", &sig[1..]).into();
    std::fs::write(&role, serde_json::to_vec(&value).unwrap()).unwrap();
    site.forge_snapshot();
    site.refused("acme-topics", "signature");
}

/// acme holds acme-*, delegated first and terminating: for those names
/// TUF consults no later delegation. community, delegated after it, holds
/// every name, and lists an acme-topics 9.0.0 of its own. The site,
/// community's key, and community's outbox.
fn community_lists_acme_topics() -> (Site, PathBuf, PathBuf) {
    let site = site_with("acme-topics");
    let community = site.delegate_to("community", "*");
    let bundle = site.package("acme-topics", "9.0.0", "detector", "new-topic");
    let outbox = site.sign_as(&bundle, "community", &community);
    (site, community, outbox)
}

/// beta, delegated beta-*, published beta-topics 1.0.0; acme, delegated
/// before beta, signs beta's very bundle as its own. The site and acme's
/// outbox.
fn acme_signs_betas_bundle() -> (Site, PathBuf) {
    let site = site();
    let beta = site.delegate_to("beta", "beta-*");
    let bundle = site.package("beta-topics", "1.0.0", "detector", "new-topic");
    let (accepted, text) = site.accept(&site.sign_as(&bundle, "beta", &beta));
    assert!(accepted, "{text}");
    let outbox = site.sign(&bundle);
    (site, outbox)
}

#[test]
fn accept_refuses_a_name_an_earlier_terminating_delegation_keeps_from_the_role() {
    let (site, community, outbox) = community_lists_acme_topics();
    site.accept_refused(
        &outbox,
        &[
            "community lists plugins/acme-topics/9.0.0/",
            "an earlier terminating delegation keeps from community",
        ],
    );
    assert_eq!(site.versions("acme-topics"), ["1.0.0"]);
    // Nor can community replace the bytes of acme's bundle: the search for
    // acme-topics never reaches community, whatever it lists (see
    // publish::keeps_bytes for the registries where it could).
    let other = site.package("acme-topics", "1.0.0", "parser", "mqtt");
    site.accept_refused(
        &site.sign_as(&other, "community", &community),
        &[
            "community lists plugins/acme-topics/1.0.0/",
            "appliances read it from acme",
        ],
    );

    // Names no earlier delegation holds are community's.
    let bundle = site.package("watch", "1.0.0", "detector", "new-topic");
    let (accepted, text) = site.accept(&site.sign_as(&bundle, "community", &community));
    assert!(accepted, "{text}");
    assert_eq!(site.versions("watch"), ["1.0.0"]);
}

#[test]
fn accept_refuses_a_role_listing_a_name_delegated_to_another() {
    let (site, outbox) = acme_signs_betas_bundle();
    site.accept_refused(
        &outbox,
        &[
            "acme lists plugins/beta-topics/1.0.0/",
            "not delegated to acme",
            "appliances read it from beta",
        ],
    );
    let (success, text) = site.install("beta-topics");
    assert!(success, "{text}");
    assert!(
        text.contains("verified beta-topics 1.0.0, signed by beta"),
        "{text}"
    );
}

#[test]
fn a_version_listed_by_a_role_the_name_was_not_delegated_to_is_not_offered() {
    let (site, _, outbox) = community_lists_acme_topics();
    // The owner's accept refuses this (see the test above); a registry
    // written by another tool, or by an accept before that check, serves
    // it all the same. tough's load checks only that some delegation
    // matching the name lists it, not that acme's ends the search.
    site.serve_unchecked(&outbox);

    assert_eq!(site.versions("acme-topics"), ["1.0.0"]);
    let (success, text) = site.install("acme-topics");
    assert!(success, "{text}");
    assert!(
        text.contains("verified acme-topics 1.0.0, signed by acme"),
        "{text}"
    );
    site.refused("acme-topics@9.0.0", "no signed");
}

#[test]
fn an_install_credits_the_publisher_delegated_the_name_not_another_listing_it() {
    let (site, outbox) = acme_signs_betas_bundle();
    // The owner's accept refuses this (see the test above); a registry
    // written by another tool, or by an accept before that check, serves
    // it all the same (beta's listing of the name satisfies tough's load),
    // and acme's role is now the first to list it.
    site.serve_unchecked(&outbox);

    assert_eq!(site.versions("beta-topics"), ["1.0.0"]);
    let (success, text) = site.install("beta-topics");
    assert!(success, "{text}");
    assert!(
        text.contains("verified beta-topics 1.0.0, signed by beta"),
        "{text}"
    );
    let list = site.list();
    assert!(!list.contains("acme"), "acme credited: {list}");
}

/// A site where acme published `name` 1.0.0 (a detector).
fn site_with(name: &str) -> Site {
    let site = site();
    site.publish(name, "1.0.0", "detector", "new-topic");
    site
}

#[test]
fn expired_and_replayed_metadata_are_refused() {
    let site = site_with("acme-topics");
    let old = site.root.join("old-metadata");
    copy_dir(&site.reg.join("metadata"), &old);
    site.publish("acme-topics", "1.1.0", "detector", "new-topic");
    let (success, text) = site.install("acme-topics");
    assert!(success && text.contains("1.1.0"), "{text}");

    // The registry served as it was before 1.1.0: the appliance has seen
    // newer metadata and will not go back.
    let current = site.root.join("current-metadata");
    copy_dir(&site.reg.join("metadata"), &current);
    copy_dir(&old, &site.reg.join("metadata"));
    site.refused("acme-topics", "version");

    // Metadata past its expiry.
    copy_dir(&current, &site.reg.join("metadata"));
    ok(&[
        "registry",
        "refresh",
        s(&site.reg),
        "--keys",
        s(&site.keys),
        "--days",
        "0",
    ]);
    site.refused("acme-topics", "expired");
}

#[test]
fn appliances_follow_a_rotated_root() {
    let site = site_with("acme-topics");
    site.rotate_root();
    // The appliance still holds root 1; it accepts root 2 because root 1's
    // key signed it too.
    let (success, text) = site.install("acme-topics");
    assert!(success, "{text}");
    assert_eq!(site.trusted_root_version(), 2);
}

#[test]
fn a_rotated_root_is_not_trusted_back_without_force() {
    let site = site_with("acme-topics");
    site.rotate_root();
    let (success, text) = site.install("acme-topics");
    assert!(success, "{text}");
    let trusted_version = || site.trusted_root_version();
    assert_eq!(trusted_version(), 2);
    let seen = site.data.join("registry/tuf/timestamp.json");
    assert!(seen.exists());
    let trust = |root: &str, force: bool| site.trust(root, force);

    // Provisioning again with the original root: the appliance keeps the
    // rotated one, and what it saw of the registry.
    let (success, text) = trust("1.root.json", false);
    assert!(!success, "{text}");
    assert!(
        text.contains("already trusts version 2") && text.contains("--force"),
        "{text}"
    );
    assert_eq!(trusted_version(), 2);
    assert!(
        seen.exists(),
        "the record of what the appliance saw is gone"
    );

    // The root it follows, trusted again: nothing forgotten.
    let (success, text) = trust("2.root.json", false);
    assert!(success, "{text}");
    assert_eq!(trusted_version(), 2);
    assert!(
        seen.exists(),
        "re-trusting the same root forgot the registry"
    );

    // Starting over is the operator's explicit choice.
    let (success, text) = trust("1.root.json", true);
    assert!(success, "{text}");
    assert_eq!(trusted_version(), 1);
    assert!(!seen.exists(), "a new root of trust starts a new history");
}

#[test]
fn a_damaged_trusted_root_is_replaced_only_with_force() {
    let site = site_with("acme-topics");
    let trusted = site.data.join("registry/root.json");
    let whole = std::fs::read(&trusted).unwrap();
    let mut unsigned: serde_json::Value = serde_json::from_slice(&whole).unwrap();
    unsigned["signatures"][0]["sig"] = "not hex".into();
    let damages = [
        ("not JSON", b"\x00\x00\x00 garbage".to_vec()),
        ("truncated", whole[..whole.len() / 2].to_vec()),
        (
            "a signature not in hex",
            serde_json::to_vec(&unsigned).unwrap(),
        ),
    ];
    for (damage, bytes) in damages {
        std::fs::write(&trusted, &bytes).unwrap();
        // Without --force: refused, saying which file, what is wrong with
        // it, and the way out; nothing changed.
        let (success, text) = site.trust("1.root.json", false);
        assert!(!success, "{damage}: trusted anyway: {text}");
        for says in [s(&trusted), "damaged", "--force"] {
            assert!(
                text.contains(says),
                "{damage}: does not say {says:?}: {text}"
            );
        }
        assert_eq!(std::fs::read(&trusted).unwrap(), bytes, "{damage}");
        // An install says so too, not that the registry is at fault.
        let (success, text) = site.install("acme-topics");
        assert!(!success, "{damage}: installed anyway: {text}");
        for says in [s(&trusted), "damaged", "--force"] {
            assert!(
                text.contains(says),
                "{damage}: the install does not say {says:?}: {text}"
            );
        }

        // With --force: replaced, and said so.
        let (success, text) = site.trust("1.root.json", true);
        assert!(success, "{damage}: {text}");
        assert!(
            text.contains(s(&trusted)) && text.contains("damaged") && text.contains("replaced"),
            "{damage}: does not say the damaged root was replaced: {text}"
        );
        assert_eq!(site.trusted_root_version(), 1, "{damage}");
    }
    let (success, text) = site.install("acme-topics");
    assert!(success, "the replaced root does not work: {text}");
}

/// Every file under `dir`, by its path in `dir`, with its bytes.
fn files(dir: &Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    let mut all = std::collections::BTreeMap::new();
    let mut dirs = vec![dir.to_owned()];
    while let Some(next) = dirs.pop() {
        for entry in std::fs::read_dir(&next).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                let bytes = std::fs::read(&path).unwrap();
                all.insert(path.strip_prefix(dir).unwrap().to_owned(), bytes);
            }
        }
    }
    all
}

fn copy_dir(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
    }
}

#[test]
fn a_registry_served_over_http_installs_the_same() {
    if !common::appliance::require("python3") {
        return;
    }
    let site = site_with("acme-topics");
    let port = common::appliance::free_port();
    let _server = common::appliance::Child(
        std::process::Command::new("python3")
            .args(["-m", "http.server", "--bind", "127.0.0.1"])
            .arg(port.to_string())
            .current_dir(&site.reg)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    common::appliance::wait_for_port(port);
    ok(&[
        "--data",
        s(&site.data),
        "registry",
        "trust",
        s(&site.reg.join("metadata/1.root.json")),
        "--registry",
        &format!("http://127.0.0.1:{port}"),
    ]);
    let (success, text) = site.install("acme-topics");
    assert!(success, "{text}");
    assert!(
        text.contains(&format!(
            "fetching acme-topics from http://127.0.0.1:{port}"
        )),
        "{text}"
    );
}

/// When the role in `file` of the metadata of registry `reg` expires, in
/// days from now.
fn expires_in_days(reg: &Path, file: &str) -> f64 {
    let bytes = std::fs::read(reg.join("metadata").join(file)).unwrap();
    let role: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let expires: jiff::Timestamp = role["signed"]["expires"].as_str().unwrap().parse().unwrap();
    let left = expires.duration_since(jiff::Timestamp::now());
    left.as_secs_f64() / 86_400.0
}

fn role_version(site: &Site, file: &str) -> u64 {
    let bytes = std::fs::read(site.reg.join("metadata").join(file)).unwrap();
    let role: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    role["signed"]["version"].as_u64().unwrap()
}

#[test]
fn the_timestamp_expires_in_a_day_and_is_refreshed_with_its_key_alone() {
    // A mirror may serve a frozen registry only until the timestamp
    // expires: a day, and the snapshot a week, whatever --days says; so
    // from the first metadata on, and after every change.
    let check = |reg: &Path| {
        let timestamp = expires_in_days(reg, "timestamp.json");
        let snapshot = expires_in_days(reg, "snapshot.json");
        let targets = expires_in_days(reg, "targets.json");
        assert!(
            0.9 < timestamp && timestamp <= 1.01,
            "timestamp: {timestamp} days"
        );
        assert!(
            6.9 < snapshot && snapshot <= 7.01,
            "snapshot: {snapshot} days"
        );
        assert!(targets > 300.0, "targets: {targets} days");
    };
    let owner = tempfile::tempdir().unwrap();
    let reg = owner.path().join("reg");
    let keys = owner.path().join("keys");
    ok(&[
        "registry",
        "init",
        s(&reg),
        "--keys",
        s(&keys),
        "--days",
        "400",
    ]);
    check(&reg);
    let site = site_with("acme-topics");
    check(&site.reg);

    // A timer on an online machine holds the timestamp key only.
    let online = site.root.join("online-keys");
    std::fs::create_dir_all(&online).unwrap();
    std::fs::copy(
        site.keys.join("timestamp.pem"),
        online.join("timestamp.pem"),
    )
    .unwrap();
    let before = role_version(&site, "timestamp.json");
    let text = ok(&[
        "registry",
        "refresh",
        s(&site.reg),
        "--keys",
        s(&online),
        "--timestamp",
        "--timestamp-days",
        "2",
    ]);
    assert!(text.contains("snapshot expires"), "{text}");
    assert_eq!(role_version(&site, "timestamp.json"), before + 1);
    let timestamp = expires_in_days(&site.reg, "timestamp.json");
    assert!(
        1.9 < timestamp && timestamp <= 2.01,
        "timestamp: {timestamp} days"
    );
    let (success, text) = site.install("acme-topics");
    assert!(success, "the refreshed timestamp is refused: {text}");

    // The snapshot too, with its key and the timestamp's.
    std::fs::copy(site.keys.join("snapshot.pem"), online.join("snapshot.pem")).unwrap();
    let snapshot_before = role_version(&site, "snapshot.json");
    ok(&[
        "registry",
        "refresh",
        s(&site.reg),
        "--keys",
        s(&online),
        "--snapshot",
    ]);
    assert_eq!(role_version(&site, "snapshot.json"), snapshot_before + 1);
    // Verified: refused only for what it serves.
    let (success, text) = site.install("acme-topics");
    assert!(!success && text.contains("not newer"), "{text}");
    site.publish("acme-topics", "1.1.0", "detector", "new-topic");
    let (success, text) = site.install("acme-topics");
    assert!(success && text.contains("1.1.0"), "{text}");

    // A timestamp let expire (no timer ran) is refused.
    ok(&[
        "registry",
        "refresh",
        s(&site.reg),
        "--keys",
        s(&online),
        "--timestamp",
        "--timestamp-days",
        "0",
    ]);
    site.refused("acme-topics", "expired");
}
