//! The stream value: entries by ID, the last generated ID, the counters Redis 7 keeps for the
//! consumer groups' lag, and the consumer groups with their pending entries lists (PEL); stream
//! IDs and their parsing, as Redis does.
//!
//! The stream commands are in `streams` (entries, `XREAD`, `XREADGROUP`) and `stream_groups`
//! (the other consumer group commands).

use std::collections::BTreeMap;
use std::fmt;

use bytes::Bytes;
use redis_protocol::resp2::types::BytesFrame;

use super::keyspace::{Collection, Value};
use super::resp::{bulk, bulks, error};

/// A stream entry ID, `<ms>-<seq>`, ordered as Redis orders them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct StreamId {
    pub(super) ms: u64,
    pub(super) seq: u64,
}

impl StreamId {
    /// `0-0`, also `-`.
    pub(super) const MIN: Self = Self { ms: 0, seq: 0 };
    /// The largest ID, also `+`.
    pub(super) const MAX: Self = Self {
        ms: u64::MAX,
        seq: u64::MAX,
    };

    /// The next ID (`streamIncrID`); `None` after [`StreamId::MAX`].
    pub(super) fn next(self) -> Option<Self> {
        match (self.ms, self.seq) {
            (u64::MAX, u64::MAX) => None,
            (ms, u64::MAX) => Some(Self { ms: ms + 1, seq: 0 }),
            (ms, seq) => Some(Self { ms, seq: seq + 1 }),
        }
    }

    /// The previous ID (`streamDecrID`); `None` before [`StreamId::MIN`].
    pub(super) fn prev(self) -> Option<Self> {
        match (self.ms, self.seq) {
            (0, 0) => None,
            (ms, 0) => Some(Self {
                ms: ms - 1,
                seq: u64::MAX,
            }),
            (ms, seq) => Some(Self { ms, seq: seq - 1 }),
        }
    }

