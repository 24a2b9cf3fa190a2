//! How rows hold the relay's records: JSON, and payloads LZ4-compressed behind a format tag,
//! each sealed with AES-256-GCM when `storage.encryption_key` is set (see [`crate::store::seal`]).
//!
//! A sealed record is bound to the same context as in the embedded store: the name of the tree
//! it lives in there and its key there (a referral's reference; reference, NUL and version; an
//! update's id). So `referral-relay migrate` copies sealed records into PostgreSQL without the
//! key, and they open here with it.

use serde::{Deserialize, Serialize};

use super::{PgStore, db_error};
use crate::store::deliveries::{ReferralRecord, VersionRecord};
use crate::store::documents::DocumentRecord;
use crate::store::error::StoreError;
use crate::store::outbox::{TaskState, UpdateRecord};
use crate::store::record::{
    DOCUMENT_BYTES, DOCUMENTS, PAYLOADS, REFERRALS, TASK_STATES, UPDATES, VERSIONS,
};
use crate::store::record::{compress, open_payload};
use crate::store::record::{document_key, version_key};
use crate::store::seal::{KeyId, Keyring, unknown_key};

/// The context of a setting in `relay_settings` (no tree of the embedded store holds them).
const SETTINGS: &str = "relay_settings";
/// First byte of a setting stored unsealed.
pub(super) const PLAIN_SETTING: u8 = 0;

/// A setting stored unsealed.
pub(in crate::store) fn plain_setting(value: &[u8]) -> Vec<u8> {
    let mut stored = Vec::with_capacity(1 + value.len());
    stored.push(PLAIN_SETTING);
    stored.extend_from_slice(value);
    stored
}

/// The setting listing the id of every key that ever sealed a record here, 8 bytes each (as
/// the embedded store's `seal_key_ids`, which `migrate` copies here).
pub(in crate::store) const SEAL_KEY_IDS: &str = "seal_key_ids";

/// Refuses to run on a database holding records `keys` cannot open (better a clear error at
/// start than failing reads later), then lists the current key, before it seals anything.
/// Replicas starting at once with different keys each add theirs (the row is locked).
///
/// # Errors
/// `Unavailable` when a record was sealed and no key is configured, or the database refuses;
/// `Corrupt` when a record was sealed with a key that is neither current nor previous.
pub(super) async fn admit_keys(
    client: &mut tokio_postgres::Client,
    keys: Option<&Keyring>,
) -> Result<(), StoreError> {
    let tx = client
        .transaction()
        .await
        .map_err(db_error("starting the key check"))?;
    if keys.is_some() {
        tx.execute(
            "INSERT INTO relay_settings (name, value) VALUES ($1, ''::bytea)
             ON CONFLICT (name) DO NOTHING",
            &[&SEAL_KEY_IDS],
        )
        .await
        .map_err(db_error("listing the sealing keys"))?;
    }
    let listed: Vec<u8> = tx
        .query_opt(
            "SELECT value FROM relay_settings WHERE name = $1 FOR UPDATE",
            &[&SEAL_KEY_IDS],
        )
        .await
        .map_err(db_error("reading the sealing keys"))?
        .map(|row| row.get(0))
        .unwrap_or_default();
    let mut ids: Vec<KeyId> = listed
        .chunks_exact(8)
        .filter_map(|c| c.try_into().ok())
        .collect();
    for id in &ids {
        match keys {
            None => {
                return Err(StoreError::unavailable(format!(
                    "the database holds records encrypted with key {}; set storage.encryption_key",
                    hex::encode(id)
                )));
            }
            Some(keys) if !keys.knows(id) => return Err(unknown_key(id)),
            Some(_) => {}
        }
    }
    if let Some(keys) = keys
        && !ids.contains(&keys.current_id())
    {
        ids.push(keys.current_id());
        tx.execute(
            "UPDATE relay_settings SET value = $2 WHERE name = $1",
            &[&SEAL_KEY_IDS, &ids.concat()],
        )
        .await
        .map_err(db_error("listing the sealing key"))?;
    }
    tx.commit()
        .await
        .map_err(db_error("committing the key check"))
}

impl PgStore {
    fn encode<T: Serialize>(
        &self,
        tree: &str,
        key: &[u8],
        value: &T,
    ) -> Result<Vec<u8>, StoreError> {
        self.codec.encode(tree, key, value)
    }

    fn decode<T: for<'de> Deserialize<'de>>(
        &self,
        tree: &str,
        key: &[u8],
        stored: &[u8],
    ) -> Result<T, StoreError> {
        self.codec.decode(tree, key, stored)
    }

