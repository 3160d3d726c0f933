//! The plugin runtime: loads parser, detector and responder components and
//! calls them, each call bounded, each fault contained.
//!
//! On the path of a frame, the session hands each chunk of bytes to its
//! route's parser [`Plugin`], the events to the detectors, and the findings
//! to the responders. Every call runs in a pooled instance of the plugin
//! with a deadline (epoch interruption, charged in CPU time: see
//! [`deadline`]), a memory limit, a cap on the bytes it may hand back, and
//! key-value quotas. A trap or a limit hit ends that call only: the
//! instance is thrown away, the plugin gets a strike, and after
//! `max-strikes` strikes it is disabled according to its fail mode.
//!
//! One [`Runtime`] owns the wasmtime engine (pooling allocator, epoch
//! ticker) and the linker; it is cheap to clone and shared by all sessions.

mod batch;
pub mod bindings;
mod cache;
mod deadline;
pub mod first_party;
mod host;
mod installed;
mod limits;
mod slot;
mod wasi;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Trap};

pub use batch::WireBatch;
use bindings::datagram::{Datagrams, DatagramsIndices};
use bindings::detector::{DetectorPlugin, DetectorPluginPre};
use bindings::parser::{ParserPlugin, ParserPluginIndices};
use bindings::responder::{ResponderPlugin, ResponderPluginPre};
pub use bindings::{Action, Device, Direction, Finding, Session, Severity};
pub use cache::Cache;
pub use host::Counters;
use host::PluginState;
pub(crate) use host::log_line;
pub use installed::{Installed, Served};
pub use limits::{FailMode, Limits};
pub use palisade_plugin_sdk::{Batch, Columns, EventRef, Malformed, Parsed, Value, ValueType};
use palisade_plugin_sdk::{
    MAX_ACTIONS_PER_FINDING, MAX_FINDINGS_PER_EVENT, MAX_REASON_BYTES, SPARE_ACTIONS,
};
pub use slot::{ShadowReport, Slot, SwapError};

use crate::store::{Store, StoreError};

use deadline::TICK;
/// The contract version this runtime speaks.
pub const CONTRACT: &str = "palisade:plugin@0.1.0";

/// The kinds of plugin, one per world of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum World {
    /// Exports `palisade:plugin/parser`.
    Parser,
    /// Exports `palisade:plugin/detector`.
    Detector,
    /// Exports `palisade:plugin/responder`.
    Responder,
}

/// The optional export of a parser plugin that also reads datagrams.
const DATAGRAM_EXPORT: &str = "palisade:plugin/datagram-parser@0.1.0";

/// Core instances one plugin may have. A Rust wasm32-wasip2 component has
/// three (the program and two shims for its imports; a wasip1 program
/// built with the WASI adapter one more): room for a little more.
const CORE_INSTANCES_PER_PLUGIN: u32 = 8;
/// Linear memories one plugin may have: a Rust component has one (the
/// WASI adapter, when used, shares the program's).
const MEMORIES_PER_PLUGIN: u32 = 2;
/// Tables one plugin may have: a Rust component has two.
const TABLES_PER_PLUGIN: u32 = 4;

impl World {
    fn export(self) -> &'static str {
        match self {
            World::Parser => "palisade:plugin/parser@0.1.0",
            World::Detector => "palisade:plugin/detector@0.1.0",
            World::Responder => "palisade:plugin/responder@0.1.0",
        }
    }
}

impl std::fmt::Display for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            World::Parser => "parser",
            World::Detector => "detector",
            World::Responder => "responder",
        })
    }
}

/// The plugin engine could not start (the pooling allocator could not
/// reserve its memory, for example).
#[derive(Debug, thiserror::Error)]
#[error("cannot start the plugin runtime: {0}")]
pub struct StartError(String);

/// Why a plugin could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The bytes are not a valid component for this engine.
    #[error("plugin {plugin} is not a valid WebAssembly component: {reason}")]
    Invalid {
        /// The plugin's name.
        plugin: String,
        /// What wasmtime said.
        reason: String,
    },
    /// The component exports none, or more than one, of the plugin worlds.
    #[error(
        "plugin {plugin} must export exactly one of {CONTRACT}'s parser, detector or responder interfaces (found {found})"
    )]
    NoWorld {
        /// The plugin's name.
        plugin: String,
        /// What it does export.
        found: String,
    },
    /// The component imports something no plugin world grants.
    #[error("plugin {plugin} imports {import}, which no plugin world grants")]
    Forbidden {
        /// The plugin's name.
        plugin: String,
        /// The refused import.
        import: String,
    },
    /// The component's exports do not match its world's signatures.
    #[error("plugin {plugin} does not match the {world} world of {CONTRACT}: {reason}")]
    Mismatch {
        /// The plugin's name.
        plugin: String,
        /// The world it claims.
        world: World,
        /// What does not match.
        reason: String,
    },
    /// The plugin's key-value store could not be opened.
    #[error("plugin {plugin}: {source}")]
    Store {
        /// The plugin's name.
        plugin: String,
        /// The store's error.
        source: StoreError,
    },
}

/// What went wrong inside one call. The call produced nothing.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Fault {
    /// The call ran past its deadline and was interrupted.
    #[error("missed its deadline of {0:?}")]
    Deadline(Duration),
    /// The instance tried to grow its memory past the limit.
    #[error("exceeded its memory limit of {0} bytes")]
    Memory(usize),
    /// The call recursed past the stack limit.
    #[error("overflowed its stack")]
    Stack,
    /// The call handed the host more data than the output limit allows.
    #[error("passed more than its output limit of {0} bytes to the host")]
    Output(usize),
    /// The call made too many key-value operations.
    #[error("exceeded its limit of {0} key-value operations per call")]
    KvOps(u32),
    /// The result breaks the contract (for example frames longer than the
    /// input).
    #[error("broke the contract: {0}")]
    Contract(String),
    /// The plugin trapped (a panic, an out-of-bounds access, ...).
    #[error("trapped: {0}")]
    Trap(String),
    /// The plugin tried to wait, on the WASI interface named: a plugin has
    /// nothing to wait for, and a wait would hold the host's thread.
    #[error("tried to wait on {0}: plugins may not wait")]
    Blocked(&'static str),
}

