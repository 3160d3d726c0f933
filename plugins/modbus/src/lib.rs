//! A Modbus/TCP parser plugin: it cuts the stream into MBAP frames (the
//! 7-byte header, then the PDU) and describes each request and response
//! with what a policy judges: the function, read or write access, the
//! register type and the address range.
//!
//! Requests travel to the upstream (the PLC), responses to the device. A
//! response does not repeat what its request asked for, so the session
//! state remembers the outstanding requests by transaction id: a
//! response's event names the same register range as its request's. It
//! never names another's: the answer under a transaction id reused for
//! another request while in flight, or to a request forgotten (the memory
//! keeps the latest 32), is described without registers, and says so with
//! `unmatched-request`, so that a detector or policy can tell it from a
//! response that has no registers to name.

use std::collections::VecDeque;

use palisade_plugin_sdk::{Direction, EventWriter, Parsed, Parser, Session};

/// The parser as a plugin.
#[derive(Debug)]
pub struct Modbus;

impl Parser for Modbus {
    const PROTOCOL: &'static str = "modbus";

    fn parse(_session: &Session, direction: Direction, state: &[u8], input: &[u8]) -> Parsed {
        parse(direction, state, input)
    }
}

palisade_plugin_sdk::export!(parser: Modbus);

/// The MBAP header's length; its length field counts from the unit id.
const MBAP: usize = 7;
/// The largest MBAP length field: the unit id and a PDU of 253 bytes.
const MAX_LENGTH: usize = 254;
/// Outstanding requests remembered per session, the latest ones: 224
/// bytes of state at most.
const OUTSTANDING: usize = 32;
/// The function of a remembered request that cannot be told apart from
/// another under the same transaction id (function 0 is no function):
/// its answer is described without registers.
const UNKNOWN: u8 = 0;
/// Bytes one remembered request takes in the state.
const ENTRY: usize = 7;
/// The flag of a response or exception whose request is not known: none
/// remembered under its transaction id, one that cannot be told apart
/// from another, or one of another function.
const UNMATCHED_REQUEST: &str = "unmatched-request";

/// A request, as its response needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pending {
    transaction: u16,
    function: u8,
    address: u16,
    count: u16,
}

/// The remembered requests, oldest first.
fn load(state: &[u8]) -> VecDeque<Pending> {
    state
        .chunks_exact(ENTRY)
        .map(|e| {
            let u16_at = |i: usize| {
                u16::from_be_bytes([
                    e.get(i).copied().unwrap_or(0),
                    e.get(i + 1).copied().unwrap_or(0),
                ])
            };
            Pending {
                transaction: u16_at(0),
                function: e.get(2).copied().unwrap_or(0),
                address: u16_at(3),
                count: u16_at(5),
            }
        })
        .collect()
}

/// The remembered request of `transaction`, forgotten.
fn take(pending: &mut VecDeque<Pending>, transaction: u16) -> Option<Pending> {
    let i = pending.iter().position(|p| p.transaction == transaction)?;
    pending.remove(i)
}

fn save(pending: &VecDeque<Pending>) -> Vec<u8> {
    let mut state = Vec::with_capacity(pending.len() * ENTRY);
    for p in pending {
        state.extend_from_slice(&p.transaction.to_be_bytes());
        state.push(p.function);
        state.extend_from_slice(&p.address.to_be_bytes());
        state.extend_from_slice(&p.count.to_be_bytes());
    }
    state
}

