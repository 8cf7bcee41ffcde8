//! Tests of the streams (entries, consumer groups, blocking reads), `HMGET` and the scripts,
//! through the `redis` crate and raw RESP, and comparisons with a real Redis when `redis-server`
//! is on `PATH` (the stream commands, and the durable-publish script run for real).

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use redis::Value;
use redis_protocol::resp2::types::BytesFrame;

use super::resp::{bulk, error, ok};
use super::tests_data::{arr, b, connection, err, q, WRONGTYPE};
use super::tests_transactions::{call, raw, Raw, RealRedis};
use super::MockRedis;

const WAIT: Duration = Duration::from_secs(5);

/// The publisher's clock (ms) the tests give the script.
const NOW: &str = "1700000000000";

/// The Lua script the runtime publishes durable messages with; the mock emulates it natively.
const DURABLE_PUBLISH: &str =
    include_str!("../../../subscriber-runtime/src/broker/redis/durable_publish.lua");

fn frame(args: &[&str]) -> BytesFrame {
    BytesFrame::Array(args.iter().map(|a| bulk(a.as_bytes().to_vec())).collect())
}

async fn send(conn: &mut Raw, args: &[&str]) {
    conn.send(frame(args)).await.unwrap();
}

async fn next(conn: &mut Raw) -> BytesFrame {
    tokio::time::timeout(WAIT, conn.next())
        .await
        .expect("a reply in time")
        .expect("the connection is open")
        .expect("a valid frame")
}

/// Nothing arrives on `conn` for a while.
async fn silent(conn: &mut Raw) -> bool {
    tokio::time::timeout(Duration::from_millis(150), conn.next())
        .await
        .is_err()
}

/// The connection was closed by the server.
async fn closed(conn: &mut Raw) -> bool {
    matches!(
        tokio::time::timeout(WAIT, conn.next()).await,
        Ok(None | Some(Err(_)))
    )
}

fn bulks(items: &[&str]) -> BytesFrame {
    BytesFrame::Array(items.iter().map(|i| bulk(i.as_bytes().to_vec())).collect())
}

/// A stream entry, as the stream commands answer it (raw RESP).
fn entry(id: &str, fields: &[&str]) -> BytesFrame {
    BytesFrame::Array(vec![bulk(id.as_bytes().to_vec()), bulks(fields)])
}

/// `[[key, [entries]]]`, the reply of `XREAD`/`XREADGROUP` for one stream (raw RESP).
fn read_reply(key: &str, entries: Vec<BytesFrame>) -> BytesFrame {
    BytesFrame::Array(vec![BytesFrame::Array(vec![
        bulk(key.as_bytes().to_vec()),
        BytesFrame::Array(entries),
    ])])
}

/// A stream entry through the `redis` crate.
fn rentry(id: &str, fields: &[&str]) -> Value {
    Value::Array(vec![b(id), arr(fields)])
}

