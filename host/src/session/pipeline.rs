//! The inspection pipeline of one session: bytes in, judged frames out.
//!
//! For each direction the pipeline holds what a session needs to continue
//! on any parser instance or version: the bytes not yet cut into frames and
//! the parser's state. A chunk of bytes goes to the parser in one call
//! (none while the parser said the frame it waits for needs more bytes
//! than came); the events of its complete frames go to every detector in
//! one batch; the findings go to every responder. Nothing here touches a
//! socket.
//!
//! Each plugin is read from its [`Slot`] at every chunk, so a version an
//! operator activates takes over at the next frame boundary; a shadow in a
//! slot gets the same input and its results are only compared.

use std::collections::HashMap;
use std::sync::Arc;

use crate::plugins::{
    Action, Batch, CallError, Direction, EventRef, FailMode, Finding, Malformed, Parsed, Plugin,
    Session, Slot, WireBatch, log_line,
};
use crate::policy::vocabulary::CHANGES_SESSION;
use crate::policy::{Decision, Policy, PolicyEngine, Response, Subject};

/// The name findings and actions of the policy carry, where a plugin's
/// name would be.
pub const POLICY: &str = "policy";

/// Why the pipeline cannot go on with a session. The session must close;
/// no further frame of it is forwarded.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The parser failed and its fail mode closes the session.
    #[error(transparent)]
    Parser(CallError),
    /// The peer sent a frame larger than the pipeline buffers.
    #[error("frame larger than {limit} bytes")]
    FrameTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
}

/// Where one complete frame lies in its direction's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameSpan {
    /// Offset of the frame's first byte in this direction's stream.
    pub offset: u64,
    /// Length of the frame in bytes.
    pub len: u32,
}

/// What one chunk of bytes became.
#[derive(Debug)]
pub struct Inspected {
    /// Where each complete frame lies, in order.
    pub spans: Vec<FrameSpan>,
    /// The frames' events: event `i` describes `spans[i]`. When the parser
    /// reported the stream malformed, one more event follows them, of kind
    /// `PROTOCOL.malformed` with the `offset` (in this direction's stream)
    /// and `reason`, so detectors judge it too; it describes no frame.
    pub batch: Batch,
    /// Findings, with the name of the detector that raised them; the event
    /// index refers to `batch`.
    pub findings: Vec<(String, Finding)>,
    /// Actions the responders asked for, with the responder's name.
    pub actions: Vec<(String, Action)>,
    /// Set when the stream cannot be followed any more; the offset is
    /// relative to the first frame of this chunk. The session must close
    /// after the frames before it. (A malformed datagram spoils only
    /// itself: see [`Pipeline::push_datagram`].)
    pub malformed: Option<Malformed>,
    /// Detectors and responders that failed on this chunk.
    pub errors: Vec<CallError>,
    /// Set when a fail-closed detector or responder failed: the frames must
    /// not be forwarded.
    pub blocked: bool,
    /// Set (to the limit) when what follows the frames starts a frame
    /// larger than the pipeline buffers: the session must close after the
    /// frames, which are whole and judged.
    pub oversize: Option<usize>,
}

/// What the host does with one chunk's frames, from the actions asked for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Verdict {
    /// Per frame, whether it is forwarded.
    pub forward: Vec<bool>,
    /// Set when the session must close after the forwarded frames before
    /// `cut` (no frame from `cut` on is forwarded), with why.
    pub close: Option<(usize, String)>,
    /// Whether the device is to be quarantined.
    pub quarantine: bool,
}

impl Inspected {
    /// The frames with their events.
    pub fn frames(&self) -> impl Iterator<Item = (FrameSpan, EventRef<'_>)> {
        self.spans.iter().copied().zip(self.batch.iter())
    }

