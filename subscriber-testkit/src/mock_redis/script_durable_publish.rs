//! The native emulation of `subscriber-runtime/src/broker/redis/durable_publish.lua` (version 3):
//! appends messages to a durable channel's stream and publishes each live with its position, in
//! one atomic step.
//!
//! The contract, from the script's header:
//! - `KEYS[1]` the channel's stream, `KEYS[2]` its meta hash (fields `epoch`, `offset`);
//! - `ARGV[1]` the channel on Redis, `ARGV[2]` the messages kept (`MAXLEN ~`), `ARGV[3]` the time
//!   kept after the last publish (ms), `ARGV[4]` the epoch to start with when the meta hash is new
//!   (first use, expiry, data lost);
//! - `ARGV[5]`, `ARGV[6]`, ... the payloads (JSON objects), each after its opening `{`, with a `,`
//!   put first by the caller unless the object is empty (`,"n":1}` for `{"n":1}`, `}` for `{}`;
//!   the script does not look at them): `n = #ARGV - 4` of them;
//! - each message, published and stored as the entry's one field `m`, is
//!   `{"streamEpoch":"<epoch>","streamOffset":<offset>` followed by its payload; the payloads get
//!   consecutive offsets, in order; each entry's ID is `<offset>-0`; replies
//!   `[epoch, the first payload's offset]`.
//!
//! [`run`] makes the script's `redis.call`s, in its order, with its line numbers (which Redis
//! quotes in a script's errors). A failing call ends the script, and what the calls before it did
//! stays done (the messages already added and published included), as in Redis. The script has no
//! other failure: a missing `ARGV[i]` (fewer than 4 passed, so `n` is negative) is a `nil` given
//! to a `redis.call`, which refuses it.
//!
//! Lua numbers are doubles, and the emulation computes with them as the script does: the offset
//! that `HINCRBY` replies, `first`, each message's offset. An offset is written with `%.14g`
//! ([`lua_number`]): from 10^14 on in exponent form, an ID that `XADD` refuses; the `first` replied
//! is the double cast to a C `long long` ([`c_long_long`]). With `n` zero, `HINCRBY ... 0` still
//! creates the meta hash, the loop runs zero times and the `PEXPIRE`s run; with `n` negative the
//! offset is decremented. One difference: the mock's `MAXLEN ~` keeps exactly `ARGV[2]` entries
//! (Redis, at least as many).

use bytes::Bytes;
use redis_protocol::resp2::types::BytesFrame;

use super::resp::bulk;
use super::scripting::{Arg, ScriptRun};

/// The first line of the script.
pub(super) const TAG: &str = "-- switchboard:durable-publish:3";

/// Runs the script with its `KEYS` and `ARGV`.
pub(super) fn run(
    script: &mut ScriptRun<'_>,
    keys: &[Bytes],
    argv: &[Bytes],
) -> Result<BytesFrame, BytesFrame> {
    // Lua's KEYS[i] and ARGV[i], 1-based: `nil` when not passed.
    let key = |i: usize| keys.get(i - 1).map(|k| k.as_ref());
    let arg = |i: usize| argv.get(i - 1).map(|a| a.as_ref());
    let payloads = argv.get(4..).unwrap_or_default();

    // local n = #ARGV - 4
    // (a small integer, which `redis.call` writes in full)
    let n = argv.len() as f64 - 4.0;
    let n_text = (argv.len() as i64 - 4).to_string();
    // local last = redis.call('HINCRBY', KEYS[2], 'offset', n)
    let hincrby = [
        word("HINCRBY"),
        key(2),
        word("offset"),
        Some(n_text.as_bytes()),
    ];
    let mut last = lua_integer(&script.call(19, &hincrby)?);
    // local epoch = false
    // if last > n then epoch = redis.call('HGET', KEYS[2], 'epoch') end
    let mut epoch = None;
    if last > n {
        if let BytesFrame::BulkString(found) =
            script.call(22, &[word("HGET"), key(2), word("epoch")])?
        {
            epoch = Some(found);
        }
    }
    let epoch = match epoch {
        Some(epoch) => epoch,
        None => {
            // epoch = ARGV[4]
            // last = n
            // redis.call('HSET', KEYS[2], 'epoch', epoch, 'offset', last)
            // redis.call('DEL', KEYS[1])
            last = n;
            let hset = [
                word("HSET"),
                key(2),
                word("epoch"),
                arg(4),
                word("offset"),
                Some(n_text.as_bytes()),
            ];
            script.call(28, &hset)?;
            script.call(29, &[word("DEL"), key(1)])?;
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
        // local message = head .. offset .. ARGV[4 + i]
        let offset_text = lua_number(offset);
        let mut message = head.clone();
        message.extend_from_slice(offset_text.as_bytes());
        message.extend_from_slice(payload);
        // redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], offset .. '-0', 'm', message)
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
        ];
        script.call(36, &add)?;
        // redis.call('PUBLISH', ARGV[1], message)
        script.call(37, &[word("PUBLISH"), arg(1), Some(&message)])?;
    }
    // redis.call('PEXPIRE', KEYS[1], ARGV[3])
    // redis.call('PEXPIRE', KEYS[2], ARGV[3])
    script.call(39, &[word("PEXPIRE"), key(1), arg(3)])?;
    script.call(40, &[word("PEXPIRE"), key(2), arg(3)])?;
    // return {epoch, first}
    Ok(BytesFrame::Array(vec![
        bulk(epoch),
        BytesFrame::Integer(c_long_long(first)),
    ]))
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
