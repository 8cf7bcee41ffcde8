//! [`Publisher`]: publish to other workers through the broker.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;

use crate::broker::Broker;
use crate::error::PublishError;
use crate::message::envelope;

/// Publishes messages through the application's broker, adding the envelope (`workerId`, and
/// `includeSender` when asked) so that every worker can tell who sent what.
///
/// A message published with [`publish`](Self::publish) reaches every *other* worker's handlers;
/// [`publish_including_sender`](Self::publish_including_sender) reaches this worker's too.
///
/// ```
/// use switchboard::prelude::*;
///
/// #[websocket_subscriber(channel = "orders:created")]
/// async fn enqueue_invoice(Message(order): Message, publisher: Publisher) -> HandlerResult {
///     publisher.publish("invoices:requested", &order).await?;
///     Ok(())
/// }
/// # fn main() {}
/// ```
#[derive(Clone)]
pub struct Publisher {
    broker: Arc<dyn Broker>,
    worker_id: Arc<str>,
}

impl fmt::Debug for Publisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("broker", &self.broker.kind())
            .field("worker_id", &self.worker_id)
            .finish()
    }
}

impl Publisher {
    /// A publisher on `broker` that signs its messages as the worker `worker_id` (an application's
    /// own publisher is [`Running::publisher`](crate::Running::publisher)).
    pub fn new(broker: Arc<dyn Broker>, worker_id: Arc<str>) -> Self {
        Self { broker, worker_id }
    }

    pub(crate) fn broker(&self) -> &Arc<dyn Broker> {
        &self.broker
    }

    /// This worker's instance id, written into every message as `workerId`.
    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    /// Publishes `message` (which must serialize to a JSON object) to every other worker.
    ///
    /// # Errors
    /// An invalid channel, a message that is not a JSON object, or a broker failure (for Redis:
    /// unreachable, or no answer within the timeout). It never blocks forever.
    pub async fn publish<T: Serialize + ?Sized>(
        &self,
        channel: &str,
        message: &T,
    ) -> Result<(), PublishError> {
        self.publish_with(channel, message, false).await
    }

    /// Publishes `message` to every worker, this one included (`includeSender: true`).
    ///
    /// # Errors
    /// As [`publish`](Self::publish).
    pub async fn publish_including_sender<T: Serialize + ?Sized>(
        &self,
        channel: &str,
        message: &T,
    ) -> Result<(), PublishError> {
        self.publish_with(channel, message, true).await
    }

    /// Publishes a payload unchanged, without an envelope: every worker's handlers receive it, this
    /// worker's included.
    ///
    /// # Errors
    /// An invalid channel or a broker failure.
    pub async fn publish_raw(
        &self,
        channel: &str,
        payload: impl Into<Bytes>,
    ) -> Result<(), PublishError> {
        subscriber_patterns::validate_channel(channel)?;
        Ok(self.broker.publish(channel, payload.into()).await?)
    }

    async fn publish_with<T: Serialize + ?Sized>(
        &self,
        channel: &str,
        message: &T,
        include_sender: bool,
    ) -> Result<(), PublishError> {
        subscriber_patterns::validate_channel(channel)?;
        let json = serde_json::to_vec(message).map_err(|source| PublishError::Serialize {
            channel: channel.to_owned(),
            source,
        })?;
        let payload = envelope::wrap(&json, &self.worker_id, include_sender).ok_or_else(|| {
            PublishError::NotAnObject {
                channel: channel.to_owned(),
            }
        })?;
        Ok(self.broker.publish(channel, Bytes::from(payload)).await?)
    }
}
