//! The feed: stored deliveries in the order they were stored, shown only once on disk.

use async_trait::async_trait;
use time::OffsetDateTime;

use super::handle::SledStore;
use super::keys::referral_seq_key;
use super::open::Open;
use super::trees::unavailable;
use crate::store::deliveries::VersionRecord;
use crate::store::error::StoreError;
use crate::store::feed::{ChangedReferrals, EventRecord, FeedStore};
use crate::store::record::VERSIONS;
use crate::store::record::decode;

impl Open {
    async fn events_after(&self, after: u64, limit: usize) -> Result<Vec<EventRecord>, StoreError> {
        let durable = self.durable_seq();
        if after >= durable {
            return Ok(Vec::new());
        }
        let range = after.saturating_add(1).to_be_bytes()..=durable.to_be_bytes();
        self.trees
            .events
            .range(range)
            .take(limit)
            .map(|item| decode(&item.map_err(unavailable)?.1))
            .collect()
    }

    async fn seq_before(&self, since: OffsetDateTime) -> Result<u64, StoreError> {
        // Receive times are non-decreasing along the feed: binary search for the first
        // entry at or after `since`.
        let (mut low, mut high) = (1, self.durable_seq() + 1);
        while low < high {
            let middle = low + (high - low) / 2;
            let event: EventRecord = match self
                .trees
                .events
                .get(middle.to_be_bytes())
                .map_err(unavailable)?
            {
                Some(bytes) => decode(&bytes)?,
                None => {
                    return Err(StoreError::corrupt(format!(
                        "feed entry {middle} is missing"
                    )));
                }
            };
            if event.received_at < since {
                low = middle + 1;
            } else {
                high = middle;
            }
        }
        Ok(low - 1)
    }

    async fn referrals_changed(
        &self,
        after: u64,
        until: u64,
        max_events: usize,
    ) -> Result<ChangedReferrals, StoreError> {
        let mut referrals = Vec::new();
        let mut scanned_to = after;
        if after >= until {
            return Ok(ChangedReferrals {
                referrals,
                scanned_to: until,
            });
        }
        let range = after.saturating_add(1).to_be_bytes()..=until.to_be_bytes();
        for item in self.trees.events.range(range).take(max_events) {
            let event: EventRecord = decode(&item.map_err(unavailable)?.1)?;
            scanned_to = event.seq;
            // Listed at its latest change up to `until`: skip this entry if the referral has
            // a later version that is still within the bound.
            let next_key = referral_seq_key(&event.referral, event.version + 1);
            let next = self
                .trees
                .versions
                .get(&next_key)
                .map_err(unavailable)?
                .map(|v| self.codec.decode::<VersionRecord>(VERSIONS, &next_key, &v))
                .transpose()?;
            if next.is_some_and(|n| n.seq <= until) {
                continue;
            }
            if let Some(record) = self.referral_record(event.referral.as_str().as_bytes())? {
                referrals.push((event.seq, record));
            }
        }
        if referrals.is_empty() && scanned_to == after {
            scanned_to = until;
        }
        Ok(ChangedReferrals {
            referrals,
            scanned_to,
        })
    }
}

#[async_trait]
impl FeedStore for SledStore {
    async fn events_after(&self, after: u64, limit: usize) -> Result<Vec<EventRecord>, StoreError> {
        let open = self.open_db()?;
        self.checked(open.events_after(after, limit).await)
    }

    fn durable_seq(&self) -> u64 {
        *self.feed().borrow()
    }

    async fn wait_for_events_after(&self, after: u64) {
        let mut feed = self.feed();
        if feed.wait_for(|seq| *seq > after).await.is_err() {
            // The store is closing: nothing new will arrive.
            std::future::pending::<()>().await;
        }
    }

    async fn seq_before(&self, since: OffsetDateTime) -> Result<u64, StoreError> {
        let open = self.open_db()?;
        self.checked(open.seq_before(since).await)
    }

    async fn referrals_changed(
        &self,
        after: u64,
        until: u64,
        max_events: usize,
    ) -> Result<ChangedReferrals, StoreError> {
        let open = self.open_db()?;
        self.checked(open.referrals_changed(after, until, max_events).await)
    }
}