/// Why a call into a plugin returned no result.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The plugin faulted on this call; it has received a strike.
    #[error("plugin {plugin} {fault} (strike {strikes} of {max_strikes})")]
    Fault {
        /// The plugin's name.
        plugin: String,
        /// What went wrong.
        fault: Fault,
        /// Strikes so far, this one included.
        strikes: u32,
        /// Strikes that disable the plugin.
        max_strikes: u32,
    },
    /// The plugin is disabled; the caller applies its fail mode.
    #[error("plugin {plugin} is disabled after {strikes} strikes ({fail_mode})")]
    Disabled {
        /// The plugin's name.
        plugin: String,
        /// Strikes it received.
        strikes: u32,
        /// What the caller must do with the traffic.
        fail_mode: FailMode,
    },
    /// No instance of the plugin could be created.
    #[error("plugin {plugin} could not be instantiated: {reason}")]
    Instantiate {
        /// The plugin's name.
        plugin: String,
        /// Why.
        reason: String,
    },
    /// A datagram was handed to a parser that reads streams only.
    #[error("plugin {plugin} reads byte streams only: it does not export {DATAGRAM_EXPORT}")]
    StreamsOnly {
        /// The plugin's name.
        plugin: String,
    },
    /// The plugin has a different world than the call needs.
    #[error("plugin {plugin} is a {world}, not a {wanted}")]
    WrongWorld {
        /// The plugin's name.
        plugin: String,
        /// Its world.
        world: World,
        /// The world the call needs.
        wanted: World,
    },
}

/// Where a plugin is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Lifecycle {
    /// Serving calls.
    Active,
    /// Disabled after too many strikes; calls fail with
    /// [`CallError::Disabled`].
    Failed,
}

/// Settings of the runtime as a whole.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Where precompiled plugins are cached; `None` compiles on every load.
    pub cache_dir: Option<PathBuf>,
    /// Instances of all plugins together that may exist at once. Default 256.
    pub max_instances: u32,
    /// Idle instances kept per plugin for the next call. Default 8.
    pub idle_per_plugin: usize,
    /// Largest memory any instance may have, whatever its limits say.
    /// Default 256 MiB.
    pub max_memory_bytes: usize,
    /// Wasm stack one call may use. Default 512 KiB, against runaway
    /// recursion.
    pub max_stack_bytes: usize,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            cache_dir: None,
            max_instances: 256,
            idle_per_plugin: 8,
            max_memory_bytes: 256 << 20,
            max_stack_bytes: 512 << 10,
        }
    }
}

/// The engine that runs all plugins. Clones share it.
#[derive(Clone)]
pub struct Runtime {
    shared: Arc<RuntimeShared>,
}

struct RuntimeShared {
    engine: Engine,
    /// Where every plugin's monotonic clock starts.
    clock_origin: std::time::Instant,
    linker: Linker<PluginState>,
    cache: Option<Cache>,
    store: Store,
    idle_per_plugin: usize,
    ticker: Option<thread::JoinHandle<()>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("cache", &self.shared.cache)
            .finish_non_exhaustive()
    }
}

impl Drop for RuntimeShared {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.ticker.take() {
            let _ = t.join();
        }
    }
}

impl Runtime {
    /// A runtime whose plugins keep their key-value state in `store`.
    pub fn new(config: &RuntimeConfig, store: Store) -> Result<Self, StartError> {
        Self::start(config, store).map_err(|e| StartError(format!("{e:#}")))
    }

