//! Slows down password guessing (the token endpoint's client secrets, console passwords) without
//! letting a third party lock the rightful owner out.
//!
//! Failures are counted per source address and account together, and per source address alone.
//! After [`PER_ACCOUNT`] failures for one account from one address within the window, that
//! address may not try that account until the window has passed; after [`PER_SOURCE`] failures
//! from one address over any accounts, that address may not try at all. The same account from
//! another address is never refused because of them, so knowing a client id is not enough to
//! lock Ocean out. A guesser spread over many addresses still gets only [`PER_ACCOUNT`] tries per
//! address per window; an IPv6 address counts by its /64, which one host usually holds whole.
//! The counts are bounded: when full, the oldest are forgotten (never shared, so no flood of
//! addresses can lock out one that has not failed).
//!
//! Replicas on one shared store (PostgreSQL) also count every failure there
//! ([`ReplicaStore`](crate::store::ReplicaStore)), so tries spread over replicas add up, whichever replica a guess lands
//! on. The memory counts stay as well: when the store cannot be read, each replica still
//! limits what it sees itself.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::store::Store;

/// Failed logins allowed for one account from one address within one window.
pub const PER_ACCOUNT: u32 = 5;
/// Failed logins allowed from one address, over all accounts, within one window.
pub const PER_SOURCE: u32 = 20;
/// Buckets kept; when full, the oldest one is forgotten.
const MAX_BUCKETS: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Account(IpAddr, String),
    Source(IpAddr),
}

impl Key {
    /// The bucket's name in a shared store: `account <address> <client id>` or
    /// `source <address>`.
    fn bucket(&self) -> String {
        match self {
            Key::Account(source, account) => format!("account {source} {account}"),
            Key::Source(source) => format!("source {source}"),
        }
    }
}

/// The buckets one attempt counts in, with the failures each allows.
fn keys(source: IpAddr, account: &str) -> [(Key, u32); 2] {
    [
        (Key::Account(source, account.to_owned()), PER_ACCOUNT),
        (Key::Source(source), PER_SOURCE),
    ]
}

/// The address failures are counted by: an IPv4 address, or the /64 of an IPv6 one.
fn counted(source: IpAddr) -> IpAddr {
    super::source::host_network(source)
}

/// Failure counts per bucket: how many, since when.
pub struct LoginLimiter {
    window: Duration,
    buckets: Mutex<Buckets>,
    /// The store replicas share, when failures are counted there as well.
    shared: Option<Arc<dyn Store>>,
    /// Attempts between their check and their count (see [`LoginLimiter::turn`]).
    turns: tokio::sync::Semaphore,
}

/// Attempts of this process checked at once, from the limiter's check to the count of their
/// outcome: parallel guesses cannot all pass the check before any failure is counted (at most
/// this many minus one go past the limit), and slow checks (console password hashes) are bounded.
const TURNS: usize = 2;

/// The counts, and the order their buckets were made in (to forget the oldest first).
#[derive(Default)]
struct Buckets {
    counts: HashMap<Key, (u32, Instant)>,
    order: VecDeque<Key>,
}

