use switchboard::prelude::*;

#[websocket_subscriber(channel = "a")]
async fn wants_client(_client: Client, Message(_m): Message) {}

#[websocket_subscriber(channel = "b")]
fn wants_data(Data(_d): Data) {}

fn main() {}
