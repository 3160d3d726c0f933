//! The device registry: every device the site knows, in the state store.
//!
//! One record per device in the `devices` tree, keyed by device id, as
//! JSON: class, zone, state, when it was enrolled, first and last seen,
//! when it was last revoked, and the certificates issued to it that have
//! not expired yet. State changes
//! are flushed to disk before they are acknowledged, so a quarantine
//! survives a crash or a power cut. A quarantine the store could not
//! write holds anyway, in memory, for as long as the appliance runs.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tracing::error;

use super::claims::Claims;
use super::verifier::Refusal;
use super::{BadName, DeviceCertRequest, check_name, format_time, now_unix};
use crate::store::{Store, StoreError};

/// Unexpired certificates kept per device. A device that renews more often
/// than this in one certificate lifetime loses its oldest certificates
/// (they stop being accepted): the registry stays bounded whatever a device
/// does.
pub const MAX_CERTIFICATES: usize = 16;

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The state database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The database failed (an operation outside [`Store`]'s own).
    #[error("state database: {0}")]
    Sled(#[from] sled::Error),
    /// A record could not be read.
    #[error("device record {device:?} is unreadable: {reason}")]
    Corrupt {
        /// The device.
        device: String,
        /// What is wrong.
        reason: String,
    },
    /// No such device.
    #[error("no device {0} in the registry")]
    Unknown(String),
    /// The device is revoked, which only a new certificate undoes.
    #[error("device {0} is revoked: issue it a new certificate to enroll it again")]
    Revoked(String),
    /// A device already enrolled under the other authority.
    #[error("device {0} already holds certificates from the site CA")]
    SiteDevice(String),
    /// A name is not usable.
    #[error(transparent)]
    BadName(#[from] BadName),
    /// A renewal refused: the device or the certificate it presented is no
    /// longer one that may renew.
    #[error("device {device} may not renew: {reason}")]
    NotRenewable {
        /// The device.
        device: String,
        /// Why not.
        reason: String,
    },
}

/// Where a device is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceState {
    /// May connect.
    Active,
    /// Refused until released; its sessions were closed.
    Quarantined,
    /// Refused for good; every certificate issued to it is revoked.
    Revoked,
}

impl std::fmt::Display for DeviceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DeviceState::Active => "active",
            DeviceState::Quarantined => "quarantined",
            DeviceState::Revoked => "revoked",
        })
    }
}

/// Who issues a device's certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Authority {
    /// The site CA: only serials it issued, and recorded here, are accepted.
    Site,
    /// A trusted external CA: any unexpired certificate it issued that names
    /// the device is accepted, if issued after the device's latest
    /// revocation.
    External,
}

/// A certificate issued to a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertRecord {
    /// Serial number, lowercase hex.
    pub serial: String,
    /// Start of validity, Unix seconds.
    pub not_before: i64,
    /// End of validity, Unix seconds.
    pub not_after: i64,
    /// Whether it was revoked.
    pub revoked: bool,
}

/// A device the site knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// The device id.
    pub id: String,
    /// Its class.
    pub class: String,
    /// Its zone.
    pub zone: String,
    /// Active, quarantined or revoked.
    pub state: DeviceState,
    /// Who issues its certificates.
    pub authority: Authority,
    /// When it was enrolled, Unix seconds.
    pub enrolled: i64,
    /// Its first admitted connection, Unix seconds.
    pub first_seen: Option<i64>,
    /// Its latest admitted connection, Unix seconds.
    pub last_seen: Option<i64>,
    /// Its certificates that have not expired (site devices).
    pub certificates: Vec<CertRecord>,
    /// Its latest revocation, Unix seconds; `None` if never revoked. An
    /// external CA's certificates are not recorded, so this is what keeps
    /// the ones it held when revoked (a stolen key's) refused once it is
    /// enrolled again: see [`Registry::admit`]. Absent from records written
    /// before it existed, which read as never revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<i64>,
}

impl Device {
    /// The device as plugins and the policy see it: who it is, not its
    /// records.
    pub fn plugin_view(&self) -> crate::plugins::Device {
        crate::plugins::Device {
            id: self.id.clone(),
            class: self.class.clone(),
            zone: self.zone.clone(),
        }
    }
}

