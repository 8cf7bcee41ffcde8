//! The native emulation of `subscriber-runtime/src/broker/redis/durable_publish.lua` (version 2):
//! appends a message to a durable channel's stream and publishes it live with its position, in one
//! atomic step.
//!
//! The contract, from the script's header:
//! - `KEYS[1]` the channel's stream, `KEYS[2]` its meta hash (fields `epoch`, `offset`);
//! - `ARGV[1]` the channel on Redis, `ARGV[2]` the payload (a JSON object) after its opening `{`,
//!   with a `,` put first by the caller unless the object is empty (`,"n":1}` for `{"n":1}`, `}`
//!   for `{}`; the script does not look at it), `ARGV[3]` the messages kept (`MAXLEN ~`), `ARGV[4]`
//!   the time kept after the last publish (ms), `ARGV[5]` the epoch to start with when the meta
//!   hash is new (first use, expiry, data lost);
//! - the message, published and stored as the entry's one field `m`, is
//!   `{"streamEpoch":"<epoch>","streamOffset":<offset>` followed by `ARGV[2]`;
//! - each entry's ID is `<offset>-0`; replies `[epoch, offset]`.
//!
//! [`run`] makes the script's `redis.call`s, in its order, with its line numbers (which Redis
//! quotes in a script's errors), and raises the Lua error of its one other failure (`ARGV[2]`
//! missing: `nil` in the concatenation). A failing call ends the script, and what the calls before
//! it did stays done, as in Redis. The offset is a Lua number, written with `%.14g` ([`lua_number`]):
//! from 10^14 on in exponent form, an ID that `XADD` refuses. One difference: the mock's `MAXLEN ~`
//! keeps exactly `ARGV[3]` entries (Redis, at least as many).

use bytes::Bytes;
use redis_protocol::resp2::types::BytesFrame;

use super::resp::bulk;
use super::scripting::{Arg, ScriptRun};

/// The first line of the script.
pub(super) const TAG: &str = "-- switchboard:durable-publish:2";

/// Runs the script with its `KEYS` and `ARGV`.
pub(super) fn run(
    script: &mut ScriptRun<'_>,
    keys: &[Bytes],
    argv: &[Bytes],
) -> Result<BytesFrame, BytesFrame> {
    // Lua's KEYS[i] and ARGV[i], 1-based: `nil` when not passed.
    let key = |i: usize| keys.get(i - 1).map(|k| k.as_ref());
    let arg = |i: usize| argv.get(i - 1).map(|a| a.as_ref());

    // local offset = redis.call('HINCRBY', KEYS[2], 'offset', 1)
    let reply = script.call(15, &[word("HINCRBY"), key(2), word("offset"), word("1")])?;
    let offset = integer(&reply);
    // local epoch = false
    // if offset > 1 then epoch = redis.call('HGET', KEYS[2], 'epoch') end
    let mut epoch = None;
    if offset > 1 {
        if let BytesFrame::BulkString(found) =
            script.call(18, &[word("HGET"), key(2), word("epoch")])?
        {
            epoch = Some(found);
        }
    }
    let epoch = match epoch {
        Some(epoch) => epoch,
        None => {
            // epoch = ARGV[5]
            // redis.call('HSET', KEYS[2], 'epoch', epoch)
            // redis.call('DEL', KEYS[1])
            script.call(23, &[word("HSET"), key(2), word("epoch"), arg(5)])?;
            script.call(24, &[word("DEL"), key(1)])?;
            // HSET has failed when ARGV[5] is nil.
            Bytes::copy_from_slice(arg(5).unwrap_or_default())
        }
    };
    // local message = '{"streamEpoch":"' .. epoch .. '","streamOffset":' .. offset .. ARGV[2]
    let offset_text = lua_number(offset);
    let Some(rest) = arg(2) else {
        return Err(script.lua_error(26, "attempt to concatenate field '?' (a nil value)"));
    };
    let mut message = b"{\"streamEpoch\":\"".to_vec();
    message.extend_from_slice(&epoch);
    message.extend_from_slice(b"\",\"streamOffset\":");
    message.extend_from_slice(offset_text.as_bytes());
    message.extend_from_slice(rest);
    // redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], offset .. '-0', 'm', message)
    let id = format!("{offset_text}-0");
    let add = [
        word("XADD"),
        key(1),
        word("MAXLEN"),
        word("~"),
        arg(3),
        Some(id.as_bytes()),
        word("m"),
        Some(&message),
    ];
    script.call(27, &add)?;
    script.call(28, &[word("PEXPIRE"), key(1), arg(4)])?;
    script.call(29, &[word("PEXPIRE"), key(2), arg(4)])?;
    script.call(30, &[word("PUBLISH"), arg(1), Some(&message)])?;
    // return {epoch, offset}: the offset is below 10^14 here (or XADD has failed), so exact.
    Ok(BytesFrame::Array(vec![
        bulk(epoch),
        BytesFrame::Integer(offset),
    ]))
}

/// A literal argument of a call.
fn word(text: &str) -> Arg<'_> {
    Some(text.as_bytes())
}

/// An integer reply's value.
fn integer(reply: &BytesFrame) -> i64 {
    match reply {
        BytesFrame::Integer(n) => *n,
        _ => 0,
    }
}

/// How Lua (5.1, as in Redis) writes an integer reply in a string: the Lua number (a double) of
/// `n`, formatted with C's `%.14g`: in full up to 14 digits, else rounded (ties to even, as glibc)
/// to 14 significant digits in exponent form, trailing zeros dropped (`1e+14`, `1.2345678901234e+14`).
pub(super) fn lua_number(n: i64) -> String {
    // Exact: an integral double of magnitude at most 2^63.
    let value = n as f64 as i128;
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
