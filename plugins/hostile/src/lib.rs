//! A deliberately hostile parser plugin, for testing the sandbox. It is never
//! shipped on an appliance.
//!
//! The first word of its input picks the misbehaviour: `loop` spins forever,
//! `alloc` allocates until memory runs out, `recurse` recurses without end,
//! `trap` panics, `sleep` sleeps for a minute (waiting on a WASI clock),
//! `flood` returns an enormous result, `kvspam` writes to the
//! key-value store without stopping, `logspam` writes ten thousand long log
//! lines, `halves` returns the input as two frames (fine for a stream, a
//! breach of the contract for a datagram), `kinds` fills the batch's
//! table of kinds, 65536 empty names and no event, and reports the input
//! malformed (no room left for the appliance's malformed event). Any
//! other input is one
//! well-formed frame of kind `hostile.ok`. Datagrams get the same
//! treatment as stream input.

use palisade_plugin_sdk::host::{self, Level, kv};
use palisade_plugin_sdk::{
    Batch, Columns, DatagramParser, Direction, Parsed, Parser, Session, Value,
};
use std::hint::black_box;

/// The plugin.
#[derive(Debug)]
pub struct Hostile;

impl Parser for Hostile {
    const PROTOCOL: &'static str = "hostile";

    fn parse(_session: &Session, _direction: Direction, _state: &[u8], input: &[u8]) -> Parsed {
        let mut parsed = Parsed::new(Vec::new());
        match input
            .split(|b| b.is_ascii_whitespace())
            .next()
            .unwrap_or_default()
        {
            b"loop" => loop {
                black_box(input);
            },
            b"alloc" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1; 1 << 20]);
                    black_box(&hoard);
                }
            }
            b"recurse" => {
                black_box(recurse(black_box(1)));
            }
            b"trap" => panic!("hostile plugin panics on purpose"),
            b"sleep" => std::thread::sleep(std::time::Duration::from_secs(60)),
            b"flood" => {
                // 30,000 names and 2 MiB of values: past the output cap
                // of the sandbox tests, within their memory limit.
                let mut event = parsed.frame(input.len(), "hostile.flood");
                let value = "x".repeat(64);
                for i in 0..30_000 {
                    event.value(&format!("attribute-name-{i}"), Value::Text(&value));
                }
                return parsed;
            }
            b"kvspam" => {
                for i in 0u64.. {
                    // Ignores every error: a plugin that will not stop.
                    let _ = kv::set(&format!("key-{i}"), &[0; 1024]);
                }
            }
            b"logspam" => {
                for i in 0..10_000 {
                    host::log(Level::Info, &format!("log line {i} {}", "x".repeat(4096)));
                }
            }
            b"kinds" => {
                parsed.events = Batch::from_columns(Columns {
                    kinds: vec![String::new(); 65536],
                    ..Columns::default()
                });
                return parsed.malformed(0, "nothing here");
            }
            b"halves" => {
                let half = input.len() / 2;
                parsed.frame(half, "hostile.ok");
                parsed.frame(input.len() - half, "hostile.ok");
                return parsed;
            }
            _ => {}
        }
        if !input.is_empty() {
            parsed.frame(input.len(), "hostile.ok");
        }
        parsed
    }
}

impl DatagramParser for Hostile {
    fn parse_datagram(
        session: &Session,
        direction: Direction,
        state: &[u8],
        datagram: &[u8],
    ) -> Parsed {
        Self::parse(session, direction, state, datagram)
    }
}

#[allow(unconditional_recursion)]
fn recurse(depth: u64) -> u64 {
    let frame = black_box([depth; 64]);
    recurse(depth + 1) + frame.iter().sum::<u64>()
}

palisade_plugin_sdk::export!(datagram_parser: Hostile);
