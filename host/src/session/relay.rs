//! Relaying one session: bytes both ways between a device and its
//! upstream, each direction through the route's parser.
//!
//! Each direction reads one chunk, hands it to the [`Pipeline`], and writes
//! to the other side exactly the bytes of the complete frames the parser
//! cut, in order; the bytes of an incomplete frame wait for the next chunk.
//! A direction does not read again before its write finished: a slow
//! reader slows its writer down (backpressure), and a session holds at most
//! one chunk and one incomplete frame per direction (twice: here and in
//! the pipeline). Read buffers start small and grow to the configured
//! chunk only while reads fill them, and the buffers of an incomplete frame
//! give back what a large frame grew them to once it is out, so an idle
//! session holds little. A malformed stream
//! ends the session after the frames before the fault; a fail-closed plugin
//! failure ends it before any frame of the chunk is forwarded.
//!
//! Plugin calls are synchronous (wasmtime, microseconds, bounded by a 50 ms
//! deadline). A call on a small input runs in place; one on a large input
//! through [`crate::runtime::blocking`], so that a long call costs its own
//! session and not the other sessions of the same worker thread (see
//! [`INLINE_INPUT`]).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::pipeline::shrink;
use super::{Closed, Inspected, Pipeline, PipelineError};
use crate::plugins::{Direction, Session};

/// Bounds of one relayed session.
#[derive(Debug, Clone, Copy)]
pub struct RelaySettings {
    /// Silence both ways, or a write blocked, for this long closes the
    /// session.
    pub idle: Duration,
    /// Bytes read at once.
    pub chunk: usize,
    /// How long one direction may hold an incomplete frame: a frame not
    /// whole by then closes the session.
    pub frame: Duration,
}

/// The bytes of incomplete frames a set of sessions holds together, and
/// the most they may: every session's (`max-buffered-bytes`), or one
/// device's (`max-buffered-bytes-per-device`). Each session's relay holds
/// what it read of a frame not yet whole, and its pipeline the same bytes
/// for the parser. Clones share it.
#[derive(Debug, Clone)]
pub struct BufferBudget {
    held: Arc<AtomicUsize>,
    max: usize,
}

impl BufferBudget {
    /// A budget of `max` bytes.
    pub fn new(max: usize) -> Self {
        Self::counted_in(Arc::default(), max)
    }

    /// A budget of `max` bytes, what it holds counted in `held`: one
    /// device's share, counted with its live sessions.
    pub fn counted_in(held: Arc<AtomicUsize>, max: usize) -> Self {
        BufferBudget { held, max }
    }

    /// Bytes held now, all sessions together.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Take `bytes` more, if they fit.
    fn take(&self, bytes: usize) -> bool {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(bytes).filter(|&total| total <= self.max)
            })
            .is_ok()
    }

    fn give(&self, bytes: usize) {
        self.held.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// What one direction of a session holds of the appliance's
/// [`BufferBudget`] and of its device's; given back when it is dropped.
#[derive(Debug)]
struct Share {
    budget: BufferBudget,
    device: BufferBudget,
    bytes: usize,
}

/// Which budget had no room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Over {
    /// The device's.
    Device,
    /// The appliance's, for all sessions.
    All,
}

impl Share {
    /// Hold `bytes` in all, taking or giving back the difference; which
    /// budget has no room for them (and nothing changed) when one has
    /// not.
    fn set(&mut self, bytes: usize) -> Result<(), Over> {
        if bytes > self.bytes {
            let more = bytes - self.bytes;
            if !self.device.take(more) {
                return Err(Over::Device);
            }
            if !self.budget.take(more) {
                self.device.give(more);
                return Err(Over::All);
            }
        } else {
            let less = self.bytes - bytes;
            self.device.give(less);
            self.budget.give(less);
        }
        self.bytes = bytes;
        Ok(())
    }

    /// Give back everything held.
    fn release(&mut self) {
        self.device.give(self.bytes);
        self.budget.give(self.bytes);
        self.bytes = 0;
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        self.release();
    }
}

/// What the appliance bounds and watches a session by, beyond its
/// settings.
#[derive(Debug, Clone)]
pub struct Guards {
    /// Whether the device was closed: nothing more goes to the upstream.
    pub closed: Closed,
    /// The bytes of incomplete frames all sessions may hold.
    pub buffers: BufferBudget,
    /// The bytes of incomplete frames the device's sessions may hold: so
    /// that a few devices cannot hold all of `buffers`, and have others'
    /// sessions closed for want of it.
    pub device_buffers: BufferBudget,
}

impl Guards {
    /// A session nobody closes, whose frames are bounded by its pipeline
    /// alone: one relayed outside the appliance (a test, a benchmark).
    pub fn none() -> Self {
        Guards {
            closed: Closed::never(),
            buffers: BufferBudget::new(usize::MAX),
            device_buffers: BufferBudget::new(usize::MAX),
        }
    }
}

/// Which side of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The device.
    Device,
    /// The upstream service.
    Upstream,
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Side::Device => "device",
            Side::Upstream => "upstream",
        })
    }
}

