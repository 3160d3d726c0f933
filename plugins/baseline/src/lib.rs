//! The behavioural baseline detector: it learns what each device, and each
//! class of devices, normally does (routes, event kinds, MQTT topics and
//! subscriptions, Modbus function codes and registers with their access,
//! CoAP resources, hours of the day, events per minute, payload sizes),
//! then flags what departs from it, with a score and a reason a person can
//! read: a thermostat on a route it never used, a controller writing a
//! register it only ever read, a burst ten times its normal rate.
//!
//! Each profile learns for [`LEARNING_HOURS`] hours of wall-clock time and
//! at least [`LEARNING_EVENTS`] events (an operator changes them with the
//! store keys `config/learning-hours` and `config/learning-events`), then
//! enforces. A device still learning is judged against its class's
//! profile once the class enforces, so a new device of a known class is
//! watched from its first frame. Profiles live in the plugin's key-value
//! store, under `device/ID` and `class/CLASS`, so they survive restarts and
//! upgrades of the plugin; the appliance exports them as reviewable policy
//! and adds a finding to them when an operator accepts it as normal.
//! Profiles the store refuses (the plugin's quota full) are told in one
//! finding an hour per instance, with how many were refused: what they
//! learn is lost, so a device still learning stays learning, judged by its
//! class alone.

pub mod profile;

use palisade_plugin_sdk::host::{self, KvError, Level, config, kv};
use std::cell::RefCell;
use std::collections::BTreeSet;
use std::hash::{DefaultHasher, Hash, Hasher};

use palisade_plugin_sdk::{Batch, Detector, Finding, Session, Severity, same};

pub use profile::{MAX_REASON_LEN, Names, Novelty, Profile};

/// Events a profile learns from, at least, before it enforces.
pub const LEARNING_EVENTS: u64 = 100;

/// Hours a profile learns for, at least, before it enforces: a day, so that
/// it knows the site's daily cycle.
pub const LEARNING_HOURS: u64 = 24;

/// The store key of a device's profile.
pub fn device_key(id: &str) -> String {
    format!("device/{id}")
}

/// The store key of a class's profile.
pub fn class_key(class: &str) -> String {
    format!("class/{class}")
}

/// The store key of the least events learnt from (decimal text).
pub const LEARNING_KEY: &str = "config/learning-events";

/// The store key of the least hours learnt for (decimal text).
pub const LEARNING_HOURS_KEY: &str = "config/learning-hours";

/// How long a profile learns.
#[derive(Debug, Clone, Copy)]
struct Learning {
    events: u64,
    millis: u64,
}

impl Learning {
    fn configured() -> Self {
        Learning {
            events: config::get("learning-events").unwrap_or(LEARNING_EVENTS),
            millis: config::get("learning-hours")
                .unwrap_or(LEARNING_HOURS)
                .saturating_mul(3_600_000),
        }
    }

    fn done(&self, profile: &Profile) -> bool {
        let (first, last) = profile.learnt_span;
        profile.events >= self.events.max(1) && last.saturating_sub(first) >= self.millis
    }
}

/// The detector as a plugin.
#[derive(Debug)]
pub struct Baseline;

/// Profiles this instance read or stored last, each with the bytes the
/// store held for it. Most calls on an instance read back the profiles it
/// stored on the call before; a profile whose bytes the store still holds
/// is taken from here instead of being decoded again. Any other writer
/// (another instance, the operator) changes the bytes, and the profile is
/// then decoded afresh.
struct Cached {
    key: String,
    bytes: Vec<u8>,
    profile: Profile,
}

/// Profiles cached at most: a device's and its class's for a few sessions.
const CACHED: usize = 8;

thread_local! {
    static CACHE: RefCell<Vec<Cached>> = const { RefCell::new(Vec::new()) };
}