    pub(super) fn seal_referral(&self, record: &ReferralRecord) -> Result<Vec<u8>, StoreError> {
        self.encode(REFERRALS, record.referral.as_str().as_bytes(), record)
    }

    pub(super) fn open_referral(
        &self,
        referral: &str,
        stored: &[u8],
    ) -> Result<ReferralRecord, StoreError> {
        self.decode(REFERRALS, referral.as_bytes(), stored)
    }

    pub(super) fn seal_version(
        &self,
        referral: &str,
        record: &VersionRecord,
    ) -> Result<Vec<u8>, StoreError> {
        self.encode(VERSIONS, &version_key(referral, record.version), record)
    }

    pub(super) fn open_version(
        &self,
        referral: &str,
        version: u64,
        stored: &[u8],
    ) -> Result<VersionRecord, StoreError> {
        self.decode(VERSIONS, &version_key(referral, version), stored)
    }

    /// The bytes received, compressed, then sealed.
    pub(super) fn seal_payload(
        &self,
        referral: &str,
        version: u64,
        raw: &[u8],
    ) -> Result<Vec<u8>, StoreError> {
        self.codec
            .seal(PAYLOADS, &version_key(referral, version), &compress(raw))
    }

    /// The bytes received, exactly.
    pub(super) fn open_payload(
        &self,
        referral: &str,
        version: u64,
        stored: &[u8],
    ) -> Result<bytes::Bytes, StoreError> {
        open_payload(
            &self
                .codec
                .open(PAYLOADS, &version_key(referral, version), stored)?,
        )
    }

    pub(super) fn seal_document(&self, record: &DocumentRecord) -> Result<Vec<u8>, StoreError> {
        let key = document_key(record.referral.as_str(), record.version, record.index);
        self.encode(DOCUMENTS, &key, record)
    }

    pub(super) fn open_document(
        &self,
        referral: &str,
        version: u64,
        index: u32,
        stored: &[u8],
    ) -> Result<DocumentRecord, StoreError> {
        self.decode(DOCUMENTS, &document_key(referral, version, index), stored)
    }

    pub(super) fn seal_document_bytes(
        &self,
        record: &DocumentRecord,
        bytes: &[u8],
    ) -> Result<Vec<u8>, StoreError> {
        let key = document_key(record.referral.as_str(), record.version, record.index);
        self.codec.seal(DOCUMENT_BYTES, &key, bytes)
    }

    pub(super) fn open_document_bytes(
        &self,
        referral: &str,
        version: u64,
        index: u32,
        stored: &[u8],
    ) -> Result<bytes::Bytes, StoreError> {
        let key = document_key(referral, version, index);
        Ok(bytes::Bytes::from(
            self.codec.open(DOCUMENT_BYTES, &key, stored)?.into_owned(),
        ))
    }

    pub(super) fn open_update(&self, id: u64, stored: &[u8]) -> Result<UpdateRecord, StoreError> {
        let mut record: UpdateRecord = self.decode(UPDATES, &id.to_be_bytes(), stored)?;
        record.id = id;
        Ok(record)
    }

    pub(super) fn seal_task_state(
        &self,
        referral: &str,
        task: &TaskState,
    ) -> Result<Vec<u8>, StoreError> {
        self.encode(TASK_STATES, referral.as_bytes(), task)
    }

    pub(super) fn open_task_state(
        &self,
        referral: &str,
        stored: &[u8],
    ) -> Result<TaskState, StoreError> {
        self.decode(TASK_STATES, referral.as_bytes(), stored)
    }

    /// A secret setting (the token signing key), sealed like patient data; without a key,
    /// [`PLAIN_SETTING`] and the bytes (a random key may start with any byte, even the one
    /// that marks sealed records).
    pub(super) fn seal_setting(&self, name: &str, value: &[u8]) -> Result<Vec<u8>, StoreError> {
        if self.codec.0.is_some() {
            self.codec.seal(SETTINGS, name.as_bytes(), value)
        } else {
            Ok(plain_setting(value))
        }
    }

    pub(super) fn open_setting(&self, name: &str, stored: &[u8]) -> Result<Vec<u8>, StoreError> {
        match stored.split_first() {
            Some((&PLAIN_SETTING, value)) => Ok(value.to_vec()),
            _ => Ok(self
                .codec
                .open(SETTINGS, name.as_bytes(), stored)?
                .into_owned()),
        }
    }
}
