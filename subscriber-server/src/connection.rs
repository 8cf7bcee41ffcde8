//! One connection: a reader (client messages, routes, heartbeat and idle deadlines) and a writer
//! (`writer.rs`: the bounded send queue, pings, the close frame), joined in one task.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::ws::{Message, WebSocket as Socket};
use futures_util::stream::SplitStream;
use futures_util::{FutureExt, StreamExt};
use serde_json::{json, Value};
use tokio::time::Instant;

use subscriber_runtime::__private::HandlerFailure;
use subscriber_runtime::event;

use crate::client::{Client, Conn, DisconnectReason};
use crate::error::ClientError;
use crate::frame::{iso8601, reply_frame, ClientId, Frame};
use crate::hooks::{guarded, ClientMessage};
use crate::http::Serving;
use crate::rooms::room_user;
use crate::routes::RouteContext;
use crate::stats::Counters;
use crate::WebSocket;

/// Serves one upgraded socket until it closes.
///
/// This future lives as long as the connection, so its size is memory per idle connection: the
/// socket is split before the `async` block (so the block does not keep the unsplit socket), the
/// reader and the writer are pinned in place (not moved into `join!`, which would reserve room
/// for both the futures and their moved copies), and the rare, large steps (connect and
/// disconnect announcements, handling a client message, the closing handshake) are boxed, so
/// they cost memory only while they run.
pub(crate) fn run(
    shared: Arc<Serving>,
    socket: Socket,
    id: ClientId,
    user: Option<crate::client::User>,
) -> impl Future<Output = ()> + Send {
    let (sink, stream) = socket.split();
    async move {
        let _task = shared.websocket.inner.tracker.token();
        let conn = Box::pin(connected(&shared, id, user)).await;
        let ws = &shared.websocket;
        let reader = std::pin::pin!(read_loop(&shared, ws, &conn, stream));
        let writer = std::pin::pin!(crate::writer::write_loop(ws, &conn, sink));
        tokio::join!(reader, writer);
        Box::pin(disconnected(&shared, &conn)).await;
    }
}

/// Registers a new client, greets it and tells the cluster.
async fn connected(
    shared: &Arc<Serving>,
    id: ClientId,
    user: Option<crate::client::User>,
) -> Arc<Conn> {
    let ws = &shared.websocket;
    let inner = &ws.inner;
    let limits = ws.queue_limits();
    let client = Client::new(id, user.map(Arc::new));
    let conn = Arc::new(Conn::new(client.clone(), ws.now_ms(), limits));
    let id = &client.id;
    ws.register(conn.clone());
    Counters::inc(&inner.counters.clients_connected);
    inner.counters.metrics.connections.increment(1);
    inner.counters.metrics.clients.increment(1.0);
    tracing::debug!(
        client_id = %id,
        worker_id = %inner.worker_id,
        user_id = client.user_id().map(tracing::field::display),
        "client connected"
    );
    if inner.closing_all.is_cancelled() {
        conn.close(DisconnectReason::Shutdown);
    }
    if let Some(user_id) = client.user_id() {
        let frame = Frame::json(&json!({
            "type": "auth",
            "action": "authenticated",
            "data": {"userId": user_id, "message": "Authentication successful"},
        }))
        .expect("serializing JSON cannot fail");
        ws.deliver(&conn, &frame);
    }
    let announce = json!({
        "clientId": id,
        "lastActivity": SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        "user": client.user(),
    });
    ws.announce(event::CLIENT_CONNECTED, announce);
    for hook in &inner.hooks.connect {
        guarded("on_connect", id, || hook(&client, ws));
    }
    conn
}

/// Forgets a client that is gone, counts why, and tells the cluster.
async fn disconnected(shared: &Arc<Serving>, conn: &Conn) {
    let ws = &shared.websocket;
    let inner = &ws.inner;
    let id = &conn.client.id;
    let reason = conn
        .close_reason()
        .unwrap_or_else(|| DisconnectReason::ConnectionLost("closed".to_owned()));
    ws.unregister(id);
    ws.release(id, conn.client.user.as_deref());
    Counters::inc(&inner.counters.clients_disconnected);
    inner.counters.metrics.disconnected(&reason);
    match &reason {
        DisconnectReason::HeartbeatTimeout => Counters::inc(&inner.counters.heartbeat_timeouts),
        DisconnectReason::Idle => Counters::inc(&inner.counters.idle_disconnects),
        DisconnectReason::MessageTooBig => {
            Counters::inc(&inner.counters.oversized_message_disconnects);
        }
        _ => {}
    }
    tracing::debug!(client_id = %id, worker_id = %inner.worker_id, %reason, "client disconnected");
    ws.announce(event::CLIENT_DISCONNECTED, json!({ "clientId": id }));
    for hook in &inner.hooks.disconnect {
        guarded("on_disconnect", id, || hook(&conn.client, ws, &reason));
    }
}

