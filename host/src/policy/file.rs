//! The site's policy on disk: `policy.cedar` in the data directory, read at
//! start and reloaded live when it changes.
//!
//! A reload is atomic: the new text is checked against the schema as a
//! whole, and only a policy that checks replaces the active one. A broken
//! file is refused with its problems in the log, and the policy in force
//! stays until the file is fixed.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use super::{EMBEDDED_DEFAULT, Policy, PolicyEngine, PolicyError};

/// The file in the data directory that holds the site's policy; without it
/// the embedded default is active.
pub const POLICY_FILE: &str = "policy.cedar";

/// How often the file is looked at for a change.
const POLL: Duration = Duration::from_secs(1);

/// Why the policy could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file exists but cannot be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The file does not check.
    #[error("{path} is refused:\n{source}")]
    Refused {
        /// The file.
        path: PathBuf,
        /// Its problems.
        source: PolicyError,
    },
}

/// The policy text in force for data directory `data`: the file's, or the
/// embedded default's when there is no file (`None` as the path).
pub fn source(data: &Path) -> Result<(String, Option<PathBuf>), LoadError> {
    let path = data.join(POLICY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok((text, Some(path))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((EMBEDDED_DEFAULT.into(), None)),
        Err(source) => Err(LoadError::Read { path, source }),
    }
}

/// The policy for data directory `data`, checked.
pub fn load(data: &Path) -> Result<Policy, LoadError> {
    let (text, path) = source(data)?;
    let policy = Policy::parse(&text).map_err(|source| LoadError::Refused {
        path: path.unwrap_or_else(|| PathBuf::from("<embedded default>")),
        source,
    })?;
    Ok(policy)
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Reload `engine` from `data`'s policy file whenever it changes (its
/// modification time or its presence), until `stop`.
pub async fn watch(engine: PolicyEngine, data: PathBuf, stop: CancellationToken) {
    let path = data.join(POLICY_FILE);
    let mut seen = modified(&path);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(POLL) => {}
        }
        let now = modified(&path);
        if now == seen {
            continue;
        }
        seen = now;
        match source(&data) {
            Err(e) => error!(error = %e, "policy not reloaded; the active policy stays"),
            Ok((text, file)) => match engine.reload(&text) {
                Ok(()) => info!(
                    policy = %file.as_deref().map_or("embedded default".into(), |p| p.display().to_string()),
                    "policy reloaded"
                ),
                Err(problems) => error!(
                    file = %path.display(),
                    problems = %problems,
                    "policy refused; the active policy stays"
                ),
            },
        }
    }
}
