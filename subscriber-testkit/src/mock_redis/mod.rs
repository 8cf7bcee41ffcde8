//! [`MockRedis`]: a small Redis server for tests, with pub/sub, a keyspace (streams included),
//! transactions, natively emulated scripts and fault injection.
//!
//! The mock is self-contained (it depends on no other part of the runtime), split by concept:
//! - `resp`: the RESP2 codec (with a bound on buffered input), reply builders and Redis's integer
//!   parsing;
//! - `server`: the shared server state, the accept loop and the per-connection task;
//! - `commands`: the queue-time checks (unknown command or subcommand, arity, subscribed mode),
//!   then running one command: the connection and pub/sub commands here, the others dispatched
//!   below;
//! - `transaction`: `MULTI`, `EXEC`, `DISCARD`, `WATCH`, `UNWATCH` and the per-connection state;
//! - `keyspace`: the values, their lazy expiry, the watched keys, and the signal that wakes the
//!   clients blocked on streams;
//! - `data`: the key and string commands; `collections`: the hash, set and list commands;
//! - `stream`: the stream value (entries, IDs, consumer groups and their pending entries);
//!   `streams`: the stream commands on entries, `XREAD` and `XREADGROUP`; `stream_groups`: the
//!   other consumer group commands;
//! - `blocking`: a connection waiting on a blocked `XREAD`/`XREADGROUP`;
//! - `scripting`: `EVAL`, `EVALSHA`, `SCRIPT` and the table of the scripts emulated natively
//!   (`script_durable_publish`: the runtime's durable-publish script);
//! - `pubsub`: the `PUBLISH` fan-out to `message`/`pmessage` subscribers.
//!
//! The fault-injection controls are methods of [`MockRedis`], below.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

mod blocking;
mod collections;
mod commands;
mod data;
mod keyspace;
mod pubsub;
mod resp;
mod script_durable_publish;
mod scripting;
mod server;
mod stream;
mod stream_groups;
mod streams;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_data;
#[cfg(test)]
mod tests_streams;
#[cfg(test)]
mod tests_transactions;
mod transaction;

use self::server::{accept_loop, Client, Shared};

/// How long [`MockRedis::restart`] refuses connections.
const RESTART_OUTAGE: Duration = Duration::from_millis(200);

