//! `palisade serve`: run the appliance.
//!
//! The configuration is read and checked before anything else happens; the
//! data directory and the site CA are created on the first start; then the
//! listeners are bound, the admin socket opened, and the appliance serves
//! until SIGINT (ctrl-c) or SIGTERM, after which open sessions get the
//! configured grace period.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::admin::{ADMIN_SOCKET, Admin, bind_socket, serve_https, serve_socket};
use crate::audit::export::Exporter;
use crate::audit::{AuditLog, AuditQueue, Retention};
use crate::config::Config;
use crate::identity::{ClientVerifier, Operators, Pki, Registry};
use crate::plugins::{Installed, Plugin, Runtime, RuntimeConfig, World};
use crate::policy::PolicyEngine;
use crate::registry::Library;
use crate::session::LiveSessions;
use crate::store::Store;
use crate::transport::{Route, Server, Stages, Upstream};

/// How long shutdown waits for the audit exporters. They stop at once,
/// mid-delivery too; this bounds a shutdown against a defect all the same.
const EXPORTERS_STOP: std::time::Duration = std::time::Duration::from_secs(5);

/// How long shutdown waits for the audit writer to write what is queued
/// and end: a full queue is some 65,000 entries, seconds of disk. Past it,
/// the error log says how many findings and actions were not written.
const AUDIT_WRITER_STOP: std::time::Duration = std::time::Duration::from_secs(15);

/// Arguments of `palisade serve`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The configuration file (TOML); without it, the embedded defaults.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Print the configuration in force, defaults filled in, and exit.
    #[arg(long)]
    print_config: bool,
}

pub(crate) fn run(data: &Path, args: &Args) -> anyhow::Result<ExitCode> {
    let config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if args.print_config {
        print!("{}", config.to_toml());
        return Ok(ExitCode::SUCCESS);
    }
    raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("palisade")
        .build()
        .context("starting the async runtime")?;
    let shutdown = CancellationToken::new();
    runtime.block_on(async {
        tokio::spawn(signals(shutdown.clone()));
        serve(data, config, args.config.is_none(), shutdown, |_| {}).await
    })?;
    Ok(ExitCode::SUCCESS)
}

/// What a running appliance tells whoever started it in-process (the
/// demo): where it listens, and its audit trail.
#[derive(Debug)]
pub(crate) struct Ready<'a> {
    /// The listeners, with their bound addresses.
    pub listening: &'a [crate::transport::Listening],
    /// The audit trail.
    pub audit: &'a AuditLog,
    /// The device registry.
    pub registry: &'a Registry,
}