    /// What to do with the frames. A dropped frame is not forwarded and the
    /// session goes on. A close or a quarantine forwards nothing from the
    /// first frame any finding is about: the offending frame never lands,
    /// and what came before it in the chunk still does, except that a
    /// quarantine stops what goes to the upstream at once (the relay
    /// halts that direction before it writes, so that no write waiting on
    /// the upstream holds the quarantine back).
    pub fn verdict(&self) -> Verdict {
        let mut forward = vec![true; self.spans.len()];
        let mut close = false;
        let mut quarantine = false;
        // The first dropped frame that the receiver's state depends on:
        // the session closes there instead.
        let mut out_of_step: Option<u32> = None;
        for (_, action) in &self.actions {
            match action {
                Action::DropFrame(i) => {
                    if let Some(f) = forward.get_mut(*i as usize) {
                        *f = false;
                    }
                    let changes = (self.batch.get(*i as usize))
                        .and_then(|e| e.flag(CHANGES_SESSION))
                        .unwrap_or(false);
                    if changes && out_of_step.is_none_or(|first| *i < first) {
                        out_of_step = Some(*i);
                    }
                }
                Action::CloseSession => close = true,
                Action::QuarantineDevice => (close, quarantine) = (true, true),
                Action::Allow | Action::Alert(_) => {}
            }
        }
        let close = if close {
            let first = self.findings.iter().min_by_key(|(_, f)| f.event);
            let cut = first.map_or(0, |(_, f)| f.event as usize);
            let cut = out_of_step.map_or(cut, |i| cut.min(i as usize));
            // The reason is a plugin's text, and the appliance logs it as
            // the session's close reason (and every other session's of a
            // quarantined device): escaped, so it stays one line.
            let reason = first.map_or_else(
                || "a responder closed it".to_owned(),
                |(by, f)| format!("{by}: {}", log_line(&f.reason)),
            );
            Some((cut.min(forward.len()), reason))
        } else {
            out_of_step.map(|i| {
                let reason = format!(
                    "frame {i} was dropped, and the peer keeps state it sets for the session"
                );
                ((i as usize).min(forward.len()), reason)
            })
        };
        Verdict {
            forward,
            close,
            quarantine,
        }
    }
}

#[derive(Debug, Default)]
struct Stream {
    pending: Vec<u8>,
    offset: u64,
    /// The length `pending` must reach before the parser is called again:
    /// the parser said how many more bytes its next frame needs, and with
    /// fewer no frame can be cut. A peer that trickles a large frame byte
    /// by byte would otherwise cost a copy of all of `pending` into the
    /// plugin, and a call, per byte. Zero when the parser did not say.
    parse_at: usize,
}

impl Stream {
    /// Forget what the parser said the next frame needs: the session
    /// state it said it with has changed.
    fn reconsider(&mut self) {
        self.parse_at = 0;
    }
}

/// The pipeline of one session.
#[derive(Debug)]
pub struct Pipeline {
    session: Session,
    parser: Slot,
    detectors: Vec<Slot>,
    responders: Vec<Slot>,
    max_frame: usize,
    streams: [Stream; 2],
    /// The parser's state, one for both directions: a response is matched
    /// with its request.
    state: Vec<u8>,
    gate: Option<Gate>,
}

/// The policy as one session sees it: the subject is made once per policy
/// version, and made again when a reload replaced the policy.
#[derive(Debug)]
struct Gate {
    engine: PolicyEngine,
    role: Option<String>,
    protocol: String,
    current: Option<(Arc<Policy>, Subject)>,
    /// Decisions of the current policy by [`Policy::event_key`]: a device
    /// repeats itself (the same topics, the same registers), and a repeated
    /// event costs a lookup instead of an evaluation.
    decisions: HashMap<Vec<u8>, Decision>,
    /// Bytes of the keys in `decisions`.
    decision_bytes: usize,
    key: Vec<u8>,
    /// The key of the last event allowed, empty when there is none.
    last_allowed: Vec<u8>,
}

/// Decisions a session keeps; past this many the cache starts afresh.
const DECISIONS: usize = 256;

/// Bytes of keys a session's decisions hold at most; past this the cache
/// starts afresh. A key holds the values the policy reads (a topic, a
/// path, a few numbers): some 100 bytes for the usual event, so 256 of
/// them fit, while a peer sending long ones pins no more than this.
const DECISION_BYTES: usize = 32 << 10;

/// An event whose key is longer than this (a long path, topic or query)
/// is decided every time, not kept: its decision would pin its values, and
/// a device rarely repeats such an event.
const CACHED_KEY: usize = 1 << 10;

