//! Plain `fn` handlers run on tokio's blocking pool, never on the async worker threads, so that a
//! handler that blocks (a synchronous database driver, a sleep, heavy computation) neither stalls
//! the other handlers nor escapes its timeout.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::error::BoxError;
use crate::handler::context::Resources;
use crate::handler::HandlerFailure;
use crate::observe::stats::Counters;

/// Marks the call abandoned (timed out, or cancelled at shutdown) when its future is dropped
/// before the blocking task finished.
struct Abandon(Option<Arc<AtomicBool>>);

impl Drop for Abandon {
    fn drop(&mut self) {
        if let Some(flag) = self.0.take() {
            flag.store(true, Ordering::Release);
        }
    }
}

/// Runs `f` (the user's function and the conversion of its result) on the blocking pool, inside
/// the current span. When the caller gave up first (its timeout), the result is discarded when it
/// comes, and counted ([`Stats::late_results`](crate::Stats::late_results)). A panic is resumed
/// here, so that the caller's panic isolation reports it as one.
///
/// Not public API: used by [`Handler`](crate::Handler)'s plain-function implementations and by the
/// code the attributes generate.
#[doc(hidden)]
pub async fn run_blocking<O, F>(resources: Arc<Resources>, f: F) -> Result<O, HandlerFailure>
where
    O: Send + 'static,
    F: FnOnce() -> Result<O, BoxError> + Send + 'static,
{
    let abandoned = Arc::new(AtomicBool::new(false));
    let mut guard = Abandon(Some(abandoned.clone()));
    let span = tracing::Span::current();
    let task = tokio::task::spawn_blocking(move || {
        let _entered = span.enter();
        let result = std::panic::catch_unwind(AssertUnwindSafe(f));
        if abandoned.load(Ordering::Acquire) {
            let counters = &resources.counters;
            Counters::inc(&counters.late_results);
            counters.metrics.late_results.increment(1);
            tracing::debug!(
                "a plain fn handler finished after its caller gave up; result discarded"
            );
        }
        result
    });
    let joined = task.await;
    guard.0 = None;
    match joined {
        Ok(Ok(result)) => result.map_err(HandlerFailure::Failed),
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        Err(error) => Err(HandlerFailure::Failed(Box::new(error))),
    }
}