/// Run the appliance on `data` with `config` until `shutdown`; `ready` is
/// called once it listens.
pub(crate) async fn serve(
    data: &Path,
    config: Config,
    embedded: bool,
    shutdown: CancellationToken,
    ready: impl FnOnce(Ready<'_>),
) -> anyhow::Result<()> {
    crate::store::create_data_dir(data)
        .with_context(|| format!("creating the data directory {}", data.display()))?;
    let (pki, created) = Pki::init(data).context("opening the site CA")?;
    if created {
        info!(dir = %data.join("pki").display(), "created the site CA");
    }
    let pki = Arc::new(pki);
    let store = Store::open(&data.join("state")).with_context(|| {
        format!(
            "opening the state database in {} (is another palisade using it?)",
            data.display()
        )
    })?;
    let registry = Registry::open(&store).context("opening the device registry")?;
    let operators = Operators::open(&store).context("opening the operator records")?;
    let mut external = Vec::new();
    for path in &config.pki.external_ca {
        let pem = std::fs::read_to_string(path)
            .with_context(|| format!("reading external CA {}", path.display()))?;
        let certs = crate::identity::pem_certificates(&pem)
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("external CA {}", path.display()))?;
        anyhow::ensure!(
            !certs.is_empty(),
            "external CA {} holds no certificate",
            path.display()
        );
        info!(file = %path.display(), "trusting an external CA beside the site CA");
        external.extend(certs);
    }
    let verifier = ClientVerifier::devices(&pki, &external, registry.clone())?;
    let plugins = Runtime::new(
        &RuntimeConfig {
            cache_dir: Some(data.join("plugin-cache")),
            ..RuntimeConfig::default()
        },
        store.clone(),
    )?;
    let installed = Installed::default();
    let library = Library::open(data, &store).context("opening the plugin library")?;
    let mut routes = Vec::new();
    for route in &config.routes {
        let slot = |name: &String, world| {
            installed
                .slot_for(name, world, &route.name, || {
                    load(&plugins, &library, name, world)
                })
                .with_context(|| format!("loading {world} {name} for route {}", route.name))
        };
        let parser = match &route.parser {
            Some(name) => Some(slot(name, World::Parser)?),
            None => {
                warn!(route = %route.name, protocol = %route.protocol, "no parser: frames are relayed uninspected");
                None
            }
        };
        let detectors = (route.detectors.iter())
            .map(|name| slot(name, World::Detector))
            .collect::<anyhow::Result<_>>()?;
        let responders = (route.responders.iter())
            .map(|name| slot(name, World::Responder))
            .collect::<anyhow::Result<_>>()?;
        routes.push(Route {
            config: route.clone(),
            parser,
            detectors,
            responders,
            upstream: Upstream::new(route)?,
        });
    }
    let live = LiveSessions::default();
    let policy = PolicyEngine::new(crate::policy::load(data)?);
    match crate::policy::source(data)?.1 {
        Some(file) => info!(policy = %file.display(), "policy in force"),
        None => info!(
            policy = "embedded default",
            "policy in force: any enrolled device may use the routes of its protocol (palisade policy show)"
        ),
    }
    tokio::spawn(crate::policy::watch(
        policy.clone(),
        data.to_owned(),
        shutdown.clone(),
    ));
    let audit = AuditLog::open(&store).context("opening the audit trail")?;
    let (stop_exporters, exporters_stop) = tokio::sync::watch::channel(false);
    let mut exporters = Vec::new();
    for sink in &config.sinks {
        info!(siem = %sink.name(), "exporting findings and actions");
        let exporter = Exporter::new(audit.clone(), sink.clone());
        exporters.push(tokio::spawn(exporter.run(exporters_stop.clone())));
    }
    let retention = Retention {
        max_records: config.audit.max_records,
        max_backlog: config.audit.max_backlog,
        max_bytes: config.audit.max_bytes,
        sinks: config.sinks.iter().map(|s| s.name().to_owned()).collect(),
    };
    let recorder =
        AuditQueue::start(audit.clone(), retention).context("starting the audit writer")?;
    let stages = Stages {
        pki: pki.clone(),
        registry: registry.clone(),
        live: live.clone(),
        policy,
        verifier,
        audit: Some(recorder.clone()),
        installed: installed.clone(),
    };
    let server = Server::bind(&config, routes, stages, shutdown.clone()).await?;
    let admin_socket = bind_socket(data)
        .with_context(|| format!("binding {}", data.join(ADMIN_SOCKET).display()))?;
    let https = match config.admin.listen {
        Some(addr) => {
            let verifier = ClientVerifier::operators(&pki, operators.clone())?;
            let tls = server.https_config(verifier)?;
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the admin API to {addr}"))?;
            Some((listener, tls))
        }
        None => None,
    };
    let admin = Admin::new(store.clone(), pki, registry.clone(), operators, Some(live))
        .serving(plugins, installed)
        .with_library(data, library)
        .recording(recorder.clone());
    for l in server.listening() {
        info!(route = %l.name, transport = %l.transport, addr = %l.addr, "listening");
    }
    if let Some((listener, tls)) = https {
        let addr = listener.local_addr()?;
        info!(route = %"admin", transport = %"https", %addr, "listening");
        tokio::spawn(serve_https(listener, tls, admin.clone(), shutdown.clone()));
    }
    let admin_task = tokio::spawn(serve_socket(admin_socket, admin, shutdown.clone()));
    info!(
        data = %data.display(),
        config = if embedded { "embedded defaults" } else { "file" },
        "ready"
    );
    ready(Ready {
        listening: server.listening(),
        audit: &audit,
        registry: &registry,
    });
    server.run().await;
    let _ = admin_task.await;
    // Sessions past the grace period may still hold clones of the queue:
    // close ends the writer all the same, and what they push after it is
    // written by the session itself.
    tokio::task::block_in_place(|| recorder.close(AUDIT_WRITER_STOP));
    let _ = stop_exporters.send(true);
    let stopped = async {
        for exporter in &mut exporters {
            let _ = exporter.await;
        }
    };
    if tokio::time::timeout(EXPORTERS_STOP, stopped).await.is_err() {
        warn!(
            "audit exporters did not stop within {EXPORTERS_STOP:?}; what they had not delivered goes at the next start"
        );
        exporters.iter().for_each(tokio::task::JoinHandle::abort);
    }
    let _ = std::fs::remove_file(data.join(ADMIN_SOCKET));
    store.flush().context("saving state")?;
    info!("stopped");
    Ok(())
}

