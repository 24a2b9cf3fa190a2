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
}

/// One bucket: failures counted, attempts checked whose outcome is not counted yet, and when
/// its window started.
#[derive(Debug, Clone, Copy)]
struct Count {
    failures: u32,
    pending: u32,
    since: Instant,
}

/// The counts, and the order their buckets were made in (to forget the oldest first).
struct Buckets {
    counts: HashMap<Key, Count>,
    order: VecDeque<Key>,
    /// When buckets whose window has passed were last dropped.
    swept: Instant,
}

/// An attempt that passed [`LoginLimiter::check`]: it holds a place in its buckets, so parallel
/// guesses cannot all pass the check before any failure is counted. Say how it ended with
/// [`failed`](Self::failed) or [`succeeded`](Self::succeeded); dropped without either (the
/// request was cancelled), its place is given back.
pub struct Attempt<'a> {
    limiter: &'a LoginLimiter,
    source: IpAddr,
    account: String,
    open: bool,
}

impl Attempt<'_> {
    /// Counts the attempt as a failed login, here and in the shared store.
    pub async fn failed(mut self) {
        self.open = false;
        let limiter = self.limiter;
        limiter.settle(self.source, &self.account, true);
        if let Some(store) = &limiter.shared {
            let buckets: Vec<String> = keys(self.source, &self.account)
                .iter()
                .map(|(key, _)| key.bucket())
                .collect();
            if let Err(e) = store.count_login_failure(&buckets, limiter.window).await {
                tracing::warn!(error = %e.chain(), "cannot count a failed login in the shared store");
            }
        }
    }

    /// A successful login clears the failures of that account from that address.
    pub async fn succeeded(mut self) {
        self.open = false;
        let limiter = self.limiter;
        limiter.settle(self.source, &self.account, false);
        limiter
            .lock()
            .counts
            .remove(&Key::Account(self.source, self.account.clone()));
        if let Some(store) = &limiter.shared {
            let bucket = Key::Account(self.source, self.account.clone()).bucket();
            if let Err(e) = store.clear_login_failures(&bucket).await {
                tracing::warn!(error = %e.chain(), "cannot clear failed logins in the shared store");
            }
        }
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if self.open {
            self.limiter.settle(self.source, &self.account, false);
        }
    }
}

impl LoginLimiter {
    /// Counts failures within windows of `window`, in memory.
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            buckets: Mutex::new(Buckets {
                counts: HashMap::new(),
                order: VecDeque::new(),
                swept: Instant::now(),
            }),
            shared: None,
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