impl Gate {
    fn policy(&mut self, session: &Session) {
        let active = self.engine.active();
        let stale = (self.current.as_ref()).is_none_or(|(p, _)| !Arc::ptr_eq(p, &active));
        if stale {
            self.decisions.clear();
            self.decision_bytes = 0;
            self.last_allowed.clear();
            let subject = active.subject(
                &session.device,
                self.role.as_deref(),
                &session.route,
                &self.protocol,
            );
            self.current = Some((active, subject));
        }
    }
}

impl Pipeline {
    /// A pipeline for `session` that buffers at most `max_frame` bytes of an
    /// incomplete frame, with plugins of its own (each in a slot of its own;
    /// see [`Pipeline::with_slots`] for plugins an operator swaps).
    pub fn new(
        session: Session,
        parser: Plugin,
        detectors: Vec<Plugin>,
        responders: Vec<Plugin>,
        max_frame: usize,
    ) -> Self {
        let slots = |plugins: Vec<Plugin>| plugins.into_iter().map(Slot::new).collect();
        Pipeline::with_slots(
            session,
            Slot::new(parser),
            slots(detectors),
            slots(responders),
            max_frame,
        )
    }

    /// A pipeline that reads its plugins from `slots` at every chunk, so
    /// versions activated in them serve it from the next frame boundary.
    pub fn with_slots(
        session: Session,
        parser: Slot,
        detectors: Vec<Slot>,
        responders: Vec<Slot>,
        max_frame: usize,
    ) -> Self {
        Pipeline {
            session,
            parser,
            detectors,
            responders,
            max_frame,
            streams: Default::default(),
            state: Vec::new(),
            gate: None,
        }
    }

    /// Judge every event with the policy of `engine` first: a denied
    /// event's frame is dropped, and the policy's `@response` may close the
    /// session or quarantine the device. `role` is the Modbus/TCP Security
    /// role of the device's certificate, `protocol` the route's.
    pub fn with_policy(
        mut self,
        engine: PolicyEngine,
        role: Option<String>,
        protocol: &str,
    ) -> Self {
        self.gate = Some(Gate {
            engine,
            role,
            protocol: protocol.to_owned(),
            current: None,
            decisions: HashMap::new(),
            decision_bytes: 0,
            key: Vec::new(),
            last_allowed: Vec::new(),
        });
        self
    }

    /// The session the pipeline inspects.
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// Drop the bytes of `direction` not yet cut into frames: its sender
    /// closed, and the frame they began can never end.
    pub fn end(&mut self, direction: Direction) {
        let stream = self.stream_mut(direction);
        stream.pending = Vec::new();
        stream.parse_at = 0;
    }

    /// Bytes of `direction` received but not yet cut into frames.
    pub fn pending(&self, direction: Direction) -> usize {
        self.stream(direction).pending.len()
    }

    /// Give back the memory a large frame of `direction` left: once the
    /// bytes pending fit in `keep` (the caller's read chunk, say), a buffer
    /// grown to over four times that shrinks to them. A buffer of the size
    /// reads bring is kept, so a busy session does not reallocate.
    pub fn shrink(&mut self, direction: Direction, keep: usize) {
        shrink(&mut self.stream_mut(direction).pending, keep);
    }

    /// The capacity of `direction`'s buffer of pending bytes.
    #[cfg(test)]
    pub(super) fn pending_capacity(&self, direction: Direction) -> usize {
        self.stream(direction).pending.capacity()
    }

    fn stream(&self, direction: Direction) -> &Stream {
        let [up, down] = &self.streams;
        match direction {
            Direction::ToUpstream => up,
            Direction::ToDevice => down,
        }
    }

    fn stream_mut(&mut self, direction: Direction) -> &mut Stream {
        let [up, down] = &mut self.streams;
        match direction {
            Direction::ToUpstream => up,
            Direction::ToDevice => down,
        }
    }

    /// How many bytes the parser is given if `arriving` more bytes arrive
    /// in `direction`; `None` when it is not called, because they cannot
    /// complete the frame it waits for.
    pub fn parser_input(&self, direction: Direction, arriving: usize) -> Option<usize> {
        let stream = self.stream(direction);
        let input = stream.pending.len().saturating_add(arriving);
        (input >= stream.parse_at).then_some(input)
    }

