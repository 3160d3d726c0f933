#![no_main]
//! The CoAP parsers: over TCP (a stream, cut where the first byte says)
//! and over UDP (the same bytes as one datagram).

#[path = "common.rs"]
mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&control, data)) = data.split_first() else {
        return;
    };
    let cut = usize::from(control) * data.len() / 256;
    common::check(|_, bytes| coap::parse(bytes), data, cut);
    common::check_datagram(coap::parse_datagram, data);
});
