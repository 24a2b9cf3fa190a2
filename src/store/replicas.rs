//! What replicas of the service share through the store beyond referrals: the OAuth2 token
//! signing key, and the counts of failed logins at the token endpoint. A store that only one
//! process opens (the embedded one) shares nothing: the key is a file in its data dir and the
//! counts are kept in memory. The defaults say so.

use std::time::Duration;

use async_trait::async_trait;

use super::error::StoreError;

/// Failed logins counted in one bucket within the current window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginFailures {
    pub failures: u32,
    /// Whole seconds until the bucket's window ends (at least 1 while it is open).
    pub window_left_secs: u64,
}

/// Shared state of several replicas. See the module documentation.
#[async_trait]
pub trait ReplicaStore: Send + Sync {
    /// The token signing key every replica uses: `candidate` (fresh random bytes) is kept when
    /// no replica has kept one yet, and the kept key is returned. `None` when this store is not
    /// shared (the caller keeps its own key).
    async fn shared_signing_key(&self, candidate: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let _ = candidate;
        Ok(None)
    }

    /// Whether failed logins are counted here (so every replica sees them) rather than in the
    /// memory of each process.
    fn counts_login_failures(&self) -> bool {
        false
    }

    /// The failures counted in each of `buckets` (same order) within a window of `window`;
    /// a bucket with none, or whose window has passed, has `failures` 0.
    async fn login_failures(
        &self,
        buckets: &[String],
        window: Duration,
    ) -> Result<Vec<LoginFailures>, StoreError> {
        let _ = window;
        Ok(vec![
            LoginFailures {
                failures: 0,
                window_left_secs: 0,
            };
            buckets.len()
        ])
    }

    /// Counts one failure in each of `buckets`; a bucket whose window has passed starts a new
    /// one.
    async fn count_login_failure(
        &self,
        buckets: &[String],
        window: Duration,
    ) -> Result<(), StoreError> {
        let _ = (buckets, window);
        Ok(())
    }

    /// Forgets the failures of `bucket` (a successful login).
    async fn clear_login_failures(&self, bucket: &str) -> Result<(), StoreError> {
        let _ = bucket;
        Ok(())
    }
}
