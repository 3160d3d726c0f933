//! The registry owner's and the publishers' side: creating a registry,
//! delegating plugin names to a publisher, publishing bundles, and keeping
//! the metadata fresh.
//!
//! A registry is a directory of static files: `metadata/` (the TUF roles)
//! and `targets/` (bundles, as `plugins/NAME/VERSION/{manifest.json,
//! component.wasm}`), served as they are by any web server or copied to a
//! USB stick. The owner keeps four keys in a key directory (`root.pem`,
//! `targets.pem`, `snapshot.pem`, `timestamp.pem`), the first two offline. A
//! publisher holds one key; the owner's delegation lets it sign only the
//! names `plugins/PATTERN/*`. Publishing writes the publisher's signed role
//! and its bundle into an outbox; the owner accepts the outbox into the
//! registry, which checks the signature and the names and re-signs the
//! snapshot and timestamp.
//!
//! The snapshot and the timestamp expire soon ([`SNAPSHOT_DAYS`],
//! [`TIMESTAMP_DAYS`]): the timestamp is what tells an appliance that it
//! sees the registry as it is now, so a mirror can serve a frozen registry
//! (hiding a new version or a revocation) only until it expires. Their
//! keys can therefore live online: [`refresh_timestamp`] needs only the
//! timestamp key, [`refresh_snapshot`] the snapshot and timestamp keys,
//! and a timer runs them. Root and targets stay offline.

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};

use anyhow::Context;
use aws_lc_rs::rand::SystemRandom;
use serde::{Deserialize, Serialize};
use tough::editor::RepositoryEditor;
use tough::editor::signed::SignedRole;
use tough::editor::targets::TargetsEditor;
use tough::key_source::KeySource;
use tough::schema::decoded::{Decoded, Hex};
use tough::schema::key::Key;
use tough::schema::{
    Hashes, KeyHolder, Metafile, PathPattern, PathSet, Role, RoleKeys, RoleType, Root, Signed,
    Target, Targets,
};
use tough::{ExpirationEnforcement, Repository, RepositoryLoader, TargetName};
use url::Url;

use super::bundle::{Bundle, COMPONENT, MANIFEST, sha256_hex};
use super::fetch::RegistryTransport;
use super::keys::{PemKey, key_id};
use crate::identity::hex;

const SPEC_VERSION: &str = "1.0.0";
/// The top-level roles, each with its key file in the owner's key directory.
const ROLES: [RoleType; 4] = [
    RoleType::Root,
    RoleType::Targets,
    RoleType::Snapshot,
    RoleType::Timestamp,
];

/// The target name of a bundle's file.
pub fn target_name(name: &str, version: &semver::Version, file: &str) -> String {
    format!("plugins/{name}/{version}/{file}")
}

/// A `file://` URL for a directory, ending in `/` as URL joining needs.
pub fn dir_url(dir: &Path) -> anyhow::Result<Url> {
    let dir = std::fs::canonicalize(dir).with_context(|| format!("{}", dir.display()))?;
    Url::from_directory_path(&dir).map_err(|()| anyhow::anyhow!("{} is not a path", dir.display()))
}

/// Default days until the snapshot expires: a full `refresh` (or a
/// `refresh --snapshot`) at least weekly.
pub const SNAPSHOT_DAYS: u32 = 7;
/// Default days until the timestamp expires: how long a mirror may serve a
/// frozen registry unnoticed. A daily `refresh --timestamp` keeps it fresh.
pub const TIMESTAMP_DAYS: u32 = 1;

/// How long the metadata the owner signs stays valid, in days.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetimes {
    /// The root and targets roles (the delegations with them), signed
    /// with the offline keys.
    pub days: u32,
    /// The snapshot.
    pub snapshot_days: u32,
    /// The timestamp.
    pub timestamp_days: u32,
}

impl Lifetimes {
    /// `days` for root and targets, the defaults for snapshot and
    /// timestamp.
    pub fn new(days: u32) -> Self {
        Lifetimes {
            days,
            snapshot_days: SNAPSHOT_DAYS,
            timestamp_days: TIMESTAMP_DAYS,
        }
    }
}

fn key_file(keys: &Path, role: RoleType) -> PathBuf {
    keys.join(format!("{role}.pem"))
}

