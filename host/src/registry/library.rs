//! The appliance's side of the registry: fetching verified bundles, and
//! the library of installed versions on disk.
//!
//! The appliance holds the registry's root of trust in
//! `<data>/registry/root.json` (put there by `palisade registry trust`),
//! and TUF's record of the newest metadata it has seen in
//! `<data>/registry/tuf/`, so metadata older than what it already saw (a
//! replay, a rollback, a freeze) is refused across restarts. Installed
//! bundles live in `<data>/plugins/NAME/VERSION/`; which version of each
//! name is active, and which were active before, is kept in sled.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tough::schema::{Root, Signed};
use tough::{ExpirationEnforcement, IntoVec, Repository, TargetName};
use url::Url;

use super::bundle::{Bundle, COMPONENT, MANIFEST, MAX_COMPONENT, MAX_MANIFEST};
use super::manifest::{Manifest, valid_name};
use super::publish::{load, target_name};
use crate::store::Store;

/// Where the registry's root of trust lives in the data directory.
pub fn trusted_root(data: &Path) -> PathBuf {
    data.join("registry").join("root.json")
}

/// What [`trust_root`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trusted {
    /// The root was the one already trusted: what the appliance saw of the
    /// registry is kept.
    Kept,
    /// A new root of trust, starting a new history of the registry.
    New,
    /// A new root of trust, starting a new history of the registry, in
    /// place of a trusted root that could not be read or parsed (why,
    /// said here): only with `force`.
    Replaced(String),
}

/// Make `root` (a TUF root, JSON) the registry's root of trust in `data`.
///
/// The root already trusted (the same content, however serialized) keeps
/// TUF's record of what the appliance saw of the registry, so metadata
/// older than that stays refused. Any other root starts a new history.
/// A root older than the trusted one (a lower version) is refused unless
/// `force`: after the registry rotated its root and the appliance followed,
/// going back to the original root would let a mirror withhold the
/// rotation and serve what the retired keys sign.
///
/// A trusted root that cannot be read or parsed (a truncated write, a
/// damaged disk) is refused too, unless `force`: without it, the appliance
/// cannot tell which root it followed; with it, `root` replaces it, and
/// the operator can start over without deleting files by hand.
pub fn trust_root(data: &Path, root: &[u8], force: bool) -> anyhow::Result<Trusted> {
    let new: Signed<Root> = parse_root(root)?;
    let path = trusted_root(data);
    let trusted = match std::fs::read(&path) {
        Ok(bytes) => parse_root(&bytes).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::Error::new(e).context("cannot be read")),
    };
    let (trusted, damaged) = match trusted {
        Ok(trusted) => (trusted, None),
        Err(e) if force => (None, Some(format!("{e:#}"))),
        Err(e) => anyhow::bail!(
            "the trusted registry root {} is damaged ({e:#}): nothing changed. Pass --force \
             to start over from this root, forgetting what the appliance saw of the registry",
            path.display()
        ),
    };
    let datastore = data.join("registry").join("tuf");
    if let Some(trusted) = trusted {
        if trusted.signed == new.signed {
            return Ok(Trusted::Kept);
        }
        let (old, new) = (trusted.signed.version, new.signed.version);
        anyhow::ensure!(
            new >= old || force,
            "this appliance already trusts version {old} of the registry's root, newer than \
             this one's {new} (the registry rotated its root, and the appliance followed): \
             nothing changed. Trusting an older root would let a mirror hide the rotation; \
             pass --force only to start over from this root, forgetting what the appliance \
             saw of the registry"
        );
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    match std::fs::remove_dir_all(&datastore) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", datastore.display())),
    }
    crate::store::write_atomic(&path, root, 0o644)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(damaged.map_or(Trusted::New, Trusted::Replaced))
}

fn parse_root(bytes: &[u8]) -> anyhow::Result<Signed<Root>> {
    serde_json::from_slice(bytes).context("not a TUF root")
}

/// How long fetching and verifying one plugin may take in all: the
/// metadata and both files, each fetch also bounded on its own. A mirror
/// that drip-feeds its answers keeps an install waiting no longer than
/// this, whatever the number of files; a real one, even slow, serves a
/// bundle well within it.
pub const FETCH_DEADLINE: Duration = Duration::from_secs(5 * 60);