async fn wait_for_connections(redis: &MockRedis, count: usize) {
    let deadline = Instant::now() + WAIT;
    while redis.connection_count() != count {
        assert!(
            Instant::now() < deadline,
            "still {} connections",
            redis.connection_count()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn xadd_and_xrange_with_exclusive_ranges_and_count() {
    let redis = MockRedis::start().await;
    let mut c = connection(&redis).await;
    for (id, v) in [("1-0", "a"), ("1-1", "b"), ("2-0", "c"), ("3-5", "d")] {
        assert_eq!(q::<String>(&mut c, &["XADD", "s", id, "f", v]).await, id);
    }
    // `<ms>-*` continues the sequence of the same millisecond; `*` uses the clock.
    assert_eq!(
        q::<String>(&mut c, &["XADD", "s", "3-*", "f", "e"]).await,
        "3-6"
    );
    assert_eq!(
        q::<String>(&mut c, &["XADD", "s", "4-*", "f", "g", "h", "i"]).await,
        "4-0"
    );
    let auto = q::<String>(&mut c, &["XADD", "s", "*", "f", "now"]).await;
    let (ms, seq) = auto.split_once('-').unwrap();
    assert!(ms.parse::<u64>().unwrap() > 1_600_000_000_000, "{auto}");
    assert_eq!(seq, "0");
    assert_eq!(q::<i64>(&mut c, &["XLEN", "s"]).await, 7);
    assert_eq!(q::<i64>(&mut c, &["XLEN", "nope"]).await, 0);
    assert_eq!(
        q::<Value>(&mut c, &["TYPE", "s"]).await,
        Value::SimpleString("stream".into())
    );

    let range = |args: &'static [&'static str]| {
        let mut c = c.clone();
        async move { q::<Value>(&mut c, args).await }
    };
    assert_eq!(
        range(&["XRANGE", "s", "-", "2"]).await,
        Value::Array(vec![
            rentry("1-0", &["f", "a"]),
            rentry("1-1", &["f", "b"]),
            rentry("2-0", &["f", "c"]),
        ])
    );
    // An incomplete start is `<ms>-0`, an incomplete end `<ms>-<max>`.
    assert_eq!(
        range(&["XRANGE", "s", "1", "1"]).await,
        Value::Array(vec![rentry("1-0", &["f", "a"]), rentry("1-1", &["f", "b"])])
    );
    // Exclusive bounds.
    assert_eq!(
        range(&["XRANGE", "s", "(1-0", "(3-5"]).await,
        Value::Array(vec![rentry("1-1", &["f", "b"]), rentry("2-0", &["f", "c"])])
    );
    assert_eq!(
        range(&["XRANGE", "s", "(3-5", "4"]).await,
        Value::Array(vec![
            rentry("3-6", &["f", "e"]),
            rentry("4-0", &["f", "g", "h", "i"])
        ])
    );
    // COUNT, and XREVRANGE (end first).
    assert_eq!(
        range(&["XRANGE", "s", "-", "+", "COUNT", "2"]).await,
        Value::Array(vec![rentry("1-0", &["f", "a"]), rentry("1-1", &["f", "b"])])
    );
    assert_eq!(
        range(&["XREVRANGE", "s", "(4-0", "-", "count", "2"]).await,
        Value::Array(vec![rentry("3-6", &["f", "e"]), rentry("3-5", &["f", "d"])])
    );
    assert_eq!(
        range(&["XRANGE", "s", "-", "+", "COUNT", "0"]).await,
        Value::Nil
    );
    assert_eq!(range(&["XRANGE", "s", "5", "2"]).await, arr(&[]));
    assert_eq!(range(&["XRANGE", "nope", "-", "+"]).await, arr(&[]));
    assert_eq!(
        err(&mut c, &["XRANGE", "s", "(-", "+"]).await,
        "ERR Invalid stream ID specified as stream command argument"
    );
    assert_eq!(
        err(&mut c, &["XRANGE", "s", "-", "(0-0"]).await,
        "ERR invalid end ID for the interval"
    );
    assert_eq!(
        err(&mut c, &["XRANGE", "s", "-", "+", "COUNT"]).await,
        "ERR syntax error"
    );

    // XDEL; the last ID stays the top: a smaller ID is still refused.
    assert_eq!(
        q::<i64>(&mut c, &["XDEL", "s", "4-0", "9-9", "1-1"]).await,
        2
    );
    assert_eq!(q::<i64>(&mut c, &["XLEN", "s"]).await, 5);
    assert_eq!(
        err(&mut c, &["XADD", "s", "4-1", "f", "x"]).await,
        "ERR The ID specified in XADD is equal or smaller than the target stream top item"
    );
    // NOMKSTREAM on a missing key answers nil and creates nothing.
    assert_eq!(
        q::<Value>(&mut c, &["XADD", "other", "NOMKSTREAM", "*", "f", "v"]).await,
        Value::Nil
    );
    // The key commands work on streams.
    assert_eq!(q::<i64>(&mut c, &["EXISTS", "s", "other"]).await, 1);
    assert_eq!(q::<Vec<String>>(&mut c, &["KEYS", "*"]).await, ["s"]);
    assert_eq!(q::<i64>(&mut c, &["PEXPIRE", "s", "50"]).await, 1);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(q::<i64>(&mut c, &["EXISTS", "s"]).await, 0);
    q::<()>(&mut c, &["XADD", "s", "1-0", "f", "v"]).await;
    assert_eq!(q::<i64>(&mut c, &["DEL", "s"]).await, 1);
    q::<()>(&mut c, &["XADD", "s", "1-0", "f", "v"]).await;
    q::<()>(&mut c, &["FLUSHALL"]).await;
    assert_eq!(q::<i64>(&mut c, &["DBSIZE"]).await, 0);
    // An emptied stream stays (unlike a hash, set or list), with its last ID.
    q::<()>(&mut c, &["XADD", "s", "5-0", "f", "v"]).await;
    assert_eq!(q::<i64>(&mut c, &["XDEL", "s", "5-0"]).await, 1);
    assert_eq!(q::<i64>(&mut c, &["EXISTS", "s"]).await, 1);
    assert_eq!(
        err(&mut c, &["XADD", "s", "5-0", "f", "v"]).await,
        "ERR The ID specified in XADD is equal or smaller than the target stream top item"
    );
}

#[tokio::test]
async fn maxlen_and_minid_trim_the_oldest_entries() {
    let redis = MockRedis::start().await;
    let mut c = connection(&redis).await;
    for i in 1..=5 {
        let id = format!("{i}-0");
        q::<()>(
            &mut c,
            &["XADD", "s", "MAXLEN", "3", &id, "n", &i.to_string()],
        )
        .await;
    }
    let ids = |c: &mut redis::aio::MultiplexedConnection| {
        let mut c = c.clone();
        async move {
            let entries: Vec<(String, Vec<String>)> = q(&mut c, &["XRANGE", "s", "-", "+"]).await;
            entries.into_iter().map(|(id, _)| id).collect::<Vec<_>>()
        }
    };
    assert_eq!(ids(&mut c).await, ["3-0", "4-0", "5-0"]);
    // `~` trims exactly here too (Redis may keep more: it trims whole nodes only).
    q::<()>(&mut c, &["XADD", "s", "MAXLEN", "~", "2", "6-0", "n", "6"]).await;
    assert_eq!(ids(&mut c).await, ["5-0", "6-0"]);
    q::<()>(&mut c, &["XADD", "s", "MAXLEN", "=", "5", "7-0", "n", "7"]).await;
    assert_eq!(ids(&mut c).await, ["5-0", "6-0", "7-0"]);
    assert_eq!(q::<i64>(&mut c, &["XTRIM", "s", "MINID", "6"]).await, 1);
    assert_eq!(ids(&mut c).await, ["6-0", "7-0"]);
    assert_eq!(q::<i64>(&mut c, &["XTRIM", "s", "MAXLEN", "5"]).await, 0);
    assert_eq!(q::<i64>(&mut c, &["XTRIM", "s", "MAXLEN", "0"]).await, 2);
    assert_eq!(q::<i64>(&mut c, &["XLEN", "s"]).await, 0);
    assert_eq!(q::<i64>(&mut c, &["XTRIM", "nope", "MAXLEN", "0"]).await, 0);
    // LIMIT (with `~` only) caps the deletions.
    for i in 10..=15 {
        q::<()>(&mut c, &["XADD", "s", &format!("{i}-0"), "n", "x"]).await;
    }
    assert_eq!(
        q::<i64>(&mut c, &["XTRIM", "s", "MAXLEN", "~", "0", "LIMIT", "4"]).await,
        4
    );
    assert_eq!(ids(&mut c).await, ["14-0", "15-0"]);
    for (args, message) in [
        (
            &["XTRIM", "s", "MAXLEN", "0", "LIMIT", "1"][..],
            "ERR syntax error, LIMIT cannot be used without the special ~ option",
        ),
        (
            &["XTRIM", "s", "MAXLEN", "1", "MINID", "1"],
            "ERR syntax error, MAXLEN and MINID options at the same time are not compatible",
        ),
        (
            &["XTRIM", "s", "MAXLEN", "-1"],
            "ERR The MAXLEN argument must be >= 0.",
        ),
        (
            &["XTRIM", "s", "MAXLEN", "x"],
            "ERR value is not an integer or out of range",
        ),
        (&["XTRIM", "s", "FOO", "1"], "ERR syntax error"),
        (
            &[
                "XADD", "s", "MAXLEN", "~", "1", "LIMIT", "-1", "*", "f", "v",
            ],
            "ERR The LIMIT argument must be >= 0.",
        ),
        (
            &["XTRIM", "s"],
            "ERR wrong number of arguments for 'xtrim' command",
        ),
    ] {
        assert_eq!(err(&mut c, args).await, message, "{args:?}");
    }
}

#[tokio::test]
async fn xadd_id_errors_are_those_of_redis() {
    let redis = MockRedis::start().await;
    let mut c = connection(&redis).await;
    q::<()>(&mut c, &["XADD", "s", "5-5", "f", "v"]).await;
    const SMALLER: &str =
        "ERR The ID specified in XADD is equal or smaller than the target stream top item";
    const INVALID: &str = "ERR Invalid stream ID specified as stream command argument";
    for (args, message) in [
        (&["XADD", "s", "5-5", "f", "v"][..], SMALLER),
        (&["XADD", "s", "5", "f", "v"], SMALLER),
        (&["XADD", "s", "4-9", "f", "v"], SMALLER),
        (
            &["XADD", "s", "0-0", "f", "v"],
            "ERR The ID specified in XADD must be greater than 0-0",
        ),
        (
            &["XADD", "new", "0", "f", "v"],
            "ERR The ID specified in XADD must be greater than 0-0",
        ),
        (&["XADD", "s", "abc", "f", "v"], INVALID),
        (&["XADD", "s", "1-x", "f", "v"], INVALID),
        (&["XADD", "s", "-", "f", "v"], INVALID),
        (&["XADD", "s", "+", "f", "v"], INVALID),
        (&["XADD", "s", "1-", "f", "v"], INVALID),
        (&["XADD", "s", "-1", "f", "v"], INVALID),
        (&["XADD", "s", "18446744073709551616", "f", "v"], INVALID),
        (
            &["XADD", "s", "6-0", "f"],
            "ERR wrong number of arguments for 'xadd' command",
        ),
        (
            &["XADD", "s", "6-0", "f", "v", "g"],
            "ERR wrong number of arguments for 'xadd' command",
        ),
        (
            &["XADD", "s", "MAXLEN", "1", "6-0"],
            "ERR wrong number of arguments for 'xadd' command",
        ),
    ] {
        assert_eq!(err(&mut c, args).await, message, "{args:?}");
    }
    // None of them created a key.
    assert_eq!(q::<Vec<String>>(&mut c, &["KEYS", "*"]).await, ["s"]);
    // The largest ID, then no more.
    let max = "18446744073709551615-18446744073709551615";
    assert_eq!(
        q::<String>(&mut c, &["XADD", "s", max, "f", "v"]).await,
        max
    );
    assert_eq!(
        err(&mut c, &["XADD", "s", "*", "f", "v"]).await,
        "ERR The stream has exhausted the last possible ID, unable to add more items"
    );
}

#[tokio::test]
async fn stream_commands_and_other_types_answer_wrongtype() {
    let redis = MockRedis::start().await;
    let mut c = connection(&redis).await;
    q::<()>(&mut c, &["SET", "str", "1"]).await;
    q::<()>(&mut c, &["HSET", "hash", "f", "1"]).await;
    q::<()>(&mut c, &["XADD", "s", "1-0", "f", "v"]).await;
    q::<()>(&mut c, &["XGROUP", "CREATE", "s", "g", "0"]).await;
    let cases: &[&[&str]] = &[
        &["XADD", "str", "*", "f", "v"],
        &["XADD", "hash", "NOMKSTREAM", "*", "f", "v"],
        &["XRANGE", "str", "-", "+"],
        &["XREVRANGE", "hash", "+", "-"],
        &["XLEN", "str"],
        &["XTRIM", "str", "MAXLEN", "1"],
        &["XDEL", "hash", "1-0"],
        &["XREAD", "STREAMS", "str", "0"],
        &["XREADGROUP", "GROUP", "g", "c", "STREAMS", "str", ">"],
        &["XGROUP", "CREATE", "str", "g", "$", "MKSTREAM"],
        &["XACK", "str", "g", "1-0"],
        &["XPENDING", "hash", "g"],
        &["XCLAIM", "str", "g", "c", "0", "1-0"],
        &["XAUTOCLAIM", "str", "g", "c", "0", "0"],
        &["XINFO", "GROUPS", "str"],
        &["GET", "s"],
        &["HGET", "s", "f"],
        &["HMGET", "s", "f"],
        &["HSET", "s", "f", "v"],
        &["SADD", "s", "m"],
        &["RPUSH", "s", "x"],
        &["INCR", "s"],
        &["LRANGE", "s", "0", "-1"],
    ];
    for args in cases {
        assert_eq!(err(&mut c, args).await, WRONGTYPE, "{args:?}");
    }
    // SET replaces a stream, as any value.
    assert_eq!(q::<Value>(&mut c, &["SET", "s", "v"]).await, Value::Okay);
    assert_eq!(
        q::<Value>(&mut c, &["TYPE", "s"]).await,
        Value::SimpleString("string".into())
    );
}

#[tokio::test]
async fn hmget_answers_nil_for_missing_fields_and_keys() {
    let redis = MockRedis::start().await;
    let mut c = connection(&redis).await;
    q::<()>(&mut c, &["HSET", "h", "a", "1", "b", "2"]).await;
    assert_eq!(
        q::<Value>(&mut c, &["HMGET", "h", "a", "x", "b"]).await,
        Value::Array(vec![b("1"), Value::Nil, b("2")])
    );
    assert_eq!(
        q::<Value>(&mut c, &["HMGET", "nope", "a", "b"]).await,
        Value::Array(vec![Value::Nil, Value::Nil])
    );
    assert_eq!(
        err(&mut c, &["HMGET", "h"]).await,
        "ERR wrong number of arguments for 'hmget' command"
    );
}

#[tokio::test]
async fn xreadgroup_then_xack_empties_the_pending_entries_list() {
    let redis = MockRedis::start().await;
    let mut c = connection(&redis).await;
    assert_eq!(
        q::<Value>(&mut c, &["XGROUP", "CREATE", "s", "g", "$", "MKSTREAM"]).await,
        Value::Okay
    );
    assert_eq!(
        err(&mut c, &["XGROUP", "CREATE", "s", "g", "$"]).await,
        "BUSYGROUP Consumer Group name already exists"
    );
    q::<()>(&mut c, &["XADD", "s", "1-0", "f", "a"]).await;
    q::<()>(&mut c, &["XADD", "s", "2-0", "f", "b"]).await;
    let read = q::<Value>(
        &mut c,
        &[
            "XREADGROUP",
            "GROUP",
            "g",
            "alice",
            "COUNT",
            "10",
            "STREAMS",
            "s",
            ">",
        ],
    )
    .await;
    assert_eq!(
        read,
        Value::Array(vec![Value::Array(vec![
            b("s"),
            Value::Array(vec![rentry("1-0", &["f", "a"]), rentry("2-0", &["f", "b"])]),
        ])])
    );
    // Nothing new for the group: nil.
    assert_eq!(
        q::<Value>(
            &mut c,
            &["XREADGROUP", "GROUP", "g", "bob", "STREAMS", "s", ">"]
        )
        .await,
        Value::Nil
    );
    // Both pending for alice, delivered once.
    assert_eq!(
        q::<Value>(&mut c, &["XPENDING", "s", "g"]).await,
        Value::Array(vec![
            Value::Int(2),
            b("1-0"),
            b("2-0"),
            Value::Array(vec![arr(&["alice", "2"])]),
        ])
    );
    let pending: Vec<(String, String, i64, i64)> =
        q(&mut c, &["XPENDING", "s", "g", "-", "+", "10"]).await;
    assert_eq!(pending.len(), 2);
    assert!(pending
        .iter()
        .all(|(_, consumer, idle, n)| consumer == "alice" && *idle < 1000 && *n == 1));
    // Alice's history: her pending entries again (delivered twice now); bob's is empty.
    let history = q::<Value>(
        &mut c,
        &["XREADGROUP", "GROUP", "g", "alice", "STREAMS", "s", "0"],
    )
    .await;
    assert_eq!(
        history,
        Value::Array(vec![Value::Array(vec![
            b("s"),
            Value::Array(vec![rentry("1-0", &["f", "a"]), rentry("2-0", &["f", "b"])]),
        ])])
    );
    assert_eq!(
        q::<Value>(
            &mut c,
            &["XREADGROUP", "GROUP", "g", "bob", "STREAMS", "s", "0"]
        )
        .await,
        Value::Array(vec![Value::Array(vec![b("s"), arr(&[])])])
    );
    let pending: Vec<(String, String, i64, i64)> =
        q(&mut c, &["XPENDING", "s", "g", "-", "+", "10", "alice"]).await;
    assert!(pending.iter().all(|(_, _, _, n)| *n == 2), "{pending:?}");
    // XACK counts what was pending.
    assert_eq!(
        q::<i64>(&mut c, &["XACK", "s", "g", "1-0", "2-0", "9-0"]).await,
        2
    );
    assert_eq!(q::<i64>(&mut c, &["XACK", "s", "g", "1-0"]).await, 0);
    assert_eq!(q::<i64>(&mut c, &["XACK", "s", "nope", "1-0"]).await, 0);
    assert_eq!(
        q::<Value>(&mut c, &["XPENDING", "s", "g"]).await,
        Value::Array(vec![Value::Int(0), Value::Nil, Value::Nil, Value::Nil])
    );
    assert_eq!(
        q::<Value>(&mut c, &["XPENDING", "s", "g", "-", "+", "10"]).await,
        arr(&[])
    );
    // NOACK: delivered, never pending.
    q::<()>(&mut c, &["XADD", "s", "3-0", "f", "c"]).await;
    q::<()>(
        &mut c,
        &[
            "XREADGROUP",
            "GROUP",
            "g",
            "bob",
            "NOACK",
            "STREAMS",
            "s",
            ">",
        ],
    )
    .await;
    assert_eq!(
        q::<Value>(&mut c, &["XPENDING", "s", "g"]).await,
        Value::Array(vec![Value::Int(0), Value::Nil, Value::Nil, Value::Nil])
    );
    // The group's state.
    let info = q::<Value>(&mut c, &["XINFO", "GROUPS", "s"]).await;
    assert_eq!(
        info,
        Value::Array(vec![Value::Array(vec![
            b("name"),
            b("g"),
            b("consumers"),
            Value::Int(2),
            b("pending"),
            Value::Int(0),
            b("last-delivered-id"),
            b("3-0"),
            b("entries-read"),
            Value::Int(3),
            b("lag"),
            Value::Int(0),
        ])])
    );
    assert_eq!(
        err(
            &mut c,
            &["XREADGROUP", "GROUP", "nope", "c", "STREAMS", "s", ">"]
        )
        .await,
        "NOGROUP No such key 's' or consumer group 'nope' in XREADGROUP with GROUP option"
    );
    assert_eq!(
        err(&mut c, &["XPENDING", "s", "nope"]).await,
        "NOGROUP No such key 's' or consumer group 'nope'"
    );
}

#[tokio::test]
async fn xautoclaim_redelivers_idle_entries_to_another_consumer() {
    let redis = MockRedis::start().await;
    let mut c = connection(&redis).await;
    q::<()>(&mut c, &["XGROUP", "CREATE", "s", "g", "0", "MKSTREAM"]).await;
    for i in 1..=3 {
        q::<()>(
            &mut c,
            &["XADD", "s", &format!("{i}-0"), "n", &i.to_string()],
        )
        .await;
    }
    q::<()>(
        &mut c,
        &["XREADGROUP", "GROUP", "g", "dead", "STREAMS", "s", ">"],
    )
    .await;
    // Not idle long enough yet: nothing claimed.
    assert_eq!(
        q::<Value>(&mut c, &["XAUTOCLAIM", "s", "g", "alive", "50", "0"]).await,
        Value::Array(vec![b("0-0"), arr(&[]), arr(&[])])
    );
    tokio::time::sleep(Duration::from_millis(80)).await;
    // An entry deleted meanwhile is dropped from the PEL and reported.
    q::<()>(&mut c, &["XDEL", "s", "2-0"]).await;
    let claimed_at = Instant::now();
    assert_eq!(
        q::<Value>(
            &mut c,
            &["XAUTOCLAIM", "s", "g", "alive", "50", "0", "COUNT", "2"]
        )
        .await,
        Value::Array(vec![
            b("3-0"),
            Value::Array(vec![rentry("1-0", &["n", "1"])]),
            arr(&["2-0"]),
        ])
    );
    assert_eq!(
        q::<Value>(
            &mut c,
            &["XAUTOCLAIM", "s", "g", "alive", "50", "3-0", "JUSTID"]
        )
        .await,
        Value::Array(vec![b("0-0"), arr(&["3-0"]), arr(&[])])
    );
    // Both now belong to `alive`; the delivery count went up for the one claimed with the entry
    // (JUSTID leaves it).
    let pending: Vec<(String, String, i64, i64)> =
        q(&mut c, &["XPENDING", "s", "g", "-", "+", "10"]).await;
    assert_eq!(
        pending
            .iter()
            .map(|(id, consumer, _, n)| (id.as_str(), consumer.as_str(), *n))
            .collect::<Vec<_>>(),
        [("1-0", "alive", 2), ("3-0", "alive", 1)]
    );
    // Claiming reset their idle time (they were delivered more than 80 ms before the claims;
    // 2 ms for the clocks' rounding).
    let since_claims = i64::try_from(claimed_at.elapsed().as_millis()).unwrap();
    assert!(
        pending
            .iter()
            .all(|(_, _, idle, _)| *idle <= since_claims + 2),
        "{pending:?}"
    );
    // The re-delivered entry is in the new consumer's history.
    assert_eq!(
        q::<Value>(
            &mut c,
            &["XREADGROUP", "GROUP", "g", "alive", "STREAMS", "s", "0"]
        )
        .await,
        Value::Array(vec![Value::Array(vec![
            b("s"),
            Value::Array(vec![rentry("1-0", &["n", "1"]), rentry("3-0", &["n", "3"])]),
        ])])
    );
    // XCLAIM back, with IDLE and RETRYCOUNT.
    assert_eq!(
        q::<Value>(
            &mut c,
            &[
                "XCLAIM",
                "s",
                "g",
                "dead",
                "0",
                "1-0",
                "2-0",
                "IDLE",
                "5000",
                "RETRYCOUNT",
                "7"
            ]
        )
        .await,
        Value::Array(vec![rentry("1-0", &["n", "1"])])
    );
    let pending: Vec<(String, String, i64, i64)> = q(
        &mut c,
        &["XPENDING", "s", "g", "IDLE", "4000", "-", "+", "10"],
    )
    .await;
    assert_eq!(pending.len(), 1);
    assert_eq!((pending[0].1.as_str(), pending[0].3), ("dead", 7));
    assert!(pending[0].2 >= 5000);
    assert_eq!(
        err(
            &mut c,
            &["XAUTOCLAIM", "s", "g", "c", "0", "0", "COUNT", "0"]
        )
        .await,
        "ERR COUNT must be > 0"
    );
    assert_eq!(
        err(&mut c, &["XCLAIM", "s", "g", "c", "x", "1-0"]).await,
        "ERR Invalid min-idle-time argument for XCLAIM"
    );
}

#[tokio::test]
async fn a_blocked_xreadgroup_is_woken_by_an_xadd_from_another_connection() {
    let redis = MockRedis::start().await;
    let mut c = connection(&redis).await;
    q::<()>(&mut c, &["XGROUP", "CREATE", "s", "g", "$", "MKSTREAM"]).await;
    let mut reader = raw(redis.addr()).await;
    send(
        &mut reader,
        &[
            "XREADGROUP",
            "GROUP",
            "g",
            "c",
            "BLOCK",
            "0",
            "STREAMS",
            "s",
            ">",
        ],
    )
    .await;
    // A command pipelined behind the blocked read waits for it.
    send(&mut reader, &["PING", "after"]).await;
    assert!(silent(&mut reader).await);
    // The other clients are served meanwhile.
    assert_eq!(q::<String>(&mut c, &["PING"]).await, "PONG");
    assert_eq!(
        q::<String>(&mut c, &["XADD", "s", "1-0", "f", "v"]).await,
        "1-0"
    );
    assert_eq!(
        next(&mut reader).await,
        read_reply("s", vec![entry("1-0", &["f", "v"])])
    );
    assert_eq!(next(&mut reader).await, bulk("after"));
    // The entry is pending for the consumer.
    assert_eq!(
        q::<Value>(&mut c, &["XPENDING", "s", "g"]).await,
        Value::Array(vec![
            Value::Int(1),
            b("1-0"),
            b("1-0"),
            Value::Array(vec![arr(&["c", "1"])]),
        ])
    );

    // With a timeout and no XADD: nil, after about that time.
    let started = Instant::now();
    let reply = call(
        &mut reader,
        &[
            "XREADGROUP",
            "GROUP",
            "g",
            "c",
            "BLOCK",
            "200",
            "STREAMS",
            "s",
            ">",
        ],
    )
    .await;
    let waited = started.elapsed();
    assert_eq!(reply, BytesFrame::Null);
    assert!(
        waited >= Duration::from_millis(190) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
    // Entries already there are answered at once, BLOCK or not.
    q::<()>(&mut c, &["XADD", "s", "2-0", "f", "w"]).await;
    assert_eq!(
        call(
            &mut reader,
            &[
                "XREADGROUP",
                "GROUP",
                "g",
                "c",
                "BLOCK",
                "0",
                "STREAMS",
                "s",
                ">"
            ]
        )
        .await,
        read_reply("s", vec![entry("2-0", &["f", "w"])])
    );
    // In a transaction, a blocking read does not block.
    assert_eq!(call(&mut reader, &["MULTI"]).await, ok());
    call(
        &mut reader,
        &[
            "XREADGROUP",
            "GROUP",
            "g",
            "c",
            "BLOCK",
            "0",
            "STREAMS",
            "s",
            ">",
        ],
    )
    .await;
    assert_eq!(
        call(&mut reader, &["EXEC"]).await,
        BytesFrame::Array(vec![BytesFrame::Null])
    );
}

#[tokio::test]
async fn a_blocked_xread_is_woken_by_an_xadd_in_a_script_and_by_a_deletion() {
    let redis = MockRedis::start().await;
    let mut c = connection(&redis).await;
    let mut reader = raw(redis.addr()).await;
    // `$` on a missing stream: the entries added from now on.
    send(
        &mut reader,
        &["XREAD", "BLOCK", "0", "STREAMS", "durable", "$"],
    )
    .await;
    assert!(silent(&mut reader).await);
    // Two messages in one run of the script: the reader gets both, after the script.
    let args = [
        "EVAL",
        DURABLE_PUBLISH,
        "2",
        "durable",
        "meta",
        "chan",
        "100",
        "60000",
        "E",
        NOW,
        ",\"a\":1}",
        "}",
    ];
    q::<()>(&mut c, &args).await;
    assert_eq!(
        next(&mut reader).await,
        read_reply(
            "durable",
            vec![
                entry(
                    "1-0",
                    &[
                        "m",
                        "{\"streamEpoch\":\"E\",\"streamOffset\":1,\"a\":1}",
                        "t",
                        NOW
                    ]
                ),
                entry(
                    "2-0",
                    &["m", "{\"streamEpoch\":\"E\",\"streamOffset\":2}", "t", NOW]
                ),
            ]
        )
    );
    // A group reader blocked on a stream deleted, or on a group destroyed, gets Redis's error.
    q::<()>(&mut c, &["XGROUP", "CREATE", "durable", "g", "$"]).await;
    send(
        &mut reader,
        &[
            "XREADGROUP",
            "GROUP",
            "g",
            "c",
            "BLOCK",
            "0",
            "STREAMS",
            "durable",
            ">",
        ],
    )
    .await;
    assert!(silent(&mut reader).await);
    q::<()>(&mut c, &["DEL", "durable"]).await;
    assert_eq!(
        next(&mut reader).await,
        error("UNBLOCKED the stream key no longer exists")
    );
    q::<()>(
        &mut c,
        &["XGROUP", "CREATE", "durable", "g", "$", "MKSTREAM"],
    )
    .await;
    send(
        &mut reader,
        &[
            "XREADGROUP",
            "GROUP",
            "g",
            "c",
            "BLOCK",
            "0",
            "STREAMS",
            "durable",
            ">",
        ],
    )
    .await;
    assert!(silent(&mut reader).await);
    q::<()>(&mut c, &["XGROUP", "DESTROY", "durable", "g"]).await;
    assert_eq!(
        next(&mut reader).await,
        error("NOGROUP the consumer group this client was blocked on no longer exists")
    );
}

#[tokio::test]
async fn a_blocked_reader_stops_when_its_connection_is_cut() {
    let redis = MockRedis::start().await;
    let mut c = connection(&redis).await;
    q::<()>(&mut c, &["XGROUP", "CREATE", "s", "g", "$", "MKSTREAM"]).await;
    let block = [
        "XREADGROUP",
        "GROUP",
        "g",
        "c",
        "BLOCK",
        "0",
        "STREAMS",
        "s",
        ">",
    ];
    let mut reader = raw(redis.addr()).await;
    send(&mut reader, &block).await;
    assert!(silent(&mut reader).await);
    redis.drop_connections();
    assert!(closed(&mut reader).await);
    wait_for_connections(&redis, 0).await;
    // A new XADD is not delivered to anyone: the group still has it to deliver.
    let mut c = connection(&redis).await;
    q::<()>(&mut c, &["XADD", "s", "1-0", "f", "v"]).await;
    assert_eq!(
        q::<Value>(&mut c, &["XPENDING", "s", "g"]).await,
        Value::Array(vec![Value::Int(0), Value::Nil, Value::Nil, Value::Nil])
    );

    // A stalled blocked reader gets nothing, even when an entry comes, until it is dropped.
    let mut reader = raw(redis.addr()).await;
    send(&mut reader, &["XREAD", "BLOCK", "0", "STREAMS", "s", "$"]).await;
    assert!(silent(&mut reader).await);
    redis.stall_connections();
    let mut c = connection(&redis).await;
    q::<()>(&mut c, &["XADD", "s", "2-0", "f", "v"]).await;
    assert!(silent(&mut reader).await);
    redis.drop_connections();
    assert!(closed(&mut reader).await);
    wait_for_connections(&redis, 0).await;

    // A restart too; and a client that closes its side is noticed while blocked.
    let mut reader = raw(redis.addr()).await;
    send(&mut reader, &["XREAD", "BLOCK", "0", "STREAMS", "s", "$"]).await;
    assert!(silent(&mut reader).await);
    redis.restart().await;
    assert!(closed(&mut reader).await);
    wait_for_connections(&redis, 0).await;
    let mut reader = raw(redis.addr()).await;
    send(&mut reader, &["XREAD", "BLOCK", "0", "STREAMS", "s", "$"]).await;
    assert!(silent(&mut reader).await);
    assert_eq!(redis.connection_count(), 1);
    drop(reader);
    wait_for_connections(&redis, 0).await;
}

#[tokio::test]
async fn evalsha_noscript_then_script_load_then_evalsha_publishes_the_exact_bytes() {
    let redis = MockRedis::start().await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe("chan").await.unwrap();
    let mut messages = pubsub.on_message();
    let mut c = connection(&redis).await;
    let sha = sha1_smol::Sha1::from(DURABLE_PUBLISH).digest().to_string();
    let publisher = c.clone();
    let publish = |payloads: &'static [&'static str], sha: String| {
        let mut c = publisher.clone();
        async move {
            let args = [
                "EVALSHA", &sha, "2", "stream", "meta", "chan", "100", "60000", "E1", NOW,
            ];
            redis::cmd(args[0])
                .arg(&args[1..])
                .arg(payloads)
                .query_async::<Value>(&mut c)
                .await
        }
    };
    // What `redis::Script::invoke_async` does: EVALSHA, NOSCRIPT, SCRIPT LOAD, EVALSHA.
    let e = publish(&[",\"a\":1}"], sha.clone()).await.unwrap_err();
    assert_eq!(
        super::tests_data::message(&e),
        "NOSCRIPT No matching script. Please use EVAL."
    );
    assert_eq!(
        q::<String>(&mut c, &["SCRIPT", "LOAD", DURABLE_PUBLISH]).await,
        sha
    );
    assert_eq!(
        q::<Vec<i64>>(
            &mut c,
            &["SCRIPT", "EXISTS", &sha, &sha.to_uppercase(), "abc"]
        )
        .await,
        [1, 1, 0]
    );
    // `{"a":1}`, then `{}` and `{"b":"x y"}` in one run: each payload after its `{`, `,` first
    // unless empty; the reply is the first payload's offset.
    let batches: [(&'static [&'static str], i64); 2] =
        [(&[",\"a\":1}"], 1), (&["}", ",\"b\":\"x y\"}"], 2)];
    for (payloads, first) in batches {
        assert_eq!(
            publish(payloads, sha.clone()).await.unwrap(),
            Value::Array(vec![b("E1"), Value::Int(first)])
        );
    }
    let expected = [
        "{\"streamEpoch\":\"E1\",\"streamOffset\":1,\"a\":1}",
        "{\"streamEpoch\":\"E1\",\"streamOffset\":2}",
        "{\"streamEpoch\":\"E1\",\"streamOffset\":3,\"b\":\"x y\"}",
    ];
    for message in expected {
        assert_eq!(
            messages.next().await.unwrap().get_payload_bytes(),
            message.as_bytes()
        );
    }
    // The stream (one field `m`: the message as published) and the meta hash, with their TTL.
    let entries: Vec<(String, Vec<String>)> = q(&mut c, &["XRANGE", "stream", "-", "+"]).await;
    assert_eq!(
        entries,
        expected
            .iter()
            .enumerate()
            .map(|(i, message)| (
                format!("{}-0", i + 1),
                vec!["m".into(), (*message).into(), "t".into(), NOW.into()]
            ))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        q::<Value>(&mut c, &["HMGET", "meta", "epoch", "offset"]).await,
        arr(&["E1", "3"])
    );
    for key in ["stream", "meta"] {
        let ttl = q::<i64>(&mut c, &["PTTL", key]).await;
        // The window (60 s) and a sixteenth.
        assert!((63_000..=63_750).contains(&ttl), "{key}: {ttl}");
    }
    // After SCRIPT FLUSH, NOSCRIPT again.
    assert_eq!(q::<Value>(&mut c, &["SCRIPT", "FLUSH"]).await, Value::Okay);
    assert!(publish(&["}"], sha).await.is_err());
    assert_eq!(redis.published_count(), 3);
}

#[tokio::test]
async fn an_unknown_script_is_refused() {
    let redis = MockRedis::start().await;
    let mut c = connection(&redis).await;
    for args in [
        &["EVAL", "return redis.call('GET', KEYS[1])", "1", "k"][..],
        &[
            "SCRIPT",
            "LOAD",
            "-- switchboard:durable-publish:99\nreturn 1",
        ],
        // Versions 1 to 3 are no longer emulated.
        &[
            "EVAL",
            "-- switchboard:durable-publish:3\nreturn 1",
            "2",
            "s",
            "m",
        ],
        &[
            "EVAL",
            "-- switchboard:durable-publish:1\nreturn 1",
            "2",
            "s",
            "m",
        ],
        &[
            "EVAL",
            "-- switchboard:durable-publish:2\nlocal offset = redis.call('HINCRBY', KEYS[2], 'offset', 1)",
            "2",
            "s",
            "m",
            "chan",
            "}",
            "100",
            "60000",
            "E",
        ],
        &[
            "SCRIPT",
            "LOAD",
            "-- switchboard:durable-publish:2\r\nreturn 1",
        ],
    ] {
        let message = err(&mut c, args).await;
        assert!(
            message.starts_with("ERR mock redis: unsupported script"),
            "{message}"
        );
        assert!(
            message.ends_with("one of: -- switchboard:durable-publish:4"),
            "{message}"
        );
    }
    // Never cached.
    let sha = sha1_smol::Sha1::from("return redis.call('GET', KEYS[1])")
        .digest()
        .to_string();
    assert_eq!(
        q::<Vec<i64>>(&mut c, &["SCRIPT", "EXISTS", &sha]).await,
        [0]
    );
    assert_eq!(
        err(&mut c, &["EVALSHA", &sha, "0"]).await,
        "NOSCRIPT No matching script. Please use EVAL."
    );
    for (args, message) in [
        (
            &["EVAL", DURABLE_PUBLISH, "x"][..],
            "ERR value is not an integer or out of range",
        ),
        (
            &["EVAL", DURABLE_PUBLISH, "-1"],
            "ERR Number of keys can't be negative",
        ),
        (
            &["EVAL", DURABLE_PUBLISH, "3", "a"],
            "ERR Number of keys can't be greater than number of args",
        ),
        (
            &["EVALSHA", "abc"],
            "ERR wrong number of arguments for 'evalsha' command",
        ),
        (
            &["SCRIPT", "FLUSH", "NOW"],
            "ERR SCRIPT FLUSH only support SYNC|ASYNC option",
        ),
        (
            &["SCRIPT", "LOAD"],
            "ERR wrong number of arguments for 'script|load' command",
        ),
        (
            &["SCRIPT", "NOPE"],
            "ERR unknown subcommand 'NOPE'. Try SCRIPT HELP.",
        ),
    ] {
        assert_eq!(err(&mut c, args).await, message, "{args:?}");
    }
}

#[tokio::test]
async fn watch_is_broken_by_xadd_but_not_by_the_group_commands() {
    let redis = MockRedis::start().await;
    let mut c = connection(&redis).await;
    q::<()>(&mut c, &["XGROUP", "CREATE", "s", "g", "$", "MKSTREAM"]).await;
    q::<()>(&mut c, &["XADD", "s", "1-0", "f", "v"]).await;
    // As in Redis 7: only XADD, and XDEL/XTRIM when they delete, modify the key for WATCH.
    for (change, broken) in [
        (
            &["XREADGROUP", "GROUP", "g", "c", "STREAMS", "s", ">"][..],
            false,
        ),
        (&["XACK", "s", "g", "1-0"], false),
        (&["XGROUP", "CREATECONSUMER", "s", "g", "d"], false),
        (&["XCLAIM", "s", "g", "d", "0", "1-0"], false),
        (&["XDEL", "s", "9-0"], false),
        (&["XADD", "s", "2-0", "f", "v"], true),
        (&["XDEL", "s", "2-0"], true),
        (&["XTRIM", "s", "MAXLEN", "0"], true),
    ] {
        let mut watcher = raw(redis.addr()).await;
        assert_eq!(call(&mut watcher, &["WATCH", "s"]).await, ok());
        q::<Value>(&mut c, change).await;
        assert_eq!(call(&mut watcher, &["MULTI"]).await, ok());
        call(&mut watcher, &["PING"]).await;
        let exec = call(&mut watcher, &["EXEC"]).await;
        assert_eq!(exec == BytesFrame::Null, broken, "{change:?}: {exec:?}");
    }
}

/// Deterministic stream commands (no `*` IDs, no idle times) whose replies must be the same,
/// frame for frame, from the mock and from Redis 7.
const STREAM_SCRIPT: &[&[&str]] = &[
    &["FLUSHALL"],
    &["XADD", "s", "1-1", "a", "1"],
    &["XADD", "s", "1-1", "a", "1"],
    &["XADD", "s", "0-0", "a", "1"],
    &["XADD", "s", "1-*", "a", "2"],
    &["XADD", "s", "2-*", "a", "2", "b", "3"],
    &["XADD", "s", " 3", "a", "1"],
    &["XADD", "s", "+4", "a", "1"],
    &["XADD", "s", "01-0", "a", "1"],
    &["XADD", "s", "abc", "a", "1"],
    &["XADD", "s", "5-x", "a", "1"],
    &["XADD", "s", "-", "a", "1"],
    &["XADD", "s", "5", "a"],
    &[
        "XADD",
        "s",
        "NOMKSTREAM",
        "MAXLEN",
        "=",
        "10",
        "5-0",
        "a",
        "1",
    ],
    &["XADD", "s", "MAXLEN", "1", "MINID", "1", "6-0", "a", "1"],
    &["XADD", "s", "MAXLEN", "1", "LIMIT", "10", "6-0", "a", "1"],
    &["XADD", "s", "MINID", "x", "6-0", "a", "1"],
    &["XADD", "s", "MAXLEN", "x", "6-0", "a", "1"],
    &["XADD", "s", "LIMIT", "5", "6-0", "a", "1"],
    &["XADD", "none", "NOMKSTREAM", "1-0", "a", "1"],
    &["EXISTS", "none"],
    &["XLEN", "s"],
    &["XRANGE", "s", "-", "+"],
    &["XRANGE", "s", "(1-1", "(5-0"],
    &["XRANGE", "s", "1", "1"],
    &["XRANGE", "s", "-", "+", "COUNT", "2", "COUNT", "3"],
    &["XRANGE", "s", "-", "+", "COUNT", "0"],
    &["XRANGE", "s", "-", "+", "COUNT", "-1"],
    &["XRANGE", "s", "-", "+", "LIMIT", "1"],
    &[
        "XRANGE",
        "s",
        "(18446744073709551615-18446744073709551615",
        "+",
    ],
    &["XRANGE", "s", "(", "+"],
    &["XREVRANGE", "s", "+", "-", "COUNT", "2"],
    &["XREVRANGE", "s", "(3", "-"],
    &["XREVRANGE", "s", "-", "+"],
    &["XDEL", "s", "1-2", "9-9"],
    &["XDEL", "s", "x"],
    &["XDEL", "none", "x"],
    &["XTRIM", "s", "MAXLEN", "3"],
    &["XTRIM", "s", "MINID", "=", "5"],
    &["XTRIM", "s", "NOMKSTREAM", "MAXLEN", "1"],
    &["XTRIM", "none", "MAXLEN", "1"],
    &["XRANGE", "s", "-", "+"],
    &["XGROUP", "CREATE", "none", "g", "$"],
    &["XGROUP", "CREATE", "s", "g", "0"],
    &["XGROUP", "CREATE", "s", "g", "0"],
    &["XGROUP", "CREATE", "s", "g2", "$", "ENTRIESREAD", "-2"],
    &["XGROUP", "CREATE", "s", "g2", "x"],
    &["XGROUP", "CREATE", "s", "g2", "0", "FOO"],
    &[
        "XGROUP", "CREATE", "s", "g2", "0", "MKSTREAM", "MKSTREAM", "MKSTREAM", "MKSTREAM",
    ],
    &["XGROUP", "CREATE", "s"],
    &["XGROUP", "NOPE", "s"],
    &["XGROUP"],
    &["XGROUP", "CREATE", "m", "g", "$", "MKSTREAM"],
    &["XGROUP", "CREATECONSUMER", "s", "g", "c0"],
    &["XGROUP", "CREATECONSUMER", "s", "g", "c0"],
    &["XGROUP", "CREATECONSUMER", "s", "nope", "c0"],
    &["XGROUP", "DELCONSUMER", "s", "g", "c0"],
    &["XGROUP", "DESTROY", "s", "nope"],
    &["XGROUP", "DESTROY", "none", "nope"],
    &["XGROUP", "SETID", "s", "nope", "0"],
    &["XGROUP", "SETID", "s", "g", "5", "MKSTREAM"],
    &["XREADGROUP", "GROUP", "g", "c", "STREAMS", "s", ">"],
    &["XREADGROUP", "GROUP", "g", "c", "STREAMS", "s", ">"],
    &["XGROUP", "SETID", "s", "g", "0"],
    &[
        "XREADGROUP",
        "GROUP",
        "g",
        "d",
        "COUNT",
        "1",
        "STREAMS",
        "s",
        ">",
    ],
    &["XREADGROUP", "GROUP", "g", "c", "STREAMS", "s", "0"],
    &["XREADGROUP", "GROUP", "g", "d", "STREAMS", "s", "0"],
    &["XREADGROUP", "GROUP", "g", "c", "STREAMS", "s", "$"],
    &["XREADGROUP", "GROUP", "g", "c", "STREAMS", "s"],
    &["XREADGROUP", "GROUP", "g", "c", "STREAMS", "s", "m", ">"],
    &[
        "XREADGROUP",
        "GROUP",
        "g",
        "c",
        "BLOCK",
        "-1",
        "STREAMS",
        "s",
        ">",
    ],
    &[
        "XREADGROUP",
        "GROUP",
        "g",
        "c",
        "BLOCK",
        "x",
        "STREAMS",
        "s",
        ">",
    ],
    &["XREADGROUP", "GROUP", "g", "c", "FOO", "STREAMS", "s", ">"],
    &["XREADGROUP", "GROUP", "nope", "c", "STREAMS", "s", ">"],
    &["XREADGROUP", "GROUP", "g", "c", "STREAMS", "none", ">"],
    &["XREAD", "STREAMS", "s", ">"],
    &["XREAD", "GROUP", "g", "c", "STREAMS", "s", "0"],
    &["XREAD", "NOACK", "STREAMS", "s", "0"],
    &["XREAD", "COUNT", "1", "STREAMS", "s", "m", "0", "0"],
    &["XREAD", "STREAMS", "s", "$"],
    &["XREAD", "STREAMS", "none", "0"],
    &["XREAD", "STREAMS", "s", "5"],
    &["XPENDING", "s", "g"],
    &["XPENDING", "s", "g", "-", "+"],
    &["XPENDING", "s", "g", "-", "+", "x"],
    &["XPENDING", "s", "g", "x", "+", "1"],
    &["XPENDING", "s", "g", "IDLE", "0", "-", "+"],
    &["XPENDING", "s", "g", "-", "+", "10", "nobody"],
    &["XPENDING", "s", "nope"],
    &["XPENDING", "none", "g"],
    &["XACK", "s", "g", "x"],
    &["XACK", "s", "nope", "x"],
    &["XACK", "s", "g", "5-0", "5-0"],
    &["XDEL", "s", "2-0"],
    &["XREADGROUP", "GROUP", "g", "c", "STREAMS", "s", "0"],
    &["XCLAIM", "s", "g", "e", "0", "2-0", "JUSTID"],
    &["XCLAIM", "s", "g", "e", "0", "5-0", "FORCE", "JUSTID"],
    &["XCLAIM", "s", "g", "e", "0", "6-0", "FORCE"],
    &["XCLAIM", "s", "g", "e", "0", "5-0", "FOO"],
    &["XCLAIM", "s", "g", "e", "0", "5-0", "IDLE"],
    &["XCLAIM", "s", "g", "e", "0", "5-0", "IDLE", "x"],
    &["XCLAIM", "s", "g", "e", "0", "5-0", "TIME", "x"],
    &["XCLAIM", "s", "g", "e", "0", "5-0", "RETRYCOUNT", "x"],
    &["XCLAIM", "s", "g", "e", "x", "5-0"],
    &["XCLAIM", "s", "nope", "e", "x", "5-0"],
    &["XPENDING", "s", "g"],
    &["XAUTOCLAIM", "s", "g", "f", "0", "0", "COUNT", "1"],
    &["XAUTOCLAIM", "s", "g", "f", "-5", "(1-1", "JUSTID"],
    &["XAUTOCLAIM", "s", "g", "f", "0", "0", "COUNT"],
    &["XAUTOCLAIM", "s", "g", "f", "0", "0", "COUNT", "0"],
    &["XAUTOCLAIM", "s", "g", "f", "x", "0"],
    &["XAUTOCLAIM", "s", "g", "f", "0", "x"],
    &["XAUTOCLAIM", "s", "nope", "f", "0", "0"],
    &["XPENDING", "s", "g"],
    &["XGROUP", "DELCONSUMER", "s", "g", "f"],
    &["XPENDING", "s", "g"],
    &["XINFO", "GROUPS", "s"],
    &["XINFO", "GROUPS", "m"],
    &["XINFO", "GROUPS", "none"],
    &["XINFO", "GROUPS"],
    &["XINFO", "NOPE", "s"],
    &["XINFO", "CONSUMERS", "s", "nope"],
    &["XINFO", "CONSUMERS", "none", "g"],
    &["XINFO", "CONSUMERS", "s"],
    &[
        "XCLAIM", "s", "g", "e", "0", "5-0", "LASTID", "9-0", "JUSTID",
    ],
    &["XCLAIM", "s", "g", "e", "0", "5-0", "LASTID", "x"],
    &["XGROUP", "CREATE", "s", "g3", "$", "ENTRIESREAD", "5"],
    &["XGROUP", "CREATE", "s", "g4", "0", "ENTRIESREAD", "-1"],
    &["XINFO", "GROUPS", "s"],
    &["XADD", "s", "MINID", "=", "6", "7-0", "a", "1"],
    &["XADD", "s", "MAXLEN", "=", "1", "8-0", "a", "1"],
    &["XRANGE", "s", "-", "+"],
    &[
        "XREADGROUP",
        "GROUP",
        "g4",
        "c",
        "COUNT",
        "1",
        "STREAMS",
        "s",
        ">",
    ],
    &["XINFO", "GROUPS", "s"],
    &["XDEL", "s", "8-0"],
    &["XINFO", "GROUPS", "s"],
    &["XGROUP", "SETID", "s", "g", "$", "ENTRIESREAD", "3"],
    &["XGROUP", "DESTROY", "s", "g2"],
    &["XINFO", "GROUPS", "s"],
    &["XGROUP", "DESTROY", "s", "g"],
    &["XINFO", "GROUPS", "s"],
    &["SET", "str", "x"],
    &["XADD", "str", "1-0", "a", "1"],
    &["XGROUP", "CREATE", "str", "g", "$", "MKSTREAM"],
    &["XINFO", "GROUPS", "str"],
    &["TYPE", "s"],
    &["HSET", "h", "a", "1", "b", "2"],
    &["HMGET", "h", "b", "x", "a"],
    &["HMGET", "none", "a"],
    &["HMGET", "s", "a"],
    &["SCRIPT", "KILL"],
    &[
        "SCRIPT",
        "EXISTS",
        "0123456789012345678901234567890123456789",
    ],
    &["EVALSHA", "0123456789012345678901234567890123456789", "0"],
    &["EVALSHA", "abc", "x"],
];

#[tokio::test]
async fn stream_replies_match_a_real_redis() {
    let Some(real) = RealRedis::for_comparison().await else {
        return;
    };
    let mock = MockRedis::start().await;
    let mut expected = raw(real.addr).await;
    let mut got = raw(mock.addr()).await;
    for args in STREAM_SCRIPT {
        let want = call(&mut expected, args).await;
        assert_eq!(call(&mut got, args).await, want, "{args:?}");
    }
}

/// One run of the durable-publish script with these `KEYS` and `ARGV`.
fn durable_eval(keys: &[&str], argv: &[&str]) -> Vec<String> {
    let mut args = vec![
        "EVAL".to_owned(),
        DURABLE_PUBLISH.to_owned(),
        keys.len().to_string(),
    ];
    args.extend(keys.iter().chain(argv).map(|a| (*a).to_owned()));
    args
}

/// One run of the durable-publish script on the stream `stream`, the meta hash `meta` and the
/// channel `chan`: each payload is the object after its `{` (`,` first unless empty).
fn durable_publish(payloads: &[&str], maxlen: &str, window: &str, epoch: &str) -> Vec<String> {
    durable_publish_at(payloads, maxlen, window, epoch, NOW)
}

/// [`durable_publish`] with the publisher's clock at `now`.
fn durable_publish_at(
    payloads: &[&str],
    maxlen: &str,
    window: &str,
    epoch: &str,
    now: &str,
) -> Vec<String> {
    let mut argv = vec!["chan", maxlen, window, epoch, now];
    argv.extend_from_slice(payloads);
    durable_eval(&["stream", "meta"], &argv)
}

/// The state the script leaves: the stream's entries, the meta hash, whether each key exists,
/// and their TTL rounded to seconds.
async fn durable_state(conn: &mut Raw) -> Vec<BytesFrame> {
    let mut state = vec![
        call(conn, &["XRANGE", "stream", "-", "+"]).await,
        call(conn, &["HMGET", "meta", "epoch", "offset"]).await,
        call(conn, &["HLEN", "meta"]).await,
        call(conn, &["TYPE", "stream"]).await,
        call(conn, &["TYPE", "meta"]).await,
    ];
    for key in ["stream", "meta"] {
        state.push(call(conn, &["TTL", key]).await);
    }
    state
}

/// Published on `chan` after each step of the comparison: the messages before it are the step's.
const END_OF_STEP: &str = "end of step";

/// A server of the durable-publish comparison: a connection for the commands, one subscribed to
/// `chan`, and one for blocking reads.
struct DurableSide {
    conn: Raw,
    sub: Raw,
    reader: Raw,
}

/// What a step leaves on a server: the script's reply, the messages it published (as the
/// subscriber receives them), and the state of the keys.
#[derive(Debug, PartialEq)]
struct DurableStep {
    reply: BytesFrame,
    published: Vec<BytesFrame>,
    state: Vec<BytesFrame>,
}

/// What a step of the comparison is there to exercise: the line of the script whose `redis.call`
/// fails (`None`: the script succeeds), and how many messages it publishes.
type Outcome = (Option<u32>, usize);

/// A step of the comparison: setup commands, the script's arguments, what the step is for.
type DurableCase<'a> = (Vec<&'a [&'a str]>, Vec<String>, Outcome);

impl DurableSide {
    async fn start(addr: std::net::SocketAddr) -> Self {
        let mut sub = raw(addr).await;
        call(&mut sub, &["SUBSCRIBE", "chan"]).await;
        Self {
            conn: raw(addr).await,
            sub,
            reader: raw(addr).await,
        }
    }

    /// Runs the setup commands, then the script.
    async fn step(&mut self, setup: &[&[&str]], script: &[&str]) -> DurableStep {
        for args in setup {
            call(&mut self.conn, args).await;
        }
        let reply = call(&mut self.conn, script).await;
        call(&mut self.conn, &["PUBLISH", "chan", END_OF_STEP]).await;
        let mut published = vec![];
        loop {
            let message = next(&mut self.sub).await;
            if message == bulks(&["message", "chan", END_OF_STEP]) {
                break;
            }
            published.push(message);
        }
        let state = durable_state(&mut self.conn).await;
        DurableStep {
            reply,
            published,
            state,
        }
    }

    /// Blocks the reader on the entries added to `stream` from now on.
    async fn block_reader(&mut self) {
        send(
            &mut self.reader,
            &["XREAD", "BLOCK", "0", "STREAMS", "stream", "$"],
        )
        .await;
    }
}

/// Runs a step on the real Redis and on the mock: the same reply, messages and state, and the
/// outcome the step is there for.
async fn compare_durable_step(
    real: &mut DurableSide,
    mock: &mut DurableSide,
    setup: &[&[&str]],
    script: &[String],
    (line, published): Outcome,
) {
    let script: Vec<&str> = script.iter().map(String::as_str).collect();
    let want = real.step(setup, &script).await;
    let got = mock.step(setup, &script).await;
    assert_eq!(got, want, "{setup:?} {:?}", &script[2..]);
    let outcome = match (&want.reply, line) {
        (BytesFrame::Array(_), None) => true,
        (BytesFrame::Error(e), Some(line)) => e.ends_with(&format!(", on @user_script:{line}.")),
        _ => false,
    };
    assert!(
        outcome && want.published.len() == published,
        "not the outcome {:?} the step is for: {want:?} {setup:?} {:?}",
        (line, published),
        &script[2..]
    );
}

#[tokio::test]
async fn durable_publish_matches_the_real_script_on_a_real_redis() {
    let Some(real_redis) = RealRedis::for_comparison().await else {
        return;
    };
    let mock_redis = MockRedis::start().await;
    let mut real = DurableSide::start(real_redis.addr).await;
    let mut mock = DurableSide::start(mock_redis.addr()).await;
    let publish = durable_publish;
    let publish_at = durable_publish_at;
    let full = ["stream", "meta"];
    const I64_MAX_MINUS_2: &str = "9223372036854775805";
    // (setup commands, the script's arguments, what the step is for)
    let steps: Vec<DurableCase<'_>> = vec![
        // One message (a new epoch; the stream, missing, is deleted), then three in one run.
        (
            vec![&["FLUSHALL"]],
            publish(&[",\"a\":1}"], "100", "60000", "E1"),
            (None, 1),
        ),
        (
            vec![],
            publish(&["}", ",\"b\":[1,{}]}", ",\"c\":3}"], "100", "60000", "E2"),
            (None, 3),
        ),
        // `}` payloads (`{}`), one then two.
        (vec![], publish(&["}"], "100", "30000", "E2"), (None, 1)),
        (
            vec![],
            publish(&["}", "}"], "100", "30000", "E2"),
            (None, 2),
        ),
        // The script does not look at the payloads.
        (
            vec![],
            publish(&["", " ,\"c\": \"\u{e9}\" }", "}}"], "100", "30000", "E2"),
            (None, 3),
        ),
        // The meta hash lost, the stream kept: a new epoch from offset 1, the stale stream deleted.
        (
            vec![&["DEL", "meta"]],
            publish(&[",\"d\":4}", ",\"e\":5}"], "100", "45000", "E3"),
            (None, 2),
        ),
        (
            vec![],
            publish(&[",\"f\":6}"], "100", "45000", "E4"),
            (None, 1),
        ),
        // The `epoch` field lost, `offset` kept: a new epoch, the offset reset to the payloads'
        // count, the stream deleted.
        (
            vec![&["HDEL", "meta", "epoch"]],
            publish(&[",\"g\":7}", "}", ",\"h\":8}"], "100", "45000", "E5"),
            (None, 3),
        ),
        (vec![], publish(&["}"], "100", "45000", "E6"), (None, 1)),
        // The stream lost, the meta hash kept: the offsets go on.
        (
            vec![&["DEL", "stream"]],
            publish(&[",\"i\":9}", "}"], "100", "45000", "E7"),
            (None, 2),
        ),
        // No payload: HINCRBY by 0, the TTLs renewed, the next offset replied; nothing published.
        (vec![], publish(&[], "100", "45000", "E8"), (None, 0)),
        // No payload and no epoch: a new one at offset 0 (the stream deleted), which the next
        // publish (its offset not above its count) replaces.
        (
            vec![&["HDEL", "meta", "epoch"]],
            publish(&[], "100", "45000", "E9"),
            (None, 0),
        ),
        (
            vec![],
            publish(&[",\"j\":10}"], "100", "45000", "E10"),
            (None, 1),
        ),
        (
            vec![&["DEL", "meta"]],
            publish(&[], "100", "20000", "E11"),
            (None, 0),
        ),
        (
            vec![],
            publish(&["}", "}"], "100", "45000", "E12"),
            (None, 2),
        ),
        // The offset reset: to 0, a new epoch from 1 (the stream deleted); set back below the
        // stream's top with the epoch kept, XADD refuses the first ID (the offset stays
        // incremented).
        (
            vec![&["HSET", "meta", "offset", "0"]],
            publish(&["}", "}"], "100", "45000", "E13"),
            (None, 2),
        ),
        (
            vec![&["HSET", "meta", "offset", "1"]],
            publish(&["}", "}"], "100", "45000", "E14"),
            (Some(47), 0),
        ),
        (vec![], publish(&["}"], "100", "45000", "E14"), (None, 1)),
        (
            vec![&["HSET", "meta", "offset", "-10"]],
            publish(&["}", "}"], "100", "45000", "E15"),
            (None, 2),
        ),
        // An empty epoch is still an epoch (only nil and false are false in Lua).
        (
            vec![&["HSET", "meta", "epoch", ""]],
            publish(&["}"], "100", "45000", "E16"),
            (None, 1),
        ),
        // The stream of another type: with an epoch, the first XADD fails; without, it is
        // deleted.
        (
            vec![&["SET", "stream", "x"]],
            publish(&["}", "}"], "100", "45000", "E17"),
            (Some(47), 0),
        ),
        (
            vec![&["DEL", "meta"]],
            publish(&["}", "}"], "100", "45000", "E18"),
            (None, 2),
        ),
        // The meta hash of another type, or its offset not an integer.
        (
            vec![&["SET", "meta", "x"]],
            publish(&["}"], "100", "45000", "E19"),
            (Some(26), 0),
        ),
        (
            vec![&["DEL", "meta"], &["HSET", "meta", "offset", "x"]],
            publish(&["}"], "100", "45000", "E20"),
            (Some(26), 0),
        ),
        // An XADD failing mid-batch: the offsets reach 10^14, which Lua writes `1e+14`, no ID.
        // The messages before it stay added and published, the offset incremented by all.
        (
            vec![&["DEL", "meta"]],
            publish(&["}"], "100", "45000", "E21"),
            (None, 1),
        ),
        (
            vec![&["HSET", "meta", "offset", "99999999999997"]],
            publish(
                &[",\"k\":1}", ",\"k\":2}", ",\"k\":3}"],
                "100",
                "45000",
                "E22",
            ),
            (Some(47), 2),
        ),
        (
            vec![],
            publish(&["}"], "100", "45000", "E22"),
            (Some(47), 0),
        ),
        (
            vec![&["HSET", "meta", "offset", "123456789012343"]],
            publish(&["}", "}"], "100", "45000", "E22"),
            (Some(47), 0),
        ),
        // Near 2^63: the Lua numbers round; HINCRBY overflows.
        (
            vec![&["HSET", "meta", "offset", I64_MAX_MINUS_2]],
            publish(&["}", "}"], "100", "45000", "E22"),
            (Some(47), 0),
        ),
        (
            vec![],
            publish(&["}"], "100", "45000", "E22"),
            (Some(26), 0),
        ),
        // (2^63 replied as Redis casts it)
        (vec![], publish(&[], "100", "45000", "E22"), (None, 0)),
        (
            vec![],
            durable_eval(&full, &["chan", "100", "45000"]),
            (None, 0),
        ),
        // A maxlen or a TTL not a number, or negative: what the calls before did stays done.
        (
            vec![&["DEL", "meta"]],
            publish(&["}", "}"], "x", "45000", "E30"),
            (Some(47), 0),
        ),
        (vec![], publish(&["}"], "-1", "45000", "E31"), (Some(47), 0)),
        (
            vec![],
            publish_at(&["}", "}"], "100", "1.5", "E32", "1800000000000"),
            (Some(79), 2),
        ),
        (
            vec![],
            publish_at(&["}"], "100", "1.5", "E33", "1800000000002"),
            (Some(79), 1),
        ),
        // Before `check` is due, the window is not looked at.
        (vec![], publish(&[], "100", "soon", "E34"), (None, 0)),
        // (no payload: the maxlen is not used)
        (vec![], publish(&[], "", "45000", "E34"), (None, 0)),
        (vec![], publish(&["}"], "100", "45000", "E35"), (None, 1)),
        // Fewer than 5 ARGVs: a negative count, which HINCRBY subtracts; a nil epoch fails
        // when a new one is needed; a nil clock is 0, for which `check` is not due (or is, for a
        // new epoch: the window is then looked at from 0).
        (vec![], durable_eval(&full, &[]), (None, 0)),
        (vec![], durable_eval(&full, &["chan"]), (None, 0)),
        (vec![], durable_eval(&full, &["chan", "100"]), (Some(39), 0)),
        (
            vec![&["HSET", "meta", "offset", "5"]],
            durable_eval(&full, &["chan", "100", "45000"]),
            (None, 0),
        ),
        (
            vec![&["DEL", "meta"]],
            durable_eval(&full, &["chan", "100", "45000"]),
            (Some(39), 0),
        ),
        (
            vec![&["HSET", "meta", "epoch", "E36"]],
            durable_eval(&full, &["chan", "100"]),
            (Some(39), 0),
        ),
        (
            vec![],
            durable_eval(&full, &["chan", "100", "45000", "E37"]),
            (None, 0),
        ),
        // Missing KEYS.
        (
            vec![],
            durable_eval(&["stream"], &["chan", "100", "45000", "E38", "}"]),
            (Some(26), 0),
        ),
        (
            vec![],
            durable_eval(&[], &["chan", "100", "45000", "E38", "}"]),
            (Some(26), 0),
        ),
        // A negative TTL deletes both keys; the messages are still published, and the next
        // publish starts a new epoch.
        (vec![], publish(&["}"], "100", "45000", "E39"), (None, 1)),
        (
            vec![],
            publish_at(&[",\"l\":1}", "}"], "100", "-1", "E40", "1900000000000"),
            (None, 2),
        ),
        (vec![], publish(&["}"], "100", "60000", "E41"), (None, 1)),
    ];
    for (setup, script, outcome) in &steps {
        compare_durable_step(&mut real, &mut mock, setup, script, *outcome).await;
    }

    // A blocked XREAD is woken by the script's XADDs: once, after the script, with all of them.
    for side in [&mut real, &mut mock] {
        side.block_reader().await;
        assert!(silent(&mut side.reader).await);
    }
    let batch = publish(&[",\"m\":1}", "}", ",\"m\":3}"], "100", "60000", "E42");
    compare_durable_step(&mut real, &mut mock, &[], &batch, (None, 3)).await;
    let woken = next(&mut real.reader).await;
    assert_eq!(next(&mut mock.reader).await, woken);
    let BytesFrame::Array(streams) = &woken else {
        panic!("{woken:?}")
    };
    assert!(
        matches!(&streams[..], [BytesFrame::Array(stream)] if matches!(&stream[..], [_, BytesFrame::Array(entries)] if entries.len() == 3)),
        "{woken:?}"
    );
    // A new epoch deletes the stream and starts again from 1-0: a reader blocked after the top
    // of the old one (`$`, 4-0) waits for an entry past it, and gets only those.
    for side in [&mut real, &mut mock] {
        side.block_reader().await;
        assert!(silent(&mut side.reader).await);
    }
    let setup: [&[&str]; 1] = [&["DEL", "meta"]];
    let batch = publish(&["}", "}"], "100", "60000", "E43");
    compare_durable_step(&mut real, &mut mock, &setup, &batch, (None, 2)).await;
    for side in [&mut real, &mut mock] {
        assert!(silent(&mut side.reader).await);
    }
    let batch = publish(&["}", "}", ",\"n\":5}"], "100", "60000", "E44");
    compare_durable_step(&mut real, &mut mock, &[], &batch, (None, 3)).await;
    let woken = next(&mut real.reader).await;
    assert_eq!(next(&mut mock.reader).await, woken);
    assert_eq!(
        woken,
        read_reply(
            "stream",
            vec![entry(
                "5-0",
                &[
                    "m",
                    "{\"streamEpoch\":\"E43\",\"streamOffset\":5,\"n\":5}",
                    "t",
                    NOW
                ]
            )]
        )
    );
    for side in [&mut real, &mut mock] {
        assert!(silent(&mut side.sub).await);
        assert!(silent(&mut side.reader).await);
    }

    let steps: Vec<DurableCase<'_>> = vec![
        // The window in time (1 s; `check` every 62 ms): a new epoch looks at it at once; before
        // `check`, nothing is trimmed; at `check`, the entries older than the window go.
        (
            vec![&["FLUSHALL"]],
            publish_at(&[",\"w\":1}"], "100", "1000", "W1", "1000000"),
            (None, 1),
        ),
        (
            vec![],
            publish_at(&[",\"w\":2}", "}"], "100", "1000", "W1", "1000050"),
            (None, 2),
        ),
        (
            vec![],
            publish_at(&[",\"w\":4}"], "100", "1000", "W1", "1001055"),
            (None, 1),
        ),
        (
            vec![],
            publish_at(&["}"], "100", "1000", "W1", "1001200"),
            (None, 1),
        ),
        // Entries without a time (`t`), or with one that is not a number, stop the trim.
        (
            vec![
                &["XADD", "stream", "6-0", "m", "legacy"],
                &["HSET", "meta", "offset", "6"],
            ],
            publish_at(&["}"], "100", "1000", "W1", "1003000"),
            (None, 1),
        ),
        (
            vec![
                &["DEL", "stream"],
                &["XADD", "stream", "7-5", "m", "x", "t", "soon"],
            ],
            publish_at(&["}"], "100", "1000", "W1", "1005000"),
            (None, 1),
        ),
        // Over 2,048 entries older than the window: 2,048 go, and `check` stays due, so the next
        // publish trims the rest.
        (
            vec![&["FLUSHALL"]],
            {
                let payloads = vec!["}"; 2100];
                publish_at(&payloads, "5000", "1000", "W2", "2000000")
            },
            (None, 2100),
        ),
        (
            vec![],
            publish_at(&[",\"x\":1}"], "5000", "1000", "W2", "2002000"),
            (None, 1),
        ),
        (
            vec![],
            publish_at(&[",\"x\":2}"], "5000", "1000", "W2", "2002001"),
            (None, 1),
        ),
    ];
    for (setup, script, outcome) in &steps {
        compare_durable_step(&mut real, &mut mock, setup, script, *outcome).await;
    }
}