    fn start(config: &RuntimeConfig, store: Store) -> wasmtime::Result<Self> {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(config.max_instances)
            // A Rust wasm32-wasip2 component has a few core instances (the
            // program, the WASI adapter, shims) and one or two memories.
            .total_core_instances(config.max_instances * CORE_INSTANCES_PER_PLUGIN)
            .total_memories(config.max_instances * MEMORIES_PER_PLUGIN)
            .total_tables(config.max_instances * TABLES_PER_PLUGIN)
            // No one component takes more than its share of the pool:
            // without these, one with many core modules, each with its own
            // memory, could hold every memory slot and leave none for the
            // others. wasmtime refuses a component past them when it is
            // loaded.
            .max_core_instances_per_component(CORE_INSTANCES_PER_PLUGIN)
            .max_memories_per_component(MEMORIES_PER_PLUGIN)
            .max_tables_per_component(TABLES_PER_PLUGIN)
            .max_memory_size(config.max_memory_bytes);
        let mut wasm = Config::new();
        wasm.epoch_interruption(true)
            .max_wasm_stack(config.max_stack_bytes)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        // For whoever profiles the appliance: `perf` then names the plugins'
        // functions (from /tmp/perf-PID.map) instead of showing addresses.
        if std::env::var_os("PALISADE_PERF_MAP").is_some() {
            wasm.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&wasm)?;
        let mut linker = Linker::new(&engine);
        host::add_to_linker(&mut linker)?;

        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ticker = {
            let (engine, stop) = (engine.clone(), stop.clone());
            thread::Builder::new()
                .name("plugin-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        thread::sleep(TICK);
                        engine.increment_epoch();
                    }
                })?
        };
        let cache = config.cache_dir.clone().map(|dir| Cache::new(dir, &engine));
        Ok(Runtime {
            shared: Arc::new(RuntimeShared {
                engine,
                clock_origin: std::time::Instant::now(),
                linker,
                cache,
                store,
                idle_per_plugin: config.idle_per_plugin,
                ticker: Some(ticker),
                stop,
            }),
        })
    }

    /// Compile `component` (or load it precompiled from the cache) as plugin
    /// `name`, check it against the contract, and make it ready to call.
    pub fn load(&self, name: &str, component: &[u8], limits: Limits) -> Result<Plugin, LoadError> {
        self.load_cached(name, component, limits)
            .map(|(plugin, _)| plugin)
    }

    /// Like [`Runtime::load`], and say whether the compiled code came from
    /// the cache.
    pub fn load_cached(
        &self,
        name: &str,
        component: &[u8],
        limits: Limits,
    ) -> Result<(Plugin, bool), LoadError> {
        let engine = &self.shared.engine;
        let (compiled, hit) = match &self.shared.cache {
            Some(cache) => cache.load(engine, component),
            None => Component::new(engine, component).map(|c| (c, false)),
        }
        .map_err(|e| LoadError::Invalid {
            plugin: name.to_owned(),
            reason: format!("{e:#}"),
        })?;
        let mut plugin = self.prepare(name, &compiled, limits)?;
        // Without a bundle's manifest, a plugin's version is its content:
        // records name exactly the code that judged.
        let hash = blake3::hash(component).to_hex();
        if let Some(shared) = Arc::get_mut(&mut plugin.shared) {
            shared.version = format!("b3:{}", hash.get(..12).unwrap_or_default()).into();
        }
        Ok((plugin, hit))
    }

    /// Like [`Runtime::load_cached`], for a plugin whose manifest gives its
    /// `version`.
    pub fn load_as(
        &self,
        name: &str,
        version: &str,
        component: &[u8],
        limits: Limits,
    ) -> Result<(Plugin, bool), LoadError> {
        let (mut plugin, hit) = self.load_cached(name, component, limits)?;
        if let Some(shared) = Arc::get_mut(&mut plugin.shared) {
            shared.version = version.into();
        }
        Ok((plugin, hit))
    }

    fn prepare(
        &self,
        name: &str,
        component: &Component,
        limits: Limits,
    ) -> Result<Plugin, LoadError> {
        let engine = &self.shared.engine;
        let ty = component.component_type();
        for (import, _) in ty.imports(engine) {
            if !import_allowed(import) {
                return Err(LoadError::Forbidden {
                    plugin: name.to_owned(),
                    import: import.to_owned(),
                });
            }
        }
        let exports: Vec<&str> = ty.exports(engine).map(|(n, _)| n).collect();
        let worlds: Vec<World> = [World::Parser, World::Detector, World::Responder]
            .into_iter()
            .filter(|w| exports.contains(&w.export()))
            .collect();
        let [world] = worlds[..] else {
            return Err(LoadError::NoWorld {
                plugin: name.to_owned(),
                found: exports.join(", "),
            });
        };
        let mismatch = |e: wasmtime::Error| LoadError::Mismatch {
            plugin: name.to_owned(),
            world,
            reason: format!("{e:#}"),
        };
        let instance_pre = self
            .shared
            .linker
            .instantiate_pre(component)
            .map_err(mismatch)?;
        let pre = match world {
            World::Parser => WorldPre::Parser {
                parser: ParserPluginIndices::new(&instance_pre).map_err(mismatch)?,
                datagrams: (exports.contains(&DATAGRAM_EXPORT))
                    .then(|| DatagramsIndices::new(&instance_pre))
                    .transpose()
                    .map_err(mismatch)?,
                instance_pre,
            },
            World::Detector => {
                WorldPre::Detector(DetectorPluginPre::new(instance_pre).map_err(mismatch)?)
            }
            World::Responder => {
                WorldPre::Responder(ResponderPluginPre::new(instance_pre).map_err(mismatch)?)
            }
        };
        let kv = self
            .shared
            .store
            .plugin_kv(name, limits.kv_quota_bytes)
            .map_err(|source| LoadError::Store {
                plugin: name.to_owned(),
                source,
            })?;
        Ok(Plugin {
            shadow: false,
            shared: Arc::new(PluginShared {
                name: name.into(),
                version: "unknown".into(),
                world,
                limits: Arc::new(limits),
                pre,
                kv,
                counters: Counters::default(),
                idle: Mutex::new(Vec::new()),
                strikes: AtomicU32::new(0),
                calls: AtomicU64::new(0),
                no_instance: AtomicU64::new(0),
                no_instance_logged_ms: AtomicU64::new(0),
                lifecycle: Mutex::new(Lifecycle::Active),
                runtime: self.clone(),
            }),
        })
    }
}

/// Imports a plugin may have: the contract's `host` interface, and the WASI
/// interfaces Rust's standard library links against, which the host serves
/// with nothing granted. Sockets, HTTP and anything else are refused.
fn import_allowed(import: &str) -> bool {
    const ALLOWED: &[&str] = &[
        "palisade:plugin/host@0.1.0",
        "palisade:plugin/types@0.1.0",
        "wasi:cli/environment@",
        "wasi:cli/exit@",
        "wasi:cli/stdin@",
        "wasi:cli/stdout@",
        "wasi:cli/stderr@",
        "wasi:cli/terminal-",
        "wasi:io/",
        "wasi:clocks/",
        "wasi:random/",
        "wasi:filesystem/",
    ];
    ALLOWED.iter().any(|a| import.starts_with(a))
}

enum WorldPre {
    Parser {
        instance_pre: wasmtime::component::InstancePre<PluginState>,
        parser: ParserPluginIndices,
        /// Set when the plugin also reads datagrams.
        datagrams: Option<DatagramsIndices>,
    },
    Detector(DetectorPluginPre<PluginState>),
    Responder(ResponderPluginPre<PluginState>),
}

enum Bound {
    Parser(ParserPlugin, Option<Datagrams>),
    Detector(DetectorPlugin),
    Responder(ResponderPlugin),
}

/// One live instance of a plugin, with its own store.
struct Instance {
    store: wasmtime::Store<PluginState>,
    bound: Bound,
    /// The plugin's settings version when the instance started: it may
    /// keep the settings it read, so it serves only while they stand.
    settings: u64,
}

/// A loaded plugin, ready to call from any thread. Clones share it.
#[derive(Clone)]
pub struct Plugin {
    shared: Arc<PluginShared>,
    /// Set on the handles a slot gives out for its shadow (see [`Slot`]):
    /// their calls' writes to the key-value store are discarded. It
    /// belongs to the handle, not to the plugin, so that a handle taken as
    /// a shadow stays one when the slot stops or promotes its shadow while
    /// a session still holds it.
    shadow: bool,
}