    /// Inspect `bytes` arriving in `direction`.
    pub fn push(&mut self, direction: Direction, bytes: &[u8]) -> Result<Inspected, PipelineError> {
        let [up, down] = &mut self.streams;
        let (stream, other) = match direction {
            Direction::ToUpstream => (up, down),
            Direction::ToDevice => (down, up),
        };
        stream.pending.extend_from_slice(bytes);
        if stream.pending.len() < stream.parse_at {
            // Whichever version is active then, and its shadow, are called
            // when the bytes the frame needs are in.
            return Ok(framed(&self.parser, stream.offset, Parsed::new(Vec::new())));
        }
        let mut parsed = self
            .parser
            .active()
            .parse(&self.session, direction, &self.state, &stream.pending)
            .map_err(PipelineError::Parser)?;
        if let Some(shadow) = self.parser.shadow() {
            let theirs = shadow.parse(&self.session, direction, &self.state, &stream.pending);
            compare_parsed(&self.parser, &parsed, theirs);
        }
        // The runtime checked that the frames lie inside the input, one
        // event each.
        let consumed = parsed.consumed();
        let needed = parsed.needed;
        if parsed.state != self.state {
            // What the parser said the other direction's next frame needs
            // may depend on the state it had then.
            other.reconsider();
        }
        self.state = std::mem::take(&mut parsed.state);
        let mut inspected = framed(&self.parser, stream.offset, parsed);
        stream.pending.drain(..consumed);
        stream.offset += consumed as u64;
        stream.parse_at = 0;
        if inspected.malformed.is_none() {
            let next = stream
                .pending
                .len()
                .saturating_add(needed.map_or(0, |n| n as usize));
            if next > self.max_frame {
                if inspected.spans.is_empty() {
                    return Err(PipelineError::FrameTooLarge {
                        limit: self.max_frame,
                    });
                }
                inspected.oversize = Some(self.max_frame);
            } else if needed.is_some() {
                stream.parse_at = next;
            }
        }
        self.enforce_policy(direction, &mut inspected);
        self.judge(&mut inspected);
        Ok(inspected)
    }

    /// Inspect `datagram`, one whole datagram arriving in `direction` over
    /// a datagram transport (CoAP over UDP, say). Its frame, when the
    /// parser made one, is the whole datagram; offsets count the bytes of
    /// this direction's datagrams so far.
    ///
    /// A malformed datagram is reported in [`Inspected::malformed`], with
    /// its event, as for a stream; but it spoils that datagram only, since
    /// the next one is parsed afresh: whether the session goes on is the
    /// caller's choice.
    pub fn push_datagram(
        &mut self,
        direction: Direction,
        datagram: &[u8],
    ) -> Result<Inspected, PipelineError> {
        if datagram.len() > self.max_frame {
            return Err(PipelineError::FrameTooLarge {
                limit: self.max_frame,
            });
        }
        let mut parsed = self
            .parser
            .active()
            .parse_datagram(&self.session, direction, &self.state, datagram)
            .map_err(PipelineError::Parser)?;
        if let Some(shadow) = self.parser.shadow() {
            let theirs = shadow.parse_datagram(&self.session, direction, &self.state, datagram);
            compare_parsed(&self.parser, &parsed, theirs);
        }
        if parsed.state != self.state {
            self.streams.iter_mut().for_each(Stream::reconsider);
        }
        let [up, down] = &mut self.streams;
        let stream = match direction {
            Direction::ToUpstream => up,
            Direction::ToDevice => down,
        };
        // The runtime checked that the frame, if any, is the datagram.
        self.state = std::mem::take(&mut parsed.state);
        let mut inspected = framed(&self.parser, stream.offset, parsed);
        stream.offset += datagram.len() as u64;
        self.enforce_policy(direction, &mut inspected);
        self.judge(&mut inspected);
        Ok(inspected)
    }

