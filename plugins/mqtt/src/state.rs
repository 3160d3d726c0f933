//! What the parser remembers of a session from one call to the next: the
//! protocol level each direction has seen, the MQTT 5 Topic Alias Maximum
//! each side allowed the other, and the topic aliases each direction has
//! bound. The host holds it between calls, for both directions of the
//! session, and hands it to whichever instance (of whichever version)
//! parses next, so its encoding is versioned and kept small:
//!
//! - byte 0, the level the device's CONNECT gave (4 for 3.1.1, 5 for 5.0,
//!   0 before it is known); byte 1, the level the broker's CONNACK showed.
//!   A state of two bytes or fewer is this alone: what every session
//!   without aliases and with the maxima its levels imply (below) keeps,
//!   and what parsers before aliases wrote.
//! - then a format version, and what it holds, in the oldest format that
//!   holds the session:
//!   - [`ALIASES`] (1), what parsers before the maxima wrote: the alias
//!     entries, with the maxima the levels imply;
//!   - [`MAXIMA`] (2): the highest alias the device may use (the Topic
//!     Alias Maximum of the broker's CONNACK), then the highest the broker
//!     may use (that of the device's CONNECT), two bytes each, big-endian;
//!     then the alias entries, if any.
//!
//!   An alias entry is the direction (0 from the device, 1 from the
//!   broker), the alias and the topic's length (two bytes each,
//!   big-endian), the topic; entries are sorted by direction then alias.
//!
//! A state without maxima implies them from the levels. Where the level is
//! 0 or 4, the CONNECT or CONNACK that gives a maximum has not been read,
//! or is MQTT 3.1.1 and has none: the maximum is 0, as the specification
//! says of one absent (MQTT 5 §3.1.2.11.8, §3.2.2.3.8), and no alias may
//! be used. Where the level is 5, an MQTT 5 CONNECT or CONNACK was read by
//! a parser that did not record its maximum: a session live across the
//! upgrade to this version. The maximum it gave cannot be known, so it is
//! taken to be 65535, no bound at all: holding the session to 0 would end
//! as malformed a session its client and broker conduct by the rules. What
//! that gives up is little: the receiver still refuses an alias above its
//! own maximum (a protocol error, §3.3.2.3.4), and the topic every alias
//! stands for is still followed, so the policy judges the same topics.
//! A session that begins under this version records both maxima.
//!
//! Aliases are per direction (MQTT 5 §3.3.2.3.4): the client's alias 1 and
//! the broker's alias 1 are different topics.

use palisade_plugin_sdk::Direction;

/// The most bytes the state may take: the host's default bound on a
/// parser's session state (`state-bytes`, 4 KiB), beyond which it counts
/// the call as a broken contract. Aliases that would outgrow it end the
/// session as malformed instead.
pub const MAX_STATE_BYTES: usize = 4096;

/// The format version that follows the levels when aliases are bound and
/// the maxima are the ones the levels imply.
const ALIASES: u8 = 1;

/// The format version that follows the levels when the maxima are not the
/// ones the levels imply.
const MAXIMA: u8 = 2;

/// Bytes an alias entry takes before its topic: direction, alias, length.
const ENTRY_HEADER: usize = 5;

/// The session state, borrowing its topics from the state or the input it
/// was read from (both outlive the call).
#[derive(Debug, Default)]
pub struct SessionState<'a> {
    /// The protocol level seen by the device's direction, then by the
    /// broker's.
    levels: [u8; 2],
    /// The highest topic alias the device may use, then the broker: the
    /// Topic Alias Maximum its receiver allowed.
    maxima: [u16; 2],
    /// The bound aliases, sorted by (from the broker, alias).
    aliases: Vec<Alias<'a>>,
    /// The bytes the alias entries take in the encoding.
    entries: usize,
}

#[derive(Debug)]
struct Alias<'a> {
    from_broker: bool,
    alias: u16,
    topic: &'a str,
}

/// The maxima a state written without them stands for (see the module
/// doc): the device's from the broker's level, the broker's from the
/// device's.
fn implied_maxima([device, broker]: [u8; 2]) -> [u16; 2] {
    let implied = |level| if level == 5 { u16::MAX } else { 0 };
    [implied(broker), implied(device)]
}

/// The bytes a state takes in the format [`SessionState::encode`] picks.
fn encoded_len(levels: [u8; 2], maxima: [u16; 2], entries: usize) -> usize {
    let after_levels = if maxima != implied_maxima(levels) {
        1 + 4
    } else if entries > 0 {
        1
    } else {
        0
    };
    levels.len() + after_levels + entries
}