struct PluginShared {
    name: Arc<str>,
    version: Arc<str>,
    world: World,
    limits: Arc<Limits>,
    pre: WorldPre,
    kv: crate::store::PluginKv,
    counters: Counters,
    idle: Mutex<Vec<Instance>>,
    strikes: AtomicU32,
    calls: AtomicU64,
    /// Calls that found no instance (the pool full), and when the last
    /// was logged, in milliseconds from the runtime's clock origin.
    no_instance: AtomicU64,
    no_instance_logged_ms: AtomicU64,
    lifecycle: Mutex<Lifecycle>,
    runtime: Runtime,
}

/// How often a plugin's calls that found no instance are logged.
const NO_INSTANCE_LOG_EVERY: Duration = Duration::from_secs(10);

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.shared.name)
            .field("world", &self.shared.world)
            .field("shadow", &self.shadow)
            .field("lifecycle", &self.lifecycle())
            .finish_non_exhaustive()
    }
}

impl Plugin {
    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The plugin's version: its manifest's, or for a component loaded
    /// without one its content hash, `b3:` and the first 12 hex digits of
    /// its BLAKE3.
    pub fn version(&self) -> &str {
        &self.shared.version
    }

    /// Which world the plugin implements.
    pub fn world(&self) -> World {
        self.shared.world
    }

    /// The plugin's limits.
    pub fn limits(&self) -> &Limits {
        &self.shared.limits
    }

    /// Strikes received so far.
    pub fn strikes(&self) -> u32 {
        self.shared.strikes.load(Ordering::Relaxed)
    }

    /// Whether this handle calls the plugin as a shadow, its writes to
    /// the key-value store discarded.
    pub fn is_shadow(&self) -> bool {
        self.shadow
    }

    /// A handle on the same plugin whose calls write nothing: once given
    /// out as a shadow, it stays read-only whatever becomes of the slot.
    pub(crate) fn as_shadow(&self) -> Plugin {
        Plugin {
            shared: self.shared.clone(),
            shadow: true,
        }
    }

    /// A handle on the same plugin whose calls keep their writes: for a
    /// shadow promoted to active. Handles given out as its shadow before
    /// stay read-only.
    pub(crate) fn as_active(&self) -> Plugin {
        Plugin {
            shared: self.shared.clone(),
            shadow: false,
        }
    }

    /// Calls made to the plugin so far, failed ones included.
    pub fn calls(&self) -> u64 {
        self.shared.calls.load(Ordering::Relaxed)
    }

