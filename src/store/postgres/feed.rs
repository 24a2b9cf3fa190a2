//! The feed on PostgreSQL: events with a position, given after commit by the
//! [`sequencer`](super::sequencer), so what a reader sees is always a gap-free prefix.

use async_trait::async_trait;
use time::OffsetDateTime;

use super::deliveries::{to_i64, to_u64};
use super::{PgStore, db_error};
use crate::domain::{EventCode, ReferralRef, ServiceId};
use crate::store::error::StoreError;
use crate::store::feed::{ChangedReferrals, EventRecord, FeedStore};

fn event(row: &tokio_postgres::Row) -> Result<EventRecord, StoreError> {
    let corrupt = |e| StoreError::corrupt("a feed entry holds an invalid identifier").caused_by(e);
    Ok(EventRecord {
        seq: to_u64(row.get(0)),
        referral: ReferralRef::parse(row.get(1)).map_err(corrupt)?,
        version: to_u64(row.get(2)),
        event: EventCode::parse(row.get(3)).map_err(corrupt)?,
        service_id: row
            .get::<_, Option<&str>>(4)
            .map(ServiceId::parse)
            .transpose()
            .map_err(corrupt)?,
        received_at: row.get(5),
        changes: row.get(6),
    })
}

#[async_trait]
impl FeedStore for PgStore {
    async fn events_after(&self, after: u64, limit: usize) -> Result<Vec<EventRecord>, StoreError> {
        self.bounded("reading the feed", async {
            self.settle().await?;
            let client = self.client().await?;
            client
                .query(
                    &client
                        .prepare_cached(
                            "SELECT seq, referral, version, event, service_id, received_at, changes FROM events
                     WHERE seq > $1 ORDER BY seq LIMIT $2",
                        )
                        .await
                        .map_err(db_error("preparing a statement"))?,
                    &[&to_i64(after), &to_i64(limit as u64)],
                )
                .await
                .map_err(db_error("reading the feed"))?
                .iter()
                .map(event)
                .collect()
        })
        .await
    }

    fn durable_seq(&self) -> u64 {
        *self.feed.borrow()
    }

    async fn feed_end(&self) -> Result<u64, StoreError> {
        self.bounded("reading the end of the feed", async {
            self.settle().await?;
            let client = self.client().await?;
            let end: i64 = client
                .query_one("SELECT coalesce(max(seq), 0) FROM events", &[])
                .await
                .map_err(db_error("reading the end of the feed"))?
                .get(0);
            self.published(to_u64(end));
            Ok(to_u64(end))
        })
        .await
    }

    async fn wait_for_events_after(&self, after: u64) {
        let mut feed = self.feed.subscribe();
        if feed.wait_for(|seq| *seq > after).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    async fn seq_before(&self, since: OffsetDateTime) -> Result<u64, StoreError> {
        self.bounded("reading the feed", async {
            // Receive times from several replicas are not ordered along the feed: the position just
            // before the first entry received at or after `since`. Not a cached statement: a generic
            // plan of it walks the whole feed.
            self.settle().await?;
            let client = self.client().await?;
            let seq: i64 = client
                .query_one(
                    "SELECT coalesce(
                         (SELECT min(seq) FROM events WHERE seq IS NOT NULL AND received_at >= $1),
                         (SELECT coalesce(max(seq), 0) + 1 FROM events)) - 1",
                    &[&since],
                )
                .await
                .map_err(db_error("finding a feed position by time"))?
                .get(0);
            Ok(to_u64(seq))
        })
        .await
    }

    async fn referrals_changed(
        &self,
        after: u64,
        until: u64,
        max_events: usize,
    ) -> Result<ChangedReferrals, StoreError> {
        self.bounded("reading the feed", async {
            if after >= until {
                return Ok(ChangedReferrals {
                    referrals: Vec::new(),
                    scanned_to: until,
                });
            }
            let client = self.client().await?;
            // Each referral listed at its latest change up to `until`: an entry is skipped when the
            // referral's next version is also within the bound.
            let rows = client
                .query(
                    &client
                        .prepare_cached(
                            "SELECT e.seq, r.record, r.referral,
                            (SELECT n.seq FROM versions nv JOIN events n ON n.id = nv.event_id
                             WHERE nv.referral = e.referral AND nv.version = e.version + 1)
                     FROM events e JOIN referrals r ON r.referral = e.referral
                     WHERE e.seq > $1 AND e.seq <= $2 ORDER BY e.seq LIMIT $3",
                        )
                        .await
                        .map_err(db_error("preparing a statement"))?,
                    &[&to_i64(after), &to_i64(until), &to_i64(max_events as u64)],
                )
                .await
                .map_err(db_error("reading changed referrals"))?;
            let mut referrals = Vec::new();
            let mut scanned_to = after;
            for row in &rows {
                let seq = to_u64(row.get(0));
                scanned_to = seq;
                let next: Option<i64> = row.get(3);
                if next.is_some_and(|n| to_u64(n) <= until) {
                    continue;
                }
                referrals.push((seq, self.open_referral(row.get(2), row.get::<_, &[u8]>(1))?));
            }
            if rows.is_empty() {
                scanned_to = until;
            }
            Ok(ChangedReferrals {
                referrals,
                scanned_to,
            })
        })
        .await
    }
}
