//! Subscribing: the namespaced subscription plan, the dedicated pub/sub connection, and the
//! reader task that moves messages into the inbox, pings, and reconnects with backoff.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};
use redis::RedisError;
use tokio_util::sync::CancellationToken;

use super::{classify, Inbox, RedisBroker, Subscriptions};
use crate::error::BrokerError;

/// How long a clean `UNSUBSCRIBE` at shutdown may take before the connection is simply closed.
const UNSUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(1);

impl RedisBroker {
    /// Connects a pub/sub connection and subscribes to everything in `plan`.
    pub(super) async fn connect_subscriber(
        &self,
        plan: &Plan,
    ) -> Result<(PubSubSink, PubSubStream), BrokerError> {
        let attempt = async {
            let pubsub = self.client.get_async_pubsub().await?;
            let (mut sink, stream) = pubsub.split();
            if !plan.channels.is_empty() {
                sink.subscribe(plan.channels.as_slice()).await?;
            }
            if !plan.patterns.is_empty() {
                sink.psubscribe(plan.patterns.as_slice()).await?;
            }
            Ok::<_, RedisError>((sink, stream))
        };
        match tokio::time::timeout(self.connect_timeout, attempt).await {
            Ok(Ok(connection)) => Ok(connection),
            Ok(Err(e)) => Err(classify(&e, &self.url, self.connect_timeout)),
            Err(_) => Err(BrokerError::Timeout(self.connect_timeout)),
        }
    }
}

/// What one worker subscribes to on Redis, namespaced, and how to map it back.
pub(super) struct Plan {
    subscriptions: Subscriptions,
    prefix: Arc<str>,
    /// `SUBSCRIBE` arguments, prefixed.
    pub(super) channels: Vec<String>,
    /// `PSUBSCRIBE` arguments, prefixed (the prefix escaped).
    pub(super) patterns: Vec<String>,
    /// Prefixed pattern → pattern as in `subscriptions`.
    pattern_names: HashMap<String, String>,
}

impl Plan {
    pub(super) fn new(subscriptions: Subscriptions, prefix: &Arc<str>) -> Self {
        let channels = subscriptions
            .channels()
            .map(|c| format!("{prefix}{c}"))
            .collect();
        let escaped = subscriber_patterns::glob::escape(prefix);
        let pattern_names: HashMap<String, String> = subscriptions
            .patterns()
            .map(|p| (format!("{escaped}{p}"), p.to_owned()))
            .collect();
        let mut patterns: Vec<String> = pattern_names.keys().cloned().collect();
        patterns.sort();
        Self {
            subscriptions,
            prefix: prefix.clone(),
            channels,
            patterns,
            pattern_names,
        }
    }
}

/// Why a subscriber connection stopped.
enum Ended {
    Shutdown,
    Lost(String),
}

/// The task that reads the subscriber connection, and reconnects it.
pub(super) struct Reader {
    pub(super) broker: RedisBroker,
    pub(super) plan: Plan,
    pub(super) inbox: Inbox,
    pub(super) shutdown: CancellationToken,
}

impl Reader {
    pub(super) async fn run(self, first: (PubSubSink, PubSubStream)) {
        let mut connection = first;
        loop {
            let reason = match self.pump(connection).await {
                Ended::Shutdown => {
                    tracing::debug!(url = %self.broker.url, "redis subscription closed");
                    return;
                }
                Ended::Lost(reason) => reason,
            };
            // The publishing connection most likely went down with this one.
            self.broker.publisher.discard_all();
            tracing::warn!(
                url = %self.broker.url,
                reason = %reason,
                "redis subscriber connection lost: messages published until it is back are lost to this worker"
            );
            match self.reconnect().await {
                Some(c) => connection = c,
                None => return,
            }
        }
    }