/// A registry as the appliance sees it.
#[derive(Debug, Clone)]
pub struct RegistryClient {
    url: Url,
    data: PathBuf,
    ca_file: Option<PathBuf>,
    deadline: Duration,
}

/// A bundle fetched and verified, and who signed it.
#[derive(Debug)]
pub struct Fetched {
    /// The bundle.
    pub bundle: Bundle,
    /// The delegated role that signed it (`targets` for the registry owner).
    pub publisher: String,
}

impl RegistryClient {
    /// The registry at `url`, trusted through the root in `data`.
    pub fn new(url: Url, data: &Path, ca_file: Option<PathBuf>) -> Self {
        RegistryClient {
            url,
            data: data.to_owned(),
            ca_file,
            deadline: FETCH_DEADLINE,
        }
    }

    /// The same client, with `deadline` instead of [`FETCH_DEADLINE`].
    pub fn with_deadline(self, deadline: Duration) -> Self {
        RegistryClient { deadline, ..self }
    }

    /// The registry's URL.
    pub fn url(&self) -> &Url {
        &self.url
    }

    async fn load(&self) -> anyhow::Result<Repository> {
        let root_path = trusted_root(&self.data);
        let root = std::fs::read(&root_path).with_context(|| {
            format!(
                "no trusted registry root at {} (palisade registry trust ROOT.json)",
                root_path.display()
            )
        })?;
        // A damaged root would be refused below as the registry's fault:
        // said here as the appliance's, with the way out.
        parse_root(&root).with_context(|| {
            format!(
                "the trusted registry root {} is damaged: `palisade registry trust ROOT.json \
                 --force` starts over from a root you trust",
                root_path.display()
            )
        })?;
        let datastore = self.data.join("registry").join("tuf");
        std::fs::create_dir_all(&datastore)?;
        let (ca_file, safe) = (self.ca_file.clone(), ExpirationEnforcement::Safe);
        let repo = load(&self.url, &root, &datastore, ca_file, safe)
            .await
            .map_err(|e| anyhow::anyhow!("registry {} refused: {e:#}", self.url))?;
        // A rotated root becomes the one trusted from now on.
        if repo.root().signed.version.get() > root_version(&root) {
            let text = serde_json::to_vec(repo.root())?;
            crate::store::write_atomic(&root_path, &text, 0o644)
                .with_context(|| format!("writing {}", root_path.display()))?;
        }
        Ok(repo)
    }

    /// The versions of `name` the registry offers, oldest first.
    pub async fn versions(&self, name: &str) -> anyhow::Result<Vec<semver::Version>> {
        self.bounded(name, async {
            let repo = self.load().await?;
            Ok(versions_in(&repo, name))
        })
        .await
    }

    /// Run `work` (reading the registry about `name`) alone and within the
    /// client's deadline. Alone: each reading records the newest metadata
    /// it saw in the datastore, and two at once could record an older
    /// timestamp over a newer one. The wait for another's reading counts
    /// against the deadline too.
    async fn bounded<T>(
        &self,
        name: &str,
        work: impl std::future::Future<Output = anyhow::Result<T>>,
    ) -> anyhow::Result<T> {
        let alone = async {
            let _alone = one_fetch_at_a_time().await;
            work.await
        };
        tokio::time::timeout(self.deadline, alone)
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "registry {} took longer than {} s to serve {name}: nothing installed",
                    self.url,
                    self.deadline.as_secs_f64()
                )
            })?
    }

    /// Fetch `name` at `version` (the newest when `None`), verified by TUF
    /// and against its manifest, within the client's deadline
    /// ([`FETCH_DEADLINE`] unless set otherwise).
    pub async fn fetch(
        &self,
        name: &str,
        version: Option<&semver::Version>,
    ) -> anyhow::Result<Fetched> {
        anyhow::ensure!(valid_name(name), "{name:?} is not a plugin name");
        self.bounded(name, self.fetch_now(name, version)).await
    }

    async fn fetch_now(
        &self,
        name: &str,
        version: Option<&semver::Version>,
    ) -> anyhow::Result<Fetched> {
        let repo = self.load().await?;
        let version = match version {
            Some(v) => v.clone(),
            None => (versions_in(&repo, name).pop())
                .with_context(|| format!("registry {} has no plugin {name}", self.url))?,
        };
        let manifest_name = target_name(name, &version, MANIFEST);
        let manifest = read(&repo, &manifest_name, MAX_MANIFEST).await?;
        let manifest = Manifest::from_json(&manifest)?;
        anyhow::ensure!(
            manifest.name == name && manifest.version == version,
            "{manifest_name} describes {} {}, not {name} {version}",
            manifest.name,
            manifest.version
        );
        let component = read(
            &repo,
            &target_name(name, &version, COMPONENT),
            MAX_COMPONENT,
        )
        .await?;
        let publisher = signer(&repo, &manifest_name);
        let bundle = Bundle::new(manifest, component)?;
        Ok(Fetched { bundle, publisher })
    }
}

