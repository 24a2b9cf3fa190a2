//! The ordered feed of stored deliveries, and the referrals as they stood at a point of it.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::deliveries::ReferralRecord;
use super::error::StoreError;
use crate::domain::{EventCode, ReferralRef, ServiceId};

/// A slice of [`FeedStore::referrals_changed`].
#[derive(Debug, Clone)]
pub struct ChangedReferrals {
    /// `(seq of the latest change up to the bound, current record)`, in feed order.
    pub referrals: Vec<(u64, ReferralRecord)>,
    /// The last feed sequence read; the next slice starts after it.
    pub scanned_to: u64,
}

/// One entry of the ordered feed of stored deliveries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    pub seq: u64,
    pub referral: ReferralRef,
    pub version: u64,
    pub event: EventCode,
    pub service_id: Option<ServiceId>,
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
    /// The referral's summary fields this version changed (JSON names; see
    /// [`crate::domain::Summary::differences`]). No values: the feed is not sealed, so it keeps
    /// no patient data.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<String>,
}

/// Reading the feed.
#[async_trait]
pub trait FeedStore: Send + Sync {
    /// Feed entries with a sequence number greater than `after`, in order. Only entries that
    /// are on disk are shown, so a consumer never sees an event a crash could take back.
    async fn events_after(&self, after: u64, limit: usize) -> Result<Vec<EventRecord>, StoreError>;

    /// The highest feed sequence on disk, as this process knows it: exact for the embedded
    /// store; on PostgreSQL it may lag another replica's (or this one's own just acknowledged)
    /// deliveries by a notification or a run of the sequencer. [`FeedStore::feed_end`] reads it
    /// afresh.
    fn durable_seq(&self) -> u64;

    /// The highest feed sequence on disk, read afresh where [`FeedStore::durable_seq`] may lag:
    /// a replica learns another's deliveries by notification, so a consumer moving between
    /// replicas may hold a cursor this one has not heard of yet.
    async fn feed_end(&self) -> Result<u64, StoreError> {
        Ok(self.durable_seq())
    }

    /// Completes once the durable feed sequence is greater than `after` (callers bound the
    /// wait with a timeout).
    async fn wait_for_events_after(&self, after: u64);

    /// The feed sequence just before the first delivery received at or after `since`.
    async fn seq_before(&self, since: OffsetDateTime) -> Result<u64, StoreError>;

    /// Referrals as they stood at feed sequence `until`, in the order of their latest change up
    /// to `until`, for those whose latest change lies in `(after, until]`. Reads at most
    /// `max_events` feed entries; `scanned_to` says where to go on from.
    async fn referrals_changed(
        &self,
        after: u64,
        until: u64,
        max_events: usize,
    ) -> Result<ChangedReferrals, StoreError>;
}
