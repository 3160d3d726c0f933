//! Relaying one session: bytes both ways between a device and its
//! upstream, each direction through the route's parser.
//!
//! Each direction reads one chunk, hands it to the [`Pipeline`], and writes
//! to the other side exactly the bytes of the complete frames the parser
//! cut, in order; the bytes of an incomplete frame wait for the next chunk.
//! A direction does not read again before its write finished: a slow
//! reader slows its writer down (backpressure), and a session holds at most
//! one chunk and one incomplete frame per direction. A malformed stream
//! ends the session after the frames before the fault; a fail-closed plugin
//! failure ends it before any frame of the chunk is forwarded.
//!
//! Plugin calls are synchronous (wasmtime, microseconds, bounded by a 50 ms
//! deadline). On the multi-threaded runtime they run inside
//! [`tokio::task::block_in_place`], so that a slow call costs its own
//! session, never the other sessions of the same worker thread.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{Inspected, Pipeline, PipelineError};
use crate::plugins::Direction;

/// Bounds of one relayed session.
#[derive(Debug, Clone, Copy)]
pub struct RelaySettings {
    /// Silence both ways, or a write blocked, for this long closes the
    /// session.
    pub idle: Duration,
    /// Bytes read at once.
    pub chunk: usize,
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
    /// Nothing moved either way for the idle timeout.
    #[error("idle for {0:?}")]
    Idle(Duration),
    /// A write to one side stayed blocked for the idle timeout.
    #[error("{0} stopped reading for {1:?}")]
    Stalled(Side, Duration),
}

/// How many bytes of frames a session forwarded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Forwarded {
    /// Bytes from the device to the upstream.
    pub to_upstream: u64,
    /// Bytes from the upstream to the device.
    pub to_device: u64,
}

/// When the session last moved a byte either way.
#[derive(Debug)]
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
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
/// something ends the session. With `pipeline`, only the bytes of the
/// frames its parser cut are forwarded; without, bytes pass uninspected.
pub async fn relay<D, U>(
    device: D,
    upstream: U,
    pipeline: Option<Pipeline>,
    settings: RelaySettings,
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
    };
    let up = pump(
        device_read,
        upstream_write,
        Direction::ToUpstream,
        pipeline.clone(),
        &activity,
        settings,
    );
    let down = pump(
        upstream_read,
        device_write,
        Direction::ToDevice,
        pipeline,
        &activity,
        settings,
    );
    let (to_upstream, to_device) = tokio::try_join!(up, down)?;
    Ok(Forwarded {
        to_upstream,
        to_device,
    })
}

fn name(direction: Direction) -> &'static str {
    match direction {
        Direction::ToUpstream => "device-to-upstream",
        Direction::ToDevice => "upstream-to-device",
    }
}

/// One direction: read, inspect, forward the frames, until end of stream.
/// At end of stream the write side is shut down (a half-close), and the
/// other direction carries on until its own end.
async fn pump<R, W>(
    mut from: R,
    mut to: W,
    direction: Direction,
    pipeline: Option<Arc<Mutex<Pipeline>>>,
    activity: &Activity,
    settings: RelaySettings,
) -> Result<u64, RelayError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (reader, writer) = match direction {
        Direction::ToUpstream => (Side::Device, Side::Upstream),
        Direction::ToDevice => (Side::Upstream, Side::Device),
    };
    let mut chunk = vec![0u8; settings.chunk.max(1)];
    // Bytes read but not yet forwarded: the start of an incomplete frame.
    // The pipeline bounds it by refusing frames over its limit.
    let mut held: Vec<u8> = Vec::new();
    let mut forwarded = 0u64;
    loop {
        let n = match tokio::time::timeout(settings.idle, from.read(&mut chunk)).await {
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
                // The peer may already be gone; its own direction reports it.
                let _ = to.shutdown().await;
                return Ok(forwarded);
            }
            Ok(Ok(n)) => n,
        };
        activity.touch();
        let bytes = chunk.get(..n).unwrap_or_default();
        let Some(pipeline) = &pipeline else {
            write(&mut to, bytes, writer, settings.idle).await?;
            forwarded += n as u64;
            continue;
        };
        held.extend_from_slice(bytes);
        let inspected =
            inspect(pipeline, direction, bytes).map_err(|source| RelayError::Pipeline {
                direction: name(direction),
                source,
            })?;
        if inspected.blocked {
            let reason: Vec<String> = inspected.errors.iter().map(ToString::to_string).collect();
            return Err(RelayError::Blocked {
                direction: name(direction),
                reason: reason.join("; "),
            });
        }
        // The frames are consecutive and start at the first held byte: the
        // pipeline cuts them from the front of what it was given, and it was
        // given exactly what `held` holds.
        let frames: usize = inspected.spans.iter().map(|s| s.len as usize).sum();
        let frames = frames.min(held.len());
        if frames > 0 {
            write(
                &mut to,
                held.get(..frames).unwrap_or_default(),
                writer,
                settings.idle,
            )
            .await?;
            held.drain(..frames);
            forwarded += frames as u64;
        }
        if let Some(m) = inspected.malformed {
            return Err(RelayError::Malformed {
                direction: name(direction),
                reason: m.reason,
            });
        }
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

/// Run the pipeline on `bytes`, off the reactor where the runtime allows.
fn inspect(
    pipeline: &Mutex<Pipeline>,
    direction: Direction,
    bytes: &[u8],
) -> Result<Inspected, PipelineError> {
    let call = || {
        pipeline
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(direction, bytes)
    };
    let multi_thread = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if multi_thread {
        tokio::task::block_in_place(call)
    } else {
        call()
    }
}
