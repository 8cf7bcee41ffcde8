//! The native emulation of `subscriber-runtime/src/broker/redis/durable_publish.lua` (version 4):
//! appends messages to a durable channel's stream and publishes each live with its position, in
//! one atomic step, and trims the stream to its window in time.
//!
//! The contract, from the script's header:
//! - `KEYS[1]` the channel's stream, `KEYS[2]` its meta hash (fields `epoch`, `offset`, `check`);
//! - `ARGV[1]` the channel on Redis, `ARGV[2]` the messages kept (`MAXLEN ~`), `ARGV[3]` the
//!   window (ms each message is kept), `ARGV[4]` the epoch to start with when the meta hash is new
//!   (first use, expiry, data lost), `ARGV[5]` the publisher's clock (ms);
//! - `ARGV[6]`, `ARGV[7]`, ... the payloads (JSON objects), each after its opening `{`, with a
//!   `,` put first by the caller unless the object is empty (`,"n":1}` for `{"n":1}`, `}` for
//!   `{}`; the script does not look at them): `n = #ARGV - 5` of them;
//! - each message, published and stored as the entry's field `m` (its field `t` is `ARGV[5]`), is
//!   `{"streamEpoch":"<epoch>","streamOffset":<offset>` followed by its payload; the payloads get
//!   consecutive offsets, in order; each entry's ID is `<offset>-0`; replies
//!   `[epoch, the first payload's offset]`;
//! - when `check` is missing or due (`ARGV[5]` at or past it): the entries whose `t` is older than
//!   the window are trimmed (`XRANGE ... COUNT 128`, at most 16 times, then `XTRIM ... MINID`),
//!   `check` is set a sixteenth of the window later (unless old entries may remain), and both keys
//!   expire a window and a sixteenth later.
//!
//! [`run`] makes the script's `redis.call`s, in its order, with its line numbers (which Redis
//! quotes in a script's errors). A failing call ends the script, and what the calls before it did
//! stays done (the messages already added and published included), as in Redis. The script has no
//! other failure: a missing `ARGV[i]` (fewer than 5 passed, so `n` is negative) is a `nil` given
//! to a `redis.call`, which refuses it; the numbers the script reads (`ARGV[3]`, `ARGV[5]`,
//! `check`, `t`) are Lua's `tonumber(...) or <default>`.
//!
//! Lua numbers are doubles, and the emulation computes with them as the script does: the offset
//! that `HINCRBY` replies, `first`, each message's offset. An offset is written with `%.14g`
//! ([`lua_number`]): from 10^14 on in exponent form, an ID that `XADD` refuses; the `first` replied
//! is the double cast to a C `long long` ([`c_long_long`]). A number passed to `redis.call`
//! (`check`, the expiry) is written as Redis 7.0 does, `%.17g` ([`call_number`]). With `n` zero,
//! `HINCRBY ... 0` still creates the meta hash and the loop runs zero times; with `n` negative the
//! offset is decremented. One difference: the mock's `MAXLEN ~` keeps exactly `ARGV[2]` entries
//! (Redis, at least as many).

use bytes::Bytes;
use redis_protocol::resp2::types::BytesFrame;

use super::resp::bulk;
use super::scripting::{Arg, ScriptRun};

/// The first line of the script.
pub(super) const TAG: &str = "-- switchboard:durable-publish:4";

/// Entries the trim reads at a time, and how many times at most.
const TRIM_PAGE: usize = 128;
const TRIM_PAGES: usize = 16;

