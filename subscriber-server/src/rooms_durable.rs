//! Durable rooms: a room's cluster-wide broadcasts
//! ([`broadcast_to_room_everywhere`](crate::WebSocket::broadcast_to_room_everywhere)) go through
//! the durable channel `switchboard.room:<room>`, so each frame has a position (epoch, offset)
//! and the room keeps a history. Every frame a member gets carries
//! `"stream": {"room", "epoch", "offset"}`.
//!
//! A client that comes back joins again with the last position it saw
//! (`{"type": "system", "action": "joinRoom", "data": {"roomName": "r", "since": {"epoch": "…",
//! "offset": 41}}}`) and first gets every frame it missed, in order, then the live ones; the
//! reply says `recovered: true`. All or nothing: when the history no longer covers the gap (another
//! epoch, or trimmed) nothing is replayed and the reply says `recovered: false` with the room's
//! current position, for the client to reload what it shows.
//!
//! Ordering: the client's live frames of the room wait in its cursor's `held` buffer while the
//! missed ones are read and sent; then the held ones newer than the last sent follow, under the
//! cursor's lock, so no frame is sent twice or out of order. The buffer stays until the join's
//! reply is queued ([`resume_live`](WebSocket::resume_live)): a live frame sent before the reply
//! would be newer than the position the reply gives.

use std::sync::Arc;

use serde_json::{json, Value};
use subscriber_runtime::Context;

use crate::client::Conn;
use crate::frame::{ClientId, Frame};
use crate::WebSocket;

/// The durable channel of a room is this prefix and the room's name.
pub(crate) const CHANNEL_PREFIX: &str = "switchboard.room:";
/// Live frames held for a client that is catching up on a room, at most (then it is closed: it
/// could not keep up anyway).
const MAX_HELD: usize = 10_000;
/// Entries read from the room's history at a time.
const READ_BATCH: usize = 512;

/// Where a client that rejoined a durable room with a position is in it.
#[derive(Debug, Default)]
pub(crate) struct RoomCursor {
    /// While it catches up, until the join's reply is queued: the live frames that arrive
    /// meanwhile (epoch, offset, frame).
    held: Option<Vec<(Arc<str>, u64, Frame)>>,
    /// The last frame sent to it: a live frame at or before it (already sent from the history)
    /// is not sent again.
    epoch: Option<Arc<str>>,
    offset: u64,
}

impl RoomCursor {
    /// A cursor that holds live frames until the catch-up is done.
    pub(crate) fn holding() -> Self {
        Self {
            held: Some(Vec::new()),
            ..Self::default()
        }
    }
}

/// How a join caught up on a durable room.
#[derive(Debug)]
pub(crate) struct Recovery {
    /// Every missed frame was sent (the client's view is whole).
    pub(crate) recovered: bool,
    /// The room's epoch now (`None`: no history yet).
    pub(crate) epoch: Option<Arc<str>>,
    /// The offset of the last frame sent to the client (or the room's newest, when nothing was
    /// replayed).
    pub(crate) offset: u64,
}

/// A frame of a durable room: the published message with its place.
fn room_frame(room: &str, payload: &Value, epoch: &str, offset: u64) -> Option<Frame> {
    let mut message = payload.get("message")?.clone();
    if let Value::Object(map) = &mut message {
        map.insert(
            "stream".to_owned(),
            json!({"room": room, "epoch": epoch, "offset": offset}),
        );
    }
    Frame::json(&message).ok()
}