    /// Decide each frame's event with the policy.
    fn enforce_policy(&mut self, direction: Direction, inspected: &mut Inspected) {
        let Some(gate) = self.gate.as_mut() else {
            return;
        };
        gate.policy(&self.session);
        let Gate {
            current: Some((policy, subject)),
            decisions,
            decision_bytes,
            key,
            last_allowed,
            ..
        } = gate
        else {
            return;
        };
        let names = policy.key_names(inspected.batch.columns());
        // The malformed event that may follow the frames describes none.
        for event in inspected.batch.iter().take(inspected.spans.len()) {
            policy.event_key(direction, event, &names, key);
            // A device mostly sends what it sent just before.
            if key == last_allowed {
                continue;
            }
            let cached = (key.len() <= CACHED_KEY)
                .then(|| decisions.get(key.as_slice()))
                .flatten();
            let decision = match cached {
                Some(d) if d.allowed => None,
                Some(d) => Some(d.clone()),
                None => {
                    let d = policy.event(subject, direction, event);
                    if key.len() <= CACHED_KEY {
                        let bytes = *decision_bytes + key.len();
                        if decisions.len() >= DECISIONS || bytes > DECISION_BYTES {
                            decisions.clear();
                            *decision_bytes = 0;
                        }
                        *decision_bytes += key.len();
                        decisions.insert(key.clone(), d.clone());
                    }
                    (!d.allowed).then_some(d)
                }
            };
            let Some(decision) = decision else {
                if key.len() <= CACHED_KEY {
                    std::mem::swap(key, last_allowed);
                }
                continue;
            };
            let index = event.index() as u32;
            let reason = format!("{} denied: {}", event.kind(), decision.reason);
            inspected.findings.push((
                POLICY.to_owned(),
                Finding {
                    event: index,
                    severity: decision.severity,
                    score: 1.0,
                    reason,
                },
            ));
            let mut act = |a| inspected.actions.push((POLICY.to_owned(), a));
            act(Action::DropFrame(index));
            match decision.response {
                Response::DropFrame => {}
                Response::CloseSession => act(Action::CloseSession),
                Response::QuarantineDevice => act(Action::QuarantineDevice),
            }
        }
        // A long key grew the buffers it went through: they give the
        // memory back (`last_allowed` holds a short key at most).
        key.clear();
        for buffer in [key, last_allowed] {
            if buffer.capacity() > 2 * CACHED_KEY {
                buffer.shrink_to(CACHED_KEY);
            }
        }
    }

    fn judge(&self, inspected: &mut Inspected) {
        let responding = !(self.responders.is_empty() || inspected.findings.is_empty());
        if inspected.batch.is_empty() || (self.detectors.is_empty() && !responding) {
            return;
        }
        // Every detector and responder reads the batch as the contract's
        // columns: it is moved into them once for all, and back after.
        let batch = WireBatch::from(std::mem::take(&mut inspected.batch));
        self.judge_columns(&batch, inspected);
        inspected.batch = batch.into_batch();
    }

    fn judge_columns(&self, batch: &WireBatch, inspected: &mut Inspected) {
        for slot in &self.detectors {
            // A shadow goes first, so both read the store as it was.
            let theirs = slot.shadow().map(|s| s.detect(&self.session, batch));
            let detector = slot.active();
            let ours = detector.detect(&self.session, batch);
            if let (Some(theirs), Ok(ours)) = (theirs, &ours) {
                compare(slot, ours, theirs, |f| (f.event, f.severity as u8));
            }
            match ours {
                Ok(found) => inspected
                    .findings
                    .extend(found.into_iter().map(|f| (detector.name().to_owned(), f))),
                Err(e) => inspected.fail(&detector, e),
            }
        }
        if inspected.findings.is_empty() {
            return;
        }
        let findings: Vec<Finding> = inspected.findings.iter().map(|(_, f)| f.clone()).collect();
        for slot in &self.responders {
            let theirs = (slot.shadow()).map(|s| s.respond(&self.session, batch, &findings));
            let responder = slot.active();
            let ours = responder.respond(&self.session, batch, &findings);
            if let (Some(theirs), Ok(ours)) = (theirs, &ours) {
                compare(slot, ours, theirs, |a| format!("{a:?}"));
            }
            match ours {
                Ok(actions) => inspected.actions.extend(
                    actions
                        .into_iter()
                        .map(|a| (responder.name().to_owned(), a)),
                ),
                Err(e) => inspected.fail(&responder, e),
            }
        }
    }
}

/// Shrink `buffer` to its bytes when they fit in `keep` and it holds over
/// four times that: what a large frame grew it to.
pub(super) fn shrink(buffer: &mut Vec<u8>, keep: usize) {
    if buffer.len() <= keep && buffer.capacity() / 4 > keep {
        buffer.shrink_to_fit();
    }
}