/// A Redis server for tests: a real TCP server on `127.0.0.1` speaking RESP2, answering as Redis 7
/// does (same reply types, same error messages) to:
/// - pub/sub: `SUBSCRIBE`, `PSUBSCRIBE` (Redis glob semantics), `UNSUBSCRIBE`, `PUNSUBSCRIBE`,
///   `PUBLISH`;
/// - keys and strings: `GET`, `SET` (with `NX`/`XX`, `GET`, `EX`/`PX`/`EXAT`/`PXAT`/`KEEPTTL`),
///   `DEL`, `EXISTS`, `EXPIRE`, `PEXPIRE` (with `NX`/`XX`/`GT`/`LT`), `TTL`, `PTTL`, `KEYS`,
///   `DBSIZE`, `FLUSHALL`, `FLUSHDB`, `TYPE`, `INCR`, `INCRBY`;
/// - hashes: `HSET`, `HMSET`, `HGET`, `HMGET`, `HDEL`, `HGETALL`, `HLEN`, `HINCRBY`, `HKEYS`,
///   `HEXISTS`;
/// - sets: `SADD`, `SREM`, `SMEMBERS`, `SCARD`, `SISMEMBER`;
/// - lists: `RPUSH`, `LPUSH`, `LRANGE`, `LREM`, `LLEN`;
/// - streams: `XADD` (with `NOMKSTREAM`, `MAXLEN`/`MINID` `[=|~]` and `LIMIT`; IDs `*`, `<ms>-*`,
///   `<ms>[-<seq>]`), `XRANGE`, `XREVRANGE` (`-`, `+`, incomplete and exclusive `(` IDs, `COUNT`),
///   `XLEN`, `XTRIM`, `XDEL`, `XREAD` (with `$`, `COUNT`, `BLOCK`);
/// - consumer groups: `XGROUP CREATE` (`$`, `MKSTREAM`, `ENTRIESREAD`), `XGROUP SETID`,
///   `XGROUP DESTROY`, `XGROUP CREATECONSUMER`, `XGROUP DELCONSUMER`, `XREADGROUP` (`>` or a
///   consumer's own pending entries, `COUNT`, `BLOCK`, `NOACK`), `XACK`, `XPENDING` (summary and
///   extended forms, `IDLE`), `XCLAIM` (`IDLE`, `TIME`, `RETRYCOUNT`, `FORCE`, `JUSTID`,
///   `LASTID`), `XAUTOCLAIM` (`COUNT`, `JUSTID`; Redis 7's three-element reply), `XINFO GROUPS`,
///   `XINFO CONSUMERS`;
/// - scripts: `EVAL`, `EVALSHA`, `SCRIPT LOAD`/`EXISTS`/`FLUSH`/`KILL` (see below);
/// - transactions: `MULTI`, `EXEC`, `DISCARD`, `WATCH`, `UNWATCH` (an `EXEC` runs its queue
///   atomically: no other client's command interleaves; a `PUBLISH` in it is delivered as usual);
/// - the few other commands clients send: `PING`, `ECHO`, `SELECT`, `AUTH` (any password is
///   accepted), `CLIENT SETINFO`/`SETNAME`/`GETNAME`/`ID`, `HELLO 2`, `RESET`, `QUIT`.
///
/// Values are strings, hashes, sets, lists and streams, with `WRONGTYPE` errors when a command
/// meets the wrong type; an emptied hash, set or list is deleted, as in Redis (an emptied stream
/// stays). Keys expire lazily (on access), but `EXISTS`, `KEYS` and `DBSIZE` never report an
/// expired key. There is one keyspace per server: `SELECT` accepts databases 0 to 15, but they all
/// share it (and `FLUSHDB` empties it, as `FLUSHALL` does). `KEYS`, `HGETALL`, `HKEYS` and
/// `SMEMBERS` answer in sorted order (Redis leaves it unspecified). Nothing is persisted.
///
/// A blocking `XREAD`/`XREADGROUP` (`BLOCK ms`, `BLOCK 0` for ever) waits without holding up the
/// other clients, until an `XADD` (from any client, a transaction or a script) gives it entries,
/// its timeout passes (nil), or its connection ends (closed by the client, or by the fault
/// injection below). As in Redis, a group reader blocked on a stream that is deleted, or on a
/// group that is destroyed, gets an `UNBLOCKED`/`NOGROUP` error, a blocking read in a transaction
/// answers at once, and commands pipelined behind a blocked read run after it.
///
/// There is no Lua interpreter: a script is recognised by its first line, and the mock runs a
/// native emulation of the scripts it knows (`-- switchboard:durable-publish:3`, the runtime's
/// durable publish: same keys, replies, `PUBLISH`ed bytes and errors as the Lua on Redis 7),
/// atomically as Redis runs a script. `EVAL` and `SCRIPT LOAD` of any other script answer
/// `ERR mock redis: unsupported script ...`, and `EVALSHA` of an unknown SHA1 answers Redis's
/// `NOSCRIPT`, so `redis::Script` works as with Redis.
///
/// Differences from Redis: a null array (`*-1`: an `EXEC` aborted by `WATCH`, a blocking read's
/// timeout, `XRANGE ... COUNT 0`, a deleted entry in a consumer's history) is sent as a null bulk
/// string (`$-1`), which clients read as the same nil; `MAXLEN ~`/`MINID ~` trim exactly (Redis
/// trims whole nodes only, keeping at least as many entries); `XSETID`, `XINFO STREAM` and the
/// `HELP` subcommands are not implemented.
///
/// Its fault injection drives the [`RedisBroker`](subscriber_runtime::broker::RedisBroker)'s reconnects:
/// [`drop_connections`](Self::drop_connections), [`stall_connections`](Self::stall_connections),
/// [`refuse_connections_for`](Self::refuse_connections_for) and [`restart`](Self::restart).
/// Input that is not RESP closes that connection only.
///
/// Dropping the `MockRedis` stops the server and closes every connection. It runs on the Tokio
/// runtime that started it.
///
/// ```
/// use switchboard::broker::RedisBroker;
/// use switchboard::testing::MockRedis;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), switchboard::Error> {
/// let redis = MockRedis::start().await;
/// let broker = RedisBroker::from_url(&redis.url())?;
/// # let _ = broker;
/// # Ok(())
/// # }
/// ```
pub struct MockRedis {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

impl fmt::Debug for MockRedis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockRedis")
            .field("addr", &self.addr)
            .field("connections", &self.connection_count())
            .field("published", &self.published_count())
            .finish()
    }
}

