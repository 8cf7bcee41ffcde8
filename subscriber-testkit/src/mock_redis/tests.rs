//! Tests of the mock against raw RESP clients and the `redis` crate.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use redis_protocol::codec::Resp2;
use redis_protocol::resp2::types::BytesFrame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

use super::resp::{bulk, ok};
use super::MockRedis;

type Conn = Framed<TcpStream, Resp2>;

const WAIT: Duration = Duration::from_secs(5);

async fn connect(redis: &MockRedis) -> Conn {
    Framed::new(
        TcpStream::connect(redis.addr()).await.unwrap(),
        Resp2::default(),
    )
}

fn command(args: &[&str]) -> BytesFrame {
    BytesFrame::Array(args.iter().map(|a| bulk(a.as_bytes().to_vec())).collect())
}

async fn call(conn: &mut Conn, args: &[&str]) -> BytesFrame {
    conn.send(command(args)).await.unwrap();
    next(conn).await
}

async fn next(conn: &mut Conn) -> BytesFrame {
    tokio::time::timeout(WAIT, conn.next())
        .await
        .expect("a reply in time")
        .expect("the connection is open")
        .expect("a valid frame")
}

fn array(items: &[&str]) -> BytesFrame {
    BytesFrame::Array(items.iter().map(|a| bulk(a.as_bytes().to_vec())).collect())
}

fn push(kind: &str, target: &str, count: i64) -> BytesFrame {
    BytesFrame::Array(vec![
        bulk(kind.to_owned()),
        bulk(target.to_owned()),
        BytesFrame::Integer(count),
    ])
}

async fn closed(conn: &mut Conn) -> bool {
    matches!(
        tokio::time::timeout(WAIT, conn.next()).await,
        Ok(None | Some(Err(_)))
    )
}

#[tokio::test]
async fn answers_connection_commands() {
    let redis = MockRedis::start().await;
    let mut c = connect(&redis).await;
    assert_eq!(
        call(&mut c, &["PING"]).await,
        BytesFrame::SimpleString("PONG".into())
    );
    assert_eq!(call(&mut c, &["ping", "hi"]).await, bulk("hi"));
    assert_eq!(call(&mut c, &["ECHO", "x y"]).await, bulk("x y"));
    assert_eq!(call(&mut c, &["SELECT", "3"]).await, ok());
    assert!(matches!(
        call(&mut c, &["SELECT", "99"]).await,
        BytesFrame::Error(_)
    ));
    assert_eq!(
        call(&mut c, &["CLIENT", "SETINFO", "LIB-NAME", "x"]).await,
        ok()
    );
    assert_eq!(call(&mut c, &["CLIENT", "SETNAME", "worker"]).await, ok());
    assert!(matches!(
        call(&mut c, &["CLIENT", "KILL"]).await,
        BytesFrame::Error(_)
    ));
    assert!(
        matches!(call(&mut c, &["HELLO", "3"]).await, BytesFrame::Error(e) if e.starts_with("NOPROTO"))
    );
    match call(&mut c, &["NoSuch", "k"]).await {
        BytesFrame::Error(e) => assert_eq!(
            e,
            "ERR unknown command 'NoSuch', with args beginning with: 'k' "
        ),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        call(&mut c, &["PUBLISH", "only-one-arg"]).await,
        BytesFrame::Error(_)
    ));
    assert_eq!(call(&mut c, &["QUIT"]).await, ok());
    assert!(closed(&mut c).await);
}

