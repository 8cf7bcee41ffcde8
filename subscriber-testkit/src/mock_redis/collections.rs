//! The hash, set and list commands, with Redis's replies and error messages.
//!
//! Each command touches its key (for `WATCH`) when it changes it. A collection left empty is
//! deleted by `data::run` after the command.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use redis_protocol::resp2::types::BytesFrame;

use super::data::{bulk_or_null, Reply};
use super::keyspace::Keyspace;
use super::resp::{bulks, error, int, int_arg, ok, overflow, parse_int, wrong_arity};

type Hash = BTreeMap<Bytes, Bytes>;
type Set = BTreeSet<Bytes>;
type List = VecDeque<Bytes>;

/// Runs the hash, set or list command `name` (upper case); `None` when it is not one.
pub(super) fn run(keyspace: &mut Keyspace, name: &str, args: &[Bytes]) -> Option<Reply> {
    let reply = match (name, args) {
        ("HSET", [key, pairs @ ..]) if !pairs.is_empty() && pairs.len() % 2 == 0 => {
            hset(keyspace, key, pairs)
        }
        // The deprecated form that the `redis` crate's `hset_multiple` sends: replies `OK`.
        ("HMSET", [key, pairs @ ..]) if !pairs.is_empty() && pairs.len() % 2 == 0 => {
            hset(keyspace, key, pairs).map(|_| ok())
        }
        ("HMGET", [key, fields @ ..]) if !fields.is_empty() => keyspace
            .get::<Hash>(key)
            .map(|h| {
                BytesFrame::Array(
                    fields
                        .iter()
                        .map(|f| bulk_or_null(h.as_ref().and_then(|h| h.get(f).cloned())))
                        .collect(),
                )
            })
            .map_err(Into::into),
        ("HGET", [key, field]) => keyspace
            .get::<Hash>(key)
            .map(|h| bulk_or_null(h.and_then(|h| h.get(field).cloned())))
            .map_err(Into::into),
        ("HDEL", [key, fields @ ..]) => remove_each(keyspace, key, fields, |h: &mut Hash, f| {
            h.remove(f).is_some()
        }),
        ("HGETALL", [key]) => read(keyspace, key, |h: &Hash| {
            bulks(h.iter().flat_map(|(f, v)| [f.clone(), v.clone()]))
        }),
        ("HLEN", [key]) => read(keyspace, key, |h: &Hash| int(h.len())),
        ("HINCRBY", [key, field, by]) => hincrby(keyspace, key, field, by),
        ("HKEYS", [key]) => read(keyspace, key, |h: &Hash| bulks(h.keys().cloned())),
        ("HEXISTS", [key, field]) => read(keyspace, key, |h: &Hash| flag(h.contains_key(field))),
        ("SADD", [key, members @ ..]) if !members.is_empty() => {
            match keyspace.get_or_create::<Set>(key) {
                Ok(set) => {
                    let added = members.iter().filter(|m| set.insert((*m).clone())).count();
                    if added > 0 {
                        keyspace.touch(key);
                    }
                    Ok(int(added))
                }
                Err(e) => Err(e.into()),
            }
        }
        ("SREM", [key, members @ ..]) if !members.is_empty() => {
            remove_each(keyspace, key, members, |s: &mut Set, m| s.remove(m))
        }
        ("SMEMBERS", [key]) => read(keyspace, key, |s: &Set| bulks(s.iter().cloned())),
        ("SCARD", [key]) => read(keyspace, key, |s: &Set| int(s.len())),
        ("SISMEMBER", [key, member]) => read(keyspace, key, |s: &Set| flag(s.contains(member))),
        ("RPUSH" | "LPUSH", [key, values @ ..]) if !values.is_empty() => {
            match keyspace.get_or_create::<List>(key) {
                Ok(list) => {
                    for value in values {
                        if name == "RPUSH" {
                            list.push_back(value.clone());
                        } else {
                            list.push_front(value.clone());
                        }
                    }
                    let len = list.len();
                    keyspace.touch(key);
                    Ok(int(len))
                }
                Err(e) => Err(e.into()),
            }
        }
        ("LRANGE", [key, start, stop]) => lrange(keyspace, key, start, stop),
        ("LREM", [key, count, value]) => lrem(keyspace, key, count, value),
        ("LLEN", [key]) => read(keyspace, key, |l: &List| int(l.len())),
        (
            "HSET" | "HMSET" | "HMGET" | "HGET" | "HDEL" | "HGETALL" | "HLEN" | "HINCRBY" | "HKEYS"
            | "HEXISTS" | "SADD" | "SREM" | "SMEMBERS" | "SCARD" | "SISMEMBER" | "RPUSH" | "LPUSH"
            | "LRANGE" | "LREM" | "LLEN",
            _,
        ) => Err(wrong_arity(name)),
        _ => return None,
    };
    Some(reply)
}