impl Drop for MockRedis {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
impl MockRedis {
    /// Starts a server on `127.0.0.1` on a free port.
    ///
    /// # Panics
    /// When no local port can be bound (the test cannot run anyway).
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("MockRedis: cannot bind a local port");
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let shared = Arc::new(Shared::default());
        let stop = CancellationToken::new();
        tokio::spawn(accept_loop(listener, shared.clone(), stop.clone()));
        tracing::debug!(%addr, "mock redis started");
        Self { addr, shared, stop }
    }

    /// The URL to connect to, e.g. `redis://127.0.0.1:34567/`.
    pub fn url(&self) -> String {
        format!("redis://{}/", self.addr)
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes every client connection now (their subscriptions go with them), as a network
    /// failure or a server-side `CLIENT KILL` would. New connections are accepted as usual.
    pub fn drop_connections(&self) {
        let dropped: Vec<Client> = self.shared.clients().drain().map(|(_, c)| c).collect();
        tracing::debug!(addr = %self.addr, connections = dropped.len(), "mock redis dropping every connection");
        for client in dropped {
            client.kill.cancel();
        }
    }

    /// Stops answering on every current connection but keeps it open, as a network partition or
    /// a frozen server would: nothing is read from or written to those clients any more (they
    /// receive no messages, and `PUBLISH`es skip them), until they close or are dropped. New
    /// connections are served as usual.
    pub fn stall_connections(&self) {
        let clients = self.shared.clients();
        tracing::debug!(addr = %self.addr, connections = clients.len(), "mock redis stalling every connection");
        for client in clients.values() {
            client.stall.cancel();
        }
    }

    /// For `duration` from now, closes every new connection as soon as it is accepted (before it
    /// can send a command). Existing connections are left alone.
    pub fn refuse_connections_for(&self, duration: Duration) {
        *self
            .shared
            .refuse_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now() + duration);
    }

    /// Simulates a server restart: drops every connection, refuses new ones for a moment
    /// (200 ms), and returns once connections are accepted again. Like a real restart of a Redis
    /// without persistence, it forgets every subscription, every open transaction and watched key,
    /// every blocked read, every cached script, and every key: the keyspace is empty afterwards.
    /// (To keep the keys, use [`drop_connections`](Self::drop_connections), a network failure
    /// rather than a restart.)
    pub async fn restart(&self) {
        self.refuse_connections_for(RESTART_OUTAGE);
        {
            // Under the command lock, so that no command of a dropped client runs after the clear.
            let mut keyspace = self.shared.keyspace();
            self.drop_connections();
            keyspace.clear();
            self.shared.scripts().clear();
        }
        tokio::time::sleep(RESTART_OUTAGE).await;
    }

    /// How many clients are connected now.
    pub fn connection_count(&self) -> usize {
        self.shared.clients().len()
    }

    /// How many `PUBLISH` commands were executed so far.
    pub fn published_count(&self) -> u64 {
        self.shared.published.load(Ordering::Relaxed)
    }
}
