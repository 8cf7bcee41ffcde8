//! The consumer group commands but `XREADGROUP` (in `streams`): `XGROUP` (`CREATE`, `SETID`,
//! `DESTROY`, `CREATECONSUMER`, `DELCONSUMER`), `XACK`, `XPENDING`, `XCLAIM`, `XAUTOCLAIM` and
//! `XINFO` (`GROUPS`, `CONSUMERS`), with Redis 7's replies and error messages.
//!
//! The subcommands' names and arities were checked at queue time (`commands`).

use bytes::Bytes;
use redis_protocol::resp2::types::BytesFrame;

use super::data::Reply;
use super::keyspace::{now_ms, Keyspace};
use super::resp::{bulk, error, int, int_arg, ok, parse_int, syntax_error, wrong_arity};
use super::stream::{
    entry_reply, parse_bound, parse_id, parse_strict_id, Group, Pending, Stream, StreamId,
};
use super::streams::sanitize;

/// Runs the consumer group command `name` (upper case); `None` when it is not one.
pub(super) fn run(keyspace: &mut Keyspace, name: &str, args: &[Bytes]) -> Option<Reply> {
    let reply = match (name, args) {
        ("XGROUP", [sub, rest @ ..]) => xgroup(keyspace, sub, rest),
        ("XACK", [key, group, ids @ ..]) if !ids.is_empty() => xack(keyspace, key, group, ids),
        ("XPENDING", [key, group, rest @ ..]) => xpending(keyspace, key, group, rest),
        ("XCLAIM", [key, group, consumer, min_idle, rest @ ..]) if !rest.is_empty() => {
            xclaim(keyspace, key, group, consumer, min_idle, rest)
        }
        ("XAUTOCLAIM", [key, group, consumer, min_idle, start, options @ ..]) => {
            xautoclaim(keyspace, key, group, consumer, min_idle, start, options)
        }
        ("XINFO", [sub, rest @ ..]) => xinfo(keyspace, sub, rest),
        ("XGROUP" | "XACK" | "XPENDING" | "XCLAIM" | "XAUTOCLAIM" | "XINFO", _) => {
            Err(wrong_arity(name))
        }
        _ => return None,
    };
    Some(reply)
}

/// Redis's `NOGROUP` error of `XPENDING`, `XCLAIM` and `XAUTOCLAIM`.
fn no_group(key: &[u8], group: &[u8]) -> BytesFrame {
    error(sanitize(&format!(
        "NOGROUP No such key '{}' or consumer group '{}'",
        String::from_utf8_lossy(key),
        String::from_utf8_lossy(group)
    )))
}

/// The stream at `key` and its group `group`, or `NOGROUP` (`WRONGTYPE` first).
fn stream_and_group<'a>(
    keyspace: &'a mut Keyspace,
    key: &[u8],
    group: &[u8],
) -> Result<&'a mut Stream, BytesFrame> {
    match keyspace.get::<Stream>(key)? {
        Some(stream) if stream.groups.contains_key(group) => Ok(stream),
        _ => Err(no_group(key, group)),
    }
}