/// The device registry. Clones share it.
#[derive(Debug, Clone)]
pub struct Registry {
    store: Store,
    devices: sled::Tree,
    /// Makes each read-modify-write of a record one step.
    write: Arc<Mutex<()>>,
    /// Devices quarantined whose record may not say so: the write failed,
    /// and sled, after a failed write (a full disk, say), fails every
    /// later one until it is reopened. Read as quarantined (see
    /// [`Registry::device`]) until a write of their record succeeds or an
    /// operator releases them.
    unrecorded_quarantines: Arc<Mutex<HashSet<String>>>,
    /// Makes every write fail, as a broken store does.
    #[cfg(test)]
    fail_writes: Arc<std::sync::atomic::AtomicBool>,
}

impl Registry {
    /// The registry in `store`.
    pub fn open(store: &Store) -> Result<Registry, RegistryError> {
        Ok(Registry {
            store: store.clone(),
            devices: store.tree("devices")?,
            write: Arc::default(),
            unrecorded_quarantines: Arc::default(),
            #[cfg(test)]
            fail_writes: Arc::default(),
        })
    }

    /// The device `id`: quarantined if a quarantine of it could not be
    /// written, whatever its record says.
    pub fn device(&self, id: &str) -> Result<Option<Device>, RegistryError> {
        match self.devices.get(id)? {
            None => Ok(None),
            Some(bytes) => decode(id, &bytes).map(|d| Some(self.with_quarantine(d))),
        }
    }

    /// Every device, by id.
    pub fn devices(&self) -> Result<Vec<Device>, RegistryError> {
        self.devices
            .iter()
            .map(|entry| {
                let (key, value) = entry?;
                decode(&String::from_utf8_lossy(&key), &value).map(|d| self.with_quarantine(d))
            })
            .collect()
    }

    /// `device`, quarantined if its quarantine could not be written.
    fn with_quarantine(&self, mut device: Device) -> Device {
        if device.state == DeviceState::Active && self.unrecorded().contains(&device.id) {
            device.state = DeviceState::Quarantined;
        }
        device
    }

    fn unrecorded(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        (self.unrecorded_quarantines.lock()).unwrap_or_else(|p| p.into_inner())
    }

    /// Record that the site CA issued `claims`' certificate for `request`.
    /// A new device is enrolled active; a revoked one becomes active again
    /// with this certificate only (its old ones stay revoked); a quarantined
    /// one stays quarantined.
    pub fn record_issued(
        &self,
        request: &DeviceCertRequest,
        claims: &Claims,
    ) -> Result<Device, RegistryError> {
        self.change(&request.device, |existing| {
            let now = now_unix();
            let mut device = match existing {
                Some(d) if d.authority == Authority::External => {
                    return Err(RegistryError::SiteDevice(d.id));
                }
                Some(d) => d,
                None => Device {
                    id: request.device.clone(),
                    class: request.class.clone(),
                    zone: request.zone.clone(),
                    state: DeviceState::Active,
                    authority: Authority::Site,
                    enrolled: now,
                    first_seen: None,
                    last_seen: None,
                    certificates: Vec::new(),
                    revoked_at: None,
                },
            };
            device.class.clone_from(&request.class);
            device.zone.clone_from(&request.zone);
            if device.state == DeviceState::Revoked {
                device.state = DeviceState::Active;
            }
            add_certificate(&mut device, claims, now);
            Ok(device)
        })
    }

    /// Record that the site CA issued `issued`'s certificate for `request`
    /// to renew the certificate of `presented`: only for a site device that
    /// is active, still of `request`'s class and zone, and whose presented
    /// certificate is recorded and unrevoked, all checked here under the
    /// write lock. The handshake's check is not enough: a revocation or a
    /// quarantine that landed since must hold, where
    /// [`Registry::record_issued`] would make a revoked device active again.
    pub fn record_renewed(
        &self,
        presented: &Claims,
        request: &DeviceCertRequest,
        issued: &Claims,
    ) -> Result<Device, RegistryError> {
        self.change(&request.device, |existing| {
            let refuse = |reason: String| RegistryError::NotRenewable {
                device: request.device.clone(),
                reason,
            };
            let mut device = existing.ok_or_else(|| refuse("not enrolled".into()))?;
            match device.state {
                DeviceState::Active => {}
                state => return Err(refuse(state.to_string())),
            }
            if device.authority != Authority::Site || presented.device != device.id {
                return Err(refuse(
                    "not a site device renewing its own certificate".into(),
                ));
            }
            if (&device.class, &device.zone) != (&request.class, &request.zone) {
                return Err(refuse("its class or zone changed meanwhile".into()));
            }
            match device
                .certificates
                .iter()
                .find(|c| c.serial == presented.serial)
            {
                Some(c) if !c.revoked => {}
                Some(_) => {
                    return Err(refuse(format!("certificate {} revoked", presented.serial)));
                }
                None => {
                    return Err(refuse(format!(
                        "certificate {} is not one the registry holds for it",
                        presented.serial
                    )));
                }
            }
            add_certificate(&mut device, issued, now_unix());
            Ok(device)
        })
    }

