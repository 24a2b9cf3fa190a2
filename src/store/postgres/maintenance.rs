//! Exports, retention and readiness on PostgreSQL.

use async_trait::async_trait;
use time::OffsetDateTime;

use super::deliveries::{to_i64, to_u64};
use super::{PgStore, db_error};
use crate::domain::ReferralRef;
use crate::store::error::StoreError;
use crate::store::maintenance::{MaintenanceStore, ModifiedBatch};

/// Versions purged per transaction.
const PURGE_CHUNK: i64 = 256;

/// The cursor of [`MaintenanceStore::referrals_modified`]: the modification time in
/// microseconds since the epoch (8 bytes, big-endian), then the referral reference.
fn cursor(modified_at: OffsetDateTime, referral: &str) -> Vec<u8> {
    let micros = i64::try_from(modified_at.unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX);
    let mut key = micros.to_be_bytes().to_vec();
    key.extend_from_slice(referral.as_bytes());
    key
}

fn read_cursor(key: &[u8]) -> Result<(OffsetDateTime, String), StoreError> {
    let bad = || StoreError::corrupt("an export cursor is not one this store gave");
    let (micros, referral) = key.split_first_chunk::<8>().ok_or_else(bad)?;
    let at =
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(i64::from_be_bytes(*micros)) * 1000)
            .map_err(|_| bad())?;
    Ok((at, String::from_utf8(referral.to_vec()).map_err(|_| bad())?))
}