/// The profile stored under `key`, and the bytes it is stored as.
fn load(key: &str) -> (Profile, Option<Vec<u8>>) {
    let Some(bytes) = kv::get(key) else {
        return (Profile::default(), None);
    };
    let cached = CACHE.with_borrow_mut(|cache| {
        let at = cache.iter().position(|c| c.key == key)?;
        let cached = cache.remove(at);
        same(&cached.bytes, &bytes).then_some(cached.profile)
    });
    let profile = cached.or_else(|| Profile::decode(&bytes));
    (profile.unwrap_or_default(), Some(bytes))
}

/// Keep `profile`, stored as `bytes`, for the next call.
fn keep(key: &str, bytes: Vec<u8>, profile: Profile) {
    CACHE.with_borrow_mut(|cache| {
        if cache.len() >= CACHED {
            cache.remove(0);
        }
        let key = key.to_owned();
        cache.push(Cached {
            key,
            bytes,
            profile,
        });
    });
}

/// Store `profile` under `key`. A refusal is told by the caller, at most
/// once an hour ([`Unstored`]), not logged here on every batch.
fn store(key: &str, profile: Profile) -> Result<(), KvError> {
    let bytes = profile.encode();
    kv::set(key, &bytes)?;
    keep(key, bytes, profile);
    Ok(())
}

/// Why the store refused a profile, for a person.
fn refusal(e: KvError) -> &'static str {
    match e {
        KvError::QuotaExceeded => "the plugin's store is full",
        KvError::TooLarge => "it is too large for the store",
        KvError::Unavailable => "the store is unavailable",
    }
}

/// How often an instance tells that the store refuses profiles, in
/// monotonic nanoseconds: an hour.
const TOLD_EVERY: u64 = 3_600 * 1_000_000_000;

/// Distinct profiles an instance counts as refused between two tellings:
/// a site of thousands of devices, in a few tens of KiB (a hash each).
/// Beyond it the count says "at least".
const REFUSED_COUNTED: usize = 4096;

/// The profiles an instance could not store since it last told of it.
///
/// The quota is the plugin's, shared by every profile: once a site's
/// profiles fill it, every device's write fails, on every batch. The
/// operator needs to know once, not per device and batch: an instance
/// tells at most once an hour, with how many profiles it could not store
/// since it last told. It is one state for the whole instance, not one
/// per profile: no number of devices makes it forget that it told.
#[derive(Debug, Default)]
struct Unstored {
    /// When it last told, in monotonic nanoseconds; `None` before it
    /// first did.
    told: Option<u64>,
    /// The profiles refused since, by a hash of their key, at most
    /// [`REFUSED_COUNTED`].
    refused: BTreeSet<u64>,
}

impl Unstored {
    /// Count the refusal of the profiles `keys` at monotonic `now`. When it
    /// is time to tell, returns how many profiles were refused since it
    /// last told, and counts afresh.
    fn refuse<'a>(&mut self, keys: impl Iterator<Item = &'a str>, now: u64) -> Option<usize> {
        for key in keys {
            if self.refused.len() < REFUSED_COUNTED {
                let mut hasher = DefaultHasher::new();
                key.hash(&mut hasher);
                self.refused.insert(hasher.finish());
            }
        }
        let due = self
            .told
            .is_none_or(|told| now.saturating_sub(told) >= TOLD_EVERY);
        due.then(|| {
            self.told = Some(now);
            let refused = self.refused.len();
            self.refused.clear();
            refused
        })
    }
}

thread_local! {
    static UNSTORED: RefCell<Unstored> = RefCell::new(Unstored::default());
}

/// `n` profiles, for a person: "at least" once the count is bounded.
fn profiles(n: usize) -> String {
    match n {
        1 => "1 profile".to_owned(),
        REFUSED_COUNTED.. => format!("at least {n} profiles"),
        _ => format!("{n} profiles"),
    }
}

/// One reason for the departures of an event, the most serious first
/// (`novelties` sorted so): it names the first [`profile::NAMED`] and
/// counts the rest, within [`MAX_REASON_LEN`].
fn reason(novelties: &[Novelty]) -> String {
    let named = profile::FirstNamed::of(novelties.iter().map(|n| n.reason.as_str()));
    // Each departure whole; the reason as a whole is bounded.
    profile::bounded(named.list("; ", "; ", usize::MAX))
}