/// Why a read failed: a message over the size limit, a write buffer over its bound, or a lost
/// connection.
fn read_error_reason(error: axum::Error) -> DisconnectReason {
    let text = error.to_string();
    match error.into_inner().downcast::<tungstenite::Error>() {
        Ok(e) if matches!(*e, tungstenite::Error::Capacity(_)) => DisconnectReason::MessageTooBig,
        Ok(e) if matches!(*e, tungstenite::Error::WriteBufferFull(_)) => {
            DisconnectReason::SlowConsumer
        }
        _ => DisconnectReason::ConnectionLost(text),
    }
}

async fn read_loop(
    shared: &Arc<Serving>,
    ws: &WebSocket,
    conn: &Arc<Conn>,
    mut stream: SplitStream<Socket>,
) {
    let inner = &ws.inner;
    let config = &inner.config;
    let heartbeat = config.ping_interval.map(|p| p + config.pong_timeout);
    let mut last_seen = Instant::now();
    let deadline = |last_seen: Instant, conn: &Conn| -> Option<Instant> {
        let beat = heartbeat.map(|h| last_seen + h);
        let idle = config.idle_timeout.map(|t| {
            Instant::from_std(inner.epoch) + Duration::from_millis(conn.last_activity()) + t
        });
        match (beat, idle) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    };
    let far = || Instant::now() + Duration::from_secs(86_400 * 365);
    let sleep = tokio::time::sleep_until(deadline(last_seen, conn).unwrap_or_else(far));
    tokio::pin!(sleep);
    let mut awaiting_close = true;
    loop {
        tokio::select! {
            biased;
            () = conn.closing.cancelled() => break,
            () = inner.closing_all.cancelled() => {
                // Its running route handlers reply first (or are abandoned at the deadline).
                Box::pin(routes_done(ws, conn)).await;
                conn.close(DisconnectReason::Shutdown);
                break;
            }
            item = stream.next() => {
                last_seen = Instant::now();
                match item {
                    None => {
                        conn.close(DisconnectReason::ClientClosed(None));
                        awaiting_close = false;
                        break;
                    }
                    Some(Err(error)) => {
                        let reason = read_error_reason(error);
                        let slow = reason == DisconnectReason::SlowConsumer;
                        if reason == DisconnectReason::MessageTooBig {
                            tracing::warn!(client_id = %conn.client.id, limit = config.max_message_size, "client sent a message over the size limit; closing (1009)");
                        }
                        if conn.close(reason) && slow {
                            ws.count_slow_consumer(conn, "its write buffer over its bound");
                        }
                        awaiting_close = false;
                        break;
                    }
                    Some(Ok(Message::Text(text))) => Box::pin(on_text(&shared.resources, ws, conn, text.as_str())).await,
                    Some(Ok(Message::Binary(bytes))) => match std::str::from_utf8(&bytes) {
                        Ok(text) => Box::pin(on_text(&shared.resources, ws, conn, text)).await,
                        Err(_) => {
                            conn.touch(ws.now_ms());
                            Counters::inc(&inner.counters.client_messages);
                            inner.counters.metrics.client_messages.increment(1);
                            ws.send_client_error(conn, "invalid_json", "Failed to parse JSON", None);
                        }
                    },
                    // tungstenite answers the ping itself; the writer makes sure the answer
                    // leaves within the stall timeout.
                    Some(Ok(Message::Ping(_))) => conn.request_flush(),
                    Some(Ok(Message::Pong(_))) => {}
                    Some(Ok(Message::Close(frame))) => {
                        conn.close(DisconnectReason::ClientClosed(frame.map(|f| f.code)));
                        awaiting_close = false;
                        break;
                    }
                }
            }
            () = &mut sleep => {
                let now = Instant::now();
                if let Some(h) = heartbeat {
                    if now >= last_seen + h {
                        tracing::info!(client_id = %conn.client.id, "client stopped answering pings; disconnecting");
                        conn.close(DisconnectReason::HeartbeatTimeout);
                        break;
                    }
                }
                if let Some(t) = config.idle_timeout {
                    let last = Instant::from_std(inner.epoch) + Duration::from_millis(conn.last_activity());
                    if now >= last + t {
                        tracing::info!(client_id = %conn.client.id, idle = ?t, "client inactive; disconnecting");
                        conn.close(DisconnectReason::Idle);
                        break;
                    }
                }
                sleep.as_mut().reset(deadline(last_seen, conn).unwrap_or_else(far));
            }
        }
    }
    let urgent_broken = matches!(
        conn.close_reason(),
        Some(DisconnectReason::MessageTooBig | DisconnectReason::HeartbeatTimeout)
    );
    if awaiting_close && !urgent_broken {
        // The server closes: wait (bounded) for the client's close frame.
        let _ = Box::pin(tokio::time::timeout(config.close_timeout, async {
            while let Some(Ok(message)) = stream.next().await {
                if matches!(message, Message::Close(_)) {
                    break;
                }
            }
        }))
        .await;
    }
}