/// `XGROUP CREATE|SETID|DESTROY|CREATECONSUMER|DELCONSUMER key group ...`.
fn xgroup(keyspace: &mut Keyspace, sub: &Bytes, args: &[Bytes]) -> Reply {
    let name = sub.to_ascii_uppercase();
    let [key, group, rest @ ..] = args else {
        return Err(subcommand_syntax_error("XGROUP", sub));
    };
    // The options of CREATE and SETID, parsed first, as Redis does.
    let mut mkstream = false;
    let mut entries_read = None;
    let mut options = rest.iter().skip(1);
    while let Some(option) = options.next() {
        let create = name == b"CREATE";
        if create && option.eq_ignore_ascii_case(b"MKSTREAM") {
            mkstream = true;
        } else if (create || name == b"SETID") && option.eq_ignore_ascii_case(b"ENTRIESREAD") {
            let Some(n) = options.next() else {
                return Err(subcommand_syntax_error("XGROUP", sub));
            };
            entries_read = match int_arg(n)? {
                -1 => None,
                n => Some(
                    u64::try_from(n)
                        .map_err(|_| error("ERR value for ENTRIESREAD must be positive or -1"))?,
                ),
            };
        } else {
            return Err(subcommand_syntax_error("XGROUP", sub));
        }
    }
    let exists = keyspace.get::<Stream>(key)?.is_some();
    if !exists && !mkstream {
        return Err(error("ERR The XGROUP subcommand requires the key to exist. Note that for CREATE you may want to use the MKSTREAM option to create an empty stream automatically."));
    }
    if exists && name != b"CREATE" && name != b"DESTROY" {
        let has_group = keyspace
            .get::<Stream>(key)?
            .is_some_and(|s| s.groups.contains_key(group));
        if !has_group {
            return Err(error(sanitize(&format!(
                "NOGROUP No such consumer group '{}' for key name '{}'",
                String::from_utf8_lossy(group),
                String::from_utf8_lossy(key)
            ))));
        }
    }
    match (name.as_slice(), rest) {
        // Redis: at most 8 arguments for CREATE, 5 or 7 for SETID.
        (b"CREATE", [_, _, _, _, _, ..]) | (b"SETID", [_, _] | [_, _, _, _, ..]) => {
            Err(subcommand_syntax_error("XGROUP", sub))
        }
        (b"CREATE", [id, ..]) => {
            let last = keyspace.get::<Stream>(key)?.map(|s| s.last_id);
            let id = match id.as_ref() {
                b"$" => last.unwrap_or_default(),
                id => parse_strict_id(id)?,
            };
            if last.is_none() {
                keyspace.get_or_create::<Stream>(key)?;
                keyspace.touch(key);
            }
            let stream = stream_mut(keyspace, key)?;
            if stream.groups.contains_key(group) {
                return Err(error("BUSYGROUP Consumer Group name already exists"));
            }
            stream
                .groups
                .insert(group.clone(), Group::new(id, entries_read));
            Ok(ok())
        }
        (b"SETID", [id, ..]) => {
            let stream = stream_mut(keyspace, key)?;
            let id = match id.as_ref() {
                b"$" => stream.last_id,
                id => parse_id(id, 0)?,
            };
            if let Some(group) = stream.groups.get_mut(group) {
                group.last_id = id;
                group.entries_read = entries_read;
            }
            Ok(ok())
        }
        (b"DESTROY", []) => {
            let destroyed = stream_mut(keyspace, key)?.groups.remove(group).is_some();
            if destroyed {
                // The clients blocked on the group get a `NOGROUP` error.
                keyspace.signal_streams();
            }
            Ok(int(usize::from(destroyed)))
        }
        (b"CREATECONSUMER", [consumer]) => {
            let group = group_mut(keyspace, key, group)?;
            if group.consumers.contains_key(consumer) {
                return Ok(int(0));
            }
            group.consumer(consumer, now_ms());
            Ok(int(1))
        }
        (b"DELCONSUMER", [consumer]) => {
            let group = group_mut(keyspace, key, group)?;
            if group.consumers.remove(consumer).is_none() {
                return Ok(int(0));
            }
            let before = group.pending.len();
            group.pending.retain(|_, p| p.consumer != consumer);
            Ok(int(before - group.pending.len()))
        }
        _ => Err(subcommand_syntax_error("XGROUP", sub)),
    }
}

/// Redis's `addReplySubcommandSyntaxError`.
fn subcommand_syntax_error(command: &str, sub: &[u8]) -> BytesFrame {
    let sub: String = String::from_utf8_lossy(sub).chars().take(128).collect();
    error(sanitize(&format!(
        "ERR unknown subcommand or wrong number of arguments for '{sub}'. Try {command} HELP."
    )))
}

/// The stream at `key`, which the caller knows to exist.
fn stream_mut<'a>(keyspace: &'a mut Keyspace, key: &[u8]) -> Result<&'a mut Stream, BytesFrame> {
    keyspace
        .get::<Stream>(key)?
        .ok_or_else(|| error("ERR no such key"))
}

/// The group of the stream at `key`, which the caller knows to exist.
fn group_mut<'a>(
    keyspace: &'a mut Keyspace,
    key: &[u8],
    group: &[u8],
) -> Result<&'a mut Group, BytesFrame> {
    stream_mut(keyspace, key)?
        .groups
        .get_mut(group)
        .ok_or_else(|| no_group(key, group))
}

/// `XACK key group id [id ...]`: how many of the IDs were pending.
fn xack(keyspace: &mut Keyspace, key: &[u8], group: &[u8], ids: &[Bytes]) -> Reply {
    // No key or no group: nothing to acknowledge, whatever the IDs.
    let Some(group) = keyspace
        .get::<Stream>(key)?
        .and_then(|s| s.groups.get_mut(group))
    else {
        return Ok(int(0));
    };
    let ids = ids
        .iter()
        .map(|id| parse_strict_id(id))
        .collect::<Result<Vec<_>, _>>()?;
    let acknowledged = ids
        .into_iter()
        .filter(|id| group.pending.remove(id).is_some())
        .count();
    Ok(int(acknowledged))
}