    /// Where the plugin is in its life.
    pub fn lifecycle(&self) -> Lifecycle {
        *self
            .shared
            .lifecycle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The counters the plugin has added to.
    pub fn counters(&self) -> std::collections::BTreeMap<String, u64> {
        self.shared
            .counters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Bytes the plugin keeps in its key-value store.
    pub fn kv_used(&self) -> u64 {
        self.shared.kv.used()
    }

    /// The protocol a parser plugin understands.
    pub fn protocol(&self) -> Result<String, CallError> {
        self.call(World::Parser, |store, bound| match bound {
            Bound::Parser(p, _) => p.palisade_plugin_parser().call_protocol(store),
            _ => unreachable_world(),
        })
    }

    /// Whether the plugin is a parser that also reads datagrams: it exports
    /// `datagram-parser` beside `parser`.
    pub fn reads_datagrams(&self) -> bool {
        matches!(
            self.shared.pre,
            WorldPre::Parser {
                datagrams: Some(_),
                ..
            }
        )
    }

    /// Parse `input`, the unconsumed bytes of one direction of `session`,
    /// given the parser `state` of the last call.
    pub fn parse(
        &self,
        session: &Session,
        direction: Direction,
        state: &[u8],
        input: &[u8],
    ) -> Result<Parsed, CallError> {
        let state_cap = self.shared.limits.state_bytes;
        self.call(World::Parser, |store, bound| {
            let Bound::Parser(p, _) = bound else {
                return unreachable_world();
            };
            let parsed = (p.palisade_plugin_parser()).call_parse(
                &mut *store,
                session,
                direction,
                state,
                input,
            )?;
            let mut parsed = batch::parsed_from_wire(parsed);
            check_parsed(&parsed, input.len(), state_cap).map_err(breach)?;
            escape_malformed(&mut parsed);
            Ok(parsed)
        })
    }

    /// Parse `datagram`, one whole datagram of one direction of `session`
    /// (CoAP over UDP, say), given the parser `state` of the last call.
    ///
    /// The result has one frame, covering the datagram, and its event; or,
    /// when the parser says the datagram is not a message, no frame, the
    /// reason as a malformed report at offset 0, and `state` unchanged. A
    /// parser that reads streams only ([`Plugin::reads_datagrams`]) is not
    /// called.
    pub fn parse_datagram(
        &self,
        session: &Session,
        direction: Direction,
        state: &[u8],
        datagram: &[u8],
    ) -> Result<Parsed, CallError> {
        if self.world() == World::Parser && !self.reads_datagrams() {
            return Err(CallError::StreamsOnly {
                plugin: self.name().to_owned(),
            });
        }
        // An empty datagram describes nothing, whatever the protocol: it
        // is not the plugin's to answer, nor a fault of the plugin's.
        if datagram.is_empty() {
            return Ok(Parsed::new(state.to_vec()).malformed(0, "an empty datagram"));
        }
        let state_cap = self.shared.limits.state_bytes;
        self.call(World::Parser, |store, bound| {
            let Bound::Parser(_, Some(d)) = bound else {
                return unreachable_world();
            };
            let answer = (d.palisade_plugin_datagram_parser()).call_parse_datagram(
                &mut *store,
                session,
                direction,
                state,
                datagram,
            )?;
            let mut parsed = match answer {
                Ok(message) if message.event.events.len() != 1 => {
                    return Err(breach(format!(
                        "{} events for one datagram, not one",
                        message.event.events.len()
                    )));
                }
                Ok(message) => {
                    let parsed = Parsed {
                        frame_lengths: vec![u32::try_from(datagram.len()).unwrap_or(u32::MAX)],
                        events: batch::from_wire(message.event),
                        state: message.state,
                        needed: None,
                        malformed: None,
                    };
                    check_parsed(&parsed, datagram.len(), state_cap).map_err(breach)?;
                    parsed
                }
                Err(reason) => Parsed::new(state.to_vec()).malformed(0, reason),
            };
            escape_malformed(&mut parsed);
            Ok(parsed)
        })
    }

    /// Judge the events of `batch`, from `session`.
    pub fn detect(&self, session: &Session, batch: &WireBatch) -> Result<Vec<Finding>, CallError> {
        self.call(World::Detector, |store, bound| {
            let Bound::Detector(d) = bound else {
                return unreachable_world();
            };
            store.data_mut().allow_kv_ops_for(batch.len());
            let findings =
                (d.palisade_plugin_detector()).call_detect(&mut *store, session, &batch.0)?;
            checked_findings(findings, batch.len()).map_err(breach)
        })
    }

    /// Decide what to do about `findings` on the events of `batch`, from
    /// `session`.
    pub fn respond(
        &self,
        session: &Session,
        batch: &WireBatch,
        findings: &[Finding],
    ) -> Result<Vec<Action>, CallError> {
        let output_bytes = self.shared.limits.output_bytes;
        self.call(World::Responder, |store, bound| {
            let Bound::Responder(r) = bound else {
                return unreachable_world();
            };
            // A responder answers each finding, and the findings come from
            // every detector: its output limit grows by an answer to each
            // (an alert quoting the reason, a dropped frame), so that a
            // detector raising many findings, within its own limits, does
            // not push an honest responder past its own and the strike
            // lands on the plugin that misbehaved.
            let answers = (findings.iter())
                .map(|f| MAX_ACTIONS_PER_FINDING * size_of::<Action>() + f.reason.len())
                .fold(0usize, usize::saturating_add);
            store.set_hostcall_fuel(output_bytes.saturating_add(answers));
            store.data_mut().allow_kv_ops_for(batch.len());
            let actions = (r.palisade_plugin_responder()).call_respond(
                &mut *store,
                session,
                &batch.0,
                findings,
            )?;
            checked_actions(actions, findings.len()).map_err(breach)
        })
    }

    /// Run `f` on an instance with this call's budgets set, and account for
    /// the outcome.
    fn call<R>(
        &self,
        wanted: World,
        f: impl FnOnce(&mut wasmtime::Store<PluginState>, &Bound) -> wasmtime::Result<R>,
    ) -> Result<R, CallError> {
        let shared = &*self.shared;
        if shared.world != wanted {
            return Err(CallError::WrongWorld {
                plugin: self.name().to_owned(),
                world: shared.world,
                wanted,
            });
        }
        if self.lifecycle() == Lifecycle::Failed {
            return Err(CallError::Disabled {
                plugin: self.name().to_owned(),
                strikes: self.strikes(),
                fail_mode: shared.limits.fail_mode,
            });
        }
        shared.calls.fetch_add(1, Ordering::Relaxed);
        let settings = shared.kv.settings_version();
        let idle = {
            let mut idle = shared.idle.lock().unwrap_or_else(|p| p.into_inner());
            // Instances started before a setting changed may keep the old
            // one: they go, and free their pool slots, before a fresh one
            // starts.
            if idle.last().is_some_and(|i| i.settings != settings) {
                idle.retain(|i| i.settings == settings);
            }
            idle.pop()
        };
        let mut instance = match idle {
            Some(i) => i,
            None => self.instantiate(settings)?,
        };
        let store = &mut instance.store;
        store.data_mut().begin_call(self.shadow);
        store.set_epoch_deadline(deadline::ticks(shared.limits.deadline()));
        store.set_hostcall_fuel(shared.limits.output_bytes);
        match f(store, &instance.bound) {
            Ok(r) => {
                let mut idle = shared.idle.lock().unwrap_or_else(|p| p.into_inner());
                if idle.len() < shared.runtime.shared.idle_per_plugin {
                    idle.push(instance);
                }
                Ok(r)
            }
            // The instance may be in any state after a fault: it is dropped,
            // and its pool slot freed, here.
            Err(e) => Err(self.strike(classify(&e, &shared.limits))),
        }
    }

    /// A new instance, of settings version `settings`, read before it
    /// starts: a setting changed while it starts makes it stale, never the
    /// other way.
    fn instantiate(&self, settings: u64) -> Result<Instance, CallError> {
        let shared = &*self.shared;
        let state = PluginState::new(
            shared.name.clone(),
            shared.limits.clone(),
            shared.kv.clone(),
            shared.counters.clone(),
            shared.runtime.shared.clock_origin,
        );
        let mut store = wasmtime::Store::new(&shared.runtime.shared.engine, state);
        store.limiter(|s| s);
        store.epoch_deadline_callback(|mut store| Ok(store.data_mut().at_deadline()));
        store.set_max_component_handles(limits::MAX_HANDLES);
        // A component may call the host while it starts: under the same
        // budgets as a call, and a shadow's writes discarded.
        store.data_mut().begin_call(self.shadow);
        store.set_epoch_deadline(deadline::ticks(shared.limits.deadline()));
        store.set_hostcall_fuel(shared.limits.output_bytes);
        let bound = match &shared.pre {
            WorldPre::Parser {
                instance_pre,
                parser,
                datagrams,
            } => instance_pre.instantiate(&mut store).and_then(|instance| {
                Ok(Bound::Parser(
                    parser.load(&mut store, &instance)?,
                    (datagrams.as_ref())
                        .map(|d| d.load(&mut store, &instance))
                        .transpose()?,
                ))
            }),
            WorldPre::Detector(pre) => pre.instantiate(&mut store).map(Bound::Detector),
            WorldPre::Responder(pre) => pre.instantiate(&mut store).map(Bound::Responder),
        };
        match bound {
            Ok(bound) => Ok(Instance {
                store,
                bound,
                settings,
            }),
            // A plugin that faults while starting up is as faulty as one
            // that faults in a call.
            Err(e)
                if e.downcast_ref::<Fault>().is_some()
                    || e.downcast_ref::<Trap>().is_some()
                    || e.downcast_ref::<wasmtime_wasi::I32Exit>().is_some() =>
            {
                Err(self.strike(classify(&e, &shared.limits)))
            }
            Err(e) => {
                let reason = one_line(&e);
                self.no_instance(&reason);
                Err(CallError::Instantiate {
                    plugin: self.name().to_owned(),
                    reason,
                })
            }
        }
    }

    /// Log that a call found no instance, at most every
    /// [`NO_INSTANCE_LOG_EVERY`], with how many have in all: a fail-open
    /// plugin's frames then pass unjudged, and a full pool fails call
    /// after call.
    fn no_instance(&self, reason: &str) {
        let shared = &*self.shared;
        let failed = shared.no_instance.fetch_add(1, Ordering::Relaxed) + 1;
        let every = NO_INSTANCE_LOG_EVERY.as_millis() as u64;
        // From 1: the first failure is always logged.
        let now =
            (shared.runtime.shared.clock_origin.elapsed().as_millis() as u64).saturating_add(every);
        let last = shared.no_instance_logged_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= every
            && (shared.no_instance_logged_ms)
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                plugin = &*shared.name,
                fail_mode = %shared.limits.fail_mode,
                calls_without_an_instance = failed,
                reason,
                "plugin call found no instance: its events went unjudged (fail-open) or blocked (fail-closed)"
            );
        }
    }

