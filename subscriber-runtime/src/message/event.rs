//! The framework's own channel names, as the reference TypeScript framework spells them, so a Rust
//! worker can join a cluster of those workers. Use them with the attribute:
//! `#[websocket_subscriber(channel = event::QUEUE_JOB_COMPLETED)]`.

/// The prefix of the framework's internal channels (the WebSocket server's presence feed,
/// `switchboard.presence`, and each worker's own channel, `switchboard.worker.<id>`): a message on
/// such a channel reaches plugins' internal subscribers only, never the application's handlers
/// (not even a `"*"` handler).
pub const INTERNAL_PREFIX: &str = "switchboard.";

/// Whether `channel` is one of the framework's internal channels ([`INTERNAL_PREFIX`]).
pub fn is_internal(channel: &str) -> bool {
    channel.starts_with(INTERNAL_PREFIX)
}

/// A client connected to some worker: `{clientId, lastActivity, workerId, user}`.
pub const CLIENT_CONNECTED: &str = "clientConnected";
/// A client disconnected from some worker: `{clientId, workerId}`.
pub const CLIENT_DISCONNECTED: &str = "clientDisconnected";
/// Close a client wherever it is connected: `{clientId}`.
pub const DISCONNECT_CLIENT: &str = "disconnectClient";
/// A client joined a room: `{clientId, user, roomName, workerId}`.
pub const CLIENT_JOINED_ROOM: &str = "clientJoinedRoom";
/// A client left a room: `{clientId, room, workerId}` (the key is `room`).
pub const CLIENT_LEFT_ROOM: &str = "clientLeftRoom";
/// A message for subscribers: `{...data, workerId}`.
pub const SEND_MESSAGE: &str = "sendMessage";
/// A frame every worker delivers to all of its clients.
pub const SEND_MESSAGE_TO_ALL: &str = "sendMessageToAll";
/// A frame every worker delivers to the members of a room: `{roomName, message,
/// excludeClientId?}` (a Switchboard extension; the reference framework has no such channel).
pub const SEND_MESSAGE_TO_ROOM: &str = "sendMessageToRoom";
/// An error for one client: `{clientId, error}`.
pub const MESSAGE_ERROR: &str = "messageError";
/// A queue job completed (its result, id, queue and `webSocketClientId` when it has one).
pub const QUEUE_JOB_COMPLETED: &str = "queueJobCompleted";
/// A queue job failed (its error, id, queue and `webSocketClientId` when it has one).
pub const QUEUE_JOB_ERROR: &str = "queueJobError";
/// Application messages, e.g. from `WebSocket::send_custom_message`.
pub const CUSTOM: &str = "custom";

/// Every framework channel.
pub const ALL: [&str; 12] = [
    CLIENT_CONNECTED,
    CLIENT_DISCONNECTED,
    DISCONNECT_CLIENT,
    CLIENT_JOINED_ROOM,
    CLIENT_LEFT_ROOM,
    SEND_MESSAGE,
    SEND_MESSAGE_TO_ALL,
    SEND_MESSAGE_TO_ROOM,
    MESSAGE_ERROR,
    QUEUE_JOB_COMPLETED,
    QUEUE_JOB_ERROR,
    CUSTOM,
];
