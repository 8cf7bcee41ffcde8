//! Tests of the transactions (`MULTI`/`EXEC`/`DISCARD`/`WATCH`) through the `redis` crate and raw
//! RESP, and a comparison of the mock's replies with a real Redis when `redis-server` is on `PATH`.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use redis::{ErrorKind, RedisResult, ServerErrorKind, Value};
use redis_protocol::codec::Resp2;
use redis_protocol::resp2::types::BytesFrame;
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

use super::resp::{bulk, error, ok, simple};
use super::tests_data::{connection, message, q, WRONGTYPE};
use super::MockRedis;

const WAIT: Duration = Duration::from_secs(5);

pub(super) type Raw = Framed<TcpStream, Resp2>;

pub(super) async fn raw(addr: SocketAddr) -> Raw {
    Framed::new(TcpStream::connect(addr).await.unwrap(), Resp2::default())
}

pub(super) async fn call(conn: &mut Raw, args: &[&str]) -> BytesFrame {
    let frame = BytesFrame::Array(args.iter().map(|a| bulk(a.as_bytes().to_vec())).collect());
    conn.send(frame).await.unwrap();
    tokio::time::timeout(WAIT, conn.next())
        .await
        .expect("a reply in time")
        .expect("the connection is open")
        .expect("a valid frame")
}