/// Why a session ended other than by both sides closing.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Reading from or writing to one side failed.
    #[error("{side} connection: {source}")]
    Io {
        /// The side.
        side: Side,
        /// What failed.
        source: std::io::Error,
    },
    /// The pipeline cannot go on (a parser failure, a frame too large).
    #[error("{direction} stream: {source}")]
    Pipeline {
        /// The direction.
        direction: &'static str,
        /// What failed.
        source: PipelineError,
    },
    /// The parser found the stream malformed.
    #[error("malformed {direction} stream: {reason}")]
    Malformed {
        /// The direction.
        direction: &'static str,
        /// The parser's reason.
        reason: String,
    },
    /// A fail-closed detector or responder failed: nothing of the chunk was
    /// forwarded.
    #[error("{direction} frames blocked: {reason}")]
    Blocked {
        /// The direction.
        direction: &'static str,
        /// The failures.
        reason: String,
    },
    /// The policy or a responder closed the session (or quarantined the
    /// device) on a frame, which was not forwarded.
    #[error("closed on a {direction} frame: {reason}")]
    Enforced {
        /// The direction.
        direction: &'static str,
        /// Why.
        reason: String,
    },
    /// Nothing moved either way for the idle timeout.
    #[error("idle for {0:?}")]
    Idle(Duration),
    /// A frame stayed incomplete for the frame timeout.
    #[error("a {direction} frame still incomplete after {limit:?}")]
    FrameTimeout {
        /// Which way the frame was going.
        direction: &'static str,
        /// The frame timeout.
        limit: Duration,
    },
    /// A write to one side stayed blocked for the idle timeout.
    #[error("{0} stopped reading for {1:?}")]
    Stalled(Side, Duration),
    /// The sessions together hold as many bytes of incomplete frames as
    /// the appliance allows, and this one's frame needs more.
    #[error(
        "{direction} frame of {holding} bytes so far cannot wait: the sessions together hold {held} bytes of incomplete frames, and max-buffered-bytes is {max}"
    )]
    OverBudget {
        /// The direction.
        direction: &'static str,
        /// Bytes the session's direction would hold.
        holding: usize,
        /// Bytes all sessions hold.
        held: usize,
        /// The budget.
        max: usize,
    },
    /// Holding this direction's incomplete frame would take the device's
    /// sessions past their share of the buffer budget.
    #[error(
        "{direction} frame of {holding} bytes so far cannot wait: the device's sessions together hold {held} bytes of incomplete frames, and max-buffered-bytes-per-device is {max}"
    )]
    DeviceOverBudget {
        /// The direction.
        direction: &'static str,
        /// Bytes the session's direction would hold.
        holding: usize,
        /// Bytes the device's sessions hold.
        held: usize,
        /// The device's share.
        max: usize,
    },
}

/// What the relay asks of the rest of the appliance when the policy or a
/// responder acted on a chunk.
pub trait Enforcer: Send + Sync {
    /// Record the chunk's findings and actions (the audit trail).
    fn record(&self, session: &Session, inspected: &Inspected);
    /// Quarantine the session's device: close all its sessions and refuse
    /// it from now on, saying `reason`. With `spare`, this session's own
    /// connection is left to its relay, which still has frames to deliver
    /// to the device (and forwards nothing more to the upstream); the
    /// others close at once.
    fn quarantine(&self, session: &Session, reason: &str, spare: bool);
}

/// An enforcer with nobody to tell: nothing recorded, and a quarantine only
/// closes the session that asked for it.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoEnforcer;

impl Enforcer for NoEnforcer {
    fn record(&self, _: &Session, _: &Inspected) {}
    fn quarantine(&self, _: &Session, _: &str, _: bool) {}
}

/// How many bytes of frames a session forwarded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Forwarded {
    /// Bytes from the device to the upstream.
    pub to_upstream: u64,
    /// Bytes from the upstream to the device.
    pub to_device: u64,
}

/// When the session last moved a byte either way, and whether it is
/// closing.
#[derive(Debug)]
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
    /// Set when this session quarantined its device on a frame bound for
    /// the device: that direction still delivers the frames allowed before
    /// the offence, and nothing more goes to the upstream.
    closing: AtomicBool,
    /// Whether the device was closed from elsewhere (another session's
    /// quarantine, a revocation). The close hangs the session up, but a
    /// chunk read before it may be in the middle of being judged: none of
    /// it goes to the upstream once the device is closed.
    device: Closed,
}

impl Activity {
    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }
}

/// Relay between `device` and `upstream` until both sides close or
/// something ends the session. `first` holds bytes already read from the
/// device (see [`first_bytes`]); they are handled before anything else.
/// With `pipeline`, only the bytes of the frames its parser cut are
/// forwarded; without, bytes pass uninspected. Nothing more goes to the
/// upstream once `guards` say the device was closed, and the bytes of an
/// incomplete frame count against their budget.
pub async fn relay<D, U>(
    device: D,
    upstream: U,
    first: Vec<u8>,
    pipeline: Option<Pipeline>,
    settings: RelaySettings,
    enforcer: Arc<dyn Enforcer>,
    guards: Guards,
) -> Result<Forwarded, RelayError>
where
    D: AsyncRead + AsyncWrite + Send + Unpin,
    U: AsyncRead + AsyncWrite + Send + Unpin,
{
    let (device_read, device_write) = tokio::io::split(device);
    let (upstream_read, upstream_write) = tokio::io::split(upstream);
    let pipeline = pipeline.map(|p| Arc::new(Mutex::new(p)));
    let activity = Activity {
        start: Instant::now(),
        last_ms: AtomicU64::new(0),
        closing: AtomicBool::new(false),
        device: guards.closed,
    };
    let share = || Share {
        budget: guards.buffers.clone(),
        device: guards.device_buffers.clone(),
        bytes: 0,
    };
    let up = Pump {
        direction: Direction::ToUpstream,
        pipeline: pipeline.clone(),
        enforcer: enforcer.clone(),
        held: Vec::new(),
        share: share(),
        incomplete_since: None,
        forwarded: 0,
    }
    .run(device_read, upstream_write, first, &activity, settings);
    let down = Pump {
        direction: Direction::ToDevice,
        pipeline,
        enforcer,
        held: Vec::new(),
        share: share(),
        incomplete_since: None,
        forwarded: 0,
    }
    .run(upstream_read, device_write, Vec::new(), &activity, settings);
    let (to_upstream, to_device) = tokio::try_join!(up, down)?;
    Ok(Forwarded {
        to_upstream,
        to_device,
    })
}

