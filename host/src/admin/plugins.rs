//! The operator's plugin commands: list, install from the signed registry,
//! activate, roll back, remove, shadow and promote.
//!
//! Installing verifies everything (TUF metadata, the delegation, the
//! component's hash, the manifest against its world), precompiles, runs the
//! plugin's self-checks, stores the bundle, and only then swaps it into its
//! slot: any failure before the swap leaves the running version in place
//! and the library as it was. On an appliance that is not running, the same
//! commands prepare the library (and the precompiled cache) for the next
//! start.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tracing::info;

use crate::plugins::{
    Batch, Device, Direction, Installed, Limits, Plugin, Runtime, Session, WireBatch, World,
    first_party,
};
use crate::registry::manifest::valid_name;
use crate::registry::{Bundle, Library, Manifest, RegistryClient};

/// Where the appliance's registry is: `<data>/registry/source.json`,
/// written by `palisade registry trust`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RegistrySource {
    /// A directory path or an `http(s)://` URL.
    pub location: String,
    /// CA certificates for an `https://` registry; the system's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

impl RegistrySource {
    fn path(data: &Path) -> PathBuf {
        data.join("registry").join("source.json")
    }

    /// The source recorded in `data`.
    pub fn read(data: &Path) -> Result<RegistrySource, String> {
        let path = Self::path(data);
        let text = std::fs::read(&path).map_err(|_| {
            "no registry configured: palisade registry trust ROOT.json --registry LOCATION"
                .to_owned()
        })?;
        serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Record `self` in `data`.
    pub fn write(&self, data: &Path) -> anyhow::Result<()> {
        let path = Self::path(data);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        crate::store::write_atomic(&path, &serde_json::to_vec_pretty(self)?, 0o644)
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))
    }

    fn client(&self, data: &Path) -> Result<RegistryClient, String> {
        let url =
            crate::registry::publish::location(&self.location).map_err(|e| format!("{e:#}"))?;
        Ok(RegistryClient::new(url, data, self.ca_file.clone()))
    }
}

/// What the plugin commands work on.
pub(super) struct PluginAdmin<'a> {
    pub data: &'a Path,
    pub library: &'a Library,
    pub runtime: &'a Runtime,
    /// The running appliance's slots; `None` from the command line.
    pub installed: Option<&'a Installed>,
}

type Progress<'a> = &'a mut dyn FnMut(String);

fn text(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn chain(e: &anyhow::Error) -> String {
    format!("{e:#}")
}

/// Run `future` to completion from synchronous code: on the runtime the
/// caller runs in (admin requests run on its blocking threads), or on a
/// small one of its own from the command line.
fn block_on<F: std::future::Future>(future: F) -> Result<F::Output, String> {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => Ok(handle.block_on(future)),
        Err(_) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map(|rt| rt.block_on(future))
            .map_err(text),
    }
}

/// One change of the plugins at a time (install, activate, roll back,
/// remove, shadow, promote). Each reads the library, swaps what a slot
/// serves and records it in the library, in steps: two at once could
/// leave the slot serving one version and the library naming another,
/// which the next start would serve. Operators change plugins rarely, and
/// nothing else waits for this. Held for the changes only: an install
/// fetches and checks its bundle before, however slow the registry.
fn one_change_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static CHANGES: std::sync::Mutex<()> = std::sync::Mutex::new(());
    CHANGES.lock().unwrap_or_else(|p| p.into_inner())
}

/// Refuse `name` unless it is a plugin name as manifests give them: it is
/// a directory of the library and a namespace of the store, and a path
/// (`../x`) would read a bundle no one verified from anywhere on disk.
fn check_name(name: &str) -> Result<(), String> {
    if valid_name(name) {
        return Ok(());
    }
    Err(format!(
        "{name:?} is not a plugin name (1 to 64 lowercase letters, digits and dashes, \
         starting with a letter)"
    ))
}