/// `XPENDING key group`: `[count, first id, last id, [[consumer, count], ...]]`, and
/// `XPENDING key group [IDLE ms] start end count [consumer]`: `[[id, consumer, idle, deliveries],
/// ...]`.
fn xpending(keyspace: &mut Keyspace, key: &[u8], group: &[u8], args: &[Bytes]) -> Reply {
    let range = if args.is_empty() {
        None
    } else {
        Some(parse_pending_range(args)?)
    };
    let stream = stream_and_group(keyspace, key, group)?;
    let Some(group) = stream.groups.get(group) else {
        return Err(no_group(key, group));
    };
    let Some(range) = range else {
        return Ok(pending_summary(group));
    };
    let now = now_ms();
    if range
        .consumer
        .is_some_and(|c| !group.consumers.contains_key(c))
    {
        return Ok(BytesFrame::Array(Vec::new()));
    }
    let mut replies = Vec::new();
    if range.start <= range.end {
        let entries = group
            .pending
            .range(range.start..=range.end)
            .filter(|(_, p)| range.consumer.is_none_or(|c| p.consumer == c))
            .filter(|(_, p)| range.min_idle == 0 || now - p.delivered_at >= range.min_idle)
            .take(range.count);
        for (id, pending) in entries {
            replies.push(BytesFrame::Array(vec![
                id.reply(),
                bulk(pending.consumer.clone()),
                BytesFrame::Integer((now - pending.delivered_at).max(0)),
                BytesFrame::Integer(i64::try_from(pending.deliveries).unwrap_or(i64::MAX)),
            ]));
        }
    }
    Ok(BytesFrame::Array(replies))
}

/// The extended form of `XPENDING`.
struct PendingRange<'a> {
    min_idle: i64,
    start: StreamId,
    end: StreamId,
    count: usize,
    consumer: Option<&'a Bytes>,
}

/// Parses `[IDLE ms] start end count [consumer]`, as Redis does (before looking the key up).
fn parse_pending_range(args: &[Bytes]) -> Result<PendingRange<'_>, BytesFrame> {
    // Redis: 3 arguments (the summary), or 6 to 9.
    if !(3..=6).contains(&args.len()) {
        return Err(syntax_error());
    }
    let (min_idle, rest) = match args {
        [idle, ms, rest @ ..] if idle.eq_ignore_ascii_case(b"IDLE") => {
            let ms = int_arg(ms)?;
            if rest.len() < 3 {
                return Err(syntax_error());
            }
            (ms, rest)
        }
        rest => (0, rest),
    };
    let [start, end, count, consumer @ ..] = rest else {
        return Err(syntax_error());
    };
    let count = usize::try_from(int_arg(count)?).unwrap_or(0);
    let start = parse_bound(start, 0)?;
    let end = parse_bound(end, u64::MAX)?;
    Ok(PendingRange {
        min_idle,
        start,
        end,
        count,
        consumer: consumer.first(),
    })
}

/// The summary form of `XPENDING`.
fn pending_summary(group: &Group) -> BytesFrame {
    let (Some(first), Some(last)) = (
        group.pending.keys().next(),
        group.pending.keys().next_back(),
    ) else {
        return BytesFrame::Array(vec![
            BytesFrame::Integer(0),
            BytesFrame::Null,
            BytesFrame::Null,
            BytesFrame::Null,
        ]);
    };
    let consumers = group
        .consumers
        .keys()
        .map(|name| (name, group.pending_of(name)))
        .filter(|(_, n)| *n > 0)
        .map(|(name, n)| BytesFrame::Array(vec![bulk(name.clone()), bulk(n.to_string())]))
        .collect();
    BytesFrame::Array(vec![
        int(group.pending.len()),
        first.reply(),
        last.reply(),
        BytesFrame::Array(consumers),
    ])
}

/// Parses a min-idle-time (a negative one is 0).
fn min_idle_arg(arg: &[u8], command: &str) -> Result<i64, BytesFrame> {
    parse_int(arg)
        .map(|ms| ms.max(0))
        .ok_or_else(|| error(format!("ERR Invalid min-idle-time argument for {command}")))
}

/// Gives the pending entry `id` to `consumer` (`XCLAIM`, `XAUTOCLAIM`): delivered at
/// `delivered_at`, its delivery count set to `retry_count` or, unless `justid`, incremented.
fn claim(
    group: &mut Group,
    id: StreamId,
    consumer: &Bytes,
    delivered_at: i64,
    retry_count: Option<u64>,
    justid: bool,
) {
    if let Some(pending) = group.pending.get_mut(&id) {
        pending.consumer = consumer.clone();
        pending.delivered_at = delivered_at;
        match retry_count {
            Some(n) => pending.deliveries = n,
            None if !justid => pending.deliveries += 1,
            None => {}
        }
    }
}

