//! Deliveries on PostgreSQL: each one a new version of its referral, in one transaction.

use async_trait::async_trait;
use bytes::Bytes;

use super::{PgStore, db_error};
use crate::domain::ReferralRef;
use crate::store::deliveries::{
    DeliveryStore, NewDelivery, PutOutcome, ReferralRecord, VersionRecord,
};
use crate::store::error::StoreError;

/// A count or number kept as `bigint`.
pub(super) fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

pub(super) fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or_default()
}

impl PgStore {
    /// The delivery's transaction. A duplicate or a referral owned elsewhere writes nothing.
    async fn write_delivery(&self, d: &NewDelivery) -> Result<PutOutcome, StoreError> {
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(db_error("starting a delivery"))?;
        let referral = d.referral.as_str();
        // Kept as its SHA-256: a `text` column cannot hold the NUL a sender's id may carry.
        let dedup_key = super::super::sha256_hex(d.dedup_key.as_bytes());

        // Claim the delivery first: a second replica posting the same delivery waits here for
        // this transaction, then finds the claim and reports the version stored.
        let claimed = tx
            .execute(
                &tx.prepare_cached(
                    "INSERT INTO deliveries (dedup_key, referral, version) VALUES ($1, $2, 0)
                 ON CONFLICT (dedup_key) DO NOTHING",
                )
                .await
                .map_err(db_error("preparing a statement"))?,
                &[&dedup_key, &referral],
            )
            .await
            .map_err(db_error("claiming a delivery"))?;
        if claimed == 0 {
            let version: i64 = tx
                .query_one(
                    &tx.prepare_cached("SELECT version FROM deliveries WHERE dedup_key = $1")
                        .await
                        .map_err(db_error("preparing a statement"))?,
                    &[&dedup_key],
                )
                .await
                .map_err(db_error("reading a stored delivery"))?
                .get(0);
            return Ok(PutOutcome::Duplicate {
                version: to_u64(version),
            });
        }

        // The referral's row, locked: created empty (version 0) when new, so two first
        // deliveries of one referral follow one another.
        tx.execute(
            &tx.prepare_cached(
                "INSERT INTO referrals (referral, version, modified_at, record)
             VALUES ($1, 0, now(), ''::bytea) ON CONFLICT (referral) DO NOTHING",
            )
            .await
            .map_err(db_error("preparing a statement"))?,
            &[&referral],
        )
        .await
        .map_err(db_error("creating a referral"))?;
        let row = tx
            .query_one(
                &tx.prepare_cached(
                    "SELECT version, record FROM referrals WHERE referral = $1 FOR UPDATE",
                )
                .await
                .map_err(db_error("preparing a statement"))?,
                &[&referral],
            )
            .await
            .map_err(db_error("locking a referral"))?;
        let previous: Option<ReferralRecord> = if row.get::<_, i64>(0) == 0 {
            None
        } else {
            Some(self.open_referral(referral, row.get::<_, &[u8]>(1))?)
        };

        // A referral belongs to the integration that first delivered it.
        let owner = previous.as_ref().map_or_else(
            || d.integration.clone(),
            |p| p.owner.clone().unwrap_or_else(|| p.integration.clone()),
        );
        // A referral's modification time never goes backwards, nor falls behind its last export
        // (listings since a time and "unexported only" rely on both), whatever the order in
        // which replicas' deliveries of it commit or their clocks.
        let received_at = previous.as_ref().map_or(d.received_at, |p| {
            let after_export = p.exported_at.map(|at| at + time::Duration::microseconds(1));
            d.received_at
                .max(p.modified_at)
                .max(after_export.unwrap_or(p.modified_at))
        });
        // Its feed position is not known yet (see the sequencer): read back from `events`.
        let (record, version_record) =
            match d.next_version(previous.as_ref(), owner, received_at, 0) {
                Ok(made) => made,
                Err(owner) => {
                    tx.rollback()
                        .await
                        .map_err(db_error("rolling back a delivery"))?;
                    return Ok(PutOutcome::OwnedElsewhere { owner });
                }
            };
        let (version, service_id) = (record.version, record.service_id.clone());
        let event_id: i64 = tx
            .query_one(
                &tx.prepare_cached(
                    "INSERT INTO events (referral, version, event, service_id, received_at)
                 VALUES ($1, $2, $3, $4, $5) RETURNING id",
                )
                .await
                .map_err(db_error("preparing a statement"))?,
                &[
                    &referral,
                    &to_i64(version),
                    &d.event.as_str(),
                    &service_id.as_ref().map(|s| s.as_str()),
                    &received_at,
                ],
            )
            .await
            .map_err(db_error("adding to the feed"))?
            .get(0);
        tx.execute(
            &tx.prepare_cached(
                "INSERT INTO versions (referral, version, event_id, record, payload)
             VALUES ($1, $2, $3, $4, $5)",
            )
            .await
            .map_err(db_error("preparing a statement"))?,
            &[
                &referral,
                &to_i64(version),
                &event_id,
                &self.seal_version(referral, &version_record)?,
                &self.seal_payload(referral, version, &d.raw)?,
            ],
        )
        .await
        .map_err(db_error("storing a version"))?;
        tx.execute(
&tx.prepare_cached("UPDATE referrals SET version = $2, modified_at = $3, record = $4 WHERE referral = $1").await.map_err(db_error("preparing a statement"))?,
            &[
                &referral,
                &to_i64(version),
                &received_at,
                &self.seal_referral(&record)?,
            ],
        )
        .await
        .map_err(db_error("updating a referral"))?;
        tx.execute(
            &tx.prepare_cached("UPDATE deliveries SET version = $2 WHERE dedup_key = $1")
                .await
                .map_err(db_error("preparing a statement"))?,
            &[&dedup_key, &to_i64(version)],
        )
        .await
        .map_err(db_error("recording a delivery"))?;
        // Stored, then audited, or neither: the entry is part of the same transaction.
        super::audit::insert(
            &tx,
            received_at,
            "DELIVERY_STORED",
            d.integration.as_str(),
            &serde_json::json!({
                "referral": referral,
                "version": version,
                "event": d.event.as_str(),
            }),
        )
        .await?;
        tx.commit()
            .await
            .map_err(db_error("committing a delivery"))?;
        Ok(PutOutcome::Stored { version })
    }
}

