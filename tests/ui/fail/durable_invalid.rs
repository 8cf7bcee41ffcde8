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


#[websocket_subscriber(match = pattern("jobs:*"), once)]
async fn once_on_a_pattern() {}

#[websocket_subscriber(channel = "jobs", once = "yes")]
async fn once_with_a_value() {}

#[websocket_subscriber(channel = "*", once)]
async fn once_everywhere() {}

fn main() {}
