//! Partitions: every application channel is hashed into one of N sharded pub/sub channels, whose
//! hash tags are chosen so that the N channels spread evenly over Redis Cluster's 16,384 slots.
//!
//! A naive tag (`{0}`, `{1}`, ...) lands wherever CRC16 puts it: with 3 nodes, one node can carry
//! twice the partitions of another. Here partition `i` of `n` gets the first tag `i.k` whose slot
//! falls in the `i`-th of `n` equal slot ranges, so a cluster whose nodes own equal contiguous
//! ranges (what `redis-cli --cluster create` makes) carries equal shares, within one partition.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::{BufMut, Bytes, BytesMut};

/// The number of hash slots of a Redis Cluster.
pub(super) const SLOTS: u16 = 16_384;

/// The most partitions a broker may use: each must own a range of at least 16 slots.
pub(super) const MAX_PARTITIONS: usize = 1024;

/// Redis Cluster's slot of a key (or sharded channel): CRC16 (XMODEM) of its hash tag, the text
/// between the first `{` and the next `}` when not empty, else of the whole key.
pub(super) fn slot_of(key: &[u8]) -> u16 {
    let hashed = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    crc16::State::<crc16::XMODEM>::calculate(hashed) % SLOTS
}

/// The partition channels of one broker: their names on Redis and their slots.
#[derive(Debug, Clone)]
pub(super) struct Partitions {
    names: Vec<String>,
    slots: Vec<u16>,
}

impl Partitions {
    /// `count` partitions (1 to [`MAX_PARTITIONS`]) named `<prefix>sb.p{<tag>}`.
    pub(super) fn new(prefix: &str, count: usize) -> Self {
        let tags = tags(count.clamp(1, MAX_PARTITIONS));
        let names = tags
            .iter()
            .map(|(tag, _)| format!("{prefix}sb.p{{{tag}}}"))
            .collect();
        let slots = tags.iter().map(|(_, slot)| *slot).collect();
        Self { names, slots }
    }

    pub(super) fn len(&self) -> usize {
        self.names.len()
    }

    /// The partition of an application channel (FNV-1a, the same in every process).
    pub(super) fn of(&self, channel: &str) -> usize {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in channel.as_bytes() {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        // The partition count is at most 1024: the cast back cannot truncate.
        (hash % self.names.len() as u64) as usize
    }

    pub(super) fn name(&self, partition: usize) -> &str {
        &self.names[partition]
    }

    pub(super) fn slot(&self, partition: usize) -> u16 {
        self.slots[partition]
    }

    /// The partition whose Redis channel is `name`.
    pub(super) fn index_of(&self, name: &[u8]) -> Option<usize> {
        self.names.iter().position(|n| n.as_bytes() == name)
    }
}

/// Partitions' hash tags and their slots.
type Tags = Arc<Vec<(String, u16)>>;

/// The hash tags of `count` partitions and their slots, computed once per count (a search of
/// about `2 * count` CRC16s per partition).
fn tags(count: usize) -> Tags {
    static CACHE: OnceLock<Mutex<HashMap<usize, Tags>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Mutex::default);
    if let Some(tags) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(&count) {
        return tags.clone();
    }
    let tags: Vec<(String, u16)> = (0..count)
        .map(|i| {
            // The middle half of the partition's range: a node boundary inside the range then
            // rarely decides which node takes it.
            let lo_edge = i * usize::from(SLOTS) / count;
            let hi_edge = (i + 1) * usize::from(SLOTS) / count;
            let quarter = (hi_edge - lo_edge) / 4;
            let (lo, hi) = (lo_edge + quarter, hi_edge - quarter);
            (0u32..)
                .map(|k| {
                    let tag = format!("{i}.{k}");
                    let slot = slot_of(tag.as_bytes());
                    (tag, slot)
                })
                .find(|(_, slot)| (lo..hi).contains(&usize::from(*slot)))
                .expect("an unbounded search finds a tag")
        })
        .collect();
    let tags = Arc::new(tags);
    cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(count, tags.clone());
    tags
}

/// What goes on a partition channel: the application channel (the namespace is in the
/// partition's name), a newline (which a channel name cannot contain), then the payload.
pub(super) fn frame(channel: &str, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(channel.len() + 1 + payload.len());
    out.put_slice(channel.as_bytes());
    out.put_u8(b'\n');
    out.put_slice(payload);
    out.freeze()
}

/// Splits a partition message into its channel and payload; `None` for a message not framed so.
pub(super) fn unframe(message: &Bytes) -> Option<(&str, Bytes)> {
    let newline = message.iter().position(|&b| b == b'\n')?;
    let channel = std::str::from_utf8(&message[..newline]).ok()?;
    Some((channel, message.slice(newline + 1..)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // Answers of `CLUSTER KEYSLOT` on Redis 7.0.
        assert_eq!(slot_of(b"foo"), 12182);
        assert_eq!(slot_of(b"{user1000}.following"), 3443);
        assert_eq!(slot_of(b"{user1000}.followers"), 3443);
        assert_eq!(slot_of(b"foo{}{bar}"), slot_of(b"foo{}{bar}"));
        assert_eq!(slot_of(b"foo{}{bar}"), 8363);
        assert_eq!(slot_of(b"foo{{bar}}zap"), slot_of(b"{bar"));
        assert_eq!(slot_of(b"foo{bar}{zap}"), slot_of(b"bar"));
    }

    #[test]
    fn partitions_spread_evenly_over_equal_slot_ranges() {
        for count in [1, 3, 16, 128, 1024] {
            let parts = Partitions::new("app:", count);
            assert_eq!(parts.len(), count);
            for nodes in [1usize, 3, 5, 10] {
                let mut per_node = vec![0usize; nodes];
                for p in 0..count {
                    let node = usize::from(parts.slot(p)) * nodes / usize::from(SLOTS);
                    per_node[node] += 1;
                }
                let (min, max) = (
                    *per_node.iter().min().unwrap(),
                    *per_node.iter().max().unwrap(),
                );
                assert!(max - min <= 2, "{count} over {nodes}: {per_node:?}");
                if count >= 16 * nodes {
                    assert!(max * 4 <= min * 5, "{count} over {nodes}: {per_node:?}");
                }
            }
            assert!(
                parts.name(0).starts_with("app:sb.p{0."),
                "{}",
                parts.name(0)
            );
            assert_eq!(
                slot_of(parts.name(count - 1).as_bytes()),
                parts.slot(count - 1)
            );
        }
    }

    #[test]
    fn channels_hash_to_a_stable_partition() {
        let parts = Partitions::new("", 128);
        assert_eq!(parts.of("orders"), parts.of("orders"));
        let used: std::collections::HashSet<usize> =
            (0..2000).map(|i| parts.of(&format!("room:{i}"))).collect();
        assert_eq!(used.len(), 128, "2000 channels use every partition");
        assert_eq!(parts.index_of(parts.name(7).as_bytes()), Some(7));
    }

    #[test]
    fn frames_round_trip() {
        let framed = frame("app:orders", br#"{"id":1}"#);
        let (channel, payload) = unframe(&framed).unwrap();
        assert_eq!(channel, "app:orders");
        assert_eq!(&payload[..], br#"{"id":1}"#);
        assert!(unframe(&Bytes::from_static(b"no newline")).is_none());
    }
}
