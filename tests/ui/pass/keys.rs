//! `priority`, `name` and `description`, and their defaults.
#![deny(warnings)]

use switchboard::prelude::*;

/// Relays job updates
///   to every client.
///
/// Second paragraph.
#[websocket_subscriber(channel = "a", priority = -10)]
fn documented() {}

#[websocket_subscriber(
    channel = "a",
    priority = 2147483647,
    name = "renamed",
    description = "Explicit."
)]
/// Ignored: `description` wins.
fn explicit() {}

#[websocket_subscriber(channel = "a", priority = -2147483648)]
fn undocumented() {}

#[websocket_subscriber(channel = "a", priority = 0)]
fn zero() {}

fn main() {
    let app = Switchboard::builder().build().expect("valid handlers");
    let handlers = app.handlers();
    let find = |name: &str| handlers.iter().find(|h| h.name() == name).expect(name);
    assert_eq!(find("documented").priority(), -10);
    assert_eq!(
        find("documented").description(),
        "Relays job updates to every client. Second paragraph."
    );
    assert_eq!(find("renamed").priority(), i32::MAX);
    assert_eq!(find("renamed").description(), "Explicit.");
    assert_eq!(find("undocumented").priority(), i32::MIN);
    assert_eq!(find("undocumented").description(), "");
    assert_eq!(find("zero").priority(), 0);
    assert!(handlers.iter().all(|h| h.name() != "explicit"));
}
