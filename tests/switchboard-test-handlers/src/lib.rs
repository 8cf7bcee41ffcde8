//! Subscriber handlers defined in a separate crate of the workspace, to prove that handlers are
//! discovered at link time across crates (see `tests/attribute.rs`).
//!
//! A binary only links a crate it references: depend on it and write `use this_crate as _;`.

use serde::Deserialize;
use switchboard::prelude::*;

/// The channel this crate's handlers listen on.
pub const AUDIT_CHANNEL: &str = "audit:event";

/// An audit event.
#[derive(Debug, Deserialize)]
pub struct AuditEvent {
    /// Who did it.
    pub actor: String,
}

/// Records audit events (defined in another crate).
#[websocket_subscriber(channel = AUDIT_CHANNEL, priority = 7)]
pub async fn remote_audit(
    Message(event): Message<AuditEvent>,
    publisher: Publisher,
) -> HandlerResult {
    publisher
        .publish_including_sender(
            "audit:recorded",
            &serde_json::json!({ "actor": event.actor }),
        )
        .await?;
    Ok(())
}

/// Watches every audit channel (defined in another crate).
#[websocket_subscriber(match = pattern("audit:*"), priority = -7)]
pub fn remote_audit_tap(channel: Channel) {
    tracing::debug!(%channel, "audit traffic");
}