/// Wait for the device's first bytes, for at most the idle timeout. A
/// route that connects to its upstream on the device's first bytes calls
/// this first: a device that connects and says nothing costs no upstream
/// connection. `None` when the device closed without a byte.
pub async fn first_bytes<D: AsyncRead + Unpin>(
    device: &mut D,
    settings: RelaySettings,
) -> Result<Option<Vec<u8>>, RelayError> {
    // Small: most sessions open with one short frame (an MQTT CONNECT, a
    // CoAP CSM, a Modbus request).
    let mut first = vec![0u8; FIRST_READ.min(settings.chunk.max(1))];
    match tokio::time::timeout(settings.idle, device.read(&mut first)).await {
        Err(_) => Err(RelayError::Idle(settings.idle)),
        Ok(Err(source)) => Err(RelayError::Io {
            side: Side::Device,
            source,
        }),
        Ok(Ok(0)) => Ok(None),
        Ok(Ok(n)) => {
            first.truncate(n);
            Ok(Some(first))
        }
    }
}

/// Size of the first read of a direction; reads grow from here to the
/// configured chunk when they come back full, so an idle session holds
/// small buffers and a busy one reads in large chunks.
const FIRST_READ: usize = 2048;

fn name(direction: Direction) -> &'static str {
    match direction {
        Direction::ToUpstream => "device-to-upstream",
        Direction::ToDevice => "upstream-to-device",
    }
}

/// One direction of a session.
struct Pump {
    direction: Direction,
    pipeline: Option<Arc<Mutex<Pipeline>>>,
    enforcer: Arc<dyn Enforcer>,
    /// Bytes read but not yet forwarded: the start of an incomplete frame.
    /// The pipeline bounds it by refusing frames over its limit.
    held: Vec<u8>,
    /// What `held` and the pipeline's copy of it take of the appliance's
    /// budget.
    share: Share,
    /// Since when an incomplete frame has been held: a device that sends
    /// most of a large frame, then a byte now and then, within the idle
    /// timeout, would otherwise hold its share of the budget (and, with a
    /// few others, all of it) for as long as it likes.
    incomplete_since: Option<Instant>,
    forwarded: u64,
}

impl Pump {
    fn sides(&self) -> (Side, Side) {
        match self.direction {
            Direction::ToUpstream => (Side::Device, Side::Upstream),
            Direction::ToDevice => (Side::Upstream, Side::Device),
        }
    }

