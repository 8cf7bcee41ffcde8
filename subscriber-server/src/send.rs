//! The sends of the [`WebSocket`] handle: to this worker's clients (each frame serialized once,
//! the same bytes queued for every recipient) and across the cluster through the broker; room
//! joins and leaves.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use serde::Serialize;
use serde_json::{json, Value};
use subscriber_runtime::{event, PublishError};

use crate::client::{Client, Conn, DisconnectReason, Pushed};
use crate::frame::{error_frame, ClientId, Frame};
use crate::hooks::guarded;
use crate::rooms::{room_user, RoomError};
use crate::stats::Counters;
use crate::WebSocket;

impl WebSocket {
    /// Queues a frame for one local connection.
    pub(crate) fn deliver(&self, conn: &Conn, frame: &Frame) -> bool {
        match conn.push(frame) {
            Pushed::Queued => true,
            Pushed::Closed => false,
            Pushed::Slow => {
                self.count_slow_consumer(conn, "over its send budget");
                false
            }
        }
    }

    /// Counts and logs (once: a client closes once) a client cut as a slow consumer.
    pub(crate) fn count_slow_consumer(&self, conn: &Conn, why: &'static str) {
        Counters::inc(&self.inner.counters.slow_consumer_disconnects);
        self.inner.counters.metrics.slow_consumers.increment(1);
        tracing::warn!(
            client_id = %conn.client.id,
            worker_id = %self.inner.worker_id,
            max_bytes = self.inner.config.max_queued_bytes,
            stall_timeout = ?self.inner.config.stall_timeout,
            why,
            "slow consumer: disconnecting the client (1013)"
        );
    }

    /// Sends a frame to every client of this worker; returns how many got it.
    pub fn broadcast_to_all_clients(&self, frame: impl Into<Frame>) -> usize {
        let frame = frame.into();
        let state = self.read();
        state
            .local
            .values()
            .filter(|conn| self.deliver(conn, &frame))
            .count()
    }

    /// Sends a frame to every client of this worker but one (typically the sender).
    pub fn broadcast_to_all_clients_except(
        &self,
        frame: impl Into<Frame>,
        excluded: &ClientId,
    ) -> usize {
        let frame = frame.into();
        let state = self.read();
        state
            .local
            .iter()
            .filter(|(id, conn)| *id != excluded && self.deliver(conn, &frame))
            .count()
    }

    /// Sends a frame to the clients of this worker for which `predicate` is true.
    ///
    /// ```
    /// # use switchboard::{Outgoing, WebSocket};
    /// # fn f(ws: WebSocket) {
    /// let admins = ws.broadcast_to_all_clients_where(Outgoing::new("admin", "notice", "hi"), |client| {
    ///     client.claims().is_some_and(|c| c["role"] == "admin")
    /// });
    /// # let _ = admins;
    /// # }
    /// ```
    ///
    /// The predicate runs with no lock held: it may call back into the handle (read the cluster's
    /// clients, set metadata, send). It sees the clients connected when the call began.
    pub fn broadcast_to_all_clients_where(
        &self,
        frame: impl Into<Frame>,
        predicate: impl Fn(&Client) -> bool,
    ) -> usize {
        let frame = frame.into();
        // The connections are handles: copied out under the lock, which is released before any
        // user code runs.
        let conns: Vec<Arc<Conn>> = self.read().local.values().cloned().collect();
        conns
            .iter()
            .filter(|conn| predicate(&conn.client) && self.deliver(conn, &frame))
            .count()
    }

    /// Sends a frame to the members of a room connected to this worker.
    pub fn broadcast_to_room(&self, room: &str, frame: impl Into<Frame>) -> usize {
        self.room_send(room, &frame.into(), None)
    }

    /// Sends a frame to the members of a room connected to this worker, but one.
    pub fn broadcast_to_room_except(
        &self,
        room: &str,
        frame: impl Into<Frame>,
        excluded: &ClientId,
    ) -> usize {
        self.room_send(room, &frame.into(), Some(excluded))
    }

