//! `[storage]` and `[retention]`: encryption at rest and how long old versions are kept.

use anyhow::bail;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::secret::{Secret, SecretBytes};

/// Retention of old versions and of delivered destination messages.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Versions received more than this many days ago are purged (their payload and summary),
    /// except each referral's latest. 0 keeps everything forever.
    pub keep_days: u64,
    /// Messages of destinations' queues that were delivered (or discarded) more than this many
    /// days ago are forgotten (the versions themselves stay). 0 keeps them forever.
    #[serde(default = "default_delivered_keep_days")]
    pub delivered_keep_days: u64,
}

fn default_delivered_keep_days() -> u64 {
    90
}

/// The largest page cache `storage.cache_mib` may ask for: 1 TiB.
pub const MAX_CACHE_MIB: u64 = 1 << 20;
/// The longest write queue `storage.write_queue` may ask for (each waiting delivery holds its body
/// in memory, so a longer queue is memory, not throughput).
pub const MAX_WRITE_QUEUE: usize = 1_000_000;

/// Encryption at rest: with a key, raw payloads, referral and version summaries and outgoing
/// updates are sealed with AES-256-GCM before they reach the disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// 32 random bytes, base64. Empty: records are stored unencrypted.
    #[serde(
        deserialize_with = "optional_key",
        serialize_with = "redacted_optional_key"
    )]
    pub encryption_key: Option<EncryptionKey>,
    /// Earlier keys, still used to read records sealed with them; `referral-relay rekey`
    /// re-seals those with the current key, after which they can be removed. A list, or one
    /// string of keys separated by commas or whitespace (so `_FILE` and environment variables
    /// can carry them).
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "list_of_keys"
    )]
    pub previous_keys: Vec<EncryptionKey>,
    /// The embedded store's page cache, in MiB. Resident memory grows to about this much
    /// beyond the service's own; more cache serves more reads from memory.
    pub cache_mib: u64,
    /// How many writes may queue for the store's writer thread. A delivery that finds the queue
    /// full is answered 503 with `Retry-After` (Ocean retries) instead of waiting.
    pub write_queue: usize,
    /// Where records are kept: the embedded store in the data dir, or PostgreSQL.
    pub backend: Backend,
    /// PostgreSQL: a `postgres://` URL or libpq connection string (`url_FILE` reads it from a
    /// file; it may hold a password).
    pub url: Secret,
    /// PostgreSQL: the most connections this process opens (plus one for `LISTEN`).
    pub max_connections: usize,
    /// PostgreSQL: the schema the tables live in; created if missing.
    pub schema: String,
}

/// `storage.backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// sled in `server.data_dir`: one process, nothing to run beside it.
    Sled,
    /// PostgreSQL at `storage.url`: several replicas on one database.
    Postgres,
}

impl StorageConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.encryption_key.is_none() && !self.previous_keys.is_empty() {
            bail!("storage.previous_keys is set but storage.encryption_key is not");
        }
        if !(1..=MAX_CACHE_MIB).contains(&self.cache_mib) {
            bail!("storage.cache_mib must be between 1 and {MAX_CACHE_MIB} (MiB)");
        }
        if !(1..=MAX_WRITE_QUEUE).contains(&self.write_queue) {
            bail!("storage.write_queue must be between 1 and {MAX_WRITE_QUEUE}");
        }
        if self.backend == Backend::Postgres {
            if self.url.is_empty() {
                bail!(
                    "storage.backend is postgres but storage.url is empty (e.g. postgres://relay@db/relay)"
                );
            }
            if !(1..=1000).contains(&self.max_connections) {
                bail!("storage.max_connections must be between 1 and 1000");
            }
            if self.schema.is_empty()
                || self.schema.len() > 50
                || !self
                    .schema
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                bail!("storage.schema must be 1 to 50 ASCII letters, digits or _");
            }
        }
        Ok(())
    }
}

