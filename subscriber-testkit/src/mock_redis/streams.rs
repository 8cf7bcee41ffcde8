//! The stream commands on entries: `XADD`, `XRANGE`, `XREVRANGE`, `XLEN`, `XTRIM`, `XDEL`, and
//! `XREAD`/`XREADGROUP` (with `BLOCK`: [`read`] answers [`Read::Block`], and the connection then
//! waits in `blocking`, calling [`ReadRequest::retry`] whenever a stream changes). The other
//! consumer group commands are in `stream_groups`.
//!
//! As in Redis, `XADD`, and `XDEL` and `XTRIM` when they delete, touch their key (for `WATCH`);
//! the consumer group commands (`XREADGROUP`, `XACK`, `XCLAIM`...) do not.

use bytes::Bytes;
use redis_protocol::resp2::types::BytesFrame;

use super::data::Reply;
use super::keyspace::{now_ms, Keyspace};
use super::resp::{error, int, int_arg, parse_int, syntax_error, wrong_arity};
use super::stream::{
    entry_reply, parse_bound, parse_new_id, parse_strict_id, Pending, Stream, StreamId, Trim,
};

/// How many entries a blocked `XREAD`/`XREADGROUP` without `COUNT` gets at most when woken, as in
/// Redis.
const BLOCKED_DEFAULT_COUNT: usize = 1000;

/// Runs the stream command `name` (upper case), but `XREAD`/`XREADGROUP` (see [`read`]) and the
/// consumer group commands; `None` when it is not one.
pub(super) fn run(keyspace: &mut Keyspace, name: &str, args: &[Bytes]) -> Option<Reply> {
    let reply = match (name, args) {
        ("XADD", [key, rest @ ..]) => xadd(keyspace, key, rest),
        ("XRANGE", [key, start, end, options @ ..]) => {
            xrange(keyspace, key, start, end, options, false)
        }
        ("XREVRANGE", [key, end, start, options @ ..]) => {
            xrange(keyspace, key, start, end, options, true)
        }
        ("XLEN", [key]) => keyspace
            .get::<Stream>(key)
            .map(|s| int(s.map_or(0, |s| s.entries.len())))
            .map_err(Into::into),
        ("XTRIM", [key, options @ ..]) => xtrim(keyspace, key, options),
        ("XDEL", [key, ids @ ..]) if !ids.is_empty() => xdel(keyspace, key, ids),
        ("XADD" | "XRANGE" | "XREVRANGE" | "XLEN" | "XTRIM" | "XDEL", _) => Err(wrong_arity(name)),
        _ => return super::stream_groups::run(keyspace, name, args),
    };
    Some(reply)
}

/// The options of `XADD` and `XTRIM`.
#[derive(Debug, Default)]
struct TrimOptions {
    trim: Option<Trim>,
    /// At most this many entries are deleted (0: no limit); only with `~`.
    limit: u64,
    no_mkstream: bool,
    /// `XADD`'s ID, `None` for `*`; `false` when its sequence is `*`.
    id: Option<(StreamId, bool)>,
}

