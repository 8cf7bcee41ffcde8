//! Tests of the keyspace commands through the `redis` crate: replies, error messages, expiry and
//! the deletion of emptied collections. The transactions' tests are in `tests_transactions`.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{FromRedisValue, RedisError, Value};

use super::MockRedis;

pub(super) async fn connection(redis: &MockRedis) -> MultiplexedConnection {
    redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

pub(super) fn command(args: &[&str]) -> redis::Cmd {
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd
}

/// Runs a command that must succeed.
pub(super) async fn q<T: FromRedisValue>(conn: &mut MultiplexedConnection, args: &[&str]) -> T {
    match command(args).query_async(conn).await {
        Ok(value) => value,
        Err(e) => panic!("{args:?}: {e}"),
    }
}

/// The error message of a server error, as Redis sent it (`CODE detail`).
pub(super) fn message(error: &RedisError) -> String {
    match (error.code(), error.detail()) {
        (Some(code), Some(detail)) => format!("{code} {detail}"),
        (Some(code), None) => code.to_owned(),
        _ => panic!("not a server error: {error}"),
    }
}

/// Runs a command that must fail, and returns the error message.
pub(super) async fn err(conn: &mut MultiplexedConnection, args: &[&str]) -> String {
    match command(args).query_async::<Value>(conn).await {
        Ok(value) => panic!("{args:?}: expected an error, got {value:?}"),
        Err(e) => message(&e),
    }
}

pub(super) fn b(text: &str) -> Value {
    Value::BulkString(text.as_bytes().to_vec())
}

pub(super) fn arr(items: &[&str]) -> Value {
    Value::Array(items.iter().map(|i| b(i)).collect())
}

pub(super) const WRONGTYPE: &str =
    "WRONGTYPE Operation against a key holding the wrong kind of value";
const NOT_INT: &str = "ERR value is not an integer or out of range";

#[tokio::test]
async fn strings_and_keys() {
    let redis = MockRedis::start().await;
    let mut c = connection(&redis).await;
    assert_eq!(q::<Value>(&mut c, &["GET", "k"]).await, Value::Nil);
    assert_eq!(q::<Value>(&mut c, &["SET", "k", "v"]).await, Value::Okay);
    assert_eq!(q::<Value>(&mut c, &["GET", "k"]).await, b("v"));
    // NX / XX answer nil when refused; GET answers the old value either way.
    assert_eq!(
        q::<Value>(&mut c, &["SET", "k", "w", "NX"]).await,
        Value::Nil
    );
    assert_eq!(
        q::<Value>(&mut c, &["SET", "new", "w", "xx"]).await,
        Value::Nil
    );
    assert_eq!(
        q::<Value>(&mut c, &["SET", "k", "w", "XX", "GET"]).await,
        b("v")
    );
    assert_eq!(
        q::<Value>(&mut c, &["SET", "k", "z", "NX", "GET"]).await,
        b("w")
    );
    assert_eq!(
        q::<Value>(&mut c, &["SET", "n", "1", "GET"]).await,
        Value::Nil
    );
    assert_eq!(q::<String>(&mut c, &["GET", "k"]).await, "w");
    for bad in [
        &["SET", "k", "v", "NX", "XX"][..],
        &["SET", "k", "v", "EX"],
        &["SET", "k", "v", "EX", "1", "PX", "1"],
        &["SET", "k", "v", "KEEPTTL", "EX", "1"],
        &["SET", "k", "v", "BOGUS"],
    ] {
        assert_eq!(err(&mut c, bad).await, "ERR syntax error", "{bad:?}");
    }
    assert_eq!(err(&mut c, &["SET", "k", "v", "EX", "x"]).await, NOT_INT);
    assert_eq!(
        err(&mut c, &["SET", "k", "v", "PX", "0"]).await,
        "ERR invalid expire time in 'set' command"
    );
    assert_eq!(
        err(&mut c, &["GET"]).await,
        "ERR wrong number of arguments for 'get' command"
    );

    // DEL and EXISTS count (EXISTS counts a key named twice twice).
    assert_eq!(
        q::<i64>(&mut c, &["EXISTS", "k", "k", "n", "nope"]).await,
        3
    );
    assert_eq!(q::<i64>(&mut c, &["DEL", "k", "nope", "k"]).await, 1);
    assert_eq!(q::<i64>(&mut c, &["EXISTS", "k"]).await, 0);

    // INCR / INCRBY.
    assert_eq!(q::<i64>(&mut c, &["INCR", "counter"]).await, 1);
    assert_eq!(q::<i64>(&mut c, &["INCRBY", "counter", "41"]).await, 42);
    assert_eq!(q::<i64>(&mut c, &["INCRBY", "counter", "-50"]).await, -8);
    assert_eq!(q::<String>(&mut c, &["GET", "counter"]).await, "-8");
    q::<()>(&mut c, &["SET", "text", "12a"]).await;
    assert_eq!(err(&mut c, &["INCR", "text"]).await, NOT_INT);
    q::<()>(&mut c, &["SET", "text", "+1"]).await;
    assert_eq!(err(&mut c, &["INCR", "text"]).await, NOT_INT);
    assert_eq!(err(&mut c, &["INCRBY", "counter", "1.5"]).await, NOT_INT);
    q::<()>(&mut c, &["SET", "max", &i64::MAX.to_string()]).await;
    assert_eq!(
        err(&mut c, &["INCR", "max"]).await,
        "ERR increment or decrement would overflow"
    );

    // TYPE answers a simple string.
    q::<()>(&mut c, &["HSET", "h", "f", "v"]).await;
    q::<()>(&mut c, &["SADD", "s", "m"]).await;
    q::<()>(&mut c, &["RPUSH", "l", "x"]).await;
    for (key, kind) in [
        ("counter", "string"),
        ("h", "hash"),
        ("s", "set"),
        ("l", "list"),
        ("nope", "none"),
    ] {
        assert_eq!(
            q::<Value>(&mut c, &["TYPE", key]).await,
            Value::SimpleString(kind.into())
        );
    }

    // KEYS (glob, sorted here), DBSIZE, FLUSHDB, FLUSHALL.
    assert_eq!(
        q::<Vec<String>>(&mut c, &["KEYS", "*"]).await,
        ["counter", "h", "l", "max", "n", "s", "text"]
    );
    assert_eq!(
        q::<Vec<String>>(&mut c, &["KEYS", "[hl]"]).await,
        ["h", "l"]
    );
    assert_eq!(
        q::<Vec<String>>(&mut c, &["KEYS", "?ou*"]).await,
        ["counter"]
    );
    assert_eq!(q::<i64>(&mut c, &["DBSIZE"]).await, 7);
    assert_eq!(
        err(&mut c, &["FLUSHALL", "LATER"]).await,
        "ERR syntax error"
    );
    assert_eq!(q::<Value>(&mut c, &["FLUSHDB"]).await, Value::Okay);
    assert_eq!(q::<i64>(&mut c, &["DBSIZE"]).await, 0);
    q::<()>(&mut c, &["SET", "k", "v"]).await;
    assert_eq!(
        q::<Value>(&mut c, &["FLUSHALL", "async"]).await,
        Value::Okay
    );
    assert_eq!(
        q::<Vec<String>>(&mut c, &["KEYS", "*"]).await,
        Vec::<String>::new()
    );
    // Every database shares the one keyspace.
    q::<()>(&mut c, &["SET", "k", "v"]).await;
    let mut db3 = redis::Client::open(format!("{}3", redis.url()))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    assert_eq!(q::<String>(&mut db3, &["GET", "k"]).await, "v");
}

#[tokio::test]
async fn ttl_and_expiry() {
    let redis = MockRedis::start().await;
    let mut c = connection(&redis).await;
    assert_eq!(q::<i64>(&mut c, &["PTTL", "k"]).await, -2);
    assert_eq!(q::<i64>(&mut c, &["TTL", "k"]).await, -2);
    assert_eq!(q::<i64>(&mut c, &["PEXPIRE", "k", "100"]).await, 0);
    q::<()>(&mut c, &["SET", "k", "v"]).await;
    assert_eq!(q::<i64>(&mut c, &["PTTL", "k"]).await, -1);
    assert_eq!(q::<i64>(&mut c, &["TTL", "k"]).await, -1);
    assert_eq!(q::<i64>(&mut c, &["EXPIRE", "k", "100"]).await, 1);
    assert_eq!(q::<i64>(&mut c, &["TTL", "k"]).await, 100);
    let pttl = q::<i64>(&mut c, &["PTTL", "k"]).await;
    assert!((99_000..=100_000).contains(&pttl), "{pttl}");
    // The options of EXPIRE.
    assert_eq!(q::<i64>(&mut c, &["EXPIRE", "k", "50", "NX"]).await, 0);
    assert_eq!(q::<i64>(&mut c, &["EXPIRE", "k", "50", "GT"]).await, 0);
    assert_eq!(q::<i64>(&mut c, &["EXPIRE", "k", "200", "GT"]).await, 1);
    assert_eq!(q::<i64>(&mut c, &["EXPIRE", "k", "300", "LT"]).await, 0);
    assert_eq!(
        q::<i64>(&mut c, &["PEXPIRE", "k", "150000", "LT", "XX"]).await,
        1
    );
    assert_eq!(q::<i64>(&mut c, &["TTL", "k"]).await, 150);
    assert_eq!(
        err(&mut c, &["EXPIRE", "k", "1", "NX", "XX"]).await,
        "ERR NX and XX, GT or LT options at the same time are not compatible"
    );
    assert_eq!(
        err(&mut c, &["EXPIRE", "k", "1", "GT", "LT"]).await,
        "ERR GT and LT options at the same time are not compatible"
    );
    assert_eq!(
        err(&mut c, &["EXPIRE", "k", "1", "SOON"]).await,
        "ERR Unsupported option SOON"
    );
    assert_eq!(err(&mut c, &["PEXPIRE", "k", "soon"]).await, NOT_INT);
    assert_eq!(
        err(&mut c, &["EXPIRE", "k", &(i64::MAX / 100).to_string()]).await,
        "ERR invalid expire time in 'expire' command"
    );
    // SET without KEEPTTL clears the expiry; with it, keeps it.
    q::<()>(&mut c, &["SET", "k", "v2", "KEEPTTL"]).await;
    assert_eq!(q::<i64>(&mut c, &["TTL", "k"]).await, 150);
    q::<()>(&mut c, &["SET", "k", "v3"]).await;
    assert_eq!(q::<i64>(&mut c, &["TTL", "k"]).await, -1);
    // A deadline in the past deletes the key, and still answers 1.
    assert_eq!(q::<i64>(&mut c, &["EXPIRE", "k", "-1"]).await, 1);
    assert_eq!(q::<i64>(&mut c, &["EXISTS", "k"]).await, 0);

    // Keys with short expiries (of every type) are gone after it, for every command.
    q::<()>(&mut c, &["SET", "short", "v", "PX", "50"]).await;
    q::<()>(&mut c, &["SET", "short2", "v", "EX", "100"]).await;
    q::<()>(&mut c, &["PEXPIRE", "short2", "50"]).await;
    q::<()>(&mut c, &["HSET", "hash", "f", "v"]).await;
    q::<()>(&mut c, &["PEXPIRE", "hash", "50"]).await;
    q::<()>(&mut c, &["SET", "stays", "v"]).await;
    q::<()>(&mut c, &["INCR", "counter"]).await;
    q::<()>(&mut c, &["PEXPIRE", "counter", "50"]).await;
    assert_eq!(
        q::<i64>(&mut c, &["INCR", "counter"]).await,
        2,
        "INCR keeps the TTL"
    );
    assert_eq!(q::<i64>(&mut c, &["EXISTS", "short", "hash"]).await, 2);
    assert_eq!(q::<i64>(&mut c, &["DBSIZE"]).await, 5);
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Nothing looked the expired keys up yet: DBSIZE and KEYS must not count them.
    assert_eq!(q::<i64>(&mut c, &["DBSIZE"]).await, 1);
    assert_eq!(q::<Vec<String>>(&mut c, &["KEYS", "*"]).await, ["stays"]);
    assert_eq!(
        q::<i64>(&mut c, &["EXISTS", "short", "short2", "hash"]).await,
        0
    );
    assert_eq!(q::<Value>(&mut c, &["GET", "short"]).await, Value::Nil);
    assert_eq!(q::<i64>(&mut c, &["PTTL", "short"]).await, -2);
    assert_eq!(q::<i64>(&mut c, &["HLEN", "hash"]).await, 0);
    assert_eq!(q::<i64>(&mut c, &["INCR", "counter"]).await, 1);
    // An absolute deadline (PXAT) in the past: the key is set and gone at once.
    q::<()>(&mut c, &["SET", "past", "v", "PXAT", "1000"]).await;
    assert_eq!(q::<i64>(&mut c, &["EXISTS", "past"]).await, 0);
}

#[tokio::test]
async fn hashes() {
    let redis = MockRedis::start().await;
    let mut c = connection(&redis).await;
    assert_eq!(
        q::<i64>(&mut c, &["HSET", "h", "a", "1", "b", "2"]).await,
        2
    );
    assert_eq!(
        q::<i64>(&mut c, &["HSET", "h", "a", "10", "c", "3"]).await,
        1
    );
    assert_eq!(
        err(&mut c, &["HSET", "h", "a", "1", "b"]).await,
        "ERR wrong number of arguments for 'hset' command"
    );
    assert_eq!(
        err(&mut c, &["HSET", "h", "a"]).await,
        "ERR wrong number of arguments for 'hset' command"
    );
    assert_eq!(q::<Value>(&mut c, &["HGET", "h", "a"]).await, b("10"));
    assert_eq!(q::<Value>(&mut c, &["HGET", "h", "zz"]).await, Value::Nil);
    assert_eq!(q::<Value>(&mut c, &["HGET", "nope", "a"]).await, Value::Nil);
    assert_eq!(
        q::<Value>(&mut c, &["HGETALL", "h"]).await,
        arr(&["a", "10", "b", "2", "c", "3"])
    );
    assert_eq!(q::<Value>(&mut c, &["HGETALL", "nope"]).await, arr(&[]));
    assert_eq!(
        q::<Value>(&mut c, &["HKEYS", "h"]).await,
        arr(&["a", "b", "c"])
    );
    assert_eq!(q::<i64>(&mut c, &["HLEN", "h"]).await, 3);
    assert_eq!(q::<i64>(&mut c, &["HLEN", "nope"]).await, 0);
    assert_eq!(q::<i64>(&mut c, &["HEXISTS", "h", "a"]).await, 1);
    assert_eq!(q::<i64>(&mut c, &["HEXISTS", "h", "zz"]).await, 0);
    assert_eq!(q::<i64>(&mut c, &["HINCRBY", "h", "a", "5"]).await, 15);
    assert_eq!(q::<i64>(&mut c, &["HINCRBY", "h", "new", "-5"]).await, -5);
    assert_eq!(q::<i64>(&mut c, &["HINCRBY", "fresh", "x", "1"]).await, 1);
    q::<()>(&mut c, &["HSET", "h", "text", "abc"]).await;
    assert_eq!(
        err(&mut c, &["HINCRBY", "h", "text", "1"]).await,
        "ERR hash value is not an integer"
    );
    assert_eq!(err(&mut c, &["HINCRBY", "h", "a", "x"]).await, NOT_INT);
    q::<()>(&mut c, &["HSET", "h", "big", &i64::MAX.to_string()]).await;
    assert_eq!(
        err(&mut c, &["HINCRBY", "h", "big", "1"]).await,
        "ERR increment or decrement would overflow"
    );
    // An error on a new key leaves no empty hash behind.
    assert_eq!(err(&mut c, &["HINCRBY", "other", "f", "x"]).await, NOT_INT);
    assert_eq!(q::<i64>(&mut c, &["EXISTS", "other"]).await, 0);
    // HDEL counts the fields removed; the emptied hash is deleted.
    assert_eq!(q::<i64>(&mut c, &["HDEL", "nope", "a"]).await, 0);
    assert_eq!(q::<i64>(&mut c, &["HDEL", "fresh", "x", "y"]).await, 1);
    assert_eq!(q::<i64>(&mut c, &["EXISTS", "fresh"]).await, 0);
    assert_eq!(
        q::<Value>(&mut c, &["TYPE", "fresh"]).await,
        Value::SimpleString("none".into())
    );
}

#[tokio::test]
async fn sets() {
    let redis = MockRedis::start().await;
    let mut c = connection(&redis).await;
    assert_eq!(q::<i64>(&mut c, &["SADD", "s", "b", "a", "b"]).await, 2);
    assert_eq!(q::<i64>(&mut c, &["SADD", "s", "a", "c"]).await, 1);
    assert_eq!(
        q::<Value>(&mut c, &["SMEMBERS", "s"]).await,
        arr(&["a", "b", "c"])
    );
    assert_eq!(q::<Value>(&mut c, &["SMEMBERS", "nope"]).await, arr(&[]));
    assert_eq!(q::<i64>(&mut c, &["SCARD", "s"]).await, 3);
    assert_eq!(q::<i64>(&mut c, &["SCARD", "nope"]).await, 0);
    assert_eq!(q::<i64>(&mut c, &["SISMEMBER", "s", "a"]).await, 1);
    assert_eq!(q::<i64>(&mut c, &["SISMEMBER", "s", "z"]).await, 0);
    assert_eq!(q::<i64>(&mut c, &["SISMEMBER", "nope", "z"]).await, 0);
    assert_eq!(q::<i64>(&mut c, &["SREM", "s", "a", "z", "a"]).await, 1);
    assert_eq!(q::<i64>(&mut c, &["SREM", "nope", "a"]).await, 0);
    assert_eq!(q::<i64>(&mut c, &["SREM", "s", "b", "c"]).await, 2);
    assert_eq!(q::<i64>(&mut c, &["EXISTS", "s"]).await, 0);
    assert_eq!(
        err(&mut c, &["SADD", "s"]).await,
        "ERR wrong number of arguments for 'sadd' command"
    );
}

#[tokio::test]
async fn lists() {
    let redis = MockRedis::start().await;
    let mut c = connection(&redis).await;
    assert_eq!(q::<i64>(&mut c, &["RPUSH", "l", "a", "b"]).await, 2);
    assert_eq!(q::<i64>(&mut c, &["LPUSH", "l", "y", "z"]).await, 4);
    assert_eq!(q::<i64>(&mut c, &["LLEN", "l"]).await, 4);
    assert_eq!(q::<i64>(&mut c, &["LLEN", "nope"]).await, 0);
    let shared = c.clone();
    let range = |start: i64, stop: i64| {
        let mut c = shared.clone();
        async move {
            q::<Vec<String>>(
                &mut c,
                &["LRANGE", "l", &start.to_string(), &stop.to_string()],
            )
            .await
        }
    };
    assert_eq!(range(0, -1).await, ["z", "y", "a", "b"]);
    assert_eq!(range(1, 2).await, ["y", "a"]);
    assert_eq!(range(-2, -1).await, ["a", "b"]);
    assert_eq!(range(-100, 1).await, ["z", "y"]);
    assert_eq!(range(2, 100).await, ["a", "b"]);
    assert_eq!(range(3, 1).await, Vec::<String>::new());
    assert_eq!(range(4, 10).await, Vec::<String>::new());
    assert_eq!(range(-1, -3).await, Vec::<String>::new());
    assert_eq!(
        q::<Value>(&mut c, &["LRANGE", "nope", "0", "-1"]).await,
        arr(&[])
    );
    assert_eq!(err(&mut c, &["LRANGE", "l", "0", "x"]).await, NOT_INT);

    // LREM: count > 0 from the head, < 0 from the tail, 0 every one.
    q::<()>(&mut c, &["DEL", "l"]).await;
    q::<()>(&mut c, &["RPUSH", "l", "x", "a", "x", "b", "x", "c", "x"]).await;
    assert_eq!(q::<i64>(&mut c, &["LREM", "l", "2", "x"]).await, 2);
    assert_eq!(range(0, -1).await, ["a", "b", "x", "c", "x"]);
    assert_eq!(q::<i64>(&mut c, &["LREM", "l", "-1", "x"]).await, 1);
    assert_eq!(range(0, -1).await, ["a", "b", "x", "c"]);
    q::<()>(&mut c, &["RPUSH", "l", "x", "x"]).await;
    assert_eq!(q::<i64>(&mut c, &["LREM", "l", "-2", "x"]).await, 2);
    assert_eq!(range(0, -1).await, ["a", "b", "x", "c"]);
    q::<()>(&mut c, &["LPUSH", "l", "x"]).await;
    assert_eq!(q::<i64>(&mut c, &["LREM", "l", "0", "x"]).await, 2);
    assert_eq!(range(0, -1).await, ["a", "b", "c"]);
    assert_eq!(q::<i64>(&mut c, &["LREM", "l", "5", "zz"]).await, 0);
    assert_eq!(q::<i64>(&mut c, &["LREM", "nope", "0", "a"]).await, 0);
    assert_eq!(err(&mut c, &["LREM", "l", "x", "a"]).await, NOT_INT);
    // The emptied list is deleted.
    q::<()>(&mut c, &["LREM", "l", "0", "a"]).await;
    q::<()>(&mut c, &["LREM", "l", "0", "b"]).await;
    assert_eq!(q::<i64>(&mut c, &["LREM", "l", "-10", "c"]).await, 1);
    assert_eq!(q::<i64>(&mut c, &["EXISTS", "l"]).await, 0);
}

#[tokio::test]
async fn wrong_type() {
    let redis = MockRedis::start().await;
    let mut c = connection(&redis).await;
    q::<()>(&mut c, &["SET", "str", "1"]).await;
    q::<()>(&mut c, &["HSET", "hash", "f", "1"]).await;
    q::<()>(&mut c, &["SADD", "set", "m"]).await;
    q::<()>(&mut c, &["RPUSH", "list", "x"]).await;
    let cases: &[&[&str]] = &[
        &["GET", "hash"],
        &["SET", "list", "v", "GET"],
        &["INCR", "set"],
        &["INCRBY", "list", "2"],
        &["HSET", "str", "f", "v"],
        &["HGET", "set", "f"],
        &["HDEL", "list", "f"],
        &["HGETALL", "str"],
        &["HLEN", "set"],
        &["HINCRBY", "list", "f", "1"],
        &["HKEYS", "str"],
        &["HEXISTS", "set", "f"],
        &["SADD", "hash", "m"],
        &["SREM", "str", "m"],
        &["SMEMBERS", "list"],
        &["SCARD", "hash"],
        &["SISMEMBER", "str", "m"],
        &["RPUSH", "hash", "x"],
        &["LPUSH", "set", "x"],
        &["LRANGE", "str", "0", "-1"],
        &["LREM", "hash", "0", "x"],
        &["LLEN", "set"],
    ];
    for args in cases {
        assert_eq!(err(&mut c, args).await, WRONGTYPE, "{args:?}");
    }
    // Nothing was changed; commands on any type still work.
    assert_eq!(
        q::<Vec<String>>(&mut c, &["KEYS", "*"]).await,
        ["hash", "list", "set", "str"]
    );
    assert_eq!(q::<String>(&mut c, &["GET", "str"]).await, "1");
    assert_eq!(
        q::<Value>(&mut c, &["SET", "list", "now a string"]).await,
        Value::Okay
    );
    assert_eq!(q::<i64>(&mut c, &["DEL", "hash", "set"]).await, 2);
}

#[tokio::test]
async fn restart_forgets_the_keys_and_a_dropped_connection_does_not() {
    let redis = MockRedis::start().await;
    let mut c = connection(&redis).await;
    q::<()>(&mut c, &["SET", "k", "v"]).await;
    redis.drop_connections();
    let mut c = connection(&redis).await;
    assert_eq!(q::<String>(&mut c, &["GET", "k"]).await, "v");
    redis.restart().await;
    let mut c = connection(&redis).await;
    assert_eq!(q::<i64>(&mut c, &["DBSIZE"]).await, 0);
    assert_eq!(q::<Value>(&mut c, &["GET", "k"]).await, Value::Nil);
}
