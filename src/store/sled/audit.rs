//! The audit log: an append-only chain, each entry holding the hash of the one before.

use async_trait::async_trait;
use sled::Transactional;
use sled::transaction::ConflictableTransactionError;
use time::OffsetDateTime;

use super::codec::{decode, encode};
use super::handle::SledStore;
use super::open::Open;
use super::trees::{AUDIT_HEAD, abort, tx_error, unavailable};
use super::writer::Target;
use crate::store::audit::{AUDIT_GENESIS, AuditEntry, AuditStore};
use crate::store::error::StoreError;

impl Open {
    async fn audit(
        &self,
        action: &str,
        actor: &str,
        details: serde_json::Value,
    ) -> Result<AuditEntry, StoreError> {
        let (action, actor) = (action.to_owned(), actor.to_owned());
        self.writer
            .write(move |Target { trees: t, .. }| {
                (&t.meta, &t.audit)
                    .transaction(|(meta, audit)| {
                        append_audit(
                            meta,
                            audit,
                            OffsetDateTime::now_utc(),
                            &action,
                            &actor,
                            details.clone(),
                        )
                    })
                    .map_err(tx_error)
            })
            .await
    }

    async fn audit_entries(&self, after: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        self.trees
            .audit
            .range(after.saturating_add(1).to_be_bytes()..)
            .take(limit)
            .map(|item| decode(&item.map_err(unavailable)?.1))
            .collect()
    }
}

/// Appends an entry chained to the current head, inside the caller's transaction.
pub(super) fn append_audit(
    meta: &sled::transaction::TransactionalTree,
    audit: &sled::transaction::TransactionalTree,
    at: OffsetDateTime,
    action: &str,
    actor: &str,
    details: serde_json::Value,
) -> Result<AuditEntry, ConflictableTransactionError<StoreError>> {
    let (seq, prev) = match meta.get(AUDIT_HEAD)? {
        Some(head) => {
            let (seq, prev): (u64, String) = decode(&head).map_err(abort)?;
            (seq + 1, prev)
        }
        None => (1, AUDIT_GENESIS.to_owned()),
    };
    let mut entry = AuditEntry {
        seq,
        at,
        action: action.to_owned(),
        actor: actor.to_owned(),
        details,
        prev,
        hash: String::new(),
    };
    entry.hash = entry.expected_hash();
    audit.insert(&seq.to_be_bytes(), encode(&entry).map_err(abort)?)?;
    meta.insert(AUDIT_HEAD, encode(&(seq, &entry.hash)).map_err(abort)?)?;
    Ok(entry)
}

#[async_trait]
impl AuditStore for SledStore {
    async fn audit(
        &self,
        action: &str,
        actor: &str,
        details: serde_json::Value,
    ) -> Result<AuditEntry, StoreError> {
        let open = self.open_db()?;
        self.checked(open.audit(action, actor, details).await)
    }

    async fn audit_entries(&self, after: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let open = self.open_db()?;
        self.checked(open.audit_entries(after, limit).await)
    }
}