/// Parse the complete frames at the start of `input`, travelling in
/// `direction`, given the session `state` the previous call returned.
pub fn parse(direction: Direction, state: &[u8], input: &[u8]) -> Parsed {
    let mut pending = load(state);
    let mut parsed = Parsed::new(Vec::new());
    let mut offset = 0;
    while let Some(rest) = input.get(offset..).filter(|r| !r.is_empty()) {
        let Some(header) = rest.get(..MBAP) else {
            parsed = parsed.needing(MBAP - rest.len());
            break;
        };
        let u16_at = |i: usize| {
            u16::from_be_bytes([
                header.get(i).copied().unwrap_or(0),
                header.get(i + 1).copied().unwrap_or(0),
            ])
        };
        let (transaction, protocol, length) = (u16_at(0), u16_at(2), usize::from(u16_at(4)));
        if protocol != 0 {
            parsed = parsed.malformed(offset, "MBAP protocol id is not 0 (not Modbus)");
            break;
        }
        if !(2..=MAX_LENGTH).contains(&length) {
            parsed = parsed.malformed(offset, "MBAP length outside 2..=254");
            break;
        }
        let len = 6 + length;
        let Some(frame) = rest.get(..len) else {
            parsed = parsed.needing(len - rest.len());
            break;
        };
        let unit = header.get(6).copied().unwrap_or(0);
        let pdu = frame.get(MBAP..).unwrap_or_default();
        let frame = Frame {
            transaction,
            unit,
            pdu,
            len,
        };
        let described = match direction {
            Direction::ToUpstream => request(&frame, &mut pending, &mut parsed),
            Direction::ToDevice => response(&frame, &mut pending, &mut parsed),
        };
        if let Err(reason) = described {
            parsed = parsed.malformed(offset, reason);
            break;
        }
        offset += len;
    }
    parsed.state = save(&pending);
    parsed
}

struct Frame<'a> {
    transaction: u16,
    unit: u8,
    pdu: &'a [u8],
    len: usize,
}

impl Frame<'_> {
    fn function(&self) -> u8 {
        self.pdu.first().copied().unwrap_or(0)
    }

    fn u8_at(&self, i: usize) -> Result<u8, &'static str> {
        self.pdu.get(i).copied().ok_or("PDU too short")
    }

    fn u16_at(&self, i: usize) -> Result<u16, &'static str> {
        Ok(u16::from_be_bytes([self.u8_at(i)?, self.u8_at(i + 1)?]))
    }

    /// The event of kind `kind` with the header's fields.
    fn event<'p>(&self, parsed: &'p mut Parsed, kind: &str) -> EventWriter<'p> {
        let mut event = parsed.frame(self.len, kind);
        event
            .int("transaction", self.transaction)
            .int("unit", self.unit)
            .int("function", self.function() & 0x7f);
        event
    }
}

/// What a data-access function touches.
fn register_type(function: u8) -> Option<&'static str> {
    Some(match function {
        1 | 5 | 15 => "coil",
        2 => "discrete-input",
        3 | 6 | 16 | 22 | 23 => "holding-register",
        4 => "input-register",
        _ => return None,
    })
}

/// Check that `count` items from `address` stay within the 65536 a
/// register or coil type has: the specification makes a range past 65535
/// illegal (exception 02), and a 16-bit server that increments its address
/// would wrap round to 0, past a policy that bounds `address`.
fn within_address_space(address: u16, count: u16) -> Result<(), &'static str> {
    if u32::from(address) + u32::from(count) > 1 << 16 {
        return Err("address range runs past 65535 (the server would wrap to 0)");
    }
    Ok(())
}

/// Function codes the specification reserves for users.
fn user_defined(function: u8) -> bool {
    matches!(function, 65..=72 | 100..=110)
}