/// Lua's `%.14g`, as Redis 7.0's `tostring(tonumber(n))` answers.
#[test]
fn offsets_are_written_as_lua_writes_them() {
    for (n, text) in [
        (0, "0"),
        (1, "1"),
        (-9, "-9"),
        (99_999_999_999_999, "99999999999999"),
        (-99_999_999_999_999, "-99999999999999"),
        (100_000_000_000_000, "1e+14"),
        (-100_000_000_000_000, "-1e+14"),
        (123_456_789_012_345, "1.2345678901234e+14"),
        (123_456_789_012_355, "1.2345678901236e+14"),
        (999_999_999_999_995, "1e+15"),
        (9_007_199_254_740_993, "9.007199254741e+15"),
        (i64::MAX, "9.2233720368548e+18"),
    ] {
        assert_eq!(
            super::script_durable_publish::lua_number(n as f64),
            text,
            "{n}"
        );
    }
}

/// The `first` the script replies, a Lua number, as Redis casts it to a C `long long`.
#[test]
fn numbers_are_replied_as_redis_casts_them() {
    use super::script_durable_publish::c_long_long;
    let two_63 = 9_223_372_036_854_775_808.0;
    let beyond = if cfg!(any(target_arch = "x86", target_arch = "x86_64")) {
        i64::MIN
    } else {
        i64::MAX
    };
    for (d, n) in [
        (1.0, 1),
        (-1.5, -1),
        (99_999_999_999_999.0, 99_999_999_999_999),
        (two_63 - 1024.0, i64::MAX - 1023),
        (-two_63, i64::MIN),
        (two_63, beyond),
    ] {
        assert_eq!(c_long_long(d), n, "{d}");
    }
}

