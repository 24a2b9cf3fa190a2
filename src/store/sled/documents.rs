//! Documents: each referral version's letter and attachments, their fetch state, and their
//! bytes.

use async_trait::async_trait;
use bytes::Bytes;
use sled::Transactional;
use time::OffsetDateTime;

use super::apply::documents::put_document;
use super::handle::SledStore;
use super::keys::{BY_DUE, by_due_key, due_time, referral_prefix};
use super::open::Open;
use super::trees::{tx_error, unavailable};
use super::writer::Target;
use crate::domain::ReferralRef;
use crate::store::documents::{DocumentKey, DocumentRecord, DocumentState, DocumentStore};
use crate::store::error::StoreError;
use crate::store::record::Codec;
use crate::store::record::{DOCUMENT_BYTES, DOCUMENTS};

/// [`crate::store::record::document_key`] of a referral.
fn document_key(referral: &ReferralRef, version: u64, index: u32) -> Vec<u8> {
    crate::store::record::document_key(referral.as_str(), version, index)
}

/// Set in `meta` once every pending document is in the due-time index.
const DUE_INDEXED: &[u8] = b"due_documents_indexed";

impl super::trees::Trees {
    /// Puts the pending documents of a store written before the due-time index into it (once).
    pub(super) fn index_due_documents(&self, codec: &Codec) -> Result<(), StoreError> {
        if self.meta.get(DUE_INDEXED).map_err(unavailable)?.is_some() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for item in self.due_documents.iter() {
            let (key, value) = item.map_err(unavailable)?;
            if key.first() == Some(&BY_DUE) || !value.is_empty() {
                continue;
            }
            let Some(stored) = self.documents.get(&key).map_err(unavailable)? else {
                batch.remove(key);
                continue;
            };
            let record: DocumentRecord = codec.decode(DOCUMENTS, &key, &stored)?;
            let at = due_time(record.next_attempt_at);
            batch.insert(by_due_key(&at, &key), &[]);
            batch.insert(key, &at);
        }
        self.due_documents.apply_batch(batch).map_err(unavailable)?;
        self.meta.insert(DUE_INDEXED, &[]).map_err(unavailable)?;
        Ok(())
    }
}

impl Open {
    /// Blocking: the earliest due documents, from the due-time index: reads what is due (and
    /// what is being fetched), never every pending document.
    fn due_documents(
        &self,
        now: OffsetDateTime,
        limit: usize,
        busy: &[DocumentKey],
    ) -> Result<Vec<DocumentRecord>, StoreError> {
        let busy: Vec<Vec<u8>> = busy
            .iter()
            .map(|(referral, version, index)| document_key(referral, *version, *index))
            .collect();
        let now = due_time(now);
        let mut due = Vec::new();
        for item in self.trees.due_documents.scan_prefix([BY_DUE]) {
            if due.len() >= limit {
                break;
            }
            let (index_key, _) = item.map_err(unavailable)?;
            let (at, key) = index_key[1..].split_at(now.len().min(index_key.len() - 1));
            if at > now.as_slice() {
                break;
            }
            if busy.iter().any(|b| b.as_slice() == key) {
                continue;
            }
            let Some(value) = self.trees.documents.get(key).map_err(unavailable)? else {
                continue;
            };
            let record: DocumentRecord = self.codec.decode(DOCUMENTS, key, &value)?;
            if record.state == DocumentState::Pending {
                due.push(record);
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::documents::DocumentKind;
    use std::time::Duration;

    fn record(n: u32, at: OffsetDateTime) -> DocumentRecord {
        DocumentRecord {
            referral: ReferralRef::parse("TST-DUE").unwrap(),
            version: 1,
            index: n,
            kind: DocumentKind::Attachment,
            source: Some(format!("Binary/{n}")),
            document_id: None,
            title: None,
            state: DocumentState::Pending,
            attempts: 0,
            created_at: at,
            next_attempt_at: at,
            last_error: None,
            fetched_at: None,
            content_type: None,
            size: 0,
            sha256: None,
            purged: false,
        }
    }

    fn indexed(dir: &std::path::Path) -> usize {
        let db = super::super::dir::open_live(dir, None).unwrap();
        let due = db.open_tree("due_documents").unwrap();
        due.scan_prefix([BY_DUE]).count()
    }

    /// A claim reads the due-time index from its start: the earliest due first, nothing that is
    /// not due yet, what is being fetched left out; written in an older store, the index is
    /// made when the store is opened.
    #[tokio::test]
    async fn due_documents_come_from_an_index_by_due_time() {
        let dir = tempfile::tempdir().unwrap();
        let now = OffsetDateTime::now_utc();
        let minutes = |m: i64| now + time::Duration::minutes(m);
        {
            let store = SledStore::open(dir.path()).unwrap();
            for n in 10..1010 {
                store
                    .save_document(&record(n, minutes(60)), None)
                    .await
                    .unwrap();
            }
            for (n, at) in [(3, minutes(-1)), (1, minutes(-3)), (2, minutes(-2))] {
                store.save_document(&record(n, at), None).await.unwrap();
            }
            let indices =
                |due: Vec<DocumentRecord>| due.iter().map(|d| d.index).collect::<Vec<_>>();
            let due = store
                .due_documents(now, Duration::ZERO, 2, &[])
                .await
                .unwrap();
            assert_eq!(indices(due), [1, 2]);
            let busy = [(ReferralRef::parse("TST-DUE").unwrap(), 1, 1)];
            let due = store
                .due_documents(now, Duration::ZERO, 10, &busy)
                .await
                .unwrap();
            assert_eq!(indices(due), [2, 3]);
            // Fetched: out of the index; retried later: moved in it.
            let mut fetched = record(1, minutes(-3));
            fetched.state = DocumentState::Fetched;
            store.save_document(&fetched, None).await.unwrap();
            store
                .save_document(&record(2, minutes(30)), None)
                .await
                .unwrap();
            let due = store
                .due_documents(now, Duration::ZERO, 10, &[])
                .await
                .unwrap();
            assert_eq!(indices(due), [3]);
        }
        assert_eq!(indexed(dir.path()), 1002);
        // As an older store left it: pending documents by key only.
        {
            let db = super::super::dir::open_live(dir.path(), None).unwrap();
            let due = db.open_tree("due_documents").unwrap();
            for item in due.iter() {
                let (key, _) = item.unwrap();
                if key[0] == BY_DUE {
                    due.remove(key).unwrap();
                } else {
                    due.insert(key, &[]).unwrap();
                }
            }
            db.open_tree("meta").unwrap().remove(DUE_INDEXED).unwrap();
            db.flush().unwrap();
        }
        assert_eq!(indexed(dir.path()), 0);
        let store = SledStore::open(dir.path()).unwrap();
        let due = store
            .due_documents(now, Duration::ZERO, 10, &[])
            .await
            .unwrap();
        assert_eq!(due.iter().map(|d| d.index).collect::<Vec<_>>(), [3]);
        drop(store);
        assert_eq!(indexed(dir.path()), 1002);
    }
}