/// Parses `[NOMKSTREAM] [MAXLEN|MINID [=|~] threshold [LIMIT n]]` and, for `XADD`, the ID, as
/// Redis's `streamParseAddOrTrimArgsOrReply`; for `XADD`, also returns where the fields start.
fn parse_trim_options(args: &[Bytes], xadd: bool) -> Result<(TrimOptions, usize), BytesFrame> {
    let mut options = TrimOptions::default();
    let mut approx = false;
    let mut limit_given = false;
    let mut i = 0;
    while i < args.len() {
        let more = args.len() - 1 - i;
        let option = args[i].to_ascii_uppercase();
        match option.as_slice() {
            b"*" if xadd && args[i].as_ref() == b"*" => break,
            b"MAXLEN" | b"MINID" if more > 0 => {
                if options.trim.is_some() {
                    return Err(error("ERR syntax error, MAXLEN and MINID options at the same time are not compatible"));
                }
                approx = false;
                if more >= 2 && matches!(args[i + 1].as_ref(), b"~" | b"=") {
                    approx = args[i + 1].as_ref() == b"~";
                    i += 1;
                }
                i += 1;
                options.trim = Some(if option == b"MAXLEN" {
                    let max = int_arg(&args[i])?;
                    let max = u64::try_from(max)
                        .map_err(|_| error("ERR The MAXLEN argument must be >= 0."))?;
                    Trim::MaxLen(max)
                } else {
                    Trim::MinId(parse_strict_id(&args[i])?)
                });
            }
            b"LIMIT" if more > 0 => {
                i += 1;
                options.limit = u64::try_from(int_arg(&args[i])?)
                    .map_err(|_| error("ERR The LIMIT argument must be >= 0."))?;
                limit_given = true;
            }
            b"NOMKSTREAM" if xadd => options.no_mkstream = true,
            _ if xadd => {
                options.id = Some(parse_new_id(&args[i])?);
                break;
            }
            _ => return Err(syntax_error()),
        }
        i += 1;
    }
    if options.limit > 0 && options.trim.is_none() {
        return Err(error(
            "ERR syntax error, LIMIT cannot be used without specifying a trimming strategy",
        ));
    }
    if !xadd && options.trim.is_none() {
        return Err(error(
            "ERR syntax error, XTRIM must be called with a trimming strategy",
        ));
    }
    if limit_given && !approx {
        return Err(error(
            "ERR syntax error, LIMIT cannot be used without the special ~ option",
        ));
    }
    Ok((options, i + 1))
}

/// `XADD key [NOMKSTREAM] [MAXLEN|MINID [=|~] threshold [LIMIT n]] <*|id> field value [...]`.
fn xadd(keyspace: &mut Keyspace, key: &Bytes, args: &[Bytes]) -> Reply {
    let (options, fields_at) = parse_trim_options(args, true)?;
    let fields = args.get(fields_at..).unwrap_or_default();
    if fields.is_empty() || fields.len() % 2 == 1 {
        return Err(wrong_arity("xadd"));
    }
    if options.id == Some((StreamId::MIN, true)) {
        return Err(error(
            "ERR The ID specified in XADD must be greater than 0-0",
        ));
    }
    if keyspace.get::<Stream>(key)?.is_none() && options.no_mkstream {
        return Ok(BytesFrame::Null);
    }
    let stream = keyspace.get_or_create::<Stream>(key)?;
    if stream.last_id == StreamId::MAX {
        return Err(error(
            "ERR The stream has exhausted the last possible ID, unable to add more items",
        ));
    }
    let now = u64::try_from(now_ms()).unwrap_or_default();
    let Some(id) = stream.new_id(options.id, now) else {
        return Err(error(
            "ERR The ID specified in XADD is equal or smaller than the target stream top item",
        ));
    };
    stream.append(id, fields.to_vec());
    if let Some(trim) = options.trim {
        stream.trim(trim, options.limit);
    }
    keyspace.touch(key);
    keyspace.signal_streams();
    Ok(id.reply())
}

/// `XRANGE key start end [COUNT n]`, and `XREVRANGE key end start [COUNT n]` (`rev`).
fn xrange(
    keyspace: &mut Keyspace,
    key: &[u8],
    start: &[u8],
    end: &[u8],
    options: &[Bytes],
    rev: bool,
) -> Reply {
    let start = parse_bound(start, 0)?;
    let end = parse_bound(end, u64::MAX)?;
    let mut count = None;
    let mut options = options.iter();
    while let Some(option) = options.next() {
        match options.next() {
            Some(n) if option.eq_ignore_ascii_case(b"COUNT") => {
                count = Some(usize::try_from(int_arg(n)?).unwrap_or(0));
            }
            _ => return Err(syntax_error()),
        }
    }
    let Some(stream) = keyspace.get::<Stream>(key)? else {
        return Ok(BytesFrame::Array(Vec::new()));
    };
    match count {
        // Redis answers a null array to `COUNT 0`.
        Some(0) => Ok(BytesFrame::Null),
        count => Ok(entries_reply(stream.range(
            start,
            end,
            rev,
            count.unwrap_or(0),
        ))),
    }
}