/// What the runtime does: `redis::Script::invoke_async` (EVALSHA, on NOSCRIPT SCRIPT LOAD and
/// EVALSHA again).
#[tokio::test]
async fn redis_script_invoke_async_runs_the_durable_publish() {
    let redis = MockRedis::start().await;
    let mut c = connection(&redis).await;
    let script = redis::Script::new(DURABLE_PUBLISH);
    // One message, then two, then none.
    let batches: [(&[&str], i64); 3] = [(&[",\"x\":1}"], 1), (&[",\"x\":2}", "}"], 2), (&[], 4)];
    for (payloads, expected) in batches {
        let (epoch, first): (String, i64) = script
            .key("s")
            .key("m")
            .arg("chan")
            .arg(10)
            .arg(1000)
            .arg("E")
            .arg(NOW)
            .arg(payloads)
            .invoke_async(&mut c)
            .await
            .unwrap();
        assert_eq!((epoch.as_str(), first), ("E", expected));
    }
    assert_eq!(
        q::<Vec<i64>>(&mut c, &["SCRIPT", "EXISTS", script.get_hash()]).await,
        [1]
    );
    assert_eq!(q::<i64>(&mut c, &["XLEN", "s"]).await, 3);
    assert_eq!(
        q::<Value>(&mut c, &["XRANGE", "s", "2", "3"]).await,
        Value::Array(vec![
            rentry(
                "2-0",
                &[
                    "m",
                    "{\"streamEpoch\":\"E\",\"streamOffset\":2,\"x\":2}",
                    "t",
                    NOW
                ]
            ),
            rentry(
                "3-0",
                &["m", "{\"streamEpoch\":\"E\",\"streamOffset\":3}", "t", NOW]
            ),
        ])
    );
    assert_eq!(
        q::<Value>(&mut c, &["HMGET", "m", "epoch", "offset"]).await,
        arr(&["E", "3"])
    );
}