    /// Read, inspect and forward until end of stream. At end of stream the
    /// write side is shut down (a half-close), and the other direction
    /// carries on until its own end.
    async fn run<R, W>(
        mut self,
        mut from: R,
        mut to: W,
        first: Vec<u8>,
        activity: &Activity,
        settings: RelaySettings,
    ) -> Result<u64, RelayError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let reader = self.sides().0;
        if !first.is_empty() {
            activity.touch();
            self.forward(&mut to, &first, activity, settings).await?;
        }
        let mut chunk: Vec<u8> = Vec::new();
        let mut size = FIRST_READ.min(settings.chunk.max(1));
        loop {
            // The buffer is made when there is something to read into it,
            // and grows while reads fill it.
            chunk.resize(size, 0);
            let wait = match self.incomplete_since {
                Some(since) => (settings.frame.saturating_sub(since.elapsed())).min(settings.idle),
                None => settings.idle,
            };
            let n = match tokio::time::timeout(wait, from.read(&mut chunk)).await {
                // Quarantined, it forwards nothing more, and the other
                // direction may still deliver what was allowed.
                Err(_) if self.halted(activity) => return Ok(self.forwarded),
                Err(_) if self.frame_overdue(settings) => return Err(self.frame_timeout(settings)),
                Err(_) if activity.idle_for() >= settings.idle => {
                    return Err(RelayError::Idle(settings.idle));
                }
                // The other direction is busy: this one may stay quiet.
                Err(_) => continue,
                Ok(Err(source)) => {
                    return Err(RelayError::Io {
                        side: reader,
                        source,
                    });
                }
                Ok(Ok(0)) => {
                    // What is held of an incomplete frame can never be
                    // forwarded: it goes now, with its share of the
                    // budget, though the other direction goes on.
                    self.held = Vec::new();
                    if let Some(pipeline) = &self.pipeline {
                        lock(pipeline).end(self.direction);
                    }
                    self.share.release();
                    // The peer may already be gone; its own direction
                    // reports it. A TLS shutdown writes close_notify,
                    // which waits on a peer that stopped reading as long
                    // as any write: as long as a write may.
                    let (_, writer) = self.sides();
                    return match tokio::time::timeout(settings.idle, to.shutdown()).await {
                        Err(_) => Err(RelayError::Stalled(writer, settings.idle)),
                        Ok(_) => Ok(self.forwarded),
                    };
                }
                Ok(Ok(n)) => n,
            };
            activity.touch();
            if n == size {
                size = (size * 2).min(settings.chunk.max(1));
            }
            self.forward(
                &mut to,
                chunk.get(..n).unwrap_or_default(),
                activity,
                settings,
            )
            .await?;
            if self.halted(activity) {
                return Ok(self.forwarded);
            }
            // Reads that come quickly never time out: the frame's deadline
            // is checked after each one too.
            if self.frame_overdue(settings) {
                return Err(self.frame_timeout(settings));
            }
        }
    }

    /// Whether the incomplete frame held has been held past the frame
    /// timeout.
    fn frame_overdue(&self, settings: RelaySettings) -> bool {
        self.incomplete_since
            .is_some_and(|since| since.elapsed() >= settings.frame)
    }

    fn frame_timeout(&self, settings: RelaySettings) -> RelayError {
        RelayError::FrameTimeout {
            direction: name(self.direction),
            limit: settings.frame,
        }
    }

    /// Whether this direction forwards nothing more: it goes to the
    /// upstream, and the session quarantined its device or the device was
    /// closed. The session ends when the other direction has delivered what
    /// was allowed, or at once when the close hung it up.
    fn halted(&self, activity: &Activity) -> bool {
        self.direction == Direction::ToUpstream
            && (activity.closing.load(Ordering::Relaxed) || activity.device.is_closed())
    }

    /// Inspect `bytes` and write the complete frames among what is held.
    async fn forward<W: AsyncWrite + Unpin>(
        &mut self,
        to: &mut W,
        bytes: &[u8],
        activity: &Activity,
        settings: RelaySettings,
    ) -> Result<(), RelayError> {
        let (_, writer) = self.sides();
        let direction = self.direction;
        if self.halted(activity) {
            return Ok(());
        }
        let Some(pipeline) = &self.pipeline else {
            write(to, bytes, writer, settings.idle).await?;
            self.forwarded += bytes.len() as u64;
            return Ok(());
        };
        let keep = settings.chunk.max(FIRST_READ);
        let (inspected, pending) =
            inspect(pipeline, direction, bytes, keep).map_err(|source| RelayError::Pipeline {
                direction: name(direction),
                source,
            })?;
        let verdict = inspected.verdict();
        // Also when a failing plugin blocks the chunk: what the others
        // found, and the quarantine they asked for, stand.
        if !(inspected.findings.is_empty() && inspected.actions.is_empty()) {
            let session = lock(pipeline).session().clone();
            if let Some((_, reason)) = verdict.close.as_ref().filter(|_| verdict.quarantine) {
                // First, before anything is written or recorded: the
                // device's sessions close now, but for this one when the
                // frames allowed before the offence still go to the device.
                let spare = direction == Direction::ToDevice && !inspected.blocked;
                activity.closing.store(true, Ordering::Relaxed);
                self.enforcer.quarantine(&session, reason, spare);
            }
            self.enforcer.record(&session, &inspected);
        }
        if inspected.blocked {
            let reason: Vec<String> = inspected.errors.iter().map(ToString::to_string).collect();
            return Err(RelayError::Blocked {
                direction: name(direction),
                reason: reason.join("; "),
            });
        }
        // The frames are consecutive and start at the first held byte: the
        // pipeline cuts them from the front of what it was given, which is
        // what `held` holds followed by `bytes`. In the common case nothing
        // was held and the frames lie in `bytes` itself.
        let frames: usize = inspected.spans.iter().map(|s| s.len as usize).sum();
        let held = !self.held.is_empty();
        if held {
            self.held.extend_from_slice(bytes);
        }
        let data: &[u8] = if held { &self.held } else { bytes };
        let frames = frames.min(data.len());
        let last = verdict
            .close
            .as_ref()
            .map_or(verdict.forward.len(), |(cut, _)| *cut);
        // Write each run of consecutive forwarded frames at once.
        let mut start = 0usize;
        let mut run = 0..0;
        for (span, forward) in inspected.spans.iter().zip(&verdict.forward).take(last) {
            let end = start + span.len as usize;
            if *forward {
                run = if run.is_empty() {
                    start..end
                } else {
                    run.start..end
                };
            } else if !run.is_empty() {
                // The other direction may have quarantined the device
                // while the last write waited.
                if self.halted(activity) {
                    return Ok(());
                }
                write(
                    to,
                    data.get(run.clone()).unwrap_or_default(),
                    writer,
                    settings.idle,
                )
                .await?;
                self.forwarded += run.len() as u64;
                run = 0..0;
            }
            start = end;
        }
        if !run.is_empty() {
            if self.halted(activity) {
                return Ok(());
            }
            write(
                to,
                data.get(run.clone()).unwrap_or_default(),
                writer,
                settings.idle,
            )
            .await?;
            self.forwarded += run.len() as u64;
        }
        if let Some((_, reason)) = verdict.close {
            return Err(RelayError::Enforced {
                direction: name(direction),
                reason,
            });
        }
        if held {
            self.held.drain(..frames);
            shrink(&mut self.held, keep);
        } else {
            self.held
                .extend_from_slice(bytes.get(frames..).unwrap_or_default());
        }
        if let Some(limit) = inspected.oversize {
            return Err(RelayError::Pipeline {
                direction: name(direction),
                source: PipelineError::FrameTooLarge { limit },
            });
        }
        let holding = self.held.len() + pending;
        // A frame completed in this read: what is held now is the start of
        // a new one.
        self.incomplete_since = match self.incomplete_since {
            _ if holding == 0 => None,
            Some(since) if inspected.spans.is_empty() => Some(since),
            _ => Some(Instant::now()),
        };
        if let Err(over) = self.share.set(holding) {
            let budget = match over {
                Over::All => &self.share.budget,
                Over::Device => &self.share.device,
            };
            let (direction, held, max) = (name(direction), budget.held(), budget.max);
            return Err(match over {
                Over::All => RelayError::OverBudget {
                    direction,
                    holding,
                    held,
                    max,
                },
                Over::Device => RelayError::DeviceOverBudget {
                    direction,
                    holding,
                    held,
                    max,
                },
            });
        }
        if let Some(m) = inspected.malformed {
            return Err(RelayError::Malformed {
                direction: name(direction),
                reason: m.reason,
            });
        }
        Ok(())
    }
}