/// An array of entries.
fn entries_reply(entries: Vec<(StreamId, &Vec<Bytes>)>) -> BytesFrame {
    BytesFrame::Array(
        entries
            .into_iter()
            .map(|(id, fields)| entry_reply(id, fields))
            .collect(),
    )
}

/// `XTRIM key MAXLEN|MINID [=|~] threshold [LIMIT n]`.
fn xtrim(keyspace: &mut Keyspace, key: &[u8], args: &[Bytes]) -> Reply {
    let (options, _) = parse_trim_options(args, false)?;
    let Some(stream) = keyspace.get::<Stream>(key)? else {
        return Ok(int(0));
    };
    let deleted = match options.trim {
        Some(trim) => stream.trim(trim, options.limit),
        None => 0,
    };
    if deleted > 0 {
        keyspace.touch(key);
    }
    Ok(BytesFrame::Integer(
        i64::try_from(deleted).unwrap_or(i64::MAX),
    ))
}

/// `XDEL key id [id ...]`: every ID is checked before any is deleted.
fn xdel(keyspace: &mut Keyspace, key: &[u8], ids: &[Bytes]) -> Reply {
    let Some(stream) = keyspace.get::<Stream>(key)? else {
        return Ok(int(0));
    };
    let ids = ids
        .iter()
        .map(|id| parse_strict_id(id))
        .collect::<Result<Vec<_>, _>>()?;
    let deleted = ids.into_iter().filter(|id| stream.delete(*id)).count();
    if deleted > 0 {
        keyspace.touch(key);
    }
    Ok(int(deleted))
}

/// Where an `XREAD`/`XREADGROUP` reads a stream from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadFrom {
    /// The entries after this ID (`$` is resolved to the stream's last ID); for `XREADGROUP`,
    /// this consumer's pending entries from this ID on.
    Id(StreamId),
    /// `>`: the entries never delivered to the group.
    New,
}

/// The `GROUP group consumer [NOACK]` of an `XREADGROUP`.
#[derive(Debug, Clone)]
struct GroupRead {
    group: Bytes,
    consumer: Bytes,
    noack: bool,
}

/// A parsed `XREAD`/`XREADGROUP`, kept by a blocked client to try again.
#[derive(Debug, Clone)]
pub(super) struct ReadRequest {
    streams: Vec<(Bytes, ReadFrom)>,
    /// At most this many entries per stream (0: no limit).
    count: usize,
    group: Option<GroupRead>,
}

/// What `XREAD`/`XREADGROUP` does now.
#[derive(Debug)]
pub(super) enum Read {
    /// Answer this.
    Reply(BytesFrame),
    /// Nothing to read, and `BLOCK` was given: wait at most this many milliseconds (0: forever).
    Block(ReadRequest, u64),
}

/// `XREAD [COUNT n] [BLOCK ms] STREAMS key [key ...] id [id ...]` and
/// `XREADGROUP GROUP group consumer [COUNT n] [BLOCK ms] [NOACK] STREAMS key [key ...] id [...]`.
pub(super) fn read(keyspace: &mut Keyspace, name: &str, args: &[Bytes]) -> Read {
    match parse_read(keyspace, name == "XREADGROUP", args) {
        Ok((request, block)) => match (serve(keyspace, &request), block) {
            (Some(reply), _) => Read::Reply(reply),
            (None, Some(ms)) => Read::Block(request, ms),
            (None, None) => Read::Reply(BytesFrame::Null),
        },
        Err(e) => Read::Reply(e),
    }
}