/// The frames of a parser's result, from `offset` in their direction,
/// with the malformed event after them when the parser reported one.
fn framed(parser: &Slot, offset: u64, parsed: Parsed) -> Inspected {
    let mut end = offset;
    let spans = (parsed.frame_lengths.iter())
        .map(|&len| {
            let span = FrameSpan { offset: end, len };
            end += u64::from(len);
            span
        })
        .collect();
    let mut inspected = Inspected {
        spans,
        batch: parsed.events,
        findings: Vec::new(),
        actions: Vec::new(),
        malformed: parsed.malformed,
        errors: Vec::new(),
        blocked: false,
        oversize: None,
    };
    // The runtime checked that the parser's tables leave room for the
    // kind and the two fields written here (`MAX_TABLE_ENTRIES`); were
    // they full, the event is left out rather than the batch overflowed.
    let room = |len: usize| len <= palisade_plugin_sdk::MAX_TABLE_ENTRIES;
    let columns = inspected.batch.columns();
    let room = room(columns.kinds.len()) && room(columns.fields.len());
    if let Some(m) = inspected.malformed.as_ref().filter(|_| room) {
        let protocol = (parser.active().protocol()).unwrap_or_else(|_| "unknown".into());
        inspected
            .batch
            .push(&format!("{}.malformed", log_line(&protocol)))
            .int(
                "offset",
                i64::try_from(offset + u64::from(m.offset)).unwrap_or(i64::MAX),
            )
            .text("reason", &m.reason);
    }
    inspected
}

impl Inspected {
    fn fail(&mut self, plugin: &Plugin, error: CallError) {
        if plugin.limits().fail_mode == FailMode::Closed {
            self.blocked = true;
        }
        self.errors.push(error);
    }
}

/// Compare a shadow parser's result with the active one's.
fn compare_parsed(slot: &Slot, ours: &Parsed, theirs: Result<Parsed, CallError>) {
    let difference = match &theirs {
        Err(_) => None,
        Ok(t) if t.frame_lengths != ours.frame_lengths => Some(format!(
            "frames of {:?} bytes, not {:?}",
            t.frame_lengths, ours.frame_lengths
        )),
        Ok(t) => (t.events.iter().zip(ours.events.iter()))
            .find(|(t, o)| t != o)
            .map(|(t, o)| format!("event {} is `{t}`, not `{o}`", o.index()))
            .or_else(|| {
                (t.malformed != ours.malformed)
                    .then(|| format!("malformed {:?}, not {:?}", t.malformed, ours.malformed))
            }),
    };
    slot.record_shadow(difference, theirs.is_err());
}