/// An AES-256 key from configuration: base64 of exactly 32 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct EncryptionKey(SecretBytes);

impl EncryptionKey {
    /// Reads base64 of 32 bytes; the error says what is wrong, never the value.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bytes = STANDARD
            .decode(text.trim())
            .map_err(|_| "not valid base64".to_owned())?;
        if bytes.len() != 32 {
            return Err(format!(
                "must be 32 bytes (base64 of 32 random bytes), not {}",
                bytes.len()
            ));
        }
        Ok(Self(SecretBytes::new(bytes)))
    }

    pub fn bytes(&self) -> [u8; 32] {
        let mut key = [0; 32];
        key.copy_from_slice(self.0.expose());
        key
    }
}

impl<'de> Deserialize<'de> for EncryptionKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = Secret::deserialize(d)?;
        Self::parse(text.expose()).map_err(serde::de::Error::custom)
    }
}

/// An empty string for no key.
fn optional_key<'de, D: Deserializer<'de>>(d: D) -> Result<Option<EncryptionKey>, D::Error> {
    let text = Secret::deserialize(d)?;
    if text.is_empty() {
        return Ok(None);
    }
    EncryptionKey::parse(text.expose())
        .map(Some)
        .map_err(serde::de::Error::custom)
}

fn redacted_optional_key<S: Serializer>(
    key: &Option<EncryptionKey>,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_str(if key.is_some() { "[redacted]" } else { "" })
}

/// A list of keys, or one string of them separated by commas or whitespace.
fn list_of_keys<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<EncryptionKey>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrString {
        List(Vec<Secret>),
        Separated(String),
    }
    let texts: Vec<String> = match ListOrString::deserialize(d)? {
        ListOrString::List(list) => list.iter().map(|s| s.expose().to_owned()).collect(),
        ListOrString::Separated(text) => text
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|k| !k.is_empty())
            .map(str::to_owned)
            .collect(),
    };
    texts
        .iter()
        .enumerate()
        .map(|(i, text)| {
            EncryptionKey::parse(text)
                .map_err(|e| serde::de::Error::custom(format!("key {i}: {e}")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_must_be_32_bytes_of_base64_and_errors_do_not_echo_them() {
        let good = STANDARD.encode([1u8; 32]);
        assert_eq!(EncryptionKey::parse(&good).unwrap().bytes(), [1u8; 32]);
        let short = STANDARD.encode([1u8; 16]);
        let e = EncryptionKey::parse(&short).unwrap_err();
        assert!(e.contains("32 bytes") && !e.contains(&short), "{e}");
        let e = EncryptionKey::parse("not base64!!").unwrap_err();
        assert!(e.contains("base64") && !e.contains("not base64!!"), "{e}");
        let orphan = StorageConfig {
            encryption_key: None,
            previous_keys: vec![EncryptionKey::parse(&good).unwrap()],
            cache_mib: 64,
            write_queue: 1024,
            backend: Backend::Sled,
            url: Secret::new(""),
            max_connections: 16,
            schema: "public".into(),
        };
        assert!(orphan.validate().is_err());
        let sized = |cache_mib, write_queue| {
            StorageConfig {
                encryption_key: None,
                previous_keys: Vec::new(),
                cache_mib,
                write_queue,
                backend: Backend::Sled,
                url: Secret::new(""),
                max_connections: 16,
                schema: "public".into(),
            }
            .validate()
        };
        assert!(sized(64, 1024).is_ok());
        assert!(sized(MAX_CACHE_MIB, MAX_WRITE_QUEUE).is_ok());
        for (cache, queue) in [(0, 1024), (MAX_CACHE_MIB + 1, 1024), (64, 0)] {
            assert!(sized(cache, queue).is_err(), "{cache} {queue}");
        }
        let e = sized(64, 2_305_843_009_213_693_952)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("storage.write_queue must be between 1 and"),
            "{e}"
        );
    }
}