/// Parses an `XREAD`/`XREADGROUP` as Redis does, checking the keys' types and groups and
/// resolving `$`; also returns the `BLOCK` time.
fn parse_read(
    keyspace: &mut Keyspace,
    xreadgroup: bool,
    args: &[Bytes],
) -> Result<(ReadRequest, Option<u64>), BytesFrame> {
    let mut block = None;
    let mut count = 0;
    let mut group = None;
    let mut noack = false;
    let mut streams_at = None;
    let mut i = 0;
    while i < args.len() {
        let more = args.len() - 1 - i;
        match args[i].to_ascii_uppercase().as_slice() {
            b"BLOCK" if more > 0 => {
                i += 1;
                let ms = parse_int(&args[i])
                    .ok_or_else(|| error("ERR timeout is not an integer or out of range"))?;
                block = Some(u64::try_from(ms).map_err(|_| error("ERR timeout is negative"))?);
            }
            b"COUNT" if more > 0 => {
                i += 1;
                count = usize::try_from(int_arg(&args[i])?).unwrap_or(0);
            }
            b"STREAMS" if more > 0 => {
                streams_at = Some(i + 1);
                break;
            }
            b"GROUP" if more >= 2 => {
                if !xreadgroup {
                    return Err(error("ERR The GROUP option is only supported by XREADGROUP. You called XREAD instead."));
                }
                group = Some((args[i + 1].clone(), args[i + 2].clone()));
                i += 2;
            }
            b"NOACK" => {
                if !xreadgroup {
                    return Err(error("ERR The NOACK option is only supported by XREADGROUP. You called XREAD instead."));
                }
                noack = true;
            }
            _ => return Err(syntax_error()),
        }
        i += 1;
    }
    let Some(streams_at) = streams_at else {
        return Err(syntax_error());
    };
    let rest = &args[streams_at..];
    if rest.len() % 2 != 0 {
        return Err(error("ERR Unbalanced XREAD list of streams: for each stream key an ID or '$' must be specified."));
    }
    if xreadgroup && group.is_none() {
        return Err(error("ERR Missing GROUP option for XREADGROUP"));
    }
    let (keys, ids) = rest.split_at(rest.len() / 2);
    let mut streams = Vec::with_capacity(keys.len());
    for (key, id) in keys.iter().zip(ids) {
        let stream = keyspace.get::<Stream>(key)?;
        if let Some((group, _)) = &group {
            if !stream
                .as_ref()
                .is_some_and(|s| s.groups.contains_key(group))
            {
                return Err(error(sanitize(&format!(
                    "NOGROUP No such key '{}' or consumer group '{}' in XREADGROUP with GROUP option",
                    String::from_utf8_lossy(key),
                    String::from_utf8_lossy(group)
                ))));
            }
        }
        let from = match id.as_ref() {
            b"$" if xreadgroup => return Err(error("ERR The $ ID is meaningless in the context of XREADGROUP: you want to read the history of this consumer by specifying a proper ID, or use the > ID to get new messages. The $ ID would just return an empty result set.")),
            b"$" => ReadFrom::Id(stream.map_or(StreamId::MIN, |s| s.last_id)),
            b">" if !xreadgroup => return Err(error("ERR The > ID can be specified only when calling XREADGROUP using the GROUP <group> <consumer> option.")),
            b">" => ReadFrom::New,
            id => ReadFrom::Id(parse_strict_id(id)?),
        };
        streams.push((key.clone(), from));
    }
    let group = group.map(|(group, consumer)| GroupRead {
        group,
        consumer,
        noack,
    });
    let request = ReadRequest {
        streams,
        count,
        group,
    };
    Ok((request, block))
}

/// Replaces the line breaks of an error message, as Redis does with the names it quotes.
pub(super) fn sanitize(message: &str) -> String {
    message.replace(['\r', '\n'], " ")
}

/// Serves a read now, as Redis does before blocking: `None` when there is nothing to answer.
fn serve(keyspace: &mut Keyspace, request: &ReadRequest) -> Option<BytesFrame> {
    let mut replies = Vec::new();
    for (key, from) in &request.streams {
        let Some(stream) = keyspace.get::<Stream>(key).ok().flatten() else {
            continue;
        };
        let last_valid = stream.entries.keys().next_back().copied();
        let entries = match (&request.group, *from) {
            // A consumer's own history is always answered, even empty.
            (Some(read), ReadFrom::Id(id)) => Some(history(stream, read, id, request.count)),
            (Some(read), ReadFrom::New) => match stream.groups.get(&read.group) {
                Some(group) if last_valid.is_some_and(|last| last > group.last_id) => {
                    Some(deliver(stream, read, request.count))
                }
                _ => None,
            },
            (None, ReadFrom::Id(id)) if last_valid.is_some_and(|last| last > id) => {
                Some(read_after(stream, id, request.count))
            }
            (None, _) => None,
        };
        if let Some(entries) = entries {
            replies.push(BytesFrame::Array(vec![
                super::resp::bulk(key.clone()),
                entries,
            ]));
        }
    }
    (!replies.is_empty()).then_some(BytesFrame::Array(replies))
}

