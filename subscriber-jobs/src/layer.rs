//! The `tower` layer that publishes a job's outcome.

use std::error::Error as _;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use apalis_core::error::{AbortError, BoxDynError};
use apalis_core::task::Task;
use serde::Serialize;
use serde_json::{json, Map, Value};
use subscriber_runtime::{event, Publisher};
use tower::{Layer, Service};

use crate::Job;

/// A `tower` layer for an apalis worker: publishes [`event::QUEUE_JOB_COMPLETED`] when a job
/// returns `Ok` and [`event::QUEUE_JOB_ERROR`] when it returns an error.
///
/// The layer publishes every failure it sees. So that a failure is reported once, make it final:
/// return apalis's `AbortError` from the job function (as [`JobBackend::spawn_worker`] does), or
/// the backend schedules the job again (apalis's Redis storage runs a failed job up to 25 times,
/// and each run would tell the client again). For retries, add apalis's retry layer *inside*
/// this one (after it on the `WorkerBuilder`): the layer then reports the last attempt's outcome.
/// A publish that fails (e.g. Redis is down) is logged and does not change the job's own result.
///
/// [`JobBackend::spawn_worker`]: crate::JobBackend::spawn_worker
/// [`event::QUEUE_JOB_COMPLETED`]: subscriber_runtime::event::QUEUE_JOB_COMPLETED
/// [`event::QUEUE_JOB_ERROR`]: subscriber_runtime::event::QUEUE_JOB_ERROR
#[derive(Debug, Clone)]
pub struct JobEventsLayer {
    publisher: Publisher,
}

impl JobEventsLayer {
    /// Publishes through `publisher` (from `Running::publisher`).
    pub fn new(publisher: Publisher) -> Self {
        Self { publisher }
    }
}

impl<S> Layer<S> for JobEventsLayer {
    type Service = JobEvents<S>;

    fn layer(&self, inner: S) -> Self::Service {
        JobEvents {
            inner,
            publisher: self.publisher.clone(),
        }
    }
}

/// The service [`JobEventsLayer`] wraps a job handler in.
#[derive(Debug, Clone)]
pub struct JobEvents<S> {
    inner: S,
    publisher: Publisher,
}

impl<S, J> Service<Task<J>> for JobEvents<S>
where
    J: Job,
    S: Service<Task<J>, Error = BoxDynError>,
    S::Response: Serialize + Send,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxDynError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxDynError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, task: Task<J>) -> Self::Future {
        let mut event = Map::new();
        event.insert(
            "jobId".into(),
            task.task_id()
                .map_or(Value::Null, |id| Value::String(id.to_string())),
        );
        event.insert("queue".into(), Value::from(J::QUEUE));
        if let Some(client) = task.args.web_socket_client_id() {
            event.insert("webSocketClientId".into(), Value::from(client));
        }
        let publisher = self.publisher.clone();
        let outcome = self.inner.call(task);
        Box::pin(async move {
            let result = outcome.await;
            let channel = match &result {
                Ok(value) => {
                    let value = serde_json::to_value(value)
                        .unwrap_or_else(|error| json!({"unserializable": error.to_string()}));
                    event.insert("result".into(), value);
                    event::QUEUE_JOB_COMPLETED
                }
                Err(error) => {
                    // The job's own message, not apalis's "AbortError: ..." around it.
                    let message = match error.downcast_ref::<AbortError>() {
                        Some(abort) => abort
                            .source()
                            .map_or_else(|| abort.to_string(), ToString::to_string),
                        None => error.to_string(),
                    };
                    event.insert("error".into(), Value::from(message));
                    event::QUEUE_JOB_ERROR
                }
            };
            if let Err(error) = publisher.publish_including_sender(channel, &event).await {
                tracing::warn!(
                    queue = J::QUEUE,
                    job_id = %event["jobId"],
                    channel,
                    %error,
                    "could not publish the job's outcome"
                );
            }
            result.map_err(|error| {
                if error.is::<AbortError>() {
                    error
                } else {
                    Box::new(AbortError::new(error)) as BoxDynError
                }
            })
        })
    }
}
