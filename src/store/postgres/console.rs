//! Console sessions on PostgreSQL (tables `console_sessions` and `console_visits`, migration
//! 6): every replica reads the same sessions. Each statement is one row operation, so a touch
//! (an `UPDATE`) never brings back a session another replica ended.

use async_trait::async_trait;
use serde_json::Value;
use time::OffsetDateTime;

use super::{PgStore, db_error};
use crate::store::console::{ConsoleCutoffs, ConsoleSessionRecord, ConsoleStore};
use crate::store::error::StoreError;

/// `record` as the JSON its column holds.
fn to_json<T: serde::Serialize>(record: &T) -> Result<Value, StoreError> {
    serde_json::to_value(record)
        .map_err(|e| StoreError::corrupt("a console record does not encode").caused_by(e))
}

/// The record a `record` column holds.
fn from_json<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, StoreError> {
    serde_json::from_value(value)
        .map_err(|e| StoreError::corrupt("a console record does not decode").caused_by(e))
}

/// A session from a row of `record, last_used_at`: the column is the truth for its last use
/// (a touch updates only the column).
fn session_from(row: &tokio_postgres::Row) -> Result<ConsoleSessionRecord, StoreError> {
    let mut record: ConsoleSessionRecord = from_json(row.get(0))?;
    record.last_used_at = row.get(1);
    Ok(record)
}

impl PgStore {
    /// The `record` of the row `sql` returns, if any.
    async fn console_record<T: serde::de::DeserializeOwned>(
        &self,
        sql: &str,
        key: &str,
        what: &'static str,
    ) -> Result<Option<T>, StoreError> {
        let row = self
            .client()
            .await?
            .query_opt(sql, &[&key])
            .await
            .map_err(db_error(what))?;
        row.map(|row| from_json(row.get(0))).transpose()
    }
}

#[async_trait]
impl ConsoleStore for PgStore {
    async fn save_console_session(&self, record: &ConsoleSessionRecord) -> Result<(), StoreError> {
        let json = to_json(record)?;
        self.client()
            .await?
            .execute(
                "INSERT INTO console_sessions (id_digest, account, created_at, last_used_at, record)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (id_digest) DO UPDATE SET account = $2, created_at = $3,
                     last_used_at = $4, record = $5",
                &[
                    &record.id_digest,
                    &record.account,
                    &record.created_at,
                    &record.last_used_at,
                    &json,
                ],
            )
            .await
            .map_err(db_error("saving a console session"))?;
        Ok(())
    }

    async fn console_session(
        &self,
        id_digest: &str,
    ) -> Result<Option<ConsoleSessionRecord>, StoreError> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT record, last_used_at FROM console_sessions WHERE id_digest = $1",
                &[&id_digest],
            )
            .await
            .map_err(db_error("reading a console session"))?;
        row.as_ref().map(session_from).transpose()
    }

    async fn touch_console_session(
        &self,
        id_digest: &str,
        at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        // The column is the truth for `last_used_at`; the JSON keeps the value of its start.
        self.client()
            .await?
            .execute(
                "UPDATE console_sessions SET last_used_at = greatest(last_used_at, $2)
                 WHERE id_digest = $1",
                &[&id_digest, &at],
            )
            .await
            .map_err(db_error("marking a console session used"))?;
        Ok(())
    }

    async fn end_console_session(
        &self,
        id_digest: &str,
    ) -> Result<Option<ConsoleSessionRecord>, StoreError> {
        self.console_record(
            "DELETE FROM console_sessions WHERE id_digest = $1 RETURNING record",
            id_digest,
            "ending a console session",
        )
        .await
    }

    async fn end_console_sessions_of(&self, account: &str) -> Result<u64, StoreError> {
        self.client()
            .await?
            .execute(
                "DELETE FROM console_sessions WHERE account = $1",
                &[&account],
            )
            .await
            .map_err(db_error("ending an account's console sessions"))
    }

    async fn console_sessions(&self) -> Result<Vec<ConsoleSessionRecord>, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT record, last_used_at FROM console_sessions ORDER BY created_at",
                &[],
            )
            .await
            .map_err(db_error("listing console sessions"))?;
        rows.iter().map(session_from).collect()
    }

    async fn console_visit(&self, account: &str) -> Result<Option<OffsetDateTime>, StoreError> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT at FROM console_visits WHERE account = $1",
                &[&account],
            )
            .await
            .map_err(db_error("reading a console visit"))?;
        Ok(row.map(|row| row.get(0)))
    }

    async fn save_console_visit(
        &self,
        account: &str,
        at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute(
                "INSERT INTO console_visits (account, at) VALUES ($1, $2)
                 ON CONFLICT (account) DO UPDATE SET at = $2",
                &[&account, &at],
            )
            .await
            .map_err(db_error("saving a console visit"))?;
        Ok(())
    }

    async fn purge_console(&self, cutoffs: ConsoleCutoffs) -> Result<u64, StoreError> {
        self.client()
            .await?
            .execute(
                "DELETE FROM console_sessions WHERE last_used_at < $1 OR created_at < $2",
                &[&cutoffs.idle_before, &cutoffs.started_before],
            )
            .await
            .map_err(db_error("purging console sessions"))
    }
}
