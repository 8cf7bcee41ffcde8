//! The `PUBLISH` fan-out.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use redis_protocol::resp2::types::BytesFrame;

use super::resp::bulk;
use super::server::Shared;

/// Delivers a message to every matching subscription, as Redis does: one `message` per client
/// subscribed to the channel and one `pmessage` per matching pattern of each client. Returns the
/// number of deliveries.
pub(super) fn publish(shared: &Shared, channel: &Bytes, message: &Bytes) -> i64 {
    shared.published.fetch_add(1, Ordering::Relaxed);
    let channel_text = String::from_utf8_lossy(channel);
    let mut receivers = 0;
    for client in shared
        .clients()
        .values()
        .filter(|c| !c.stall.is_cancelled())
    {
        if client.channels.contains(channel) {
            receivers += 1;
            let _ = client.push.send(BytesFrame::Array(vec![
                bulk("message"),
                bulk(channel.clone()),
                bulk(message.clone()),
            ]));
        }
        for pattern in &client.patterns {
            if subscriber_patterns::glob::matches(&String::from_utf8_lossy(pattern), &channel_text)
            {
                receivers += 1;
                let _ = client.push.send(BytesFrame::Array(vec![
                    bulk("pmessage"),
                    bulk(pattern.clone()),
                    bulk(channel.clone()),
                    bulk(message.clone()),
                ]));
            }
        }
    }
    receivers
}