fn request<'p>(
    frame: &Frame<'_>,
    pending: &mut VecDeque<Pending>,
    parsed: &'p mut Parsed,
) -> Result<(), &'static str> {
    let function = frame.function();
    if frame.pdu.is_empty() {
        return Err("empty PDU");
    }
    let mut remember = |address: u16, count: u16| {
        let request = Pending {
            transaction: frame.transaction,
            function,
            address,
            count,
        };
        match pending
            .iter_mut()
            .find(|p| p.transaction == frame.transaction)
        {
            // The same request again, as a client on a bad network retries
            // one unanswered: the PLC's answer is described right either way.
            Some(p) if *p == request => {}
            // Another request under an id still in flight: which of the two
            // the PLC answers cannot be told, so its answer is described
            // without registers.
            Some(p) => p.function = UNKNOWN,
            None => {
                // Requests never answered (a dead unit behind a gateway, a
                // request the policy dropped) must not fill the memory for
                // good: the oldest goes, and its answer, if it ever comes,
                // is described without registers.
                if pending.len() >= OUTSTANDING {
                    pending.pop_front();
                }
                pending.push_back(request);
            }
        }
    };
    let access = |parsed: &'p mut Parsed, kind, access, address: u16, count: u16| {
        let mut event = frame.event(parsed, kind);
        event
            .text("access", access)
            .text(
                "register-type",
                register_type(function).unwrap_or("unknown"),
            )
            .int("address", address)
            .int("count", count);
        event
    };
    match function {
        1..=4 => {
            let (address, count) = (frame.u16_at(1)?, frame.u16_at(3)?);
            let max = if function <= 2 { 2000 } else { 125 };
            if count == 0 || count > max {
                return Err("read quantity out of range");
            }
            if frame.pdu.len() != 5 {
                return Err("read request of the wrong length");
            }
            within_address_space(address, count)?;
            remember(address, count);
            access(parsed, "modbus.read", "read", address, count);
        }
        5 | 6 => {
            let (address, value) = (frame.u16_at(1)?, frame.u16_at(3)?);
            if function == 5 && value != 0 && value != 0xff00 {
                return Err("write single coil with a value other than ON or OFF");
            }
            if frame.pdu.len() != 5 {
                return Err("write request of the wrong length");
            }
            remember(address, 1);
            let mut event = access(parsed, "modbus.write", "write", address, 1);
            if function == 5 {
                event.int("value", u16::from(value == 0xff00));
            } else {
                event
                    .int("value", value)
                    .int("value-min", value)
                    .int("value-max", value);
            }
        }
        15 | 16 => {
            let (address, count, bytes) = (frame.u16_at(1)?, frame.u16_at(3)?, frame.u8_at(5)?);
            let (max, expected) = if function == 15 {
                (1968, count.div_ceil(8))
            } else {
                (123, count.saturating_mul(2))
            };
            if count == 0 || count > max {
                return Err("write quantity out of range");
            }
            if u16::from(bytes) != expected || frame.pdu.len() != 6 + usize::from(bytes) {
                return Err("write byte count does not match the quantity");
            }
            within_address_space(address, count)?;
            remember(address, count);
            let values = frame.pdu.get(6..).unwrap_or_default();
            let mut event = access(parsed, "modbus.write", "write", address, count);
            event.bytes("values", values);
            if function == 16 {
                registers(&mut event, values);
            }
        }
        22 => {
            let address = frame.u16_at(1)?;
            if frame.pdu.len() != 7 {
                return Err("mask write request of the wrong length");
            }
            remember(address, 1);
            let (and, or) = (frame.u16_at(3)?, frame.u16_at(5)?);
            // The register becomes (current AND and) OR (or AND NOT and):
            // the bits the and-mask keeps are unknown, the rest are the
            // or-mask's. Bounded like any other write, so that a policy
            // on value-max sees a mask write that sets 1000.
            let least = or & !and;
            let mut event = access(parsed, "modbus.write", "write", address, 1);
            event
                .int("and-mask", and)
                .int("or-mask", or)
                .int("value-min", least)
                .int("value-max", least | and);
        }
        23 => {
            let (address, count) = (frame.u16_at(1)?, frame.u16_at(3)?);
            let (write_address, write_count, bytes) =
                (frame.u16_at(5)?, frame.u16_at(7)?, frame.u8_at(9)?);
            if count == 0 || count > 125 || write_count == 0 || write_count > 121 {
                return Err("read/write quantity out of range");
            }
            if u16::from(bytes) != write_count * 2 || frame.pdu.len() != 10 + usize::from(bytes) {
                return Err("write byte count does not match the quantity");
            }
            within_address_space(address, count)?;
            within_address_space(write_address, write_count)?;
            remember(address, count);
            let mut event = frame.event(parsed, "modbus.read-write");
            event
                .text("access", "read-write")
                .text("register-type", "holding-register")
                .int("address", address)
                .int("count", count)
                .int("write-address", write_address)
                .int("write-count", write_count);
            let values = frame.pdu.get(10..).unwrap_or_default();
            event.bytes("values", values);
            registers(&mut event, values);
        }
        8 => {
            let sub_function = frame.u16_at(1)?;
            remember(0, 0);
            let mut event = frame.event(parsed, "modbus.diagnostics");
            event.int("sub-function", sub_function);
        }
        7 | 11 | 12 | 17 => {
            remember(0, 0);
            frame.event(parsed, "modbus.diagnostics");
        }
        43 if frame.pdu.get(1) == Some(&14) => {
            let (code, object) = (frame.u8_at(2)?, frame.u8_at(3)?);
            if !(1..=4).contains(&code) || frame.pdu.len() != 4 {
                return Err("read device identification request malformed");
            }
            remember(0, 0);
            let mut event = frame.event(parsed, "modbus.device-identification");
            event
                .int("mei-type", 14)
                .int("read-device-id-code", code)
                .int("object-id", object);
        }
        0 | 0x80.. => return Err("function code not valid in a request"),
        _ => {
            remember(0, 0);
            let mut event = frame.event(parsed, "modbus.other");
            if user_defined(function) {
                event.flag("user-defined", true);
            }
        }
    }
    Ok(())
}

