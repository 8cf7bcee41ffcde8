use switchboard::prelude::*;

#[websocket_subscriber(match = event::QUEUE_JOB_COMPLETED)]
fn constant_in_match() {}

#[websocket_subscriber(match = glob("a*"))]
fn unknown_matcher() {}

#[websocket_subscriber(match = regex("a", "b"))]
fn two_arguments() {}

#[websocket_subscriber(match = |cx: &MatchContext<'_>| cx.channel().is_empty())]
fn closure() {}

#[websocket_subscriber(channels = ["a", "b", "a"])]
fn duplicate() {}

fn main() {}