fn no_route_to_shadow(name: &str) -> String {
    format!(
        "no route of the running appliance uses {name}: nothing to shadow \
         (install without --shadow to make it active)"
    )
}

fn parse_version(name: &str, version: &str) -> Result<semver::Version, String> {
    semver::Version::parse(version).map_err(|e| format!("{name}@{version}: not a version: {e}"))
}

impl PluginAdmin<'_> {
    /// Load `bundle` as a plugin and check it: its world, then its
    /// self-checks, whose writes to the key-value store are discarded.
    fn prepare(&self, bundle: &Bundle, progress: Progress<'_>) -> Result<Plugin, String> {
        let m = &bundle.manifest;
        progress(format!("precompiling {} {}", m.name, m.version));
        let started = Instant::now();
        let (plugin, cached) = self
            .runtime
            .load_as(
                &m.name,
                &m.version.to_string(),
                &bundle.component,
                m.granted_limits(),
            )
            .map_err(text)?;
        progress(format!(
            "{} in {} ms",
            if cached {
                "loaded precompiled"
            } else {
                "compiled"
            },
            started.elapsed().as_millis()
        ));
        if plugin.world() != m.world {
            return Err(format!(
                "{} {}: the manifest declares a {} but the component is a {}",
                m.name,
                m.version,
                m.world,
                plugin.world()
            ));
        }
        progress("running self-checks".into());
        // On a read-only handle: the candidate is not active yet, and it
        // shares its key-value store with the active version of its name.
        // A self-check that wrote would let a shadow (or a candidate
        // refused a moment later) change the active version's state.
        self_check(&plugin.as_shadow(), m)?;
        Ok(plugin)
    }

    /// The slot of `name` in the running appliance, if a route uses it.
    fn slot(&self, name: &str) -> Option<crate::plugins::Slot> {
        self.installed.and_then(|i| i.get(name))
    }

    /// Install `name` at `version` (the newest when `None`) from the
    /// registry, and make it active or (`shadow`) its slot's shadow.
    ///
    /// Fetching, verifying, precompiling and self-checking take no lock:
    /// a slow registry (each fetch may take a minute, and the whole
    /// [`FETCH_DEADLINE`](crate::registry::library::FETCH_DEADLINE)) must
    /// not hold every activation and rollback behind it. Only the last
    /// steps, which change the library and the slot, are one change.
    pub fn install(
        &self,
        name: &str,
        version: Option<&str>,
        shadow: bool,
        progress: Progress<'_>,
    ) -> Result<Value, String> {
        check_name(name)?;
        // Checked before anything is fetched or stored: a refused shadow
        // must not count as installed (versions only grow).
        if shadow && self.slot(name).is_none() {
            return Err(no_route_to_shadow(name));
        }
        let source = RegistrySource::read(self.data)?;
        let client = source.client(self.data)?;
        let version = version.map(|v| parse_version(name, v)).transpose()?;
        progress(format!("fetching {name} from {}", client.url()));
        let fetched = block_on(client.fetch(name, version.as_ref()))?.map_err(|e| chain(&e))?;
        let bundle = fetched.bundle;
        let m = &bundle.manifest;
        progress(format!(
            "verified {} {}, signed by {}",
            m.name, m.version, fetched.publisher
        ));
        // Refused before it is compiled; checked again as it is added.
        self.library.check_newer(&bundle).map_err(|e| chain(&e))?;
        let plugin = self.prepare(&bundle, progress)?;

        let _changing = one_change_at_a_time();
        let slot = self.slot(name);
        if let Some(slot) = &slot {
            let world = slot.active().world();
            if world != plugin.world() {
                return Err(format!(
                    "{name} is served as a {world}; {} {} is a {}",
                    m.name,
                    m.version,
                    plugin.world()
                ));
            }
        }
        if shadow && slot.is_none() {
            return Err(no_route_to_shadow(name));
        }
        self.library
            .add(&bundle, &fetched.publisher)
            .map_err(|e| chain(&e))?;
        info!(plugin = name, version = %m.version, publisher = %fetched.publisher, "plugin installed");
        let state = match (slot, shadow) {
            (Some(slot), true) => {
                slot.set_shadow(Some(plugin)).map_err(text)?;
                "shadowing"
            }
            // Refused before the library changed; kept for the match.
            (None, true) => return Err(no_route_to_shadow(name)),
            (slot, false) => {
                self.library
                    .set_active(name, Some(&m.version))
                    .map_err(|e| chain(&e))?;
                match slot {
                    Some(slot) => {
                        drop(slot.activate(plugin).map_err(text)?);
                        "active"
                    }
                    None => "active from the next start (no running route uses it)",
                }
            }
        };
        Ok(json!({
            "plugin": name,
            "version": m.version.to_string(),
            "publisher": fetched.publisher,
            "state": state,
        }))
    }

    /// Load the installed `version` of `name` (`None`: the first-party one).
    fn load_installed(
        &self,
        name: &str,
        version: Option<&semver::Version>,
        progress: Progress<'_>,
    ) -> Result<Plugin, String> {
        match version {
            Some(v) => {
                let bundle = self.library.bundle(name, v).map_err(|e| chain(&e))?;
                self.prepare(&bundle, progress)
            }
            None => {
                let component = first_party::component(name)
                    .ok_or_else(|| format!("{name} has no first-party version"))?;
                self.runtime
                    .load(name, component, Limits::default())
                    .map_err(text)
            }
        }
    }

    /// Make `version` (`None`: the first-party one) the active version of
    /// `name`, recording the change unless `record` is false.
    fn switch(
        &self,
        name: &str,
        version: Option<&semver::Version>,
        progress: Progress<'_>,
    ) -> Result<Value, String> {
        let started = Instant::now();
        let plugin = self.load_installed(name, version, progress)?;
        let serving = match self.slot(name) {
            Some(slot) => {
                drop(slot.activate(plugin).map_err(text)?);
                Some(started.elapsed().as_secs_f64() * 1e3)
            }
            None => None,
        };
        let shown = version.map_or_else(|| "first-party".to_owned(), ToString::to_string);
        info!(plugin = name, version = %shown, "plugin activated");
        Ok(json!({"plugin": name, "version": shown, "serving-after-ms": serving}))
    }

    pub fn activate(
        &self,
        name: &str,
        version: &str,
        progress: Progress<'_>,
    ) -> Result<Value, String> {
        check_name(name)?;
        let _changing = one_change_at_a_time();
        let version = match version {
            "first-party" => None,
            v => Some(parse_version(name, v)?),
        };
        let answer = self.switch(name, version.as_ref(), progress)?;
        self.library
            .set_active(name, version.as_ref())
            .map_err(|e| chain(&e))?;
        Ok(answer)
    }

    pub fn rollback(&self, name: &str, progress: Progress<'_>) -> Result<Value, String> {
        check_name(name)?;
        let _changing = one_change_at_a_time();
        let entry = self.library.entry(name).map_err(|e| chain(&e))?;
        let Some(previous) = entry.previous.last() else {
            return Err(format!("{name} has no earlier version to roll back to"));
        };
        let answer = self.switch(name, previous.as_ref(), progress)?;
        self.library.pop_previous(name).map_err(|e| chain(&e))?;
        Ok(answer)
    }

    pub fn remove(&self, name: &str, version: &str) -> Result<Value, String> {
        check_name(name)?;
        let _changing = one_change_at_a_time();
        let version = parse_version(name, version)?;
        let shadow = self.slot(name).and_then(|s| s.shadow());
        if shadow.is_some_and(|s| s.version() == version.to_string()) {
            return Err(format!(
                "{name} {version} is shadowing: stop the shadow first"
            ));
        }
        self.library.remove(name, &version).map_err(|e| chain(&e))?;
        info!(plugin = name, %version, "plugin version removed");
        Ok(json!({"plugin": name, "removed": version.to_string()}))
    }

    pub fn shadow(
        &self,
        name: &str,
        version: Option<&str>,
        progress: Progress<'_>,
    ) -> Result<Value, String> {
        check_name(name)?;
        let _changing = one_change_at_a_time();
        let slot = self
            .slot(name)
            .ok_or_else(|| format!("no route of the running appliance uses {name}"))?;
        match version {
            None => {
                slot.set_shadow(None).map_err(text)?;
                Ok(json!({"plugin": name, "shadow": null}))
            }
            Some(v) => {
                let v = parse_version(name, v)?;
                let plugin = self.load_installed(name, Some(&v), progress)?;
                slot.set_shadow(Some(plugin)).map_err(text)?;
                Ok(json!({"plugin": name, "shadow": v.to_string()}))
            }
        }
    }

    pub fn promote(&self, name: &str) -> Result<Value, String> {
        check_name(name)?;
        let _changing = one_change_at_a_time();
        let slot = self
            .slot(name)
            .ok_or_else(|| format!("no route of the running appliance uses {name}"))?;
        let report = slot.shadow_report();
        let shadow = slot
            .shadow()
            .ok_or_else(|| format!("{name} has no shadow"))?;
        let version = parse_version(name, shadow.version())?;
        drop(slot.promote().map_err(text)?);
        self.library
            .set_active(name, Some(&version))
            .map_err(|e| chain(&e))?;
        Ok(json!({"plugin": name, "version": version.to_string(), "shadow-report": report}))
    }

    pub fn list(&self) -> Result<Value, String> {
        let mut names: Vec<String> = self
            .library
            .entries()
            .map_err(|e| chain(&e))?
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        let served = self.installed.map(Installed::list).unwrap_or_default();
        names.extend(served.iter().map(|s| s.name.clone()));
        names.sort();
        names.dedup();
        let mut plugins = Vec::new();
        for name in names {
            let entry = self.library.entry(&name).map_err(|e| chain(&e))?;
            let served = served.iter().find(|s| s.name == name);
            let publisher = match &entry.active {
                Some(v) => (entry.versions.iter().find(|i| &i.version == v))
                    .map_or("unknown".to_owned(), |i| i.publisher.clone()),
                None => "first-party".to_owned(),
            };
            let Value::Object(mut item) = json!({
                "name": name,
                "active": entry.active.as_ref().map_or("first-party".to_owned(), ToString::to_string),
                "publisher": publisher,
                "installed": entry.versions.iter().map(|v| json!({
                    "version": v.version.to_string(),
                    "publisher": v.publisher,
                    "installed-at": v.installed_at,
                })).collect::<Vec<_>>(),
                "routes": served.map(|s| s.routes.clone()).unwrap_or_default(),
            }) else {
                continue;
            };
            if let Some(served) = served {
                let active = served.slot.active();
                item.insert("world".into(), json!(active.world()));
                item.insert("serving".into(), json!(active.version()));
                item.insert("state".into(), json!(active.lifecycle()));
                item.insert("strikes".into(), json!(active.strikes()));
                if let Some(shadow) = served.slot.shadow() {
                    item.insert(
                        "shadow".into(),
                        json!({
                            "version": shadow.version(),
                            "report": served.slot.shadow_report(),
                        }),
                    );
                }
            } else if let Some(v) = &entry.active {
                if let Ok(bundle) = self.library.bundle(&name, v) {
                    item.insert("world".into(), json!(bundle.manifest.world));
                }
                item.insert("state".into(), json!("not served (no route uses it)"));
            }
            plugins.push(Value::Object(item));
        }
        Ok(json!({"plugins": plugins}))
    }
}