fn response(
    frame: &Frame<'_>,
    pending: &mut VecDeque<Pending>,
    parsed: &mut Parsed,
) -> Result<(), &'static str> {
    let function = frame.function();
    // The request this answers, if it can be known: an exception answers
    // a request of its function without the high bit.
    let asked = take(pending, frame.transaction)
        .filter(|p| p.function != UNKNOWN && p.function == function & 0x7f);
    if function & 0x80 != 0 {
        let code = frame.u8_at(1)?;
        let mut event = frame.event(parsed, "modbus.exception");
        event.int("exception-code", code);
        if asked.is_none() {
            event.flag(UNMATCHED_REQUEST, true);
        }
        return Ok(());
    }
    if frame.pdu.is_empty() {
        return Err("empty PDU");
    }
    // Everything that can fail is read before the event is written: a
    // malformed frame leaves no event behind.
    let values = match function {
        // A read's data: a byte count, then the bits or registers.
        1..=4 | 23 => {
            let count = usize::from(frame.u8_at(1)?);
            if frame.pdu.len() != 2 + count {
                return Err("read response byte count does not match its length");
            }
            frame.pdu.get(2..)
        }
        _ => None,
    };
    // A single write's response echoes what it wrote.
    let echoed = match function {
        5 => Some(u16::from(frame.u16_at(3)? == 0xff00)),
        6 => Some(frame.u16_at(3)?),
        _ => None,
    };
    let sub_function = if function == 8 {
        Some(frame.u16_at(1)?)
    } else {
        None
    };
    let identified = if function == 43 && frame.pdu.get(1) == Some(&14) {
        Some(identification(frame.pdu)?)
    } else {
        None
    };
    let mut event = frame.event(parsed, "modbus.response");
    if let Some(values) = values {
        event.bytes("values", values);
        if function >= 3 {
            registers(&mut event, values);
        }
    }
    if let Some(value) = echoed {
        event.int("value", value);
    }
    if let Some(sub_function) = sub_function {
        event.int("sub-function", sub_function);
    }
    if let Some((code, objects)) = identified {
        event.int("mei-type", 14).int("read-device-id-code", code);
        for (name, text) in objects {
            event.text(name, text);
        }
    }
    if asked.is_none() {
        event.flag(UNMATCHED_REQUEST, true);
    }
    if let Some(p) = asked
        && let Some(register_type) = register_type(function)
    {
        let access = match function {
            1..=4 => "read",
            23 => "read-write",
            _ => "write",
        };
        event
            .text("access", access)
            .text("register-type", register_type)
            .int("address", p.address)
            .int("count", p.count);
    }
    Ok(())
}

/// The lowest and highest of the big-endian registers in `values`, which a
/// policy can bound (`context["value-max"] <= 200`).
fn registers(event: &mut EventWriter<'_>, values: &[u8]) {
    let mut registers = values.chunks_exact(2).map(|r| {
        u16::from_be_bytes([
            r.first().copied().unwrap_or(0),
            r.get(1).copied().unwrap_or(0),
        ])
    });
    if let Some(first) = registers.next() {
        let (min, max) = registers.fold((first, first), |(lo, hi), r| (lo.min(r), hi.max(r)));
        event.int("value-min", min).int("value-max", max);
    }
}

/// A read device id code and the objects named with their attribute.
type Identification<'a> = (u8, Vec<(&'static str, &'a str)>);