impl LoginLimiter {
    /// Counts failures within windows of `window`, in memory.
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            buckets: Mutex::new(Buckets::default()),
            shared: None,
            turns: tokio::sync::Semaphore::new(TURNS),
        }
    }

    /// Also counts failures in `store` when replicas share it
    /// ([`ReplicaStore::counts_login_failures`](crate::store::ReplicaStore::counts_login_failures)).
    pub fn shared_through(mut self, store: Arc<dyn Store>) -> Self {
        if store.counts_login_failures() {
            self.shared = Some(store);
        }
        self
    }

    /// A turn to try: hold it from [`check`](Self::check) until [`failed`](Self::failed) or
    /// [`succeeded`](Self::succeeded) has counted the outcome. Waits while other attempts hold
    /// theirs.
    pub async fn turn(&self) -> tokio::sync::SemaphorePermit<'_> {
        self.turns
            .acquire()
            .await
            .expect("the limiter's semaphore is never closed")
    }

    /// `Err(seconds to wait)` while `source` may not try `account`: counted in memory here, or
    /// in the shared store by any replica.
    pub async fn check(&self, source: IpAddr, account: &str) -> Result<(), u64> {
        let here = self.check_here(source, account);
        let Some(store) = &self.shared else {
            return here;
        };
        let keys = keys(counted(source), account);
        let buckets: Vec<String> = keys.iter().map(|(key, _)| key.bucket()).collect();
        let shared = match store.login_failures(&buckets, self.window).await {
            Ok(counts) => counts
                .iter()
                .zip(&keys)
                .filter(|(count, (_, max))| count.failures >= *max)
                .map(|(count, _)| count.window_left_secs.max(1))
                .max()
                .unwrap_or(0),
            Err(e) => {
                tracing::warn!(error = %e.chain(), "cannot read shared failed-login counts; limiting by this replica's own");
                0
            }
        };
        let wait = here.err().unwrap_or(0).max(shared);
        if wait > 0 { Err(wait) } else { Ok(()) }
    }

    /// Counts a failed login of `source` for `account`, here and in the shared store.
    pub async fn failed(&self, source: IpAddr, account: &str) {
        self.failed_here(source, account);
        if let Some(store) = &self.shared {
            let buckets: Vec<String> = keys(counted(source), account)
                .iter()
                .map(|(key, _)| key.bucket())
                .collect();
            if let Err(e) = store.count_login_failure(&buckets, self.window).await {
                tracing::warn!(error = %e.chain(), "cannot count a failed login in the shared store");
            }
        }
    }

    /// A successful login clears the failures of that account from that address.
    pub async fn succeeded(&self, source: IpAddr, account: &str) {
        self.succeeded_here(source, account);
        if let Some(store) = &self.shared {
            let bucket = Key::Account(counted(source), account.to_owned()).bucket();
            if let Err(e) = store.clear_login_failures(&bucket).await {
                tracing::warn!(error = %e.chain(), "cannot clear failed logins in the shared store");
            }
        }
    }

    fn check_here(&self, source: IpAddr, account: &str) -> Result<(), u64> {
        let source = counted(source);
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let mut wait = 0;
        for (key, max) in keys(source, account) {
            let Some(&(count, since)) = buckets.counts.get(&key) else {
                continue;
            };
            let elapsed = since.elapsed();
            if elapsed >= self.window {
                buckets.counts.remove(&key);
            } else if count >= max {
                wait = wait.max((self.window - elapsed).as_secs().max(1));
            }
        }
        if wait > 0 { Err(wait) } else { Ok(()) }
    }

    fn failed_here(&self, source: IpAddr, account: &str) {
        let source = counted(source);
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let Buckets { counts, order } = &mut *buckets;
        for (key, _) in keys(source, account) {
            if !counts.contains_key(&key) {
                // Forget the oldest buckets (the order may name ones already gone).
                while counts.len() >= MAX_BUCKETS {
                    match order.pop_front() {
                        Some(oldest) => {
                            counts.remove(&oldest);
                        }
                        None => break,
                    }
                }
                order.push_back(key.clone());
            }
            let bucket = counts.entry(key).or_insert((0, Instant::now()));
            if bucket.1.elapsed() >= self.window {
                *bucket = (0, Instant::now());
            }
            bucket.0 += 1;
        }
        // Keys removed by `check` or `succeeded` linger in the order; keep it in proportion.
        if order.len() > 2 * MAX_BUCKETS {
            order.retain(|key| counts.contains_key(key));
        }
    }

    fn succeeded_here(&self, source: IpAddr, account: &str) {
        let source = counted(source);
        self.buckets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .counts
            .remove(&Key::Account(source, account.to_owned()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    #[tokio::test]
    async fn a_guesser_is_locked_out_of_an_account_but_its_owner_elsewhere_is_not() {
        let limiter = LoginLimiter::new(Duration::from_millis(300));
        for _ in 0..PER_ACCOUNT {
            assert_eq!(limiter.check(ip(1), "ocean").await, Ok(()));
            limiter.failed(ip(1), "ocean").await;
        }
        assert!(limiter.check(ip(1), "ocean").await.is_err());
        // The rightful owner, from its own address, is unaffected.
        assert_eq!(limiter.check(ip(2), "ocean").await, Ok(()));
        assert_eq!(limiter.check(ip(1), "other").await, Ok(()));
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert_eq!(limiter.check(ip(1), "ocean").await, Ok(()));
        limiter.failed(ip(1), "ocean").await;
        limiter.succeeded(ip(1), "ocean").await;
        assert_eq!(limiter.check(ip(1), "ocean").await, Ok(()));
    }

    #[tokio::test]
    async fn one_address_guessing_many_accounts_is_locked_out_of_all() {
        let limiter = LoginLimiter::new(Duration::from_secs(60));
        for n in 0..PER_SOURCE {
            limiter.failed(ip(3), &format!("client-{n}")).await;
        }
        assert!(limiter.check(ip(3), "fresh-account").await.is_err());
        assert_eq!(limiter.check(ip(4), "fresh-account").await, Ok(()));
    }

    #[tokio::test]
    async fn a_flood_of_addresses_stays_bounded_and_locks_out_no_one_else() {
        let limiter = LoginLimiter::new(Duration::from_secs(60));
        for n in 0..(MAX_BUCKETS as u32 * 2) {
            limiter
                .failed(IpAddr::from(((n + 1) << 8).to_be_bytes()), "ocean")
                .await;
        }
        assert!(limiter.buckets.lock().unwrap().counts.len() <= MAX_BUCKETS);
        // Neither a new address nor one that never failed is refused.
        assert_eq!(limiter.check(ip(200), "ocean").await, Ok(()));
        assert_eq!(
            limiter.check(IpAddr::from([10, 9, 9, 9]), "ocean").await,
            Ok(())
        );
    }

    #[tokio::test]
    async fn an_ipv6_host_counts_by_its_slash_64() {
        let limiter = LoginLimiter::new(Duration::from_secs(60));
        for n in 0..PER_ACCOUNT {
            let address: IpAddr = format!("2001:db8:1:2::{n:x}").parse().unwrap();
            limiter.failed(address, "ocean").await;
        }
        let same_64: IpAddr = "2001:db8:1:2:ffff::1".parse().unwrap();
        let other_64: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(limiter.check(same_64, "ocean").await.is_err());
        assert_eq!(limiter.check(other_64, "ocean").await, Ok(()));
    }
}