/// Held while a registry is read and its datastore written (see
/// [`RegistryClient::bounded`]). Async, so that a reading waiting for
/// another blocks no thread and gives up at its deadline.
async fn one_fetch_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static FETCHES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    FETCHES.lock().await
}

fn root_version(root: &[u8]) -> u64 {
    serde_json::from_slice::<serde_json::Value>(root)
        .ok()
        .and_then(|v| v.pointer("/signed/version")?.as_u64())
        .unwrap_or(0)
}

/// An error and its causes on one line: tough's errors say what failed at
/// the top and why underneath.
pub(super) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The versions of `name` the registry offers: those whose manifest TUF's
/// search for the target reaches, as [`read`]'s does. `all_targets` lists
/// every role's targets, also a name an earlier terminating delegation
/// keeps from the role that lists it (tough refuses at load only a name
/// no delegation matches): listed, such a version would be picked as the
/// newest, and then not be served.
fn versions_in(repo: &Repository, name: &str) -> Vec<semver::Version> {
    let prefix = format!("plugins/{name}/");
    let top = &repo.targets().signed;
    let mut versions: Vec<semver::Version> = repo
        .all_targets()
        .filter_map(|(target, _)| {
            let rest = target.resolved().strip_prefix(&prefix)?;
            let version = rest.strip_suffix(&format!("/{MANIFEST}"))?;
            let version = semver::Version::parse(version).ok()?;
            top.find_target(target, false).is_ok().then_some(version)
        })
        .collect();
    versions.sort();
    versions.dedup();
    versions
}

async fn read(repo: &Repository, name: &str, cap: u64) -> anyhow::Result<Vec<u8>> {
    let target = TargetName::new(name)?;
    let length = repo
        .targets()
        .signed
        .find_target(&target, false)
        .map(|t| t.length)
        .map_err(|_| anyhow::anyhow!("the registry has no signed {name}"))?;
    anyhow::ensure!(length <= cap, "{name} is {length} bytes, more than {cap}");
    let stream = repo
        .read_target(&target)
        .await
        .map_err(|e| anyhow::anyhow!("{name}: {}", chain(&e)))?
        .with_context(|| format!("the registry has no signed {name}"))?;
    stream
        .into_vec()
        .await
        .map_err(|e| anyhow::anyhow!("{name} refused: {}", chain(&e)))
}

/// The role that signed `name` as the appliance reads it: the one whose
/// entry TUF's search for the target picks, as [`read`] does. The first
/// role that lists the name is not it: a publisher can list names it was
/// not delegated, or that an earlier terminating delegation keeps from it.
fn signer(repo: &Repository, name: &str) -> String {
    let Ok(target) = TargetName::new(name) else {
        return "unknown".into();
    };
    super::search(&repo.targets().signed, &target).map_or_else(|| "unknown".into(), |f| f.role)
}

/// Refuse `m` unless it is newer than every version of its name `entry`
/// ever held: versions only grow.
fn newer(entry: &Entry, m: &Manifest) -> anyhow::Result<()> {
    if let Some(highest) = &entry.highest {
        anyhow::ensure!(
            m.version > *highest,
            "{} {} is not newer than {highest}, already installed here: versions only grow",
            m.name,
            m.version
        );
    }
    Ok(())
}

/// One installed version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct InstalledVersion {
    /// The version.
    pub version: semver::Version,
    /// Who signed it.
    pub publisher: String,
    /// When it was installed, RFC 3339.
    pub installed_at: String,
}

/// What the appliance holds of one plugin name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Entry {
    /// Installed versions, oldest first.
    pub versions: Vec<InstalledVersion>,
    /// The active version; `None` serves the first-party plugin of the
    /// name (if there is one).
    pub active: Option<semver::Version>,
    /// Versions active before, most recent last, for rollback.
    pub previous: Vec<Option<semver::Version>>,
    /// The newest version ever installed: versions only grow.
    pub highest: Option<semver::Version>,
}