fn owner_keys(keys: &Path) -> anyhow::Result<Vec<Box<dyn KeySource>>> {
    ROLES
        .iter()
        .map(|role| {
            let path = key_file(keys, *role);
            anyhow::ensure!(path.exists(), "no {role} key {}", path.display());
            Ok(PemKey { path }.source())
        })
        .collect()
}

fn expiry(days: u32) -> jiff::Timestamp {
    let now = jiff::Timestamp::now();
    now.checked_add(jiff::SignedDuration::from_hours(i64::from(days) * 24))
        .unwrap_or(now)
}

fn next(version: NonZeroU64) -> NonZeroU64 {
    version.saturating_add(1)
}

/// Create an empty registry in `registry`, with new owner keys in `keys`
/// (existing keys there are used as they are), its metadata valid for
/// `lifetimes`.
pub async fn init(registry: &Path, keys: &Path, lifetimes: &Lifetimes) -> anyhow::Result<()> {
    let days = lifetimes.days;
    let metadata = registry.join("metadata");
    anyhow::ensure!(
        !metadata.join("root.json").exists(),
        "{} is already a registry",
        registry.display()
    );
    std::fs::create_dir_all(&metadata)?;
    std::fs::create_dir_all(registry.join("targets"))?;
    let mut root = Root {
        spec_version: SPEC_VERSION.into(),
        consistent_snapshot: false,
        version: NonZeroU64::MIN,
        expires: expiry(days),
        keys: HashMap::new(),
        roles: HashMap::new(),
        _extra: HashMap::new(),
    };
    for role in ROLES {
        let path = key_file(keys, role);
        let key = if path.exists() {
            PemKey { path }
        } else {
            PemKey::generate(&path)?
        };
        let public = key.public()?;
        let id = public.key_id()?;
        root.keys.insert(id.clone(), public);
        root.roles.insert(
            role,
            RoleKeys {
                keyids: vec![id],
                threshold: NonZeroU64::MIN,
                _extra: HashMap::new(),
            },
        );
    }
    let signed = sign_root(&root, &root, keys).await?;
    write_root(&metadata, &signed).await?;
    let mut editor = RepositoryEditor::new(metadata.join("root.json")).await?;
    let one = NonZeroU64::MIN;
    editor
        .targets_version(one)?
        .targets_expires(expiry(days))?
        .snapshot_version(one)
        .snapshot_expires(expiry(lifetimes.snapshot_days))
        .timestamp_version(one)
        .timestamp_expires(expiry(lifetimes.timestamp_days));
    editor
        .sign(&owner_keys(keys)?)
        .await?
        .write(&metadata)
        .await?;
    Ok(())
}

async fn sign_root(
    root: &Root,
    signer_root: &Root,
    keys: &Path,
) -> anyhow::Result<SignedRole<Root>> {
    let source = PemKey {
        path: key_file(keys, RoleType::Root),
    }
    .source();
    Ok(SignedRole::new(
        root.clone(),
        &KeyHolder::Root(signer_root.clone()),
        &[source],
        &SystemRandom::new(),
    )
    .await?)
}

async fn write_root(metadata: &Path, root: &SignedRole<Root>) -> anyhow::Result<()> {
    let version = root.signed().signed.version;
    tokio::fs::write(metadata.join(format!("{version}.root.json")), root.buffer()).await?;
    tokio::fs::write(metadata.join("root.json"), root.buffer()).await?;
    Ok(())
}

/// Load `registry` (a directory) the way its owner sees it: trusting its
/// own first root, and accepting expired metadata so it can be refreshed.
async fn load_own(registry: &Path) -> anyhow::Result<Repository> {
    let metadata = registry.join("metadata");
    let first = std::fs::read(metadata.join("1.root.json"))
        .with_context(|| format!("{} is not a registry", registry.display()))?;
    let datastore = tempfile::tempdir()?;
    let repo = load(
        &dir_url(registry)?,
        &first,
        datastore.path(),
        None,
        ExpirationEnforcement::Unsafe,
    )
    .await
    .with_context(|| format!("loading registry {}", registry.display()))?;
    Ok(repo)
}

