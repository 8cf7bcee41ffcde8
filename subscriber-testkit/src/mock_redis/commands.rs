//! Running one command: the queue-time checks (unknown command or subcommand, arity, subscribed
//! mode), the transaction commands, the connection commands, `SUBSCRIBE` and friends; the data
//! commands are in `data`, `collections`, `streams` and `stream_groups`, the scripts in
//! `scripting`.

use bytes::Bytes;
use redis_protocol::resp2::types::BytesFrame;

use super::blocking::Blocked;
use super::keyspace::Keyspace;
use super::pubsub::publish;
use super::resp::{bulk, error, ok, parse_int, simple, wrong_arity};
use super::server::Shared;
use super::streams::{self, Read};
use super::transaction::Session;

/// What to do after a command.
pub(super) enum After {
    Continue,
    Close,
    /// A blocking read found nothing: wait (see `blocking`), then answer.
    Block(Blocked),
}

/// The arity of every command the mock knows, as in Redis's command table: the number of
/// arguments including the command's name, or at least `-arity` when negative. `None` for an
/// unknown command.
fn arity(name: &str) -> Option<i64> {
    Some(match name {
        "PING" | "HELLO" | "UNSUBSCRIBE" | "PUNSUBSCRIBE" | "QUIT" | "FLUSHALL" | "FLUSHDB" => -1,
        "AUTH" | "CLIENT" | "SUBSCRIBE" | "PSUBSCRIBE" | "WATCH" | "DEL" | "EXISTS" | "XGROUP"
        | "XINFO" | "SCRIPT" => -2,
        "SET" | "PEXPIRE" | "EXPIRE" | "HDEL" | "SADD" | "SREM" | "RPUSH" | "LPUSH" | "HMGET"
        | "XDEL" | "XPENDING" | "EVAL" | "EVALSHA" => -3,
        "HSET" | "HMSET" | "XRANGE" | "XREVRANGE" | "XTRIM" | "XREAD" | "XACK" => -4,
        "XADD" => -5,
        "XCLAIM" | "XAUTOCLAIM" => -6,
        "XREADGROUP" => -7,
        "RESET" | "MULTI" | "EXEC" | "DISCARD" | "UNWATCH" | "DBSIZE" => 1,
        "ECHO" | "SELECT" | "GET" | "PTTL" | "TTL" | "KEYS" | "TYPE" | "INCR" | "HGETALL"
        | "HLEN" | "HKEYS" | "SMEMBERS" | "SCARD" | "LLEN" | "XLEN" => 2,
        "PUBLISH" | "INCRBY" | "HGET" | "HEXISTS" | "SISMEMBER" => 3,
        "HINCRBY" | "LRANGE" | "LREM" => 4,
        _ => return None,
    })
}

/// The arity of the subcommands of the container commands the mock implements, as in Redis's
/// command table; `None` for a subcommand it does not know.
fn subcommand_arity(name: &str, sub: &str) -> Option<i64> {
    Some(match (name, sub) {
        ("XGROUP", "CREATE" | "SETID") => -5,
        ("XGROUP", "CREATECONSUMER" | "DELCONSUMER") => 5,
        ("XGROUP", "DESTROY") => 4,
        ("XINFO", "CONSUMERS") => 4,
        ("XINFO", "GROUPS") => 3,
        ("SCRIPT", "EXISTS") => -3,
        ("SCRIPT", "FLUSH") => -2,
        ("SCRIPT", "LOAD") => 3,
        ("SCRIPT", "KILL") => 2,
        _ => return None,
    })
}

/// The queue-time check of a container command's subcommand (`XGROUP CREATE`...): Redis's error
/// for an unknown one or a wrong arity.
fn check_subcommand(name: &str, args: &[Bytes]) -> Option<BytesFrame> {
    if !matches!(name, "XGROUP" | "XINFO" | "SCRIPT") {
        return None;
    }
    let sent = String::from_utf8_lossy(args.first()?);
    let sub = sent.to_ascii_uppercase();
    let argc = i64::try_from(args.len()).unwrap_or(i64::MAX) + 1;
    match subcommand_arity(name, &sub) {
        None => {
            let sent: String = sent.chars().take(128).collect();
            Some(error(streams::sanitize(&format!(
                "ERR unknown subcommand '{sent}'. Try {name} HELP."
            ))))
        }
        Some(arity) if (arity >= 0 && argc != arity) || argc < -arity => Some(error(format!(
            "ERR wrong number of arguments for '{}|{}' command",
            name.to_ascii_lowercase(),
            sub.to_ascii_lowercase()
        ))),
        Some(_) => None,
    }
}

