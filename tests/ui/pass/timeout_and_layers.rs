//! `timeout = "..."` and `layer = ...` on subscribers and routes, and plain functions running on
//! the blocking pool.
#![deny(warnings)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::task::{Context as TaskContext, Poll};
use std::thread::ThreadId;

use switchboard::prelude::*;
use switchboard::tower::limit::ConcurrencyLimitLayer;
use switchboard::tower::{Layer, Service};

/// How many `Count` layers were made (once per handler, when the application is built).
static MADE: AtomicUsize = AtomicUsize::new(0);
/// How many calls went through a `Count` layer.
static CALLS: AtomicUsize = AtomicUsize::new(0);
/// The thread the plain function ran on.
static PLAIN_THREAD: Mutex<Option<ThreadId>> = Mutex::new(None);

mod layers {
    /// A layer made by a function of the user's.
    pub fn count() -> super::Count {
        super::MADE.fetch_add(1, super::Ordering::SeqCst);
        super::Count
    }
}

#[derive(Clone)]
struct Count;

impl<S> Layer<S> for Count {
    type Service = Counted<S>;

    fn layer(&self, inner: S) -> Counted<S> {
        Counted(inner)
    }
}

#[derive(Clone)]
struct Counted<S>(S);

impl<S: Service<Cx>, Cx> Service<Cx> for Counted<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, task: &mut TaskContext<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(task)
    }

    fn call(&mut self, cx: Cx) -> S::Future {
        CALLS.fetch_add(1, Ordering::SeqCst);
        self.0.call(cx)
    }
}

#[websocket_subscriber(
    channel = "plain",
    timeout = "250ms",
    layer = switchboard::tower::limit::ConcurrencyLimitLayer::new(2)
)]
fn plain(Message(_m): Message, _: Channel) {
    *PLAIN_THREAD.lock().unwrap() = Some(std::thread::current().id());
}

#[websocket_subscriber(
    channel = "layered",
    layer = [layers::count(), ConcurrencyLimitLayer::new(2)],
    timeout = "2m"
)]
async fn layered(_: Channel) -> HandlerResult {
    Ok(())
}

#[websocket_subscriber(channel = "slow", timeout = "50ms", layer = [layers::count()])]
fn slow() {
    std::thread::sleep(std::time::Duration::from_millis(500));
}

#[websocket_route(
    type = "pass",
    action = "limited",
    timeout = "250ms",
    layer = switchboard::tower::limit::ConcurrencyLimitLayer::new(2)
)]
fn limited(Data(n): Data<u32>) -> Reply<u32> {
    Reply(n + 1)
}

#[websocket_route(
    type = "pass",
    action = "layered",
    layer = [layers::count(), ConcurrencyLimitLayer::new(2)],
    timeout = "5s"
)]
async fn route_layered(_: Client) {}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let app = Switchboard::builder().build().expect("valid handlers");
    // One `Count` per handler that has one: two subscribers and a route.
    assert_eq!(MADE.load(Ordering::SeqCst), 3);

    let running = app.start().await.expect("started");
    let publisher = running.publisher();
    for channel in ["plain", "layered", "slow"] {
        publisher
            .publish_including_sender(channel, &serde_json::json!({}))
            .await
            .expect("published");
    }
    running.wait_idle().await;
    let stats = running.stats();
    // The plain function ran, off the (only) async thread.
    let thread = PLAIN_THREAD.lock().unwrap().expect("`plain` ran");
    assert_ne!(thread, std::thread::current().id());
    // `layered` and `slow` went through their `Count`.
    assert_eq!(CALLS.load(Ordering::SeqCst), 2);
    // `slow` outran its 50 ms; nothing else failed.
    assert_eq!(stats.handler_timeouts, 1, "{stats:?}");
    assert_eq!(stats.handler_errors, 0, "{stats:?}");
    running.shutdown().await;

    // The functions stay ordinary functions.
    assert_eq!(limited(Data(1)), Reply(2));
}
