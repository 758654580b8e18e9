//! A token bucket for repair bytes: repairs read and write at most
//! `bytes_per_sec` on average, with a burst of one second's worth, so that
//! foreground traffic keeps its latency while the cluster heals.
//!
//! Invariant: over any interval `t` the bytes granted are at most
//! `rate × (t + 1 s)`; a single request larger than the burst waits until
//! the bucket has been refilled for it, it is never refused.

use std::cell::Cell;
use std::time::{Duration, Instant};

pub struct Throttle {
    rate: f64,
    burst: f64,
    tokens: Cell<f64>,
    at: Cell<Instant>,
    granted: Cell<u64>,
}

impl Throttle {
    pub fn new(bytes_per_sec: u64) -> Self {
        let rate = bytes_per_sec.max(1) as f64;
        Throttle {
            rate,
            burst: rate,
            tokens: Cell::new(rate),
            at: Cell::new(Instant::now()),
            granted: Cell::new(0),
        }
    }

    /// How long a request for `bytes` must wait now (and takes them: the
    /// balance may go negative, which makes later requests wait).
    pub fn reserve(&self, bytes: u64, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.at.get()).as_secs_f64();
        let t = (self.tokens.get() + elapsed * self.rate).min(self.burst) - bytes as f64;
        self.tokens.set(t);
        self.at.set(now);
        self.granted.set(self.granted.get() + bytes);
        if t >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-t / self.rate)
        }
    }

    /// Waits until `bytes` may move.
    pub async fn take(&self, bytes: u64) {
        let wait = self.reserve(bytes, Instant::now());
        if !wait.is_zero() {
            glommio::timer::sleep(wait).await;
        }
    }

    /// Bytes granted since start.
    pub fn granted(&self) -> u64 {
        self.granted.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the request sizes and their spacing, a request is never
        /// allowed to start before rate × (elapsed + 1 s) covers every byte
        /// granted up to it.
        #[test]
        fn never_faster_than_the_rate(rate_kib in 1u64..10_000, reqs in proptest::collection::vec((1u64..4_000_000, 0u64..500), 1..200)) {
            let rate = rate_kib * 1024;
            let t = Throttle::new(rate);
            let start = Instant::now();
            let mut now = start;
            let mut total = 0u64;
            for (bytes, gap_ms) in reqs {
                now += Duration::from_millis(gap_ms);
                let wait = t.reserve(bytes, now);
                let begins = now + wait;
                total += bytes;
                let allowed = rate as f64 * ((begins - start).as_secs_f64() + 1.0);
                prop_assert!(total as f64 <= allowed + 1.0, "{total} bytes by {:?}, allowed {allowed}", begins - start);
                // The caller sleeps `wait`: time moves on.
                now = begins;
            }
        }
    }
}
