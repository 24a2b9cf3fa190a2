//! Deliveries on PostgreSQL: each one a new version of its referral, in one transaction.

use async_trait::async_trait;
use bytes::Bytes;
use time::OffsetDateTime;

use super::{PgStore, db_error};
use crate::domain::ReferralRef;
use crate::store::deliveries::{
    DeliveryStore, NewDelivery, PutOutcome, ReferralRecord, VersionRecord,
};
use crate::store::error::StoreError;

/// A count or number kept as `bigint`.
pub(in crate::store) fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

pub(super) fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or_default()
}

/// A statement parameter.
type Param<'a> = dyn tokio_postgres::types::ToSql + Sync + 'a;

/// The statements of a delivery's transaction, in the order it sends them.
///
/// One delivery of a referral at a time, on every replica: a transaction-scoped advisory lock on
/// the hash of the referral's ref (seeded per schema; two refs sharing a hash only wait for each
/// other). It is taken in a statement of its own before the referral is read, since a statement
/// sees only what committed before it began: a first delivery of a referral that committed while
/// this one waited is then read, not inserted twice. Duplicates of one delivery carry one body,
/// so one referral: they wait on the same lock, and the second finds the first's dedup row.
const LOCK_REFERRAL: &str = "SELECT pg_advisory_xact_lock(hashtextextended($1, $2))";
/// The referral as it stands (no row when new), locked against the other writers of its row
/// (export marks), and the version a delivery with this dedup key already stored, if any.
const READ_REFERRAL: &str = "SELECT version, record,
         (SELECT version FROM deliveries WHERE dedup_key = $2)
     FROM referrals WHERE referral = $1 FOR UPDATE";
const STORED_VERSION: &str = "SELECT version FROM deliveries WHERE dedup_key = $1";
/// Every write of a delivery in one statement: its dedup row, its feed entry (no position yet;
/// see the sequencer), the version naming that entry, the referral's row (inserted when new)
/// its audit entry, its documents and its destinations' messages. Each write after the first takes its row from the dedup row's
/// `RETURNING`, so when that row already exists nothing at all is written and the statement
/// returns 0. Foreign keys are checked at the end of the statement, when the rows it inserted are
/// visible.
const WRITE_DELIVERY: &str = "WITH claimed AS (
         INSERT INTO deliveries (dedup_key, referral, version)
         VALUES ($1::text, $2::text, $3::bigint)
         ON CONFLICT (dedup_key) DO NOTHING RETURNING referral),
     referral_row AS (
         INSERT INTO referrals (referral, version, modified_at, record)
         SELECT referral, $3::bigint, $6::timestamptz, $9::bytea FROM claimed
         ON CONFLICT (referral) DO UPDATE SET version = EXCLUDED.version,
             modified_at = EXCLUDED.modified_at, record = EXCLUDED.record),
     feed_entry AS (
         INSERT INTO events (referral, version, event, service_id, received_at, changes)
         SELECT referral, $3::bigint, $4::text, $5::text, $6::timestamptz, $12::text[] FROM claimed
         RETURNING id),
     version_row AS (
         INSERT INTO versions (referral, version, event_id, record, payload)
         SELECT $2::text, $3::bigint, feed_entry.id, $7::bytea, $8::bytea FROM feed_entry),
     audited AS (
         INSERT INTO audit (at, action, actor, details)
         SELECT $6::timestamptz, 'DELIVERY_STORED', $10::text, $11::jsonb FROM claimed),
     queued AS (
         INSERT INTO documents (referral, version, idx, state, next_attempt_at, record)
         SELECT $2::text, $3::bigint, d.idx, 'pending', $6::timestamptz, d.record
         FROM claimed, unnest($13::integer[], $14::bytea[]) AS d(idx, record)),
     destined AS (
         INSERT INTO queue (queue, referral, version, state, next_attempt_at, created_at, record)
         SELECT m.queue, $2::text, $3::bigint, 'pending', $6::timestamptz, $6::timestamptz, m.record
         FROM claimed, unnest($15::text[], $16::bytea[]) AS m(queue, record))
     SELECT count(*) FROM claimed";

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

/// A referral's modification time for a delivery received at `received_at`: it never goes
/// backwards, nor falls behind its last export (listings since a time and "unexported only"
/// rely on both), whatever the order in which replicas' deliveries of it commit or their
/// clocks.
fn modification_time(
    received_at: OffsetDateTime,
    previous: Option<&ReferralRecord>,
) -> OffsetDateTime {
    previous.map_or(received_at, |p| {
        let after_export = p.exported_at.map(|at| at + time::Duration::microseconds(1));
        received_at
            .max(p.modified_at)
            .max(after_export.unwrap_or(p.modified_at))
    })
}

/// What a delivery writes, sealed: its version, payload and referral, the documents it queues
/// (with their indexes) and the destinations' messages (with their queues).
struct SealedDelivery {
    version: Vec<u8>,
    payload: Vec<u8>,
    referral: Vec<u8>,
    document_indexes: Vec<i32>,
    documents: Vec<Vec<u8>>,
    queues: Vec<String>,
    messages: Vec<Vec<u8>>,
}

