//! The site's policy on disk: `policy.cedar` in the data directory, read at
//! start and reloaded live when it changes.
//!
//! A reload is atomic: the new text is checked against the schema as a
//! whole, and only a policy that checks replaces the active one. A broken
//! file is refused with its problems in the log, and the policy in force
//! stays until the file is fixed. A change is read once the file has not
//! changed for a whole poll, so that a file an editor is writing in place
//! is not read half written (an empty file is a valid policy that denies
//! everything).

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
    let mut watch = Watch::new(data);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(POLL) => {}
        }
        watch.look(&engine);
    }
}

/// What the watcher knows of the policy file between two looks.
struct Watch {
    data: PathBuf,
    path: PathBuf,
    /// The file's modification time when it was last read (`None`: no file).
    seen: Option<SystemTime>,
    /// A new modification time seen at the last look, not yet read: read
    /// at the next look if it is still the same.
    changed: Option<Option<SystemTime>>,
}

impl Watch {
    fn new(data: PathBuf) -> Watch {
        let path = data.join(POLICY_FILE);
        let seen = modified(&path);
        Watch {
            data,
            path,
            seen,
            changed: None,
        }
    }

    /// Reload `engine` if the file changed before the last look and has
    /// not since. An editor that writes the file in place truncates it
    /// first: read at once, the empty file would deny everything until the
    /// next look.
    fn look(&mut self, engine: &PolicyEngine) {
        let now = modified(&self.path);
        if now == self.seen {
            self.changed = None;
            return;
        }
        if self.changed != Some(now) {
            self.changed = Some(now);
            return;
        }
        self.seen = now;
        self.changed = None;
        let (data, path) = (&self.data, &self.path);
        match source(data) {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const FIRST: &str = "permit(principal, action, resource);\n";
    const SECOND: &str = "forbid(principal, action, resource);\n";

    fn engine() -> PolicyEngine {
        PolicyEngine::new(Policy::parse(FIRST).unwrap())
    }

    /// Long enough for the file system to give a later write a later
    /// modification time.
    fn tick() {
        std::thread::sleep(Duration::from_millis(20));
    }

    #[test]
    fn a_change_is_read_once_it_held_for_a_whole_look() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(POLICY_FILE);
        std::fs::write(&path, FIRST).unwrap();
        let engine = engine();
        let mut watch = Watch::new(dir.path().to_owned());
        watch.look(&engine);
        assert_eq!(engine.active().source(), FIRST);
        tick();
        std::fs::write(&path, SECOND).unwrap();
        watch.look(&engine);
        assert_eq!(engine.active().source(), FIRST);
        watch.look(&engine);
        assert_eq!(engine.active().source(), SECOND);
        // Gone: the embedded default.
        std::fs::remove_file(&path).unwrap();
        watch.look(&engine);
        watch.look(&engine);
        assert_eq!(engine.active().source(), EMBEDDED_DEFAULT);
    }

    /// An editor writing in place: the file is empty at one look, whole at
    /// the next. The empty file, a valid policy that denies everything, is
    /// never made active.
    #[test]
    fn a_file_being_written_in_place_is_not_read_half_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(POLICY_FILE);
        std::fs::write(&path, FIRST).unwrap();
        let engine = engine();
        let mut watch = Watch::new(dir.path().to_owned());
        tick();
        let file = std::fs::File::create(&path).unwrap();
        watch.look(&engine);
        assert_eq!(engine.active().source(), FIRST);
        tick();
        std::io::Write::write_all(&mut &file, SECOND.as_bytes()).unwrap();
        drop(file);
        watch.look(&engine);
        assert_eq!(engine.active().source(), FIRST);
        watch.look(&engine);
        assert_eq!(engine.active().source(), SECOND);
    }
}