/// An editor over the owner's registry with every version bumped and every
/// expiry set by `lifetimes`; the caller changes what it needs and signs.
async fn edit_own(registry: &Path, lifetimes: &Lifetimes) -> anyhow::Result<RepositoryEditor> {
    edit_loaded(registry, load_own(registry).await?, lifetimes).await
}

/// [`edit_own`] over `repo`, the registry as [`load_own`] loaded it.
async fn edit_loaded(
    registry: &Path,
    repo: Repository,
    lifetimes: &Lifetimes,
) -> anyhow::Result<RepositoryEditor> {
    let versions = (
        repo.targets().signed.version,
        repo.snapshot().signed.version,
        repo.timestamp().signed.version,
    );
    let root = registry.join("metadata").join("root.json");
    let mut editor = RepositoryEditor::from_repo(&root, repo).await?;
    editor
        .targets_version(next(versions.0))?
        .targets_expires(expiry(lifetimes.days))?
        .snapshot_version(next(versions.1))
        .snapshot_expires(expiry(lifetimes.snapshot_days))
        .timestamp_version(next(versions.2))
        .timestamp_expires(expiry(lifetimes.timestamp_days));
    Ok(editor)
}

/// A publisher's public card: its name, its key, and its first (empty)
/// signed role, which the owner adds to the registry when delegating.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Card {
    /// The publisher's role name.
    pub publisher: String,
    /// Its public key.
    pub key: Key,
    /// Its empty role, signed with the key.
    pub role: Signed<Targets>,
}

/// Create a publisher's key in `key` and its card in `card`.
pub async fn keygen(publisher: &str, key: &Path, card: &Path, days: u32) -> anyhow::Result<Card> {
    anyhow::ensure!(
        super::manifest::valid_name(publisher),
        "a publisher name is 1 to 64 lowercase letters, digits and dashes"
    );
    let pem = PemKey::generate(key)?;
    let public = pem.public()?;
    let mut editor = TargetsEditor::new(publisher);
    editor.version(NonZeroU64::MIN).expires(expiry(days));
    // The role is signed by its own key here; the owner's delegation is
    // what makes the key count.
    let (_, role) = editor.create_signed(&[pem.source()]).await?.targets();
    let card_value = Card {
        publisher: publisher.into(),
        key: public,
        role,
    };
    let text = serde_json::to_vec_pretty(&card_value)?;
    std::fs::write(card, text).with_context(|| format!("writing {}", card.display()))?;
    Ok(card_value)
}

/// Delegate the plugin names matching `patterns` (`acme-*`) to the
/// publisher of `card`, signed with the owner's keys.
pub async fn delegate(
    registry: &Path,
    keys: &Path,
    card: &Path,
    patterns: &[String],
    lifetimes: &Lifetimes,
) -> anyhow::Result<()> {
    add_delegation(registry, keys, card, patterns, lifetimes, true).await
}

/// [`delegate`], terminating or not: a terminating delegation ends TUF's
/// search for the names it matches, so no publisher delegated later can
/// ever sign them. [`delegate`]'s always are; a registry written by other
/// tools may hold others.
async fn add_delegation(
    registry: &Path,
    keys: &Path,
    card: &Path,
    patterns: &[String],
    lifetimes: &Lifetimes,
    terminating: bool,
) -> anyhow::Result<()> {
    let card: Card = serde_json::from_slice(
        &std::fs::read(card).with_context(|| format!("reading {}", card.display()))?,
    )
    .with_context(|| format!("{} is not a publisher card", card.display()))?;
    anyhow::ensure!(!patterns.is_empty(), "delegate at least one name pattern");
    let mut paths = Vec::new();
    for p in patterns {
        anyhow::ensure!(
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '*'),
            "name pattern {p:?}: lowercase letters, digits, dashes and `*` only"
        );
        paths.push(PathPattern::new(format!("plugins/{p}/*"))?);
    }
    // The card's role is handed to tough through a file URL, as a
    // publisher's role normally is.
    let staging = tempfile::tempdir()?;
    let file = staging.path().join(format!("{}.json", card.publisher));
    std::fs::write(&file, serde_json::to_vec(&card.role)?)?;
    let mut editor = edit_own(registry, lifetimes).await?;
    let keyid = card.key.key_id()?;
    editor
        .add_role(
            &card.publisher,
            dir_url(staging.path())?.as_str(),
            PathSet::Paths(paths),
            terminating,
            NonZeroU64::MIN,
            Some(HashMap::from([(keyid, card.key.clone())])),
        )
        .await
        .with_context(|| format!("delegating to {}", card.publisher))?;
    editor
        .sign(&owner_keys(keys)?)
        .await?
        .write(registry.join("metadata"))
        .await?;
    Ok(())
}

