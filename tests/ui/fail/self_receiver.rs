use switchboard::prelude::*;

struct Service;

impl Service {
    #[websocket_subscriber(channel = "a")]
    async fn on_message(&self, _: Channel) {}
}

fn main() {}
