//! The append-only audit log: each entry holds the SHA-256 of the one before it, so a changed
//! or removed entry breaks the chain from there on.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::deliveries::sha256_hex;
use super::error::StoreError;

/// One entry of the append-only audit log. Each holds the SHA-256 of the previous entry, so
/// changing or removing one breaks the chain from there on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// e.g. `DELIVERY_STORED`, `EXPORTED_REFERRALS`.
    pub action: String,
    /// Who: an integration, an API client, the OS user of a command.
    pub actor: String,
    pub details: serde_json::Value,
    /// Hash of the previous entry (64 zeros for the first).
    pub prev: String,
    /// SHA-256 over `prev` and this entry's other fields.
    pub hash: String,
}

impl AuditEntry {
    /// The hash this entry must carry.
    pub fn expected_hash(&self) -> String {
        let content = serde_json::json!([
            self.seq,
            self.at.unix_timestamp_nanos().to_string(),
            self.action,
            self.actor,
            self.details,
            self.prev
        ]);
        sha256_hex(content.to_string().as_bytes())
    }
}

/// Where and why an audit chain breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit entry {seq} is broken: {reason}")]
pub struct AuditBreak {
    pub seq: u64,
    pub reason: &'static str,
}

/// Checks a whole chain, in order; returns how many entries it holds.
pub fn verify_chain(entries: impl IntoIterator<Item = AuditEntry>) -> Result<u64, AuditBreak> {
    let mut prev = AUDIT_GENESIS.to_owned();
    let mut expected_seq = 1;
    for entry in entries {
        let seq = entry.seq;
        if seq != expected_seq {
            return Err(AuditBreak {
                seq: expected_seq,
                reason: "the entry is missing",
            });
        }
        if entry.prev != prev {
            return Err(AuditBreak {
                seq,
                reason: "it does not follow the entry before it",
            });
        }
        if entry.hash != entry.expected_hash() {
            return Err(AuditBreak {
                seq,
                reason: "its content does not match its hash",
            });
        }
        prev = entry.hash;
        expected_seq += 1;
    }
    Ok(expected_seq - 1)
}

/// Hash of "no previous entry".
pub const AUDIT_GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Appending to and reading the audit log.
#[async_trait]
pub trait AuditStore: Send + Sync {
    /// Appends an audit entry, durably.
    async fn audit(
        &self,
        action: &str,
        actor: &str,
        details: serde_json::Value,
    ) -> Result<AuditEntry, StoreError>;

    /// Audit entries after `after`, in order.
    async fn audit_entries(&self, after: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError>;
}