impl<'a> SessionState<'a> {
    /// Read the state a previous call returned.
    pub fn decode(state: &'a [u8]) -> Result<Self, &'static str> {
        let levels = [
            state.first().copied().unwrap_or(0),
            state.get(1).copied().unwrap_or(0),
        ];
        let mut decoded = SessionState {
            levels,
            maxima: implied_maxima(levels),
            aliases: Vec::new(),
            entries: 0,
        };
        let Some((&version, rest)) = state.get(2..).and_then(|r| r.split_first()) else {
            return Ok(decoded);
        };
        let corrupt = "session state corrupt";
        let mut rest = match version {
            ALIASES => rest,
            MAXIMA => {
                let (&[d0, d1, b0, b1], rest) = rest.split_first_chunk().ok_or(corrupt)?;
                decoded.maxima = [u16::from_be_bytes([d0, d1]), u16::from_be_bytes([b0, b1])];
                rest
            }
            _ => return Err("session state in a format this parser does not know"),
        };
        while !rest.is_empty() {
            let (header, after) = rest.split_at_checked(ENTRY_HEADER).ok_or(corrupt)?;
            let &[from_broker, a0, a1, l0, l1] = header else {
                return Err(corrupt);
            };
            let len = usize::from(u16::from_be_bytes([l0, l1]));
            let (topic, after) = after.split_at_checked(len).ok_or(corrupt)?;
            let alias = Alias {
                from_broker: match from_broker {
                    0 => false,
                    1 => true,
                    _ => return Err(corrupt),
                },
                alias: u16::from_be_bytes([a0, a1]),
                topic: std::str::from_utf8(topic).map_err(|_| corrupt)?,
            };
            // Sorted and each once, as encode writes them.
            if (decoded.aliases.last()).is_some_and(|last| last.key() >= alias.key()) {
                return Err(corrupt);
            }
            decoded.aliases.push(alias);
            decoded.entries += ENTRY_HEADER + len;
            rest = after;
        }
        Ok(decoded)
    }

    /// The state to hand back to the host, in the oldest format that holds
    /// it: a session whose maxima its levels imply reads the same to a
    /// parser from before the maxima.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(encoded_len(self.levels, self.maxima, self.entries));
        out.extend_from_slice(&self.levels);
        if self.maxima != implied_maxima(self.levels) {
            out.push(MAXIMA);
            for maximum in self.maxima {
                out.extend_from_slice(&maximum.to_be_bytes());
            }
        } else if !self.aliases.is_empty() {
            out.push(ALIASES);
        }
        for a in &self.aliases {
            out.push(u8::from(a.from_broker));
            out.extend_from_slice(&a.alias.to_be_bytes());
            // A topic is an MQTT string: at most 65535 bytes.
            let len = u16::try_from(a.topic.len()).unwrap_or(u16::MAX);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(a.topic.as_bytes());
        }
        out
    }

    /// The protocol level `direction` has seen.
    pub fn level(&self, direction: Direction) -> u8 {
        let [device, broker] = self.levels;
        match direction {
            Direction::ToUpstream => device,
            Direction::ToDevice => broker,
        }
    }

    /// The protocol level the device's CONNECT gave.
    pub fn client_level(&self) -> u8 {
        self.level(Direction::ToUpstream)
    }

    /// The highest topic alias a PUBLISH travelling in `direction` may use:
    /// the Topic Alias Maximum its receiver allowed.
    pub fn alias_maximum(&self, direction: Direction) -> u16 {
        let [device, broker] = self.maxima;
        match direction {
            Direction::ToUpstream => device,
            Direction::ToDevice => broker,
        }
    }