impl Detector for Baseline {
    fn detect(session: &Session, events: &Batch) -> Vec<Finding> {
        let learning = Learning::configured();
        let device = &session.device;
        let (device_key, class_key) = (device_key(&device.id), class_key(&device.class));
        let (mut mine, _) = load(&device_key);
        // The class learns from, or judges, a device still learning only.
        let (mut class, class_bytes) = if learning.done(&mine) {
            (Profile::default(), None)
        } else {
            load(&class_key)
        };
        let now = host::wall_clock();
        let who = format!("{} ({})", device.id, device.class);
        let mut findings = Vec::new();
        // The signature of the event before, learnt; or checked, and
        // found to depart in nothing.
        let names = Names::of(events);
        // A class that judges does not change: it is not stored again.
        let mut class_learnt = false;
        let mut previous = None;
        for event in events.iter() {
            let again = previous.is_some_and(|s| profile::has_signature(&event, &names, s));
            let signature = if again {
                previous
            } else {
                profile::signature(&event, &names)
            };
            let novelties = if !learning.done(&mine) {
                // Whoever learns this event learnt the one before: a
                // profile learns until it is done, and is done for good.
                let payload_size = names.payload_size(&event);
                let learn = |profile: &mut Profile| {
                    if again {
                        profile.learn_again(payload_size, now);
                    } else {
                        profile.learn(&session.route, &event, &names, now);
                    }
                };
                learn(&mut mine);
                if !learning.done(&class) {
                    learn(&mut class);
                    class_learnt = true;
                    Vec::new()
                } else if again {
                    // The class judges only what the signature shows.
                    Vec::new()
                } else {
                    class.check(&who, &session.route, &event, &names, now, false)
                }
            } else {
                mine.count(now, false);
                let found = if again {
                    mine.check_again(&who, &event, &names, now)
                } else {
                    mine.check(&who, &session.route, &event, &names, now, true)
                };
                if found
                    .iter()
                    .any(|n| n.reason.contains("events this minute"))
                {
                    mine.rate.reported = mine.rate.minute;
                }
                found
            };
            previous = if novelties.is_empty() {
                signature
            } else {
                None
            };
            // One finding per event: the most serious departure, with the
            // others named.
            let mut novelties = novelties;
            novelties.sort_by(|a, b| b.score.total_cmp(&a.score));
            if let Some(first) = novelties.first() {
                findings.push(Finding::new(
                    event.index(),
                    first.severity,
                    first.score,
                    reason(&novelties),
                ));
            }
        }
        let mut refused = Vec::new();
        if let Err(e) = store(&device_key, mine) {
            refused.push((who.clone(), device_key, e));
        }
        if class_learnt {
            if let Err(e) = store(&class_key, class) {
                refused.push((format!("class {}", device.class), class_key, e));
            }
        } else if let Some(bytes) = class_bytes {
            keep(&class_key, bytes, class);
        }
        // Told on the batch's last event, at most once an hour: the
        // operator learns that profiles learn nothing, and why.
        if let (Some(last), Some(&(.., e))) = (events.len().checked_sub(1), refused.last()) {
            let keys = refused.iter().map(|(_, key, _)| key.as_str());
            let now = host::monotonic_now();
            if let Some(n) = UNSTORED.with_borrow_mut(|unstored| unstored.refuse(keys, now)) {
                let whose: Vec<&str> = refused.iter().map(|(whose, ..)| whose.as_str()).collect();
                let reason = format!(
                    "the baseline cannot store profiles ({}): {} refused since this instance last said so, {} among them; what they learn is lost",
                    refusal(e),
                    profiles(n),
                    whose.join(" and "),
                );
                let reason = profile::bounded(reason);
                host::log(Level::Warn, &reason);
                findings.push(Finding::new(last, Severity::Medium, 0.5, reason));
            }
        }
        findings
    }
}

palisade_plugin_sdk::export!(detector: Baseline);

#[cfg(test)]
mod tests;
