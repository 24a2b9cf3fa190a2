//! Writes of documents inside a transaction: a document's record and its place in
//! `due_documents` (by key and by due time) move together.

use sled::transaction::{ConflictableTransactionError, TransactionalTree};
use time::OffsetDateTime;

use crate::store::documents::{DocumentRecord, DocumentState};
use crate::store::error::StoreError;
use crate::store::record::{Codec, DOCUMENTS, document_key};
use crate::store::sled::keys::{by_due_key, due_time};
use crate::store::sled::trees::abort;

/// Marks the document `key` due at `at` (`None`: not due) in `due_documents`: its own entry
/// holds the due time, and the index entry orders it by that time, so a claim reads only what
/// is due instead of every pending document.
pub(in crate::store::sled) fn mark_due(
    due: &TransactionalTree,
    key: &[u8],
    at: Option<OffsetDateTime>,
) -> Result<(), ConflictableTransactionError<StoreError>> {
    if let Some(old) = due.remove(key)?
        && !old.is_empty()
    {
        due.remove(by_due_key(&old, key))?;
    }
    if let Some(at) = at {
        let at = due_time(at);
        due.insert(key, &at)?;
        due.insert(by_due_key(&at, key), &[])?;
    }
    Ok(())
}

/// Writes a new or changed document record inside a transaction, keeping `due_documents` (the
/// pending ones, by key and by due time) in step.
pub(in crate::store::sled) fn put_document(
    documents: &TransactionalTree,
    due: &TransactionalTree,
    codec: &Codec,
    record: &DocumentRecord,
) -> Result<(), ConflictableTransactionError<StoreError>> {
    let key = document_key(record.referral.as_str(), record.version, record.index);
    documents.insert(
        key.as_slice(),
        codec.encode(DOCUMENTS, &key, record).map_err(abort)?,
    )?;
    let at = (record.state == DocumentState::Pending).then_some(record.next_attempt_at);
    mark_due(due, &key, at)
}