/// The installed bundles and which are active. Clones share the library
/// and its lock on changes; open one per appliance.
#[derive(Debug, Clone)]
pub struct Library {
    dir: PathBuf,
    tree: sled::Tree,
    /// Held while an entry is read, changed and written back: admin
    /// requests run at once, and each would otherwise write back its own
    /// copy over the others' changes.
    changing: Arc<Mutex<()>>,
}

impl Library {
    /// The library of the appliance whose data directory is `data`.
    pub fn open(data: &Path, store: &Store) -> anyhow::Result<Library> {
        Ok(Library {
            dir: data.join("plugins"),
            tree: store.tree("plugin-library")?,
            changing: Arc::default(),
        })
    }

    /// What is installed of `name`.
    pub fn entry(&self, name: &str) -> anyhow::Result<Entry> {
        Ok(match self.tree.get(name.as_bytes())? {
            Some(bytes) => serde_json::from_slice(&bytes)?,
            None => Entry::default(),
        })
    }

    /// Every name with something installed.
    pub fn entries(&self) -> anyhow::Result<Vec<(String, Entry)>> {
        let mut all = Vec::new();
        for item in self.tree.iter() {
            let (key, value) = item?;
            all.push((
                String::from_utf8_lossy(&key).into_owned(),
                serde_json::from_slice(&value)?,
            ));
        }
        Ok(all)
    }

    /// Apply `change` to the entry of `name` and store the result, one
    /// change at a time; nothing is stored when `change` fails.
    fn change<T>(
        &self,
        name: &str,
        change: impl FnOnce(&mut Entry) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        // A poisoned lock only means a panic elsewhere while it was held;
        // the entry on disk is whole (sled writes it in one insert).
        let _alone = self.changing.lock().unwrap_or_else(PoisonError::into_inner);
        let mut entry = self.entry(name)?;
        let out = change(&mut entry)?;
        self.tree
            .insert(name.as_bytes(), serde_json::to_vec(&entry)?)?;
        self.tree.flush()?;
        Ok(out)
    }

    /// Refuse `bundle` unless it is newer than every version of its name
    /// this appliance ever installed.
    pub fn check_newer(&self, bundle: &Bundle) -> anyhow::Result<()> {
        newer(&self.entry(&bundle.manifest.name)?, &bundle.manifest)
    }

    /// Store `bundle`, signed by `publisher`, unless a version as new was
    /// installed meanwhile.
    pub fn add(&self, bundle: &Bundle, publisher: &str) -> anyhow::Result<()> {
        let m = &bundle.manifest;
        self.change(&m.name, |entry| {
            newer(entry, m)?;
            bundle.write(&self.bundle_dir(&m.name, &m.version)?)?;
            entry.versions.push(InstalledVersion {
                version: m.version.clone(),
                publisher: publisher.to_owned(),
                installed_at: jiff::Timestamp::now().to_string(),
            });
            entry.highest = Some(m.version.clone());
            Ok(())
        })
    }

    /// The installed bundle of `name` at `version`, read back and checked:
    /// its manifest must be of this name and version, or a bundle copied
    /// under another name would run with that name's store and slot.
    pub fn bundle(&self, name: &str, version: &semver::Version) -> anyhow::Result<Bundle> {
        let dir = self.bundle_dir(name, version)?;
        anyhow::ensure!(dir.exists(), "{name} {version} is not installed");
        let bundle = Bundle::read(&dir)?;
        let m = &bundle.manifest;
        anyhow::ensure!(
            m.name == name && m.version == *version,
            "bundle {} is of {} {}, not {name} {version}: not installed as it was verified",
            dir.display(),
            m.name,
            m.version
        );
        Ok(bundle)
    }

    /// Record `version` (or the first-party plugin, `None`) as the active
    /// one of `name`.
    pub fn set_active(&self, name: &str, version: Option<&semver::Version>) -> anyhow::Result<()> {
        self.change(name, |entry| {
            if entry.active.as_ref() != version {
                let before = std::mem::replace(&mut entry.active, version.cloned());
                entry.previous.push(before);
                // Enough history for any operator; bounded all the same.
                if entry.previous.len() > 32 {
                    entry.previous.remove(0);
                }
            }
            Ok(())
        })
    }