/// An entry claimed: its ID (`JUSTID`) or the entry.
fn claimed_reply(stream: &Stream, id: StreamId, justid: bool) -> BytesFrame {
    match stream.entries.get(&id) {
        Some(fields) if !justid => entry_reply(id, fields),
        _ => id.reply(),
    }
}

/// `XCLAIM key group consumer min-idle-time id [id ...] [IDLE ms] [TIME ms] [RETRYCOUNT n]
/// [FORCE] [JUSTID] [LASTID id]`.
fn xclaim(
    keyspace: &mut Keyspace,
    key: &[u8],
    group_name: &[u8],
    consumer: &Bytes,
    min_idle: &[u8],
    args: &[Bytes],
) -> Reply {
    let stream = stream_and_group(keyspace, key, group_name)?;
    let min_idle = min_idle_arg(min_idle, "XCLAIM")?;
    // The IDs, up to the first argument that is not one: the options follow.
    let ids: Vec<StreamId> = args
        .iter()
        .map_while(|arg| parse_strict_id(arg).ok())
        .collect();
    let now = now_ms();
    let mut delivered_at = None;
    let mut retry_count = None;
    let (mut force, mut justid) = (false, false);
    let mut last_id = StreamId::MIN;
    let mut options = args[ids.len()..].iter();
    while let Some(option) = options.next() {
        let upper = option.to_ascii_uppercase();
        let invalid = |name: &str| error(format!("ERR Invalid {name} option argument for XCLAIM"));
        match (upper.as_slice(), options.as_slice().first()) {
            (b"FORCE", _) => force = true,
            (b"JUSTID", _) => justid = true,
            (b"IDLE", Some(ms)) => {
                let ms = parse_int(ms).ok_or_else(|| invalid("IDLE"))?;
                delivered_at = Some(now.saturating_sub(ms));
                options.next();
            }
            (b"TIME", Some(ms)) => {
                delivered_at = Some(parse_int(ms).ok_or_else(|| invalid("TIME"))?);
                options.next();
            }
            (b"RETRYCOUNT", Some(n)) => {
                let n = parse_int(n).ok_or_else(|| invalid("RETRYCOUNT"))?;
                retry_count = u64::try_from(n).ok();
                options.next();
            }
            (b"LASTID", Some(id)) => {
                last_id = parse_strict_id(id)?;
                options.next();
            }
            _ => {
                return Err(error(sanitize(&format!(
                    "ERR Unrecognized XCLAIM option '{}'",
                    String::from_utf8_lossy(option)
                ))))
            }
        }
    }
    // A bogus delivery time is now, as in Redis.
    let delivered_at = delivered_at
        .filter(|at| (0..=now).contains(at))
        .unwrap_or(now);
    let mut group = stream.groups.remove(group_name).unwrap_or_default();
    if last_id > group.last_id {
        group.last_id = last_id;
    }
    let mut replies = Vec::new();
    for id in ids {
        if !stream.entries.contains_key(&id) {
            // Deleted from the stream: dropped from the PEL.
            group.pending.remove(&id);
            continue;
        }
        let idle = group.pending.get(&id).map(|p| now - p.delivered_at);
        let forced = idle.is_none() && force;
        match idle {
            None if !forced => continue,
            Some(idle) if min_idle > 0 && idle < min_idle => continue,
            _ => {}
        }
        if forced {
            group.pending.insert(
                id,
                Pending {
                    consumer: consumer.clone(),
                    delivered_at: now,
                    deliveries: 1,
                },
            );
        }
        group.consumer(consumer, now);
        claim(&mut group, id, consumer, delivered_at, retry_count, justid);
        replies.push(claimed_reply(stream, id, justid));
    }
    stream
        .groups
        .insert(Bytes::copy_from_slice(group_name), group);
    Ok(BytesFrame::Array(replies))
}