/// One text message from a client: parse, check, hook, route.
pub(crate) async fn on_text(
    resources: &Arc<subscriber_runtime::Resources>,
    ws: &WebSocket,
    conn: &Arc<Conn>,
    text: &str,
) {
    let inner = &ws.inner;
    conn.touch(ws.now_ms());
    Counters::inc(&inner.counters.client_messages);
    inner.counters.metrics.client_messages.increment(1);
    let value: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(_) => {
            ws.send_client_error(conn, "invalid_json", "Failed to parse JSON", None);
            return;
        }
    };
    let mut object = match value {
        Value::Object(map) => map,
        Value::Null => {
            ws.send_client_error(conn, "invalid_message", "Invalid WebSocket message", None);
            return;
        }
        _ => {
            ws.send_client_error(conn, "missing_type", "Missing WebSocket message type", None);
            return;
        }
    };
    let text_field = |object: &serde_json::Map<String, Value>, key: &str| {
        object
            .get(key)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let Some(kind) = text_field(&object, "type") else {
        ws.send_client_error(conn, "missing_type", "Missing WebSocket message type", None);
        return;
    };
    let Some(action) = text_field(&object, "action") else {
        ws.send_client_error(
            conn,
            "missing_action",
            "Missing WebSocket message action",
            None,
        );
        return;
    };
    let data = object.remove("data").unwrap_or(Value::Null);
    let message = ClientMessage {
        kind: &kind,
        action: &action,
        data: &data,
    };
    for hook in &inner.hooks.message {
        guarded("on_message", &conn.client.id, || {
            hook(&conn.client, &message)
        });
    }
    match (kind.as_str(), action.as_str()) {
        ("system", "joinRoom") => join_room(ws, conn, &data).await,
        ("system", "leaveRoom") => leave_room(ws, conn, &data).await,
        ("inspector", "subscribe") if inner.inspector.is_some() => {
            inspector_subscribe(ws, conn);
        }
        _ => match inner.routes.get(&kind, &action) {
            Some(route) => {
                let route = route.clone();
                let cx = RouteContext {
                    client: conn.client.clone(),
                    kind: kind.into(),
                    action: action.into(),
                    data: Arc::new(data),
                    resources: resources.clone(),
                };
                // Beside the reader, within the client's bound: the reader waits only when every
                // place is taken.
                let slot = tokio::select! {
                    slot = conn.route_slots.acquire() => slot,
                    () = conn.closing.cancelled() => return,
                };
                let Ok(slot) = slot else { return };
                slot.forget();
                let (ws, conn) = (ws.clone(), conn.clone());
                inner.tracker.spawn(async move {
                    run_route(&ws, &conn, &route, cx).await;
                    conn.route_slots.add_permits(1);
                });
            }
            None => {
                tracing::debug!(client_id = %conn.client.id, route = %format_args!("{kind}:{action}"), "unknown client route");
                ws.send_client_error(
                    conn,
                    "unknown_route",
                    &format!("Unknown route: {kind}:{action}"),
                    None,
                );
            }
        },
    }
}

/// Waits until every route handler of the client is done, or the shutdown deadline passes.
async fn routes_done(ws: &WebSocket, conn: &Conn) {
    let all = u32::try_from(ws.inner.config.max_concurrent_routes).unwrap_or(u32::MAX);
    tokio::select! {
        _ = conn.route_slots.acquire_many(all) => {}
        () = ws.inner.force.cancelled() => {}
    }
}