    /// Enroll device `id`, whose certificates an external CA issues. A
    /// device enrolled again after a revocation keeps the time of it: only
    /// certificates its CA issued after it are accepted (see
    /// [`Registry::admit`]).
    pub fn add_external(&self, id: &str, class: &str, zone: &str) -> Result<Device, RegistryError> {
        check_name("device id", id)?;
        check_name("class", class)?;
        check_name("zone", zone)?;
        self.change(id, |existing| match existing {
            Some(d) if d.authority == Authority::Site => Err(RegistryError::SiteDevice(d.id)),
            Some(mut d) => {
                d.class = class.to_owned();
                d.zone = zone.to_owned();
                // Enrolling again re-admits a revoked device, as issuing a
                // site device a new certificate does, on certificates issued
                // after the revocation only (`revoked_at` is kept); a
                // quarantine stays until an operator releases it.
                if d.state == DeviceState::Revoked {
                    d.state = DeviceState::Active;
                    // Revoked before revocations had a time: enrolling it
                    // again is the earliest time known to follow it.
                    d.revoked_at.get_or_insert_with(now_unix);
                }
                Ok(d)
            }
            None => Ok(Device {
                id: id.to_owned(),
                class: class.to_owned(),
                zone: zone.to_owned(),
                state: DeviceState::Active,
                authority: Authority::External,
                enrolled: now_unix(),
                first_seen: None,
                last_seen: None,
                certificates: Vec::new(),
                revoked_at: None,
            }),
        })
    }

    /// Quarantine device `id`.
    pub fn quarantine(&self, id: &str) -> Result<Device, RegistryError> {
        let device = self.quarantine_unflushed(id)?;
        self.flush()?;
        Ok(device)
    }

    /// Quarantine device `id` at once, for the inline path: every later
    /// handshake sees it, but it reaches the disk only with the next
    /// [`Registry::flush_soon`] (which the caller asks for right after) or
    /// sled's own flush within half a second.
    ///
    /// If the store cannot write it, the quarantine holds all the same
    /// until the appliance stops (or an operator releases the device): the
    /// registry keeps it in memory, and says so in the log.
    pub fn quarantine_unflushed(&self, id: &str) -> Result<Device, RegistryError> {
        let _guard = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let result = self.device(id).and_then(|d| {
            let mut d = d.ok_or_else(|| RegistryError::Unknown(id.to_owned()))?;
            if d.state == DeviceState::Revoked {
                return Err(RegistryError::Revoked(d.id));
            }
            // Held before the write, so that no handshake between a failed
            // write and this finds the device active.
            self.unrecorded().insert(d.id.clone());
            d.state = DeviceState::Quarantined;
            self.store_record(&d)?;
            Ok(d)
        });
        match result {
            Err(RegistryError::Unknown(_) | RegistryError::Revoked(_)) | Ok(_) => result,
            Err(e) => {
                self.unrecorded().insert(id.to_owned());
                error!(device = %id, error = %e, "quarantine not written to the state store: held in memory until released or the appliance stops");
                Err(e)
            }
        }
    }

    /// Write every change to disk.
    pub fn flush(&self) -> Result<(), RegistryError> {
        self.store.flush()?;
        Ok(())
    }

    /// Have every change written to disk now, without waiting for it (see
    /// [`Store::flush_soon`]).
    pub fn flush_soon(&self) {
        self.store.flush_soon();
    }

    /// Release device `id` from quarantine.
    pub fn release(&self, id: &str) -> Result<Device, RegistryError> {
        self.change(id, |existing| {
            let mut d = existing.ok_or_else(|| RegistryError::Unknown(id.to_owned()))?;
            if d.state == DeviceState::Revoked {
                return Err(RegistryError::Revoked(d.id));
            }
            d.state = DeviceState::Active;
            Ok(d)
        })
    }