/// The self-checks every plugin passes before it serves: it answers its
/// world's calls on empty input without a fault, and a parser speaks a
/// protocol its manifest names.
pub fn self_check(plugin: &Plugin, manifest: &Manifest) -> Result<(), String> {
    let fail = |e: &dyn std::fmt::Display| format!("self-check of {}: {e}", plugin.name());
    let session = Session {
        id: 0,
        device: Device {
            id: "self-check".into(),
            class: "self-check".into(),
            zone: "self-check".into(),
        },
        route: "self-check".into(),
    };
    match plugin.world() {
        World::Parser => {
            let protocol = plugin.protocol().map_err(|e| fail(&e))?;
            if !manifest.protocols.is_empty() && !manifest.protocols.contains(&protocol) {
                return Err(fail(&format!(
                    "it parses {protocol}, but its manifest says {:?}",
                    manifest.protocols
                )));
            }
            for direction in [Direction::ToUpstream, Direction::ToDevice] {
                let parsed = (plugin.parse(&session, direction, &[], &[])).map_err(|e| fail(&e))?;
                if !parsed.frame_lengths.is_empty() {
                    return Err(fail(&"it cut frames out of an empty input"));
                }
            }
        }
        World::Detector => {
            plugin
                .detect(&session, &WireBatch::from(Batch::new()))
                .map_err(|e| fail(&e))?;
        }
        World::Responder => {
            plugin
                .respond(&session, &WireBatch::from(Batch::new()), &[])
                .map_err(|e| fail(&e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use super::*;
    use crate::plugins::{Installed, RuntimeConfig};
    use crate::registry::Capability;
    use crate::store::Store;

    /// An appliance's plugin state: a library, a runtime, and a route
    /// serving the first-party `new-topic` detector.
    struct Appliance {
        data: tempfile::TempDir,
        store: Store,
        library: Library,
        runtime: Runtime,
        installed: Installed,
    }

    impl Appliance {
        fn new() -> Appliance {
            let data = tempfile::tempdir().unwrap();
            let store = Store::temporary().unwrap();
            let library = Library::open(data.path(), &store).unwrap();
            let runtime = Runtime::new(&RuntimeConfig::default(), store.clone()).unwrap();
            let installed = Installed::default();
            installed
                .slot_for("new-topic", World::Detector, "mqtt-in", || {
                    let component = first_party::component("new-topic").unwrap();
                    Ok(runtime.load("new-topic", component, Limits::default())?)
                })
                .unwrap();
            Appliance {
                data,
                store,
                library,
                runtime,
                installed,
            }
        }

        fn admin(&self) -> PluginAdmin<'_> {
            PluginAdmin {
                data: self.data.path(),
                library: &self.library,
                runtime: &self.runtime,
                installed: Some(&self.installed),
            }
        }

        /// The first-party `new-topic` component as `name` `version`,
        /// allowed to keep state, in the library.
        fn add(&self, name: &str, version: &str) {
            let component = first_party::component("new-topic").unwrap().to_vec();
            let mut manifest = Bundle::detector(name, version, component.clone()).manifest;
            manifest.capabilities = vec![Capability::Store];
            let bundle = Bundle::new(manifest, component).unwrap();
            self.library.add(&bundle, "acme").unwrap();
        }

        /// The value of `key` in the store of `name`.
        fn kv(&self, name: &str, key: &str) -> Option<Vec<u8>> {
            self.store.plugin_kv(name, 0).unwrap().get(key).unwrap()
        }
    }

    #[test]
    fn a_shadow_candidates_self_check_writes_nothing_to_the_active_versions_store() {
        let appliance = Appliance::new();
        appliance.add("new-topic", "2.0.0");
        // The detector's self-check call (an empty batch from device
        // `self-check`) stores that device's publish count, were it let.
        let key = "self-check/publishes";
        assert_eq!(appliance.kv("new-topic", key), None);

        let answer = appliance
            .admin()
            .shadow("new-topic", Some("2.0.0"), &mut |_| {})
            .unwrap();
        assert_eq!(answer["shadow"], "2.0.0");
        assert_eq!(
            appliance.kv("new-topic", key),
            None,
            "the shadow's self-check wrote to the active version's store"
        );

        // Activated, the same version's self-check writes nothing either;
        // once active, its calls keep their writes.
        appliance
            .admin()
            .activate("new-topic", "2.0.0", &mut |_| {})
            .unwrap();
        assert_eq!(appliance.kv("new-topic", key), None);
        let active = appliance.installed.get("new-topic").unwrap().active();
        let manifest = appliance
            .library
            .bundle("new-topic", &semver::Version::new(2, 0, 0))
            .unwrap()
            .manifest;
        self_check(&active, &manifest).unwrap();
        assert!(
            appliance.kv("new-topic", key).is_some(),
            "the active version's calls keep their writes"
        );
    }

    #[test]
    fn a_bundle_outside_the_library_or_of_another_name_is_never_activated() {
        let appliance = Appliance::new();
        let serving = || {
            let slot = appliance.installed.get("new-topic").unwrap();
            slot.active().version().to_owned()
        };
        let first_party = serving();

        // A bundle consistent in itself, on a stick beside the data
        // directory, named by a path from the library's directory.
        let stick = tempfile::tempdir().unwrap();
        let component = first_party::component("new-topic").unwrap().to_vec();
        Bundle::detector("new-topic", "1.0.0", component.clone())
            .write(&stick.path().join("x/1.0.0"))
            .unwrap();
        let library_dir = appliance.data.path().join("plugins");
        std::fs::create_dir_all(&library_dir).unwrap();
        let up: PathBuf = (library_dir.components().skip(1)).map(|_| "..").collect();
        let path = up.join(stick.path().strip_prefix("/").unwrap()).join("x");
        assert!(library_dir.join(&path).join("1.0.0/manifest.json").exists());
        let path = path.to_str().unwrap();
        let admin = appliance.admin();
        for refused in [
            admin.activate(path, "1.0.0", &mut |_| {}),
            admin.shadow(path, Some("1.0.0"), &mut |_| {}),
            admin.rollback(path, &mut |_| {}),
            admin.remove(path, "1.0.0"),
            admin.promote(path),
            admin.install(path, None, false, &mut |_| {}),
        ] {
            let e = refused.unwrap_err();
            assert!(e.contains("is not a plugin name"), "{e}");
        }
        // The library refuses such a name itself.
        let e = appliance
            .library
            .bundle(path, &semver::Version::new(1, 0, 0))
            .unwrap_err();
        assert!(format!("{e:#}").contains("not a plugin name"), "{e:#}");

        // A library entry whose manifest names another plugin: it would
        // run under this name, with this name's store.
        appliance.add("acme-other", "1.0.0");
        Bundle::read(&library_dir.join("acme-other/1.0.0"))
            .unwrap()
            .write(&library_dir.join("new-topic/3.0.0"))
            .unwrap();
        let e = admin
            .activate("new-topic", "3.0.0", &mut |_| {})
            .unwrap_err();
        assert!(
            e.contains("is of acme-other 1.0.0, not new-topic 3.0.0"),
            "{e}"
        );
        assert_eq!(serving(), first_party, "a refused bundle was activated");
    }

    /// A registry at `http://127.0.0.1:PORT` that says it has no newer
    /// root and never answers anything else, until dropped: a mirror
    /// stalling on timestamp.json.
    struct StallingMirror {
        port: u16,
        stalled: std::sync::Arc<std::sync::atomic::AtomicUsize>,
        stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl StallingMirror {
        fn start() -> StallingMirror {
            use std::io::{Read, Write};
            use std::sync::atomic::Ordering;
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.set_nonblocking(true).unwrap();
            let port = listener.local_addr().unwrap().port();
            let stalled = std::sync::Arc::<std::sync::atomic::AtomicUsize>::default();
            let stop = std::sync::Arc::<std::sync::atomic::AtomicBool>::default();
            let (count, stopped) = (std::sync::Arc::clone(&stalled), stop.clone());
            let thread = std::thread::spawn(move || {
                let mut held = Vec::new();
                while !stopped.load(Ordering::SeqCst) {
                    let Ok((mut stream, _)) = listener.accept() else {
                        std::thread::sleep(std::time::Duration::from_millis(10));
                        continue;
                    };
                    stream.set_nonblocking(false).unwrap();
                    let mut request = [0; 1024];
                    let n = stream.read(&mut request).unwrap_or(0);
                    let line = String::from_utf8_lossy(&request[..n]).into_owned();
                    if line.contains("root.json") {
                        let _ = stream
                            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
                        continue;
                    }
                    count.fetch_add(1, Ordering::SeqCst);
                    held.push(stream);
                }
            });
            StallingMirror {
                port,
                stalled,
                stop,
                thread: Some(thread),
            }
        }

        /// Wait until a request is being stalled.
        fn stalling(&self) {
            let started = Instant::now();
            while self.stalled.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                assert!(
                    started.elapsed().as_secs() < 60,
                    "nothing asked the mirror for its metadata"
                );
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }

    impl Drop for StallingMirror {
        /// Close the stalled connections: what waited on them fails.
        fn drop(&mut self) {
            self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        }
    }

    impl Appliance {
        /// Trust a new, empty registry served by `mirror`.
        fn trust(&self, mirror: &StallingMirror) {
            let owner = tempfile::tempdir().unwrap();
            let (registry, keys) = (owner.path().join("reg"), owner.path().join("keys"));
            block_on(crate::registry::publish::init(
                &registry,
                &keys,
                &crate::registry::publish::Lifetimes::new(365),
            ))
            .unwrap()
            .unwrap();
            let root = std::fs::read(registry.join("metadata/1.root.json")).unwrap();
            crate::registry::trust_root(self.data.path(), &root, false).unwrap();
            RegistrySource {
                location: format!("http://127.0.0.1:{}", mirror.port),
                ca_file: None,
            }
            .write(self.data.path())
            .unwrap();
        }
    }

    #[test]
    fn an_install_waiting_on_a_stalling_registry_holds_no_rollback() {
        let appliance = Appliance::new();
        appliance.add("new-topic", "2.0.0");
        let admin = appliance.admin();
        admin.activate("new-topic", "2.0.0", &mut |_| {}).unwrap();
        let mirror = StallingMirror::start();
        appliance.trust(&mirror);

        let (done, rolled_back) = std::sync::mpsc::channel();
        let mut mirror = Some(mirror);
        let admin = &admin;
        std::thread::scope(|s| {
            let install = s.spawn(move || admin.install("new-topic", None, false, &mut |_| {}));
            mirror.as_ref().unwrap().stalling();
            s.spawn(move || {
                let _ = done.send(admin.rollback("new-topic", &mut |_| {}));
            });
            // Generous: a rollback loads a plugin, on a busy machine too.
            let waited = rolled_back.recv_timeout(std::time::Duration::from_secs(30));
            // Let the install fail (and a waiting rollback go on) either way.
            drop(mirror.take());
            let refused = install.join().unwrap().unwrap_err();
            assert!(refused.contains("refused"), "{refused}");
            let answer = waited.expect("the rollback waited for the stalled install");
            assert_eq!(answer.unwrap()["version"], "first-party");
        });
    }

    #[test]
    fn an_install_gives_up_on_a_registry_at_its_deadline() {
        let appliance = Appliance::new();
        let mirror = StallingMirror::start();
        appliance.trust(&mirror);
        let client = RegistrySource::read(appliance.data.path())
            .unwrap()
            .client(appliance.data.path())
            .unwrap()
            // Time enough for the mirror's thread to answer for the root
            // on a busy machine: the deadline is to meet the stalled
            // request that follows.
            .with_deadline(std::time::Duration::from_secs(2));
        let e = block_on(client.fetch("new-topic", None))
            .unwrap()
            .unwrap_err();
        assert!(format!("{e:#}").contains("took longer than 2 s"), "{e:#}");
        // The mirror's thread counts the request it stalls once it has read
        // it, which may be after the client gave up.
        mirror.stalling();
    }
}
