//! Every matcher kind, channel constants, and several keys together.
#![deny(warnings)]

use switchboard::prelude::*;
use switchboard::MatchContext;

const LOCAL: &str = "local";

mod channels {
    pub const NESTED: &str = "nested";
}

fn is_admin(cx: &MatchContext<'_>) -> bool {
    cx.message().get("admin").is_some()
}

#[websocket_subscriber(channel = "exact")]
fn literal() {}

#[websocket_subscriber(channel = "*")]
fn every_channel() {}

#[websocket_subscriber(channel = event::QUEUE_JOB_COMPLETED)]
fn framework_constant() {}

#[websocket_subscriber(channels = ["a", LOCAL, channels::NESTED, switchboard::event::QUEUE_JOB_ERROR])]
fn several() {}

#[websocket_subscriber(match = regex("^analytics:"))]
fn one_regex() {}

#[websocket_subscriber(match = pattern("jobs:*"))]
fn one_glob() {}

#[websocket_subscriber(match = is_admin)]
fn one_predicate() {}

#[websocket_subscriber(match = [regex("^a:"), pattern("b:[0-9]*"), "c", "*", is_admin, crate::is_admin])]
fn mixed() {}

#[websocket_subscriber(channel = "x", match = [regex("^y")])]
fn channel_and_match() {}

#[websocket_subscriber(channels = ["x", "z"], match = is_admin)]
fn channels_and_match() {}

fn main() {
    let app = Switchboard::builder().build().expect("valid handlers");
    let count = |name: &str| {
        app.handlers()
            .iter()
            .find(|h| h.name() == name)
            .unwrap_or_else(|| panic!("{name} is registered"))
            .matchers()
            .len()
    };
    assert_eq!(count("literal"), 1);
    assert_eq!(count("every_channel"), 1);
    assert_eq!(count("framework_constant"), 1);
    assert_eq!(count("several"), 4);
    assert_eq!(count("one_regex"), 1);
    assert_eq!(count("one_glob"), 1);
    assert_eq!(count("one_predicate"), 1);
    assert_eq!(count("mixed"), 6);
    assert_eq!(count("channel_and_match"), 2);
    assert_eq!(count("channels_and_match"), 3);
}
