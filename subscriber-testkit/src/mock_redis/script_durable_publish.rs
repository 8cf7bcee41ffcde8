//! The native emulation of `subscriber-runtime/src/broker/redis/durable_publish.lua`: appends a
//! message to a durable channel's stream and publishes it live with its position, in one atomic
//! step.
//!
//! The contract, from the script's header:
//! - `KEYS[1]` the channel's stream, `KEYS[2]` its meta hash (fields `epoch`, `offset`);
//! - `ARGV[1]` the channel on Redis, `ARGV[2]` the payload (a JSON object's text, starting with
//!   `{`), `ARGV[3]` the messages kept (`MAXLEN ~`), `ARGV[4]` the time kept after the last
//!   publish (ms), `ARGV[5]` the epoch to start with when the stream is new (or was lost),
//!   `ARGV[6]` the publish time (Unix ms, kept with the entry as `t`);
//! - each entry's ID is `<offset>-0`; replies `[epoch, offset]`.
//!
//! [`run`] makes the script's `redis.call`s, in its order, with its line numbers (which Redis
//! quotes in a script's errors). Two differences: the mock's `MAXLEN ~` keeps exactly `ARGV[3]`
//! entries (Redis, at least as many); and Lua formats the offset with `%.14g`, so an offset of
//! 10^14 or more would be written in exponent form there, and in full here.

use bytes::Bytes;
use redis_protocol::resp2::types::BytesFrame;

use super::resp::bulk;
use super::scripting::{Arg, ScriptRun};

/// The first line of the script.
pub(super) const TAG: &str = "-- switchboard:durable-publish:1";

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
    let reply = script.call(13, &[word("HINCRBY"), key(2), word("offset"), word("1")])?;
    let mut offset = integer(&reply);
    // local epoch = redis.call('HGET', KEYS[2], 'epoch')
    let mut epoch = match script.call(14, &[word("HGET"), key(2), word("epoch")])? {
        BytesFrame::BulkString(epoch) => Some(epoch),
        _ => None,
    };
    if epoch.is_none() {
        // epoch = ARGV[5]; redis.call('HSET', KEYS[2], 'epoch', epoch)
        epoch = arg(5).map(Bytes::copy_from_slice);
        script.call(17, &[word("HSET"), key(2), word("epoch"), epoch.as_deref()])?;
    }
    // local added = redis.pcall('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], offset .. '-0',
    //                           'p', ARGV[2], 't', ARGV[6])
    let id = format!("{offset}-0");
    let added = script.pcall(&[
        word("XADD"),
        key(1),
        word("MAXLEN"),
        word("~"),
        arg(3),
        Some(id.as_bytes()),
        word("p"),
        arg(2),
        word("t"),
        arg(6),
    ]);
    if matches!(added, BytesFrame::Error(_)) {
        // The meta hash was lost but not the stream (or the reverse): start a new epoch.
        script.call(22, &[word("DEL"), key(1)])?;
        epoch = arg(5).map(Bytes::copy_from_slice);
        offset = 1;
        let meta = [
            word("HSET"),
            key(2),
            word("epoch"),
            epoch.as_deref(),
            word("offset"),
            word("1"),
        ];
        script.call(25, &meta)?;
        let add = [
            word("XADD"),
            key(1),
            word("MAXLEN"),
            word("~"),
            arg(3),
            word("1-0"),
            word("p"),
            arg(2),
            word("t"),
            arg(6),
        ];
        script.call(26, &add)?;
    }
    script.call(28, &[word("PEXPIRE"), key(1), arg(4)])?;
    script.call(29, &[word("PEXPIRE"), key(2), arg(4)])?;
    // Every path above has failed already when the epoch or ARGV[2] is nil.
    let epoch = epoch.unwrap_or_default();
    let message = live_message(&epoch, offset, arg(2).unwrap_or_default());
    script.call(35, &[word("PUBLISH"), arg(1), Some(&message)])?;
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

/// The published message, as the script builds it: `{"streamEpoch":"<epoch>","streamOffset":
/// <offset>` then `,` unless the payload after its first byte starts with optional whitespace
/// then `}`, then the payload without its first byte.
pub(super) fn live_message(epoch: &[u8], offset: i64, payload: &[u8]) -> Vec<u8> {
    let rest = payload.get(1..).unwrap_or_default();
    // string.match(rest, '^%s*}'), where %s is C's isspace.
    let empty_object = rest
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r'))
        == Some(&b'}');
    let mut message = b"{\"streamEpoch\":\"".to_vec();
    message.extend_from_slice(epoch);
    message.extend_from_slice(b"\",\"streamOffset\":");
    message.extend_from_slice(offset.to_string().as_bytes());
    if !empty_object {
        message.push(b',');
    }
    message.extend_from_slice(rest);
    message
}
