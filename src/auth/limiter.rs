//! Slows down guessing at the token endpoint: after a few failed client logins within a window,
//! further attempts for that client id are refused until the window has passed.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failed logins allowed per client id within one window.
const MAX_FAILURES: u32 = 5;

/// Per-client-id failure counts. Unknown client ids share one bucket, so the map stays as small
/// as the configured client list however many ids an attacker invents.
pub struct LoginLimiter {
    window: Duration,
    failures: Mutex<HashMap<String, (u32, Instant)>>,
}

impl LoginLimiter {
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(seconds to wait)` while `key` is locked out.
    pub fn check(&self, key: &str) -> Result<(), u64> {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        match failures.get(key) {
            Some(&(count, since)) if count >= MAX_FAILURES => {
                let elapsed = since.elapsed();
                if elapsed >= self.window {
                    failures.remove(key);
                    Ok(())
                } else {
                    Err((self.window - elapsed).as_secs().max(1))
                }
            }
            _ => Ok(()),
        }
    }

    pub fn failed(&self, key: &str) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let entry = failures
            .entry(key.to_owned())
            .or_insert((0, Instant::now()));
        if entry.1.elapsed() >= self.window {
            *entry = (0, Instant::now());
        }
        entry.0 += 1;
    }

    pub fn succeeded(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_out_after_repeated_failures_and_forgives_later() {
        let limiter = LoginLimiter::new(Duration::from_millis(200));
        for _ in 0..MAX_FAILURES {
            assert_eq!(limiter.check("c"), Ok(()));
            limiter.failed("c");
        }
        assert!(limiter.check("c").is_err());
        assert_eq!(limiter.check("other"), Ok(()));
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(limiter.check("c"), Ok(()));
        limiter.failed("c");
        limiter.succeeded("c");
        assert_eq!(limiter.check("c"), Ok(()));
    }
}