/// Runs one command, pushing its replies.
///
/// Commands run one at a time, under the keyspace lock, as on Redis's single thread: an `EXEC`
/// runs its whole queue under it, so no other client's command (`PUBLISH` included) interleaves.
pub(super) fn execute(
    shared: &Shared,
    id: u64,
    session: &mut Session,
    frame: BytesFrame,
    replies: &mut Vec<BytesFrame>,
) -> After {
    let BytesFrame::Array(parts) = frame else {
        replies.push(error(
            "ERR Protocol error: expected a command (an array of bulk strings)",
        ));
        return After::Close;
    };
    let mut args = Vec::with_capacity(parts.len());
    for part in parts {
        match part {
            BytesFrame::BulkString(b) | BytesFrame::SimpleString(b) => args.push(b),
            BytesFrame::Integer(i) => args.push(Bytes::from(i.to_string())),
            _ => {
                replies.push(error("ERR Protocol error: expected bulk strings"));
                return After::Close;
            }
        }
    }
    let Some((sent_name, args)) = args.split_first() else {
        // An empty array is ignored, as Redis does.
        return After::Continue;
    };
    let sent_name = String::from_utf8_lossy(sent_name);
    let name = sent_name.to_ascii_uppercase();

    let mut keyspace = shared.keyspace();
    let Some(subscribed) = shared
        .clients()
        .get(&id)
        .map(|c| c.subscription_count() > 0)
    else {
        // Dropped (`drop_connections`, `restart`) while this command was on its way.
        return After::Close;
    };
    let argc = i64::try_from(args.len()).unwrap_or(i64::MAX) + 1;
    let rejected = match arity(&name) {
        None => Some(unknown_command(&sent_name, args)),
        Some(arity) if (arity >= 0 && argc != arity) || argc < -arity => {
            Some(wrong_arity(&name))
        }
        Some(_) if subscribed && !allowed_when_subscribed(&name) => Some(error(format!(
            "ERR Can't execute '{}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context",
            name.to_ascii_lowercase()
        ))),
        Some(_) => check_subcommand(&name, args),
    };
    if let Some(reply) = rejected {
        session.reject();
        replies.push(reply);
        return After::Continue;
    }

    match name.as_str() {
        "MULTI" => replies.push(session.multi()),
        "DISCARD" => replies.push(session.discard(&mut keyspace, id)),
        "WATCH" => replies.push(session.watch(&mut keyspace, id, args)),
        "EXEC" => {
            let reply = session.exec(&mut keyspace, id, |keyspace, name, args, replies| {
                // A blocking command in a transaction does not block, as in Redis.
                run(shared, id, keyspace, name, args, replies, false);
            });
            replies.push(reply);
        }
        "QUIT" => {
            replies.push(ok());
            return After::Close;
        }
        "RESET" => {
            session.reset(&mut keyspace, id);
            return run(shared, id, &mut keyspace, &name, args, replies, true);
        }
        _ if session.in_multi() => replies.push(session.queue(&name, args)),
        _ => return run(shared, id, &mut keyspace, &name, args, replies, true),
    }
    After::Continue
}

fn allowed_when_subscribed(name: &str) -> bool {
    matches!(
        name,
        "SUBSCRIBE" | "PSUBSCRIBE" | "UNSUBSCRIBE" | "PUNSUBSCRIBE" | "PING" | "QUIT" | "RESET"
    )
}

/// Redis's error for an unknown command, which quotes the name as it was sent.
fn unknown_command(name: &str, args: &[Bytes]) -> BytesFrame {
    let mut preview = String::new();
    for arg in args.iter().take(3) {
        preview.push('\'');
        preview.push_str(&String::from_utf8_lossy(arg));
        preview.push_str("' ");
    }
    error(format!(
        "ERR unknown command '{name}', with args beginning with: {preview}"
    ))
}