    /// An attempt of `source` at `account`, or `Err(seconds to wait)` while `source` may not try
    /// it: counted in memory here (failures and attempts still being checked), or in the shared
    /// store by any replica.
    pub async fn check(&self, source: IpAddr, account: &str) -> Result<Attempt<'_>, u64> {
        let source = counted(source);
        self.reserve(source, account)?;
        let attempt = Attempt {
            limiter: self,
            source,
            account: account.to_owned(),
            open: true,
        };
        let Some(store) = &self.shared else {
            return Ok(attempt);
        };
        let keys = keys(source, account);
        let buckets: Vec<String> = keys.iter().map(|(key, _)| key.bucket()).collect();
        let wait = match store.login_failures(&buckets, self.window).await {
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
        if wait > 0 { Err(wait) } else { Ok(attempt) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Buckets> {
        self.buckets.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Refuses while failures and pending attempts reach a bucket's limit; otherwise counts one
    /// more pending attempt in each bucket.
    fn reserve(&self, source: IpAddr, account: &str) -> Result<(), u64> {
        let mut buckets = self.lock();
        let now = Instant::now();
        if now.duration_since(buckets.swept) >= self.window {
            let window = self.window;
            buckets
                .counts
                .retain(|_, count| count.pending > 0 || count.since.elapsed() < window);
            let Buckets { counts, order, .. } = &mut *buckets;
            order.retain(|key| counts.contains_key(key));
            buckets.swept = now;
        }
        let mut wait = 0;
        for (key, max) in keys(source, account) {
            let Some(count) = buckets.counts.get_mut(&key) else {
                continue;
            };
            let elapsed = count.since.elapsed();
            if elapsed >= self.window {
                count.failures = 0;
                count.since = now;
            } else if count.failures + count.pending >= max {
                wait = wait.max((self.window - elapsed).as_secs().max(1));
            }
        }
        if wait > 0 {
            return Err(wait);
        }
        let Buckets { counts, order, .. } = &mut *buckets;
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
            counts
                .entry(key)
                .or_insert(Count {
                    failures: 0,
                    pending: 0,
                    since: now,
                })
                .pending += 1;
        }
        // Keys removed by a success or the sweep linger in the order; keep it in proportion.
        if order.len() > 2 * MAX_BUCKETS {
            order.retain(|key| counts.contains_key(key));
        }
        Ok(())
    }

    /// An attempt's outcome: its pending place given back, and counted as a failure if it was.
    fn settle(&self, source: IpAddr, account: &str, failed: bool) {
        let mut buckets = self.lock();
        for (key, _) in keys(source, account) {
            // A bucket forgotten meanwhile (the table was full) is not made again.
            if let Some(count) = buckets.counts.get_mut(&key) {
                count.pending = count.pending.saturating_sub(1);
                if failed {
                    if count.since.elapsed() >= self.window {
                        count.failures = 0;
                        count.since = Instant::now();
                    }
                    count.failures += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    async fn fail(limiter: &LoginLimiter, source: IpAddr, account: &str) {
        limiter.check(source, account).await.unwrap().failed().await;
    }

    #[tokio::test]
    async fn a_guesser_is_locked_out_of_an_account_but_its_owner_elsewhere_is_not() {
        let limiter = LoginLimiter::new(Duration::from_millis(300));
        for _ in 0..PER_ACCOUNT {
            fail(&limiter, ip(1), "ocean").await;
        }
        assert!(limiter.check(ip(1), "ocean").await.is_err());
        // The rightful owner, from its own address, is unaffected.
        assert!(limiter.check(ip(2), "ocean").await.is_ok());
        assert!(limiter.check(ip(1), "other").await.is_ok());
        tokio::time::sleep(Duration::from_millis(350)).await;
        fail(&limiter, ip(1), "ocean").await;
        limiter
            .check(ip(1), "ocean")
            .await
            .unwrap()
            .succeeded()
            .await;
        assert!(limiter.check(ip(1), "ocean").await.is_ok());
    }

    #[tokio::test]
    async fn attempts_in_flight_count_against_the_limit_until_they_end() {
        let limiter = LoginLimiter::new(Duration::from_secs(60));
        let mut open = Vec::new();
        for _ in 0..PER_ACCOUNT {
            open.push(limiter.check(ip(5), "ocean").await.unwrap());
        }
        // Five checked at once, none counted yet: a sixth is refused.
        assert!(limiter.check(ip(5), "ocean").await.is_err());
        // One given up (the request was cancelled): its place comes back.
        drop(open.pop());
        let sixth = limiter.check(ip(5), "ocean").await.unwrap();
        for attempt in open {
            attempt.failed().await;
        }
        sixth.failed().await;
        assert!(limiter.check(ip(5), "ocean").await.is_err());
        let count = limiter.lock().counts[&Key::Account(ip(5), "ocean".into())];
        assert_eq!((count.failures, count.pending), (PER_ACCOUNT, 0));
    }

    #[tokio::test]
    async fn buckets_whose_window_passed_are_dropped_without_being_looked_up() {
        let limiter = LoginLimiter::new(Duration::from_millis(100));
        for n in 0..50 {
            fail(&limiter, ip(n), "ocean").await;
        }
        assert_eq!(limiter.lock().counts.len(), 100);
        tokio::time::sleep(Duration::from_millis(150)).await;
        fail(&limiter, ip(200), "ocean").await;
        let buckets = limiter.lock();
        assert_eq!((buckets.counts.len(), buckets.order.len()), (2, 2));
    }

    #[tokio::test]
    async fn one_address_guessing_many_accounts_is_locked_out_of_all() {
        let limiter = LoginLimiter::new(Duration::from_secs(60));
        for n in 0..PER_SOURCE {
            fail(&limiter, ip(3), &format!("client-{n}")).await;
        }
        assert!(limiter.check(ip(3), "fresh-account").await.is_err());
        assert!(limiter.check(ip(4), "fresh-account").await.is_ok());
    }

    #[tokio::test]
    async fn a_flood_of_addresses_stays_bounded_and_locks_out_no_one_else() {
        let limiter = LoginLimiter::new(Duration::from_secs(60));
        for n in 0..(MAX_BUCKETS as u32 * 2) {
            fail(
                &limiter,
                IpAddr::from(((n + 1) << 8).to_be_bytes()),
                "ocean",
            )
            .await;
        }
        assert!(limiter.lock().counts.len() <= MAX_BUCKETS);
        // Neither a new address nor one that never failed is refused.
        assert!(limiter.check(ip(200), "ocean").await.is_ok());
        assert!(
            limiter
                .check(IpAddr::from([10, 9, 9, 9]), "ocean")
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn an_ipv6_host_counts_by_its_slash_64() {
        let limiter = LoginLimiter::new(Duration::from_secs(60));
        for n in 0..PER_ACCOUNT {
            let address: IpAddr = format!("2001:db8:1:2::{n:x}").parse().unwrap();
            fail(&limiter, address, "ocean").await;
        }
        let same_64: IpAddr = "2001:db8:1:2:ffff::1".parse().unwrap();
        let other_64: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(limiter.check(same_64, "ocean").await.is_err());
        assert!(limiter.check(other_64, "ocean").await.is_ok());
    }
}
