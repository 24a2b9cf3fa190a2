//! How records are stored: JSON, sealed with AES-256-GCM for the trees that hold patient data
//! when a key is configured, and raw payloads LZ4-compressed behind a format tag.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::trees::{SEAL_KEYS, Trees, unavailable};
use crate::store::error::StoreError;
use crate::store::seal::{KeyId, Keyring, SEALED, sealed_key_id, unknown_key};

/// Format tags of stored payloads. LZ4 cuts the bytes sled writes (and rewrites when it
/// consolidates pages) about fourfold for FHIR JSON, which more than doubles write throughput;
/// decompression gives back the exact bytes received.
const PAYLOAD_RAW: u8 = 0;
const PAYLOAD_LZ4: u8 = 1;

/// Reads and writes the records of [`SEALED_TREES`](super::trees::SEALED_TREES): sealed with the current key when one is
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

    /// Refuses to run on a store holding records this keyring cannot open: better a clear
    /// error at start than failing reads later. The store lists every key id that ever sealed
    /// a record in it (`meta`), so the check is complete without reading the records; the
    /// first and last record of each sealed tree are looked at as well. Then records the
    /// current key (when there is one) in that list, before it seals anything.
    pub(super) fn admit_keys(&self, trees: &Trees) -> Result<(), StoreError> {
        let listed = trees.meta.get(SEAL_KEYS).map_err(unavailable)?;
        let mut ids: Vec<KeyId> = listed
            .as_deref()
            .unwrap_or_default()
            .chunks_exact(8)
            .filter_map(|c| c.try_into().ok())
            .collect();
        let mut plain = false;
        for tree in [
            &trees.referrals,
            &trees.versions,
            &trees.payloads,
            &trees.updates,
            &trees.task_states,
            &trees.documents,
            &trees.document_bytes,
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
            match &self.0 {
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
        if let Some(keys) = &self.0 {
            if plain {
                tracing::warn!(
                    "records written before encryption was enabled are stored unencrypted; run `referral-relay rekey` to seal them"
                );
            }
            let current = keys.current_id();
            if !ids.contains(&current) {
                ids.push(current);
                trees
                    .meta
                    .insert(SEAL_KEYS, ids.concat())
                    .map_err(unavailable)?;
            }
        }
        Ok(())
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

pub(super) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value)
        .map_err(|e| StoreError::corrupt("a record does not encode").caused_by(e))
}

pub(super) fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes)
        .map_err(|e| StoreError::corrupt("a record does not decode").caused_by(e))
}

pub(super) fn read_u64(bytes: &[u8]) -> Result<u64, StoreError> {
    let array: [u8; 8] = bytes
        .try_into()
        .map_err(|_| StoreError::corrupt("counter is not 8 bytes"))?;
    Ok(u64::from_be_bytes(array))
}

/// `raw` LZ4-compressed behind its format tag (also the PostgreSQL store's payload format).
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
