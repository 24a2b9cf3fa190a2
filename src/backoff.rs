//! The one doubling backoff every retry loop waits with: outgoing sends, document fetches, the
//! PostgreSQL `LISTEN` connection and the embedded store's recovery.
//!
//! A stateless rule (the wait follows from the number of failed attempts), because the queues
//! keep that number in each message's record and try again after a restart: an iterator of
//! delays, as the backoff crates give, would start over.

use std::time::Duration;

/// A wait that doubles with each failed attempt, from `initial` up to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The wait after the first failed attempt.
    pub initial: Duration,
    /// The longest wait (taken as `initial` when smaller).
    pub max: Duration,
}

impl Backoff {
    pub const fn new(initial: Duration, max: Duration) -> Self {
        Self { initial, max }
    }

    /// The wait after `failures` failed attempts in a row: `initial · 2^(failures-1)`, at most
    /// `max` (`initial` for 0 or 1).
    pub fn after(&self, failures: u32) -> Duration {
        self.initial
            .saturating_mul(1u32 << failures.saturating_sub(1).min(20))
            .min(self.max.max(self.initial))
    }

    /// [`Backoff::after`] scaled by a random factor in [0.5, 1], so that senders that failed
    /// together do not all try again at the same moment.
    pub fn jittered(&self, failures: u32) -> Duration {
        let mut byte = [0u8; 1];
        let jitter = match aws_lc_rs::rand::fill(&mut byte) {
            Ok(()) => 0.5 + f64::from(byte[0]) / 510.0,
            Err(_) => 0.75,
        };
        self.after(failures).mul_f64(jitter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_doubles_up_to_its_cap_and_jitter_keeps_within_half() {
        let backoff = Backoff::new(Duration::from_secs(10), Duration::from_secs(60));
        let secs: Vec<u64> = (0..=6).map(|n| backoff.after(n).as_secs()).collect();
        assert_eq!(secs, [10, 10, 20, 40, 60, 60, 60]);
        assert_eq!(backoff.after(u32::MAX), Duration::from_secs(60));
        // A cap below the first wait is the first wait.
        let odd = Backoff::new(Duration::from_secs(5), Duration::from_secs(1));
        assert_eq!(odd.after(3), Duration::from_secs(5));
        for n in 1..8 {
            let (wait, base) = (backoff.jittered(n), backoff.after(n));
            assert!(wait >= base / 2 && wait <= base, "{n}: {wait:?}");
        }
    }
}
