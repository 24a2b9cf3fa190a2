//! `referral-relay migrate --to postgres://…`: copies a stopped embedded store into PostgreSQL,
//! the only room that names both backends.
//!
//! Every record is copied as stored: a sealed record stays sealed, bound to the same context it
//! has in the embedded store (see [`crate::store::record`]), so no key is needed here and the
//! service opens it with its key. What PostgreSQL keeps in columns is read from the embedded
//! store's indexes, never from a sealed record: a referral's latest version from `versions`,
//! its modification time from `by_modified`, an update's referral from `referral_updates`. An
//! update's state is inside its record: a sealed update is written with the state
//! `MIGRATED`, which the first replica started with the key replaces by the real one
//! (the PostgreSQL store's `settle_migration`, which also seals the copied signing key).
//!
//! Feed positions, audit sequence numbers and update ids keep their values (they are the row
//! ids too), so the feed a consumer follows and the audit chain continue unchanged. Every row is
//! inserted with `ON CONFLICT DO NOTHING` in transactions of [`CHUNK`] rows: an interrupted
//! run is finished by running it again. The database must be empty (every replica stopped), or
//! hold the mark of an interrupted copy of the same data dir, unchanged since (its path, and
//! where its feed, outbox and audit chain end); anything else is refused.

mod marks;
mod rows;

use std::path::Path;

use super::error::StoreError;
use super::postgres::{PgOptions, for_copy as pg};
use super::sled::for_copy::{self as embedded, Stopped};
use super::update::OCEAN_QUEUE;

/// Rows per transaction.
const CHUNK: usize = 500;

/// Rows of one kind: how many the embedded store holds, and how many the database holds after
/// the copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableCount {
    /// The PostgreSQL table (the embedded store's tree has the same name).
    pub table: &'static str,
    pub source: u64,
    pub target: u64,
}

pub(super) type Row = Vec<Box<dyn tokio_postgres::types::ToSql + Sync + Send>>;

pub(super) fn bad(what: &str) -> StoreError {
    StoreError::corrupt(format!(
        "the embedded store holds a malformed {what}; nothing after it was copied"
    ))
}

pub(super) fn text(bytes: &[u8], what: &str) -> Result<String, StoreError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| bad(what))
}

/// A key of `versions` or `payloads`: referral, NUL, version (u64 BE).
pub(super) fn version_key(key: &[u8]) -> Result<(String, u64), StoreError> {
    let (referral, number) = key
        .split_last_chunk::<8>()
        .and_then(|(head, n)| Some((head.strip_suffix(&[0])?, n)))
        .ok_or_else(|| bad("version key"))?;
    Ok((text(referral, "version key")?, u64::from_be_bytes(*number)))
}

/// A key of `documents`: a version key, then the index (u32 BE).
pub(super) fn document_key(key: &[u8]) -> Result<(String, u64, i32), StoreError> {
    let (version, index) = key
        .split_last_chunk::<4>()
        .ok_or_else(|| bad("document key"))?;
    let (referral, number) = version_key(version)?;
    let index = i32::try_from(u32::from_be_bytes(*index)).map_err(|_| bad("document key"))?;
    Ok((referral, number, index))
}

pub(super) fn sled_error(e: sled::Error) -> StoreError {
    StoreError::unavailable("reading the embedded store").caused_by(e)
}

/// The copy's transactions.
pub(super) struct Copier<'a> {
    pub(super) client: &'a mut tokio_postgres::Client,
}

impl Copier<'_> {
    /// Inserts `rows` with `sql` (its `$n` the row's values), ignoring rows already there.
    async fn insert(&mut self, sql: &str, rows: &[Row]) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let tx = self
            .client
            .transaction()
            .await
            .map_err(pg::db_error("starting a copy"))?;
        let statement = tx
            .prepare(sql)
            .await
            .map_err(pg::db_error("preparing a statement"))?;
        for row in rows {
            let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = row
                .iter()
                .map(|v| v.as_ref() as &(dyn tokio_postgres::types::ToSql + Sync))
                .collect();
            tx.execute(&statement, &params)
                .await
                .map_err(pg::db_error("copying a row"))?;
        }
        tx.commit().await.map_err(pg::db_error("committing a copy"))
    }

    /// Copies every item of `tree`, made into a row by `row` (`None` leaves it out), `CHUNK` at
    /// a time; returns how many rows it made.
    pub(super) async fn tree(
        &mut self,
        tree: &sled::Tree,
        sql: &str,
        mut row: impl FnMut(&[u8], &[u8]) -> Result<Option<Row>, StoreError>,
    ) -> Result<u64, StoreError> {
        let mut rows = Vec::with_capacity(CHUNK);
        let mut count = 0;
        for item in tree.iter() {
            let (key, value) = item.map_err(sled_error)?;
            // Items left out on purpose (a destination's delivered messages) are not counted.
            if let Some(r) = row(&key, &value)? {
                count += 1;
                rows.push(r);
            }
            if rows.len() == CHUNK {
                self.insert(sql, &rows).await?;
                rows.clear();
            }
        }
        self.insert(sql, &rows).await?;
        Ok(count)
    }

    pub(super) async fn count(&mut self, table: &str) -> Result<u64, StoreError> {
        let n: i64 = self
            .client
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .map_err(pg::db_error("counting rows"))?
            .get(0);
        Ok(u64::try_from(n).unwrap_or_default())
    }
}

