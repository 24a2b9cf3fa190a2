//! Documents on PostgreSQL: each referral version's letter and attachments, their fetch state
//! and bytes. Replicas share the work: a claim moves a due document's `next_attempt_at` on by a
//! lease, under `FOR UPDATE SKIP LOCKED`, so no two replicas fetch it at once.

use async_trait::async_trait;
use bytes::Bytes;
use deadpool_postgres::GenericClient;
use time::OffsetDateTime;

use super::deliveries::{to_i64, to_u64};
use super::{PgStore, db_error};
use crate::domain::ReferralRef;
use crate::store::documents::{DocumentKey, DocumentRecord, DocumentStore};
use crate::store::error::StoreError;

const CLAIM: &str = "UPDATE documents SET next_attempt_at = $2
     WHERE (referral, version, idx) IN (
         SELECT referral, version, idx FROM documents
         WHERE state = 'pending' AND next_attempt_at <= $1
         ORDER BY next_attempt_at LIMIT $3 FOR UPDATE SKIP LOCKED)
     RETURNING referral, version, idx, record";

const SAVE: &str = "UPDATE documents
     SET state = $4, next_attempt_at = $5, record = $6, bytes = coalesce($7, bytes)
     WHERE referral = $1 AND version = $2 AND idx = $3";

fn index_of(value: i32) -> u32 {
    u32::try_from(value).unwrap_or_default()
}

#[async_trait]
impl DocumentStore for PgStore {
    async fn due_documents(
        &self,
        now: OffsetDateTime,
        lease: std::time::Duration,
        limit: usize,
        _busy: &[DocumentKey],
    ) -> Result<Vec<DocumentRecord>, StoreError> {
        // What this replica is fetching is leased, so not due: nothing to leave out.
        let client = self.client().await?;
        let until = now + lease;
        let rows = client
            .query(
                &client
                    .prepare_cached(CLAIM)
                    .await
                    .map_err(db_error("preparing a statement"))?,
                &[&now, &until, &to_i64(limit as u64)],
            )
            .await
            .map_err(db_error("claiming due documents"))?;
        let mut due = rows
            .iter()
            .map(|row| {
                self.open_document(
                    row.get(0),
                    to_u64(row.get(1)),
                    index_of(row.get(2)),
                    row.get::<_, &[u8]>(3),
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        due.sort_by_key(|d| d.next_attempt_at);
        Ok(due)
    }

    async fn save_document(
        &self,
        record: &DocumentRecord,
        bytes: Option<Bytes>,
    ) -> Result<(), StoreError> {
        let sealed = self.seal_document(record)?;
        let sealed_bytes = bytes
            .map(|b| self.seal_document_bytes(record, &b))
            .transpose()?;
        let client = self.client().await?;
        client
            .execute(
                &client
                    .prepare_cached(SAVE)
                    .await
                    .map_err(db_error("preparing a statement"))?,
                &[
                    &record.referral.as_str(),
                    &to_i64(record.version),
                    &i32::try_from(record.index).unwrap_or(i32::MAX),
                    &record.state.as_str(),
                    &record.next_attempt_at,
                    &sealed,
                    &sealed_bytes,
                ],
            )
            .await
            .map_err(db_error("saving a document"))?;
        Ok(())
    }

    async fn documents(&self, referral: &ReferralRef) -> Result<Vec<DocumentRecord>, StoreError> {
        self.bounded("reading documents", async {
            let client = self.client().await?;
            client
                .query(
                    &client
                        .prepare_cached(
                            "SELECT version, idx, record FROM documents WHERE referral = $1
                             ORDER BY version, idx",
                        )
                        .await
                        .map_err(db_error("preparing a statement"))?,
                    &[&referral.as_str()],
                )
                .await
                .map_err(db_error("reading documents"))?
                .iter()
                .map(|row| {
                    self.open_document(
                        referral.as_str(),
                        to_u64(row.get(0)),
                        index_of(row.get(1)),
                        row.get::<_, &[u8]>(2),
                    )
                })
                .collect()
        })
        .await
    }

    async fn document_bytes(
        &self,
        referral: &ReferralRef,
        version: u64,
        index: u32,
    ) -> Result<Option<Bytes>, StoreError> {
        self.bounded("reading a document", async {
            let client = self.client().await?;
            let row = client
                .query_opt(
                    &client
                        .prepare_cached(
                            "SELECT bytes FROM documents WHERE referral = $1 AND version = $2 AND idx = $3",
                        )
                        .await
                        .map_err(db_error("preparing a statement"))?,
                    &[
                        &referral.as_str(),
                        &to_i64(version),
                        &i32::try_from(index).unwrap_or(i32::MAX),
                    ],
                )
                .await
                .map_err(db_error("reading a document"))?;
            row.and_then(|row| row.get::<_, Option<Vec<u8>>>(0))
                .map(|stored| self.open_document_bytes(referral.as_str(), version, index, &stored))
                .transpose()
        })
        .await
    }
}