/// Runs the script with its `KEYS` and `ARGV`.
pub(super) fn run(
    script: &mut ScriptRun<'_>,
    keys: &[Bytes],
    argv: &[Bytes],
) -> Result<BytesFrame, BytesFrame> {
    // Lua's KEYS[i] and ARGV[i], 1-based: `nil` when not passed.
    let key = |i: usize| keys.get(i - 1).map(|k| k.as_ref());
    let arg = |i: usize| argv.get(i - 1).map(|a| a.as_ref());
    let payloads = argv.get(5..).unwrap_or_default();

    // local n = #ARGV - 5
    // (a small integer, which `redis.call` writes in full)
    let n = argv.len() as f64 - 5.0;
    let n_text = (argv.len() as i64 - 5).to_string();
    // local last = redis.call('HINCRBY', KEYS[2], 'offset', n)
    let hincrby = [
        word("HINCRBY"),
        key(2),
        word("offset"),
        Some(n_text.as_bytes()),
    ];
    let mut last = lua_integer(&script.call(26, &hincrby)?);
    // local epoch = false; local check = false
    // if last > n then
    //   local meta = redis.call('HMGET', KEYS[2], 'epoch', 'check')
    //   epoch = meta[1]; check = meta[2]
    // end
    let mut epoch = None;
    let mut check = None;
    if last > n {
        let meta = script.call(30, &[word("HMGET"), key(2), word("epoch"), word("check")])?;
        if let BytesFrame::Array(fields) = meta {
            let mut fields = fields.into_iter().map(|field| match field {
                BytesFrame::BulkString(value) => Some(value),
                _ => None,
            });
            epoch = fields.next().flatten();
            check = fields.next().flatten();
        }
    }
    let epoch = match epoch {
        Some(epoch) => epoch,
        None => {
            // epoch = ARGV[4]; last = n; check = false
            // redis.call('HSET', KEYS[2], 'epoch', epoch, 'offset', last)
            // redis.call('DEL', KEYS[1])
            last = n;
            check = None;
            let hset = [
                word("HSET"),
                key(2),
                word("epoch"),
                arg(4),
                word("offset"),
                Some(n_text.as_bytes()),
            ];
            script.call(39, &hset)?;
            script.call(40, &[word("DEL"), key(1)])?;
            // HSET has failed when ARGV[4] is nil.
            Bytes::copy_from_slice(arg(4).unwrap_or_default())
        }
    };
    // local first = last - n + 1
    let first = last - n + 1.0;
    // local head = '{"streamEpoch":"' .. epoch .. '","streamOffset":'
    let mut head = b"{\"streamEpoch\":\"".to_vec();
    head.extend_from_slice(&epoch);
    head.extend_from_slice(b"\",\"streamOffset\":");
    // for i = 1, n do (zero times when n < 1)
    for (i, payload) in payloads.iter().enumerate() {
        // local offset = first + i - 1
        let offset = first + (i + 1) as f64 - 1.0;
        // local message = head .. offset .. ARGV[5 + i]
        let offset_text = lua_number(offset);
        let mut message = head.clone();
        message.extend_from_slice(offset_text.as_bytes());
        message.extend_from_slice(payload);
        // redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], offset .. '-0', 'm', message,
        //   't', ARGV[5])
        let id = format!("{offset_text}-0");
        let add = [
            word("XADD"),
            key(1),
            word("MAXLEN"),
            word("~"),
            arg(2),
            Some(id.as_bytes()),
            word("m"),
            Some(&message),
            word("t"),
            arg(5),
        ];
        script.call(47, &add)?;
        // redis.call('PUBLISH', ARGV[1], message)
        script.call(48, &[word("PUBLISH"), arg(1), Some(&message)])?;
    }
    // local now = tonumber(ARGV[5]) or 0
    let now = tonumber(arg(5)).unwrap_or(0.0);
    // if not check or now >= (tonumber(check) or 0) then
    let due = check.is_none_or(|check| now >= tonumber(Some(&check)).unwrap_or(0.0));
    if due {
        trim(script, key(1), key(2), arg(3), now)?;
    }
    // return {epoch, first}
    Ok(BytesFrame::Array(vec![
        bulk(epoch),
        BytesFrame::Integer(c_long_long(first)),
    ]))
}

/// The script's window block: trims the entries older than the window, sets the next `check`,
/// renews both keys' expiry.
fn trim(
    script: &mut ScriptRun<'_>,
    stream: Arg<'_>,
    meta: Arg<'_>,
    window: Arg<'_>,
    now: f64,
) -> Result<(), BytesFrame> {
    // local window = tonumber(ARGV[3]) or 0
    // local slack = math.max(1, math.floor(window / 16))
    // local cutoff = now - window
    let window = tonumber(window).unwrap_or(0.0);
    let slack = (window / 16.0).floor().max(1.0);
    let cutoff = now - window;
    let mut from = b"-".to_vec();
    let mut keep: Option<Bytes> = None;
    let mut old: Option<Bytes> = None;
    // for round = 1, 16 do
    for _ in 0..TRIM_PAGES {
        // local entries = redis.call('XRANGE', KEYS[1], from, '+', 'COUNT', 128)
        let page = TRIM_PAGE.to_string();
        let range = [
            word("XRANGE"),
            stream,
            Some(&from),
            word("+"),
            word("COUNT"),
            Some(page.as_bytes()),
        ];
        let entries = match script.call(59, &range)? {
            BytesFrame::Array(entries) => entries,
            _ => Vec::new(),
        };
        for entry in &entries {
            let BytesFrame::Array(entry) = entry else {
                continue;
            };
            let id = match entry.first() {
                Some(BytesFrame::BulkString(id)) => id.clone(),
                _ => Bytes::new(),
            };
            let fields: &[BytesFrame] = match entry.get(1) {
                Some(BytesFrame::Array(fields)) => fields,
                _ => &[],
            };
            let text = |i: usize| match fields.get(i) {
                Some(BytesFrame::BulkString(value)) => Some(value.as_ref()),
                _ => None,
            };
            // if fields[3] ~= 't' or (tonumber(fields[4]) or cutoff) >= cutoff then
            if text(2) != Some(b"t".as_slice()) || tonumber(text(3)).unwrap_or(cutoff) >= cutoff {
                keep = Some(id);
                break;
            }
            old = Some(id);
        }
        // if keep or #entries < 128 then break end
        if keep.is_some() || entries.len() < TRIM_PAGE {
            break;
        }
        // from = '(' .. old
        from = b"(".to_vec();
        from.extend_from_slice(old.as_deref().unwrap_or_default());
    }
    // if old then redis.call('XTRIM', KEYS[1], 'MINID', keep or old) end
    if let Some(old) = &old {
        let min_id = keep.as_ref().unwrap_or(old);
        script.call(74, &[word("XTRIM"), stream, word("MINID"), Some(min_id)])?;
    }
    // if keep or not old then redis.call('HSET', KEYS[2], 'check', now + slack) end
    if keep.is_some() || old.is_none() {
        let next = call_number(now + slack);
        script.call(
            77,
            &[word("HSET"), meta, word("check"), Some(next.as_bytes())],
        )?;
    }
    // redis.call('PEXPIRE', KEYS[1], window + slack)
    // redis.call('PEXPIRE', KEYS[2], window + slack)
    let expiry = call_number(window + slack);
    script.call(79, &[word("PEXPIRE"), stream, Some(expiry.as_bytes())])?;
    script.call(80, &[word("PEXPIRE"), meta, Some(expiry.as_bytes())])?;
    Ok(())
}