impl PgStore {
    fn seal_delivery(
        &self,
        d: &NewDelivery,
        record: &ReferralRecord,
        version_record: &VersionRecord,
        received_at: OffsetDateTime,
    ) -> Result<SealedDelivery, StoreError> {
        let referral = d.referral.as_str();
        let documents = d.documents(record.version, received_at);
        // The destinations that take this version, queued in the same statement.
        let messages = d.queued(record, received_at);
        Ok(SealedDelivery {
            version: self.seal_version(referral, version_record)?,
            payload: self.seal_payload(referral, record.version, &d.raw)?,
            referral: self.seal_referral(record)?,
            document_indexes: documents
                .iter()
                .map(|doc| i32::try_from(doc.index).unwrap_or(i32::MAX))
                .collect(),
            documents: documents
                .iter()
                .map(|doc| self.seal_document(doc))
                .collect::<Result<_, StoreError>>()?,
            queues: messages.iter().map(|m| m.queue.clone()).collect(),
            messages: messages
                .iter()
                .map(|m| self.seal_message(m))
                .collect::<Result<_, StoreError>>()?,
        })
    }

    /// The delivery's transaction, in two round trips (see [`Pipelined`]). A duplicate or a
    /// referral owned elsewhere writes nothing.
    async fn write_delivery(&self, d: &NewDelivery) -> Result<PutOutcome, StoreError> {
        let client = self.client().await?;
        let (lock, read, write, stored_version) = tokio::try_join!(
            client.prepare_cached(LOCK_REFERRAL),
            client.prepare_cached(READ_REFERRAL),
            client.prepare_cached(WRITE_DELIVERY),
            client.prepare_cached(STORED_VERSION),
        )
        .map_err(db_error("preparing a statement"))?;
        let tx = Pipelined {
            client: Some(client),
        };
        let c = tx.client();
        let referral = d.referral.as_str();
        // Kept as its SHA-256: a `text` column cannot hold the NUL a sender's id may carry.
        let dedup_key = super::super::sha256_hex(d.dedup_key.as_bytes());

        // First round trip: the referral's lock, then its row and whether this delivery is
        // stored already. `biased`: polled in order, so the statements go out in this order.
        let lock_params: [&Param<'_>; 2] = [&referral, &self.referral_lock_seed];
        let read_params: [&Param<'_>; 2] = [&referral, &dedup_key];
        let (_, _, row) = tokio::try_join!(
            biased;
            c.batch_execute("BEGIN"),
            c.execute(&lock, &lock_params),
            c.query_opt(&read, &read_params),
        )
        .map_err(db_error("reading a referral to store a delivery"))?;
        if let Some(version) = row.as_ref().and_then(|r| r.get::<_, Option<i64>>(2)) {
            tx.rollback().await?;
            return Ok(PutOutcome::Duplicate {
                version: to_u64(version),
            });
        }
        let previous: Option<ReferralRecord> = match &row {
            Some(row) if row.get::<_, i64>(0) > 0 => {
                Some(self.open_referral(referral, row.get::<_, &[u8]>(1))?)
            }
            _ => None,
        };

        // A referral belongs to the integration that first delivered it.
        let owner = previous.as_ref().map_or_else(
            || d.integration.clone(),
            |p| p.owner.clone().unwrap_or_else(|| p.integration.clone()),
        );
        let received_at = modification_time(d.received_at, previous.as_ref());
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
        let sealed = self.seal_delivery(d, &record, &version_record, received_at)?;
        // Stored, then audited, or neither: the entry is part of the same statement.
        let details = serde_json::json!({
            "referral": referral,
            "version": version,
            "event": d.event.as_str(),
        });

        // Second round trip: every write, and the commit.
        let number = to_i64(version);
        let changes = &version_record.changes;
        let write_params: [&Param<'_>; 16] = [
            &dedup_key,
            &referral,
            &number,
            &d.event.as_str(),
            &service_id,
            &received_at,
            &sealed.version,
            &sealed.payload,
            &sealed.referral,
            &d.integration.as_str(),
            &details,
            changes,
            &sealed.document_indexes,
            &sealed.documents,
            &sealed.queues,
            &sealed.messages,
        ];
        let (written, _) = tokio::try_join!(
            biased;
            c.query_one(&write, &write_params),
            c.batch_execute("COMMIT"),
        )
        .map_err(db_error("storing a delivery"))?;
        if written.get::<_, i64>(0) == 1 {
            tx.ended();
            return Ok(PutOutcome::Stored { version });
        }
        // Another transaction stored this delivery between the read and the write (only
        // possible for a referral row that was missing then): nothing was written.
        let version: i64 = c
            .query_one(&stored_version, &[&dedup_key])
            .await
            .map_err(db_error("reading a stored delivery"))?
            .get(0);
        tx.ended();
        Ok(PutOutcome::Duplicate {
            version: to_u64(version),
        })
    }
}

#[async_trait]
impl DeliveryStore for PgStore {
    async fn put_delivery(&self, delivery: NewDelivery) -> Result<PutOutcome, StoreError> {
        self.bounded("storing a delivery", async {
            let outcome = self.write_delivery(&delivery).await?;
            if matches!(outcome, PutOutcome::Stored { .. }) {
                // Durable now; its feed position comes from the background run (see the sequencer).
                self.sequence_soon.notify_one();
            }
            Ok(outcome)
        })
        .await
    }

    async fn referral(&self, referral: &ReferralRef) -> Result<Option<ReferralRecord>, StoreError> {
        self.bounded("reading a referral", async {
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
        })
        .await
    }

    async fn versions(&self, referral: &ReferralRef) -> Result<Vec<VersionRecord>, StoreError> {
        self.bounded("reading versions", async {
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
        })
        .await
    }

    async fn payload(
        &self,
        referral: &ReferralRef,
        version: u64,
    ) -> Result<Option<Bytes>, StoreError> {
        self.bounded("reading a payload", async {
            let client = self.client().await?;
            client
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
                .transpose()
        })
        .await
    }
}
