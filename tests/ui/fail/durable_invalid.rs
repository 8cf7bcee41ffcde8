use switchboard::prelude::*;

#[websocket_subscriber(channel = "a", durable = true)]
async fn with_a_value() {}

#[websocket_subscriber(channel = "a", durable, durable)]
async fn twice() {}

#[websocket_subscriber(channel = "*", durable)]
async fn every_channel() {}

fn urgent(m: &MatchContext<'_>) -> bool {
    m.property("urgent").is_some()
}

#[websocket_subscriber(match = urgent, durable)]
async fn predicate_only() {}

#[websocket_subscriber(channel = "a", durabel)]
async fn misspelled() {}

fn main() {}
