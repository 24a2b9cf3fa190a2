//! Slows down password guessing (the token endpoint's client secrets, console passwords) without
//! letting a third party lock the rightful owner out.
//!
//! Failures are counted per source address and account together, and per source address alone.
//! After [`PER_ACCOUNT`] failures for one account from one address within the window, that
//! address may not try that account until the window has passed; after [`PER_SOURCE`] failures
//! from one address over any accounts, that address may not try at all. The same account from
//! another address is never refused because of them, so knowing a client id is not enough to
//! lock Ocean out. A guesser spread over many addresses still gets only [`PER_ACCOUNT`] tries per
//! address per window.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failed logins allowed for one account from one address within one window.
pub const PER_ACCOUNT: u32 = 5;
/// Failed logins allowed from one address, over all accounts, within one window.
pub const PER_SOURCE: u32 = 20;
/// Buckets kept; when full, expired ones are dropped, and if none has expired new sources share
/// one overflow bucket (which then fills quickly: a guesser with that many addresses is slowed
/// as one).
const MAX_BUCKETS: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Account(IpAddr, String),
    Source(IpAddr),
    Overflow,
}

/// Failure counts per bucket: how many, since when.
pub struct LoginLimiter {
    window: Duration,
    buckets: Mutex<HashMap<Key, (u32, Instant)>>,
}

impl LoginLimiter {
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(seconds to wait)` while `source` may not try `account`.
    pub fn check(&self, source: IpAddr, account: &str) -> Result<(), u64> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let mut wait = 0;
        for (key, max) in [
            (Key::Account(source, account.to_owned()), PER_ACCOUNT),
            (Key::Source(source), PER_SOURCE),
            (Key::Overflow, PER_SOURCE),
        ] {
            let Some(&(count, since)) = buckets.get(&key) else {
                continue;
            };
            let elapsed = since.elapsed();
            if elapsed >= self.window {
                buckets.remove(&key);
            } else if count >= max {
                wait = wait.max((self.window - elapsed).as_secs().max(1));
            }
        }
        if wait > 0 { Err(wait) } else { Ok(()) }
    }

    /// Counts a failed login of `source` for `account`.
    pub fn failed(&self, source: IpAddr, account: &str) {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        for key in [
            Key::Account(source, account.to_owned()),
            Key::Source(source),
        ] {
            let key = if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(&key) {
                let window = self.window;
                buckets.retain(|_, (_, since)| since.elapsed() < window);
                if buckets.len() >= MAX_BUCKETS {
                    Key::Overflow
                } else {
                    key
                }
            } else {
                key
            };
            let bucket = buckets.entry(key).or_insert((0, Instant::now()));
            if bucket.1.elapsed() >= self.window {
                *bucket = (0, Instant::now());
            }
            bucket.0 += 1;
        }
    }

    /// A successful login clears the failures of that account from that address.
    pub fn succeeded(&self, source: IpAddr, account: &str) {
        self.buckets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&Key::Account(source, account.to_owned()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    #[test]
    fn a_guesser_is_locked_out_of_an_account_but_its_owner_elsewhere_is_not() {
        let limiter = LoginLimiter::new(Duration::from_millis(300));
        for _ in 0..PER_ACCOUNT {
            assert_eq!(limiter.check(ip(1), "ocean"), Ok(()));
            limiter.failed(ip(1), "ocean");
        }
        assert!(limiter.check(ip(1), "ocean").is_err());
        // The rightful owner, from its own address, is unaffected.
        assert_eq!(limiter.check(ip(2), "ocean"), Ok(()));
        assert_eq!(limiter.check(ip(1), "other"), Ok(()));
        std::thread::sleep(Duration::from_millis(350));
        assert_eq!(limiter.check(ip(1), "ocean"), Ok(()));
        limiter.failed(ip(1), "ocean");
        limiter.succeeded(ip(1), "ocean");
        assert_eq!(limiter.check(ip(1), "ocean"), Ok(()));
    }

    #[test]
    fn one_address_guessing_many_accounts_is_locked_out_of_all() {
        let limiter = LoginLimiter::new(Duration::from_secs(60));
        for n in 0..PER_SOURCE {
            limiter.failed(ip(3), &format!("client-{n}"));
        }
        assert!(limiter.check(ip(3), "fresh-account").is_err());
        assert_eq!(limiter.check(ip(4), "fresh-account"), Ok(()));
    }

    #[test]
    fn the_buckets_stay_bounded() {
        let limiter = LoginLimiter::new(Duration::from_secs(60));
        for n in 0..(MAX_BUCKETS as u32) {
            limiter.failed(IpAddr::from(n.to_be_bytes()), "x");
        }
        let buckets = limiter.buckets.lock().unwrap().len();
        assert!(buckets <= MAX_BUCKETS + 1, "{buckets}");
    }
}