    /// Revoke device `id` and every certificate issued to it: the site
    /// CA's by serial, an external CA's by the time of the revocation.
    pub fn revoke(&self, id: &str) -> Result<Device, RegistryError> {
        self.change(id, |existing| {
            let mut d = existing.ok_or_else(|| RegistryError::Unknown(id.to_owned()))?;
            d.state = DeviceState::Revoked;
            d.revoked_at = Some(now_unix());
            for c in &mut d.certificates {
                c.revoked = true;
            }
            Ok(d)
        })
    }

    /// Record an admitted connection of device `id`, best effort: not
    /// flushed at once (a crash loses at most sled's flush interval of
    /// these times), and skipped while another change is being written, so
    /// that a handshake never waits for an operator's change to reach the
    /// disk. Says whether it was recorded.
    pub fn seen(&self, id: &str) -> Result<bool, RegistryError> {
        let Ok(_guard) = self.write.try_lock() else {
            return Ok(false);
        };
        let mut d = self
            .device(id)?
            .ok_or_else(|| RegistryError::Unknown(id.to_owned()))?;
        let now = now_unix();
        d.first_seen.get_or_insert(now);
        d.last_seen = Some(now);
        self.store_record(&d)?;
        Ok(true)
    }

    /// Decide whether the holder of a certificate with `claims`, which
    /// chains to a trusted CA, is an enrolled device that may connect.
    /// `site_issued` says the site CA itself signed it, as its signature
    /// shows (the issuer name it carries shows nothing).
    pub fn admit(&self, claims: &Claims, site_issued: bool) -> Result<Device, Refusal> {
        let refuse = |reason: String| Refusal::new(Some(&claims.device), reason);
        let device = self
            .device(&claims.device)
            .map_err(|e| refuse(format!("registry unavailable: {e}")))?
            .ok_or_else(|| refuse("not enrolled".into()))?;
        match device.state {
            DeviceState::Active => {}
            DeviceState::Quarantined => return Err(refuse("quarantined".into())),
            DeviceState::Revoked => return Err(refuse("revoked".into())),
        }
        match (device.authority, site_issued) {
            (Authority::Site, true) => {
                let cert = device
                    .certificates
                    .iter()
                    .find(|c| c.serial == claims.serial)
                    .ok_or_else(|| {
                        refuse(format!(
                            "certificate {} is not one the registry holds for it",
                            claims.serial
                        ))
                    })?;
                if cert.revoked {
                    return Err(refuse(format!("certificate {} revoked", claims.serial)));
                }
            }
            (Authority::External, false) => {
                if let Some(revoked_at) = device.revoked_at
                    && issued_before(claims.not_before, revoked_at)
                {
                    return Err(refuse(format!(
                        "certificate {} was issued before the device's revocation at {} (it is valid from {}): have its CA issue a new one, valid from after the revocation",
                        claims.serial,
                        format_time(revoked_at),
                        format_time(claims.not_before)
                    )));
                }
            }
            (Authority::Site, false) => {
                return Err(refuse(
                    "enrolled with the site CA but presented a certificate from another CA".into(),
                ));
            }
            (Authority::External, true) => {
                return Err(refuse(
                    "enrolled with an external CA but presented a site certificate".into(),
                ));
            }
        }
        for (kind, claimed, recorded) in [
            ("class", &claims.class, &device.class),
            ("zone", &claims.zone, &device.zone),
        ] {
            if let Some(claimed) = claimed
                && claimed != recorded
            {
                return Err(refuse(format!(
                    "certificate says {kind} {claimed}, the registry says {recorded}"
                )));
            }
        }
        Ok(device)
    }

    /// Apply `f` to the record of `id` (or to its absence) and store what
    /// it returns, flushed to disk before this returns: an acknowledged
    /// change survives a crash. The flush waits for the disk outside the
    /// lock, so that a quarantine on the inline path never waits for it.
    fn change(
        &self,
        id: &str,
        f: impl FnOnce(Option<Device>) -> Result<Device, RegistryError>,
    ) -> Result<Device, RegistryError> {
        let device = {
            let _guard = self.write.lock().unwrap_or_else(|p| p.into_inner());
            let device = f(self.device(id)?)?;
            self.store_record(&device)?;
            device
        };
        self.store.flush()?;
        Ok(device)
    }