    fn strike(&self, fault: Fault) -> CallError {
        let shared = &*self.shared;
        let strikes = shared.strikes.fetch_add(1, Ordering::Relaxed) + 1;
        let max_strikes = shared.limits.max_strikes;
        tracing::warn!(plugin = &*shared.name, %fault, strikes, max_strikes, "plugin call failed");
        if strikes >= max_strikes {
            let mut lifecycle = shared.lifecycle.lock().unwrap_or_else(|p| p.into_inner());
            if *lifecycle != Lifecycle::Failed {
                *lifecycle = Lifecycle::Failed;
                shared
                    .idle
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clear();
                tracing::error!(plugin = &*shared.name, strikes, fail_mode = %shared.limits.fail_mode, "plugin disabled");
            }
        }
        CallError::Fault {
            plugin: self.name().to_owned(),
            fault,
            strikes,
            max_strikes,
        }
    }
}

/// A detector's `findings` on a batch of `events` events, each score
/// brought into 0..=1 (NaN as 0, as the SDK's `Finding::new` does): a
/// non-finite score would be written to the audit trail as `null`, which
/// no reader takes back. Each reason is cut to [`MAX_REASON_BYTES`]. A
/// finding on an event past the batch, or more than
/// [`MAX_FINDINGS_PER_EVENT`] about one event, breaks the contract: each
/// finding becomes an audit record carrying its event and goes to every
/// responder, so a detector must not multiply them at will.
fn checked_findings(mut findings: Vec<Finding>, events: usize) -> Result<Vec<Finding>, String> {
    if let Some(f) = findings.iter().find(|f| f.event as usize >= events) {
        return Err(format!(
            "finding on event {} of a batch of {events}",
            f.event
        ));
    }
    if findings.len() > MAX_FINDINGS_PER_EVENT {
        // Every event is inside the batch: checked above.
        let mut about = vec![0u8; events];
        for f in &findings {
            if let Some(n) = about.get_mut(f.event as usize) {
                *n = n.saturating_add(1);
                if usize::from(*n) > MAX_FINDINGS_PER_EVENT {
                    return Err(format!(
                        "more than {MAX_FINDINGS_PER_EVENT} findings about event {}",
                        f.event
                    ));
                }
            }
        }
    }
    for finding in &mut findings {
        finding.score = score_in_range(finding.score);
        cut_reason(&mut finding.reason);
    }
    Ok(findings)
}

/// A responder's `actions` on `findings` findings, each alert's message cut
/// to [`MAX_REASON_BYTES`]. More than [`MAX_ACTIONS_PER_FINDING`] per
/// finding and [`SPARE_ACTIONS`] breaks the contract: each action becomes
/// an audit record.
fn checked_actions(mut actions: Vec<Action>, findings: usize) -> Result<Vec<Action>, String> {
    let most = findings
        .saturating_mul(MAX_ACTIONS_PER_FINDING)
        .saturating_add(SPARE_ACTIONS);
    if actions.len() > most {
        return Err(format!(
            "{} actions on {findings} findings, more than {most}",
            actions.len()
        ));
    }
    for action in &mut actions {
        if let Action::Alert(message) = action {
            cut_reason(message);
        }
    }
    Ok(actions)
}

/// Cut `reason` to at most [`MAX_REASON_BYTES`], at a character boundary,
/// ending in a marker that says how much was cut. A reason often quotes
/// what a device sent, so a long one is the device's doing as much as the
/// plugin's: it is cut, not refused.
fn cut_reason(reason: &mut String) {
    if reason.len() <= MAX_REASON_BYTES {
        return;
    }
    // Room for the marker: `...[cut ` and ` bytes]` around at most 20 digits.
    const MARKER: usize = 8 + 20 + 7;
    let end = reason.floor_char_boundary(MAX_REASON_BYTES - MARKER);
    let cut = reason.len() - end;
    reason.truncate(end);
    reason.push_str(&format!("...[cut {cut} bytes]"));
}

/// Escape the parser's malformed report's reason, and cut it, as a line of
/// the appliance's log shows it ([`host::log_line`]): it closes the session
/// with that reason, which the appliance logs, and it becomes the reason
/// attribute of the malformed event.
fn escape_malformed(parsed: &mut Parsed) {
    if let Some(m) = &mut parsed.malformed
        && let std::borrow::Cow::Owned(escaped) = host::log_line(&m.reason)
    {
        m.reason = escaped;
    }
}