/// Compare a shadow's results with the active plugin's, item by item as
/// `key` sees them.
fn compare<T, K: PartialEq + std::fmt::Debug>(
    slot: &Slot,
    ours: &[T],
    theirs: Result<Vec<T>, CallError>,
    key: impl Fn(&T) -> K,
) {
    let difference = theirs.as_ref().ok().and_then(|theirs| {
        let (o, t): (Vec<K>, Vec<K>) = (
            ours.iter().map(&key).collect(),
            theirs.iter().map(&key).collect(),
        );
        (o != t).then(|| format!("{t:?}, not {o:?}"))
    });
    slot.record_shadow(difference, theirs.is_err());
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use crate::plugins::Severity;
    use crate::session::testing::{mqtt, publish, runtime, session};

    /// The frames of both directions' streams, pushed `chunk` bytes at a
    /// time, one direction's chunk then the other's; each with its
    /// direction and the length of its stream pushed when it came out.
    /// `between` is called after each chunk with how many bytes of the
    /// device's stream were pushed.
    fn frames(
        pipeline: &mut Pipeline,
        streams: [&[u8]; 2],
        chunk: usize,
        mut between: impl FnMut(usize),
    ) -> Vec<(Direction, usize, FrameSpan, String)> {
        let mut out = Vec::new();
        let mut pushed = [0; 2];
        let directions = [Direction::ToUpstream, Direction::ToDevice];
        while pushed != [streams[0].len(), streams[1].len()] {
            for i in 0..2 {
                if pushed[i] == streams[i].len() {
                    continue;
                }
                let end = (pushed[i] + chunk).min(streams[i].len());
                let inspected = pipeline
                    .push(directions[i], &streams[i][pushed[i]..end])
                    .unwrap();
                pushed[i] = end;
                for (span, event) in inspected.frames() {
                    out.push((directions[i], end, span, event.to_string()));
                }
            }
            between(pushed[0]);
        }
        out
    }

    /// A device that starts a large frame and sends it a byte at a time
    /// costs a parser call per byte no longer, in either direction: the
    /// parser said how many bytes the frame needs. A version swapped in
    /// mid-frame, and the shadow, take over that promise; each frame comes
    /// out on the byte that completes it, as it would in one chunk.
    #[test]
    fn a_frame_trickled_byte_by_byte_is_parsed_a_few_times_not_once_a_byte() {
        let runtime = runtime();
        let up = [publish("site/a/blob", &[7; 16 << 10]), publish("a/t", b"1")].concat();
        let down = [publish("site/a/cmd", &[8; 12 << 10]), publish("a/c", b"2")].concat();

        let mut whole = Pipeline::new(session(), mqtt(&runtime), vec![], vec![], 1 << 18);
        let expected = frames(&mut whole, [&up, &down], up.len().max(down.len()), |_| {});
        assert_eq!(expected.len(), 4);

        let (first, second, shadow) = (mqtt(&runtime), mqtt(&runtime), mqtt(&runtime));
        let slot = Slot::new(first.clone());
        slot.set_shadow(Some(shadow.clone())).unwrap();
        let mut trickled = Pipeline::with_slots(session(), slot.clone(), vec![], vec![], 1 << 18);
        let got = frames(&mut trickled, [&up, &down], 1, |pushed| {
            if pushed == 8 << 10 {
                slot.activate(second.clone()).unwrap();
            }
        });
        // In each direction's order.
        let without_ends = |f: &[(Direction, usize, FrameSpan, String)]| {
            let mut f: Vec<_> = (f.iter())
                .map(|(d, _, span, e)| (*d as u8, span.offset, span.len, e.clone()))
                .collect();
            f.sort();
            f
        };
        assert_eq!(without_ends(&got), without_ends(&expected));
        for (direction, end, span, _) in &got {
            assert_eq!(
                *end as u64,
                span.offset + u64::from(span.len),
                "{direction:?}"
            );
        }
        // A few calls for each frame's fixed header, one when it is in.
        let calls = first.calls() + second.calls();
        assert!(
            calls <= 24,
            "{calls} parser calls for {} bytes",
            up.len() + down.len()
        );
        assert!(second.calls() >= 2, "the new version cut the frames");
        assert_eq!(shadow.calls(), calls, "the shadow was called alike");
    }

    fn inspected(frames: usize, findings: &[u32], actions: Vec<Action>) -> Inspected {
        let mut batch = Batch::new();
        for _ in 0..frames {
            batch.push("mqtt.publish");
        }
        let finding = |event| Finding {
            event,
            severity: Severity::High,
            score: 1.0,
            reason: format!("frame {event}"),
        };
        Inspected {
            spans: (0..frames)
                .map(|i| FrameSpan {
                    offset: i as u64 * 10,
                    len: 10,
                })
                .collect(),
            batch,
            findings: findings.iter().map(|&e| ("d".into(), finding(e))).collect(),
            actions: actions.into_iter().map(|a| ("r".to_owned(), a)).collect(),
            malformed: None,
            errors: Vec::new(),
            blocked: false,
            oversize: None,
        }
    }

    /// Judge, with `pipeline`'s policy, PUBLISHes to `topics`, as frames of
    /// one chunk; the indices of those denied.
    fn denied(pipeline: &mut Pipeline, topics: &[String]) -> Vec<u32> {
        let mut batch = Batch::new();
        for topic in topics {
            batch
                .push("mqtt.publish")
                .text("topic", topic)
                .int("qos", 0);
        }
        let mut inspected = inspected(0, &[], vec![]);
        inspected.spans = vec![FrameSpan { offset: 0, len: 1 }; topics.len()];
        inspected.batch = batch;
        pipeline.enforce_policy(Direction::ToUpstream, &mut inspected);
        inspected.findings.iter().map(|(_, f)| f.event).collect()
    }

    /// Bytes the policy's decisions and keys hold on to.
    fn decisions_held(pipeline: &Pipeline) -> usize {
        let gate = pipeline.gate.as_ref().unwrap();
        let keys: usize = gate.decisions.keys().map(Vec::capacity).sum();
        keys + gate.key.capacity() + gate.last_allowed.capacity()
    }

    /// A device sending long topics (or CoAP paths, queries) cannot make
    /// its session keep them by the hundred: their decisions are not kept,
    /// and still right; short ones are kept as before.
    #[test]
    fn long_keys_do_not_make_the_decisions_grow() {
        let runtime = runtime();
        let policy = Policy::parse(
            r#"permit(principal, action == Action::"mqtt.publish", resource)
when { context.topic like "*/telemetry" };"#,
        )
        .unwrap();
        let mut pipeline = Pipeline::new(session(), mqtt(&runtime), vec![], vec![], 1 << 18)
            .with_policy(PolicyEngine::new(policy), None, "mqtt");
        let long = "x".repeat(8 << 10);
        for chunk in 0..40 {
            let topics: Vec<String> = (0..10)
                .map(|i| {
                    let leaf = if i % 3 == 0 { "cmd" } else { "telemetry" };
                    format!("site/{chunk}-{i}/{long}/{leaf}")
                })
                .collect();
            assert_eq!(denied(&mut pipeline, &topics), [0, 3, 6, 9]);
            let held = decisions_held(&pipeline);
            assert!(held <= 64 << 10, "{held} bytes held after chunk {chunk}");
        }
        // Short keys are kept, and decided alike from the cache.
        let short = ["a/telemetry", "a/cmd", "b/telemetry"].map(String::from);
        for _ in 0..3 {
            assert_eq!(denied(&mut pipeline, &short), [1]);
        }
        assert_eq!(pipeline.gate.as_ref().unwrap().decisions.len(), 3);
    }

    #[test]
    fn dropped_frames_are_skipped_and_the_session_goes_on() {
        let v = inspected(4, &[1], vec![Action::DropFrame(1), Action::DropFrame(9)]).verdict();
        assert_eq!(v.forward, [true, false, true, true]);
        assert_eq!(v.close, None);
        assert!(!v.quarantine);
    }

    /// A frame the receiver keeps state from (an MQTT 5 PUBLISH binding a
    /// topic alias) cannot be dropped alone: the broker would keep the old
    /// binding while the parser learnt the new one, and read a later
    /// PUBLISH by alias as another topic than the policy judged.
    #[test]
    fn dropping_a_frame_that_changes_the_session_closes_it() {
        let mut dropped = inspected(4, &[2], vec![Action::DropFrame(2)]);
        let mut batch = Batch::new();
        for i in 0..4 {
            let mut event = batch.push("mqtt.publish");
            if i == 2 {
                event.flag(CHANGES_SESSION, true);
            }
        }
        dropped.batch = batch;
        let v = dropped.verdict();
        assert_eq!(v.forward, [true, true, false, true]);
        let Some((cut, reason)) = v.close else {
            panic!("the session goes on out of step")
        };
        assert_eq!(cut, 2);
        assert!(reason.contains("frame 2 was dropped"), "{reason}");
        assert!(!v.quarantine);
    }

    /// A detector's reason becomes the close reason the appliance logs (and
    /// the reason every other session of a quarantined device closes
    /// with): a line break in it would forge a line of the log.
    #[test]
    fn a_close_reason_from_a_plugin_is_one_line() {
        let mut closed = inspected(2, &[1], vec![Action::QuarantineDevice]);
        closed.findings[0].1.reason =
            "x\n2026-11-27T00:00:00Z  INFO palisade::admin: device released\u{2028}".into();
        let (_, reason) = closed.verdict().close.unwrap();
        assert!(!reason.contains(['\n', '\u{2028}']), "{reason}");
        assert!(reason.starts_with("d: x\\n2026"), "{reason}");
    }

    #[test]
    fn a_close_forwards_only_what_came_before_the_first_offence() {
        let v = inspected(4, &[2, 3], vec![Action::CloseSession]).verdict();
        assert_eq!(v.close, Some((2, "d: frame 2".into())));
        assert!(!v.quarantine);
        let v = inspected(3, &[0], vec![Action::QuarantineDevice]).verdict();
        assert_eq!(v.close.map(|c| c.0), Some(0));
        assert!(v.quarantine);
        // Alerts and allows change nothing.
        let v = inspected(2, &[0], vec![Action::Alert("x".into()), Action::Allow]).verdict();
        assert_eq!((v.forward, v.close), (vec![true, true], None));
    }
}