/// Publish `bundle` as `publisher`, signed with `key`: write the
/// publisher's new role and the bundle's files into `outbox`, for the
/// registry owner to accept. `registry` is where the registry is read
/// (a directory or a URL), `root` the registry's root to trust.
pub async fn publish(
    registry: &Url,
    root: &Path,
    publisher: &str,
    key: &Path,
    bundle: &Bundle,
    outbox: &Path,
    days: u32,
) -> anyhow::Result<Vec<String>> {
    let m = &bundle.manifest;
    let manifest = serde_json::to_vec_pretty(m)?;
    let files = [
        (MANIFEST, manifest.as_slice()),
        (COMPONENT, &bundle.component[..]),
    ];
    let signer = Signer {
        publisher,
        key,
        days,
    };
    publish_files(registry, root, &signer, &m.name, &m.version, &files, outbox).await
}

/// Who signs a publication, and for how long.
#[derive(Debug)]
pub struct Signer<'a> {
    /// The publisher's role name.
    pub publisher: &'a str,
    /// Its key.
    pub key: &'a Path,
    /// Days until its role expires.
    pub days: u32,
}

/// Sign `files` as the targets `plugins/NAME/VERSION/FILE` into `outbox`.
/// [`publish`] checks the bundle first; this does not, so tests can put
/// what a careless or hostile publisher would in front of the appliance.
pub async fn publish_files(
    registry: &Url,
    root: &Path,
    signer: &Signer<'_>,
    name: &str,
    version: &semver::Version,
    files: &[(&str, &[u8])],
    outbox: &Path,
) -> anyhow::Result<Vec<String>> {
    let publisher = signer.publisher;
    let repo = load_remote(registry, root).await?;
    let role = repo.delegated_role(publisher).with_context(|| {
        format!("the registry delegates nothing to {publisher}: ask its owner for a delegation")
    })?;
    let role_version = role
        .targets
        .as_ref()
        .map_or(NonZeroU64::MIN, |t| next(t.signed.version));
    let targets_dir = outbox.join("targets");
    let mut editor = TargetsEditor::from_repo(repo, publisher)?;
    let mut names = Vec::new();
    for (file, bytes) in files {
        let target = target_name(name, version, file);
        let dest = targets_dir.join(&target);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&dest, bytes)?;
        editor.add_target(TargetName::new(&target)?, Target::from_path(&dest).await?)?;
        names.push(target);
    }
    editor.version(role_version).expires(expiry(signer.days));
    let key = PemKey {
        path: signer.key.to_owned(),
    };
    let signed = editor.sign(&[key.source()]).await.with_context(|| {
        format!(
            "signing as {publisher} (is {} its key?)",
            signer.key.display()
        )
    })?;
    signed.write(outbox.join("metadata"), false).await?;
    Ok(names)
}

