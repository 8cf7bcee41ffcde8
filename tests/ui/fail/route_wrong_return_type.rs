use switchboard::prelude::*;

#[websocket_route(type = "chat", action = "number")]
fn number() -> u32 {
    1
}

#[websocket_route(type = "chat", action = "string")]
async fn string(_: Client) -> String {
    String::new()
}

struct NotSerialize;

#[websocket_route(type = "chat", action = "notSerialize")]
async fn not_serialize() -> Result<NotSerialize, std::io::Error> {
    Ok(NotSerialize)
}

#[websocket_route(type = "chat", action = "notSendSync")]
async fn not_send_sync() -> Result<(), Box<dyn std::error::Error>> {
    Ok(())
}

fn main() {}
