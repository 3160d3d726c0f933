#![no_main]
//! The Modbus/TCP parser, both directions.

#[path = "common.rs"]
mod common;

use palisade_plugin_sdk::Direction;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&control, data)) = data.split_first() else {
        return;
    };
    let direction = if control & 1 == 0 {
        Direction::ToUpstream
    } else {
        Direction::ToDevice
    };
    let cut = usize::from(control >> 1) * data.len() / 128;
    common::check(
        |state, bytes| modbus::parse(direction, state, bytes),
        data,
        cut,
    );
});