impl ReadRequest {
    /// Tries a blocked read again, as Redis serves a client blocked on a stream that changed:
    /// `None` while there is still nothing to answer.
    pub(super) fn retry(&self, keyspace: &mut Keyspace) -> Option<BytesFrame> {
        let count = if self.count == 0 {
            BLOCKED_DEFAULT_COUNT
        } else {
            self.count
        };
        for (key, from) in &self.streams {
            let stream = keyspace.get::<Stream>(key);
            let entries = match (&self.group, stream) {
                (Some(_), Ok(None) | Err(_)) => {
                    return Some(error("UNBLOCKED the stream key no longer exists"));
                }
                (Some(read), Ok(Some(stream))) => {
                    let Some(group) = stream.groups.get(&read.group) else {
                        return Some(error(
                            "NOGROUP the consumer group this client was blocked on no longer exists",
                        ));
                    };
                    if stream.last_id <= group.last_id {
                        continue;
                    }
                    deliver(stream, read, count)
                }
                (None, Ok(Some(stream))) => match from {
                    ReadFrom::Id(id) if stream.last_id > *id => read_after(stream, *id, count),
                    _ => continue,
                },
                (None, _) => continue,
            };
            return Some(BytesFrame::Array(vec![BytesFrame::Array(vec![
                super::resp::bulk(key.clone()),
                entries,
            ])]));
        }
        None
    }
}

/// The entries after `id` (`XREAD`).
fn read_after(stream: &Stream, id: StreamId, count: usize) -> BytesFrame {
    match id.next() {
        Some(start) => entries_reply(stream.range(start, StreamId::MAX, false, count)),
        None => BytesFrame::Array(Vec::new()),
    }
}

/// Delivers the entries after the group's last delivered ID to the consumer (`>`): they join the
/// PEL (unless `NOACK`) and the group moves on.
fn deliver(stream: &mut Stream, read: &GroupRead, count: usize) -> BytesFrame {
    let mut group = stream.groups.remove(&read.group).unwrap_or_default();
    let now = now_ms();
    group.consumer(&read.consumer, now);
    let start = group.last_id.next();
    let mut replies = Vec::new();
    if let Some(start) = start {
        for (id, fields) in stream.range(start, StreamId::MAX, false, count) {
            stream.advance_group(&mut group, id);
            replies.push(entry_reply(id, fields));
            if !read.noack {
                group.pending.insert(
                    id,
                    Pending {
                        consumer: read.consumer.clone(),
                        delivered_at: now,
                        deliveries: 1,
                    },
                );
            }
        }
    }
    stream.groups.insert(read.group.clone(), group);
    BytesFrame::Array(replies)
}

/// The consumer's own pending entries from `start` on (an explicit ID): each is delivered again
/// (its delivery count and time updated); an entry deleted since answers `[id, nil]`.
fn history(stream: &mut Stream, read: &GroupRead, start: StreamId, count: usize) -> BytesFrame {
    let Some(group) = stream.groups.get_mut(&read.group) else {
        return BytesFrame::Array(Vec::new());
    };
    let now = now_ms();
    group.consumer(&read.consumer, now);
    let limit = if count == 0 { usize::MAX } else { count };
    let mut replies = Vec::new();
    let mine = group
        .pending
        .range_mut(start..)
        .filter(|(_, p)| p.consumer == read.consumer)
        .take(limit);
    for (id, pending) in mine {
        match stream.entries.get(id) {
            Some(fields) => {
                pending.delivered_at = now;
                pending.deliveries += 1;
                replies.push(entry_reply(*id, fields));
            }
            None => replies.push(BytesFrame::Array(vec![id.reply(), BytesFrame::Null])),
        }
    }
    BytesFrame::Array(replies)
}