/// Accept a publisher's `outbox` into the registry: its role must be signed
/// by the key delegated to it, name only what it was delegated, and list
/// exactly the files the outbox holds. The snapshot and timestamp are
/// re-signed.
///
/// "Only what it was delegated" is checked as an appliance reads the
/// registry: TUF's search for each name the role lists, in the registry as
/// it would be after the update, must reach the role's own entry. A name
/// no delegation of the role matches is refused, and so is one an earlier
/// terminating delegation keeps from it, or one the search finds in
/// another role first: appliances would never read it from this role,
/// and the version listed would be offered, or the bundle credited, to a
/// publisher that did not sign it.
pub async fn accept(
    registry: &Path,
    keys: &Path,
    outbox: &Path,
    lifetimes: &Lifetimes,
) -> anyhow::Result<()> {
    let mut roles = Vec::new();
    for entry in std::fs::read_dir(outbox.join("metadata"))
        .with_context(|| format!("{} is not an outbox", outbox.display()))?
    {
        let path = entry?.path();
        if let Some(name) = path.file_stem().and_then(|s| s.to_str()) {
            roles.push((name.to_owned(), path.clone()));
        }
    }
    anyhow::ensure!(!roles.is_empty(), "{} holds no role", outbox.display());
    let repo = load_own(registry).await?;
    // The delegation tree as appliances read it now, and as they will once
    // the outbox is in: tough's editor keeps its own to itself.
    let before = repo.targets().signed.clone();
    let mut after = before.clone();
    let mut editor = edit_loaded(registry, repo, lifetimes).await?;
    let mut listed = Vec::new();
    let mut copies = Vec::new();
    for (role, file) in &roles {
        let signed: Signed<Targets> = serde_json::from_slice(&std::fs::read(file)?)
            .with_context(|| format!("{} is not a role", file.display()))?;
        editor
            .update_delegated_targets(role, dir_url(&outbox.join("metadata"))?.as_str())
            .await
            .with_context(|| format!("role {role} from {}", outbox.display()))?;
        for (name, target) in &signed.signed.targets {
            listed.push((role, name.clone()));
            let source = outbox.join("targets").join(name.resolved());
            if !source.exists() {
                // Published earlier; already in the registry.
                continue;
            }
            let bytes = std::fs::read(&source)?;
            anyhow::ensure!(
                sha256_hex(&bytes) == hex(&target.hashes.sha256),
                "{} does not match what {role} signed",
                source.display()
            );
            copies.push((source, registry.join("targets").join(name.resolved())));
        }
        put_role(&mut after, role, signed)?;
    }
    for (role, name) in &listed {
        let refused = || format!("{} refused: nothing accepted", outbox.display());
        let entry = read_from(&after, role, name).with_context(refused)?;
        keeps_bytes(&before, role, name, entry).with_context(refused)?;
    }
    // tough checks at signing that some delegation matches each name, a
    // weaker form of the check above.
    let signed = editor
        .sign(&owner_keys(keys)?)
        .await
        .context("a publisher named a plugin it was not delegated")?;
    for (from, to) in copies {
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(&from, &to)?;
    }
    signed.write(registry.join("metadata")).await?;
    Ok(())
}

/// Put `role`, as an outbox holds it, in place of the role `name` in
/// `tree`, as tough's `update_delegated_targets` does in its editor: the
/// roles it delegates to keep what the registry holds of them.
fn put_role(tree: &mut Targets, name: &str, mut role: Signed<Targets>) -> anyhow::Result<()> {
    if name == "targets" {
        tree.update_targets(&mut role);
        *tree = role.signed;
        return Ok(());
    }
    let slot = tree
        .delegated_role_mut(name)
        .with_context(|| format!("the registry delegates nothing to {name}"))?;
    if let Some(old) = &slot.targets {
        old.signed.update_targets(&mut role);
    }
    slot.targets = Some(role);
    Ok(())
}

/// Refuse `role` listing `name` unless TUF's search for `name` in `tree`
/// (the registry as appliances would read it) reaches `role`'s own entry;
/// that entry.
fn read_from<'a>(tree: &'a Targets, role: &str, name: &TargetName) -> anyhow::Result<&'a Target> {
    let target = name.raw();
    let found = super::search(tree, name);
    let reached = match found {
        Some(found) if found.role == role => return Ok(found.entry),
        Some(found) => Some(found.role),
        None => None,
    };
    let by = reached.map_or_else(String::new, |other| {
        format!(" (appliances read it from {other}, which the search for it reaches first)")
    });
    anyhow::ensure!(
        delegates(tree, role, name),
        "{role} lists {target}, which is not delegated to {role}{by}"
    );
    if by.is_empty() {
        anyhow::bail!(
            "{role} lists {target}, which an earlier terminating delegation keeps from \
             {role}: appliances would never read it"
        );
    }
    anyhow::bail!("{role} lists {target}, but it is not {role}'s to sign{by}")
}

