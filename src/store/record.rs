//! The record format both stores share: which kinds of record are sealed and under what
//! context (the kind's name and the record's key), the key shapes that context uses, records as
//! JSON, payloads LZ4-compressed behind a format tag, and counters as u64 BE. A record sealed in
//! one store opens in the other with the same key, which is what lets `migrate` copy sealed
//! records without the key.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::store::error::StoreError;
use crate::store::seal::{Keyring, SEALED};

/// Record kinds whose records hold patient data: sealed when a key is configured. Each names
/// the embedded store's tree and is part of each record's associated data in both stores.
pub(in crate::store) const REFERRALS: &str = "referrals";
pub(in crate::store) const VERSIONS: &str = "versions";
pub(in crate::store) const PAYLOADS: &str = "payloads";
pub(in crate::store) const UPDATES: &str = "updates";
/// Task states hold appointment times.
pub(in crate::store) const TASK_STATES: &str = "task_states";
/// Documents' records (titles) and their bytes (letters name the patient).
pub(in crate::store) const DOCUMENTS: &str = "documents";
pub(in crate::store) const DOCUMENT_BYTES: &str = "document_bytes";
/// Queued messages (their last errors may echo what a receiver was sent).
pub(in crate::store) const QUEUE: &str = "queue";
/// Patients' completed eForms: their records and what was fetched (the patient, the note).
pub(in crate::store) const PATIENT_FORMS: &str = "patient_forms";
pub(in crate::store) const PATIENT_FORM_CONTENT: &str = "patient_form_content";
/// Every sealed kind.
pub(in crate::store) const SEALED_KINDS: [&str; 10] = [
    REFERRALS,
    VERSIONS,
    PAYLOADS,
    UPDATES,
    TASK_STATES,
    DOCUMENTS,
    DOCUMENT_BYTES,
    QUEUE,
    PATIENT_FORMS,
    PATIENT_FORM_CONTENT,
];

/// Referral ref `\0` version (u64 BE): a version's key in `versions` and `payloads`, and the
/// context its record and payload are sealed to in either store, so sealed records move
/// between the two.
pub(in crate::store) fn version_key(referral: &str, number: u64) -> Vec<u8> {
    let mut key = referral.as_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(&number.to_be_bytes());
    key
}

/// A version key, then the index (u32 BE): a document's key in `documents`, `document_bytes`
/// and `due_documents`, and the context its record and bytes are sealed to in either store.
pub(in crate::store) fn document_key(referral: &str, version: u64, index: u32) -> Vec<u8> {
    let mut key = version_key(referral, version);
    key.extend_from_slice(&index.to_be_bytes());
    key
}

/// A time as Unix microseconds (0 before 1970), as stored times and time-ordered keys hold it.
pub(in crate::store) fn micros(at: OffsetDateTime) -> u64 {
    u64::try_from(at.unix_timestamp_nanos() / 1000).unwrap_or(0)
}

