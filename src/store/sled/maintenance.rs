//! Maintenance: the export's scan by modification date and its marks, retention, and the
//! readiness probe.

use async_trait::async_trait;
use sled::Transactional;
use sled::transaction::ConflictableTransactionError;
use time::OffsetDateTime;

use super::handle::SledStore;
use super::open::Open;
use super::trees::{READY_MARKER, abort, tx_error, unavailable};
use super::writer::Target;
use crate::domain::ReferralRef;
use crate::store::deliveries::{ReferralRecord, VersionRecord};
use crate::store::documents::DocumentRecord;
use crate::store::error::StoreError;
use crate::store::maintenance::{MaintenanceStore, ModifiedBatch, StoreHealth};
use crate::store::record::micros;
use crate::store::record::{DOCUMENTS, REFERRALS, VERSIONS};
use crate::store::replicas::ReplicaStore;

/// A version to purge: its key, its purged record (sealed), and its documents' keys and
/// purged records (sealed).
type PurgedVersion = (sled::IVec, Vec<u8>, Vec<(sled::IVec, Vec<u8>)>);

impl Open {
    /// Blocking: a range read of up to `limit` referrals.
    fn referrals_modified(
        &self,
        from: Option<OffsetDateTime>,
        to: Option<OffsetDateTime>,
        after: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<ModifiedBatch, StoreError> {
        use std::ops::Bound;
        let start = match after {
            Some(key) => Bound::Excluded(key),
            None => Bound::Included(from.map_or(0, micros).to_be_bytes().to_vec()),
        };
        // Keys are (micros, 0, ref): everything at `to`'s microsecond sorts below micros + 1.
        let end = match to {
            Some(to) => Bound::Excluded(micros(to).saturating_add(1).to_be_bytes().to_vec()),
            None => Bound::Unbounded,
        };
        let mut batch = ModifiedBatch::default();
        for item in self.trees.by_modified.range::<Vec<u8>, _>((start, end)) {
            let (key, _) = item.map_err(unavailable)?;
            if let Some(record) = self.referral_record(&key[9..])? {
                batch.referrals.push(record);
            }
            if batch.referrals.len() == limit {
                batch.next = Some(key.to_vec());
                break;
            }
        }
        Ok(batch)
    }

    async fn mark_exported(
        &self,
        written: &[(ReferralRef, OffsetDateTime)],
        at: OffsetDateTime,
    ) -> Result<usize, StoreError> {
        let mut marked = 0;
        for chunk in written.chunks(500) {
            let chunk = chunk.to_vec();
            marked += self
                .writer
                .write(move |target| mark_chunk(target, &chunk, at))
                .await?;
        }
        Ok(marked)
    }

    /// Blocking (on a blocking thread, never an async worker): reads every version and hands
    /// the writer the purged ones in chunks; durable when it returns.
    fn purge_versions_before(&self, cutoff: OffsetDateTime) -> Result<u64, StoreError> {
        const CHUNK: usize = 256;
        let mut purged = 0;
        let mut chunk = Vec::with_capacity(CHUNK);
        for item in self.trees.versions.iter() {
            let (key, value) = item.map_err(unavailable)?;
            let mut version: VersionRecord = self.codec.decode(VERSIONS, &key, &value)?;
            if version.purged || version.received_at >= cutoff {
                continue;
            }
            let latest = self
                .referral_record(version.referral.as_str().as_bytes())?
                .map_or(version.version, |r| r.version);
            if version.version >= latest {
                continue;
            }
            version.purged = true;
            version.summary = crate::domain::Summary::default();
            version.problems.clear();
            // Only the latest version of a referral changes, so this one stays as read.
            let value = self.codec.encode(VERSIONS, &key, &version)?;
            // Its documents go with it.
            let mut documents = Vec::new();
            for item in self.trees.documents.scan_prefix(&key) {
                let (document_key, stored) = item.map_err(unavailable)?;
                let mut document: DocumentRecord =
                    self.codec.decode(DOCUMENTS, &document_key, &stored)?;
                if !document.purged {
                    document.purge();
                    let sealed = self.codec.encode(DOCUMENTS, &document_key, &document)?;
                    documents.push((document_key, sealed));
                }
            }
            chunk.push((key, value, documents));
            if chunk.len() == CHUNK {
                purged += self.purge_chunk(std::mem::take(&mut chunk))?;
            }
        }
        purged += self.purge_chunk(chunk)?;
        Ok(purged)
    }

    fn purge_chunk(&self, chunk: Vec<PurgedVersion>) -> Result<u64, StoreError> {
        if chunk.is_empty() {
            return Ok(0);
        }
        let n = chunk.len() as u64;
        self.writer.write_blocking(move |Target { trees, .. }| {
            (
                &trees.versions,
                &trees.payloads,
                &trees.documents,
                &trees.document_bytes,
                &trees.due_documents,
            )
                .transaction(|(versions, payloads, documents, bytes, due)| {
                    for (key, value, purged_documents) in &chunk {
                        versions.insert(key, value.as_slice())?;
                        payloads.remove(key)?;
                        for (document_key, document) in purged_documents {
                            documents.insert(document_key, document.as_slice())?;
                            bytes.remove(document_key)?;
                            super::apply::documents::mark_due(due, document_key, None)?;
                        }
                    }
                    Ok::<_, ConflictableTransactionError<StoreError>>(())
                })
                .map_err(tx_error)
        })?;
        Ok(n)
    }

    async fn check_writable(&self) -> Result<(), StoreError> {
        let now = OffsetDateTime::now_utc().unix_timestamp().to_be_bytes();
        self.writer
            .write(move |Target { trees, .. }| {
                trees
                    .meta
                    .insert(READY_MARKER, &now)
                    .map(drop)
                    .map_err(unavailable)
            })
            .await
    }
}

/// Marks the referrals of `chunk` exported at `at`, each only if it was not modified since it
/// was written to the export (a delivery since then keeps `exported_at` unset). On the writer
/// thread, so no delivery commits between the read and the write.
fn mark_chunk(
    target: &Target,
    chunk: &[(ReferralRef, OffsetDateTime)],
    at: OffsetDateTime,
) -> Result<usize, StoreError> {
    let codec = &target.codec;
    target
        .trees
        .referrals
        .transaction(|tx| {
            let mut marked = 0;
            for (referral, modified_at) in chunk {
                let key = referral.as_str().as_bytes();
                let Some(bytes) = tx.get(key)? else {
                    continue;
                };
                let mut record: ReferralRecord =
                    codec.decode(REFERRALS, key, &bytes).map_err(abort)?;
                if record.modified_at != *modified_at {
                    continue;
                }
                record.exported_at = Some(at);
                tx.insert(key, codec.encode(REFERRALS, key, &record).map_err(abort)?)?;
                marked += 1;
            }
            Ok(marked)
        })
        .map_err(tx_error)
}

/// One process opens the embedded store: it shares nothing with replicas (the signing key is a
/// file in the data dir, failed logins are counted in memory).
impl ReplicaStore for SledStore {}

#[async_trait]
impl MaintenanceStore for SledStore {
    async fn snapshot(
        &self,
        into: &std::path::Path,
    ) -> Result<Option<crate::store::maintenance::SnapshotInfo>, StoreError> {
        self.snapshot_into(into.to_path_buf()).await.map(Some)
    }

    async fn referrals_modified(
        &self,
        from: Option<OffsetDateTime>,
        to: Option<OffsetDateTime>,
        after: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<ModifiedBatch, StoreError> {
        self.off_worker(move |open| open.referrals_modified(from, to, after, limit))
            .await
    }

    async fn mark_exported(
        &self,
        written: &[(ReferralRef, OffsetDateTime)],
        at: OffsetDateTime,
    ) -> Result<usize, StoreError> {
        let open = self.open_db()?;
        self.checked(open.mark_exported(written, at).await)
    }

    async fn purge_versions_before(&self, cutoff: OffsetDateTime) -> Result<u64, StoreError> {
        self.off_worker(move |open| open.purge_versions_before(cutoff))
            .await
    }

    async fn check_writable(&self) -> Result<(), StoreError> {
        let open = self.open_db()?;
        self.checked(open.check_writable().await)
    }

    fn health(&self) -> StoreHealth {
        self.health_now()
    }
}