#[tokio::test]
async fn an_atomic_pipeline_runs_and_its_publish_reaches_subscribers() {
    let redis = MockRedis::start().await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe("news").await.unwrap();
    let mut c = connection(&redis).await;
    let (set, n, receivers, fields, members): (String, i64, i64, i64, Vec<String>) = redis::pipe()
        .atomic()
        .cmd("SET")
        .arg("k")
        .arg("v")
        .cmd("INCRBY")
        .arg("n")
        .arg(5)
        .cmd("PUBLISH")
        .arg("news")
        .arg("in a transaction")
        .cmd("HSET")
        .arg("h")
        .arg("a")
        .arg(1)
        .arg("b")
        .arg(2)
        .cmd("SMEMBERS")
        .arg("nope")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(
        (set.as_str(), n, receivers, fields, members),
        ("OK", 5, 1, 2, Vec::new())
    );
    let message = tokio::time::timeout(WAIT, pubsub.on_message().next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(message.get_channel_name(), "news");
    assert_eq!(message.get_payload_bytes(), b"in a transaction");
    assert_eq!(redis.published_count(), 1);
    assert_eq!(q::<String>(&mut c, &["GET", "k"]).await, "v");
}

#[tokio::test]
async fn runtime_errors_are_elements_of_exec_and_the_other_commands_run() {
    let redis = MockRedis::start().await;
    let mut c = connection(&redis).await;
    let mut pipe = redis::pipe();
    pipe.atomic()
        .cmd("SET")
        .arg("s")
        .arg("1")
        .cmd("HSET")
        .arg("s")
        .arg("f")
        .arg("v")
        .cmd("SET")
        .arg("s")
        .arg("2")
        .arg("BOGUS")
        .cmd("INCR")
        .arg("s");
    let results: Vec<RedisResult<Value>> = pipe.ignore_errors().query_async(&mut c).await.unwrap();
    assert_eq!(results.len(), 4);
    assert_eq!(results[0].as_ref().unwrap(), &Value::Okay);
    assert_eq!(message(results[1].as_ref().unwrap_err()), WRONGTYPE);
    // A syntax error in a command's options is found when it runs, as in Redis.
    assert_eq!(
        message(results[2].as_ref().unwrap_err()),
        "ERR syntax error"
    );
    assert_eq!(results[3].as_ref().unwrap(), &Value::Int(2));

    // The same on the wire: +QUEUED for each, then one array with an error element.
    let mut raw = raw(redis.addr()).await;
    assert_eq!(call(&mut raw, &["MULTI"]).await, ok());
    assert_eq!(call(&mut raw, &["INCR", "s"]).await, simple("QUEUED"));
    assert_eq!(call(&mut raw, &["LPUSH", "s", "x"]).await, simple("QUEUED"));
    assert_eq!(call(&mut raw, &["GET", "s"]).await, simple("QUEUED"));
    assert_eq!(call(&mut raw, &["PING"]).await, simple("QUEUED"));
    assert_eq!(
        call(&mut raw, &["EXEC"]).await,
        BytesFrame::Array(vec![
            BytesFrame::Integer(3),
            error(WRONGTYPE),
            bulk("3"),
            simple("PONG"),
        ])
    );
}

#[tokio::test]
async fn a_command_rejected_at_queue_time_aborts_the_transaction() {
    let redis = MockRedis::start().await;
    let mut c = connection(&redis).await;
    let aborted = redis::pipe()
        .atomic()
        .cmd("SET")
        .arg("a")
        .arg("1")
        .cmd("NOSUCH")
        .arg("x")
        .query_async::<Value>(&mut c)
        .await
        .unwrap_err();
    assert_eq!(
        aborted.kind(),
        ErrorKind::Server(ServerErrorKind::ExecAbort)
    );
    assert_eq!(q::<i64>(&mut c, &["EXISTS", "a"]).await, 0);

    let mut raw = raw(redis.addr()).await;
    assert_eq!(call(&mut raw, &["MULTI"]).await, ok());
    assert_eq!(call(&mut raw, &["SET", "a", "1"]).await, simple("QUEUED"));
    assert_eq!(
        call(&mut raw, &["GET"]).await,
        error("ERR wrong number of arguments for 'get' command")
    );
    assert_eq!(call(&mut raw, &["SET", "b", "1"]).await, simple("QUEUED"));
    assert_eq!(
        call(&mut raw, &["EXEC"]).await,
        error("EXECABORT Transaction discarded because of previous errors.")
    );
    assert_eq!(
        call(&mut raw, &["EXISTS", "a", "b"]).await,
        BytesFrame::Integer(0)
    );
    // The transaction is over.
    assert_eq!(
        call(&mut raw, &["EXEC"]).await,
        error("ERR EXEC without MULTI")
    );
}

#[tokio::test]
async fn multi_exec_discard_errors() {
    let redis = MockRedis::start().await;
    let mut raw = raw(redis.addr()).await;
    assert_eq!(
        call(&mut raw, &["EXEC"]).await,
        error("ERR EXEC without MULTI")
    );
    assert_eq!(
        call(&mut raw, &["DISCARD"]).await,
        error("ERR DISCARD without MULTI")
    );
    assert_eq!(call(&mut raw, &["MULTI"]).await, ok());
    // Neither a nested MULTI nor a WATCH inside MULTI aborts the transaction.
    assert_eq!(
        call(&mut raw, &["MULTI"]).await,
        error("ERR MULTI calls can not be nested")
    );
    assert_eq!(
        call(&mut raw, &["WATCH", "k"]).await,
        error("ERR WATCH inside MULTI is not allowed")
    );
    assert_eq!(call(&mut raw, &["SET", "k", "1"]).await, simple("QUEUED"));
    assert_eq!(
        call(&mut raw, &["EXEC"]).await,
        BytesFrame::Array(vec![ok()])
    );
    // DISCARD drops the queue.
    assert_eq!(call(&mut raw, &["MULTI"]).await, ok());
    assert_eq!(call(&mut raw, &["SET", "k", "2"]).await, simple("QUEUED"));
    assert_eq!(call(&mut raw, &["DISCARD"]).await, ok());
    assert_eq!(call(&mut raw, &["GET", "k"]).await, bulk("1"));
    // An empty transaction answers an empty array.
    assert_eq!(call(&mut raw, &["MULTI"]).await, ok());
    assert_eq!(
        call(&mut raw, &["EXEC"]).await,
        BytesFrame::Array(Vec::new())
    );
    // RESET ends a transaction.
    assert_eq!(call(&mut raw, &["MULTI"]).await, ok());
    assert_eq!(call(&mut raw, &["RESET"]).await, simple("RESET"));
    assert_eq!(
        call(&mut raw, &["EXEC"]).await,
        error("ERR EXEC without MULTI")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transaction_is_atomic() {
    let redis = MockRedis::start().await;
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let mut c = connection(&redis).await;
        tasks.push(tokio::spawn(async move {
            for _ in 0..100 {
                let (first, second): (i64, i64) = redis::pipe()
                    .atomic()
                    .cmd("INCR")
                    .arg("n")
                    .cmd("INCR")
                    .arg("n")
                    .query_async(&mut c)
                    .await
                    .unwrap();
                assert_eq!(second, first + 1, "another command ran inside the EXEC");
            }
        }));
    }
    // Plain INCRs by two increments at once, to interleave with the transactions.
    let mut c = connection(&redis).await;
    for _ in 0..100 {
        q::<i64>(&mut c, &["INCRBY", "n", "2"]).await;
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(q::<i64>(&mut c, &["GET", "n"]).await, 600);
}

#[tokio::test]
async fn watch_aborts_exec_when_a_watched_key_changes() {
    let redis = MockRedis::start().await;
    let mut a = connection(&redis).await;
    let mut other = connection(&redis).await;
    let transaction = || {
        let mut pipe = redis::pipe();
        pipe.atomic().cmd("SET").arg("k").arg("mine");
        pipe
    };

    // Unchanged: EXEC runs.
    q::<()>(&mut a, &["SET", "k", "v"]).await;
    assert_eq!(q::<Value>(&mut a, &["WATCH", "k", "j"]).await, Value::Okay);
    let ran: Value = transaction().query_async(&mut a).await.unwrap();
    assert_eq!(ran, Value::Array(vec![Value::Okay]));

    // Changed by another client, deleted, flushed, expired, created and deleted, or changed by
    // this client itself: EXEC answers nil and runs nothing. A failed command, a flush while the
    // key is missing, or a key already expired when watched: EXEC runs. (All checked against a
    // real Redis 7.0.)
    struct Change {
        exists: bool,
        by_itself: bool,
        commands: &'static [&'static [&'static str]],
        wait: Duration,
        aborts: bool,
    }
    let change = |commands| Change {
        exists: true,
        by_itself: false,
        commands,
        wait: Duration::ZERO,
        aborts: true,
    };
    let changes = [
        change(&[&["SET", "k", "other"]]),
        change(&[&["DEL", "k"]]),
        change(&[&["FLUSHALL"]]),
        Change {
            wait: Duration::from_millis(60),
            ..change(&[&["PEXPIRE", "k", "20"]])
        },
        Change {
            exists: false,
            ..change(&[&["HSET", "k", "f", "v"], &["DEL", "k"]])
        },
        Change {
            by_itself: true,
            ..change(&[&["INCR", "k"]])
        },
        Change {
            aborts: false,
            ..change(&[&["RPUSH", "k", "x"]])
        },
        Change {
            exists: false,
            aborts: false,
            ..change(&[&["FLUSHALL"]])
        },
    ];
    for change in changes {
        q::<()>(&mut a, &["DEL", "k"]).await;
        if change.exists {
            q::<()>(&mut a, &["SET", "k", "1"]).await;
        }
        q::<()>(&mut a, &["WATCH", "k"]).await;
        for args in change.commands {
            let conn = if change.by_itself { &mut a } else { &mut other };
            // Some fail (RPUSH on a string): what matters is whether they touch the key.
            let _ = super::tests_data::command(args)
                .query_async::<Value>(conn)
                .await;
        }
        tokio::time::sleep(change.wait).await;
        let exec: Value = transaction().query_async(&mut a).await.unwrap();
        let (commands, aborts) = (change.commands, change.aborts);
        if aborts {
            assert_eq!(exec, Value::Nil, "{commands:?}");
        } else {
            assert_eq!(exec, Value::Array(vec![Value::Okay]), "{commands:?}");
        }
        let value = q::<Option<String>>(&mut a, &["GET", "k"]).await;
        assert_eq!(value.as_deref() == Some("mine"), !aborts, "{commands:?}");
    }
    // A key already expired (but not yet deleted) when watched.
    q::<()>(&mut a, &["SET", "k", "1", "PX", "10"]).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    q::<()>(&mut a, &["WATCH", "k"]).await;
    let ran: Value = transaction().query_async(&mut a).await.unwrap();
    assert_eq!(ran, Value::Array(vec![Value::Okay]));

    // UNWATCH, DISCARD and EXEC forget the watched keys.
    q::<()>(&mut a, &["WATCH", "k"]).await;
    q::<()>(&mut a, &["UNWATCH"]).await;
    q::<()>(&mut other, &["SET", "k", "other"]).await;
    let ran: Value = transaction().query_async(&mut a).await.unwrap();
    assert_eq!(ran, Value::Array(vec![Value::Okay]));
    assert_eq!(q::<String>(&mut a, &["GET", "k"]).await, "mine");
    // A watched key that is not touched, next to one that is missing and stays so: EXEC runs.
    q::<()>(&mut a, &["WATCH", "k", "missing"]).await;
    q::<()>(&mut other, &["SET", "unrelated", "x"]).await;
    let ran: Value = transaction().query_async(&mut a).await.unwrap();
    assert_eq!(ran, Value::Array(vec![Value::Okay]));
}

/// A real `redis-server` on a free port, stopped on drop.
pub(super) struct RealRedis {
    child: Child,
    pub(super) addr: SocketAddr,
}

impl Drop for RealRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl RealRedis {
    /// A real server for a comparison test: `None` (the test then has nothing to compare with,
    /// and says so) when `redis-server` is not on `PATH`. Where `REDIS_URL` is set (CI, which
    /// installs Redis), a missing server fails the test instead of skipping the comparison.
    pub(super) async fn for_comparison() -> Option<Self> {
        let real = Self::start().await;
        if real.is_none() {
            assert!(
                std::env::var_os("REDIS_URL").is_none(),
                "REDIS_URL is set but redis-server could not be started: the mock cannot be compared with a real Redis"
            );
            tracing::warn!(
                "redis-server is not on PATH: skipping the comparison with a real Redis"
            );
        }
        real
    }

    /// Starts `redis-server` when it is on `PATH`.
    async fn start() -> Option<Self> {
        let binary = std::env::split_paths(&std::env::var_os("PATH")?)
            .map(|dir| dir.join("redis-server"))
            .find(|path| path.is_file())?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let child = Command::new(binary)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let server = Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        for _ in 0..100 {
            if TcpStream::connect(server.addr).await.is_ok() {
                return Some(server);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }
}

/// Deterministic commands (no orders Redis leaves unspecified, no timings) whose replies must be
/// the same, frame for frame, from the mock and from Redis 7.
const SCRIPT: &[&[&str]] = &[
    &["FLUSHALL"],
    &["GET", "k"],
    &["SET", "k", "v"],
    &["SET", "k", "w", "NX"],
    &["SET", "k", "w", "XX", "GET"],
    &["SET", "k", "x", "NX", "GET"],
    &["SET", "k", "v", "EX", "0"],
    &["SET", "k", "v", "PX", "10", "EX", "10"],
    &["SET", "k", "v", "BOGUS"],
    &["SET", "k", "v", "EX", "x"],
    &["SET", "n", "9223372036854775807"],
    &["INCR", "n"],
    &["INCR", "k"],
    &["INCRBY", "c", "5"],
    &["INCRBY", "c", "01"],
    &["INCRBY", "c", "-7"],
    &["DEL", "k", "nope", "k"],
    &["EXISTS", "c", "c", "n", "nope"],
    &["TYPE", "c"],
    &["TYPE", "nope"],
    &["EXPIRE", "c", "100"],
    &["TTL", "c"],
    &["PTTL", "nope"],
    &["PTTL", "n"],
    &["EXPIRE", "c", "50", "GT"],
    &["EXPIRE", "c", "50", "NX", "XX"],
    &["EXPIRE", "c", "50", "GT", "LT"],
    &["EXPIRE", "c", "50", "FOO"],
    &["EXPIRE", "c", "92233720368547758"],
    &["PEXPIRE", "nope", "100"],
    &["EXPIRE", "n", "-1"],
    &["KEYS", "c"],
    &["DBSIZE"],
    &["HSET", "h", "a", "1", "b", "2"],
    &["HSET", "h", "a", "3"],
    &["HSET", "h", "a"],
    &["HSET", "h", "a", "1", "b"],
    &["HGET", "h", "a"],
    &["HGET", "h", "zz"],
    &["HGETALL", "h"],
    &["HKEYS", "h"],
    &["HLEN", "h"],
    &["HEXISTS", "h", "a"],
    &["HINCRBY", "h", "a", "10"],
    &["HINCRBY", "h", "x", "1"],
    &["HSET", "h", "t", "abc"],
    &["HINCRBY", "h", "t", "1"],
    &["HINCRBY", "h", "a", "x"],
    &["HDEL", "h", "a", "b", "x", "t", "zz"],
    &["EXISTS", "h"],
    &["GET", "c"],
    &["SADD", "s", "a", "a"],
    &["SADD", "s", "a"],
    &["SMEMBERS", "s"],
    &["SCARD", "s"],
    &["SISMEMBER", "s", "a"],
    &["SREM", "s", "a", "b"],
    &["EXISTS", "s"],
    &["RPUSH", "l", "a", "b", "c", "a", "b", "c"],
    &["LPUSH", "l", "z", "y"],
    &["LRANGE", "l", "0", "-1"],
    &["LRANGE", "l", "-3", "-2"],
    &["LRANGE", "l", "5", "2"],
    &["LRANGE", "l", "-100", "100"],
    &["LRANGE", "l", "0", "x"],
    &["LREM", "l", "1", "b"],
    &["LREM", "l", "-1", "a"],
    &["LREM", "l", "0", "c"],
    &["LRANGE", "l", "0", "-1"],
    &["LLEN", "l"],
    &["SET", "str", "s"],
    &["LPUSH", "str", "x"],
    &["SADD", "l", "x"],
    &["HGET", "l", "x"],
    &["GET", "l"],
    &["MULTI"],
    &["SET", "t", "1"],
    &["INCR", "t"],
    &["HSET", "t", "f", "v"],
    &["GET"],
    &["PUBLISH", "chan", "msg"],
    &["EXEC"],
    &["MULTI"],
    &["SET", "t", "1"],
    &["INCR", "t"],
    &["HSET", "t", "f", "v"],
    &["SET", "t", "2", "BOGUS"],
    &["PUBLISH", "chan", "msg"],
    &["MULTI"],
    &["EXEC"],
    &["EXEC"],
    &["DISCARD"],
    &["MULTI"],
    &["WATCH", "x"],
    &["DISCARD"],
    &["WATCH", "t"],
    &["SET", "t", "5"],
    &["MULTI"],
    &["GET", "t"],
    &["EXEC"],
    &["UNWATCH"],
    &["NoSuch", "a", "b"],
    &["FLUSHDB", "SYNC"],
    &["DBSIZE"],
    &["SET", "k", "v", "EX", "5", "EX", "6"],
    &["SET", "k", "v", "KEEPTTL"],
    &["TTL", "k"],
    &["SET", "k", "v", "KEEPTTL", "PX", "5"],
    &["SET", "k", "v", "EX", "9223372036854775807"],
    &["SET", "k", "v", "PX", "9223372036854775807"],
    &["SET", "k", "v", "EXAT", "1"],
    &["EXISTS", "k"],
    &["SET", "k", "v", "px", "100000", "nx"],
    &["TTL", "k"],
    &["INCRBY", "k", "-0"],
    &["INCRBY", "k", "9223372036854775808"],
    &["PEXPIRE", "k", "200000", "xx"],
    &["TTL", "k"],
    &["EXPIRE", "k", "-9223372036854775808"],
    &["PEXPIRE", "k", "-9223372036854775808"],
    &["EXISTS", "k"],
    &["FLUSHALL", "SYNC", "ASYNC"],
    &["SET", "only", "1"],
    &["KEYS", "*"],
    &["KEYS", "on?y"],
    &["KEYS", "x*"],
    &["TYPE"],
    &["DEL"],
    &["EXISTS"],
    &["HSET", "h", "f", "v"],
    &["SET", "h", "v", "GET"],
    &["HDEL", "nope", "a"],
    &["SREM", "nope", "a"],
    &["SCARD", "nope"],
    &["LREM", "nope", "0", "zz"],
    &["LRANGE", "nope", "0", "-1"],
    &["LLEN", "nope"],
    &["HGETALL", "nope"],
    &["SELECT", "99"],
    &["SELECT", "x"],
    &["SELECT", "0"],
    &["MULTI"],
    &["PING"],
    &["ECHO", "x"],
    &["NOSUCH"],
    &["DISCARD"],
    &["MULTI"],
    &["PING", "x"],
    &["SUBSCRIBE", "ch"],
    &["EXEC"],
    &["GET", "only"],
    &["PING"],
    &["UNSUBSCRIBE", "ch"],
    &["GET", "only"],
];

#[tokio::test]
async fn replies_match_a_real_redis() {
    let Some(real) = RealRedis::for_comparison().await else {
        return;
    };
    let mock = MockRedis::start().await;
    let mut expected = raw(real.addr).await;
    let mut got = raw(mock.addr()).await;
    for args in SCRIPT {
        let want = call(&mut expected, args).await;
        assert_eq!(call(&mut got, args).await, want, "{args:?}");
    }
}