/// `score` in 0..=1, NaN as 0.
pub fn score_in_range(score: f32) -> f32 {
    if score.is_nan() {
        0.0
    } else {
        score.clamp(0.0, 1.0)
    }
}

/// A plugin's answer that breaks the contract, as the error that ends its
/// call with a strike.
fn breach(reason: String) -> wasmtime::Error {
    wasmtime::Error::new(Fault::Contract(reason))
}

fn unreachable_world<R>() -> wasmtime::Result<R> {
    // `call` checked the world before handing out the instance.
    Err(wasmtime::Error::msg("instance of another world"))
}

/// Name the fault behind a failed call.
fn classify(e: &wasmtime::Error, limits: &Limits) -> Fault {
    if let Some(fault) = e.downcast_ref::<Fault>() {
        return fault.clone();
    }
    if let Some(trap) = e.downcast_ref::<Trap>() {
        return match trap {
            Trap::Interrupt => Fault::Deadline(limits.deadline()),
            Trap::StackOverflow => Fault::Stack,
            other => Fault::Trap(other.to_string()),
        };
    }
    let message = format!("{e:#}");
    // wasmtime's error for data lifted past `set_hostcall_fuel` is private;
    // its message is the only way to tell it.
    if message.contains("fuel allocated for hostcalls has been exhausted") {
        return Fault::Output(limits.output_bytes);
    }
    Fault::Trap(one_line(e))
}

/// What wasmtime says of `e`, as one line of the appliance's log: its
/// message may carry a backtrace, which names the plugin's functions as the
/// plugin named them. The root cause comes first, so that the cut to a log
/// line keeps it.
fn one_line(e: &wasmtime::Error) -> String {
    let message = format!("{e:#}");
    let cause = e.root_cause().to_string();
    let line = if message.starts_with(&cause) {
        message
    } else {
        format!("{cause} ({message})")
    };
    log_line(&line).into_owned()
}

