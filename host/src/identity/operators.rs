//! Operators: the people who may use the appliance's HTTPS admin API, and
//! what each may do there.
//!
//! An operator holds a certificate from the site CA that names them and
//! their role, as subject alternative name URIs:
//!
//! - `urn:palisade:operator:<name>`,
//! - `urn:palisade:role:<role>`, one of `viewer`, `operator`, `admin`.
//!
//! An operator certificate is never a device certificate and the other way
//! round: each kind is refused where the other is expected, so a device
//! that is compromised cannot administer the appliance. Like a site
//! device's, an operator's certificate is accepted only while the `operators`
//! tree of the state store holds its serial unrevoked, so revoking an
//! operator takes effect at their next request.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::claims::OperatorClaims;
use super::registry::{CertRecord, MAX_CERTIFICATES};
use super::{BadName, check_dates, check_name, now_unix};
use crate::store::{Store, StoreError};

/// What an operator may do on the admin API. Each role may do what the
/// ones before it may.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Look: list plugins, devices and certificates.
    Viewer,
    /// Act on what runs: install, activate, roll back and remove plugins,
    /// quarantine and release devices.
    Operator,
    /// Change who belongs: issue and revoke device certificates, enroll
    /// devices.
    Admin,
}

impl Role {
    /// The role's name, as certificates and the CLI write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Role, String> {
        [Role::Viewer, Role::Operator, Role::Admin]
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("no role {s:?}: viewer, operator or admin"))
    }
}

/// Why an operator change failed.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// The state database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The database failed (an operation outside [`Store`]'s own).
    #[error("state database: {0}")]
    Sled(#[from] sled::Error),
    /// A record could not be read or written.
    #[error("operator record {name:?} is unreadable: {reason}")]
    Corrupt {
        /// The operator.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// No such operator.
    #[error("no operator {0}")]
    Unknown(String),
    /// A name is not usable.
    #[error(transparent)]
    BadName(#[from] BadName),
}

/// An operator the appliance knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operator {
    /// The operator's name.
    pub name: String,
    /// The role of their newest certificate.
    pub role: Role,
    /// Whether they were revoked (until a new certificate is issued).
    pub revoked: bool,
    /// Their certificates that have not expired, each with its role.
    pub certificates: Vec<OperatorCert>,
}

/// A certificate issued to an operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorCert {
    /// The certificate.
    #[serde(flatten)]
    pub cert: CertRecord,
    /// The role it carries.
    pub role: Role,
}

/// The operators, in the state store. Clones share it.
#[derive(Debug, Clone)]
pub struct Operators {
    store: Store,
    tree: sled::Tree,
    write: Arc<Mutex<()>>,
}

impl Operators {
    /// The operators in `store`.
    pub fn open(store: &Store) -> Result<Operators, OperatorError> {
        Ok(Operators {
            store: store.clone(),
            tree: store.tree("operators")?,
            write: Arc::default(),
        })
    }

    /// Every operator, by name.
    pub fn list(&self) -> Result<Vec<Operator>, OperatorError> {
        self.tree
            .iter()
            .map(|entry| {
                let (key, value) = entry?;
                decode(&String::from_utf8_lossy(&key), &value)
            })
            .collect()
    }

    /// The operator `name`.
    pub fn get(&self, name: &str) -> Result<Option<Operator>, OperatorError> {
        self.tree
            .get(name)?
            .map(|bytes| decode(name, &bytes))
            .transpose()
    }

    /// Record that the site CA issued the certificate of `claims` with
    /// `role`. It replaces the operator's earlier certificates, which are
    /// revoked: an operator holds one role at a time, so a demotion takes
    /// effect at once, and a revoked operator becomes active with this
    /// certificate only.
    pub fn record_issued(
        &self,
        claims: &OperatorClaims,
        role: Role,
    ) -> Result<Operator, OperatorError> {
        check_name("operator name", &claims.name)?;
        self.change(&claims.name, |existing| {
            let now = now_unix();
            let mut operator = existing.unwrap_or_else(|| Operator {
                name: claims.name.clone(),
                role,
                revoked: false,
                certificates: Vec::new(),
            });
            operator.role = role;
            operator.revoked = false;
            operator.certificates.retain(|c| c.cert.not_after >= now);
            for c in &mut operator.certificates {
                c.cert.revoked = true;
            }
            operator.certificates.push(OperatorCert {
                cert: CertRecord {
                    serial: claims.serial.clone(),
                    not_before: claims.not_before,
                    not_after: claims.not_after,
                    revoked: false,
                },
                role,
            });
            let excess = operator.certificates.len().saturating_sub(MAX_CERTIFICATES);
            operator.certificates.drain(..excess);
            Ok(operator)
        })
    }

