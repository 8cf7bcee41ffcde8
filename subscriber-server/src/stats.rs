//! Counters the server keeps about itself ([`ServerStats`], the test API); each one is mirrored
//! by a `metrics` counter (see `metrics.rs`).

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// The counters, and the `metrics` handles that mirror them.
        #[derive(Debug, Default)]
        pub(crate) struct Counters {
            $(pub(crate) $name: AtomicU64,)*
            pub(crate) metrics: crate::metrics::Metrics,
        }

        /// A snapshot of the WebSocket server's counters (see
        /// [`WebSocket::stats`](crate::WebSocket::stats)).
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        #[non_exhaustive]
        pub struct ServerStats { $($(#[$doc])* pub $name: u64,)* }

        impl Counters {
            pub(crate) fn snapshot(&self) -> ServerStats {
                ServerStats { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }
    };
}

counters! {
    /// WebSocket clients that connected to this worker.
    clients_connected,
    /// WebSocket clients of this worker that disconnected (for any reason).
    clients_disconnected,
    /// WebSocket connections refused with 401 (bad, expired or missing token).
    auth_rejections,
    /// WebSocket connections refused with 429: the user was at its connection limit
    /// ([`WebSocketConfig::max_connections_per_user`](crate::WebSocketConfig::max_connections_per_user)).
    user_limit_rejections,
    /// Messages received from WebSocket clients.
    client_messages,
    /// Error frames sent to WebSocket clients.
    client_errors,
    /// Clients disconnected (1013) because their send queue was full.
    slow_consumer_disconnects,
    /// Clients disconnected (1009) for sending a message over the size limit.
    oversized_message_disconnects,
    /// Clients disconnected because they stopped answering pings.
    heartbeat_timeouts,
    /// Clients disconnected by the inactivity timeout.
    idle_disconnects,
}

impl Counters {
    /// Counters whose `metrics` handles were resolved from the current recorder.
    pub(crate) fn resolved() -> Self {
        Self {
            metrics: crate::metrics::Metrics::resolve(),
            ..Self::default()
        }
    }

    pub(crate) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
