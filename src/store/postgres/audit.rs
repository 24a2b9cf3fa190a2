//! The audit log on PostgreSQL: entries are inserted by whatever writes them and linked into one
//! chain, across replicas, by the [`sequencer`](super::sequencer).

use async_trait::async_trait;
use time::OffsetDateTime;

use super::deliveries::{to_i64, to_u64};
use super::{PgStore, db_error};
use crate::store::audit::{AuditEntry, AuditStore};
use crate::store::error::StoreError;

/// Adds an entry, not yet linked, inside the caller's transaction; returns its row id.
pub(super) async fn insert(
    tx: &deadpool_postgres::Transaction<'_>,
    at: OffsetDateTime,
    action: &str,
    actor: &str,
    details: &serde_json::Value,
) -> Result<i64, StoreError> {
    Ok(tx
        .query_one(
&tx.prepare_cached("INSERT INTO audit (at, action, actor, details) VALUES ($1, $2, $3, $4) RETURNING id").await.map_err(db_error("preparing a statement"))?,
            &[&at, &action, &actor, details],
        )
        .await
        .map_err(db_error("adding an audit entry"))?
        .get(0))
}

/// The columns [`entry`] reads.
const COLUMNS: &str = "seq, at, action, actor, details, prev, hash, at_nanos";

fn entry(row: &tokio_postgres::Row) -> AuditEntry {
    let at: OffsetDateTime = row.get(1);
    let nanos = row.get::<_, Option<i32>>(7).unwrap_or_default();
    AuditEntry {
        seq: to_u64(row.get(0)),
        at: at + time::Duration::nanoseconds(i64::from(nanos)),
        action: row.get(2),
        actor: row.get(3),
        details: row.get(4),
        prev: row.get(5),
        hash: row.get(6),
    }
}

#[async_trait]
impl AuditStore for PgStore {
    async fn audit(
        &self,
        action: &str,
        actor: &str,
        details: serde_json::Value,
    ) -> Result<AuditEntry, StoreError> {
        let id = {
            let mut client = self.client().await?;
            let tx = client
                .transaction()
                .await
                .map_err(db_error("starting an audit entry"))?;
            let id = insert(&tx, OffsetDateTime::now_utc(), action, actor, &details).await?;
            tx.commit()
                .await
                .map_err(db_error("committing an audit entry"))?;
            id
        };
        self.sequence().await?;
        let client = self.client().await?;
        let row = client
            .query_one(
                &client
                    .prepare_cached(&format!("SELECT {COLUMNS} FROM audit WHERE id = $1"))
                    .await
                    .map_err(db_error("preparing a statement"))?,
                &[&id],
            )
            .await
            .map_err(db_error("reading an audit entry"))?;
        Ok(entry(&row))
    }

    async fn audit_entries(&self, after: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        self.settle().await?;
        let client = self.client().await?;
        Ok(client
            .query(
                &client
                    .prepare_cached(&format!(
                        "SELECT {COLUMNS} FROM audit WHERE seq > $1 ORDER BY seq LIMIT $2"
                    ))
                    .await
                    .map_err(db_error("preparing a statement"))?,
                &[&to_i64(after), &to_i64(limit as u64)],
            )
            .await
            .map_err(db_error("reading the audit log"))?
            .iter()
            .map(entry)
            .collect())
    }
}