#[async_trait]
impl MaintenanceStore for PgStore {
    async fn referrals_modified(
        &self,
        from: Option<OffsetDateTime>,
        to: Option<OffsetDateTime>,
        after: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<ModifiedBatch, StoreError> {
        self.bounded("listing referrals", async {
            let after = after.as_deref().map(read_cursor).transpose()?;
            let (after_at, after_referral) = after.unzip();
            let client = self.client().await?;
            let rows = client
                .query(
                    &client
                        .prepare_cached(
                            "SELECT modified_at, referral, record FROM referrals
                     WHERE version > 0
                       AND ($1::timestamptz IS NULL OR modified_at >= $1)
                       AND ($2::timestamptz IS NULL OR modified_at <= $2)
                       AND ($3::timestamptz IS NULL OR (modified_at, referral) > ($3, $4::text))
                     ORDER BY modified_at, referral LIMIT $5",
                        )
                        .await
                        .map_err(db_error("preparing a statement"))?,
                    &[
                        &from,
                        &to,
                        &after_at,
                        &after_referral,
                        &to_i64(limit as u64),
                    ],
                )
                .await
                .map_err(db_error("reading referrals by modification"))?;
            let mut batch = ModifiedBatch::default();
            for row in &rows {
                batch
                    .referrals
                    .push(self.open_referral(row.get(1), row.get::<_, &[u8]>(2))?);
            }
            if rows.len() == limit
                && let Some(last) = rows.last()
            {
                batch.next = Some(cursor(last.get(0), last.get(1)));
            }
            Ok(batch)
        })
        .await
    }

    async fn mark_exported(
        &self,
        written: &[(ReferralRef, OffsetDateTime)],
        at: OffsetDateTime,
    ) -> Result<usize, StoreError> {
        let mut marked = 0;
        // Rows are locked in referral order, so two exports marking at once cannot deadlock.
        let mut written = written.to_vec();
        written.sort_by(|a, b| a.0.cmp(&b.0));
        for chunk in written.chunks(500) {
            let mut client = self.client().await?;
            let tx = client
                .transaction()
                .await
                .map_err(db_error("starting export marks"))?;
            for (referral, modified_at) in chunk {
                let Some(row) = tx
                    .query_opt(
&tx.prepare_cached("SELECT record FROM referrals WHERE referral = $1 AND version > 0 FOR UPDATE").await.map_err(db_error("preparing a statement"))?,
                        &[&referral.as_str()],
                    )
                    .await
                    .map_err(db_error("reading a referral to mark"))?
                else {
                    continue;
                };
                let mut record = self.open_referral(referral.as_str(), row.get::<_, &[u8]>(0))?;
                // Modified since it was written: left unexported.
                if record.modified_at != *modified_at {
                    continue;
                }
                record.exported_at = Some(at);
                tx.execute(
                    &tx.prepare_cached("UPDATE referrals SET record = $2 WHERE referral = $1")
                        .await
                        .map_err(db_error("preparing a statement"))?,
                    &[&referral.as_str(), &self.seal_referral(&record)?],
                )
                .await
                .map_err(db_error("marking a referral exported"))?;
                marked += 1;
            }
            tx.commit()
                .await
                .map_err(db_error("committing export marks"))?;
        }
        Ok(marked)
    }

    async fn purge_versions_before(&self, cutoff: OffsetDateTime) -> Result<u64, StoreError> {
        let mut purged = 0;
        loop {
            let mut client = self.client().await?;
            let tx = client
                .transaction()
                .await
                .map_err(db_error("starting a purge"))?;
            // Every version but its referral's latest, received before the cutoff, not purged.
            let rows = tx
                .query(
                    &tx.prepare_cached(
                        "SELECT v.referral, v.version, v.record FROM versions v
                     JOIN events e ON e.id = v.event_id
                     JOIN referrals r ON r.referral = v.referral
                     WHERE e.received_at < $1 AND v.version < r.version AND v.payload IS NOT NULL
                     LIMIT $2 FOR UPDATE OF v",
                    )
                    .await
                    .map_err(db_error("preparing a statement"))?,
                    &[&cutoff, &PURGE_CHUNK],
                )
                .await
                .map_err(db_error("finding versions to purge"))?;
            if rows.is_empty() {
                return Ok(purged);
            }
            for row in &rows {
                let (referral, number) = (row.get::<_, &str>(0), row.get::<_, i64>(1));
                let mut version =
                    self.open_version(referral, to_u64(number), row.get::<_, &[u8]>(2))?;
                version.purged = true;
                version.summary = crate::domain::Summary::default();
                version.problems.clear();
                tx.execute(
&tx.prepare_cached("UPDATE versions SET payload = NULL, record = $3 WHERE referral = $1 AND version = $2").await.map_err(db_error("preparing a statement"))?,
                    &[&referral, &number, &self.seal_version(referral, &version)?],
                )
                .await
                .map_err(db_error("purging a version"))?;
                // Its documents go with it.
                let documents = tx
                    .query(
                        &tx.prepare_cached(
                            "SELECT idx, record FROM documents
                             WHERE referral = $1 AND version = $2 FOR UPDATE",
                        )
                        .await
                        .map_err(db_error("preparing a statement"))?,
                        &[&referral, &number],
                    )
                    .await
                    .map_err(db_error("finding documents to purge"))?;
                for document in &documents {
                    let index: i32 = document.get(0);
                    let mut record = self.open_document(
                        referral,
                        to_u64(number),
                        u32::try_from(index).unwrap_or_default(),
                        document.get::<_, &[u8]>(1),
                    )?;
                    record.purge();
                    tx.execute(
                        &tx.prepare_cached(
                            "UPDATE documents SET bytes = NULL, state = $4, record = $5
                             WHERE referral = $1 AND version = $2 AND idx = $3",
                        )
                        .await
                        .map_err(db_error("preparing a statement"))?,
                        &[
                            &referral,
                            &number,
                            &index,
                            &record.state.as_str(),
                            &self.seal_document(&record)?,
                        ],
                    )
                    .await
                    .map_err(db_error("purging a document"))?;
                }
            }
            tx.commit().await.map_err(db_error("committing a purge"))?;
            purged += rows.len() as u64;
        }
    }

    async fn check_writable(&self) -> Result<(), StoreError> {
        self.bounded("writing the readiness row", async {
            let client = self.client().await?;
            client
                .execute(
                    &client
                        .prepare_cached(
                            // Rows of replica processes gone for a day are dropped on the way.
                            "WITH gone AS (
                                 DELETE FROM relay_ready
                                 WHERE replica <> $1 AND at < now() - interval '1 day')
                             INSERT INTO relay_ready (replica, at) VALUES ($1, now())
                             ON CONFLICT (replica) DO UPDATE SET at = excluded.at",
                        )
                        .await
                        .map_err(db_error("preparing a statement"))?,
                    &[&self.replica],
                )
                .await
                .map_err(db_error("writing the readiness row"))?;
            Ok(())
        })
        .await
    }
}