    pub(crate) fn room_send(
        &self,
        room: &str,
        frame: &Frame,
        excluded: Option<&ClientId>,
    ) -> usize {
        let state = self.read();
        let Some(members) = state.rooms.get(room) else {
            tracing::trace!(room, "broadcast to a room with no members");
            return 0;
        };
        members
            .iter()
            .filter_map(|(id, conn)| conn.as_ref().filter(|_| Some(id) != excluded))
            .filter(|conn| self.deliver(conn, frame))
            .count()
    }

    /// Sends a frame to the clients of this worker authenticated as one of `users`. Ids compare
    /// as text, so `42` and `"42"` are the same user.
    pub fn broadcast_to_users<I>(&self, users: I, frame: impl Into<Frame>) -> usize
    where
        I: IntoIterator,
        I::Item: fmt::Display,
    {
        let wanted: HashSet<String> = users.into_iter().map(|u| u.to_string()).collect();
        if wanted.is_empty() {
            return 0;
        }
        let frame = frame.into();
        let state = self.read();
        wanted
            .iter()
            .flat_map(|user| state.clients_of(user))
            .filter_map(|id| state.local.get(id))
            .filter(|conn| self.deliver(conn, &frame))
            .count()
    }

    /// Sends a frame to one client of this worker; false when it is not connected here (or is
    /// being disconnected).
    pub fn broadcast_to_client(&self, client: &ClientId, frame: impl Into<Frame>) -> bool {
        // Converted before the lock is taken: `Into<Frame>` may be the application's code.
        let frame = frame.into();
        let state = self.read();
        state
            .local
            .get(client)
            .is_some_and(|conn| self.deliver(conn, &frame))
    }

    /// Sends the error frame `{"type":"error","action":"message","data":{"error":...}}` to one
    /// client of this worker.
    pub fn send_error(&self, client: &ClientId, error: &str) -> bool {
        let conn = self.read().local.get(client).cloned();
        conn.is_some_and(|conn| self.send_error_to(&conn, error))
    }

    pub(crate) fn send_error_to(&self, conn: &Conn, error: &str) -> bool {
        Counters::inc(&self.inner.counters.client_errors);
        self.inner.counters.metrics.client_errors.increment(1);
        tracing::debug!(client_id = %conn.client.id, %error, "error frame to client");
        for hook in &self.inner.hooks.error {
            guarded("on_error", &conn.client.id, || hook(&conn.client, error));
        }
        self.deliver(conn, &error_frame(error))
    }

    /// Publishes `message` (a JSON object, usually an [`Outgoing`](crate::Outgoing)) on `sendMessageToAll`: every
    /// worker of the cluster, this one included, sends it to all of its clients (the bytes as
    /// published, without `workerId`/`includeSender`). Like every cluster send, it relies on the
    /// framework channels being subscribed (the default).
    ///
    /// Delivery is at-most-once, as Redis pub/sub: a worker disconnected from the broker at that
    /// moment does not deliver it.
    ///
    /// # Errors
    /// What [`Publisher::publish`](subscriber_runtime::Publisher::publish) returns (e.g. the message is not a JSON object).
    pub async fn send_message_to_all(&self, message: impl Serialize) -> Result<(), PublishError> {
        self.inner
            .publisher
            .publish_including_sender(event::SEND_MESSAGE_TO_ALL, &message)
            .await
    }

    /// Publishes `message` on `custom`, for the subscriber handlers of every worker, this one
    /// included (clients get nothing unless a handler passes it on).
    ///
    /// # Errors
    /// As [`send_message_to_all`](Self::send_message_to_all).
    pub async fn send_custom_message(&self, message: impl Serialize) -> Result<(), PublishError> {
        self.inner
            .publisher
            .publish_including_sender(event::CUSTOM, &message)
            .await
    }

    /// Sends `message` to the members of `room` on every worker of the cluster (through the
    /// broker, on `sendMessageToRoom`).
    ///
    /// # Errors
    /// As [`send_message_to_all`](Self::send_message_to_all).
    pub async fn broadcast_to_room_everywhere(
        &self,
        room: &str,
        message: impl Serialize,
    ) -> Result<(), PublishError> {
        self.room_everywhere(room, message, None).await
    }

    /// As [`broadcast_to_room_everywhere`](Self::broadcast_to_room_everywhere), but not to
    /// `excluded` (typically the sender).
    ///
    /// # Errors
    /// As [`send_message_to_all`](Self::send_message_to_all).
    pub async fn broadcast_to_room_everywhere_except(
        &self,
        room: &str,
        message: impl Serialize,
        excluded: &ClientId,
    ) -> Result<(), PublishError> {
        self.room_everywhere(room, message, Some(excluded)).await
    }

