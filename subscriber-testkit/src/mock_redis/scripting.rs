//! Scripts, emulated natively: `EVAL`, `EVALSHA` and `SCRIPT LOAD|EXISTS|FLUSH|KILL`.
//!
//! The mock has no Lua interpreter. A script is recognised by its first line, a tag naming the
//! script and its version (e.g. `-- switchboard:durable-publish:3`), and [`SCRIPTS`] maps each tag
//! to a Rust function doing what the Lua does, through [`ScriptRun::call`], the `redis.call` of
//! the emulation: same commands, in the same order, so that the keys, the replies, the published
//! messages and the errors are those of the real script. Any other script is refused (`ERR mock redis: unsupported script ...`), by
//! `EVAL` and by `SCRIPT LOAD` alike, and never enters the script cache (so `EVALSHA` answers
//! `NOSCRIPT` for it).
//!
//! A script runs under the command lock, as one command: no other client's command interleaves,
//! and its `PUBLISH`es reach the subscribers as any `PUBLISH`. The cache (SHA1 → body) is the
//! server's, as in Redis: `SCRIPT FLUSH` and a [`restart`](super::MockRedis::restart) empty it.

use bytes::Bytes;
use redis_protocol::resp2::types::BytesFrame;

use super::keyspace::Keyspace;
use super::pubsub::publish;
use super::resp::{bulk, error, int_arg, ok, wrong_arity};
use super::server::Shared;
use super::streams::sanitize;

/// What a script does, given its `KEYS` and `ARGV`: its reply, or the error that ended it.
type Emulation = fn(&mut ScriptRun<'_>, &[Bytes], &[Bytes]) -> Result<BytesFrame, BytesFrame>;

/// A script the mock runs natively.
struct NativeScript {
    /// The script's first line, exactly.
    tag: &'static str,
    run: Emulation,
}

/// The scripts the mock emulates, by the first line of their Lua source.
const SCRIPTS: &[NativeScript] = &[NativeScript {
    tag: super::script_durable_publish::TAG,
    run: super::script_durable_publish::run,
}];

/// Redis's error for a SHA1 not in the cache.
fn no_script() -> BytesFrame {
    error("NOSCRIPT No matching script. Please use EVAL.")
}

/// Runs `EVAL`, `EVALSHA` or `SCRIPT` (upper case).
pub(super) fn run(
    shared: &Shared,
    keyspace: &mut Keyspace,
    name: &str,
    args: &[Bytes],
) -> BytesFrame {
    let reply = match (name, args) {
        ("EVAL", [body, numkeys, rest @ ..]) => eval(shared, keyspace, body, numkeys, rest),
        ("EVALSHA", [sha, numkeys, rest @ ..]) => evalsha(shared, keyspace, sha, numkeys, rest),
        ("SCRIPT", [sub, rest @ ..]) => script(shared, sub, rest),
        _ => Err(wrong_arity(name)),
    };
    reply.unwrap_or_else(|e| e)
}

/// The native script whose source is `body`, or the mock's refusal.
fn recognise(body: &[u8]) -> Result<&'static NativeScript, BytesFrame> {
    let first_line = body.split(|b| *b == b'\n').next().unwrap_or_default();
    let first_line = first_line.strip_suffix(b"\r").unwrap_or(first_line);
    if let Some(script) = SCRIPTS.iter().find(|s| s.tag.as_bytes() == first_line) {
        return Ok(script);
    }
    let shown: String = String::from_utf8_lossy(first_line)
        .chars()
        .take(100)
        .collect();
    let known: Vec<&str> = SCRIPTS.iter().map(|s| s.tag).collect();
    Err(error(sanitize(&format!(
        "ERR mock redis: unsupported script (first line '{shown}'): the mock cannot run arbitrary Lua, only the scripts it emulates natively, whose first line is one of: {}",
        known.join(", ")
    ))))
}

/// The SHA1 of a script, in lower-case hex, as Redis names it.
fn sha1_hex(body: &[u8]) -> String {
    sha1_smol::Sha1::from(body).digest().to_string()
}

/// Splits `numkeys key [key ...] arg [arg ...]` into the keys and the arguments.
fn split_keys<'a>(
    numkeys: &[u8],
    rest: &'a [Bytes],
) -> Result<(&'a [Bytes], &'a [Bytes]), BytesFrame> {
    let numkeys = int_arg(numkeys)?;
    let numkeys =
        usize::try_from(numkeys).map_err(|_| error("ERR Number of keys can't be negative"))?;
    if numkeys > rest.len() {
        return Err(error(
            "ERR Number of keys can't be greater than number of args",
        ));
    }
    Ok(rest.split_at(numkeys))
}

/// `EVAL body numkeys key... arg...`: the script also enters the cache.
fn eval(
    shared: &Shared,
    keyspace: &mut Keyspace,
    body: &Bytes,
    numkeys: &[u8],
    rest: &[Bytes],
) -> Result<BytesFrame, BytesFrame> {
    let (keys, argv) = split_keys(numkeys, rest)?;
    let script = recognise(body)?;
    let sha = sha1_hex(body);
    shared.scripts().insert(sha.clone(), body.clone());
    execute(shared, keyspace, script, &sha, keys, argv)
}