/// Watch SIGINT and SIGTERM from now on, and cancel `shutdown` on the
/// first. The handlers are in place when this returns, not when the future
/// first runs: the appliance says it is ready after, and a signal sent then
/// must stop it cleanly rather than kill it. Must be called in a runtime.
fn signals(shutdown: CancellationToken) -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{Signal, SignalKind, signal};
    let watch = |kind: SignalKind, name: &str| match signal(kind) {
        Ok(s) => Some(s),
        Err(e) => {
            warn!(error = %e, "cannot watch {name}; it will not stop the appliance cleanly");
            None
        }
    };
    let received = |signal: Option<Signal>| async move {
        match signal {
            Some(mut s) => s.recv().await,
            None => std::future::pending().await,
        }
    };
    let (int, term) = (
        received(watch(SignalKind::interrupt(), "SIGINT")),
        received(watch(SignalKind::terminate(), "SIGTERM")),
    );
    async move {
        tokio::select! {
            _ = int => info!("SIGINT: shutting down"),
            _ = term => info!("SIGTERM: shutting down"),
        }
        shutdown.cancel();
    }
}

/// The plugin a route names, which must implement `world`: its active
/// installed version if the operator installed one, else the first-party
/// plugin or the component file.
///
/// An installed version that cannot be served stops the start, rather
/// than another version silently taking its place on a security path; the
/// error names the plugin and how to choose what serves instead.
fn load(runtime: &Runtime, library: &Library, name: &str, world: World) -> anyhow::Result<Plugin> {
    let active = library.entry(name)?.active;
    let plugin = match active {
        Some(version) => {
            let loaded = library.bundle(name, &version).and_then(|bundle| {
                let m = &bundle.manifest;
                let (plugin, _) = runtime.load_as(
                    name,
                    &m.version.to_string(),
                    &bundle.component,
                    m.granted_limits(),
                )?;
                Ok(plugin)
            });
            let plugin = loaded.with_context(|| {
                format!(
                    "the active version of {name}, {version}, cannot be served; choose what \
                     serves instead and start again: palisade plugin rollback {name}, palisade \
                     plugin activate {name}@VERSION ({name}@first-party for a first-party \
                     plugin), or take {name} off the routes in the configuration"
                )
            })?;
            info!(plugin = name, %version, "serving the installed version");
            plugin
        }
        None => super::plugin_run::load(runtime, name)?,
    };
    anyhow::ensure!(
        plugin.world() == world,
        "{} is a {}, not a {world}",
        plugin.name(),
        plugin.world()
    );
    Ok(plugin)
}

/// Raise the soft limit on open files to the hard one: every session is
/// two sockets, and thousands of devices are the point.
fn raise_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            warn!(error = %e, "cannot raise the open-file limit");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::registry::Bundle;
    use crate::registry::bundle::MANIFEST;

    /// A SIGTERM sent once `signals` returned, before its future first
    /// ran, stops the appliance: the future then sees it. (Were the handler
    /// registered only when the future runs, the signal would kill this
    /// test's process.)
    #[test]
    fn a_signal_sent_before_the_watch_first_runs_is_seen() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let shutdown = CancellationToken::new();
        let watching = {
            let _in_runtime = runtime.enter();
            signals(shutdown.clone())
        };
        rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::TERM)
            .unwrap();
        let seen = runtime.block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(10), watching).await
        });
        assert!(seen.is_ok(), "the signal was not seen");
        assert!(shutdown.is_cancelled());
    }

    #[test]
    fn an_unservable_active_version_is_named_with_what_to_do() {
        let data = tempfile::tempdir().unwrap();
        let store = Store::temporary().unwrap();
        let runtime = Runtime::new(&RuntimeConfig::default(), store.clone()).unwrap();
        let library = Library::open(data.path(), &store).unwrap();
        let component = crate::plugins::first_party::component("new-topic").unwrap();
        let bundle = Bundle::detector("acme-topics", "1.0.0", component.to_vec());
        library.add(&bundle, "acme").unwrap();
        library
            .set_active("acme-topics", Some(&bundle.manifest.version))
            .unwrap();
        load(&runtime, &library, "acme-topics", World::Detector).unwrap();

        // The bundle on disk damaged after its install.
        let dir = data.path().join("plugins/acme-topics/1.0.0");
        std::fs::write(dir.join(MANIFEST), b"{").unwrap();
        let e = load(&runtime, &library, "acme-topics", World::Detector).unwrap_err();
        let text = format!("{e:#}");
        for said in [
            "the active version of acme-topics, 1.0.0, cannot be served",
            "palisade plugin rollback acme-topics",
            "not a manifest",
        ] {
            assert!(text.contains(said), "{said:?} not in {text}");
        }
    }
}