/// Refuse `role` listing `name` as `entry` when appliances read `name`,
/// in the registry as it is (`before`), from another role's entry with
/// other bytes: accepting would copy `role`'s file over that role's in
/// `targets/`.
///
/// [`read_from`] alone makes this impossible while every delegation is
/// the owner's and terminating, as [`delegate`] makes them: the search for
/// a name then stops at the owner's own entry or the first delegation
/// matching it, whatever the publishers' roles list, so if it reaches
/// `role` after the update it reached `role` before, and no other role's
/// entry. A delegation that
/// does not terminate (TUF allows them; tough and other tools make them,
/// and a publisher may delegate so within its own names) lets the search
/// go past a role that does not list the name: that role, listing it,
/// would then take the name over from one the search reaches later.
fn keeps_bytes(
    before: &Targets,
    role: &str,
    name: &TargetName,
    entry: &Target,
) -> anyhow::Result<()> {
    let Some(found) = super::search(before, name) else {
        return Ok(());
    };
    let same =
        found.entry.length == entry.length && found.entry.hashes.sha256 == entry.hashes.sha256;
    anyhow::ensure!(
        found.role == role || same,
        "{role} lists {}, which appliances read from {} now, with other bytes: accepting it \
         would replace the file {} signed",
        name.raw(),
        found.role,
        found.role
    );
    Ok(())
}

/// Whether the delegation to `role` in `tree` names `target`.
fn delegates(tree: &Targets, role: &str, target: &TargetName) -> bool {
    let Ok(delegated) = tree.delegated_role(role) else {
        return false;
    };
    // tough matches a name against one delegation's paths only through
    // a set of delegations: this one alone, without its metadata.
    let alone = tough::schema::Delegations {
        keys: HashMap::new(),
        roles: vec![tough::schema::DelegatedRole {
            targets: None,
            name: delegated.name.clone(),
            keyids: delegated.keyids.clone(),
            threshold: delegated.threshold,
            paths: delegated.paths.clone(),
            terminating: delegated.terminating,
        }],
    };
    alone.target_is_delegated(target)
}

/// Re-sign all the registry's metadata but the root with fresh expiries,
/// with the four owner keys.
pub async fn refresh(registry: &Path, keys: &Path, lifetimes: &Lifetimes) -> anyhow::Result<()> {
    let editor = edit_own(registry, lifetimes).await?;
    editor
        .sign(&owner_keys(keys)?)
        .await?
        .write(registry.join("metadata"))
        .await?;
    Ok(())
}

/// Re-sign the timestamp alone, valid for `days`, with the timestamp key
/// alone (`keys` need hold nothing else): what a daily timer runs online.
/// Returns when the snapshot it points at expires, which this does not
/// change.
pub async fn refresh_timestamp(
    registry: &Path,
    keys: &Path,
    days: u32,
) -> anyhow::Result<jiff::Timestamp> {
    let repo = load_own(registry).await?;
    let mut timestamp = repo.timestamp().signed.clone();
    timestamp.version = next(timestamp.version);
    timestamp.expires = expiry(days);
    let timestamp = sign_online(&repo, timestamp, keys, RoleType::Timestamp).await?;
    write_metadata(registry, "timestamp.json", timestamp.buffer())?;
    Ok(repo.snapshot().signed.expires)
}

/// Re-sign the snapshot (over the same roles) and the timestamp, valid
/// for `lifetimes`, with the snapshot and timestamp keys alone. Returns
/// when the targets role expires, which this does not change.
pub async fn refresh_snapshot(
    registry: &Path,
    keys: &Path,
    lifetimes: &Lifetimes,
) -> anyhow::Result<jiff::Timestamp> {
    let repo = load_own(registry).await?;
    let mut snapshot = repo.snapshot().signed.clone();
    snapshot.version = next(snapshot.version);
    snapshot.expires = expiry(lifetimes.snapshot_days);
    let snapshot = sign_online(&repo, snapshot, keys, RoleType::Snapshot).await?;
    let mut timestamp = repo.timestamp().signed.clone();
    timestamp.version = next(timestamp.version);
    timestamp.expires = expiry(lifetimes.timestamp_days);
    let bytes = snapshot.buffer();
    let sha256 = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    timestamp.meta.insert(
        "snapshot.json".into(),
        Metafile {
            length: Some(bytes.len() as u64),
            hashes: Some(Hashes {
                sha256: Decoded::from(sha256.as_ref().to_vec()),
                _extra: HashMap::new(),
            }),
            version: snapshot.signed().signed.version,
            _extra: HashMap::new(),
        },
    );
    let timestamp = sign_online(&repo, timestamp, keys, RoleType::Timestamp).await?;
    // The snapshot first: the timestamp names it.
    write_metadata(registry, "snapshot.json", bytes)?;
    write_metadata(registry, "timestamp.json", timestamp.buffer())?;
    Ok(repo.targets().signed.expires)
}