/// Runs a command that passed the queue-time checks (now, or queued in a transaction: then
/// `may_block` is false, and a blocking read that finds nothing answers nil at once).
fn run(
    shared: &Shared,
    id: u64,
    keyspace: &mut Keyspace,
    name: &str,
    args: &[Bytes],
    replies: &mut Vec<BytesFrame>,
    may_block: bool,
) -> After {
    let subscribed = shared
        .clients()
        .get(&id)
        .is_some_and(|c| c.subscription_count() > 0);
    match name {
        "PING" => match args {
            [] if subscribed => replies.push(BytesFrame::Array(vec![bulk("pong"), bulk("")])),
            [] => replies.push(simple("PONG")),
            [message] if subscribed => {
                replies.push(BytesFrame::Array(vec![bulk("pong"), bulk(message.clone())]));
            }
            [message] => replies.push(bulk(message.clone())),
            _ => replies.push(wrong_arity(name)),
        },
        "ECHO" => match args {
            [message] => replies.push(bulk(message.clone())),
            _ => replies.push(wrong_arity(name)),
        },
        "SELECT" => match args {
            // Every database shares the one keyspace.
            [db] => match parse_int(db) {
                Some(0..=15) => replies.push(ok()),
                Some(_) => replies.push(error("ERR DB index is out of range")),
                None => replies.push(error("ERR value is not an integer or out of range")),
            },
            _ => replies.push(wrong_arity(name)),
        },
        "AUTH" => match args {
            [_] | [_, _] => replies.push(ok()),
            _ => replies.push(wrong_arity(name)),
        },
        "CLIENT" => {
            let sub = args
                .first()
                .map(|s| String::from_utf8_lossy(s).to_ascii_uppercase());
            match sub.as_deref() {
                Some("SETINFO") if args.len() == 3 => replies.push(ok()),
                Some("SETNAME") if args.len() == 2 => replies.push(ok()),
                Some("ID") if args.len() == 1 => {
                    replies.push(BytesFrame::Integer(i64::try_from(id).unwrap_or(i64::MAX)));
                }
                Some("GETNAME") if args.len() == 1 => replies.push(BytesFrame::Null),
                Some("SETINFO" | "SETNAME" | "ID" | "GETNAME") => {
                    replies.push(error("ERR wrong number of arguments for 'client' command"))
                }
                Some(other) => replies.push(error(format!(
                    "ERR unknown subcommand '{other}'. Try CLIENT HELP."
                ))),
                None => replies.push(wrong_arity(name)),
            }
        }
        "HELLO" => {
            let version = args
                .first()
                .map(|v| String::from_utf8_lossy(v).into_owned());
            if version.as_deref().is_some_and(|v| v != "2") {
                replies.push(error("NOPROTO this server (MockRedis) speaks RESP2 only"));
            } else {
                replies.push(BytesFrame::Array(vec![
                    bulk("server"),
                    bulk("redis"),
                    bulk("version"),
                    bulk("7.0.0"),
                    bulk("proto"),
                    BytesFrame::Integer(2),
                    bulk("id"),
                    BytesFrame::Integer(i64::try_from(id).unwrap_or(i64::MAX)),
                    bulk("mode"),
                    bulk("standalone"),
                    bulk("role"),
                    bulk("master"),
                    bulk("modules"),
                    BytesFrame::Array(Vec::new()),
                ]));
            }
        }
        "SUBSCRIBE" | "PSUBSCRIBE" => {
            if args.is_empty() {
                replies.push(wrong_arity(name));
                return After::Continue;
            }
            let pattern = name == "PSUBSCRIBE";
            let mut clients = shared.clients();
            let Some(client) = clients.get_mut(&id) else {
                return After::Close;
            };
            for target in args {
                if pattern {
                    client.patterns.insert(target.clone());
                } else {
                    client.channels.insert(target.clone());
                }
                replies.push(BytesFrame::Array(vec![
                    bulk(name.to_ascii_lowercase()),
                    bulk(target.clone()),
                    BytesFrame::Integer(client.subscription_count()),
                ]));
            }
        }
        "UNSUBSCRIBE" | "PUNSUBSCRIBE" => {
            let pattern = name == "PUNSUBSCRIBE";
            let kind = bulk(name.to_ascii_lowercase());
            let mut clients = shared.clients();
            let Some(client) = clients.get_mut(&id) else {
                return After::Close;
            };
            let targets: Vec<Bytes> = if args.is_empty() {
                let set = if pattern {
                    &client.patterns
                } else {
                    &client.channels
                };
                set.iter().cloned().collect()
            } else {
                args.to_vec()
            };
            if targets.is_empty() {
                replies.push(BytesFrame::Array(vec![
                    kind.clone(),
                    BytesFrame::Null,
                    BytesFrame::Integer(client.subscription_count()),
                ]));
            }
            for target in targets {
                if pattern {
                    client.patterns.remove(&target);
                } else {
                    client.channels.remove(&target);
                }
                replies.push(BytesFrame::Array(vec![
                    kind.clone(),
                    bulk(target),
                    BytesFrame::Integer(client.subscription_count()),
                ]));
            }
        }
        "PUBLISH" => match args {
            [channel, message] => {
                let receivers = publish(shared, channel, message);
                replies.push(BytesFrame::Integer(receivers));
            }
            _ => replies.push(wrong_arity(name)),
        },
        "RESET" => {
            if let Some(client) = shared.clients().get_mut(&id) {
                client.channels.clear();
                client.patterns.clear();
            }
            replies.push(simple("RESET"));
        }
        "UNWATCH" => {
            keyspace.unwatch(id);
            replies.push(ok());
        }
        "XREAD" | "XREADGROUP" => match streams::read(keyspace, name, args) {
            Read::Reply(reply) => replies.push(reply),
            Read::Block(request, ms) if may_block => {
                return After::Block(Blocked::new(request, ms))
            }
            Read::Block(..) => replies.push(BytesFrame::Null),
        },
        "EVAL" | "EVALSHA" | "SCRIPT" => {
            replies.push(super::scripting::run(shared, keyspace, name, args));
        }
        _ => match super::data::run(keyspace, name, args) {
            Some(reply) => replies.push(reply),
            None => replies.push(unknown_command(name, args)),
        },
    }
    After::Continue
}
