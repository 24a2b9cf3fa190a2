//! The trees of the database and the names of its `meta` keys, and how sled's errors become
//! store errors.

use sled::transaction::{ConflictableTransactionError, TransactionError};

use crate::store::error::StoreError;
use crate::store::record::{
    Codec, DOCUMENT_BYTES, DOCUMENTS, PATIENT_FORM_CONTENT, PATIENT_FORMS, PAYLOADS, QUEUE,
    REFERRALS, TASK_STATES, UPDATES, VERSIONS,
};
use crate::store::seal::{KeyId, sealed_key_id, unknown_key};

pub(in crate::store) const EVENT_SEQ: &[u8] = b"event_seq";
pub(super) const READY_MARKER: &[u8] = b"ready_marker";
pub(super) const LAST_RECEIVED: &[u8] = b"last_received_micros";
pub(in crate::store) const AUDIT_HEAD: &[u8] = b"audit_head";
/// The last id given to a queued message (an Ocean update or a destination's version).
pub(in crate::store) const QUEUE_SEQ: &[u8] = b"queue_seq";

/// `meta` key: the ids of every key that has sealed records in this store (8 bytes each).
pub(in crate::store) const SEAL_KEYS: &[u8] = b"seal_key_ids";

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
    /// Patients' completed eForms (see `patient_forms.rs`).
    pub(in crate::store) patient_forms: sled::Tree,
    pub(in crate::store) patient_form_content: sled::Tree,
    pub(in crate::store) patient_form_dedup: sled::Tree,
    pub(in crate::store) due_patient_forms: sled::Tree,
    /// The console's sessions (see `console.rs`).
    pub(in crate::store) console_sessions: sled::Tree,
    pub(in crate::store) console_visits: sled::Tree,
    /// How often each screening rule fired (see `screening.rs`).
    pub(in crate::store) screening_tallies: sled::Tree,
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
            patient_forms: tree(PATIENT_FORMS)?,
            patient_form_content: tree(PATIENT_FORM_CONTENT)?,
            patient_form_dedup: tree("patient_form_dedup")?,
            due_patient_forms: tree("due_patient_forms")?,
            console_sessions: tree("console_sessions")?,
            console_visits: tree("console_visits")?,
            screening_tallies: tree("screening_tallies")?,
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

impl Trees {
    /// Refuses to run on a store holding records this keyring cannot open: better a clear
    /// error at start than failing reads later (`codec` holds the keyring). The store lists every key id that ever sealed
    /// a record in it (`meta`), so the check is complete without reading the records; the
    /// first and last record of each sealed tree are looked at as well. Then records the
    /// current key (when there is one) in that list, before it seals anything.
    pub(super) fn admit_keys(&self, codec: &Codec) -> Result<(), StoreError> {
        let listed = self.meta.get(SEAL_KEYS).map_err(unavailable)?;
        let mut ids: Vec<KeyId> = listed
            .as_deref()
            .unwrap_or_default()
            .chunks_exact(8)
            .filter_map(|c| c.try_into().ok())
            .collect();
        let mut plain = false;
        for tree in [
            &self.referrals,
            &self.versions,
            &self.payloads,
            &self.updates,
            &self.task_states,
            &self.documents,
            &self.document_bytes,
            &self.patient_forms,
            &self.patient_form_content,
        ] {
            for end in [tree.first(), tree.last()] {
                let Some((_, value)) = end.map_err(unavailable)? else {
                    continue;
                };
                match sealed_key_id(&value) {
                    Some(id) if !ids.contains(&id) => ids.push(id),
                    Some(_) => {}
                    None => plain = true,
                }
            }
        }
        for id in &ids {
            match &codec.0 {
                None => {
                    return Err(StoreError::unavailable(format!(
                        "the store holds records encrypted with key {}; set storage.encryption_key",
                        hex::encode(id)
                    )));
                }
                Some(keys) if !keys.knows(id) => return Err(unknown_key(id)),
                Some(_) => {}
            }
        }
        if let Some(keys) = &codec.0 {
            if plain {
                tracing::warn!(
                    "records written before encryption was enabled are stored unencrypted; run `referral-relay rekey` to seal them"
                );
            }
            let current = keys.current_id();
            if !ids.contains(&current) {
                ids.push(current);
                self.meta
                    .insert(SEAL_KEYS, ids.concat())
                    .map_err(unavailable)?;
            }
        }
        Ok(())
    }
}