/// Lua 5.1's `tonumber(s)` of a string (`nil` for `nil`): C's `strtod` of it, whitespace around
/// allowed, `0x` hexadecimal integers included; `None` when it is not a number.
fn tonumber(text: Arg<'_>) -> Option<f64> {
    let text = std::str::from_utf8(text?)
        .ok()?
        .trim_matches(|c: char| c.is_ascii_whitespace());
    let (sign, digits) = match text.strip_prefix('-') {
        Some(rest) => (-1.0, rest),
        None => (1.0, text.strip_prefix('+').unwrap_or(text)),
    };
    if let Some(hex) = digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        return u64::from_str_radix(hex, 16).ok().map(|n| sign * n as f64);
    }
    if digits.starts_with(['+', '-']) {
        return None;
    }
    text.parse().ok()
}

/// A Lua number given to `redis.call`, as Redis 7.0 writes it: C's `%.17g`. Integers below 10^17
/// (every number the script passes in practice) are written in full; others as Rust writes them,
/// which may differ from `%.17g` in form (the mock's one known difference here).
pub(super) fn call_number(d: f64) -> String {
    if d.is_nan() {
        return if d.is_sign_negative() { "-nan" } else { "nan" }.to_owned();
    }
    if d.is_infinite() {
        return if d < 0.0 { "-inf" } else { "inf" }.to_owned();
    }
    if d.fract() == 0.0 && d.abs() < 1e17 {
        if d == 0.0 && d.is_sign_negative() {
            return "-0".to_owned();
        }
        return format!("{}", d as i64);
    }
    format!("{d:e}")
}

/// A literal argument of a call.
fn word(text: &str) -> Arg<'_> {
    Some(text.as_bytes())
}

/// An integer reply as the Lua number (a double) a script gets.
fn lua_integer(reply: &BytesFrame) -> f64 {
    match reply {
        // Rounded to the nearest double, as Redis's `lua_pushnumber(lua, (lua_Number)n)`.
        BytesFrame::Integer(n) => *n as f64,
        _ => 0.0,
    }
}

/// What Redis replies for a Lua number: the C cast `(long long)d`, which truncates toward zero.
/// Out of range (from 2^63 on, below -2^63, NaN) the cast is undefined in C: x86-64 (`cvttsd2si`)
/// gives `i64::MIN`, as a real Redis on it answers for an offset of 2^63; elsewhere (AArch64's
/// `fcvtzs`) it saturates, as Rust's `as` does.
pub(super) fn c_long_long(d: f64) -> i64 {
    // -2^63 <= d < 2^63, in doubles exactly.
    let in_range = (-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0).contains(&d);
    if !in_range && cfg!(any(target_arch = "x86", target_arch = "x86_64")) {
        return i64::MIN;
    }
    d as i64
}

/// How Lua (5.1, as in Redis) writes a number in a string (`..`): the double `n`, an integer here,
/// formatted with C's `%.14g`: in full up to 14 digits, else rounded (ties to even, as glibc) to 14
/// significant digits in exponent form, trailing zeros dropped (`1e+14`, `1.2345678901234e+14`).
pub(super) fn lua_number(n: f64) -> String {
    // Exact: an integral double of magnitude at most about 2^63 (the offsets of the script).
    let value = n as i128;
    let sign = if value < 0 { "-" } else { "" };
    let digits = value.unsigned_abs().to_string();
    if digits.len() <= 14 {
        return format!("{sign}{digits}");
    }
    let (head, tail) = digits.split_at(14);
    let mut head: u64 = head.parse().unwrap_or_default();
    let mut exponent = digits.len() - 1;
    let tail = tail.as_bytes();
    let round_up = match tail[0] {
        b'6'..=b'9' => true,
        b'5' => tail[1..].iter().any(|d| *d != b'0') || head % 2 == 1,
        _ => false,
    };
    if round_up {
        head += 1;
        if head == 100_000_000_000_000 {
            head /= 10;
            exponent += 1;
        }
    }
    let head = head.to_string();
    let (first, fraction) = head.split_at(1);
    let fraction = fraction.trim_end_matches('0');
    let point = if fraction.is_empty() { "" } else { "." };
    format!("{sign}{first}{point}{fraction}e+{exponent:02}")
}