/// The time of [`micros`].
pub(in crate::store) fn from_micros(micros: u64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// Format tags of stored payloads. LZ4 cuts the bytes sled writes (and rewrites when it
/// consolidates pages) about fourfold for FHIR JSON, which more than doubles write throughput;
/// decompression gives back the exact bytes received.
const PAYLOAD_RAW: u8 = 0;
const PAYLOAD_LZ4: u8 = 1;

/// Reads and writes the records of the [`SEALED`] kinds: sealed with the current key when one is
/// configured, plain otherwise. Records written before encryption was enabled are still read
/// (they start with `{` or a payload format tag, never with [`SEALED`]).
#[derive(Clone, Default)]
pub(in crate::store) struct Codec(pub(in crate::store) Option<Arc<Keyring>>);

impl Codec {
    pub(in crate::store) fn seal(
        &self,
        tree: &str,
        key: &[u8],
        plain: &[u8],
    ) -> Result<Vec<u8>, StoreError> {
        match &self.0 {
            Some(keys) => keys.seal(&context(tree, key), plain),
            None => Ok(plain.to_vec()),
        }
    }

    pub(in crate::store) fn open<'a>(
        &self,
        tree: &str,
        key: &[u8],
        stored: &'a [u8],
    ) -> Result<Cow<'a, [u8]>, StoreError> {
        if stored.first() != Some(&SEALED) {
            return Ok(Cow::Borrowed(stored));
        }
        match &self.0 {
            Some(keys) => keys.open(&context(tree, key), stored).map(Cow::Owned),
            None => Err(StoreError::corrupt(
                "the record is encrypted and storage.encryption_key is not set",
            )),
        }
    }

    pub(in crate::store) fn encode<T: Serialize>(
        &self,
        tree: &str,
        key: &[u8],
        value: &T,
    ) -> Result<Vec<u8>, StoreError> {
        self.seal(tree, key, &encode(value)?)
    }

    pub(in crate::store) fn decode<T: for<'de> Deserialize<'de>>(
        &self,
        tree: &str,
        key: &[u8],
        stored: &[u8],
    ) -> Result<T, StoreError> {
        decode(&self.open(tree, key, stored)?)
    }
}

/// The associated data of a sealed record: its tree and key.
fn context(tree: &str, key: &[u8]) -> Vec<u8> {
    let mut context = Vec::with_capacity(tree.len() + 1 + key.len());
    context.extend_from_slice(tree.as_bytes());
    context.push(0);
    context.extend_from_slice(key);
    context
}

pub(in crate::store) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value)
        .map_err(|e| StoreError::corrupt("a record does not encode").caused_by(e))
}

pub(in crate::store) fn decode<T: for<'de> Deserialize<'de>>(
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes)
        .map_err(|e| StoreError::corrupt("a record does not decode").caused_by(e))
}

pub(in crate::store) fn read_u64(bytes: &[u8]) -> Result<u64, StoreError> {
    let array: [u8; 8] = bytes
        .try_into()
        .map_err(|_| StoreError::corrupt("counter is not 8 bytes"))?;
    Ok(u64::from_be_bytes(array))
}

/// `raw` LZ4-compressed behind its format tag.
pub(in crate::store) fn compress(raw: &[u8]) -> Vec<u8> {
    let mut sealed = vec![PAYLOAD_LZ4];
    sealed.extend_from_slice(&lz4_flex::compress_prepend_size(raw));
    sealed
}

/// The bytes as received, from a payload written by [`compress`] (or stored raw).
pub(in crate::store) fn open_payload(stored: &[u8]) -> Result<Bytes, StoreError> {
    match stored.split_first() {
        Some((&PAYLOAD_LZ4, compressed)) => lz4_flex::decompress_size_prepended(compressed)
            .map(Bytes::from)
            .map_err(|e| StoreError::corrupt(format!("payload does not decompress: {e}"))),
        Some((&PAYLOAD_RAW, raw)) => Ok(Bytes::copy_from_slice(raw)),
        _ => Err(StoreError::corrupt("payload has an unknown format tag")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_come_back_byte_for_byte() {
        for raw in [
            &b""[..],
            b"{}",
            "{\"name\": \"\u{e9}\"}".as_bytes(),
            &[0xff, 0x00, 0x7f][..],
        ] {
            let sealed = compress(raw);
            assert_eq!(sealed[0], PAYLOAD_LZ4);
            assert_eq!(open_payload(&sealed).unwrap().as_ref(), raw);
        }
        assert_eq!(open_payload(&[PAYLOAD_RAW, b'x']).unwrap().as_ref(), b"x");
        assert!(matches!(
            open_payload(&[9, 1]),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(matches!(
            open_payload(&[PAYLOAD_LZ4, 10, 0, 0, 0, 0xf0]),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(matches!(open_payload(&[]), Err(StoreError::Corrupt { .. })));
    }
}