    /// The ID as a bulk string.
    pub(super) fn reply(self) -> BytesFrame {
        bulk(self.to_string())
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// Redis's error for an ID argument it cannot parse.
pub(super) fn invalid_id() -> BytesFrame {
    error("ERR Invalid stream ID specified as stream command argument")
}

/// Parses an ID argument as Redis's `streamGenericParseIDOrReply` does: `-` and `+` (unless
/// `strict`), `<ms>` (the sequence is then `missing_seq`) or `<ms>-<seq>`, each part a `u64`
/// as `string2ull` reads it; with `star_seq`, also `<ms>-*` (XADD), answered with `false` (the
/// sequence was not given).
fn parse(arg: &[u8], missing_seq: u64, strict: bool, star_seq: bool) -> Option<(StreamId, bool)> {
    // Redis copies the argument to a 128-byte C buffer: a NUL ends it.
    if arg.len() > 127 {
        return None;
    }
    let text = arg.split(|b| *b == 0).next().unwrap_or_default();
    match text {
        b"-" | b"+" if strict => return None,
        b"-" => return Some((StreamId::MIN, true)),
        b"+" => return Some((StreamId::MAX, true)),
        _ => {}
    }
    let (ms, seq) = match text.iter().position(|b| *b == b'-') {
        None => (text, None),
        Some(dash) => (&text[..dash], Some(&text[dash + 1..])),
    };
    let ms = string_to_u64(ms)?;
    match seq {
        None => Some((
            StreamId {
                ms,
                seq: missing_seq,
            },
            true,
        )),
        Some(b"*") if star_seq => Some((StreamId { ms, seq: 0 }, false)),
        Some(seq) => Some((
            StreamId {
                ms,
                seq: string_to_u64(seq)?,
            },
            true,
        )),
    }
}

/// An ID where `-` and `+` are accepted.
pub(super) fn parse_id(arg: &[u8], missing_seq: u64) -> Result<StreamId, BytesFrame> {
    parse(arg, missing_seq, false, false)
        .map(|(id, _)| id)
        .ok_or_else(invalid_id)
}

/// An ID where `-` and `+` are refused.
pub(super) fn parse_strict_id(arg: &[u8]) -> Result<StreamId, BytesFrame> {
    parse(arg, 0, true, false)
        .map(|(id, _)| id)
        .ok_or_else(invalid_id)
}

/// The explicit ID of `XADD`: `<ms>-<seq>`, `<ms>` or `<ms>-*` (then `false`: no sequence given).
pub(super) fn parse_new_id(arg: &[u8]) -> Result<(StreamId, bool), BytesFrame> {
    parse(arg, 0, true, true).ok_or_else(invalid_id)
}

/// A range bound (`streamParseIntervalIDOrReply`): an ID, or with a `(` prefix the exclusive
/// bound, moved to the next ID for a start and to the previous one for an end. `missing_seq` is 0
/// for a start, `u64::MAX` for an end.
pub(super) fn parse_bound(arg: &[u8], missing_seq: u64) -> Result<StreamId, BytesFrame> {
    let start = missing_seq == 0;
    match arg {
        [b'(', rest @ ..] if !rest.is_empty() => {
            let id = parse(rest, missing_seq, true, false)
                .map(|(id, _)| id)
                .ok_or_else(invalid_id)?;
            let moved = if start { id.next() } else { id.prev() };
            moved.ok_or_else(|| {
                error(if start {
                    "ERR invalid start ID for the interval"
                } else {
                    "ERR invalid end ID for the interval"
                })
            })
        }
        _ => parse_id(arg, missing_seq),
    }
}

/// Reads an unsigned integer as Redis's `string2ull` does: a canonical `i64` that is not
/// negative, or what `strtoull` accepts in full (leading blanks, a sign, leading zeros), without
/// overflow.
fn string_to_u64(text: &[u8]) -> Option<u64> {
    if let Some(n) = super::resp::parse_int(text) {
        return u64::try_from(n).ok();
    }
    let start = text.iter().position(|b| !is_c_space(*b))?;
    let (negative, digits) = match &text[start..] {
        [b'-', digits @ ..] => (true, digits),
        [b'+', digits @ ..] => (false, digits),
        digits => (false, digits),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut value: u64 = 0;
    for digit in digits {
        value = value
            .checked_mul(10)?
            .checked_add(u64::from(digit - b'0'))?;
    }
    // `strtoull` negates in unsigned arithmetic.
    Some(if negative {
        value.wrapping_neg()
    } else {
        value
    })
}

/// C's `isspace` in the C locale.
fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// A stream entry's field/value pairs, flattened, in the order they were added.
pub(super) type Fields = Vec<Bytes>;

/// `[id, [field, value, ...]]`, an entry as the stream commands answer it.
pub(super) fn entry_reply(id: StreamId, fields: &Fields) -> BytesFrame {
    BytesFrame::Array(vec![id.reply(), bulks(fields.iter().cloned())])
}

/// A stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Stream {
    pub(super) entries: BTreeMap<StreamId, Fields>,
    /// The last ID generated (or given), which the next one must exceed, even when that entry was
    /// deleted since.
    pub(super) last_id: StreamId,
    /// How many entries were ever added (Redis 7's `entries-added`).
    pub(super) entries_added: u64,
    /// The largest ID deleted by `XDEL` (`max-deleted-entry-id`), `0-0` when none.
    pub(super) max_deleted_id: StreamId,
    pub(super) groups: BTreeMap<Bytes, Group>,
}

/// A consumer group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Group {
    /// The last ID delivered to the group (`last-delivered-id`).
    pub(super) last_id: StreamId,
    /// The group's logical read counter (`entries-read`); `None` when Redis holds it invalid.
    pub(super) entries_read: Option<u64>,
    /// The pending entries list: every entry delivered and not yet acknowledged.
    pub(super) pending: BTreeMap<StreamId, Pending>,
    pub(super) consumers: BTreeMap<Bytes, Consumer>,
}

/// A pending entry: who has it, since when, and how many times it was delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Pending {
    pub(super) consumer: Bytes,
    /// Unix time in milliseconds of the last delivery.
    pub(super) delivered_at: i64,
    pub(super) deliveries: u64,
}

/// A consumer of a group; its pending entries are those of the group's PEL that name it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Consumer {
    /// Unix time in milliseconds of its last read or claim.
    pub(super) seen_at: i64,
}

impl Collection for Stream {
    fn of(value: &mut Value) -> Option<&mut Self> {
        match value {
            Value::Stream(s) => Some(s),
            _ => None,
        }
    }
    fn into_value(self) -> Value {
        Value::Stream(self)
    }
}

/// How `XADD` and `XTRIM` trim: keep the newest `MaxLen` entries, or those from `MinId` on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Trim {
    MaxLen(u64),
    MinId(StreamId),
}

impl Stream {
    /// The ID of the first entry, `0-0` when there is none (Redis's `first_id`).
    pub(super) fn first_id(&self) -> StreamId {
        self.entries.keys().next().copied().unwrap_or_default()
    }

    /// The ID `XADD` gives a new entry: `*` (`given` is `None`), `<ms>-*` (`Some((id, false))`)
    /// or an explicit ID; `None` when it would not exceed the last ID.
    pub(super) fn new_id(&self, given: Option<(StreamId, bool)>, now: u64) -> Option<StreamId> {
        let id = match given {
            None if now > self.last_id.ms => StreamId { ms: now, seq: 0 },
            None => self.last_id.next()?,
            Some((id, false)) if id.ms == self.last_id.ms => self.last_id.next()?,
            Some((id, _)) => id,
        };
        (id > self.last_id).then_some(id)
    }