fn excluded(payload: &Value) -> Option<ClientId> {
    payload
        .get("excludeClientId")
        .and_then(Value::as_str)
        .map(ClientId::from_wire)
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl WebSocket {
    /// Whether `room` is durable (see [`ServerBuilderExt::durable_rooms`](crate::ServerBuilderExt::durable_rooms)).
    pub fn is_durable_room(&self, room: &str) -> bool {
        self.inner
            .durable_rooms
            .iter()
            .any(|glob| subscriber_patterns::glob::matches(glob, room))
    }

    /// A durable room's frame from the broker: to this worker's members, or into the buffer of
    /// those catching up on the room.
    pub(crate) fn on_room_stream(&self, cx: &Context) {
        let Some(room) = cx.channel().strip_prefix(CHANNEL_PREFIX) else {
            return;
        };
        let Some(at) = cx.stream_position() else {
            return;
        };
        let payload = cx.message();
        let Some(frame) = room_frame(room, payload, &at.epoch, at.offset) else {
            return;
        };
        let excluded = excluded(payload);
        // Sent under the state's read lock, as `room_send` does: a client's leave (which takes
        // the write lock) waits for this frame, so that none comes after the leave's reply.
        let state = self.read();
        let Some(members) = state.rooms.get(room) else {
            return;
        };
        let members = members
            .iter()
            .filter(|(id, _)| Some(*id) != excluded.as_ref())
            .filter_map(|(_, conn)| conn.as_deref());
        for conn in members {
            // Checked and sent under the client's cursors lock: a rejoin's catch-up, which resets
            // the cursor under it, cannot send this frame from the history before this live copy
            // goes (the client would get it twice, out of order).
            let mut cursors = lock(&conn.durable_rooms);
            if let Some(cursor) = cursors.get_mut(room) {
                if let Some(held) = &mut cursor.held {
                    if held.len() >= MAX_HELD {
                        // It cannot keep up: closed (1013), rather than told it recovered with
                        // a hole.
                        drop(cursors);
                        if conn.close(crate::client::DisconnectReason::SlowConsumer) {
                            self.count_slow_consumer(
                                conn,
                                "too many frames held while it caught up on a room",
                            );
                        }
                        continue;
                    }
                    held.push((at.epoch.clone(), at.offset, frame.clone()));
                    continue;
                }
                if cursor.epoch.as_deref() == Some(&*at.epoch) && at.offset <= cursor.offset {
                    // Sent already, from the history.
                    continue;
                }
                cursor.epoch = Some(at.epoch.clone());
                cursor.offset = at.offset;
            }
            self.deliver(conn, &frame);
        }
    }

    /// The room's position now, for a join without `since`.
    pub(crate) async fn room_position(&self, room: &str) -> Recovery {
        let channel = format!("{CHANNEL_PREFIX}{room}");
        match self
            .inner
            .publisher
            .read_stream(&channel, u64::MAX, 1)
            .await
        {
            Ok(read) => Recovery {
                recovered: false,
                epoch: read.epoch,
                offset: read.last,
            },
            Err(error) => {
                tracing::warn!(room, %error, "could not read a durable room's position");
                Recovery {
                    recovered: false,
                    epoch: None,
                    offset: 0,
                }
            }
        }
    }

    /// Sends `conn` what it missed in `room` since `(epoch, offset)`, then the live frames held
    /// meanwhile. The client joined the room with its buffer set, just before.
    pub(crate) async fn catch_up(
        &self,
        conn: &Conn,
        room: &str,
        epoch: &str,
        since: u64,
    ) -> Recovery {
        let channel = format!("{CHANNEL_PREFIX}{room}");
        let own = &conn.client.id;
        let mut recovery = Recovery {
            recovered: true,
            epoch: Some(Arc::from(epoch)),
            offset: since,
        };
        loop {
            let read = match self
                .inner
                .publisher
                .read_stream(&channel, recovery.offset, READ_BATCH)
                .await
            {
                Ok(read) => read,
                Err(error) => {
                    tracing::warn!(room, %error, "could not read a durable room's history");
                    recovery.recovered = false;
                    break;
                }
            };
            let whole = read.epoch.as_deref() == Some(epoch)
                && match read.entries.first() {
                    Some((first, _)) => *first == recovery.offset.saturating_add(1),
                    None => read.last == recovery.offset,
                };
            if !whole {
                // All or nothing: the client reloads from the room's current position.
                recovery = Recovery {
                    recovered: false,
                    epoch: read.epoch,
                    offset: read.last,
                };
                break;
            }
            let count = read.entries.len();
            for (offset, payload) in read.entries {
                recovery.offset = offset;
                let Ok(payload) = serde_json::from_slice::<Value>(&payload) else {
                    continue;
                };
                if excluded(&payload).as_ref() == Some(own) {
                    continue;
                }
                if let Some(frame) = room_frame(room, &payload, epoch, offset) {
                    self.deliver(conn, &frame);
                }
            }
            if count < READ_BATCH {
                break;
            }
        }
        // The live frames held meanwhile, newer than the last sent, in order. The cursor still
        // holds the next ones, until the join's reply is queued (`resume_live`).
        let mut cursors = lock(&conn.durable_rooms);
        let cursor = cursors
            .entry(room.to_owned())
            .or_insert_with(RoomCursor::holding);
        let held = cursor.held.as_mut().map(std::mem::take).unwrap_or_default();
        self.send_held(conn, held, &mut recovery.epoch, &mut recovery.offset);
        cursor.epoch.clone_from(&recovery.epoch);
        cursor.offset = recovery.offset;
        recovery
    }

    /// After the reply to a join that [caught up](Self::catch_up): sends the live frames held
    /// since, newer than the position the reply gave, in order; then the room's live frames go
    /// to the client as they come.
    pub(crate) fn resume_live(&self, conn: &Conn, room: &str) {
        let mut cursors = lock(&conn.durable_rooms);
        let Some(cursor) = cursors.get_mut(room) else {
            return;
        };
        let held = cursor.held.take().unwrap_or_default();
        self.send_held(conn, held, &mut cursor.epoch, &mut cursor.offset);
    }

    /// Sends the `held` frames newer than `(epoch, offset)`, in order, advancing it to the last
    /// sent. Under the client's cursors lock.
    fn send_held(
        &self,
        conn: &Conn,
        mut held: Vec<(Arc<str>, u64, Frame)>,
        epoch: &mut Option<Arc<str>>,
        offset: &mut u64,
    ) {
        held.sort_by_key(|(_, offset, _)| *offset);
        for (frame_epoch, frame_offset, frame) in held {
            if epoch.as_deref() != Some(&*frame_epoch) || frame_offset > *offset {
                *epoch = Some(frame_epoch);
                *offset = frame_offset;
                self.deliver(conn, &frame);
            }
        }
    }
}