/// The read device id code and the basic objects (vendor name, product
/// code, revision) of a read device identification response (FC 43/14).
fn identification(pdu: &[u8]) -> Result<Identification<'_>, &'static str> {
    let short = "device identification response too short";
    let (&code, &count) = (pdu.get(2).ok_or(short)?, pdu.get(6).ok_or(short)?);
    let mut objects = Vec::new();
    let mut at = 7;
    for _ in 0..count {
        let (&id, &len) = (pdu.get(at).ok_or(short)?, pdu.get(at + 1).ok_or(short)?);
        let value = pdu.get(at + 2..at + 2 + usize::from(len)).ok_or(short)?;
        at += 2 + usize::from(len);
        let name = match id {
            0 => "vendor-name",
            1 => "product-code",
            2 => "revision",
            _ => continue,
        };
        let text =
            std::str::from_utf8(value).map_err(|_| "device identification object is not text")?;
        objects.push((name, text));
    }
    if at != pdu.len() {
        return Err("device identification response longer than its objects");
    }
    Ok((code, objects))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn mbap(transaction: u16, pdu: &[u8]) -> Vec<u8> {
        let mut f = transaction.to_be_bytes().to_vec();
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(&(pdu.len() as u16 + 1).to_be_bytes());
        f.push(1);
        f.extend_from_slice(pdu);
        f
    }

    #[test]
    fn a_read_and_its_response_name_the_same_registers() {
        let request = mbap(7, &[3, 0, 10, 0, 4]);
        let up = parse(Direction::ToUpstream, &[], &request);
        assert_eq!(up.frame_lengths, [request.len() as u32]);
        let e = up.events.get(0).unwrap();
        assert_eq!(e.kind(), "modbus.read");
        assert_eq!(e.text("register-type"), Some("holding-register"));
        assert_eq!((e.int("address"), e.int("count")), (Some(10), Some(4)));
        let response = mbap(7, &[3, 8, 0, 1, 0, 2, 0, 3, 0, 4]);
        let down = parse(Direction::ToDevice, &up.state, &response);
        let e = down.events.get(0).unwrap();
        assert_eq!(e.kind(), "modbus.response");
        assert_eq!((e.int("address"), e.int("count")), (Some(10), Some(4)));
        assert!(down.state.is_empty(), "answered requests are forgotten");
    }

    #[test]
    fn writes_exceptions_and_user_codes() {
        let stream = [
            mbap(1, &[6, 0, 5, 0, 99]),
            mbap(2, &[16, 0, 0, 0, 2, 4, 0, 1, 0, 2]),
            mbap(3, &[23, 0, 0, 0, 1, 0, 9, 0, 1, 2, 0, 7]),
            mbap(4, &[43, 14, 1, 0]),
            mbap(5, &[100, 1, 2]),
        ]
        .concat();
        let p = parse(Direction::ToUpstream, &[], &stream);
        let kinds: Vec<_> = p.events.iter().map(|e| e.kind().to_owned()).collect();
        assert_eq!(
            kinds,
            [
                "modbus.write",
                "modbus.write",
                "modbus.read-write",
                "modbus.device-identification",
                "modbus.other"
            ]
        );
        assert_eq!(p.events.get(2).unwrap().int("write-address"), Some(9));
        assert_eq!(p.events.get(4).unwrap().flag("user-defined"), Some(true));
        let exception = parse(Direction::ToDevice, &p.state, &mbap(1, &[0x86, 2]));
        let e = exception.events.get(0).unwrap();
        assert_eq!(
            (e.kind(), e.int("exception-code")),
            ("modbus.exception", Some(2))
        );
    }

    #[test]
    fn values_masks_and_identification_are_read() {
        let requests = [
            mbap(1, &[5, 0, 3, 0xff, 0]),
            mbap(2, &[6, 0, 5, 0, 99]),
            mbap(3, &[16, 0, 0, 0, 3, 6, 0, 7, 1, 0, 0, 2]),
            mbap(4, &[22, 0, 4, 0, 0xf2, 0, 0x25]),
            mbap(5, &[8, 0, 1, 0, 0]),
            mbap(6, &[43, 14, 1, 0]),
            mbap(7, &[4, 0, 0, 0, 2]),
        ]
        .concat();
        let up = parse(Direction::ToUpstream, &[], &requests);
        assert!(up.malformed.is_none(), "{:?}", up.malformed);
        let e = |i: usize| up.events.get(i).unwrap();
        assert_eq!(e(0).int("value"), Some(1), "a coil switched ON");
        assert_eq!(e(1).int("value"), Some(99));
        assert_eq!(e(2).bytes("values"), Some(&[0, 7, 1, 0, 0, 2][..]));
        assert_eq!(
            (e(2).int("value-min"), e(2).int("value-max")),
            (Some(2), Some(256))
        );
        assert_eq!(
            (e(3).int("and-mask"), e(3).int("or-mask")),
            (Some(0xf2), Some(0x25))
        );
        assert_eq!(e(4).int("sub-function"), Some(1));
        assert_eq!(
            (e(5).int("read-device-id-code"), e(5).int("object-id")),
            (Some(1), Some(0))
        );

        let identity = [
            &[43, 14, 1, 1, 0, 0, 3][..],
            &[0, 4],
            b"Acme",
            &[1, 3],
            b"PLC",
            &[2, 4],
            b"v1.2",
        ]
        .concat();
        let responses = [mbap(6, &identity), mbap(7, &[4, 4, 0, 10, 0, 3])].concat();
        let down = parse(Direction::ToDevice, &up.state, &responses);
        assert!(down.malformed.is_none(), "{:?}", down.malformed);
        let id = down.events.get(0).unwrap();
        assert_eq!(id.text("vendor-name"), Some("Acme"));
        assert_eq!(id.text("product-code"), Some("PLC"));
        assert_eq!(id.text("revision"), Some("v1.2"));
        let echo = parse(Direction::ToDevice, &[], &mbap(2, &[6, 0, 5, 0, 99]));
        assert_eq!(echo.events.get(0).unwrap().int("value"), Some(99));
        let read = down.events.get(1).unwrap();
        assert_eq!(read.bytes("values"), Some(&[0, 10, 0, 3][..]));
        assert_eq!(
            (read.int("value-min"), read.int("value-max")),
            (Some(3), Some(10))
        );
        assert_eq!((read.int("address"), read.int("count")), (Some(0), Some(2)));

        // A response that lies about its objects leaves no event behind.
        let mut lying = identity.clone();
        lying[6] = 4;
        let bad = parse(Direction::ToDevice, &up.state, &mbap(6, &lying));
        assert!(bad.events.is_empty() && bad.malformed.is_some());
        let short = parse(Direction::ToDevice, &[], &mbap(9, &[3, 4, 0, 1]));
        assert!(short.events.is_empty() && short.malformed.is_some());
    }

    #[test]
    fn a_mask_write_is_bounded_by_what_it_can_leave() {
        // And-mask 0, or-mask 1000: the register holds 1000 afterwards,
        // whatever it held, and a policy bounding value-max must see it.
        let p = parse(
            Direction::ToUpstream,
            &[],
            &mbap(1, &[22, 0, 4, 0, 0, 0x03, 0xe8]),
        );
        let e = p.events.get(0).unwrap();
        assert_eq!(
            (e.int("value-min"), e.int("value-max")),
            (Some(1000), Some(1000))
        );
        // The specification's example (and F2, or 25, hex): the bits the
        // and-mask keeps are the register's, the others the or-mask's.
        let p = parse(
            Direction::ToUpstream,
            &[],
            &mbap(2, &[22, 0, 4, 0, 0xf2, 0, 0x25]),
        );
        let e = p.events.get(0).unwrap();
        assert_eq!(
            (e.int("value-min"), e.int("value-max")),
            (Some(0x05), Some(0xf7))
        );
        // All bits kept: anything the register held.
        let p = parse(
            Direction::ToUpstream,
            &[],
            &mbap(3, &[22, 0, 4, 0xff, 0xff, 0, 0]),
        );
        let e = p.events.get(0).unwrap();
        assert_eq!(
            (e.int("value-min"), e.int("value-max")),
            (Some(0), Some(0xffff))
        );
    }

    #[test]
    fn split_anywhere_the_events_are_the_same() {
        let stream = [mbap(1, &[3, 0, 0, 0, 2]), mbap(2, &[6, 0, 1, 0, 3])].concat();
        let whole = parse(Direction::ToUpstream, &[], &stream);
        for cut in 1..stream.len() {
            let first = parse(Direction::ToUpstream, &[], &stream[..cut]);
            let used = first.consumed();
            let second = parse(Direction::ToUpstream, &first.state, &stream[used..]);
            let events: Vec<String> = (first.events.iter().chain(second.events.iter()))
                .map(|e| e.to_string())
                .collect();
            let expected: Vec<String> = whole.events.iter().map(|e| e.to_string()).collect();
            assert_eq!(events, expected, "cut at {cut}");
        }
    }

    #[test]
    fn malformed_frames_are_reported_after_the_good_ones() {
        let good = mbap(1, &[3, 0, 0, 0, 2]);
        let mut bad = mbap(2, &[3, 0, 0, 0, 0]);
        let stream = [good.clone(), bad.clone()].concat();
        let p = parse(Direction::ToUpstream, &[], &stream);
        assert_eq!(p.frame_lengths.len(), 1);
        let m = p.malformed.unwrap();
        assert_eq!(m.offset as usize, good.len());
        assert!(m.reason.contains("quantity"), "{}", m.reason);
        bad[2] = 1;
        assert!(parse(Direction::ToUpstream, &[], &bad).malformed.is_some());
    }

    #[test]
    fn address_ranges_past_65535_are_malformed() {
        // FC16 at 0xffff, 2 registers: a 16-bit server writes 0xffff and
        // then, wrapping, register 0, past a policy forbidding address < 10.
        let wrapping = [
            0x00, 0x01, 0x00, 0x00, 0x00, 0x0b, 0x01, 0x10, 0xff, 0xff, 0x00, 0x02, 0x04, 0x00,
            0x64, 0x00, 0x64,
        ];
        for pdu in [
            &wrapping[MBAP..],
            &[1, 0xff, 0xff, 0, 2],
            &[2, 0xf8, 0x31, 0x07, 0xd0],
            &[3, 0xff, 0x84, 0, 125],
            &[4, 0xff, 0xff, 0, 2],
            &[15, 0xff, 0xf9, 0, 8, 1, 0xff],
            &[23, 0xff, 0xff, 0, 2, 0, 0, 0, 1, 2, 0, 7],
            &[23, 0, 0, 0, 1, 0xff, 0xff, 0, 2, 4, 0, 7, 0, 7],
        ] {
            let p = parse(Direction::ToUpstream, &[], &mbap(1, pdu));
            assert!(p.events.is_empty(), "{pdu:02x?} left an event");
            let m = (p.malformed).unwrap_or_else(|| panic!("{pdu:02x?} accepted"));
            assert!(m.reason.contains("past 65535"), "{pdu:02x?}: {}", m.reason);
        }
        let p = parse(Direction::ToUpstream, &[], &wrapping);
        assert!(p.malformed.is_some() && p.events.is_empty());
        // The last registers themselves are still there to be read and written.
        for pdu in [
            &[3, 0xff, 0xfe, 0, 2][..],
            &[16, 0xff, 0xff, 0, 1, 2, 0, 100],
            &[15, 0xff, 0xf8, 0, 8, 1, 0xff],
            &[23, 0xff, 0xff, 0, 1, 0xff, 0xff, 0, 1, 2, 0, 7],
        ] {
            let p = parse(Direction::ToUpstream, &[], &mbap(1, pdu));
            assert_eq!(p.malformed, None, "{pdu:02x?}");
            assert_eq!(p.events.len(), 1);
        }
    }

    #[test]
    fn an_answer_that_cannot_be_told_apart_names_no_registers() {
        // Two reads under transaction 7 before the PLC answers: its answer
        // cannot be told to be the first's or the second's.
        let first = mbap(7, &[3, 0, 10, 0, 4]);
        let second = mbap(7, &[3, 0, 100, 0, 2]);
        let up = parse(Direction::ToUpstream, &[], &[first, second].concat());
        assert_eq!((up.frame_lengths.len(), up.malformed), (2, None));
        let answer = mbap(7, &[3, 4, 0, 0, 0, 0]);
        let down = parse(Direction::ToDevice, &up.state, &answer);
        let e = down.events.get(0).unwrap();
        assert_eq!((e.int("address"), e.int("count")), (None, None));
        assert_eq!(down.state, Vec::<u8>::new(), "the id is free again");
        // A retry of the very request still in flight is no reuse.
        let once = parse(Direction::ToUpstream, &[], &mbap(7, &[3, 0, 100, 0, 2]));
        let twice = parse(
            Direction::ToUpstream,
            &once.state,
            &mbap(7, &[3, 0, 100, 0, 2]),
        );
        assert_eq!(twice.state, once.state);
        let down = parse(Direction::ToDevice, &twice.state, &answer);
        let e = down.events.get(0).unwrap();
        assert_eq!((e.int("address"), e.int("count")), (Some(100), Some(2)));
    }

    #[test]
    fn requests_never_answered_do_not_fill_the_memory() {
        // A dead unit behind a gateway answers nothing: the session goes
        // on, the oldest requests are forgotten, their late answers named
        // without registers, the latest ones with theirs.
        let many: Vec<u8> = (0..OUTSTANDING as u16 + 8)
            .flat_map(|t| mbap(t, &[3, 0, 0, 0, 1]))
            .collect();
        let p = parse(Direction::ToUpstream, &[], &many);
        assert_eq!((p.events.len(), p.malformed), (OUTSTANDING + 8, None));
        assert_eq!(p.state.len(), OUTSTANDING * ENTRY);
        let late = parse(Direction::ToDevice, &p.state, &mbap(0, &[3, 2, 0, 5]));
        assert_eq!(late.events.get(0).unwrap().int("count"), None);
        let latest = OUTSTANDING as u16 + 7;
        let down = parse(Direction::ToDevice, &p.state, &mbap(latest, &[3, 2, 0, 5]));
        assert_eq!(down.events.get(0).unwrap().int("count"), Some(1));
    }

    #[test]
    fn an_answer_under_a_reused_id_is_flagged_unmatched() {
        let reads = [mbap(7, &[3, 0, 10, 0, 4]), mbap(7, &[3, 0, 100, 0, 2])].concat();
        let up = parse(Direction::ToUpstream, &[], &reads);
        let answer = mbap(7, &[3, 4, 0, 0, 0, 0]);
        let down = parse(Direction::ToDevice, &up.state, &answer);
        let e = down.events.get(0).unwrap();
        assert_eq!(e.flag("unmatched-request"), Some(true), "{e}");
        assert_eq!(e.int("address"), None);
        // So is an exception under it.
        let down = parse(Direction::ToDevice, &up.state, &mbap(7, &[0x83, 2]));
        let e = down.events.get(0).unwrap();
        assert_eq!(e.kind(), "modbus.exception");
        assert_eq!(e.flag("unmatched-request"), Some(true), "{e}");
        // The answer to a request known is not flagged, whether it names
        // registers or has none to name.
        let known = [mbap(1, &[3, 0, 10, 0, 1]), mbap(2, &[8, 0, 0, 0, 0])].concat();
        let up = parse(Direction::ToUpstream, &[], &known);
        let answers = [
            mbap(1, &[3, 2, 0, 5]),
            mbap(2, &[8, 0, 0, 0, 0]),
            mbap(9, &[8, 0, 0, 0, 0]),
        ]
        .concat();
        let down = parse(Direction::ToDevice, &up.state, &answers);
        let flags: Vec<_> = (down.events.iter())
            .map(|e| e.flag("unmatched-request"))
            .collect();
        assert_eq!(flags, [None, None, Some(true)]);
        // Nor is an exception to one; an answer of another function is.
        let up = parse(Direction::ToUpstream, &[], &known);
        let answers = [mbap(1, &[0x83, 2]), mbap(2, &[4, 2, 0, 5])].concat();
        let down = parse(Direction::ToDevice, &up.state, &answers);
        let flags: Vec<_> = (down.events.iter())
            .map(|e| e.flag("unmatched-request"))
            .collect();
        assert_eq!(flags, [None, Some(true)]);
    }

    #[test]
    fn an_answer_to_a_forgotten_request_is_flagged_unmatched() {
        let many: Vec<u8> = (0..OUTSTANDING as u16 + 1)
            .flat_map(|t| mbap(t, &[3, 0, 0, 0, 1]))
            .collect();
        let up = parse(Direction::ToUpstream, &[], &many);
        let answers = [
            mbap(0, &[3, 2, 0, 5]),
            mbap(0, &[0x83, 4]),
            mbap(1, &[3, 2, 0, 5]),
        ]
        .concat();
        let down = parse(Direction::ToDevice, &up.state, &answers);
        assert_eq!(down.malformed, None);
        let seen: Vec<_> = (down.events.iter())
            .map(|e| (e.flag("unmatched-request"), e.int("count")))
            .collect();
        assert_eq!(
            seen,
            [(Some(true), None), (Some(true), None), (None, Some(1))],
            "the oldest forgotten, the next remembered"
        );
    }
}