async fn run_route(
    ws: &WebSocket,
    conn: &Conn,
    route: &crate::routes::RouteEntry,
    cx: RouteContext,
) {
    let inner = &ws.inner;
    let (kind, action) = (cx.kind.clone(), cx.action.clone());
    let timeout = route.timeout.unwrap_or(inner.handler_timeout);
    let client_id = &conn.client.id;
    // What the client is not shown is logged with an id it is shown.
    let internal = |what: &str, error: &dyn std::fmt::Display| {
        let error_id = uuid::Uuid::new_v4().simple().to_string();
        tracing::error!(route = %route.name, %client_id, %error_id, %error, "client route handler {what}");
        ws.send_client_error(conn, "internal_error", "Internal error", Some(&error_id));
    };
    let Ok(future) = std::panic::catch_unwind(AssertUnwindSafe(|| route.call(cx))) else {
        internal("panicked", &"a panic while extracting its arguments");
        return;
    };
    let outcome = tokio::select! {
        biased;
        () = inner.force.cancelled() => {
            tracing::warn!(route = %route.name, %client_id, "client route handler abandoned at shutdown");
            return;
        }
        outcome = tokio::time::timeout(timeout, AssertUnwindSafe(future).catch_unwind()) => outcome,
    };
    match outcome {
        Err(_) => {
            let error_id = uuid::Uuid::new_v4().simple().to_string();
            tracing::error!(route = %route.name, %client_id, %error_id, ?timeout, "client route handler timed out");
            ws.send_client_error(conn, "timeout", "Request timed out", Some(&error_id));
        }
        Ok(Err(panic)) => internal(
            "panicked",
            &subscriber_runtime::__private::panic_message(panic.as_ref()),
        ),
        Ok(Ok(Err(HandlerFailure::Rejected(error)))) => {
            tracing::debug!(route = %route.name, %client_id, %error, "client route argument rejected");
            ws.send_client_error(conn, "invalid_data", &error.to_string(), None);
        }
        Ok(Ok(Err(HandlerFailure::Skipped(skip)))) => {
            tracing::debug!(route = %route.name, %client_id, reason = skip.reason(), "client route handler skipped by a layer");
            ws.send_client_error(conn, skip.code(), skip.reason(), None);
        }
        Ok(Ok(Err(HandlerFailure::Failed(error)))) => match error.downcast::<ClientError>() {
            Ok(shown) => {
                tracing::debug!(route = %route.name, %client_id, code = shown.code(), error = shown.message(), "client route handler answered an error");
                ws.send_client_error(conn, shown.code(), shown.message(), None);
            }
            Err(error) => internal("failed", &error),
        },
        Ok(Ok(Err(other))) => internal("failed", &other),
        Ok(Ok(Ok(Some(response)))) => {
            ws.deliver(conn, &reply_frame(&kind, &action, &response));
        }
        Ok(Ok(Ok(None))) => {}
    }
}

impl WebSocket {
    /// Sends one client of this worker an error frame with a stable `code` (and the `id` of the
    /// server's log line, for an error the client is not shown); counted, and given to the
    /// `on_error` hooks.
    pub(crate) fn send_client_error(
        &self,
        conn: &Conn,
        code: &str,
        message: &str,
        id: Option<&str>,
    ) -> bool {
        Counters::inc(&self.inner.counters.client_errors);
        self.inner.counters.metrics.client_errors.increment(1);
        tracing::debug!(client_id = %conn.client.id, code, error = message, "error frame to client");
        for hook in &self.inner.hooks.error {
            guarded("on_error", &conn.client.id, || hook(&conn.client, message));
        }
        self.deliver(
            conn,
            &crate::frame::coded_error_frame(message, Some(code), id),
        )
    }
}

/// `inspector:subscribe`: snapshots every second from now on, the first one at once. Only for an
/// authenticated client when the server has a JWT secret.
fn inspector_subscribe(ws: &WebSocket, conn: &Conn) {
    let Some(inspector) = &ws.inner.inspector else {
        return;
    };
    if ws.inner.config.jwt_secret.is_some() && conn.client.user().is_none() {
        ws.send_client_error(
            conn,
            "unauthorized",
            "The inspector needs an authenticated connection",
            None,
        );
        return;
    }
    inspector.subscribe(conn.client.id.clone());
    ws.deliver(
        conn,
        &reply_frame("inspector", "subscribe", &json!({"success": true})),
    );
    ws.deliver(conn, &inspector.frame(ws));
}

fn room_name(data: &Value) -> Option<&str> {
    data.get("roomName")
        .and_then(Value::as_str)
        .filter(|r| !r.is_empty())
}

fn system_reply(ws: &WebSocket, conn: &Conn, action: &str, response: &Value) {
    ws.deliver(conn, &reply_frame("system", action, response));
}