async fn write<W: AsyncWrite + Unpin>(
    to: &mut W,
    bytes: &[u8],
    side: Side,
    idle: Duration,
) -> Result<(), RelayError> {
    let io = async {
        to.write_all(bytes).await?;
        to.flush().await
    };
    match tokio::time::timeout(idle, io).await {
        Err(_) => Err(RelayError::Stalled(side, idle)),
        Ok(Err(source)) => Err(RelayError::Io { side, source }),
        Ok(Ok(())) => Ok(()),
    }
}

fn lock(pipeline: &Mutex<Pipeline>) -> std::sync::MutexGuard<'_, Pipeline> {
    pipeline.lock().unwrap_or_else(|p| p.into_inner())
}

/// Inputs up to this size are parsed in place on the async worker; larger
/// ones through [`crate::runtime::blocking`]. A parser call on a few
/// frames takes microseconds, less than handing the worker's other tasks to
/// another thread costs (measured: running in place takes about 7 µs off
/// each call, 14 µs off an MQTT PUBLISH to PUBACK round trip); a call on a
/// large chunk takes longer, and the hand-off lets the other sessions of
/// this worker go on meanwhile. Whatever the size, a call is bounded by the
/// plugin's deadline.
const INLINE_INPUT: usize = 4096;

/// Run the pipeline on `bytes`: in place when the input is small, off the
/// reactor when it is large and the runtime allows. The pipeline's
/// buffer then gives back what a large frame grew it to beyond `chunk`.
/// Returns what came of it, and the bytes the pipeline now holds of the
/// direction's incomplete frame.
fn inspect(
    pipeline: &Mutex<Pipeline>,
    direction: Direction,
    bytes: &[u8],
    chunk: usize,
) -> Result<(Inspected, usize), PipelineError> {
    let mut pipeline = lock(pipeline);
    let input = pipeline.parser_input(direction, bytes.len());
    let inspected = if input.is_some_and(|input| input > INLINE_INPUT) {
        crate::runtime::blocking(|| pipeline.push(direction, bytes))
    } else {
        pipeline.push(direction, bytes)
    };
    pipeline.shrink(direction, chunk);
    Ok((inspected?, pipeline.pending(direction)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use tokio::io::ReadBuf;

    use super::*;
    use crate::policy::{Policy, PolicyEngine};
    use crate::session::LiveSessions;
    use crate::session::testing::{mqtt, publish, runtime, session};

    fn settings(idle_ms: u64) -> RelaySettings {
        RelaySettings {
            idle: Duration::from_millis(idle_ms),
            chunk: 16 << 10,
            frame: Duration::from_secs(3600),
        }
    }

    /// The frame timeout of [`with_frame_timeout`].
    const FRAME_TIMEOUT: Duration = Duration::from_millis(300);

    /// A session relayed with a frame timeout of [`FRAME_TIMEOUT`], whose
    /// incomplete frames count against `budget`; with the device's and
    /// the upstream's ends.
    fn with_frame_timeout(
        budget: &BufferBudget,
    ) -> (
        tokio::task::JoinHandle<Result<Forwarded, RelayError>>,
        tokio::io::DuplexStream,
        tokio::io::DuplexStream,
    ) {
        let (device, device_end) = tokio::io::duplex(1 << 16);
        let (upstream, upstream_end) = tokio::io::duplex(1 << 16);
        let settings = RelaySettings {
            frame: FRAME_TIMEOUT,
            ..settings(10_000)
        };
        let relayed = tokio::spawn(relay(
            device,
            upstream,
            Vec::new(),
            Some(mqtt_pipeline(
                r#"permit(principal, action in Action::"mqtt", resource);"#,
            )),
            settings,
            Arc::new(NoEnforcer),
            Guards {
                buffers: budget.clone(),
                ..Guards::none()
            },
        ));
        (relayed, device_end, upstream_end)
    }

    /// A device that sends most of a frame, then a byte now and then (well
    /// within the idle timeout), is closed when the frame is not whole by
    /// the frame timeout, and what it held goes back to the budget: it
    /// used to hold it for as long as it liked.
    #[tokio::test]
    async fn a_frame_trickled_past_the_frame_timeout_closes_the_session() {
        let budget = BufferBudget::new(usize::MAX);
        let (relayed, mut device_end, _upstream_end) = with_frame_timeout(&budget);
        let frame = publish("site/a/blob", &[7; 4096]);
        device_end.write_all(&frame[..2048]).await.unwrap();
        let start = Instant::now();
        let mut trickled = 2048;
        while !relayed.is_finished() && trickled < frame.len() - 1 {
            assert!(start.elapsed() < Duration::from_secs(10), "never closed");
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = device_end.write_all(&frame[trickled..=trickled]).await;
            trickled += 1;
        }
        let ended = relayed.await.unwrap();
        assert!(
            matches!(ended, Err(RelayError::FrameTimeout { limit, .. }) if limit == FRAME_TIMEOUT),
            "{ended:?}"
        );
        assert_eq!(budget.held(), 0, "the held bytes go back to the budget");
    }

    /// Frames that each end in the next read keep a session busy past the
    /// frame timeout: each frame is whole well within it.
    #[tokio::test]
    async fn frames_each_split_across_reads_outlast_the_frame_timeout() {
        let budget = BufferBudget::new(usize::MAX);
        let (relayed, mut device_end, mut upstream_end) = with_frame_timeout(&budget);
        let frame = publish("site/a/temp", &[7; 100]);
        let stream = frame.repeat(20);
        // Half a frame first, then a frame's length at a time: every read
        // ends halfway through a frame, for about twice the frame timeout
        // in all.
        let (first, rest) = stream.split_at(frame.len() / 2);
        for piece in std::iter::once(first).chain(rest.chunks(frame.len())) {
            device_end.write_all(piece).await.unwrap();
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        drop(device_end);
        let mut reached = Vec::new();
        upstream_end.read_to_end(&mut reached).await.unwrap();
        assert_eq!(reached.len(), stream.len());
        drop(upstream_end);
        let ended = relayed.await.unwrap();
        assert!(ended.is_ok(), "{ended:?}");
    }

    /// A pipeline through the MQTT parser, judged by `policy`.
    fn mqtt_pipeline(policy: &str) -> Pipeline {
        let parser = mqtt(&runtime());
        let engine = PolicyEngine::new(Policy::parse(policy).unwrap());
        Pipeline::new(session(), parser, vec![], vec![], 1 << 18).with_policy(engine, None, "mqtt")
    }

    /// The device-to-upstream direction of a session whose policy allows
    /// every MQTT frame, its incomplete frames held of `budget`.
    fn pump(budget: &BufferBudget) -> Pump {
        device_pump(budget, &BufferBudget::new(usize::MAX))
    }

    /// As [`pump`], its incomplete frames also held of its device's
    /// `device` budget.
    fn device_pump(budget: &BufferBudget, device: &BufferBudget) -> Pump {
        Pump {
            direction: Direction::ToUpstream,
            pipeline: Some(Arc::new(Mutex::new(mqtt_pipeline(
                r#"permit(principal, action in Action::"mqtt", resource);"#,
            )))),
            enforcer: Arc::new(NoEnforcer),
            held: Vec::new(),
            share: Share {
                budget: budget.clone(),
                device: device.clone(),
                bytes: 0,
            },
            incomplete_since: None,
            forwarded: 0,
        }
    }

    /// A session that nothing closed.
    fn activity() -> Activity {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            closing: AtomicBool::new(false),
            device: Closed::never(),
        }
    }

    /// A device with nothing more to send that stopped reading: no write
    /// to it finishes, nor its TLS shutdown (a close_notify to write).
    struct Deaf;

    impl AsyncRead for Deaf {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Deaf {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            Poll::Pending
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Pending
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Pending
        }
    }

    /// Both sides closed their sending half, and the device reads nothing:
    /// passing on the upstream's end to the device waits on the device,
    /// for no longer than a write may.
    #[tokio::test]
    async fn a_device_that_stopped_reading_cannot_keep_a_half_closed_session() {
        let (upstream, upstream_end) = tokio::io::duplex(1024);
        drop(upstream_end);
        let relayed = relay(
            Deaf,
            upstream,
            Vec::new(),
            None,
            settings(100),
            Arc::new(NoEnforcer),
            Guards::none(),
        );
        let ended = tokio::time::timeout(Duration::from_secs(10), relayed)
            .await
            .expect("the session outlived its idle timeout");
        assert!(
            matches!(ended, Err(RelayError::Stalled(Side::Device, _))),
            "{ended:?}"
        );
    }

    /// A session that carried a frame far larger than its reads holds, once
    /// the frame is out, about what it held before: the relay's and the
    /// pipeline's buffers of the frame give their memory back.
    #[tokio::test]
    async fn after_a_large_frame_the_buffers_shrink_back() {
        let mut pump = pump(&BufferBudget::new(usize::MAX));
        let pipeline = pump.pipeline.clone().unwrap();
        let activity = activity();
        let settings = settings(10_000);
        let (large, small) = (
            publish("site/a/blob", &[7; 200 << 10]),
            publish("a/t", b"1"),
        );
        // The small frame's first bytes stay behind, incomplete.
        let stream = [&large[..], &small, &small[..4]].concat();
        let mut upstream = Vec::new();
        for chunk in stream.chunks(settings.chunk) {
            (pump
                .forward(&mut upstream, chunk, &activity, settings)
                .await)
                .unwrap();
        }
        assert_eq!(upstream, [large, small].concat());
        let held = pump.held.capacity();
        let pending = lock(&pipeline).pending_capacity(Direction::ToUpstream);
        assert!(held <= settings.chunk, "the relay holds {held} bytes");
        assert!(
            pending <= settings.chunk,
            "the pipeline holds {pending} bytes"
        );
    }

    /// Counts quarantines.
    #[derive(Default)]
    struct Quarantines(AtomicU64);

    impl Enforcer for Quarantines {
        fn record(&self, _: &Session, _: &Inspected) {}
        fn quarantine(&self, _: &Session, _: &str, _: bool) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A policy that allows MQTT and quarantines a device for a publish to
    /// a firmware topic.
    const QUARANTINE_FIRMWARE: &str = r#"permit(principal, action in Action::"mqtt", resource);
@response("quarantine-device")
forbid(principal, action == Action::"mqtt.publish", resource) when { context.topic like "*/firmware" };
"#;

    /// What the relay told its enforcer.
    #[derive(Default)]
    struct Told {
        records: AtomicU64,
        quarantines: AtomicU64,
    }

    impl Enforcer for Told {
        fn record(&self, _: &Session, _: &Inspected) {
            self.records.fetch_add(1, Ordering::SeqCst);
        }
        fn quarantine(&self, _: &Session, _: &str, _: bool) {
            self.quarantines.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A chunk that a failing detector blocks (it fails closed) still has
    /// the quarantine its policy asked for carried out, and its findings
    /// recorded: the block used to return first, and the device, never
    /// quarantined nor recorded, could come back at once and try again.
    #[tokio::test]
    async fn a_chunk_a_failing_detector_blocks_still_quarantines_and_is_recorded() {
        let policy = QUARANTINE_FIRMWARE;
        let runtime = runtime();
        // The MQTT parser in a detector's place fails every call, as a
        // detector out of its budgets would.
        let failing = mqtt(&runtime);
        let engine = PolicyEngine::new(Policy::parse(policy).unwrap());
        let pipeline = Pipeline::new(session(), mqtt(&runtime), vec![failing], vec![], 1 << 18)
            .with_policy(engine, None, "mqtt");
        let told = Arc::new(Told::default());
        let mut pump = Pump {
            pipeline: Some(Arc::new(Mutex::new(pipeline))),
            enforcer: told.clone(),
            ..pump(&BufferBudget::new(usize::MAX))
        };
        let stream = [
            publish("site/a/temp", b"20"),
            publish("site/a/firmware", b"evil"),
        ]
        .concat();
        let mut upstream = Vec::new();
        let ended = (pump.forward(&mut upstream, &stream, &activity(), settings(10_000))).await;
        assert!(
            matches!(ended, Err(RelayError::Blocked { .. })),
            "{ended:?}"
        );
        assert!(upstream.is_empty(), "a blocked chunk forwards nothing");
        assert_eq!(told.quarantines.load(Ordering::SeqCst), 1, "quarantined");
        assert_eq!(told.records.load(Ordering::SeqCst), 1, "recorded");
    }

    /// A frame from the broker quarantines the device while the frame
    /// before it, allowed, still goes to the device: what the device sends
    /// meanwhile is not forwarded.
    #[tokio::test]
    async fn once_a_frame_for_the_device_quarantined_it_nothing_more_reaches_the_upstream() {
        let policy = QUARANTINE_FIRMWARE;
        // The device's socket takes 64 bytes: the allowed frame's delivery
        // waits on the device, which reads nothing yet.
        let (device, mut device_end) = tokio::io::duplex(64);
        let (upstream, mut upstream_end) = tokio::io::duplex(1 << 16);
        let allowed = publish("site/a/news", &[7; 512]);
        let from_broker = [allowed.clone(), publish("site/a/firmware", b"evil")].concat();
        upstream_end.write_all(&from_broker).await.unwrap();
        let quarantines = Arc::new(Quarantines::default());
        let relayed = tokio::spawn(relay(
            device,
            upstream,
            Vec::new(),
            Some(mqtt_pipeline(policy)),
            settings(10_000),
            quarantines.clone(),
            Guards::none(),
        ));
        let start = Instant::now();
        while quarantines.0.load(Ordering::SeqCst) == 0 {
            assert!(start.elapsed() < Duration::from_secs(10), "no quarantine");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // The device speaks before the session ends, and has time to be
        // heard.
        device_end
            .write_all(&publish("site/a/telemetry", b"20"))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut delivered = Vec::new();
        device_end.read_to_end(&mut delivered).await.unwrap();
        assert_eq!(delivered, allowed, "what came before the offence arrives");
        let ended = relayed.await.unwrap();
        assert!(
            matches!(ended, Err(RelayError::Enforced { .. })),
            "{ended:?}"
        );
        let mut reached = Vec::new();
        upstream_end.read_to_end(&mut reached).await.unwrap();
        assert!(
            reached.is_empty(),
            "{} bytes from the quarantined device reached the upstream",
            reached.len()
        );
    }

    /// A device whose every read is also the moment another session
    /// quarantines it: the chunk read is judged after the close.
    struct ClosedAsItReads {
        stream: tokio::io::DuplexStream,
        live: LiveSessions,
    }

    impl AsyncRead for ClosedAsItReads {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let before = buf.filled().len();
            let read = Pin::new(&mut self.stream).poll_read(cx, buf);
            if buf.filled().len() > before {
                self.live
                    .close_device("sensor-1", "quarantined by another session");
            }
            read
        }
    }

    impl AsyncWrite for ClosedAsItReads {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bytes: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            Pin::new(&mut self.stream).poll_write(cx, bytes)
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.stream).poll_flush(cx)
        }

        fn poll_shutdown(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.stream).poll_shutdown(cx)
        }
    }

    /// Another session quarantined the device while this one judged what
    /// it had just read: none of it reaches the upstream, though the
    /// policy allows it and the hang-up has not ended this relay yet.
    #[tokio::test]
    async fn nothing_judged_after_the_device_was_closed_reaches_the_upstream() {
        let live = LiveSessions::default();
        let membership = live.join("sensor-1");
        let (device, mut device_end) = tokio::io::duplex(1 << 16);
        let (upstream, mut upstream_end) = tokio::io::duplex(1 << 16);
        device_end
            .write_all(&publish("site/a/telemetry", b"20"))
            .await
            .unwrap();
        drop(device_end);
        let relayed = tokio::spawn(relay(
            ClosedAsItReads {
                stream: device,
                live,
            },
            upstream,
            Vec::new(),
            Some(mqtt_pipeline(
                r#"permit(principal, action in Action::"mqtt", resource);"#,
            )),
            settings(10_000),
            Arc::new(NoEnforcer),
            Guards {
                closed: membership.watch(),
                ..Guards::none()
            },
        ));
        // What the relay forwards it forwards at once: half a second is
        // long.
        let mut reached = vec![0; 1024];
        let read =
            tokio::time::timeout(Duration::from_millis(500), upstream_end.read(&mut reached)).await;
        relayed.abort();
        assert!(
            matches!(read, Err(_) | Ok(Ok(0))),
            "judged after the close, {read:?} bytes reached the upstream"
        );
        assert!(membership.reason().is_some());
    }

    /// Sessions halfway through large frames hold their bytes of one
    /// budget: a session whose frame would take them past it is closed,
    /// and what a session held is given back once its frame has passed.
    #[tokio::test]
    async fn incomplete_frames_count_against_one_budget_for_all_sessions() {
        let budget = BufferBudget::new(64 << 10);
        let (mut a, mut b) = (pump(&budget), pump(&budget));
        let activity = activity();
        let settings = settings(10_000);
        let frame = publish("site/a/blob", &[7; 100 << 10]);
        let (start, rest) = frame.split_at(20 << 10);
        let mut upstream = Vec::new();
        // The relay holds what it read of the frame, and the pipeline the
        // same bytes for the parser.
        (a.forward(&mut upstream, start, &activity, settings).await).unwrap();
        assert_eq!(budget.held(), 40 << 10);
        let over = (b.forward(&mut upstream, start, &activity, settings).await).unwrap_err();
        assert!(
            matches!(
                over,
                RelayError::OverBudget {
                    holding: 40960,
                    held: 40960,
                    max: 65536,
                    ..
                }
            ),
            "{over}"
        );
        (a.forward(&mut upstream, rest, &activity, settings).await).unwrap();
        assert_eq!(upstream, frame);
        assert_eq!(budget.held(), 0, "the frame passed, its bytes given back");
        // A session that ends gives back what it held.
        let mut c = pump(&budget);
        (c.forward(&mut upstream, start, &activity, settings).await).unwrap();
        assert_eq!(budget.held(), 40 << 10);
        drop((b, c));
        assert_eq!(budget.held(), 0);
    }

    /// A device's sessions halfway through large frames hold at most its
    /// share of the budget: past it, the session asking is the device's
    /// own, and another device's sessions still find room. A few devices
    /// used to be able to hold all of it.
    #[tokio::test]
    async fn a_device_holds_at_most_its_share_of_the_budget() {
        let budget = BufferBudget::new(1 << 20);
        let (hoarder, other) = (BufferBudget::new(64 << 10), BufferBudget::new(64 << 10));
        let (mut a, mut b) = (
            device_pump(&budget, &hoarder),
            device_pump(&budget, &hoarder),
        );
        let mut c = device_pump(&budget, &other);
        let activity = activity();
        let settings = settings(10_000);
        let frame = publish("site/a/blob", &[7; 100 << 10]);
        let start = &frame[..20 << 10];
        let mut upstream = Vec::new();
        (a.forward(&mut upstream, start, &activity, settings).await).unwrap();
        let over = (b.forward(&mut upstream, start, &activity, settings).await).unwrap_err();
        assert!(
            matches!(
                over,
                RelayError::DeviceOverBudget {
                    holding: 40960,
                    held: 40960,
                    max: 65536,
                    ..
                }
            ),
            "{over}"
        );
        (c.forward(&mut upstream, start, &activity, settings).await).unwrap();
        assert_eq!((hoarder.held(), other.held()), (40 << 10, 40 << 10));
        assert_eq!(budget.held(), 80 << 10, "the refused one took nothing");
        drop((a, b, c));
        assert_eq!((hoarder.held(), other.held(), budget.held()), (0, 0, 0));
    }

    /// A device that sends the start of a frame and then closes its
    /// sending half: the frame can never end, and while the session goes
    /// on the other way, neither the relay nor the pipeline holds it, and
    /// the budget has it back.
    #[tokio::test]
    async fn a_frame_its_sender_closed_on_is_dropped_at_once() {
        let budget = BufferBudget::new(1 << 20);
        let pump = pump(&budget);
        let pipeline = pump.pipeline.clone().unwrap();
        let frame = publish("site/a/blob", &[7; 100 << 10]);
        let (mut from, mut sender) = tokio::io::duplex(1 << 20);
        sender.write_all(&frame[..20 << 10]).await.unwrap();
        sender.shutdown().await.unwrap();
        let forwarded = pump
            .run(
                &mut from,
                Vec::new(),
                Vec::new(),
                &activity(),
                settings(10_000),
            )
            .await
            .unwrap();
        assert_eq!(forwarded, 0);
        assert_eq!(lock(&pipeline).pending(Direction::ToUpstream), 0);
        assert_eq!(budget.held(), 0);
    }
}
