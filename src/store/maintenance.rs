//! Whole-store work: reading referrals by modification time (exports), marking them exported,
//! purging old versions, and whether the store can write.

use std::collections::BTreeMap;
use std::path::Path;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::deliveries::ReferralRecord;
use super::error::StoreError;
use crate::domain::ReferralRef;

/// A batch of [`MaintenanceStore::referrals_modified`].
#[derive(Debug, Clone, Default)]
pub struct ModifiedBatch {
    pub referrals: Vec<ReferralRecord>,
    /// Where the next batch starts; `None` when the range is exhausted.
    pub next: Option<Vec<u8>>,
}

/// What a snapshot copied ([`MaintenanceStore::snapshot`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    /// Items per tree of the embedded store, by tree name.
    pub trees: BTreeMap<String, u64>,
    /// The last feed position in the snapshot.
    pub feed_seq: u64,
}

/// Whether the store can write, as `/readyz` and `/healthz` report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreHealth {
    /// Writes reach the disk.
    Writable,
    /// Writes failed and the store is trying to recover; it will once the disk takes writes.
    Recovering {
        for_secs: u64,
        attempts: u32,
        reason: String,
    },
    /// The store cannot recover by itself (corrupt): the process should be restarted and an
    /// operator look at it.
    Failed(String),
}

/// Exports, retention and health.
#[async_trait]
pub trait MaintenanceStore: Send + Sync {
    /// Referrals modified within `[from, to]` (either side open), in order of modification,
    /// at most `limit`, starting after `after` (a key from the previous batch).
    async fn referrals_modified(
        &self,
        from: Option<OffsetDateTime>,
        to: Option<OffsetDateTime>,
        after: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<ModifiedBatch, StoreError>;

    /// Sets `exported_at = at` on each referral whose modification time is still the one
    /// given (a referral modified since it was written is left unexported). Durable.
    async fn mark_exported(
        &self,
        written: &[(ReferralRef, OffsetDateTime)],
        at: OffsetDateTime,
    ) -> Result<usize, StoreError>;

    /// Purges the payload and summary of every version received before `cutoff` that is not
    /// its referral's latest; returns how many were purged. Durable.
    async fn purge_versions_before(&self, cutoff: OffsetDateTime) -> Result<u64, StoreError>;

    /// Writes a consistent copy of the whole store, as stored (sealed records stay sealed),
    /// into the directory `into` (created; its `sled` directory is a store `SledStore` opens),
    /// while the service runs: every write acknowledged before the call is in it. `None` when
    /// the backend makes no such copies (PostgreSQL: its own tools back it up).
    ///
    /// # Errors
    /// As for writes: the copy is made by the store's writer.
    async fn snapshot(&self, into: &Path) -> Result<Option<SnapshotInfo>, StoreError> {
        let _ = into;
        Ok(None)
    }

    /// Writes and syncs a marker record: proves the store can take deliveries now.
    async fn check_writable(&self) -> Result<(), StoreError>;

    /// Whether the store can write, is recovering from a write failure, or cannot recover.
    fn health(&self) -> StoreHealth {
        StoreHealth::Writable
    }
}
