//! [`Publisher`]: publish to other workers through the broker.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;

use crate::broker::durable::DurableChannels;
use crate::broker::{Broker, Position};
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
///
/// On a [durable](crate::Builder::durable) channel, a publish appends the message to the
/// channel's stream and publishes it live with its position, in one step (see
/// [`publish_durable`](Self::publish_durable) to learn the position).
#[derive(Clone)]
pub struct Publisher {
    broker: Arc<dyn Broker>,
    worker_id: Arc<str>,
    durable: Arc<DurableChannels>,
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
        Self {
            broker,
            worker_id,
            durable: Arc::default(),
        }
    }

    /// The application's durable channels, which the publisher shares with its dispatcher.
    pub(crate) fn durable(&self) -> &Arc<DurableChannels> {
        &self.durable
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
        let payload = payload.into();
        if self.durable.retention(channel).is_some() {
            let start = payload.iter().position(|b| !b.is_ascii_whitespace());
            if start.is_none_or(|i| payload[i] != b'{') {
                return Err(PublishError::NotAnObject {
                    channel: channel.to_owned(),
                });
            }
            let payload = payload.slice(start.unwrap_or(0)..);
            return self.send(channel, payload).await.map(drop);
        }
        Ok(self.broker.publish(channel, payload).await?)
    }

    /// Publishes `message` to every other worker, like [`publish`](Self::publish), and returns
    /// its position in the channel's stream when the channel is
    /// [durable](crate::Builder::durable) (`None` for an ordinary channel).
    ///
    /// # Errors
    /// As [`publish`](Self::publish).
    pub async fn publish_durable<T: Serialize + ?Sized>(
        &self,
        channel: &str,
        message: &T,
    ) -> Result<Option<Position>, PublishError> {
        let payload = self.envelope(channel, message, false)?;
        self.send(channel, payload).await
    }

    /// Reads a [durable](crate::Builder::durable) channel's history: at most `limit` messages
    /// after the offset `after` (as published, without the position), with the stream's epoch
    /// and newest offset. What the WebSocket server replays to a client that reconnects.
    ///
    /// # Errors
    /// The broker's, when it cannot be read.
    pub async fn read_stream(
        &self,
        channel: &str,
        after: u64,
        limit: usize,
    ) -> Result<crate::broker::StreamRead, crate::BrokerError> {
        self.broker.read_stream(channel, after, limit).await
    }

    /// Sends a payload: on a durable channel through its stream (returning the position).
    async fn send(&self, channel: &str, payload: Bytes) -> Result<Option<Position>, PublishError> {
        match self.durable.retention(channel) {
            Some(retention) => Ok(Some(
                self.broker
                    .publish_durable(channel, payload, retention)
                    .await?,
            )),
            None => {
                self.broker.publish(channel, payload).await?;
                Ok(None)
            }
        }
    }

    async fn publish_with<T: Serialize + ?Sized>(
        &self,
        channel: &str,
        message: &T,
        include_sender: bool,
    ) -> Result<(), PublishError> {
        let payload = self.envelope(channel, message, include_sender)?;
        self.send(channel, payload).await.map(drop)
    }

    /// Validates the channel, serializes the message and adds the envelope.
    fn envelope<T: Serialize + ?Sized>(
        &self,
        channel: &str,
        message: &T,
        include_sender: bool,
    ) -> Result<Bytes, PublishError> {
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
        Ok(Bytes::from(payload))
    }
}
