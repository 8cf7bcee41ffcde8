use switchboard::prelude::*;

#[websocket_subscriber(channel = "a")]
fn number() -> u32 {
    1
}

#[websocket_subscriber(channel = "a")]
async fn ok_value() -> Result<u8, String> {
    Ok(1)
}

fn main() {}