    /// Reconnects and resubscribes until it works (`Some`) or the application shuts down.
    async fn reconnect(&self) -> Option<(PubSubSink, PubSubStream)> {
        let lost_at = Instant::now();
        let mut attempt: u32 = 0;
        loop {
            attempt = attempt.saturating_add(1);
            let delay = self.broker.backoff.delay(attempt);
            tracing::warn!(
                url = %self.broker.url,
                attempt,
                delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                "reconnecting to redis"
            );
            tokio::select! {
                () = self.shutdown.cancelled() => return None,
                () = tokio::time::sleep(delay) => {}
            }
            let result = tokio::select! {
                () = self.shutdown.cancelled() => return None,
                result = self.broker.connect_subscriber(&self.plan) => result,
            };
            match result {
                Ok(connection) => {
                    self.inbox.count_reconnect();
                    tracing::info!(
                        url = %self.broker.url,
                        attempt,
                        downtime_ms = u64::try_from(lost_at.elapsed().as_millis()).unwrap_or(u64::MAX),
                        channels = self.plan.channels.len(),
                        patterns = self.plan.patterns.len(),
                        "reconnected to redis and subscribed again"
                    );
                    return Some(connection);
                }
                Err(error) => {
                    tracing::warn!(url = %self.broker.url, attempt, %error, "redis reconnect attempt failed");
                }
            }
        }
    }

    /// Moves messages into the inbox until the connection is lost or the application stops.
    async fn pump(&self, (mut sink, mut stream): (PubSubSink, PubSubStream)) -> Ended {
        let interval = self.broker.ping_interval;
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ping: Option<BoxFuture<'static, Result<(), String>>> = None;
        loop {
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => {
                    let unsubscribe = async {
                        if !self.plan.channels.is_empty() {
                            sink.unsubscribe(self.plan.channels.as_slice()).await?;
                        }
                        if !self.plan.patterns.is_empty() {
                            sink.punsubscribe(self.plan.patterns.as_slice()).await?;
                        }
                        Ok::<_, RedisError>(())
                    };
                    if let Ok(Err(error)) = tokio::time::timeout(UNSUBSCRIBE_TIMEOUT, unsubscribe).await {
                        tracing::debug!(url = %self.broker.url, %error, "redis unsubscribe at shutdown failed");
                    }
                    return Ended::Shutdown;
                }
                result = async { ping.as_mut().expect("guarded by the condition").await }, if ping.is_some() => {
                    ping = None;
                    if let Err(reason) = result {
                        return Ended::Lost(reason);
                    }
                }
                _ = ticks.tick(), if ping.is_none() => {
                    let mut sink = sink.clone();
                    ping = Some(Box::pin(async move {
                        match tokio::time::timeout(interval, sink.ping::<redis::Value>()).await {
                            Ok(Ok(_)) => Ok(()),
                            Ok(Err(e)) => Err(format!("PING failed: {e}")),
                            Err(_) => Err(format!("no answer to PING within {interval:?}")),
                        }
                    }));
                }
                message = stream.next() => match message {
                    Some(message) => self.deliver(&message),
                    None => return Ended::Lost("connection closed".to_owned()),
                },
            }
        }
    }

    fn deliver(&self, message: &redis::Msg) {
        let Ok(full) = message.get_channel::<String>() else {
            tracing::debug!("redis message on a non-UTF-8 channel ignored");
            return;
        };
        let Some(channel) = full.strip_prefix(&*self.plan.prefix) else {
            tracing::debug!(channel = %full, "redis message outside the namespace ignored");
            return;
        };
        if message.from_pattern() {
            // Redis sends one `pmessage` per matching pattern: keep exactly one.
            let pattern = message.get_pattern::<String>().unwrap_or_default();
            let keep = self
                .plan
                .pattern_names
                .get(&pattern)
                .is_some_and(|p| self.plan.subscriptions.is_canonical_pattern(p, channel));
            if !keep {
                return;
            }
        }
        self.inbox
            .deliver(channel, Bytes::copy_from_slice(message.get_payload_bytes()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_prefix_channels_and_escape_patterns() {
        let broker = RedisBroker::from_url("redis://127.0.0.1/")
            .unwrap()
            .namespace("app[1]:");
        assert_eq!(&*broker.prefix, "app[1]:");
        let plan = Plan::new(
            Subscriptions::new(["orders".to_owned()], ["analytics:*".to_owned()]),
            &broker.prefix,
        );
        assert_eq!(plan.channels, ["app[1]:orders"]);
        assert_eq!(plan.patterns, ["app\\[1\\]:analytics:*"]);
        assert!(subscriber_patterns::glob::matches(
            &plan.patterns[0],
            "app[1]:analytics:pageview"
        ));
        let bad = RedisBroker::from_url("redis://127.0.0.1/")
            .unwrap()
            .namespace("two words");
        assert!(matches!(bad.check_config(), Err(BrokerError::Config(_))));
        assert_eq!(
            &*RedisBroker::from_url("redis://h/")
                .unwrap()
                .namespace("")
                .prefix,
            ""
        );
    }
}