    /// Write `device`'s record. Every writer read the record through
    /// [`Registry::device`], which shows a quarantine the store could not
    /// write: once a record is written, it no longer needs holding.
    fn store_record(&self, device: &Device) -> Result<(), RegistryError> {
        let bytes = serde_json::to_vec(device).map_err(|e| RegistryError::Corrupt {
            device: device.id.clone(),
            reason: e.to_string(),
        })?;
        #[cfg(test)]
        if self.fail_writes.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(RegistryError::Sled(sled::Error::Io(std::io::Error::other(
                "no space left on device",
            ))));
        }
        self.devices.insert(device.id.as_str(), bytes)?;
        self.unrecorded().remove(&device.id);
        Ok(())
    }
}

/// Whether an external CA's certificate valid from `not_before` may have
/// been one its device held when it was revoked at `revoked_at`: then it is
/// refused. The registry records no serials for an external CA, so its
/// notBefore is all that tells a replacement certificate from a stolen one.
///
/// No allowance for clock skew, on purpose. An allowance would admit
/// certificates issued up to that long before the revocation, among them
/// one from a key stolen just before it. Without one, a replacement the CA
/// backdated to before the revocation (Active Directory Certificate
/// Services starts certificates 10 minutes early, by default) is refused:
/// the refusal says so, and a certificate issued again later is admitted.
/// The revocation's time is the appliance's clock, which must keep time
/// with the CA's (NTP) for the rule to hold to the second.
fn issued_before(not_before: i64, revoked_at: i64) -> bool {
    not_before <= revoked_at
}

/// Add the certificate of `claims` to `device`'s, dropping those expired
/// at `now` and, past [`MAX_CERTIFICATES`], the oldest.
fn add_certificate(device: &mut Device, claims: &Claims, now: i64) {
    device.certificates.retain(|c| c.not_after >= now);
    device.certificates.push(CertRecord {
        serial: claims.serial.clone(),
        not_before: claims.not_before,
        not_after: claims.not_after,
        revoked: false,
    });
    let excess = device.certificates.len().saturating_sub(MAX_CERTIFICATES);
    device.certificates.drain(..excess);
}

