//! The rules every outgoing queue follows, the Ocean outbox and each destination alike: which
//! answers are worth another attempt, and when that attempt is (exponential backoff with
//! jitter, honouring `Retry-After`, within a retry horizon).

pub mod answer;
pub mod token;
pub mod worker;

use std::time::Duration;

use reqwest::StatusCode;
use time::OffsetDateTime;

use crate::backoff::Backoff;
use crate::config::OutboxConfig;

/// Why a send did not land.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Worth retrying (5xx, 429, 408, timeouts, connection errors, token trouble).
    #[error("{reason}")]
    Retry {
        reason: String,
        /// `Retry-After`, when the receiver sent one.
        after: Option<Duration>,
    },
    /// The receiver refused the message (another 4xx): retrying cannot help.
    #[error("{0}")]
    Rejected(String),
}

impl SendError {
    /// The error for a non-success `status` (RFC 9110): 5xx, 429 and 408 are worth retrying
    /// (after `after`, the answer's `Retry-After`), any other status is a refusal.
    pub fn from_status(status: StatusCode, reason: String, after: Option<Duration>) -> Self {
        if status.is_server_error()
            || status == StatusCode::TOO_MANY_REQUESTS
            || status == StatusCode::REQUEST_TIMEOUT
        {
            Self::Retry { reason, after }
        } else {
            Self::Rejected(reason)
        }
    }
}

/// When failed sends are tried again: `[outbox]`'s backoff and horizon.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// How long after it was queued a message is still tried.
    pub horizon: Duration,
    /// The first backoff; it doubles per attempt up to `max_backoff`.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl RetryPolicy {
    pub fn from_config(config: &OutboxConfig) -> Self {
        Self {
            horizon: Duration::from_secs(config.retry_horizon_secs),
            initial_backoff: Duration::from_secs(config.initial_backoff_secs),
            max_backoff: Duration::from_secs(config.max_backoff_secs),
        }
    }

    /// When to try again something queued at `created_at` whose attempt number `attempts`
    /// failed at `now` (`after`: the receiver's `Retry-After`), or `None` when that falls past
    /// the retry horizon and it is a dead letter now. `Retry-After` is honoured, but never
    /// beyond the horizon.
    pub fn next_attempt(
        &self,
        attempts: u32,
        created_at: OffsetDateTime,
        now: OffsetDateTime,
        after: Option<Duration>,
    ) -> Option<(OffsetDateTime, Duration)> {
        let left = self.horizon.saturating_sub(duration(now - created_at));
        let wait = after.unwrap_or_default().max(self.backoff(attempts));
        let next = time::Duration::try_from(wait)
            .ok()
            .and_then(|w| now.checked_add(w))?;
        (wait < left).then_some((next, wait))
    }

    /// The reason a dead letter records when its next attempt would fall past the horizon
    /// (`after`: the receiver's `Retry-After`).
    pub fn gave_up(&self, attempts: u32, reason: &str, after: Option<Duration>) -> String {
        match after {
            Some(after) if after >= self.horizon => format!(
                "the answer asked for a wait of {} s (Retry-After), beyond the {} s retry horizon: {reason}",
                after.as_secs(),
                self.horizon.as_secs()
            ),
            _ => format!(
                "gave up after {attempts} attempts within the {} s retry horizon: {reason}",
                self.horizon.as_secs()
            ),
        }
    }

    /// The wait after `attempts` failed attempts: the [`Backoff`] from `initial_backoff` to
    /// `max_backoff`, with jitter.
    pub fn backoff(&self, attempts: u32) -> Duration {
        Backoff::new(self.initial_backoff, self.max_backoff).jittered(attempts)
    }
}

/// A time span as a `std` duration; negative spans are zero.
pub fn duration(d: time::Duration) -> Duration {
    Duration::try_from(d).unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_within_its_cap_and_the_horizon_ends_retries() {
        let policy = RetryPolicy {
            horizon: Duration::from_secs(100),
            initial_backoff: Duration::from_secs(2),
            max_backoff: Duration::from_secs(30),
        };
        for (attempts, base) in [(1, 2), (2, 4), (3, 8), (5, 30), (40, 30)] {
            let wait = policy.backoff(attempts);
            let base = Duration::from_secs(base);
            assert!(wait >= base / 2 && wait <= base, "{attempts}: {wait:?}");
        }
        let start = OffsetDateTime::now_utc();
        let (next, wait) = policy.next_attempt(1, start, start, None).unwrap();
        assert!(next > start && wait <= Duration::from_secs(2));
        // Retry-After is taken when longer than the backoff, never past the horizon.
        let (_, wait) = policy
            .next_attempt(1, start, start, Some(Duration::from_secs(50)))
            .unwrap();
        assert_eq!(wait, Duration::from_secs(50));
        assert_eq!(
            policy.next_attempt(1, start, start, Some(Duration::from_secs(150))),
            None
        );
        let late = start + time::Duration::seconds(99);
        assert_eq!(policy.next_attempt(1, start, late, None), None);
        assert_eq!(
            SendError::from_status(StatusCode::BAD_GATEWAY, "x".into(), None),
            SendError::Retry {
                reason: "x".into(),
                after: None
            }
        );
        assert_eq!(
            SendError::from_status(StatusCode::UNPROCESSABLE_ENTITY, "x".into(), None),
            SendError::Rejected("x".into())
        );
    }
}
