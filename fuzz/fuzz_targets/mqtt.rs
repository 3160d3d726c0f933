#![no_main]
//! The MQTT parser, both directions.

#[path = "common.rs"]
mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| common::check_both_directions(mqtt::parse_from, data));
