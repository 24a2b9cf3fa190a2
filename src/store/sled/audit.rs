//! The audit log: an append-only chain, each entry holding the hash of the one before.

use async_trait::async_trait;
use sled::Transactional;
use time::OffsetDateTime;

use super::apply::append_audit;
use super::handle::SledStore;
use super::open::Open;
use super::trees::{tx_error, unavailable};
use super::writer::Target;
use crate::store::audit::{AuditEntry, AuditStore};
use crate::store::error::StoreError;
use crate::store::record::decode;

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
