use switchboard::prelude::*;

#[websocket_subscriber(channel = "a")]
fn generic<T: Send>(_: Message) {}

#[websocket_subscriber(channel = "a")]
fn with_where(_: Channel)
where
    String: Clone,
{
}

#[websocket_subscriber(channel = "a")]
fn impl_trait(_: impl Send) {}

fn main() {}
