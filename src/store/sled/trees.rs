//! The trees of the database and the names of its `meta` keys, and how sled's errors become
//! store errors.

use sled::transaction::{ConflictableTransactionError, TransactionError};

use crate::store::error::StoreError;

pub(in crate::store) const EVENT_SEQ: &[u8] = b"event_seq";
pub(super) const READY_MARKER: &[u8] = b"ready_marker";
pub(super) const LAST_RECEIVED: &[u8] = b"last_received_micros";
pub(in crate::store) const AUDIT_HEAD: &[u8] = b"audit_head";
/// The last id given to a queued message (an Ocean update or a destination's version).
pub(in crate::store) const QUEUE_SEQ: &[u8] = b"queue_seq";

/// `meta` key: the ids of every key that has sealed records in this store (8 bytes each).
pub(in crate::store) const SEAL_KEYS: &[u8] = b"seal_key_ids";

/// Trees whose records hold patient data: sealed when a key is configured. Their names are
/// part of each record's associated data.
pub(in crate::store) const REFERRALS: &str = "referrals";
pub(in crate::store) const VERSIONS: &str = "versions";
pub(in crate::store) const PAYLOADS: &str = "payloads";
pub(in crate::store) const UPDATES: &str = "updates";
/// Task states hold appointment times.
pub(in crate::store) const TASK_STATES: &str = "task_states";
/// Documents' records (titles) and their bytes (letters name the patient).
pub(in crate::store) const DOCUMENTS: &str = "documents";
pub(in crate::store) const DOCUMENT_BYTES: &str = "document_bytes";
/// Destinations' queued messages (their last errors may echo what a receiver was sent).
pub(in crate::store) const QUEUE: &str = "queue";
pub(super) const SEALED_TREES: [&str; 8] = [
    REFERRALS,
    VERSIONS,
    PAYLOADS,
    UPDATES,
    TASK_STATES,
    DOCUMENTS,
    DOCUMENT_BYTES,
    QUEUE,
];

#[derive(Clone)]
pub(in crate::store) struct Trees {
    pub(in crate::store) referrals: sled::Tree,
    pub(in crate::store) versions: sled::Tree,
    pub(in crate::store) payloads: sled::Tree,
    pub(in crate::store) deliveries: sled::Tree,
    pub(in crate::store) events: sled::Tree,
    pub(in crate::store) by_modified: sled::Tree,
    pub(in crate::store) meta: sled::Tree,
    pub(in crate::store) updates: sled::Tree,
    pub(in crate::store) open_updates: sled::Tree,
    pub(in crate::store) referral_updates: sled::Tree,
    pub(in crate::store) task_states: sled::Tree,
    pub(in crate::store) audit: sled::Tree,
    pub(in crate::store) documents: sled::Tree,
    pub(in crate::store) document_bytes: sled::Tree,
    pub(in crate::store) due_documents: sled::Tree,
    pub(in crate::store) queue: sled::Tree,
    /// The queues' indexes: due heads, each referral's chain, states, counts, pauses.
    pub(in crate::store) queue_index: sled::Tree,
}

impl Trees {
    pub(super) fn open(db: &sled::Db) -> Result<Self, StoreError> {
        let tree = |name: &str| db.open_tree(name).map_err(unavailable);
        Ok(Self {
            referrals: tree(REFERRALS)?,
            versions: tree(VERSIONS)?,
            payloads: tree(PAYLOADS)?,
            deliveries: tree("deliveries")?,
            events: tree("events")?,
            by_modified: tree("by_modified")?,
            meta: tree("meta")?,
            updates: tree(UPDATES)?,
            open_updates: tree("open_updates")?,
            referral_updates: tree("referral_updates")?,
            task_states: tree(TASK_STATES)?,
            audit: tree("audit")?,
            documents: tree(DOCUMENTS)?,
            document_bytes: tree(DOCUMENT_BYTES)?,
            due_documents: tree("due_documents")?,
            queue: tree(QUEUE)?,
            queue_index: tree("queue_index")?,
        })
    }
}

/// A sled error as a store error, caused by it. A failure to read or write the disk sets
/// recovery off: [`StoreError::Io`] when waiting can cure it (a full disk, a passing I/O
/// error), and [`StoreError::Failed`] when it cannot (a read-only or vanished filesystem, no
/// permission, corruption).
pub(super) fn from_sled(e: sled::Error, context: &str) -> StoreError {
    use std::io::ErrorKind;
    let error = match &e {
        sled::Error::Io(io)
            if matches!(
                io.kind(),
                ErrorKind::ReadOnlyFilesystem | ErrorKind::PermissionDenied | ErrorKind::NotFound
            ) =>
        {
            StoreError::failed(context)
        }
        sled::Error::Io(_) => StoreError::io(context),
        sled::Error::Corruption { .. } | sled::Error::ReportableBug(_) => {
            StoreError::failed(context)
        }
        _ => StoreError::unavailable(context),
    };
    error.caused_by(e)
}

/// A failed transaction as a store error: our own abort, or sled's failure.
pub(super) fn tx_error(e: TransactionError<StoreError>) -> StoreError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => unavailable(e),
    }
}

pub(super) fn unavailable(e: sled::Error) -> StoreError {
    from_sled(e, "sled")
}

pub(super) fn abort(e: StoreError) -> ConflictableTransactionError<StoreError> {
    ConflictableTransactionError::Abort(e)
}