    /// Revoke operator `name` and every certificate issued to them.
    pub fn revoke(&self, name: &str) -> Result<Operator, OperatorError> {
        self.change(name, |existing| {
            let mut operator = existing.ok_or_else(|| OperatorError::Unknown(name.to_owned()))?;
            operator.revoked = true;
            for c in &mut operator.certificates {
                c.cert.revoked = true;
            }
            Ok(operator)
        })
    }

    /// Decide whether the holder of a site-issued certificate with `claims`
    /// is an operator who may use the admin API, and with which role: the
    /// one recorded for that certificate.
    /// A refusal says why, naming the operator.
    pub fn admit(&self, claims: &OperatorClaims) -> Result<Role, String> {
        let refuse = |reason: String| format!("operator {}: {reason}", claims.name);
        let operator = self
            .get(&claims.name)
            .map_err(|e| refuse(format!("operator records unavailable: {e}")))?
            .ok_or_else(|| refuse("not an operator of this appliance".into()))?;
        if operator.revoked {
            return Err(refuse("revoked".into()));
        }
        // The handshake checked the dates, but a resumed TLS session skips
        // the handshake's check.
        if check_dates(claims.not_before, claims.not_after, now_unix()).is_err() {
            return Err(refuse(format!(
                "certificate {} is not valid now",
                claims.serial
            )));
        }
        let cert = operator
            .certificates
            .iter()
            .find(|c| c.cert.serial == claims.serial)
            .ok_or_else(|| {
                refuse(format!(
                    "certificate {} is not one issued to them",
                    claims.serial
                ))
            })?;
        if cert.cert.revoked {
            return Err(refuse(format!("certificate {} revoked", claims.serial)));
        }
        if cert.role.as_str() != claims.role {
            return Err(refuse(format!(
                "certificate says role {}, it was issued as {}",
                claims.role, cert.role
            )));
        }
        Ok(cert.role)
    }

    fn change(
        &self,
        name: &str,
        f: impl FnOnce(Option<Operator>) -> Result<Operator, OperatorError>,
    ) -> Result<Operator, OperatorError> {
        let _guard = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let operator = f(self.get(name)?)?;
        let bytes = serde_json::to_vec(&operator).map_err(|e| OperatorError::Corrupt {
            name: operator.name.clone(),
            reason: e.to_string(),
        })?;
        self.tree.insert(operator.name.as_str(), bytes)?;
        self.store.flush()?;
        Ok(operator)
    }
}

fn decode(name: &str, bytes: &[u8]) -> Result<Operator, OperatorError> {
    serde_json::from_slice(bytes).map_err(|e| OperatorError::Corrupt {
        name: name.to_owned(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn claims(name: &str, role: &str, serial: &str) -> OperatorClaims {
        OperatorClaims {
            name: name.into(),
            role: role.into(),
            serial: serial.into(),
            not_before: now_unix() - 10,
            not_after: now_unix() + 3600,
        }
    }

    #[test]
    fn admission_follows_the_record() {
        let operators = Operators::open(&Store::temporary().unwrap()).unwrap();
        let ann = claims("ann", "operator", "01");
        assert!(operators.admit(&ann).is_err(), "unknown operator admitted");
        operators.record_issued(&ann, Role::Operator).unwrap();
        assert_eq!(operators.admit(&ann), Ok(Role::Operator));
        let forged = claims("ann", "admin", "01");
        let refused = operators.admit(&forged).unwrap_err();
        assert!(refused.contains("issued as operator"), "{refused}");
        let other = claims("ann", "operator", "02");
        assert!(
            operators.admit(&other).is_err(),
            "unrecorded serial admitted"
        );
        operators.revoke("ann").unwrap();
        assert_eq!(operators.admit(&ann).unwrap_err(), "operator ann: revoked");
        // A new certificate brings them back; the old one stays revoked.
        let again = claims("ann", "admin", "03");
        operators.record_issued(&again, Role::Admin).unwrap();
        assert_eq!(operators.admit(&again), Ok(Role::Admin));
        assert!(operators.admit(&ann).unwrap_err().contains("revoked"));
        // A demotion replaces the admin certificate at once.
        let demoted = claims("ann", "viewer", "04");
        operators.record_issued(&demoted, Role::Viewer).unwrap();
        assert_eq!(operators.admit(&demoted), Ok(Role::Viewer));
        assert!(operators.admit(&again).unwrap_err().contains("revoked"));
        // An expired certificate (a resumed session) is refused.
        let mut old = claims("ann", "viewer", "04");
        old.not_after = now_unix() - 1;
        assert!(operators.admit(&old).unwrap_err().contains("not valid now"));
    }

    #[test]
    fn roles_are_ordered_and_named() {
        assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);
        for role in [Role::Viewer, Role::Operator, Role::Admin] {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
        }
        assert!("root".parse::<Role>().is_err());
    }
}
