//! The WebSocket side of a worker: its local clients and the [`WebSocket`] handle handlers use to
//! reach them.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc;

/// A server-assigned client id: 32 lowercase hex characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(Arc<str>);

impl ClientId {
    pub(crate) fn generate() -> Self {
        Self(uuid::Uuid::new_v4().simple().to_string().into())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A frame for WebSocket clients, serialized once: every recipient gets the same bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame(Bytes);

impl Frame {
    /// The frame's JSON text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("frames are built from UTF-8 JSON")
    }

    /// The frame's bytes.
    pub fn bytes(&self) -> &Bytes {
        &self.0
    }
}

/// A server-to-client message in the reference protocol: `{"type", "action", "data"}`.
///
/// ```
/// use switchboard::Outgoing;
///
/// let frame = Outgoing::new("jobs", "completed", serde_json::json!({"id": 7})).to_frame();
/// assert_eq!(frame.as_str(), r#"{"type":"jobs","action":"completed","data":{"id":7}}"#);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outgoing {
    #[serde(rename = "type")]
    kind: String,
    action: String,
    data: Value,
}

impl Outgoing {
    /// A frame of the given type and action; `data` is anything serializable (a value that fails to
    /// serialize becomes `null`, and is logged).
    pub fn new(kind: impl Into<String>, action: impl Into<String>, data: impl Serialize) -> Self {
        let data = serde_json::to_value(data).unwrap_or_else(|error| {
            tracing::error!(%error, "outgoing frame data did not serialize; sending null");
            Value::Null
        });
        Self {
            kind: kind.into(),
            action: action.into(),
            data,
        }
    }

    /// Serializes the frame once.
    pub fn to_frame(&self) -> Frame {
        Frame(Bytes::from(
            serde_json::to_vec(self).expect("serializing a JSON value cannot fail"),
        ))
    }
}

impl From<&Outgoing> for Frame {
    fn from(o: &Outgoing) -> Self {
        o.to_frame()
    }
}

impl From<Outgoing> for Frame {
    fn from(o: Outgoing) -> Self {
        o.to_frame()
    }
}

#[derive(Debug)]
struct LocalClient {
    tx: mpsc::Sender<Frame>,
}

/// The WebSocket server handle: reaches this worker's connected clients.
///
/// Every send serializes the frame once and hands the same bytes to each recipient's bounded
/// queue; a client whose queue is full is skipped (and counted) rather than slowing the others.
#[derive(Clone, Default)]
pub struct WebSocket {
    clients: Arc<RwLock<HashMap<ClientId, LocalClient>>>,
}

impl fmt::Debug for WebSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebSocket")
            .field("clients", &self.client_count())
            .finish()
    }
}

impl WebSocket {
    /// Number of clients connected to this worker.
    pub fn client_count(&self) -> usize {
        self.read().len()
    }

    /// Sends a frame to every client of this worker; returns how many got it.
    pub fn broadcast_to_all_clients(&self, frame: impl Into<Frame>) -> usize {
        let frame = frame.into();
        self.read()
            .values()
            .filter(|c| c.tx.try_send(frame.clone()).is_ok())
            .count()
    }

    /// Sends a frame to one client of this worker; false when it is not connected here.
    pub fn broadcast_to_client(&self, client: &ClientId, frame: impl Into<Frame>) -> bool {
        self.read()
            .get(client)
            .is_some_and(|c| c.tx.try_send(frame.into()).is_ok())
    }

    /// Registers a local client whose frames arrive on the returned receiver (a queue of
    /// `capacity` frames). Used by the server and by test clients.
    pub(crate) fn attach(&self, capacity: usize) -> (ClientId, mpsc::Receiver<Frame>) {
        let id = ClientId::generate();
        let (tx, rx) = mpsc::channel(capacity.max(1));
        self.clients
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id.clone(), LocalClient { tx });
        (id, rx)
    }

    /// Removes a local client.
    pub(crate) fn detach(&self, id: &ClientId) {
        self.clients
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(id);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<ClientId, LocalClient>> {
        self.clients
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