    /// The version that was active before the current one, taken off the
    /// history.
    pub fn pop_previous(&self, name: &str) -> anyhow::Result<Option<semver::Version>> {
        self.change(name, |entry| {
            let previous = entry
                .previous
                .pop()
                .with_context(|| format!("{name} has no earlier version to roll back to"))?;
            entry.active = previous.clone();
            Ok(previous)
        })
    }

    /// Delete an installed version that is not active.
    pub fn remove(&self, name: &str, version: &semver::Version) -> anyhow::Result<()> {
        self.change(name, |entry| {
            anyhow::ensure!(
                entry.active.as_ref() != Some(version),
                "{name} {version} is active: activate another version first"
            );
            let before = entry.versions.len();
            entry.versions.retain(|v| v.version != *version);
            anyhow::ensure!(
                entry.versions.len() < before,
                "{name} {version} is not installed"
            );
            entry.previous.retain(|v| v.as_ref() != Some(version));
            let dir = self.bundle_dir(name, version)?;
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))
        })
    }

    /// Where the bundle of `name` at `version` is kept. A name is one path
    /// segment, never `..` or a path of its own.
    fn bundle_dir(&self, name: &str, version: &semver::Version) -> anyhow::Result<PathBuf> {
        anyhow::ensure!(valid_name(name), "{name:?} is not a plugin name");
        Ok(self.dir.join(name).join(version.to_string()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A bundle of `name` at `version`; the component is never run here.
    fn bundle(name: &str, version: &str) -> Bundle {
        Bundle::detector(
            name,
            version,
            format!("\0asm {name} {version}").into_bytes(),
        )
    }

    #[test]
    fn concurrent_installs_lose_no_update_and_versions_only_grow() {
        let v = |text: &str| semver::Version::parse(text).unwrap();
        for _ in 0..100 {
            let data = tempfile::tempdir().unwrap();
            let library = Library::open(data.path(), &Store::temporary().unwrap()).unwrap();
            library
                .add(&bundle("acme-topics", "1.0.0"), "acme")
                .unwrap();
            let start = std::sync::Barrier::new(2);
            let added: Vec<(semver::Version, bool)> = std::thread::scope(|s| {
                let threads: Vec<_> = ["1.1.0", "1.2.0"]
                    .map(|version| {
                        let (library, start) = (&library, &start);
                        s.spawn(move || {
                            let bundle = bundle("acme-topics", version);
                            start.wait();
                            (v(version), library.add(&bundle, "acme").is_ok())
                        })
                    })
                    .into_iter()
                    .collect();
                threads.into_iter().map(|t| t.join().unwrap()).collect()
            });
            let entry = library.entry("acme-topics").unwrap();
            assert_eq!(entry.highest, Some(v("1.2.0")), "{added:?}");
            let listed: Vec<_> = entry.versions.iter().map(|i| i.version.clone()).collect();
            let mut expected = vec![v("1.0.0")];
            expected.extend(added.iter().filter(|(_, ok)| *ok).map(|(v, _)| v.clone()));
            expected.sort();
            let mut sorted = listed.clone();
            sorted.sort();
            assert_eq!(sorted, expected, "every install that succeeded is listed");
            // 1.2.0 always goes in; 1.1.0 only if it came first, as one
            // after the other would.
            assert!(listed.contains(&v("1.2.0")));
            assert_eq!(listed.last(), Some(&v("1.2.0")), "{listed:?}");
        }
    }

    #[test]
    fn concurrent_activations_each_leave_their_mark_in_the_history() {
        let v = |text: &str| semver::Version::parse(text).unwrap();
        for _ in 0..100 {
            let data = tempfile::tempdir().unwrap();
            let library = Library::open(data.path(), &Store::temporary().unwrap()).unwrap();
            let start = std::sync::Barrier::new(2);
            std::thread::scope(|s| {
                for version in ["1.0.0", "2.0.0"] {
                    let (library, start, version) = (&library, &start, v(version));
                    s.spawn(move || {
                        start.wait();
                        library.set_active("acme-topics", Some(&version)).unwrap();
                    });
                }
            });
            let entry = library.entry("acme-topics").unwrap();
            // Whichever came last is active, and the other was active
            // before it: two changes, two entries of history.
            assert_eq!(entry.previous.len(), 2, "{entry:?}");
            assert_eq!(entry.previous.first(), Some(&None), "{entry:?}");
        }
    }
}