/// Check a parser's result against its input: one event per frame, frames
/// follow each other inside the input, none is empty, the batch keeps its
/// layout, the state fits its cap.
fn check_parsed(parsed: &Parsed, input_len: usize, state_cap: usize) -> Result<(), String> {
    parsed.events.columns().check()?;
    if parsed.events.len() != parsed.frame_lengths.len() {
        return Err(format!(
            "{} frames but {} events",
            parsed.frame_lengths.len(),
            parsed.events.len()
        ));
    }
    let mut consumed: usize = 0;
    for &len in &parsed.frame_lengths {
        if len == 0 {
            return Err("empty frame".into());
        }
        consumed = consumed.saturating_add(len as usize);
    }
    if consumed > input_len {
        return Err(format!(
            "frames cover {consumed} bytes of an input of {input_len}"
        ));
    }
    if parsed.state.len() > state_cap {
        return Err(format!(
            "session state of {} bytes exceeds the limit of {state_cap}",
            parsed.state.len()
        ));
    }
    if let Some(m) = &parsed.malformed
        && m.offset as usize != consumed
    {
        return Err(format!(
            "malformed at offset {} but frames end at {consumed}",
            m.offset
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::indexing_slicing, clippy::unwrap_used)]

    use super::*;

    fn parsed(lens: &[u32]) -> Parsed {
        let mut parsed = Parsed::new(Vec::new());
        for &len in lens {
            parsed.frame(len as usize, "t.x");
        }
        parsed
    }

    /// Log lines, kept for a test to read.
    #[derive(Clone, Default)]
    struct Logged(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Logged {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A call that finds no instance (the pool full) is logged, once in a
    /// while for many: a fail-open plugin's events then pass unjudged, and
    /// nothing said so.
    #[test]
    fn calls_that_find_no_instance_are_logged_once_in_a_while() {
        let config = RuntimeConfig {
            max_instances: 1,
            ..RuntimeConfig::default()
        };
        let runtime = Runtime::new(&config, crate::store::Store::temporary().unwrap()).unwrap();
        let component = first_party::component("mqtt").unwrap();
        let holder = runtime.load("mqtt", component, Limits::default()).unwrap();
        let starved = runtime
            .load("mqtt-b", component, Limits::default())
            .unwrap();
        // Its idle instance keeps the pool's only slot.
        holder.protocol().unwrap();
        let logged = Logged::default();
        let writer = logged.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            for _ in 0..3 {
                let error = starved.protocol().unwrap_err();
                assert!(matches!(error, CallError::Instantiate { .. }), "{error}");
            }
        });
        let text = String::from_utf8(logged.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.matches("found no instance").count(), 1, "{text}");
        assert!(text.contains("plugin=\"mqtt-b\""), "{text}");
        assert_eq!(starved.strikes(), 0, "not the plugin's fault");
    }

    #[test]
    fn findings_scores_are_brought_into_range() {
        let finding = |event, score| Finding {
            event,
            severity: Severity::High,
            score,
            reason: "r".into(),
        };
        let odd = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.5, 0.25];
        let findings = (0..).zip(odd).map(|(i, s)| finding(i, s)).collect();
        let scores = checked_findings(findings, 5).map(|f| f.iter().map(|f| f.score).collect());
        assert_eq!(scores, Ok(vec![0.0, 1.0, 0.0, 0.0, 0.25]));
        assert!(checked_findings(vec![finding(1, 0.5)], 1).is_err());
    }

    /// A detector that raises findings by the thousand about one event (each
    /// an audit record carrying the event, each given to every responder)
    /// breaks the contract; one that finds something about every event of
    /// a long batch does not. Long reasons are cut, not refused.
    #[test]
    fn findings_are_capped_per_event_and_reasons_cut() {
        let finding = |event, reason: &str| Finding {
            event,
            severity: Severity::High,
            score: 0.5,
            reason: reason.into(),
        };
        let every: Vec<Finding> = (0..10_000).map(|e| finding(e, "r")).collect();
        assert_eq!(checked_findings(every, 10_000).map(|f| f.len()), Ok(10_000));
        let several: Vec<Finding> = (0..MAX_FINDINGS_PER_EVENT as u32)
            .flat_map(|_| (0..3).map(|e| finding(e, "r")))
            .collect();
        assert!(checked_findings(several, 3).is_ok());
        let flood: Vec<Finding> = (0..105_000).map(|_| finding(0, "")).collect();
        let refused = checked_findings(flood, 64).unwrap_err();
        assert!(refused.contains("findings about event 0"), "{refused}");

        let long = "é".repeat(40_000);
        let kept = checked_findings(vec![finding(0, &long)], 1).unwrap();
        let reason = &kept[0].reason;
        assert!(reason.len() <= MAX_REASON_BYTES, "{}", reason.len());
        assert!(reason.starts_with("éé"), "{reason}");
        assert!(reason.ends_with(" bytes]"), "{reason}");
        let short = checked_findings(vec![finding(0, "short")], 1).unwrap();
        assert_eq!(short[0].reason, "short");
    }

    /// A responder may answer each finding with an alert and a dropped
    /// frame, and the session as a whole with a few more; not with actions
    /// by the thousand. An alert's message is cut as a reason is.
    #[test]
    fn actions_are_capped_per_finding_and_alerts_cut() {
        let answers = |findings: usize| -> Vec<Action> {
            (0..findings)
                .flat_map(|i| [Action::Alert("why".into()), Action::DropFrame(i as u32)])
                .chain([Action::CloseSession, Action::QuarantineDevice])
                .collect()
        };
        assert!(checked_actions(answers(1000), 1000).is_ok());
        assert!(checked_actions(answers(1), 1).is_ok());
        let flood = vec![Action::Allow; 100_000];
        assert!(checked_actions(flood, 3).is_err());
        let long = vec![Action::Alert("x".repeat(4 << 20))];
        let kept = checked_actions(long, 1).unwrap();
        let Action::Alert(message) = &kept[0] else {
            panic!("{kept:?}")
        };
        assert!(message.len() <= MAX_REASON_BYTES, "{}", message.len());
        assert!(message.ends_with(" bytes]"), "{message}");
    }

    /// A parser's reason for a malformed stream reaches the appliance's log
    /// as the session's close reason: it is escaped and cut when the host
    /// receives it.
    #[test]
    fn a_malformed_reason_is_escaped_and_cut() {
        let forged = "bad\n2026-11-27T00:00:00Z  INFO palisade: session closed\u{2028}";
        let mut p =
            Parsed::new(Vec::new()).malformed(0, format!("{forged}{}", "x".repeat(1 << 20)));
        escape_malformed(&mut p);
        let reason = &p.malformed.unwrap().reason;
        assert!(reason.starts_with("bad\\n2026"), "{reason}");
        assert!(
            !reason.contains('\n') && !reason.contains('\u{2028}'),
            "{reason}"
        );
        assert!(reason.len() <= limits::MAX_LOG_LINE, "{}", reason.len());
    }

    /// wasmtime's message for a failed call may hold a backtrace naming the
    /// plugin's functions, which the plugin names: it reaches the log as one
    /// line, its cause first.
    #[test]
    fn a_trap_message_is_one_line_with_its_cause_first() {
        let e = wasmtime::Error::msg("invalid utf-8")
            .context("backtrace:\n  0: forged\n2026-11-27T00:00:00Z  INFO palisade: x");
        let Fault::Trap(message) = classify(&e, &Limits::default()) else {
            panic!("not a trap")
        };
        assert!(
            message.starts_with("invalid utf-8 (backtrace:\\n"),
            "{message}"
        );
        assert!(!message.contains('\n'), "{message}");
    }

    #[test]
    fn frames_must_stay_inside_the_input() {
        assert!(check_parsed(&parsed(&[2, 3]), 5, 16).is_ok());
        assert!(check_parsed(&parsed(&[2, 4]), 5, 16).is_err());
        assert!(check_parsed(&parsed(&[u32::MAX, u32::MAX]), 5, 16).is_err());
        assert!(check_parsed(&parsed(&[0]), 5, 16).is_err());
    }

    #[test]
    fn one_event_per_frame_in_a_batch_that_keeps_its_layout() {
        let mut p = parsed(&[2]);
        p.events.push("t.y");
        assert!(check_parsed(&p, 5, 16).is_err(), "an event without a frame");
        let mut p = parsed(&[2]);
        let mut columns = p.events.clone().into_columns();
        columns.kinds.clear();
        p.events = Batch::from_columns(columns);
        assert!(check_parsed(&p, 5, 16).is_err(), "kind past the table");
    }

    /// A parser that fills the table of kinds (or of names) and reports
    /// the rest malformed left the host no room for its malformed event,
    /// and appending it panicked in the session's task, with no strike.
    #[test]
    fn tables_leave_room_for_the_hosts_malformed_event() {
        for (kinds, fields) in [(65_536, 0), (0, 65_536), (65_535, 0), (0, 65_535)] {
            let mut columns = Columns::default();
            columns.kinds.resize(kinds, String::new());
            columns
                .fields
                .resize(fields, (String::new(), ValueType::Int));
            let mut p = Parsed::new(Vec::new()).malformed(0, "no frames");
            p.events = Batch::from_columns(columns);
            assert!(
                check_parsed(&p, 5, 16).is_err(),
                "{kinds} kinds, {fields} fields"
            );
        }
    }

    #[test]
    fn state_and_malformed_offset_are_checked() {
        let mut p = parsed(&[2]);
        p.state = vec![0; 17];
        assert!(check_parsed(&p, 5, 16).is_err());
        p.state.clear();
        p.malformed = Some(Malformed {
            offset: 3,
            reason: "x".into(),
        });
        assert!(check_parsed(&p, 5, 16).is_err());
    }

    #[test]
    fn only_the_std_wasi_shapes_may_be_imported() {
        assert!(import_allowed("palisade:plugin/host@0.1.0"));
        assert!(import_allowed("wasi:io/streams@0.2.6"));
        assert!(!import_allowed("wasi:sockets/tcp@0.2.6"));
        assert!(!import_allowed("wasi:http/outgoing-handler@0.2.6"));
    }
}