#[tokio::test]
async fn pipelined_commands_are_answered_in_order() {
    let redis = MockRedis::start().await;
    let mut raw = TcpStream::connect(redis.addr()).await.unwrap();
    raw.write_all(
        b"*1\r\n$4\r\nPING\r\n*2\r\n$4\r\nECHO\r\n$1\r\na\r\n*2\r\n$4\r\nECHO\r\n$1\r\nb\r\n",
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    let expected = b"+PONG\r\n$1\r\na\r\n$1\r\nb\r\n";
    while got.len() < expected.len() {
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(WAIT, raw.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed early");
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got, expected);
}

#[tokio::test]
async fn publish_delivers_message_and_pmessage_like_redis() {
    let redis = MockRedis::start().await;
    let mut sub = connect(&redis).await;
    let mut publisher = connect(&redis).await;
    sub.send(command(&["SUBSCRIBE", "news", "other"]))
        .await
        .unwrap();
    assert_eq!(next(&mut sub).await, push("subscribe", "news", 1));
    assert_eq!(next(&mut sub).await, push("subscribe", "other", 2));
    assert_eq!(
        call(&mut sub, &["PSUBSCRIBE", "n?ws"]).await,
        push("psubscribe", "n?ws", 3)
    );
    sub.send(command(&["PSUBSCRIBE", "[mn]*", "x*"]))
        .await
        .unwrap();
    assert_eq!(next(&mut sub).await, push("psubscribe", "[mn]*", 4));
    assert_eq!(next(&mut sub).await, push("psubscribe", "x*", 5));

    // One delivery per matching subscription, as real Redis counts them.
    assert_eq!(
        call(&mut publisher, &["PUBLISH", "news", "hello"]).await,
        BytesFrame::Integer(3)
    );
    let mut got = vec![
        next(&mut sub).await,
        next(&mut sub).await,
        next(&mut sub).await,
    ];
    got.sort_by_key(|f| format!("{f:?}"));
    let mut want = vec![
        array(&["message", "news", "hello"]),
        array(&["pmessage", "n?ws", "news", "hello"]),
        array(&["pmessage", "[mn]*", "news", "hello"]),
    ];
    want.sort_by_key(|f| format!("{f:?}"));
    assert_eq!(got, want);
    assert_eq!(
        call(&mut publisher, &["PUBLISH", "nobody", "x"]).await,
        BytesFrame::Integer(1)
    );
    assert_eq!(
        next(&mut sub).await,
        array(&["pmessage", "[mn]*", "nobody", "x"])
    );
    assert_eq!(
        call(&mut publisher, &["PUBLISH", "zzz", "x"]).await,
        BytesFrame::Integer(0)
    );
    assert_eq!(redis.published_count(), 3);

    // Subscribed mode: only pub/sub commands and PING.
    assert_eq!(call(&mut sub, &["PING"]).await, array(&["pong", ""]));
    assert!(
        matches!(call(&mut sub, &["ECHO", "x"]).await, BytesFrame::Error(e) if e.contains("only (P|S)SUBSCRIBE"))
    );

    // UNSUBSCRIBE without arguments leaves every channel, patterns stay.
    sub.send(command(&["UNSUBSCRIBE"])).await.unwrap();
    assert_eq!(next(&mut sub).await, push("unsubscribe", "news", 4));
    assert_eq!(next(&mut sub).await, push("unsubscribe", "other", 3));
    assert_eq!(
        call(&mut publisher, &["PUBLISH", "other", "x"]).await,
        BytesFrame::Integer(0)
    );
    assert_eq!(
        call(&mut sub, &["PUNSUBSCRIBE", "x*"]).await,
        push("punsubscribe", "x*", 2)
    );
    sub.send(command(&["PUNSUBSCRIBE"])).await.unwrap();
    assert_eq!(next(&mut sub).await, push("punsubscribe", "[mn]*", 1));
    assert_eq!(next(&mut sub).await, push("punsubscribe", "n?ws", 0));
    assert_eq!(
        call(&mut sub, &["UNSUBSCRIBE"]).await,
        BytesFrame::Array(vec![
            bulk("unsubscribe"),
            BytesFrame::Null,
            BytesFrame::Integer(0)
        ])
    );
    assert_eq!(call(&mut sub, &["ECHO", "back"]).await, bulk("back"));
}

#[tokio::test]
async fn malformed_input_closes_only_that_connection() {
    let redis = MockRedis::start().await;
    let mut good = connect(&redis).await;
    assert_eq!(
        call(&mut good, &["PING"]).await,
        BytesFrame::SimpleString("PONG".into())
    );
    for garbage in [
        &b"*1\r\n$x\r\n"[..],
        b"\x00\x01\x02garbage\r\n",
        b"*2\r\n:1\r\n*-5\r\n",
    ] {
        let mut bad = TcpStream::connect(redis.addr()).await.unwrap();
        bad.write_all(garbage).await.unwrap();
        let mut buf = Vec::new();
        let read = tokio::time::timeout(WAIT, bad.read_to_end(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(_)) | Ok(Err(_))),
            "{garbage:?}: not closed"
        );
    }
    // A non-array frame gets an error, then the connection is closed.
    let mut inline = connect(&redis).await;
    inline.send(bulk("PING")).await.unwrap();
    assert!(matches!(next(&mut inline).await, BytesFrame::Error(_)));
    assert!(closed(&mut inline).await);
    assert_eq!(
        call(&mut good, &["ECHO", "still here"]).await,
        bulk("still here")
    );
}

#[tokio::test]
async fn fault_injection() {
    let redis = MockRedis::start().await;
    let mut a = connect(&redis).await;
    let mut b = connect(&redis).await;
    assert_eq!(
        call(&mut a, &["SUBSCRIBE", "c"]).await,
        push("subscribe", "c", 1)
    );
    assert_eq!(
        call(&mut b, &["PING"]).await,
        BytesFrame::SimpleString("PONG".into())
    );
    assert_eq!(redis.connection_count(), 2);
    redis.drop_connections();
    assert_eq!(redis.connection_count(), 0);
    assert!(closed(&mut a).await);
    assert!(closed(&mut b).await);

    redis.refuse_connections_for(Duration::from_secs(60));
    let mut refused = connect(&redis).await;
    let _ = refused.send(command(&["PING"])).await;
    assert!(closed(&mut refused).await);
    redis.refuse_connections_for(Duration::ZERO);

    let mut c = connect(&redis).await;
    assert_eq!(
        call(&mut c, &["SUBSCRIBE", "c"]).await,
        push("subscribe", "c", 1)
    );
    redis.restart().await;
    assert!(closed(&mut c).await);
    let mut d = connect(&redis).await;
    // The restart forgot the subscription.
    assert_eq!(
        call(&mut d, &["PUBLISH", "c", "x"]).await,
        BytesFrame::Integer(0)
    );

    // A stalled connection stays open but answers nothing; others are unaffected.
    assert_eq!(
        call(&mut d, &["SUBSCRIBE", "s"]).await,
        push("subscribe", "s", 1)
    );
    redis.stall_connections();
    d.send(command(&["PING"])).await.unwrap();
    assert!(tokio::time::timeout(Duration::from_millis(200), d.next())
        .await
        .is_err());
    let mut e = connect(&redis).await;
    assert_eq!(
        call(&mut e, &["PUBLISH", "s", "x"]).await,
        BytesFrame::Integer(0)
    );
    assert_eq!(redis.connection_count(), 2);
    redis.drop_connections();
    assert!(closed(&mut d).await);
}

#[tokio::test]
async fn the_redis_crate_talks_to_it() {
    let redis = MockRedis::start().await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe("a").await.unwrap();
    pubsub.psubscribe("b*").await.unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let n: i64 = redis::cmd("PUBLISH")
        .arg("a")
        .arg("1")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(n, 1);
    let n: i64 = redis::cmd("PUBLISH")
        .arg("bee")
        .arg("2")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(n, 1);
    let mut messages = pubsub.on_message();
    let first = tokio::time::timeout(WAIT, messages.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.get_channel_name(), "a");
    assert_eq!(first.get_payload_bytes(), b"1");
    let second = tokio::time::timeout(WAIT, messages.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.get_pattern::<String>().unwrap(), "b*");
    assert_eq!(second.get_channel_name(), "bee");
    let pong: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
    assert_eq!(pong, "PONG");
}