    async fn room_everywhere(
        &self,
        room: &str,
        message: impl Serialize,
        excluded: Option<&ClientId>,
    ) -> Result<(), PublishError> {
        #[derive(Serialize)]
        struct ToRoom<'a, T> {
            #[serde(rename = "roomName")]
            room_name: &'a str,
            message: T,
            #[serde(rename = "excludeClientId", skip_serializing_if = "Option::is_none")]
            exclude: Option<&'a ClientId>,
        }
        let to_room = ToRoom {
            room_name: room,
            message,
            exclude: excluded,
        };
        if self.is_durable_room(room) {
            // Through the room's durable channel: a position for each frame, and a history.
            let channel = format!("{}{room}", crate::rooms_durable::CHANNEL_PREFIX);
            return self
                .inner
                .publisher
                .publish_including_sender(&channel, &to_room)
                .await;
        }
        self.inner
            .publisher
            .publish_including_sender(event::SEND_MESSAGE_TO_ROOM, &to_room)
            .await
    }

    /// Adds a client of this worker to a room, and tells the other workers
    /// (`clientJoinedRoom`). Under [`RoomPolicy::Single`](crate::RoomPolicy::Single) the client first leaves its other rooms
    /// (`clientLeftRoom` for each). Returns false when it was already in the room.
    ///
    /// The other workers are told in the background (never waiting for the broker, so a join is
    /// as quick with Redis down), in the order this worker's clients joined and left.
    ///
    /// # Errors
    /// [`RoomError`] for an empty room name or a client not connected here. A failure to tell the
    /// other workers is logged, not returned: the join happened.
    pub async fn join_room(&self, client: &ClientId, room: &str) -> Result<bool, RoomError> {
        let user = {
            let state = self.read();
            let conn = state
                .local
                .get(client)
                .ok_or_else(|| RoomError::NotLocal(client.clone()))?;
            room_user(&conn.client, None)
        };
        self.join_with(client, room, user)
    }

    pub(crate) fn join_with(
        &self,
        client: &ClientId,
        room: &str,
        user: Value,
    ) -> Result<bool, RoomError> {
        if room.is_empty() {
            return Err(RoomError::EmptyName);
        }
        let change = {
            let mut state = self.write();
            if !state.local.contains_key(client) {
                return Err(RoomError::NotLocal(client.clone()));
            }
            state
                .join(client, room, self.inner.config.room_policy)
                .ok_or_else(|| RoomError::NotLocal(client.clone()))?
        };
        if change.joined || !change.left.is_empty() {
            self.inner.presence.touch(client);
        }
        for old in &change.left {
            tracing::debug!(client_id = %client, room = %old, "client left room (single-room policy)");
            self.announce(
                event::CLIENT_LEFT_ROOM,
                json!({"clientId": client, "room": &**old}),
            );
        }
        if change.joined {
            tracing::debug!(client_id = %client, room, worker_id = %self.inner.worker_id, "client joined room");
            self.announce(
                event::CLIENT_JOINED_ROOM,
                json!({"clientId": client, "user": user, "roomName": room}),
            );
        }
        Ok(change.joined)
    }

    /// Removes a client of this worker from a room and tells the other workers
    /// (`clientLeftRoom`). Returns false when it was not in the room. A room is deleted when its
    /// last member leaves.
    ///
    /// # Errors
    /// [`RoomError`] for an empty room name or a client not connected here.
    pub async fn leave_room(&self, client: &ClientId, room: &str) -> Result<bool, RoomError> {
        if room.is_empty() {
            return Err(RoomError::EmptyName);
        }
        let left = {
            let mut state = self.write();
            if !state.local.contains_key(client) {
                return Err(RoomError::NotLocal(client.clone()));
            }
            state.leave(client, room)
        };
        if left {
            self.inner.presence.touch(client);
            tracing::debug!(client_id = %client, room, worker_id = %self.inner.worker_id, "client left room");
            self.announce(
                event::CLIENT_LEFT_ROOM,
                json!({"clientId": client, "room": room}),
            );
        }
        Ok(left)
    }

    /// Sends a frame to one client wherever it is connected in the cluster: queued at once when
    /// it is connected here, otherwise published once on the channel of the worker it is
    /// connected to, which delivers it. Returns false when no worker lists the client.
    ///
    /// ```
    /// # use switchboard::{ClientId, Outgoing, WebSocket};
    /// # async fn f(ws: WebSocket, id: ClientId) -> Result<(), switchboard::PublishError> {
    /// let found = ws.send_to_client(&id, Outgoing::new("chat", "direct", "hi")).await?;
    /// # let _ = found;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// The publish failure, when the client is connected to another worker.
    pub async fn send_to_client(
        &self,
        client: &ClientId,
        frame: impl Into<Frame>,
    ) -> Result<bool, PublishError> {
        let frame = frame.into();
        let worker = {
            let state = self.read();
            match state.clients.get(client) {
                None => return Ok(false),
                Some(entry) => match &entry.local {
                    Some(conn) => return Ok(self.deliver(conn, &frame)),
                    None => entry.worker_id.clone(),
                },
            }
        };
        self.direct(&worker, vec![client.clone()], &frame).await?;
        Ok(true)
    }

    /// Sends a frame to every client of `user` in the cluster, each once: this worker's at once,
    /// the others' through one publish per worker that has some. Ids compare as text. Returns
    /// how many clients it was sent to.
    ///
    /// # Errors
    /// The first publish failure (the other workers are still sent to).
    pub async fn send_to_user(
        &self,
        user: impl fmt::Display,
        frame: impl Into<Frame>,
    ) -> Result<usize, PublishError> {
        let frame = frame.into();
        let user = user.to_string();
        let mut sent = 0;
        let mut remote: std::collections::BTreeMap<std::sync::Arc<str>, Vec<ClientId>> =
            std::collections::BTreeMap::new();
        {
            let state = self.read();
            for id in state.clients_of(&user) {
                let Some(entry) = state.clients.get(id) else {
                    continue;
                };
                match &entry.local {
                    Some(conn) => sent += usize::from(self.deliver(conn, &frame)),
                    None => remote
                        .entry(entry.worker_id.clone())
                        .or_default()
                        .push(id.clone()),
                }
            }
        }
        let mut first_error = None;
        for (worker, ids) in remote {
            let n = ids.len();
            match self.direct(&worker, ids, &frame).await {
                Ok(()) => sent += n,
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(sent),
        }
    }

    /// Publishes `frame` for `ids` on the channel of `worker`, which delivers it to them.
    async fn direct(
        &self,
        worker: &str,
        ids: Vec<ClientId>,
        frame: &Frame,
    ) -> Result<(), PublishError> {
        let message = json!({ "clients": ids, "frame": frame.as_str() });
        self.inner
            .publisher
            .publish_raw(
                &crate::presence::worker_channel(worker),
                serde_json::to_vec(&message).unwrap_or_default(),
            )
            .await
    }

    /// Delivers what another worker sent to this worker's clients (on its worker channel).
    pub(crate) fn on_direct(&self, payload: &[u8]) {
        #[derive(serde::Deserialize)]
        struct Incoming {
            clients: Vec<String>,
            frame: String,
        }
        let Ok(incoming) = serde_json::from_slice::<Incoming>(payload) else {
            tracing::debug!("unreadable message on this worker's channel ignored");
            return;
        };
        let frame = Frame::text(incoming.frame);
        let state = self.read();
        for id in incoming.clients {
            if let Some(conn) = state.local.get(&ClientId::from_wire(&id)) {
                self.deliver(conn, &frame);
            }
        }
    }

    /// Closes a client wherever it is connected: at once when it is connected here (close code
    /// 1000, after its queued frames), otherwise by publishing `disconnectClient`.
    ///
    /// # Errors
    /// The publish failure, when the client is not connected here.
    pub async fn disconnect_client(&self, client: &ClientId) -> Result<(), PublishError> {
        let conn = self.read().local.get(client).cloned();
        if let Some(conn) = conn {
            conn.close(DisconnectReason::Kicked);
            return Ok(());
        }
        self.inner
            .publisher
            .publish(event::DISCONNECT_CLIENT, &json!({ "clientId": client }))
            .await
    }
}
