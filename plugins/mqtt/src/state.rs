//! What the parser remembers of a session from one call to the next: the
//! protocol level each direction has seen, and the MQTT 5 topic aliases
//! each direction has bound. The host holds it between calls, for both
//! directions of the session, and hands it to whichever instance (of
//! whichever version) parses next, so its encoding is versioned and kept
//! small:
//!
//! - byte 0, the level the device's CONNECT gave (4 for 3.1.1, 5 for 5.0,
//!   0 before it is known); byte 1, the level the broker's CONNACK showed.
//!   A state of two bytes or fewer is this alone: what every session
//!   without aliases keeps, and what parsers before aliases wrote.
//! - then, once an alias is bound, the format version, [`ALIASES`], and
//!   one entry per alias, sorted by direction then alias: the direction
//!   (0 from the device, 1 from the broker), the alias and the topic's
//!   length (two bytes each, big-endian), the topic.
//!
//! Aliases are per direction (MQTT 5 §3.3.2.3.4): the client's alias 1 and
//! the broker's alias 1 are different topics.

use palisade_plugin_sdk::Direction;

/// The most bytes the state may take: the host's default bound on a
/// parser's session state (`state-bytes`, 4 KiB), beyond which it counts
/// the call as a broken contract. Aliases that would outgrow it end the
/// session as malformed instead.
pub const MAX_STATE_BYTES: usize = 4096;

/// The format version that follows the levels when aliases are bound.
const ALIASES: u8 = 1;

/// Bytes an alias entry takes before its topic: direction, alias, length.
const ENTRY_HEADER: usize = 5;

/// The session state, borrowing its topics from the state or the input it
/// was read from (both outlive the call).
#[derive(Debug, Default)]
pub struct SessionState<'a> {
    /// The protocol level seen by the device's direction, then by the
    /// broker's.
    levels: [u8; 2],
    /// The bound aliases, sorted by (from the broker, alias).
    aliases: Vec<Alias<'a>>,
    /// The bytes [`encode`](Self::encode) will write.
    size: usize,
}

#[derive(Debug)]
struct Alias<'a> {
    from_broker: bool,
    alias: u16,
    topic: &'a str,
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
            aliases: Vec::new(),
            size: 2,
        };
        let Some((&version, mut rest)) = state.get(2..).and_then(|r| r.split_first()) else {
            return Ok(decoded);
        };
        if version != ALIASES {
            return Err("session state in a format this parser does not know");
        }
        let corrupt = "session state corrupt";
        decoded.size = 3;
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
            decoded.size += ENTRY_HEADER + len;
            rest = after;
        }
        Ok(decoded)
    }

    /// The state to hand back to the host.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.size);
        out.extend_from_slice(&self.levels);
        if self.aliases.is_empty() {
            return out;
        }
        out.push(ALIASES);
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

    /// Record the level `direction` has seen.
    pub fn set_level(&mut self, direction: Direction, level: u8) {
        let [device, broker] = &mut self.levels;
        match direction {
            Direction::ToUpstream => *device = level,
            Direction::ToDevice => *broker = level,
        }
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
        let entry = ENTRY_HEADER + topic.len();
        let size = match found {
            Ok(i) => {
                let old = self
                    .aliases
                    .get(i)
                    .map_or(0, |a| ENTRY_HEADER + a.topic.len());
                self.size.saturating_sub(old) + entry
            }
            // The version byte comes with the first alias.
            Err(_) if self.aliases.is_empty() => self.size + 1 + entry,
            Err(_) => self.size + entry,
        };
        if size > MAX_STATE_BYTES {
            return Err("topic aliases would outgrow the session state (4096 bytes)");
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
        self.size = size;
        Ok(())
    }
}

impl Alias<'_> {
    fn key(&self) -> (bool, u16) {
        (self.from_broker, self.alias)
    }
}
