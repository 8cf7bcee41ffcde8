//! Running one command: the connection commands, subscribed-mode rules, `SUBSCRIBE` and friends.

use bytes::Bytes;
use redis_protocol::resp2::types::BytesFrame;

use super::pubsub::publish;
use super::resp::{bulk, error, ok, wrong_arity};
use super::server::Shared;

/// What to do after a command.
pub(super) enum After {
    Continue,
    Close,
}
/// Runs one command, pushing its replies.
pub(super) fn execute(
    shared: &Shared,
    id: u64,
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
    let Some((name, args)) = args.split_first() else {
        // An empty array is ignored, as Redis does.
        return After::Continue;
    };
    let name = String::from_utf8_lossy(name).to_ascii_uppercase();

    let subscribed = shared
        .clients()
        .get(&id)
        .is_some_and(|c| c.subscription_count() > 0);
    let allowed_when_subscribed = matches!(
        name.as_str(),
        "SUBSCRIBE" | "PSUBSCRIBE" | "UNSUBSCRIBE" | "PUNSUBSCRIBE" | "PING" | "QUIT" | "RESET"
    );
    if subscribed && !allowed_when_subscribed {
        replies.push(error(format!(
            "ERR Can't execute '{}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context",
            name.to_ascii_lowercase()
        )));
        return After::Continue;
    }

    match name.as_str() {
        "PING" => match args {
            [] if subscribed => replies.push(BytesFrame::Array(vec![bulk("pong"), bulk("")])),
            [] => replies.push(BytesFrame::SimpleString(Bytes::from_static(b"PONG"))),
            [message] if subscribed => {
                replies.push(BytesFrame::Array(vec![bulk("pong"), bulk(message.clone())]));
            }
            [message] => replies.push(bulk(message.clone())),
            _ => replies.push(wrong_arity(&name)),
        },
        "ECHO" => match args {
            [message] => replies.push(bulk(message.clone())),
            _ => replies.push(wrong_arity(&name)),
        },
        "SELECT" => match args {
            [db] => match std::str::from_utf8(db)
                .ok()
                .and_then(|d| d.parse::<i64>().ok())
            {
                Some(0..=15) => replies.push(ok()),
                Some(_) => replies.push(error("ERR DB index is out of range")),
                None => replies.push(error("ERR value is not an integer or out of range")),
            },
            _ => replies.push(wrong_arity(&name)),
        },
        "AUTH" => match args {
            [_] | [_, _] => replies.push(ok()),
            _ => replies.push(wrong_arity(&name)),
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
                None => replies.push(wrong_arity(&name)),
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
                replies.push(wrong_arity(&name));
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
            _ => replies.push(wrong_arity(&name)),
        },
        "RESET" => {
            if let Some(client) = shared.clients().get_mut(&id) {
                client.channels.clear();
                client.patterns.clear();
            }
            replies.push(BytesFrame::SimpleString(Bytes::from_static(b"RESET")));
        }
        "QUIT" => {
            replies.push(ok());
            return After::Close;
        }
        _ => {
            let mut preview = String::new();
            for arg in args.iter().take(3) {
                preview.push('\'');
                preview.push_str(&String::from_utf8_lossy(arg));
                preview.push_str("' ");
            }
            replies.push(error(format!(
                "ERR unknown command '{}', with args beginning with: {preview}",
                name.to_ascii_lowercase()
            )));
        }
    }
    After::Continue
}
