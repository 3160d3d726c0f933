#![no_main]
//! The Modbus/TCP parser, both directions.

#[path = "common.rs"]
mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| common::check_both_directions(modbus::parse, data));
