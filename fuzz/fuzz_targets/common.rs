//! What every parser must hold to, whatever the bytes: no panic (libFuzzer
//! reports one), frames that lie inside the input one after another, one
//! event per frame, at most one malformed report after them, a bounded
//! state, and the same events when the input arrives in two pieces.

use palisade_plugin_sdk::Parsed;

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