async fn join_room(ws: &WebSocket, conn: &Conn, data: &Value) {
    let id = &conn.client.id;
    let Some(room) = room_name(data) else {
        system_reply(
            ws,
            conn,
            "joinRoom",
            &json!({"success": false, "error": "Room name is required", "clientId": id}),
        );
        return;
    };
    let user = room_user(&conn.client, Some(data));
    // A durable room: with `since`, the live frames wait while the missed ones are sent; without,
    // the reply says where the room is.
    let durable = ws.is_durable_room(room);
    let since = data
        .get("since")
        .and_then(|since| {
            Some((
                since.get("epoch")?.as_str()?.to_owned(),
                since.get("offset")?.as_u64()?,
            ))
        })
        .filter(|_| durable);
    // The client's live frames of the room wait while it catches up: from `since`, or (a fresh
    // join) from the room's position read once it is a member, so that no frame falls between.
    if durable {
        lock_cursors(conn).insert(room.to_owned(), crate::rooms_durable::RoomCursor::holding());
    }
    let joined = ws.join_with(id, room, user.clone());
    if joined.is_err() {
        lock_cursors(conn).remove(room);
    }
    match joined {
        Ok(_) => {
            let recovery = match &since {
                Some((epoch, offset)) => Some(ws.catch_up(conn, room, epoch, *offset).await),
                None if durable => {
                    let now = ws.room_position(room).await;
                    let epoch = now.epoch.as_deref().unwrap_or_default().to_owned();
                    let mut caught = ws.catch_up(conn, room, &epoch, now.offset).await;
                    // A fresh join recovers nothing: it starts here.
                    caught.recovered = false;
                    Some(caught)
                }
                None => None,
            };
            let mut reply_data = json!({
                "roomName": room,
                "userId": user["id"],
                "userType": user["userType"],
                "username": user["username"],
                "joinedAt": iso8601(SystemTime::now()),
            });
            if reply_data["userId"].is_null() {
                reply_data["userId"] = Value::from(id.as_str());
            }
            let caught_up = recovery.is_some();
            if let Some(recovery) = recovery {
                reply_data["recovered"] = Value::Bool(recovery.recovered);
                reply_data["epoch"] = recovery.epoch.as_deref().map_or(Value::Null, Value::from);
                reply_data["offset"] = Value::from(recovery.offset);
            }
            system_reply(
                ws,
                conn,
                "joinRoom",
                &json!({
                    "success": true,
                    "message": format!("Successfully joined room: {room}"),
                    "data": reply_data,
                }),
            );
            if caught_up {
                // The live frames held since the catch-up come after the reply, whose position
                // they follow.
                ws.resume_live(conn, room);
            }
        }
        Err(error) => system_reply(
            ws,
            conn,
            "joinRoom",
            &json!({"success": false, "error": "Failed to join room", "message": error.to_string(), "clientId": id}),
        ),
    }
}

fn lock_cursors(
    conn: &Conn,
) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, crate::rooms_durable::RoomCursor>>
{
    conn.durable_rooms
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn leave_room(ws: &WebSocket, conn: &Conn, data: &Value) {
    let id = &conn.client.id;
    let Some(room) = room_name(data) else {
        system_reply(
            ws,
            conn,
            "leaveRoom",
            &json!({"success": false, "error": "Room name is required", "clientId": id}),
        );
        return;
    };
    let left = ws.leave_room(id, room).await;
    // Only once it is out of the room: without its cursor, a member would be sent the room's
    // late live frames (ones its catch-up sent already) again.
    lock_cursors(conn).remove(room);
    match left {
        Ok(true) => {
            let pushed = Frame::json(
                &json!({"type": "user", "action": "leftRoom", "data": {"roomName": room}}),
            )
            .expect("serializing JSON cannot fail");
            ws.deliver(conn, &pushed);
            system_reply(
                ws,
                conn,
                "leaveRoom",
                &json!({
                    "success": true,
                    "message": format!("Successfully left room: {room}"),
                    "data": {"roomName": room, "leftAt": iso8601(SystemTime::now())},
                    "clientId": id,
                }),
            );
        }
        Ok(false) => system_reply(
            ws,
            conn,
            "leaveRoom",
            &json!({"success": false, "error": format!("Not in room: {room}"), "clientId": id}),
        ),
        Err(error) => system_reply(
            ws,
            conn,
            "leaveRoom",
            &json!({"success": false, "error": "Failed to leave room", "message": error.to_string(), "clientId": id}),
        ),
    }
}
