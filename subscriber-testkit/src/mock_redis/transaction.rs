//! Transactions: `MULTI`, `EXEC`, `DISCARD`, `WATCH`, `UNWATCH`, as Redis runs them.
//!
//! After `MULTI`, every command but `EXEC`, `DISCARD`, `MULTI`, `WATCH`, `QUIT` and `RESET` is
//! queued (answered `+QUEUED`). A command rejected at queue time (unknown, wrong arity, not allowed
//! while subscribed) answers its error and makes `EXEC` fail with `EXECABORT`; errors found when a
//! command runs (`WRONGTYPE`, a syntax error in its options...) are elements of `EXEC`'s array and
//! the other commands still run. `EXEC` runs the queue under the server-wide command lock, so no
//! other client's command interleaves.
//!
//! `WATCH` is optimistic locking as in Redis: `EXEC` answers nil (and runs nothing) when a watched
//! key was modified, deleted, flushed or expired since it was watched.

use bytes::Bytes;
use redis_protocol::resp2::types::BytesFrame;

use super::keyspace::Keyspace;
use super::resp::{error, ok, simple};

/// The transaction state of one connection.
#[derive(Debug, Default)]
pub(super) struct Session {
    multi: Option<Multi>,
}

/// An open `MULTI`: the queued commands, and whether one was rejected.
#[derive(Debug, Default)]
struct Multi {
    queued: Vec<(String, Vec<Bytes>)>,
    failed: bool,
}

impl Session {
    pub(super) fn in_multi(&self) -> bool {
        self.multi.is_some()
    }

    /// A command was rejected at queue time: the open transaction (if any) will not run.
    pub(super) fn reject(&mut self) {
        if let Some(multi) = &mut self.multi {
            multi.failed = true;
        }
    }

    /// Queues a command of the open transaction.
    pub(super) fn queue(&mut self, name: &str, args: &[Bytes]) -> BytesFrame {
        if let Some(multi) = &mut self.multi {
            multi.queued.push((name.to_owned(), args.to_vec()));
        }
        simple("QUEUED")
    }

    pub(super) fn multi(&mut self) -> BytesFrame {
        if self.multi.is_some() {
            return error("ERR MULTI calls can not be nested");
        }
        self.multi = Some(Multi::default());
        ok()
    }

    pub(super) fn discard(&mut self, keyspace: &mut Keyspace, id: u64) -> BytesFrame {
        if self.multi.take().is_none() {
            return error("ERR DISCARD without MULTI");
        }
        keyspace.unwatch(id);
        ok()
    }

    pub(super) fn watch(&self, keyspace: &mut Keyspace, id: u64, keys: &[Bytes]) -> BytesFrame {
        if self.multi.is_some() {
            return error("ERR WATCH inside MULTI is not allowed");
        }
        for key in keys {
            keyspace.watch(id, key);
        }
        ok()
    }

    /// `RESET`: drops the open transaction and the watched keys.
    pub(super) fn reset(&mut self, keyspace: &mut Keyspace, id: u64) {
        self.multi = None;
        keyspace.unwatch(id);
    }

    /// `EXEC`: runs every queued command with `run`, which pushes the command's reply, and
    /// answers the array of the replies.
    ///
    /// Redis answers an `EXEC` aborted by `WATCH` with a null array (`*-1`); the mock's RESP2
    /// encoder writes the null bulk string (`$-1`) instead, which clients read as the same nil.
    pub(super) fn exec(
        &mut self,
        keyspace: &mut Keyspace,
        id: u64,
        mut run: impl FnMut(&mut Keyspace, &str, &[Bytes], &mut Vec<BytesFrame>),
    ) -> BytesFrame {
        let Some(multi) = self.multi.take() else {
            return error("ERR EXEC without MULTI");
        };
        let watch_broken = keyspace.watch_broken(id);
        keyspace.unwatch(id);
        if multi.failed {
            return error("EXECABORT Transaction discarded because of previous errors.");
        }
        if watch_broken {
            return BytesFrame::Null;
        }
        let mut replies = Vec::with_capacity(multi.queued.len());
        for (name, args) in &multi.queued {
            run(keyspace, name, args, &mut replies);
        }
        BytesFrame::Array(replies)
    }
}
