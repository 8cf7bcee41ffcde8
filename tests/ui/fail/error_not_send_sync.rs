use switchboard::prelude::*;

#[websocket_subscriber(channel = "a")]
async fn not_send_sync() -> Result<(), Box<dyn std::error::Error>> {
    Ok(())
}

#[websocket_subscriber(channel = "a")]
fn only_send() -> std::result::Result<(), Box<dyn std::error::Error + Send>> {
    Ok(())
}

fn main() {}