fn decode(id: &str, bytes: &[u8]) -> Result<Device, RegistryError> {
    serde_json::from_slice(bytes).map_err(|e| RegistryError::Corrupt {
        device: id.to_owned(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Duration;

    use super::*;

    fn request(id: &str) -> DeviceCertRequest {
        DeviceCertRequest {
            device: id.into(),
            class: "sensor".into(),
            zone: "hall".into(),
            role: None,
            lifetime: Duration::from_secs(3600),
        }
    }

    fn claims(id: &str, serial: &str) -> Claims {
        let now = now_unix();
        Claims {
            device: id.into(),
            class: Some("sensor".into()),
            zone: Some("hall".into()),
            role: None,
            serial: serial.into(),
            not_before: now - 10,
            not_after: now + 3600,
            der: Vec::new().into(),
        }
    }

    #[test]
    fn lifecycle_decides_admission() {
        let registry = Registry::open(&Store::temporary().unwrap()).unwrap();
        let c = claims("s1", "aa");
        assert_eq!(registry.admit(&c, true).unwrap_err().reason, "not enrolled");
        registry.record_issued(&request("s1"), &c).unwrap();
        assert_eq!(registry.admit(&c, true).unwrap().state, DeviceState::Active);
        assert!(registry.admit(&claims("s1", "bb"), true).is_err());
        assert!(registry.admit(&c, false).is_err());

        registry.quarantine("s1").unwrap();
        assert_eq!(registry.admit(&c, true).unwrap_err().reason, "quarantined");
        registry.release("s1").unwrap();
        assert!(registry.admit(&c, true).is_ok());

        registry.revoke("s1").unwrap();
        assert_eq!(registry.admit(&c, true).unwrap_err().reason, "revoked");
        assert!(matches!(
            registry.release("s1"),
            Err(RegistryError::Revoked(_))
        ));
        // A new certificate enrolls it again; the old one stays revoked.
        let fresh = claims("s1", "cc");
        registry.record_issued(&request("s1"), &fresh).unwrap();
        assert!(registry.admit(&fresh, true).is_ok());
        assert!(
            registry
                .admit(&c, true)
                .unwrap_err()
                .reason
                .contains("revoked")
        );
    }

    /// A renewal admitted at the handshake reaches the registry after a
    /// revocation or a quarantine: it is refused, and the device stays as
    /// the operator left it (record_issued made a revoked device active).
    #[test]
    fn a_renewal_never_undoes_a_revocation_or_a_quarantine() {
        let registry = Registry::open(&Store::temporary().unwrap()).unwrap();
        let c1 = claims("s1", "c1");
        registry.record_issued(&request("s1"), &c1).unwrap();
        let renewed = registry
            .record_renewed(&c1, &request("s1"), &claims("s1", "c2"))
            .unwrap();
        assert_eq!(renewed.certificates.len(), 2);

        registry.quarantine("s1").unwrap();
        let refused = registry.record_renewed(&c1, &request("s1"), &claims("s1", "c3"));
        assert!(matches!(refused, Err(RegistryError::NotRenewable { .. })));
        let d = registry.device("s1").unwrap().unwrap();
        assert_eq!(
            (d.state, d.certificates.len()),
            (DeviceState::Quarantined, 2)
        );

        registry.release("s1").unwrap();
        registry.revoke("s1").unwrap();
        let refused = registry.record_renewed(&c1, &request("s1"), &claims("s1", "c4"));
        assert!(matches!(refused, Err(RegistryError::NotRenewable { .. })));
        let d = registry.device("s1").unwrap().unwrap();
        assert_eq!(d.state, DeviceState::Revoked);
        assert!(d.certificates.iter().all(|c| c.revoked && c.serial != "c4"));
        assert_eq!(
            registry
                .admit(&claims("s1", "c4"), true)
                .unwrap_err()
                .reason,
            "revoked"
        );
    }

    /// The store fails every write (as sled does after a full disk): a
    /// quarantine it cannot write holds all the same, and so does a release
    /// it cannot write; a release once writes work again lifts it.
    #[test]
    fn a_quarantine_the_store_could_not_write_holds() {
        use std::sync::atomic::Ordering;
        let registry = Registry::open(&Store::temporary().unwrap()).unwrap();
        let c = claims("s1", "aa");
        registry.record_issued(&request("s1"), &c).unwrap();

        registry.fail_writes.store(true, Ordering::SeqCst);
        assert!(matches!(
            registry.quarantine_unflushed("s1"),
            Err(RegistryError::Sled(_))
        ));
        assert_eq!(registry.admit(&c, true).unwrap_err().reason, "quarantined");
        let state = |registry: &Registry| registry.device("s1").unwrap().unwrap().state;
        assert_eq!(state(&registry), DeviceState::Quarantined);
        assert!(registry.release("s1").is_err());
        assert_eq!(registry.admit(&c, true).unwrap_err().reason, "quarantined");
        // Only known devices are held.
        assert!(matches!(
            registry.quarantine_unflushed("s2"),
            Err(RegistryError::Unknown(_))
        ));
        assert_eq!(registry.unrecorded().len(), 1);

        registry.fail_writes.store(false, Ordering::SeqCst);
        registry.release("s1").unwrap();
        assert!(registry.admit(&c, true).is_ok());
        assert_eq!(state(&registry), DeviceState::Active);
    }

    /// Only a certificate the registry holds unrevoked for a site device
    /// renews.
    #[test]
    fn a_renewal_needs_a_current_site_certificate() {
        let registry = Registry::open(&Store::temporary().unwrap()).unwrap();
        registry
            .record_issued(&request("s1"), &claims("s1", "c1"))
            .unwrap();
        for presented in [claims("s1", "c0"), claims("s2", "c1")] {
            assert!(
                registry
                    .record_renewed(&presented, &request("s1"), &claims("s1", "c2"))
                    .is_err()
            );
        }
        registry.add_external("x1", "sensor", "hall").unwrap();
        assert!(
            registry
                .record_renewed(&claims("x1", "aa"), &request("x1"), &claims("x1", "c2"))
                .is_err()
        );
        let d = registry.device("s1").unwrap().unwrap();
        assert_eq!(d.certificates.len(), 1);
    }

    #[test]
    fn enrolling_an_external_device_again_keeps_its_quarantine() {
        let registry = Registry::open(&Store::temporary().unwrap()).unwrap();
        registry.add_external("x1", "sensor", "hall").unwrap();
        registry.quarantine("x1").unwrap();
        let moved = registry.add_external("x1", "sensor", "yard").unwrap();
        assert_eq!(
            (moved.zone.as_str(), moved.state),
            ("yard", DeviceState::Quarantined)
        );
        registry.release("x1").unwrap();
        registry.revoke("x1").unwrap();
        let again = registry.add_external("x1", "sensor", "yard").unwrap();
        assert_eq!(again.state, DeviceState::Active);
    }

    /// An external device's key is stolen: it is revoked, then enrolled
    /// again for its replacement. The certificate it held stays refused,
    /// with a reason the operator can act on; one its CA issued after the
    /// revocation is admitted.
    #[test]
    fn an_external_device_enrolled_again_is_refused_its_old_certificate() {
        let registry = Registry::open(&Store::temporary().unwrap()).unwrap();
        registry.add_external("badge-1", "sensor", "hall").unwrap();
        let stolen = claims("badge-1", "aa");
        assert!(registry.admit(&stolen, false).is_ok());

        let revoked_at = registry.revoke("badge-1").unwrap().revoked_at.unwrap();
        assert_eq!(
            registry.admit(&stolen, false).unwrap_err().reason,
            "revoked"
        );
        let again = registry.add_external("badge-1", "sensor", "hall").unwrap();
        assert_eq!(
            (again.state, again.revoked_at),
            (DeviceState::Active, Some(revoked_at))
        );
        assert_eq!(
            registry.admit(&stolen, false).unwrap_err().reason,
            format!(
                "certificate aa was issued before the device's revocation at {} (it is valid from {}): have its CA issue a new one, valid from after the revocation",
                format_time(revoked_at),
                format_time(stolen.not_before)
            )
        );
        // Valid from the very second of the revocation: it may be the
        // stolen key's.
        let mut same_second = claims("badge-1", "bb");
        same_second.not_before = revoked_at;
        assert!(registry.admit(&same_second, false).is_err());

        let mut replacement = claims("badge-1", "cc");
        replacement.not_before = revoked_at + 1;
        assert_eq!(
            registry.admit(&replacement, false).unwrap().state,
            DeviceState::Active
        );
    }

    /// A record written before revocations had a time reads as never
    /// revoked; one revoked then takes its re-enrolment's time, so the
    /// certificate it held stays refused all the same.
    #[test]
    fn a_revocation_recorded_without_its_time_still_holds() {
        let registry = Registry::open(&Store::temporary().unwrap()).unwrap();
        let record = |state: &str| {
            format!(
                r#"{{"id":"badge-1","class":"sensor","zone":"hall","state":"{state}","authority":"external","enrolled":1,"first_seen":null,"last_seen":null,"certificates":[]}}"#
            )
        };
        registry
            .devices
            .insert("badge-1", record("active").as_bytes())
            .unwrap();
        let stolen = claims("badge-1", "aa");
        assert!(registry.admit(&stolen, false).is_ok());

        registry
            .devices
            .insert("badge-1", record("revoked").as_bytes())
            .unwrap();
        assert_eq!(
            registry.device("badge-1").unwrap().unwrap().revoked_at,
            None
        );
        let again = registry.add_external("badge-1", "sensor", "hall").unwrap();
        assert!(again.revoked_at.is_some_and(|t| t >= stolen.not_before));
        assert!(
            registry
                .admit(&stolen, false)
                .unwrap_err()
                .reason
                .contains("before the device's revocation")
        );
    }

    #[test]
    fn class_in_certificate_must_match() {
        let registry = Registry::open(&Store::temporary().unwrap()).unwrap();
        let mut c = claims("s1", "aa");
        registry.record_issued(&request("s1"), &c).unwrap();
        c.class = Some("plc".into());
        assert!(
            registry
                .admit(&c, true)
                .unwrap_err()
                .reason
                .contains("class")
        );
    }

    #[test]
    fn certificates_per_device_are_bounded() {
        let registry = Registry::open(&Store::temporary().unwrap()).unwrap();
        for i in 0..(MAX_CERTIFICATES + 5) {
            registry
                .record_issued(&request("s1"), &claims("s1", &format!("{i:02x}")))
                .unwrap();
        }
        let d = registry.device("s1").unwrap().unwrap();
        assert_eq!(d.certificates.len(), MAX_CERTIFICATES);
        assert!(registry.admit(&claims("s1", "00"), true).is_err());
    }
}
