//! The data commands on keys and strings (`GET`, `SET`, `DEL`, `EXISTS`, `EXPIRE`, `PEXPIRE`,
//! `TTL`, `PTTL`, `KEYS`, `DBSIZE`, `FLUSHALL`, `FLUSHDB`, `TYPE`, `INCR`, `INCRBY`), with Redis's
//! replies and error messages; the hash, set and list commands are in `collections`, the stream
//! commands in `streams` and `stream_groups`.
//!
//! The caller has checked the arity (see `commands::arity`); the argument patterns below still
//! answer a wrong arity rather than panic.

use bytes::Bytes;
use redis_protocol::resp2::types::BytesFrame;

use super::collections;
use super::keyspace::{now_ms, Keyspace, Value, WrongType};
use super::resp::{
    bulk, bulks, error, int, int_arg, not_an_integer, ok, overflow, parse_int, simple,
    syntax_error, wrong_arity, wrong_type,
};
use super::streams;

/// What a data command answers: its reply, or an error reply.
pub(super) type Reply = Result<BytesFrame, BytesFrame>;

impl From<WrongType> for BytesFrame {
    fn from(_: WrongType) -> Self {
        wrong_type()
    }
}

/// Runs the data command `name` (upper case); `None` when it is not one.
pub(super) fn run(keyspace: &mut Keyspace, name: &str, args: &[Bytes]) -> Option<BytesFrame> {
    let reply = match name {
        "GET" => get(keyspace, args),
        "SET" => set(keyspace, args),
        "DEL" => Ok(int(args.iter().filter(|k| keyspace.remove(k)).count())),
        "EXISTS" => Ok(int(args.iter().filter(|k| keyspace.contains(k)).count())),
        "PEXPIRE" => expire(keyspace, args, "pexpire", 1),
        "EXPIRE" => expire(keyspace, args, "expire", 1000),
        "PTTL" => ttl(keyspace, args, "pttl", 1),
        "TTL" => ttl(keyspace, args, "ttl", 1000),
        "KEYS" => keys(keyspace, args),
        "DBSIZE" => Ok(int(keyspace.len())),
        "FLUSHALL" | "FLUSHDB" => flush(keyspace, args),
        "TYPE" => match args {
            [key] => Ok(simple(
                keyspace.value(key).map_or("none", |v| v.type_name()),
            )),
            _ => Err(wrong_arity("type")),
        },
        "INCR" => match args {
            [key] => incr_by(keyspace, key, 1),
            _ => Err(wrong_arity("incr")),
        },
        "INCRBY" => match args {
            [key, by] => int_arg(by).and_then(|by| incr_by(keyspace, key, by)),
            _ => Err(wrong_arity("incrby")),
        },
        _ => {
            collections::run(keyspace, name, args).or_else(|| streams::run(keyspace, name, args))?
        }
    };
    // A command may have created a collection and left it empty (e.g. on an error): Redis never
    // keeps an empty hash, set or list.
    if let Some(key) = args.first() {
        keyspace.remove_if_empty(key);
    }
    Some(reply.unwrap_or_else(|e| e))
}

/// A bulk string, or the null bulk string.
pub(super) fn bulk_or_null(value: Option<Bytes>) -> BytesFrame {
    value.map_or(BytesFrame::Null, bulk)
}

fn get(keyspace: &mut Keyspace, args: &[Bytes]) -> Reply {
    let [key] = args else {
        return Err(wrong_arity("get"));
    };
    match keyspace.value(key) {
        None => Ok(BytesFrame::Null),
        Some(Value::String(s)) => Ok(bulk(s.clone())),
        Some(_) => Err(wrong_type()),
    }
}

/// The expiry option of `SET`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expiry {
    Ex,
    Px,
    ExAt,
    PxAt,
}

/// `SET key value [NX | XX] [GET] [EX s | PX ms | EXAT unix-s | PXAT unix-ms | KEEPTTL]`.
fn set(keyspace: &mut Keyspace, args: &[Bytes]) -> Reply {
    let [key, value, options @ ..] = args else {
        return Err(wrong_arity("set"));
    };
    let (mut nx, mut xx, mut get, mut keep_ttl) = (false, false, false, false);
    let mut expiry: Option<(Expiry, &Bytes)> = None;
    let mut i = 0;
    // As Redis parses them: an option conflicting with an earlier one is a syntax error, a
    // repeated one is allowed (the last expiry wins).
    while i < options.len() {
        let next = options.get(i + 1);
        let unit = match options[i].to_ascii_uppercase().as_slice() {
            b"NX" if !xx => {
                nx = true;
                None
            }
            b"XX" if !nx => {
                xx = true;
                None
            }
            b"GET" => {
                get = true;
                None
            }
            b"KEEPTTL" if expiry.is_none() => {
                keep_ttl = true;
                None
            }
            b"EX" => Some(Expiry::Ex),
            b"PX" => Some(Expiry::Px),
            b"EXAT" => Some(Expiry::ExAt),
            b"PXAT" => Some(Expiry::PxAt),
            _ => return Err(syntax_error()),
        };
        if let Some(unit) = unit {
            let (Some(next), false) = (next, keep_ttl) else {
                return Err(syntax_error());
            };
            if expiry.is_some_and(|(other, _)| other != unit) {
                return Err(syntax_error());
            }
            expiry = Some((unit, next));
            i += 1;
        }
        i += 1;
    }
    let deadline = match expiry {
        None => None,
        Some((unit, time)) => Some(set_deadline(unit, time)?),
    };

    let old = if get {
        match keyspace.value(key) {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(wrong_type()),
        }
    } else {
        None
    };
    let found = keyspace.contains(key);
    if (nx && found) || (xx && !found) {
        return Ok(bulk_or_null(old));
    }
    let expires_at = if keep_ttl {
        keyspace.expires_at(key).flatten()
    } else {
        deadline
    };
    keyspace.insert(key.clone(), Value::String(value.clone()), expires_at);
    Ok(if get { bulk_or_null(old) } else { ok() })
}

