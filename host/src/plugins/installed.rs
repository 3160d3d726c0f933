//! The plugins a running appliance serves, by name: one [`Slot`] each,
//! shared by every route that names the plugin, so that activating a new
//! version (or setting a shadow) in the slot reaches every session of every
//! such route at its next frame boundary.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::{Plugin, Slot, World};

/// The named slots of the appliance. Cheap to clone; clones share them.
#[derive(Debug, Clone, Default)]
pub struct Installed {
    slots: Arc<Mutex<BTreeMap<String, Entry>>>,
}

#[derive(Debug, Clone)]
struct Entry {
    slot: Slot,
    routes: Vec<String>,
}

/// One served plugin, as an operator sees it.
#[derive(Debug, Clone)]
pub struct Served {
    /// The name routes know it by.
    pub name: String,
    /// Its slot.
    pub slot: Slot,
    /// The routes that use it.
    pub routes: Vec<String>,
}

impl Installed {
    /// The slot of `name` for `route`, made with `load` when no route used
    /// it yet. A slot whose plugin is of another world than `world` is an
    /// error.
    pub fn slot_for(
        &self,
        name: &str,
        world: World,
        route: &str,
        load: impl FnOnce() -> anyhow::Result<Plugin>,
    ) -> anyhow::Result<Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let entry = match slots.get_mut(name) {
            Some(entry) => entry,
            None => {
                let plugin = load()?;
                slots.entry(name.to_owned()).or_insert(Entry {
                    slot: Slot::new(plugin),
                    routes: Vec::new(),
                })
            }
        };
        let found = entry.slot.active().world();
        anyhow::ensure!(
            found == world,
            "plugin {name} is a {found}, not a {world}, so route {route} cannot use it as one"
        );
        if !entry.routes.iter().any(|r| r == route) {
            entry.routes.push(route.to_owned());
        }
        Ok(entry.slot.clone())
    }

    /// The slot of `name`, if a route uses it.
    pub fn get(&self, name: &str) -> Option<Slot> {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.get(name).map(|e| e.slot.clone())
    }

    /// Every served plugin, by name.
    pub fn list(&self) -> Vec<Served> {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        (slots.iter())
            .map(|(name, e)| Served {
                name: name.clone(),
                slot: e.slot.clone(),
                routes: e.routes.clone(),
            })
            .collect()
    }
}