#[async_trait]
impl DeliveryStore for PgStore {
    async fn put_delivery(&self, delivery: NewDelivery) -> Result<PutOutcome, StoreError> {
        let outcome = self.write_delivery(&delivery).await?;
        if matches!(outcome, PutOutcome::Stored { .. }) {
            // Durable now. If the run fails, the sweep gives the event its position later.
            if let Err(e) = self.sequence().await {
                tracing::warn!(error = %e.chain(), "PostgreSQL sequencer failed after a delivery; the sweep retries");
            }
        }
        Ok(outcome)
    }

    async fn referral(&self, referral: &ReferralRef) -> Result<Option<ReferralRecord>, StoreError> {
        let client = self.client().await?;
        client
            .query_opt(
                &client
                    .prepare_cached(
                        "SELECT record FROM referrals WHERE referral = $1 AND version > 0",
                    )
                    .await
                    .map_err(db_error("preparing a statement"))?,
                &[&referral.as_str()],
            )
            .await
            .map_err(db_error("reading a referral"))?
            .map(|row| self.open_referral(referral.as_str(), row.get::<_, &[u8]>(0)))
            .transpose()
    }

    async fn versions(&self, referral: &ReferralRef) -> Result<Vec<VersionRecord>, StoreError> {
        let client = self.client().await?;
        client
            .query(
                &client
                    .prepare_cached(
                        "SELECT v.record, e.seq, v.version FROM versions v JOIN events e ON e.id = v.event_id
                 WHERE v.referral = $1 ORDER BY v.version",
                    )
                    .await
                    .map_err(db_error("preparing a statement"))?,
                &[&referral.as_str()],
            )
            .await
            .map_err(db_error("reading versions"))?
            .iter()
            .map(|row| {
                let version = to_u64(row.get(2));
                let mut record =
                    self.open_version(referral.as_str(), version, row.get::<_, &[u8]>(0))?;
                record.seq = row.get::<_, Option<i64>>(1).map_or(0, to_u64);
                Ok(record)
            })
            .collect()
    }

    async fn payload(
        &self,
        referral: &ReferralRef,
        version: u64,
    ) -> Result<Option<Bytes>, StoreError> {
        let client = self.client().await?;
        Ok(client
            .query_opt(
                &client
                    .prepare_cached(
                        "SELECT payload FROM versions WHERE referral = $1 AND version = $2",
                    )
                    .await
                    .map_err(db_error("preparing a statement"))?,
                &[&referral.as_str(), &to_i64(version)],
            )
            .await
            .map_err(db_error("reading a payload"))?
            .and_then(|row| row.get::<_, Option<Vec<u8>>>(0))
            .map(|stored| self.open_payload(referral.as_str(), version, &stored))
            .transpose()?)
    }
}
