//! `crate = "..."`: the generated code goes through the given path, not `::switchboard`.
#![deny(warnings)]

extern crate switchboard as sb;

use std::sync::atomic::{AtomicUsize, Ordering};

// A plain `switchboard::...` path would now find this empty module.
#[allow(dead_code)]
mod switchboard {}

static SHIM_FINISHED: AtomicUsize = AtomicUsize::new(0);

/// A stand-in for the crate: everything from `sb`, but an `IntoHandlerResult` that counts its
/// calls.
mod shim {
    pub mod __private {
        pub use sb::__private::*;

        pub trait IntoHandlerResult {
            fn into_handler_result(self) -> Result<(), sb::BoxError>;
        }

        impl<R: sb::IntoHandlerResult> IntoHandlerResult for R {
            fn into_handler_result(self) -> Result<(), sb::BoxError> {
                let _ = super::super::SHIM_FINISHED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                sb::IntoHandlerResult::into_handler_result(self)
            }
        }
    }
}

#[sb::websocket_subscriber(crate = "sb", channel = "renamed")]
fn through_renamed_crate(_: sb::Channel) {}

#[sb::websocket_subscriber(crate = "crate::shim", channel = "shimmed")]
async fn through_shim(_: sb::Message) -> sb::HandlerResult {
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let app = sb::Switchboard::builder().build().expect("valid handlers");
    let mut names: Vec<String> = app.handlers().iter().map(|h| h.name().to_owned()).collect();
    names.sort();
    assert_eq!(names, ["through_renamed_crate", "through_shim"]);

    let running = app.start().await.expect("started");
    let publisher = running.publisher();
    publisher
        .publish_including_sender("shimmed", &serde_json::json!({}))
        .await
        .expect("published");
    publisher
        .publish_including_sender("renamed", &serde_json::json!({}))
        .await
        .expect("published");
    running.wait_idle().await;
    running.shutdown().await;
    // Only the handler with `crate = "crate::shim"` went through the shim.
    assert_eq!(SHIM_FINISHED.load(Ordering::SeqCst), 1);
}