/// The deadline (Unix ms) of `SET`'s expiry option.
fn set_deadline(unit: Expiry, time: &[u8]) -> Result<i64, BytesFrame> {
    let invalid = || error("ERR invalid expire time in 'set' command");
    let time = int_arg(time)?;
    let seconds = matches!(unit, Expiry::Ex | Expiry::ExAt);
    if time <= 0 || (seconds && time > i64::MAX / 1000) {
        return Err(invalid());
    }
    let ms = if seconds { time * 1000 } else { time };
    match unit {
        Expiry::Ex | Expiry::Px => ms.checked_add(now_ms()).ok_or_else(invalid),
        Expiry::ExAt | Expiry::PxAt => Ok(ms),
    }
}

/// `EXPIRE`/`PEXPIRE key time [NX | XX | GT | LT]`; `unit` is 1000 for seconds, 1 for ms.
fn expire(keyspace: &mut Keyspace, args: &[Bytes], name: &str, unit: i64) -> Reply {
    let [key, time, options @ ..] = args else {
        return Err(wrong_arity(name));
    };
    let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
    for option in options {
        match option.to_ascii_uppercase().as_slice() {
            b"NX" => nx = true,
            b"XX" => xx = true,
            b"GT" => gt = true,
            b"LT" => lt = true,
            _ => {
                return Err(error(format!(
                    "ERR Unsupported option {}",
                    String::from_utf8_lossy(option)
                )))
            }
        }
    }
    if nx && (xx || gt || lt) {
        return Err(error(
            "ERR NX and XX, GT or LT options at the same time are not compatible",
        ));
    }
    if gt && lt {
        return Err(error(
            "ERR GT and LT options at the same time are not compatible",
        ));
    }
    let invalid = || error(format!("ERR invalid expire time in '{name}' command"));
    let deadline = int_arg(time)?
        .checked_mul(unit)
        .and_then(|ms| ms.checked_add(now_ms()))
        .ok_or_else(invalid)?;
    let Some(current) = keyspace.expires_at(key) else {
        return Ok(BytesFrame::Integer(0));
    };
    let refused = (nx && current.is_some())
        || (xx && current.is_none())
        || (gt && current.is_none_or(|at| deadline <= at))
        || (lt && current.is_some_and(|at| deadline >= at));
    if refused {
        return Ok(BytesFrame::Integer(0));
    }
    // A deadline already past deletes the key (and still answers 1), as Redis does.
    keyspace.set_expiry(key, Some(deadline));
    Ok(BytesFrame::Integer(1))
}

/// `TTL`/`PTTL key`: -2 when there is no such key, -1 when it has no expiry.
fn ttl(keyspace: &mut Keyspace, args: &[Bytes], name: &str, unit: i64) -> Reply {
    let [key] = args else {
        return Err(wrong_arity(name));
    };
    Ok(BytesFrame::Integer(match keyspace.expires_at(key) {
        None => -2,
        Some(None) => -1,
        // Redis rounds seconds to the nearest.
        Some(Some(at)) => ((at - now_ms()).max(0) + unit / 2) / unit,
    }))
}

fn keys(keyspace: &mut Keyspace, args: &[Bytes]) -> Reply {
    let [pattern] = args else {
        return Err(wrong_arity("keys"));
    };
    let pattern = String::from_utf8_lossy(pattern);
    Ok(bulks(keyspace.keys().into_iter().filter(|key| {
        subscriber_patterns::glob::matches(&pattern, &String::from_utf8_lossy(key))
    })))
}

/// `FLUSHALL`/`FLUSHDB [ASYNC | SYNC]`: both empty the one keyspace.
fn flush(keyspace: &mut Keyspace, args: &[Bytes]) -> Reply {
    match args {
        [] => {}
        [mode] if mode.eq_ignore_ascii_case(b"SYNC") || mode.eq_ignore_ascii_case(b"ASYNC") => {}
        _ => return Err(syntax_error()),
    }
    keyspace.flush();
    Ok(ok())
}

fn incr_by(keyspace: &mut Keyspace, key: &Bytes, by: i64) -> Reply {
    let current = match keyspace.value(key) {
        None => 0,
        Some(Value::String(s)) => parse_int(s).ok_or_else(not_an_integer)?,
        Some(_) => return Err(wrong_type()),
    };
    let new = current.checked_add(by).ok_or_else(overflow)?;
    // The expiry stays, as in Redis.
    let expires_at = keyspace.expires_at(key).flatten();
    keyspace.insert(
        key.clone(),
        Value::String(Bytes::from(new.to_string())),
        expires_at,
    );
    Ok(BytesFrame::Integer(new))
}