/// `XAUTOCLAIM key group consumer min-idle-time start [COUNT n] [JUSTID]`: `[next start id,
/// claimed entries, deleted ids]`.
fn xautoclaim(
    keyspace: &mut Keyspace,
    key: &[u8],
    group_name: &[u8],
    consumer: &Bytes,
    min_idle: &[u8],
    start: &[u8],
    options: &[Bytes],
) -> Reply {
    let min_idle = min_idle_arg(min_idle, "XAUTOCLAIM")?;
    let start = parse_bound(start, 0)?;
    let mut count: usize = 100;
    let mut justid = false;
    let mut options = options.iter();
    while let Some(option) = options.next() {
        if option.eq_ignore_ascii_case(b"COUNT") && !options.as_slice().is_empty() {
            let n = options.next().and_then(|n| parse_int(n));
            // Redis's bound: LONG_MAX / 16.
            count = n
                .filter(|n| (1..=i64::MAX / 16).contains(n))
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| error("ERR COUNT must be > 0"))?;
        } else if option.eq_ignore_ascii_case(b"JUSTID") {
            justid = true;
        } else {
            return Err(syntax_error());
        }
    }
    let stream = stream_and_group(keyspace, key, group_name)?;
    let mut group = stream.groups.remove(group_name).unwrap_or_default();
    let now = now_ms();
    let mut claimed = Vec::new();
    let mut deleted = Vec::new();
    // Redis walks its PEL from `start`: at most `count` entries claimed or found deleted, at most
    // 10 × `count` looked at; the next one is where the next call starts (0-0: the end).
    let mut candidates = group
        .pending
        .range(start..)
        .map(|(id, _)| *id)
        .collect::<Vec<_>>()
        .into_iter();
    let mut left = count;
    let mut attempts = count.saturating_mul(10);
    let next = loop {
        if attempts == 0 || left == 0 {
            break candidates.next().unwrap_or(StreamId::MIN);
        }
        attempts -= 1;
        let Some(id) = candidates.next() else {
            break StreamId::MIN;
        };
        if !stream.entries.contains_key(&id) {
            group.pending.remove(&id);
            deleted.push(id.reply());
            left -= 1;
            continue;
        }
        let idle = group.pending.get(&id).map_or(0, |p| now - p.delivered_at);
        if min_idle > 0 && idle < min_idle {
            continue;
        }
        group.consumer(consumer, now);
        claim(&mut group, id, consumer, now, None, justid);
        claimed.push(claimed_reply(stream, id, justid));
        left -= 1;
    };
    stream
        .groups
        .insert(Bytes::copy_from_slice(group_name), group);
    Ok(BytesFrame::Array(vec![
        next.reply(),
        BytesFrame::Array(claimed),
        BytesFrame::Array(deleted),
    ]))
}

/// `XINFO GROUPS key` and `XINFO CONSUMERS key group`.
fn xinfo(keyspace: &mut Keyspace, sub: &Bytes, args: &[Bytes]) -> Reply {
    let Some(key) = args.first() else {
        return Err(subcommand_syntax_error("XINFO", sub));
    };
    let Some(stream) = keyspace.get::<Stream>(key)? else {
        return Err(error("ERR no such key"));
    };
    let now = now_ms();
    match (sub.to_ascii_uppercase().as_slice(), &args[1..]) {
        (b"GROUPS", []) => Ok(BytesFrame::Array(
            stream
                .groups
                .iter()
                .map(|(name, group)| group_info(stream, name, group))
                .collect(),
        )),
        (b"CONSUMERS", [group_name]) => {
            let Some(group) = stream.groups.get(group_name) else {
                return Err(error(sanitize(&format!(
                    "NOGROUP No such consumer group '{}' for key name '{}'",
                    String::from_utf8_lossy(group_name),
                    String::from_utf8_lossy(key)
                ))));
            };
            Ok(BytesFrame::Array(
                group
                    .consumers
                    .iter()
                    .map(|(name, consumer)| {
                        BytesFrame::Array(vec![
                            bulk("name"),
                            bulk(name.clone()),
                            bulk("pending"),
                            int(group.pending_of(name)),
                            bulk("idle"),
                            BytesFrame::Integer((now - consumer.seen_at).max(0)),
                        ])
                    })
                    .collect(),
            ))
        }
        _ => Err(subcommand_syntax_error("XINFO", sub)),
    }
}

/// One group of `XINFO GROUPS`.
fn group_info(stream: &Stream, name: &Bytes, group: &Group) -> BytesFrame {
    let optional = |n: Option<i64>| n.map_or(BytesFrame::Null, BytesFrame::Integer);
    BytesFrame::Array(vec![
        bulk("name"),
        bulk(name.clone()),
        bulk("consumers"),
        int(group.consumers.len()),
        bulk("pending"),
        int(group.pending.len()),
        bulk("last-delivered-id"),
        group.last_id.reply(),
        bulk("entries-read"),
        optional(
            group
                .entries_read
                .map(|n| i64::try_from(n).unwrap_or(i64::MAX)),
        ),
        bulk("lag"),
        optional(stream.lag(group)),
    ])
}