/// `EVALSHA sha numkeys key... arg...`.
fn evalsha(
    shared: &Shared,
    keyspace: &mut Keyspace,
    sha: &[u8],
    numkeys: &[u8],
    rest: &[Bytes],
) -> Result<BytesFrame, BytesFrame> {
    if sha.len() != 40 {
        return Err(no_script());
    }
    let (keys, argv) = split_keys(numkeys, rest)?;
    let sha = String::from_utf8_lossy(sha).to_ascii_lowercase();
    let body = shared.scripts().get(&sha).cloned().ok_or_else(no_script)?;
    let script = recognise(&body)?;
    execute(shared, keyspace, script, &sha, keys, argv)
}

fn execute(
    shared: &Shared,
    keyspace: &mut Keyspace,
    script: &NativeScript,
    sha: &str,
    keys: &[Bytes],
    argv: &[Bytes],
) -> Result<BytesFrame, BytesFrame> {
    let mut run = ScriptRun {
        shared,
        keyspace,
        sha,
    };
    (script.run)(&mut run, keys, argv)
}

/// `SCRIPT LOAD body`, `SCRIPT EXISTS sha [sha ...]`, `SCRIPT FLUSH [ASYNC|SYNC]`, `SCRIPT KILL`.
fn script(shared: &Shared, sub: &[u8], args: &[Bytes]) -> Result<BytesFrame, BytesFrame> {
    match (sub.to_ascii_uppercase().as_slice(), args) {
        (b"LOAD", [body]) => {
            recognise(body)?;
            let sha = sha1_hex(body);
            shared.scripts().insert(sha.clone(), body.clone());
            Ok(bulk(sha))
        }
        (b"EXISTS", shas) => {
            let scripts = shared.scripts();
            Ok(BytesFrame::Array(
                shas.iter()
                    .map(|sha| {
                        let sha = String::from_utf8_lossy(sha).to_ascii_lowercase();
                        BytesFrame::Integer(i64::from(scripts.contains_key(&sha)))
                    })
                    .collect(),
            ))
        }
        (b"FLUSH", mode) => {
            let valid = match mode {
                [] => true,
                [mode] => mode.eq_ignore_ascii_case(b"SYNC") || mode.eq_ignore_ascii_case(b"ASYNC"),
                _ => false,
            };
            if !valid {
                return Err(error("ERR SCRIPT FLUSH only support SYNC|ASYNC option"));
            }
            shared.scripts().clear();
            Ok(ok())
        }
        (b"KILL", []) => Err(error("NOTBUSY No scripts in execution right now.")),
        _ => {
            let sub: String = String::from_utf8_lossy(sub).chars().take(128).collect();
            Err(error(sanitize(&format!(
                "ERR unknown subcommand or wrong number of arguments for '{sub}'. Try SCRIPT HELP."
            ))))
        }
    }
}

/// A running script: what its emulation calls Redis through.
pub(super) struct ScriptRun<'a> {
    shared: &'a Shared,
    keyspace: &'a mut Keyspace,
    /// The script's SHA1, which Redis quotes in the script's errors.
    sha: &'a str,
}

/// An argument of `redis.call`/`redis.pcall`: `None` is a Lua `nil` (e.g. a `KEYS[i]` or
/// `ARGV[i]` the caller did not pass).
pub(super) type Arg<'a> = Option<&'a [u8]>;

impl ScriptRun<'_> {
    /// `redis.call(...)` on line `line` of the script: the reply, or the error that ends the
    /// script, as Redis words it (`<error> script: <sha>, on @user_script:<line>.`).
    pub(super) fn call(&mut self, line: u32, args: &[Arg<'_>]) -> Result<BytesFrame, BytesFrame> {
        match self.command(args) {
            BytesFrame::Error(message) => Err(self.script_error(line, &message)),
            reply => Ok(reply),
        }
    }

    /// `message`, an error raised on line `line`, as the script's reply.
    fn script_error(&self, line: u32, message: &str) -> BytesFrame {
        error(format!(
            "{message} script: {}, on @user_script:{line}.",
            self.sha
        ))
    }

    /// Runs one command for the script: the reply, an error reply included (what `redis.pcall`
    /// would return).
    fn command(&mut self, args: &[Arg<'_>]) -> BytesFrame {
        let Some(args) = args
            .iter()
            .map(|arg| arg.map(Bytes::copy_from_slice))
            .collect::<Option<Vec<Bytes>>>()
        else {
            return error("ERR Lua redis lib command arguments must be strings or integers");
        };
        let Some((name, args)) = args.split_first() else {
            return error("ERR Please specify at least one argument for this redis lib call");
        };
        let name = String::from_utf8_lossy(name).to_ascii_uppercase();
        match (name.as_str(), args) {
            ("PUBLISH", [channel, message]) => {
                BytesFrame::Integer(publish(self.shared, channel, message))
            }
            _ => super::data::run(self.keyspace, &name, args).unwrap_or_else(|| {
                error("ERR mock redis: this command cannot be called from a script")
            }),
        }
    }
}
