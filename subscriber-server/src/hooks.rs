//! Lifecycle hooks given to the builder, and the message they see.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use serde_json::Value;

use crate::client::{Client, DisconnectReason};
use crate::frame::ClientId;
use crate::WebSocket;

/// A client message as the `on_message` hook sees it (before it is routed).
#[derive(Debug, Clone, Copy)]
pub struct ClientMessage<'a> {
    pub(crate) kind: &'a str,
    pub(crate) action: &'a str,
    pub(crate) data: &'a Value,
}

impl ClientMessage<'_> {
    /// The message's `type`.
    pub fn kind(&self) -> &str {
        self.kind
    }
    /// The message's `action`.
    pub fn action(&self) -> &str {
        self.action
    }
    /// The message's `data` (`null` when absent).
    pub fn data(&self) -> &Value {
        self.data
    }
}

type ConnectHook = Arc<dyn Fn(&Client, &WebSocket) + Send + Sync>;
type DisconnectHook = Arc<dyn Fn(&Client, &WebSocket, &DisconnectReason) + Send + Sync>;
type MessageHook = Arc<dyn Fn(&Client, &ClientMessage<'_>) + Send + Sync>;
type ErrorHook = Arc<dyn Fn(&Client, &str) + Send + Sync>;

/// Lifecycle hooks given to the builder.
#[derive(Default, Clone)]
pub(crate) struct Hooks {
    pub(crate) connect: Vec<ConnectHook>,
    pub(crate) disconnect: Vec<DisconnectHook>,
    pub(crate) message: Vec<MessageHook>,
    pub(crate) error: Vec<ErrorHook>,
}

/// Runs a hook, logging (not propagating) a panic.
pub(crate) fn guarded(hook: &str, client: &ClientId, f: impl FnOnce()) {
    if let Err(panic) = std::panic::catch_unwind(AssertUnwindSafe(f)) {
        let panic = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        tracing::error!(hook, client_id = %client, %panic, "WebSocket lifecycle hook panicked");
    }
}
