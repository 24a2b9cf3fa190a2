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
    let mut chain = ChainCheck::default();
    for entry in entries {
        chain.check(&entry)?;
    }
    Ok(chain.checked())
}

/// Checks a chain one entry at a time, from the first, so a long chain can be read in batches.
#[derive(Debug, Clone)]
pub struct ChainCheck {
    prev: String,
    expected_seq: u64,
}

impl Default for ChainCheck {
    fn default() -> Self {
        Self {
            prev: AUDIT_GENESIS.to_owned(),
            expected_seq: 1,
        }
    }
}

impl ChainCheck {
    /// Checks the next entry of the chain.
    ///
    /// # Errors
    /// Where and why the chain breaks: an entry missing, not linked to the one before, or not
    /// matching its hash.
    pub fn check(&mut self, entry: &AuditEntry) -> Result<(), AuditBreak> {
        let seq = entry.seq;
        if seq != self.expected_seq {
            return Err(AuditBreak {
                seq: self.expected_seq,
                reason: "the entry is missing",
            });
        }
        if entry.prev != self.prev {
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
        self.prev.clone_from(&entry.hash);
        self.expected_seq += 1;
        Ok(())
    }

    /// Entries checked so far.
    pub fn checked(&self) -> u64 {
        self.expected_seq - 1
    }
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
