//! A call's deadline counts the time its thread ran, not the time it waited
//! for a CPU.
//!
//! Deadlines are epoch ticks of the wall clock (one a millisecond, from the
//! runtime's ticker): a plugin checks one at almost no cost. But on a loaded
//! appliance the kernel may take a worker off its CPU mid-call for longer
//! than a deadline. Counted on the wall clock alone, a call of microseconds'
//! work would then miss it and strike its plugin, and a few such strikes
//! disable a fail-closed parser: an outage made by load alone, which an
//! attacker can make with load. So when a call reaches its deadline on the
//! wall clock, [`Overtime::at_deadline`] asks how much CPU time its thread
//! used since the call began; while that is under the deadline the call goes
//! on, for as many ticks as it could still use. A plugin that computes is
//! stopped at its deadline as before; one whose thread was starved gets its
//! time, up to [`STARVED_FACTOR`] times its deadline on the wall clock.
//!
//! Reading a thread's CPU clock is a system call (a third of a microsecond
//! on the development machine), dear beside a call of a few microseconds:
//! a thread reads it at the start of a call at most once a tick (checked on
//! the monotonic clock, which costs a tenth of that), and a call's use is
//! counted from that reading, which is at most a tick older than the call.
//! A call is charged at most a tick more than it used.

use std::cell::Cell;
use std::time::{Duration, Instant};

use rustix::time::{ClockId, clock_gettime};
use wasmtime::UpdateDeadline;

/// How often the epoch ticks; deadlines are counted in ticks.
pub(crate) const TICK: Duration = Duration::from_millis(1);

/// However starved its thread, a call ends within this many times its
/// deadline on the wall clock.
pub const STARVED_FACTOR: u64 = 100;

thread_local! {
    /// The thread's CPU time, and when it was read.
    static READING: Cell<Option<(Instant, Duration)>> = const { Cell::new(None) };
}

/// `duration` in whole ticks, rounded up, at least one.
pub(crate) fn ticks(duration: Duration) -> u64 {
    let ticks = duration.as_nanos().div_ceil(TICK.as_nanos()).max(1);
    u64::try_from(ticks).unwrap_or(u64::MAX)
}

/// The CPU time the calling thread has used.
fn thread_cpu() -> Duration {
    let t = clock_gettime(ClockId::ThreadCPUTime);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

/// A call's account of its time past the deadline.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Overtime {
    /// The thread's CPU time when the call began (at most a tick before).
    started: Duration,
    /// Ticks the call was given past its deadline.
    granted: u64,
}

impl Overtime {
    /// The account of a call beginning now on this thread.
    pub(crate) fn begin() -> Overtime {
        let now = Instant::now();
        let started = READING.with(|reading| match reading.get() {
            Some((at, cpu)) if now.duration_since(at) < TICK => cpu,
            _ => {
                let cpu = thread_cpu();
                reading.set(Some((now, cpu)));
                cpu
            }
        });
        Overtime {
            started,
            granted: 0,
        }
    }

    /// The call reached its deadline on the wall clock (`deadline`, or
    /// the ticks granted since): stop it if it ran that long, else let it
    /// go on for the CPU time it has left, and no further than
    /// [`STARVED_FACTOR`] times its deadline.
    pub(crate) fn at_deadline(&mut self, deadline: Duration) -> UpdateDeadline {
        let used = thread_cpu().saturating_sub(self.started);
        let cap = ticks(deadline).saturating_mul(STARVED_FACTOR - 1);
        if used >= deadline || self.granted >= cap {
            return UpdateDeadline::Interrupt;
        }
        let more = ticks(deadline.saturating_sub(used)).min(cap - self.granted);
        self.granted += more;
        UpdateDeadline::Continue(more)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::plugins::{Direction, Limits, first_party};
    use crate::session::testing::{publish, runtime, session};

    fn burn(d: Duration) {
        let start = thread_cpu();
        while thread_cpu() - start < d {}
    }

    #[test]
    fn a_call_that_computes_is_stopped_and_one_kept_waiting_goes_on() {
        let deadline = Duration::from_millis(20);
        // Ran its deadline: stopped.
        let mut overtime = Overtime::begin();
        burn(deadline);
        assert!(matches!(
            overtime.at_deadline(deadline),
            UpdateDeadline::Interrupt
        ));
        // Kept off the CPU (asleep stands for it): it goes on for the time
        // it has left, and again, until its wall-clock cap.
        let mut overtime = Overtime::begin();
        std::thread::sleep(deadline);
        let UpdateDeadline::Continue(more) = overtime.at_deadline(deadline) else {
            panic!("a call that used no CPU time was stopped");
        };
        assert!((18..=20).contains(&more), "{more}");
        let mut granted = more;
        while let UpdateDeadline::Continue(more) = overtime.at_deadline(deadline) {
            granted += more;
        }
        assert_eq!(granted, 20 * (STARVED_FACTOR - 1));
    }

    /// A parser whose call's thread, at nice 19, shares one CPU with a busy
    /// thread at the test's own nice (0 under CI: 68 times the weight): its
    /// call of several milliseconds outlasts a slice of the CPU, waits for
    /// the next, and takes longer than its deadline on the wall clock. It is
    /// not struck for it.
    #[test]
    fn a_call_starved_of_cpu_is_not_struck() {
        let runtime = runtime();
        let limits = Limits {
            deadline_ms: 30,
            max_strikes: 1,
            ..Limits::default()
        };
        let mqtt = runtime
            .load("mqtt", first_party::component("mqtt").unwrap(), limits)
            .unwrap();
        let session = session();
        // About ten milliseconds of work: PUBLISH frames, as a client sends.
        let frame = publish("site/a/telemetry", &[7u8; 90]);
        let chunk: Vec<u8> = frame.repeat((512 << 10) / frame.len());
        let parse = || mqtt.parse(&session, Direction::ToUpstream, &[4], &chunk);
        let alone = Instant::now();
        parse().unwrap();
        let alone = alone.elapsed();

        let mut cpu = rustix::thread::CpuSet::new();
        cpu.set(rustix::thread::sched_getcpu());
        let pin = move || rustix::thread::sched_setaffinity(None, &cpu).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let spinning = Arc::new(AtomicBool::new(false));
        let spinner = {
            let (stop, spinning) = (stop.clone(), spinning.clone());
            std::thread::spawn(move || {
                pin();
                spinning.store(true, Ordering::Relaxed);
                while !stop.load(Ordering::Relaxed) {}
            })
        };
        while !spinning.load(Ordering::Relaxed) {
            std::thread::yield_now();
        }
        let (parsed, took) = std::thread::scope(|s| {
            s.spawn(|| {
                pin();
                rustix::process::setpriority_process(Some(rustix::thread::gettid()), 19).unwrap();
                let start = Instant::now();
                let parsed = parse();
                (parsed.map(|p| p.events.len()), start.elapsed())
            })
            .join()
            .unwrap()
        });
        stop.store(true, Ordering::Relaxed);
        spinner.join().unwrap();
        assert!(
            parsed.is_ok(),
            "{parsed:?} after {took:?} (alone: {alone:?})"
        );
        // The case this is about: past the deadline on the wall clock.
        assert!(
            took > Duration::from_millis(10),
            "{took:?}, alone {alone:?}"
        );
    }
}