/// Sign `role` with `which`'s key in `keys`, as `repo`'s root says.
async fn sign_online<T: Role + Serialize>(
    repo: &Repository,
    role: T,
    keys: &Path,
    which: RoleType,
) -> anyhow::Result<SignedRole<T>> {
    let path = key_file(keys, which);
    anyhow::ensure!(path.exists(), "no {which} key {}", path.display());
    let holder = KeyHolder::Root(repo.root().signed.clone());
    SignedRole::new(
        role,
        &holder,
        &[PemKey { path }.source()],
        &SystemRandom::new(),
    )
    .await
    .with_context(|| format!("signing the {which} role"))
}

fn write_metadata(registry: &Path, file: &str, bytes: &[u8]) -> anyhow::Result<()> {
    let path = registry.join("metadata").join(file);
    crate::store::write_atomic(&path, bytes, 0o644)
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))
}

/// Replace the root key: the new root is signed by the new key and by the
/// old one, so appliances trusting the old root accept it. The old key is
/// kept as `root.VERSION.pem`.
pub async fn rotate_root(
    registry: &Path,
    keys: &Path,
    lifetimes: &Lifetimes,
) -> anyhow::Result<String> {
    let metadata = registry.join("metadata");
    let old: Signed<Root> = serde_json::from_slice(&std::fs::read(metadata.join("root.json"))?)?;
    let old_root = old.signed;
    let old_key = key_file(keys, RoleType::Root);
    let new_path = keys.join("root.new.pem");
    let _ = std::fs::remove_file(&new_path);
    let new_key = PemKey::generate(&new_path)?;
    let public = new_key.public()?;
    let new_id = public.key_id()?;
    let mut root = old_root.clone();
    root.version = next(old_root.version);
    root.expires = expiry(lifetimes.days);
    let old_ids: Vec<Decoded<Hex>> = root
        .roles
        .get(&RoleType::Root)
        .map(|r| r.keyids.clone())
        .unwrap_or_default();
    for id in &old_ids {
        let used_elsewhere = root
            .roles
            .iter()
            .any(|(role, keys)| *role != RoleType::Root && keys.keyids.contains(id));
        if !used_elsewhere {
            root.keys.remove(id);
        }
    }
    root.keys.insert(new_id.clone(), public);
    root.roles.insert(
        RoleType::Root,
        RoleKeys {
            keyids: vec![new_id.clone()],
            threshold: NonZeroU64::MIN,
            _extra: HashMap::new(),
        },
    );
    let rng = SystemRandom::new();
    let by_new = SignedRole::new(
        root.clone(),
        &KeyHolder::Root(root.clone()),
        &[new_key.source()],
        &rng,
    )
    .await?;
    let by_old = SignedRole::new(
        root.clone(),
        &KeyHolder::Root(old_root.clone()),
        &[PemKey {
            path: old_key.clone(),
        }
        .source()],
        &rng,
    )
    .await?;
    let signed = by_new.add_old_signatures(by_old.signed().signatures.clone())?;
    write_root(&metadata, &signed).await?;
    std::fs::rename(
        &old_key,
        keys.join(format!("root.{}.pem", old_root.version)),
    )?;
    std::fs::rename(&new_path, &old_key)?;
    refresh(registry, keys, lifetimes).await?;
    Ok(hex(&new_id))
}

/// Load a registry as a client, trusting `root`.
pub async fn load_remote(registry: &Url, root: &Path) -> anyhow::Result<Repository> {
    let root_bytes =
        std::fs::read(root).with_context(|| format!("reading trusted root {}", root.display()))?;
    let datastore = tempfile::tempdir()?;
    let safe = ExpirationEnforcement::Safe;
    load(registry, &root_bytes, datastore.path(), None, safe)
        .await
        .with_context(|| format!("loading registry {registry}"))
}

