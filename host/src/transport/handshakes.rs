//! Handshakes in progress, counted per source address.
//!
//! A connection takes one of the appliance's connection slots when it is
//! accepted, before its handshake proves anything. A peer that opens
//! connections and never finishes their handshakes would take every slot
//! within a handshake timeout, and lock every device out. Counted per
//! address (an IPv6 peer per /64), it holds at most
//! `max-handshakes-per-address` of them. (QUIC
//! peers first prove they receive at their address, with a retry, so a
//! forged address takes none.)

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// The handshakes in progress, per source address.
#[derive(Debug)]
pub(crate) struct Handshakes {
    limit: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One handshake in progress; it stops counting when dropped.
#[derive(Debug)]
pub(crate) struct Handshake {
    handshakes: Arc<Handshakes>,
    address: IpAddr,
}

impl Handshakes {
    /// At most `limit` handshakes in progress per address.
    pub(crate) fn new(limit: usize) -> Arc<Handshakes> {
        Arc::new(Handshakes {
            limit,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// Count a handshake from `address`, unless it has `limit` in progress.
    pub(crate) fn begin(self: &Arc<Self>, address: IpAddr) -> Option<Handshake> {
        let address = peer_of(address);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(address).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(Handshake {
            handshakes: self.clone(),
            address,
        })
    }
}

/// Whom `address` counts as: an IPv6 peer holds its whole /64 (one
/// host's share, which it can fill with addresses at will), an IPv4 peer
/// its address, however it is written.
fn peer_of(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(_) => address,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
    }
}

impl Drop for Handshake {
    fn drop(&mut self) {
        let mut open = (self.handshakes.open)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.address);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn each_address_has_its_own_count() {
        let handshakes = Handshakes::new(2);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let first = handshakes.begin(a).unwrap();
        let _second = handshakes.begin(a).unwrap();
        assert!(handshakes.begin(a).is_none());
        assert!(handshakes.begin(b).is_some());
        drop(first);
        assert!(handshakes.begin(a).is_some());
    }

    #[test]
    fn an_ipv6_peer_counts_as_its_slash_64() {
        let handshakes = Handshakes::new(1);
        let _one = handshakes
            .begin("2001:db8:1:2::1".parse().unwrap())
            .unwrap();
        assert!(
            handshakes
                .begin("2001:db8:1:2:ffff::9".parse().unwrap())
                .is_none()
        );
        assert!(
            handshakes
                .begin("2001:db8:1:3::1".parse().unwrap())
                .is_some()
        );
        let _v4 = handshakes.begin("10.0.0.1".parse().unwrap()).unwrap();
        assert!(
            handshakes
                .begin("::ffff:10.0.0.1".parse().unwrap())
                .is_none()
        );
    }

    #[test]
    fn finished_handshakes_leave_no_entry() {
        let handshakes = Handshakes::new(2);
        drop(handshakes.begin("10.0.0.1".parse().unwrap()));
        assert!(handshakes.open.lock().unwrap().is_empty());
    }
}
