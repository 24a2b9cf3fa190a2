//! Documents: each referral version's letter and attachments, their fetch state, and their
//! bytes.

use async_trait::async_trait;
use bytes::Bytes;
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionalTree};
use time::OffsetDateTime;

use super::codec::Codec;
use super::handle::SledStore;
use super::keys::referral_prefix;
use super::open::Open;
use super::trees::{DOCUMENT_BYTES, DOCUMENTS, abort, tx_error, unavailable};
use super::writer::Target;
use crate::domain::ReferralRef;
use crate::store::documents::{DocumentKey, DocumentRecord, DocumentState, DocumentStore};
use crate::store::error::StoreError;

/// [`super::keys::document_key`] of a referral.
fn document_key(referral: &ReferralRef, version: u64, index: u32) -> Vec<u8> {
    super::keys::document_key(referral.as_str(), version, index)
}

/// Writes a new or changed document record inside a transaction, keeping `due_documents` (the
/// pending ones) in step.
pub(super) fn put_document(
    documents: &TransactionalTree,
    due: &TransactionalTree,
    codec: &Codec,
    record: &DocumentRecord,
) -> Result<(), ConflictableTransactionError<StoreError>> {
    let key = document_key(&record.referral, record.version, record.index);
    documents.insert(
        key.as_slice(),
        codec.encode(DOCUMENTS, &key, record).map_err(abort)?,
    )?;
    if record.state == DocumentState::Pending {
        due.insert(key.as_slice(), &[])?;
    } else {
        due.remove(key.as_slice())?;
    }
    Ok(())
}

impl Open {
    /// Blocking: reads every pending record.
    fn due_documents(
        &self,
        now: OffsetDateTime,
        limit: usize,
        busy: &[DocumentKey],
    ) -> Result<Vec<DocumentRecord>, StoreError> {
        let mut due = Vec::new();
        for item in self.trees.due_documents.iter() {
            let (key, _) = item.map_err(unavailable)?;
            let Some(value) = self.trees.documents.get(&key).map_err(unavailable)? else {
                continue;
            };
            let record: DocumentRecord = self.codec.decode(DOCUMENTS, &key, &value)?;
            let fetching = busy.iter().any(|(referral, version, index)| {
                *referral == record.referral && *version == record.version && *index == record.index
            });
            if record.state == DocumentState::Pending && record.next_attempt_at <= now && !fetching
            {
                due.push(record);
            }
        }
        due.sort_by_key(|d| d.next_attempt_at);
        due.truncate(limit);
        Ok(due)
    }

    async fn save_document(
        &self,
        record: &DocumentRecord,
        bytes: Option<Bytes>,
    ) -> Result<(), StoreError> {
        let key = document_key(&record.referral, record.version, record.index);
        let sealed_bytes = bytes
            .map(|b| self.codec.seal(DOCUMENT_BYTES, &key, &b))
            .transpose()?;
        let record = record.clone();
        self.writer
            .write(
                move |Target {
                          trees: t, codec, ..
                      }| {
                    (&t.documents, &t.due_documents, &t.document_bytes)
                        .transaction(|(documents, due, stored)| {
                            put_document(documents, due, codec, &record)?;
                            if let Some(sealed) = &sealed_bytes {
                                stored.insert(key.as_slice(), sealed.as_slice())?;
                            }
                            Ok(())
                        })
                        .map_err(tx_error)
                },
            )
            .await
    }

    fn documents(&self, referral: &ReferralRef) -> Result<Vec<DocumentRecord>, StoreError> {
        self.trees
            .documents
            .scan_prefix(referral_prefix(referral))
            .map(|item| {
                let (key, value) = item.map_err(unavailable)?;
                self.codec.decode(DOCUMENTS, &key, &value)
            })
            .collect()
    }

    fn document_bytes(
        &self,
        referral: &ReferralRef,
        version: u64,
        index: u32,
    ) -> Result<Option<Bytes>, StoreError> {
        let key = document_key(referral, version, index);
        self.trees
            .document_bytes
            .get(&key)
            .map_err(unavailable)?
            .map(|v| {
                self.codec
                    .open(DOCUMENT_BYTES, &key, &v)
                    .map(|b| Bytes::from(b.into_owned()))
            })
            .transpose()
    }
}

#[async_trait]
impl DocumentStore for SledStore {
    async fn due_documents(
        &self,
        now: OffsetDateTime,
        _lease: std::time::Duration,
        limit: usize,
        busy: &[DocumentKey],
    ) -> Result<Vec<DocumentRecord>, StoreError> {
        // One process owns the embedded store: nothing to lease against.
        let busy = busy.to_vec();
        self.off_worker(move |open| open.due_documents(now, limit, &busy))
            .await
    }

    async fn save_document(
        &self,
        record: &DocumentRecord,
        bytes: Option<Bytes>,
    ) -> Result<(), StoreError> {
        let open = self.open_db()?;
        self.checked(open.save_document(record, bytes).await)
    }

    async fn documents(&self, referral: &ReferralRef) -> Result<Vec<DocumentRecord>, StoreError> {
        let open = self.open_db()?;
        self.checked(open.documents(referral))
    }

    async fn document_bytes(
        &self,
        referral: &ReferralRef,
        version: u64,
        index: u32,
    ) -> Result<Option<Bytes>, StoreError> {
        let referral = referral.clone();
        self.off_worker(move |open| open.document_bytes(&referral, version, index))
            .await
    }
}