/// Copies the stopped embedded store in `data_dir` into the database `options` names (its
/// schema migrated first), as the module documentation describes. Returns the rows of each
/// kind on both sides.
///
/// # Errors
/// `InUse` while a service holds `data_dir`; `Failed` when it holds no store, or the
/// database already holds referrals that did not come from it; `Corrupt` for a record the
/// embedded store cannot have written; `Unavailable` when the database refuses.
pub async fn sled_to_postgres(
    options: &PgOptions,
    data_dir: &Path,
) -> Result<Vec<TableCount>, StoreError> {
    let source = Stopped::open(data_dir)?;
    let t = &source.trees;
    // This build's service moves an older store's updates into the queue when it opens it.
    if !t.updates.is_empty() {
        return Err(StoreError::failed(
            "this data dir was written by an older referral-relay: start this version's service on it once, stop it, then migrate",
        ));
    }
    // Destinations' messages are sealed to ids PostgreSQL gives anew: rather than lose what
    // is still to be sent, the copy waits until nothing is. Ocean updates are copied (see
    // below).
    let open = embedded::open_messages(&t.queue_index, OCEAN_QUEUE)?;
    if open > 0 {
        return Err(StoreError::failed(format!(
            "{open} versions are still queued for destinations (pending, or dead letters): start the service on this data dir until they are sent (replay or discard the dead letters), stop it, then migrate"
        )));
    }
    let (config, schema) = pg::session_config(options).await?;
    let (mut client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(pg::db_error("connecting"))?;
    let driver = tokio::spawn(connection);
    pg::migrate(&mut client, &schema).await?;
    let counts = copy_all(
        &mut Copier {
            client: &mut client,
        },
        t,
        data_dir,
    )
    .await;
    drop(client);
    let _ = driver.await;
    counts
}

/// Claims the database, copies every kind, then the settings; moves the id sequences past the
/// copied ids and, when every count matches, lets replicas start.
async fn copy_all(
    copy: &mut Copier<'_>,
    t: &embedded::Trees,
    data_dir: &Path,
) -> Result<Vec<TableCount>, StoreError> {
    marks::claim(copy, t, data_dir).await?;
    let i = rows::Indexes::read(t)?;
    let counts = vec![
        ("referrals", rows::referrals(copy, t, &i).await?),
        ("events", rows::events(copy, t).await?),
        ("versions", rows::versions(copy, t, &i).await?),
        ("deliveries", rows::deliveries(copy, t).await?),
        ("audit", rows::audit(copy, t).await?),
        ("queue", rows::ocean_updates(copy, t, &i).await?),
        ("task_states", rows::task_states(copy, t).await?),
        ("documents", rows::documents(copy, t).await?),
        ("patient_forms", rows::patient_forms(copy, t).await?),
        ("screening_tallies", rows::screening_tallies(copy, t).await?),
    ];
    marks::settings(copy, t, data_dir).await?;
    // New rows continue after the copied ids.
    copy.client
        .batch_execute(
            "SELECT setval(pg_get_serial_sequence('events', 'id'), GREATEST((SELECT max(id) FROM events), 1));
             SELECT setval(pg_get_serial_sequence('audit', 'id'), GREATEST((SELECT max(id) FROM audit), 1));
             SELECT setval(pg_get_serial_sequence('queue', 'id'), GREATEST((SELECT max(id) FROM queue), 1));",
        )
        .await
        .map_err(pg::db_error("moving the id sequences"))?;

    let mut out = Vec::new();
    for (table, source) in counts {
        out.push(TableCount {
            table,
            source,
            target: copy.count(table).await?,
        });
    }
    // Only a whole copy lets replicas start on the database (see `refuse_unfinished`).
    if out.iter().all(|c| c.source == c.target) {
        copy.client
            .execute(
                "DELETE FROM relay_settings WHERE name = $1",
                &[&pg::MIGRATION_UNFINISHED],
            )
            .await
            .map_err(pg::db_error("marking the migration finished"))?;
    }
    Ok(out)
}
