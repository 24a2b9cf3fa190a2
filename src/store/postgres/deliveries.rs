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

/// A statement parameter.
type Param<'a> = dyn tokio_postgres::types::ToSql + Sync + 'a;

/// The statements of a delivery's transaction, in the order it sends them.
const CLAIM: &str = "INSERT INTO deliveries (dedup_key, referral, version) VALUES ($1, $2, 0)
     ON CONFLICT (dedup_key) DO NOTHING";
const CREATE_REFERRAL: &str = "INSERT INTO referrals (referral, version, modified_at, record)
     VALUES ($1, 0, now(), ''::bytea) ON CONFLICT (referral) DO NOTHING";
const LOCK_REFERRAL: &str = "SELECT version, record FROM referrals WHERE referral = $1 FOR UPDATE";
const STORED_VERSION: &str = "SELECT version FROM deliveries WHERE dedup_key = $1";
/// The feed entry and the version in one statement (the version names the entry's row).
const WRITE_VERSION: &str = "WITH e AS (
         INSERT INTO events (referral, version, event, service_id, received_at)
         VALUES ($1, $2, $3, $4, $5) RETURNING id)
     INSERT INTO versions (referral, version, event_id, record, payload)
     SELECT $1, $2, e.id, $6, $7 FROM e";
const UPDATE_REFERRAL: &str =
    "UPDATE referrals SET version = $2, modified_at = $3, record = $4 WHERE referral = $1";
const RECORD_DELIVERY: &str = "UPDATE deliveries SET version = $2 WHERE dedup_key = $1";
const AUDIT: &str = "INSERT INTO audit (at, action, actor, details) VALUES ($1, $2, $3, $4)";

/// A pooled connection inside a transaction whose statements are sent back to back
/// (pipelined): `BEGIN` travels with the first statements and `COMMIT` with the last, so a
/// delivery costs two round trips to the database instead of one per statement. A statement
/// that fails aborts the transaction, so the `COMMIT` sent behind it rolls back; the delivery is
/// acknowledged only when every statement and the `COMMIT` succeeded. A transaction whose end
/// was not seen (an error, or the request dropped part way) takes its connection out of the pool
/// and closes it rather than let another request use it: before the `COMMIT` was sent, that
/// rolls the transaction back; after, it may have committed unacknowledged (the sender's retry
/// is then answered as a duplicate, and the sweep gives it its feed position).
struct Pipelined {
    client: Option<deadpool_postgres::Object>,
}

impl Pipelined {
    fn client(&self) -> &deadpool_postgres::Object {
        self.client
            .as_ref()
            .expect("the connection is held until the transaction ends")
    }

    /// Ends the transaction without writing, and gives the connection back (or, when the
    /// `ROLLBACK` fails, closes it).
    async fn rollback(mut self) -> Result<(), StoreError> {
        if let Some(client) = self.client.as_ref() {
            client
                .batch_execute("ROLLBACK")
                .await
                .map_err(db_error("rolling back a delivery"))?;
        }
        drop(self.client.take());
        Ok(())
    }

    /// The transaction ended (committed): the connection may go back to the pool.
    fn ended(mut self) {
        drop(self.client.take());
    }
}

impl Drop for Pipelined {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            drop(deadpool_postgres::Object::take(client));
        }
    }
}

impl PgStore {
    /// The delivery's transaction, in two round trips (see [`Pipelined`]). A duplicate or a
    /// referral owned elsewhere writes nothing.
    async fn write_delivery(&self, d: &NewDelivery) -> Result<PutOutcome, StoreError> {
        let client = self.client().await?;
        let prepared = tokio::try_join!(
            client.prepare_cached(CLAIM),
            client.prepare_cached(CREATE_REFERRAL),
            client.prepare_cached(LOCK_REFERRAL),
            client.prepare_cached(STORED_VERSION),
            client.prepare_cached(WRITE_VERSION),
            client.prepare_cached(UPDATE_REFERRAL),
            client.prepare_cached(RECORD_DELIVERY),
            client.prepare_cached(AUDIT),
        )
        .map_err(db_error("preparing a statement"))?;
        let (
            claim,
            create,
            lock,
            stored_version,
            write_version,
            update_referral,
            record_delivery,
            audit,
        ) = prepared;
        let tx = Pipelined {
            client: Some(client),
        };
        let c = tx.client();
        let referral = d.referral.as_str();
        // Kept as its SHA-256: a `text` column cannot hold the NUL a sender's id may carry.
        let dedup_key = super::super::sha256_hex(d.dedup_key.as_bytes());

        // First round trip. Claim the delivery first: a second replica posting the same
        // delivery waits here for this transaction, then finds the claim and reports the
        // version stored. Then the referral's row, locked: created empty (version 0) when new,
        // so two first deliveries of one referral follow one another.
        // `biased`: polled in order, so the statements go out in this order.
        let claim_params: [&Param<'_>; 2] = [&dedup_key, &referral];
        let referral_params: [&Param<'_>; 1] = [&referral];
        let (_, claimed, _, row) = tokio::try_join!(
            biased;
            c.batch_execute("BEGIN"),
            c.execute(&claim, &claim_params),
            c.execute(&create, &referral_params),
            c.query_one(&lock, &referral_params),
        )
        .map_err(db_error("claiming a delivery"))?;
        if claimed == 0 {
            let version: i64 = c
                .query_one(&stored_version, &[&dedup_key])
                .await
                .map_err(db_error("reading a stored delivery"))?
                .get(0);
            tx.rollback().await?;
            return Ok(PutOutcome::Duplicate {
                version: to_u64(version),
            });
        }
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
                    tx.rollback().await?;
                    return Ok(PutOutcome::OwnedElsewhere { owner });
                }
            };
        let version = record.version;
        let service_id = record.service_id.as_ref().map(|s| s.as_str());
        let sealed_version = self.seal_version(referral, &version_record)?;
        let sealed_payload = self.seal_payload(referral, version, &d.raw)?;
        let sealed_referral = self.seal_referral(&record)?;
        // Stored, then audited, or neither: the entry is part of the same transaction.
        let details = serde_json::json!({
            "referral": referral,
            "version": version,
            "event": d.event.as_str(),
        });

        // Second round trip: every write, and the commit.
        let number = to_i64(version);
        let event = d.event.as_str();
        let integration = d.integration.as_str();
        let version_params: [&Param<'_>; 7] = [
            &referral,
            &number,
            &event,
            &service_id,
            &received_at,
            &sealed_version,
            &sealed_payload,
        ];
        let referral_params: [&Param<'_>; 4] = [&referral, &number, &received_at, &sealed_referral];
        let delivery_params: [&Param<'_>; 2] = [&dedup_key, &number];
        let audit_params: [&Param<'_>; 4] =
            [&received_at, &"DELIVERY_STORED", &integration, &details];
        tokio::try_join!(
            biased;
            c.execute(&write_version, &version_params),
            c.execute(&update_referral, &referral_params),
            c.execute(&record_delivery, &delivery_params),
            c.execute(&audit, &audit_params),
            c.batch_execute("COMMIT"),
        )
        .map_err(db_error("storing a delivery"))?;
        tx.ended();
        Ok(PutOutcome::Stored { version })
    }
}

#[async_trait]
impl DeliveryStore for PgStore {
    async fn put_delivery(&self, delivery: NewDelivery) -> Result<PutOutcome, StoreError> {
        let outcome = self.write_delivery(&delivery).await?;
        if matches!(outcome, PutOutcome::Stored { .. }) {
            // Durable now; its feed position comes from the background run (see the sequencer).
            self.sequence_soon.notify_one();
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
        self.settle().await?;
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
