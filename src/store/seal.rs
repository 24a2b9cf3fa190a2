//! Encryption at rest: AES-256-GCM over whole records.
//!
//! A sealed record is `SEALED`, the 8-byte id of the key that sealed it, a fresh random 12-byte
//! nonce, then the ciphertext with its 16-byte tag. The id lets a record sealed before a key
//! rotation still be opened with a previous key. The associated data names the tree and the
//! record's key, so a sealed value copied under another key does not open.
//!
//! Random nonces are safe for about 2^32 records per key; rotate long before that.

use aws_lc_rs::aead::{AES_256_GCM, Aad, NONCE_LEN, Nonce, RandomizedNonceKey};

use super::error::StoreError;

/// First byte of a sealed record. JSON records start with `{` and payloads with a format tag
/// below this, so sealed and unsealed records can be told apart.
pub const SEALED: u8 = 2;

const KEY_ID_LEN: usize = 8;
const HEADER_LEN: usize = 1 + KEY_ID_LEN + NONCE_LEN;

/// Identifies a key without revealing it: the start of a SHA-256 over a label and the key.
pub type KeyId = [u8; KEY_ID_LEN];

struct Key {
    id: KeyId,
    aead: RandomizedNonceKey,
}

/// The current key, which seals, and earlier ones, which only open.
pub struct Keyring {
    current: Key,
    previous: Vec<Key>,
}

impl Keyring {
    /// The current key, which seals, and earlier ones, which only open (32 bytes each).
    pub fn new(current: &[u8; 32], previous: &[[u8; 32]]) -> anyhow::Result<Self> {
        let key = |bytes: &[u8; 32]| -> anyhow::Result<Key> {
            Ok(Key {
                id: key_id(bytes),
                aead: RandomizedNonceKey::new(&AES_256_GCM, bytes)
                    .map_err(|_| anyhow::anyhow!("cannot set up AES-256-GCM"))?,
            })
        };
        Ok(Self {
            current: key(current)?,
            previous: previous.iter().map(key).collect::<anyhow::Result<_>>()?,
        })
    }

    /// The id of the key that seals.
    pub fn current_id(&self) -> KeyId {
        self.current.id
    }

    /// Whether a record sealed with `id` can be opened.
    pub fn knows(&self, id: &KeyId) -> bool {
        self.find(id).is_some()
    }

    fn find(&self, id: &KeyId) -> Option<&Key> {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| &k.id == id)
    }

    /// Seals `plain` with the current key, bound to `context` (tree and record key).
    pub fn seal(&self, context: &[u8], plain: &[u8]) -> Result<Vec<u8>, StoreError> {
        let mut body = plain.to_vec();
        let nonce = self
            .current
            .aead
            .seal_in_place_append_tag(Aad::from(context), &mut body)
            .map_err(|_| StoreError::unavailable("sealing a record failed"))?;
        let mut sealed = Vec::with_capacity(HEADER_LEN + body.len());
        sealed.push(SEALED);
        sealed.extend_from_slice(&self.current.id);
        sealed.extend_from_slice(nonce.as_ref());
        sealed.extend_from_slice(&body);
        Ok(sealed)
    }

    /// Opens a record made by [`Keyring::seal`] under the same `context`.
    pub fn open(&self, context: &[u8], sealed: &[u8]) -> Result<Vec<u8>, StoreError> {
        let id = sealed_key_id(sealed)
            .ok_or_else(|| StoreError::corrupt("a sealed record is truncated"))?;
        let key = self.find(&id).ok_or_else(|| unknown_key(&id))?;
        let nonce = Nonce::try_assume_unique_for_key(&sealed[1 + KEY_ID_LEN..HEADER_LEN])
            .map_err(|_| StoreError::corrupt("a sealed record is truncated"))?;
        let mut body = sealed[HEADER_LEN..].to_vec();
        let plain_len = key
            .aead
            .open_in_place(nonce, Aad::from(context), &mut body)
            .map_err(|_| {
                StoreError::corrupt("a sealed record failed authentication (altered or moved)")
            })?
            .len();
        body.truncate(plain_len);
        Ok(body)
    }
}

/// The key id of a sealed record; `None` when `stored` is not sealed (or too short to be).
pub fn sealed_key_id(stored: &[u8]) -> Option<KeyId> {
    if stored.first() != Some(&SEALED) || stored.len() < HEADER_LEN {
        return None;
    }
    stored[1..=KEY_ID_LEN].try_into().ok()
}

/// The error for a record sealed with a key that is not configured.
pub fn unknown_key(id: &KeyId) -> StoreError {
    StoreError::corrupt(format!(
        "a record is sealed with key {}, which is neither storage.encryption_key nor among storage.previous_keys",
        hex::encode(id)
    ))
}

fn key_id(key: &[u8; 32]) -> KeyId {
    let mut input = b"referral-relay storage key id\0".to_vec();
    input.extend_from_slice(key);
    let digest = crate::digest::sha256(&input);
    let mut id = [0; KEY_ID_LEN];
    id.copy_from_slice(&digest[..KEY_ID_LEN]);
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_records_open_with_the_same_or_a_previous_key_and_context_only() {
        let (old, new) = ([7u8; 32], [9u8; 32]);
        let before = Keyring::new(&old, &[]).unwrap();
        let sealed = before.seal(b"referrals\0A", b"Jane").unwrap();
        assert_eq!(sealed[0], SEALED);
        assert!(!sealed.windows(4).any(|w| w == b"Jane"));
        // A fresh nonce each time: the same record never seals the same way twice.
        assert_ne!(sealed, before.seal(b"referrals\0A", b"Jane").unwrap());
        assert_eq!(before.open(b"referrals\0A", &sealed).unwrap(), b"Jane");
        // Moved under another key: refused.
        assert!(before.open(b"referrals\0B", &sealed).is_err());
        let mut altered = sealed.clone();
        *altered.last_mut().unwrap() ^= 1;
        assert!(before.open(b"referrals\0A", &altered).is_err());

        let rotated = Keyring::new(&new, &[old]).unwrap();
        assert_eq!(rotated.open(b"referrals\0A", &sealed).unwrap(), b"Jane");
        assert_ne!(rotated.current_id(), before.current_id());
        let without_old = Keyring::new(&new, &[]).unwrap();
        let e = without_old.open(b"referrals\0A", &sealed).unwrap_err();
        assert!(
            e.to_string().contains(&hex::encode(before.current_id())),
            "{e}"
        );
    }
}