    /// Learn what a CONNECT (travelling to the upstream) or a CONNACK (to
    /// the device) says: the `level` of its direction, and the highest
    /// alias its sender allows the other direction (0 when the packet has
    /// no Topic Alias Maximum). Malformed if the state would outgrow
    /// [`MAX_STATE_BYTES`], which only aliases bound before can make it.
    pub fn learn(
        &mut self,
        direction: Direction,
        level: u8,
        alias_maximum: u16,
    ) -> Result<(), &'static str> {
        let (mut levels, mut maxima) = (self.levels, self.maxima);
        let [device, broker] = &mut levels;
        let [device_may_use, broker_may_use] = &mut maxima;
        match direction {
            Direction::ToUpstream => (*device, *broker_may_use) = (level, alias_maximum),
            Direction::ToDevice => (*broker, *device_may_use) = (level, alias_maximum),
        }
        if encoded_len(levels, maxima, self.entries) > MAX_STATE_BYTES {
            return Err(OUTGROWN);
        }
        (self.levels, self.maxima) = (levels, maxima);
        Ok(())
    }

    /// The topic `alias` stands for in `direction`, if bound.
    pub fn topic(&self, direction: Direction, alias: u16) -> Option<&'a str> {
        let key = (direction == Direction::ToDevice, alias);
        let i = self.aliases.binary_search_by_key(&key, Alias::key).ok()?;
        self.aliases.get(i).map(|a| a.topic)
    }

    /// Bind `alias` to `topic` in `direction`, in place of what it stood
    /// for; malformed if the state would outgrow [`MAX_STATE_BYTES`].
    pub fn bind(
        &mut self,
        direction: Direction,
        alias: u16,
        topic: &'a str,
    ) -> Result<(), &'static str> {
        let key = (direction == Direction::ToDevice, alias);
        let found = self.aliases.binary_search_by_key(&key, Alias::key);
        let old = found
            .ok()
            .and_then(|i| self.aliases.get(i))
            .map_or(0, |a| ENTRY_HEADER + a.topic.len());
        let entries = self.entries.saturating_sub(old) + ENTRY_HEADER + topic.len();
        if encoded_len(self.levels, self.maxima, entries) > MAX_STATE_BYTES {
            return Err(OUTGROWN);
        }
        let alias = Alias {
            from_broker: key.0,
            alias,
            topic,
        };
        match found {
            Ok(i) => {
                if let Some(slot) = self.aliases.get_mut(i) {
                    *slot = alias;
                }
            }
            Err(i) => self.aliases.insert(i, alias),
        }
        self.entries = entries;
        Ok(())
    }
}

/// Why a packet that would make the state outgrow its bound is malformed.
const OUTGROWN: &str = "topic aliases would outgrow the session state (4096 bytes)";

impl Alias<'_> {
    fn key(&self) -> (bool, u16) {
        (self.from_broker, self.alias)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    /// `state` decoded and encoded again.
    fn again(state: &[u8]) -> Vec<u8> {
        SessionState::decode(state).unwrap().encode()
    }

    fn maxima(state: &[u8]) -> (u16, u16) {
        let s = SessionState::decode(state).unwrap();
        (
            s.alias_maximum(Direction::ToUpstream),
            s.alias_maximum(Direction::ToDevice),
        )
    }

    #[test]
    fn every_format_reads_and_is_written_in_the_oldest_that_holds_it() {
        let entry = [0, 0, 1, 0, 3, b'a', b'/', b'b'];
        let with_entry = |head: &[u8]| [head, &entry[..]].concat();
        // Levels alone: no maximum where no MQTT 5 CONNECT or CONNACK was
        // read, no bound where a parser before the maxima read one.
        for (levels, implied) in [
            (&[][..], (0, 0)),
            (&[4, 4], (0, 0)),
            (&[5, 0], (0, u16::MAX)),
            (&[0, 5], (u16::MAX, 0)),
            (&[5, 5], (u16::MAX, u16::MAX)),
        ] {
            assert_eq!(maxima(levels), implied, "{levels:?}");
        }
        assert_eq!(again(&[5, 5]), [5, 5]);
        let aliases = with_entry(&[5, 5, ALIASES]);
        assert_eq!(again(&aliases), aliases);
        assert_eq!(maxima(&aliases), (u16::MAX, u16::MAX));
        // The maxima, with and without aliases.
        for state in [
            vec![5, 5, MAXIMA, 0, 3, 0, 2],
            with_entry(&[5, 5, MAXIMA, 0, 3, 0, 2]),
        ] {
            assert_eq!(maxima(&state), (3, 2));
            assert_eq!(again(&state), state);
        }
        // Maxima the levels imply are not written.
        assert_eq!(again(&[5, 5, MAXIMA, 0xff, 0xff, 0xff, 0xff]), [5, 5]);
        assert_eq!(again(&[4, 4, MAXIMA, 0, 0, 0, 0]), [4, 4]);
        assert_eq!(
            again(&with_entry(&[5, 5, MAXIMA, 0xff, 0xff, 0xff, 0xff])),
            aliases
        );
        // But maxima of 0 on an MQTT 5 session are.
        let mut state = SessionState::decode(&[]).unwrap();
        state.learn(Direction::ToUpstream, 5, 0).unwrap();
        state.learn(Direction::ToDevice, 5, 0).unwrap();
        assert_eq!(state.encode(), [5, 5, MAXIMA, 0, 0, 0, 0]);
        // Maxima cut short are corrupt.
        for cut in 3..7 {
            let short = &[5, 5, MAXIMA, 0, 3, 0, 2][..cut];
            assert_eq!(
                SessionState::decode(short).unwrap_err(),
                "session state corrupt",
                "{short:?}"
            );
        }
    }
}
