//! Blocking work on the async runtime: a session recording to a full audit
//! queue, a parser call on a large chunk, a renewal waiting for the disk.
//! Each happens inside one task, on its worker thread; [`blocking`] lets
//! the worker's other tasks (other sessions) move on meanwhile.

use tokio::runtime::{Handle, RuntimeFlavor};

/// Run `f`, which blocks. On a multi-threaded tokio runtime it runs inside
/// [`tokio::task::block_in_place`], so that the other tasks of this worker
/// move to another worker and carry on. Without a runtime, or on a
/// current-thread one (where `block_in_place` panics and whose only thread
/// is this one, so nothing could move), it simply runs.
pub(crate) fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}
