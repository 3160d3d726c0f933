//! Live swap: the active version of a plugin, replaced while sessions run.
//!
//! A session asks its slots for the active plugin at every chunk of bytes.
//! The host holds everything a session needs to continue (the unconsumed
//! bytes and the parser's state; detector state lives in the key-value
//! store, which every version of a plugin shares), so a new version takes
//! over at the next frame boundary of every session, existing and new, and
//! no frame is lost or seen twice. The old version drains: calls in flight
//! finish on it, and its instances and compiled code are freed when the
//! last of them returns.
//!
//! A slot may also hold a shadow: a candidate version that is given the same
//! input as the active one, whose results are compared with the active
//! one's and never acted on, so an operator sees where a new version would
//! judge differently before promoting it. A shadow reads the plugin's
//! key-value store (the active version's baselines) and its writes are
//! discarded, so it cannot disturb them: the slot gives out read-only
//! handles on it, which stay read-only when the shadow is replaced,
//! stopped or promoted while a session still holds one.

use std::sync::{Arc, Mutex, RwLock};

use super::{Plugin, World};

/// Why a slot refused a plugin.
#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    /// The new plugin implements another world than the active one.
    #[error("plugin {new} is a {new_world} plugin; slot {slot} holds a {world} plugin")]
    WrongWorld {
        /// The slot's plugin name.
        slot: String,
        /// The slot's world.
        world: World,
        /// The refused plugin's name.
        new: String,
        /// The refused plugin's world.
        new_world: World,
    },
    /// Promotion was asked for with no shadow in the slot.
    #[error("slot {slot} has no shadow to promote")]
    NoShadow {
        /// The slot's plugin name.
        slot: String,
    },
}

/// What the shadow did differently from the active plugin so far.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ShadowReport {
    /// Calls given to both.
    pub compared: u64,
    /// Calls whose results differed.
    pub differed: u64,
    /// Calls the shadow failed (trap, limit) while the active one did not.
    pub failed: u64,
    /// The last difference, described.
    pub last_difference: Option<String>,
}

/// The active version of one plugin, and perhaps a shadow beside it. Cheap
/// to clone; clones share the slot.
#[derive(Debug, Clone)]
pub struct Slot {
    inner: Arc<SlotInner>,
}

#[derive(Debug)]
struct SlotInner {
    active: RwLock<Plugin>,
    shadow: RwLock<Option<Plugin>>,
    report: Mutex<ShadowReport>,
}

impl From<Plugin> for Slot {
    fn from(plugin: Plugin) -> Self {
        Slot::new(plugin)
    }
}

impl Slot {
    /// A slot whose active plugin is `plugin`.
    pub fn new(plugin: Plugin) -> Self {
        Slot {
            inner: Arc::new(SlotInner {
                active: RwLock::new(plugin),
                shadow: RwLock::new(None),
                report: Mutex::new(ShadowReport::default()),
            }),
        }
    }

    /// The active plugin. A caller keeps it for one call or one chunk, not
    /// longer: holding it holds the version.
    pub fn active(&self) -> Plugin {
        read(&self.inner.active).clone()
    }

    /// The shadow, if there is one.
    pub fn shadow(&self) -> Option<Plugin> {
        read(&self.inner.shadow).clone()
    }

    /// Make `plugin` the active version, from the next chunk of every
    /// session on. Returns the version it replaces, which drains once the
    /// caller drops it and the calls in flight on it return.
    pub fn activate(&self, plugin: Plugin) -> Result<Plugin, SwapError> {
        let mut active = write(&self.inner.active);
        self.same_world(&active, &plugin)?;
        tracing::info!(
            plugin = plugin.name(),
            replaces = active.name(),
            "plugin activated"
        );
        Ok(std::mem::replace(&mut *active, plugin))
    }

    /// Run `plugin` as a shadow beside the active version (replacing any
    /// shadow), or stop shadowing with `None`. The comparison starts anew.
    pub fn set_shadow(&self, plugin: Option<Plugin>) -> Result<(), SwapError> {
        if let Some(p) = &plugin {
            self.same_world(&read(&self.inner.active), p)?;
        }
        *write(&self.inner.shadow) = plugin.as_ref().map(Plugin::as_shadow);
        *self.report() = ShadowReport::default();
        Ok(())
    }

    /// Make the shadow the active version. Returns the version it replaces.
    pub fn promote(&self) -> Result<Plugin, SwapError> {
        let Some(shadow) = write(&self.inner.shadow).take() else {
            return Err(SwapError::NoShadow {
                slot: self.active().name().to_owned(),
            });
        };
        self.activate(shadow.as_active())
    }

    /// What the shadow did differently so far.
    pub fn shadow_report(&self) -> ShadowReport {
        self.report().clone()
    }

    /// Record one comparison: `difference` says how the shadow's result
    /// differed, if it did; `failed` that the shadow's call failed.
    pub(crate) fn record_shadow(&self, difference: Option<String>, failed: bool) {
        let mut report = self.report();
        report.compared += 1;
        if failed {
            report.failed += 1;
        }
        if let Some(d) = difference {
            report.differed += 1;
            report.last_difference = Some(d);
        }
    }

    fn report(&self) -> std::sync::MutexGuard<'_, ShadowReport> {
        self.inner.report.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn same_world(&self, active: &Plugin, new: &Plugin) -> Result<(), SwapError> {
        if active.world() == new.world() {
            return Ok(());
        }
        Err(SwapError::WrongWorld {
            slot: active.name().to_owned(),
            world: active.world(),
            new: new.name().to_owned(),
            new_world: new.world(),
        })
    }
}

// A poisoned lock only means a panic elsewhere while it was held; the
// plugin handle inside is still whole.
fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}
