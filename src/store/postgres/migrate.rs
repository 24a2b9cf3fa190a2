//! Versioned schema migrations: the files in `migrations/postgres/`, applied in order, each
//! once, recorded in `relay_schema_migrations`. Released files are never edited.

use super::db_error;
use crate::store::error::StoreError;

/// `(version, name, SQL)` of every migration this build knows, in order.
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "initial",
        include_str!("../../../migrations/postgres/0001_initial.sql"),
    ),
    (
        2,
        "replica_settings",
        include_str!("../../../migrations/postgres/0002_replica_settings.sql"),
    ),
    (
        3,
        "changes_and_documents",
        include_str!("../../../migrations/postgres/0003_changes_and_documents.sql"),
    ),
    (
        4,
        "queues",
        include_str!("../../../migrations/postgres/0004_queues.sql"),
    ),
    (
        5,
        "patient_forms",
        include_str!("../../../migrations/postgres/0005_patient_forms.sql"),
    ),
    (
        6,
        "console_sessions",
        include_str!("../../../migrations/postgres/0006_console_sessions.sql"),
    ),
    (
        7,
        "screening_tallies",
        include_str!("../../../migrations/postgres/0007_screening_tallies.sql"),
    ),
];

/// Applies the migrations not yet applied (returns their versions), in one transaction under the advisory lock `lock`
/// (the same in every replica: two processes starting at once migrate one at a time).
///
/// # Errors
/// `Unavailable` when the database refuses; `Failed` when it holds a migration this build does
/// not know (a newer build migrated it: run that build).
pub(super) async fn apply(
    client: &mut tokio_postgres::Client,
    lock: i64,
) -> Result<Vec<i32>, StoreError> {
    let tx = client
        .transaction()
        .await
        .map_err(db_error("starting the migration"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&lock])
        .await
        .map_err(db_error("locking for the migration"))?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS relay_schema_migrations (
             version    integer     PRIMARY KEY,
             name       text        NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await
    .map_err(db_error("creating relay_schema_migrations"))?;
    let applied: Vec<i32> = tx
        .query(
            "SELECT version FROM relay_schema_migrations ORDER BY version",
            &[],
        )
        .await
        .map_err(db_error("reading relay_schema_migrations"))?
        .iter()
        .map(|row| row.get(0))
        .collect();
    if let Some(unknown) = applied
        .iter()
        .find(|v| !MIGRATIONS.iter().any(|(known, _, _)| known == *v))
    {
        return Err(StoreError::failed(format!(
            "the database has schema migration {unknown}, which this build does not know: a newer referral-relay migrated it"
        )));
    }
    let mut now = Vec::new();
    for (version, name, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        now.push(*version);
        tx.batch_execute(sql)
            .await
            .map_err(db_error("applying a schema migration"))?;
        tx.execute(
            "INSERT INTO relay_schema_migrations (version, name) VALUES ($1, $2)",
            &[version, name],
        )
        .await
        .map_err(db_error("recording a schema migration"))?;
        tracing::info!(version, name, "applied PostgreSQL schema migration");
    }
    tx.commit()
        .await
        .map_err(db_error("committing the migration"))?;
    Ok(now)
}