fn flag(yes: bool) -> BytesFrame {
    BytesFrame::Integer(i64::from(yes))
}

/// A read-only command: `answer` on the collection, or on an empty one when there is no such key
/// (which gives Redis's `0`, empty array or `0` for a missing key).
fn read<T: super::keyspace::Collection>(
    keyspace: &mut Keyspace,
    key: &[u8],
    answer: impl FnOnce(&T) -> BytesFrame,
) -> Reply {
    match keyspace.get::<T>(key) {
        Ok(Some(collection)) => Ok(answer(collection)),
        Ok(None) => Ok(answer(&T::default())),
        Err(e) => Err(e.into()),
    }
}

/// `HDEL`, `SREM`: removes each item, answers how many were there.
fn remove_each<T: super::keyspace::Collection>(
    keyspace: &mut Keyspace,
    key: &[u8],
    items: &[Bytes],
    mut remove: impl FnMut(&mut T, &Bytes) -> bool,
) -> Reply {
    let removed = match keyspace.get::<T>(key) {
        Ok(Some(collection)) => items.iter().filter(|i| remove(collection, i)).count(),
        Ok(None) => 0,
        Err(e) => return Err(e.into()),
    };
    if removed > 0 {
        keyspace.touch(key);
    }
    Ok(int(removed))
}

/// `HSET key field value [field value ...]`: answers how many fields are new.
fn hset(keyspace: &mut Keyspace, key: &Bytes, pairs: &[Bytes]) -> Reply {
    let hash = keyspace.get_or_create::<Hash>(key)?;
    let added = pairs
        .chunks_exact(2)
        .filter(|pair| hash.insert(pair[0].clone(), pair[1].clone()).is_none())
        .count();
    keyspace.touch(key);
    Ok(int(added))
}

fn hincrby(keyspace: &mut Keyspace, key: &Bytes, field: &Bytes, by: &[u8]) -> Reply {
    let by = int_arg(by)?;
    let hash = keyspace.get_or_create::<Hash>(key)?;
    let current = match hash.get(field) {
        None => 0,
        Some(value) => parse_int(value).ok_or_else(|| error("ERR hash value is not an integer"))?,
    };
    let new = current.checked_add(by).ok_or_else(overflow)?;
    hash.insert(field.clone(), Bytes::from(new.to_string()));
    keyspace.touch(key);
    Ok(BytesFrame::Integer(new))
}

/// `LRANGE key start stop`, with Redis's handling of negative and out-of-range indexes.
fn lrange(keyspace: &mut Keyspace, key: &[u8], start: &[u8], stop: &[u8]) -> Reply {
    let (start, stop) = (int_arg(start)?, int_arg(stop)?);
    read(keyspace, key, |list: &List| {
        let len = i64::try_from(list.len()).unwrap_or(i64::MAX);
        let start = if start < 0 { len + start } else { start }.max(0);
        let stop = if stop < 0 { len + stop } else { stop };
        if start > stop || start >= len {
            return BytesFrame::Array(Vec::new());
        }
        let stop = stop.min(len - 1);
        let (start, stop) = (
            usize::try_from(start).unwrap_or(0),
            usize::try_from(stop).unwrap_or(0),
        );
        bulks(list.range(start..=stop).cloned())
    })
}

/// `LREM key count value`: removes the first `count` occurrences from the head when `count > 0`,
/// from the tail when `count < 0`, every one when `count = 0`; answers how many.
fn lrem(keyspace: &mut Keyspace, key: &[u8], count: &[u8], value: &Bytes) -> Reply {
    let count = int_arg(count)?;
    let limit = match count {
        0 => usize::MAX,
        n => usize::try_from(n.unsigned_abs()).unwrap_or(usize::MAX),
    };
    let mut removed = 0;
    let mut keep = |item: &Bytes| {
        if removed < limit && item == value {
            removed += 1;
            false
        } else {
            true
        }
    };
    match keyspace.get::<List>(key) {
        Ok(Some(list)) if count >= 0 => list.retain(|item| keep(item)),
        Ok(Some(list)) => {
            let mut reversed: Vec<Bytes> = list.drain(..).rev().collect();
            reversed.retain(|item| keep(item));
            list.extend(reversed.into_iter().rev());
        }
        Ok(None) => {}
        Err(e) => return Err(e.into()),
    }
    if removed > 0 {
        keyspace.touch(key);
    }
    Ok(int(removed))
}
