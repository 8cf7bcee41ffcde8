//! The reconnect delays: capped, jittered exponential backoff.

use std::hash::BuildHasher;
use std::time::{Duration, Instant};

/// Capped, jittered exponential backoff.
#[derive(Debug, Clone, Copy)]
pub(super) struct Backoff {
    pub(super) initial: Duration,
    pub(super) max: Duration,
}

impl Backoff {
    /// The delay before reconnect attempt `attempt` (1-based): `initial * 2^(attempt-1)`, capped
    /// at `max`, then jittered into its upper half.
    pub(super) fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(20);
        let capped = self.initial.saturating_mul(factor).min(self.max);
        let half = capped / 2;
        half + half.mul_f64(random_unit())
    }
}

/// A pseudo-random number in `[0, 1)`, good enough for jitter.
fn random_unit() -> f64 {
    let bits = std::collections::hash_map::RandomState::new().hash_one(Instant::now());
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped_and_jittered() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
        };
        for attempt in 1..=40 {
            let d = b.delay(attempt);
            let full = Duration::from_millis(100)
                .saturating_mul(1 << (attempt - 1).min(20))
                .min(Duration::from_secs(5));
            assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?}");
        }
    }
}