    /// Appends an entry with an ID from [`Stream::new_id`].
    pub(super) fn append(&mut self, id: StreamId, fields: Fields) {
        self.entries.insert(id, fields);
        self.last_id = id;
        self.entries_added += 1;
    }

    /// Deletes the oldest entries as `trim` says, at most `limit` of them (0: no limit), exactly
    /// (where Redis, with `~`, deletes whole nodes of entries only, keeping at least as many);
    /// returns how many.
    pub(super) fn trim(&mut self, trim: Trim, limit: u64) -> u64 {
        let mut deleted = 0;
        while limit == 0 || deleted < limit {
            let Some(first) = self.entries.first_key_value().map(|(id, _)| *id) else {
                break;
            };
            let over = match trim {
                Trim::MaxLen(max) => self.entries.len() as u64 > max,
                Trim::MinId(min) => first < min,
            };
            if !over {
                break;
            }
            self.entries.remove(&first);
            deleted += 1;
        }
        deleted
    }

    /// `XDEL` of one ID: true when the entry was there.
    pub(super) fn delete(&mut self, id: StreamId) -> bool {
        let deleted = self.entries.remove(&id).is_some();
        if deleted && id > self.max_deleted_id {
            self.max_deleted_id = id;
        }
        deleted
    }

    /// The entries from `start` to `end` (inclusive), oldest first or with `rev` newest first, at
    /// most `count` of them (0: all).
    pub(super) fn range(
        &self,
        start: StreamId,
        end: StreamId,
        rev: bool,
        count: usize,
    ) -> Vec<(StreamId, &Fields)> {
        if start > end {
            return Vec::new();
        }
        let limit = if count == 0 { usize::MAX } else { count };
        let range = self.entries.range(start..=end).map(|(id, f)| (*id, f));
        if rev {
            range.rev().take(limit).collect()
        } else {
            range.take(limit).collect()
        }
    }

    /// Whether an `XDEL` left a hole between `start` and the end (`streamRangeHasTombstones`).
    fn has_tombstones_from(&self, start: StreamId) -> bool {
        if self.entries.is_empty() || self.max_deleted_id == StreamId::MIN {
            return false;
        }
        if self.first_id() > self.max_deleted_id {
            return false;
        }
        start <= self.max_deleted_id
    }

    /// The logical read counter of `id` when it can be known
    /// (`streamEstimateDistanceFromFirstEverEntry`).
    fn entries_read_at(&self, id: StreamId) -> Option<u64> {
        if self.entries_added == 0 {
            return Some(0);
        }
        if self.entries.is_empty() && id <= self.last_id {
            return Some(self.entries_added);
        }
        if id == self.last_id {
            return Some(self.entries_added);
        }
        if id > self.last_id {
            return None;
        }
        let length = self.entries.len() as u64;
        if self.max_deleted_id == StreamId::MIN || self.max_deleted_id < self.first_id() {
            if id < self.first_id() {
                return Some(self.entries_added.saturating_sub(length));
            }
            if id == self.first_id() {
                return Some(self.entries_added.saturating_sub(length) + 1);
            }
        }
        None
    }

    /// How many entries `group` has yet to be delivered (`XINFO GROUPS`' `lag`), when it can be
    /// known.
    pub(super) fn lag(&self, group: &Group) -> Option<i64> {
        let added = i64::try_from(self.entries_added).unwrap_or(i64::MAX);
        if self.entries_added == 0 {
            return Some(0);
        }
        let read = match group.entries_read {
            Some(read) if !self.has_tombstones_from(group.last_id) => read,
            _ => self.entries_read_at(group.last_id)?,
        };
        Some(added - i64::try_from(read).unwrap_or(i64::MAX))
    }

    /// Moves `group`'s last delivered ID to `id` (delivered now), keeping its read counter as
    /// Redis does.
    pub(super) fn advance_group(&self, group: &mut Group, id: StreamId) {
        if id <= group.last_id {
            return;
        }
        group.entries_read = match group.entries_read {
            Some(read) if !self.has_tombstones_from(id) => Some(read + 1),
            read if self.entries_added == 0 => read,
            _ => self.entries_read_at(id),
        };
        group.last_id = id;
    }
}

impl Group {
    /// A new group delivering the entries after `last_id`.
    pub(super) fn new(last_id: StreamId, entries_read: Option<u64>) -> Self {
        Self {
            last_id,
            entries_read,
            ..Self::default()
        }
    }

    /// The consumer `name`, created if needed, seen now.
    pub(super) fn consumer(&mut self, name: &Bytes, now: i64) -> &mut Consumer {
        let consumer = self.consumers.entry(name.clone()).or_default();
        consumer.seen_at = now;
        consumer
    }

    /// How many entries of the PEL `name` has.
    pub(super) fn pending_of(&self, name: &[u8]) -> usize {
        self.pending.values().filter(|p| p.consumer == name).count()
    }
}
