//! What every parser must hold to, whatever the bytes: no panic (libFuzzer
//! reports one), frames that lie inside the input one after another, one
//! event per frame, at most one malformed report after them, a bounded
//! state, and the same events when the input arrives in two pieces. A
//! parser of datagrams holds to its own contract: one frame that is the
//! whole datagram, or a malformed report at offset 0, and never a need for
//! more bytes.

use palisade_plugin_sdk::{Direction, Parsed};

/// The checks for a parser of both directions, `parse` of (direction,
/// state, bytes). The first byte of `data` chooses the direction (its low
/// bit) and where the rest is cut in two (its other bits).
// The CoAP target parses one direction and does not use it.
#[allow(dead_code)]
pub fn check_both_directions(parse: impl Fn(Direction, &[u8], &[u8]) -> Parsed, data: &[u8]) {
    let Some((&control, data)) = data.split_first() else {
        return;
    };
    let direction = if control & 1 == 0 {
        Direction::ToUpstream
    } else {
        Direction::ToDevice
    };
    let cut = usize::from(control >> 1) * data.len() / 128;
    check(|state, bytes| parse(direction, state, bytes), data, cut);
}

/// The checks, for `parse` of (state, bytes), on `data` cut at `cut`.
pub fn check(parse: impl Fn(&[u8], &[u8]) -> Parsed, data: &[u8], cut: usize) {
    let whole = parse(&[], data);
    let framed: usize = whole.frame_lengths.iter().map(|&l| l as usize).sum();
    assert!(framed <= data.len(), "frames beyond the input");
    assert_eq!(
        whole.frame_lengths.len(),
        whole.events.len(),
        "one event per frame"
    );
    assert!(whole.state.len() <= 4096, "state over the host's cap");
    if let Some(m) = &whole.malformed {
        assert_eq!(m.offset as usize, framed, "malformed where the frames end");
    }
    // Arriving in two pieces changes nothing, when nothing was malformed.
    let cut = cut.min(data.len());
    let first = parse(&[], data.get(..cut).unwrap_or_default());
    if first.malformed.is_some() || whole.malformed.is_some() {
        return;
    }
    let used = first.consumed();
    let second = parse(&first.state, data.get(used..).unwrap_or_default());
    let split: Vec<String> = first
        .events
        .iter()
        .chain(second.events.iter())
        .map(|e| e.to_string())
        .collect();
    let at_once: Vec<String> = whole.events.iter().map(|e| e.to_string()).collect();
    if second.malformed.is_none() {
        assert_eq!(split, at_once, "split at {cut}");
    }
}

/// The checks for `parse` of one datagram, on `datagram`.
// Only the CoAP target reads datagrams.
#[allow(dead_code)]
pub fn check_datagram(parse: impl Fn(&[u8]) -> Parsed, datagram: &[u8]) {
    let parsed = parse(datagram);
    assert_eq!(
        parsed.frame_lengths.len(),
        parsed.events.len(),
        "one event per frame"
    );
    assert_eq!(parsed.needed, None, "a datagram does not continue");
    match (parsed.frame_lengths.as_slice(), &parsed.malformed) {
        ([len], None) => assert_eq!(*len as usize, datagram.len(), "the frame is the datagram"),
        ([], Some(m)) => assert_eq!(m.offset, 0, "malformed at offset 0"),
        (lens, m) => panic!("frames {lens:?} and malformed {m:?} for one datagram"),
    }
}
