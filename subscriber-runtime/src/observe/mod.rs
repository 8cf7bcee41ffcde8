//! What the runtime counts about itself: [`Stats`](stats::Stats) for tests, and the `metrics`
//! handles that mirror them.

pub(crate) mod stats;
pub mod telemetry;