/// Load and verify the registry at `registry`, trusting `root`, with TUF's
/// record of what it saw kept in `datastore`; `ca_file` for HTTPS.
pub(super) async fn load(
    registry: &Url,
    root: &[u8],
    datastore: &Path,
    ca_file: Option<PathBuf>,
    expiration: ExpirationEnforcement,
) -> anyhow::Result<Repository> {
    let (metadata, targets) = registry_urls(registry)?;
    let repo = RepositoryLoader::new(&root, metadata, targets)
        .transport(RegistryTransport::new(ca_file))
        .expiration_enforcement(expiration)
        .datastore(datastore)
        .load()
        .await?;
    Ok(repo)
}

/// The metadata and targets URLs of the registry at `base`.
pub fn registry_urls(base: &Url) -> anyhow::Result<(Url, Url)> {
    let mut base = base.clone();
    if !base.path().ends_with('/') {
        base.set_path(&format!("{}/", base.path()));
    }
    Ok((base.join("metadata/")?, base.join("targets/")?))
}

/// A registry location as the command line takes it: a URL, or a path.
pub fn location(text: &str) -> anyhow::Result<Url> {
    if text.contains("://") {
        return Ok(Url::parse(text)?);
    }
    dir_url(Path::new(text))
}

/// Describe the key IDs of a card, for the owner to compare with what the
/// publisher says out of band.
pub fn card_key_id(card: &Card) -> anyhow::Result<String> {
    key_id(&card.key)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn accept_never_replaces_the_bytes_of_a_file_another_role_signed() {
        let dir = tempfile::tempdir().unwrap();
        let (reg, keys) = (dir.path().join("reg"), dir.path().join("keys"));
        let lifetimes = Lifetimes::new(30);
        init(&reg, &keys, &lifetimes).await.unwrap();
        // early holds every name, delegated first but not terminating (as
        // other tools can delegate): the search for a name early does not
        // list goes on to acme.
        for (publisher, pattern, terminating) in [("early", "*", false), ("acme", "acme-*", true)] {
            let card = dir.path().join(format!("{publisher}.card.json"));
            let key = dir.path().join(format!("{publisher}.pem"));
            keygen(publisher, &key, &card, 30).await.unwrap();
            let patterns = [pattern.to_owned()];
            add_delegation(&reg, &keys, &card, &patterns, &lifetimes, terminating)
                .await
                .unwrap();
        }
        let (url, root) = (dir_url(&reg).unwrap(), reg.join("metadata/root.json"));
        let version = semver::Version::new(1, 0, 0);
        let publish_as = |publisher: &'static str, bytes: &'static [u8]| {
            let key = dir.path().join(format!("{publisher}.pem"));
            let outbox = dir.path().join(format!("{publisher}-outbox"));
            let (url, root, version) = (url.clone(), root.clone(), version.clone());
            async move {
                let signer = Signer {
                    publisher,
                    key: &key,
                    days: 30,
                };
                let files = [(COMPONENT, bytes)];
                publish_files(
                    &url,
                    &root,
                    &signer,
                    "acme-topics",
                    &version,
                    &files,
                    &outbox,
                )
                .await
                .unwrap();
                outbox
            }
        };
        let outbox = publish_as("acme", b"acme's component").await;
        accept(&reg, &keys, &outbox, &lifetimes).await.unwrap();
        let file = reg
            .join("targets")
            .join(target_name("acme-topics", &version, COMPONENT));
        assert_eq!(std::fs::read(&file).unwrap(), b"acme's component");

        // early now lists acme's name, with its own bytes: the search would
        // reach early's entry first, but the file is acme's.
        let outbox = publish_as("early", b"early's component").await;
        let refused = accept(&reg, &keys, &outbox, &lifetimes).await.unwrap_err();
        let text = format!("{refused:#}");
        for says in [
            "early lists plugins/acme-topics/1.0.0/component.wasm",
            "appliances read from acme",
            "replace the file acme signed",
        ] {
            assert!(text.contains(says), "refusal does not say {says:?}: {text}");
        }
        assert_eq!(std::fs::read(&file).unwrap(), b"acme's component");
        let repo = load_own(&reg).await.unwrap();
        let name = TargetName::new(target_name("acme-topics", &version, COMPONENT)).unwrap();
        let found = super::super::search(&repo.targets().signed, &name).unwrap();
        assert_eq!(found.role, "acme", "the registry changed");
    }
}
