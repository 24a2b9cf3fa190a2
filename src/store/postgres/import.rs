//! `referral-relay migrate --to postgres://…`: copies a stopped embedded store into PostgreSQL.
//!
//! Every record is copied as stored: a sealed record stays sealed, bound to the same context it
//! has in the embedded store (see [`records`](super::records)), so no key is needed here and the
//! service opens it with its key. What PostgreSQL keeps in columns is read from the embedded
//! store's indexes, never from a sealed record: a referral's latest version from `versions`,
//! its modification time from `by_modified`, an update's referral from `referral_updates`. An
//! update's state is inside its record: a sealed update is written with the state
//! [`MIGRATED`], which the first replica started with the key replaces by the real one
//! ([`settle_migration`], which also seals the copied signing key).
//!
//! Feed positions, audit sequence numbers and update ids keep their values (they are the row
//! ids too), so the feed a consumer follows and the audit chain continue unchanged. Every row is
//! inserted with `ON CONFLICT DO NOTHING` in transactions of [`CHUNK`] rows: an interrupted
//! run is finished by running it again. The database must be empty (every replica stopped), or
//! hold the mark of an interrupted copy of the same data dir, unchanged since (its path, and
//! where its feed, outbox and audit chain end); anything else is refused.

use std::collections::HashMap;
use std::path::Path;

use time::OffsetDateTime;

use super::deliveries::to_i64;
use super::records::{PLAIN_SETTING, SEAL_KEY_IDS, plain_setting};
use super::replicas::SIGNING_KEY;
use super::{PgOptions, PgStore, advisory_key, db_error, migrate, session_config};
use crate::store::audit::AuditEntry;
use crate::store::error::StoreError;
use crate::store::feed::EventRecord;
use crate::store::outbox::OCEAN_QUEUE;
use crate::store::queue::QueuedMessage;
use crate::store::seal::sealed_key_id;
use crate::store::sled::apply::DeliveryRef;
use crate::store::sled::keys::from_micros;
use crate::store::sled::stopped::Stopped;
use crate::store::sled::trees::{AUDIT_HEAD, EVENT_SEQ, QUEUE_SEQ, SEAL_KEYS};

/// Rows per transaction.
const CHUNK: usize = 500;
/// The state column of an update copied sealed, until a replica with the key reads its state.
pub(super) const MIGRATED: &str = "migrated";
/// The setting naming the data dir a database was filled from.
const MIGRATED_FROM: &str = "migrated_from";
/// Present from the start of a copy until its counts match: replicas refuse to start meanwhile.
const MIGRATION_UNFINISHED: &str = "migration_unfinished";
/// The file in a data dir holding the generated token signing key.
const KEY_FILE: &str = crate::auth::token::KEY_FILE;

/// Rows of one kind: how many the embedded store holds, and how many the database holds after
/// the copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableCount {
    /// The PostgreSQL table (the embedded store's tree has the same name).
    pub table: &'static str,
    pub source: u64,
    pub target: u64,
}

type Row = Vec<Box<dyn tokio_postgres::types::ToSql + Sync + Send>>;

fn bad(what: &str) -> StoreError {
    StoreError::corrupt(format!(
        "the embedded store holds a malformed {what}; nothing after it was copied"
    ))
}

fn text(bytes: &[u8], what: &str) -> Result<String, StoreError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| bad(what))
}

/// A key of `versions` or `payloads`: referral, NUL, version (u64 BE).
fn version_key(key: &[u8]) -> Result<(String, u64), StoreError> {
    let (referral, number) = key
        .split_last_chunk::<8>()
        .and_then(|(head, n)| Some((head.strip_suffix(&[0])?, n)))
        .ok_or_else(|| bad("version key"))?;
    Ok((text(referral, "version key")?, u64::from_be_bytes(*number)))
}

/// A key of `documents`: a version key, then the index (u32 BE).
fn document_key(key: &[u8]) -> Result<(String, u64, i32), StoreError> {
    let (version, index) = key
        .split_last_chunk::<4>()
        .ok_or_else(|| bad("document key"))?;
    let (referral, number) = version_key(version)?;
    let index = i32::try_from(u32::from_be_bytes(*index)).map_err(|_| bad("document key"))?;
    Ok((referral, number, index))
}

fn sled_error(e: sled::Error) -> StoreError {
    StoreError::unavailable("reading the embedded store").caused_by(e)
}

/// The copy's transactions.
struct Copier<'a> {
    client: &'a mut tokio_postgres::Client,
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
            .map_err(db_error("starting a copy"))?;
        let statement = tx
            .prepare(sql)
            .await
            .map_err(db_error("preparing a statement"))?;
        for row in rows {
            let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = row
                .iter()
                .map(|v| v.as_ref() as &(dyn tokio_postgres::types::ToSql + Sync))
                .collect();
            tx.execute(&statement, &params)
                .await
                .map_err(db_error("copying a row"))?;
        }
        tx.commit().await.map_err(db_error("committing a copy"))
    }

    /// Copies every item of `tree`, made into a row by `row` (`None` leaves it out), `CHUNK` at
    /// a time; returns how many rows it made.
    async fn tree(
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

    async fn count(&mut self, table: &str) -> Result<u64, StoreError> {
        let n: i64 = self
            .client
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .map_err(db_error("counting rows"))?
            .get(0);
        Ok(u64::try_from(n).unwrap_or_default())
    }
}

impl PgStore {
    /// Copies the stopped embedded store in `data_dir` into the database `options` names (its
    /// schema migrated first), as the module documentation describes. Returns the rows of each
    /// kind on both sides.
    ///
    /// # Errors
    /// `InUse` while a service holds `data_dir`; `Failed` when it holds no store, or the
    /// database already holds referrals that did not come from it; `Corrupt` for a record the
    /// embedded store cannot have written; `Unavailable` when the database refuses.
    pub async fn import_sled(
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
        let open = crate::store::sled::queue::open_messages(&t.queue_index, OCEAN_QUEUE)?;
        if open > 0 {
            return Err(StoreError::failed(format!(
                "{open} versions are still queued for destinations (pending, or dead letters): start the service on this data dir until they are sent (replay or discard the dead letters), stop it, then migrate"
            )));
        }
        let (config, schema) = session_config(options).await?;
        let (mut client, connection) = config
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(db_error("connecting"))?;
        let driver = tokio::spawn(connection);
        migrate::apply(&mut client, advisory_key("migrations", &schema)).await?;
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
}

async fn copy_all(
    copy: &mut Copier<'_>,
    t: &crate::store::sled::trees::Trees,
    data_dir: &Path,
) -> Result<Vec<TableCount>, StoreError> {
    claim(copy, t, data_dir).await?;

    // What the columns need, from the indexes.
    let mut modified: HashMap<String, OffsetDateTime> = HashMap::new();
    for item in t.by_modified.iter() {
        let (key, _) = item.map_err(sled_error)?;
        let (micros, referral) = key
            .split_first_chunk::<8>()
            .and_then(|(m, rest)| Some((m, rest.strip_prefix(&[0])?)))
            .ok_or_else(|| bad("modification index key"))?;
        let at = from_micros(u64::from_be_bytes(*micros));
        let referral = text(referral, "modification index key")?;
        let latest = modified.entry(referral).or_insert(at);
        *latest = (*latest).max(at);
    }
    let mut latest: HashMap<String, u64> = HashMap::new();
    for item in t.versions.iter() {
        let (key, _) = item.map_err(sled_error)?;
        let (referral, version) = version_key(&key)?;
        let v = latest.entry(referral).or_default();
        *v = (*v).max(version);
    }
    let mut event_of: HashMap<(String, u64), i64> = HashMap::new();
    for item in t.events.iter() {
        let (_, value) = item.map_err(sled_error)?;
        let event: EventRecord = serde_json::from_slice(&value).map_err(|_| bad("feed event"))?;
        event_of.insert(
            (event.referral.as_str().to_owned(), event.version),
            to_i64(event.seq),
        );
    }
    let referral_of_update: HashMap<u64, String> =
        crate::store::sled::queue::queue_referrals(&t.queue_index, OCEAN_QUEUE)?
            .into_iter()
            .collect();

    let mut counts = Vec::new();
    let referrals = copy
        .tree(
            &t.referrals,
            "INSERT INTO referrals (referral, version, modified_at, record) VALUES ($1, $2, $3, $4)
             ON CONFLICT (referral) DO NOTHING",
            |key, value| {
                let referral = text(key, "referral key")?;
                let version = *latest
                    .get(&referral)
                    .ok_or_else(|| bad("referral without versions"))?;
                let at = *modified
                    .get(&referral)
                    .ok_or_else(|| bad("referral without a modification time"))?;
                Ok(Some(vec![
                    Box::new(referral),
                    Box::new(to_i64(version)),
                    Box::new(at),
                    Box::new(value.to_vec()),
                ]))
            },
        )
        .await?;
    counts.push(("referrals", referrals));
    let events = copy
        .tree(
            &t.events,
            "INSERT INTO events (id, seq, referral, version, event, service_id, received_at, changes)
             VALUES ($1, $1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING",
            |_, value| {
                let e: EventRecord =
                    serde_json::from_slice(value).map_err(|_| bad("feed event"))?;
                Ok(Some(vec![
                    Box::new(to_i64(e.seq)),
                    Box::new(e.referral.as_str().to_owned()),
                    Box::new(to_i64(e.version)),
                    Box::new(e.event.as_str().to_owned()),
                    Box::new(e.service_id.map(|s| s.as_str().to_owned())),
                    Box::new(e.received_at),
                    Box::new(e.changes),
                ]))
            },
        )
        .await?;
    counts.push(("events", events));
    let versions = copy
        .tree(
            &t.versions,
            "INSERT INTO versions (referral, version, event_id, record, payload) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (referral, version) DO NOTHING",
            |key, value| {
                let (referral, version) = version_key(key)?;
                let event = *event_of
                    .get(&(referral.clone(), version))
                    .ok_or_else(|| bad("version without its feed event"))?;
                // Purged by retention: no payload.
                let payload = t.payloads.get(key).map_err(sled_error)?.map(|p| p.to_vec());
                Ok(Some(vec![Box::new(referral), Box::new(to_i64(version)), Box::new(event), Box::new(value.to_vec()), Box::new(payload)]))
            },
        )
        .await?;
    counts.push(("versions", versions));
    let deliveries = copy
        .tree(
            &t.deliveries,
            "INSERT INTO deliveries (dedup_key, referral, version) VALUES ($1, $2, $3)
             ON CONFLICT (dedup_key) DO NOTHING",
            |key, value| {
                let d: DeliveryRef = serde_json::from_slice(value).map_err(|_| bad("delivery"))?;
                Ok(Some(vec![
                    Box::new(crate::store::sha256_hex(key)),
                    Box::new(d.referral.as_str().to_owned()),
                    Box::new(to_i64(d.version)),
                ]))
            },
        )
        .await?;
    counts.push(("deliveries", deliveries));
    let audit = copy
        .tree(
            &t.audit,
            "INSERT INTO audit (id, seq, at, action, actor, details, prev, hash, at_nanos)
             VALUES ($1, $1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (id) DO NOTHING",
            |_, value| {
                let e: AuditEntry =
                    serde_json::from_slice(value).map_err(|_| bad("audit entry"))?;
                // timestamptz keeps microseconds; the rest is kept beside it (the hash covers it).
                let nanos = i32::try_from(e.at.nanosecond() % 1000).unwrap_or_default();
                let at = e.at - time::Duration::nanoseconds(i64::from(nanos));
                Ok(Some(vec![
                    Box::new(to_i64(e.seq)),
                    Box::new(at),
                    Box::new(e.action),
                    Box::new(e.actor),
                    Box::new(e.details),
                    Box::new(e.prev),
                    Box::new(e.hash),
                    Box::new((nanos != 0).then_some(nanos)),
                ]))
            },
        )
        .await?;
    counts.push(("audit", audit));
    // Ocean updates, sealed to their ids as PostgreSQL seals them: copied under the same ids;
    // sealed ones get their columns at the first start with the key.
    let now = time::OffsetDateTime::now_utc();
    let updates = copy
        .tree(
            &t.queue,
            "INSERT INTO queue (id, queue, referral, version, state, next_attempt_at, created_at, delivered_at, record)
             VALUES ($1, $2, $3, 0, $4, $5, $6, $7, $8) ON CONFLICT (id) DO NOTHING",
            |key, value| {
                let id = u64::from_be_bytes(key.try_into().map_err(|_| bad("queue key"))?);
                let Some(referral) = referral_of_update.get(&id) else {
                    // A destination's message: not copied.
                    return Ok(None);
                };
                let (state, next, created, delivered) = if sealed_key_id(value).is_some() {
                    (MIGRATED.to_owned(), now, now, None)
                } else {
                    let m: QueuedMessage =
                        serde_json::from_slice(value).map_err(|_| bad("queued update"))?;
                    (
                        super::outbox::state_name(m.state).to_owned(),
                        m.next_attempt_at,
                        m.created_at,
                        m.delivered_at,
                    )
                };
                Ok(Some(vec![
                    Box::new(to_i64(id)),
                    Box::new(OCEAN_QUEUE),
                    Box::new(referral.clone()),
                    Box::new(state),
                    Box::new(next),
                    Box::new(created),
                    Box::new(delivered),
                    Box::new(value.to_vec()),
                ]))
            },
        )
        .await?;
    counts.push(("queue", updates));

    let task_states = copy
        .tree(
            &t.task_states,
            "INSERT INTO task_states (referral, record) VALUES ($1, $2) ON CONFLICT (referral) DO NOTHING",
            |key, value| Ok(Some(vec![Box::new(text(key, "Task state key")?), Box::new(value.to_vec())])),
        )
        .await?;
    counts.push(("task_states", task_states));
    // A document's state column only tells claims what is pending, which `due_documents` says
    // without opening the record; a pending one is due at once.
    let now = time::OffsetDateTime::now_utc();
    let documents = copy
        .tree(
            &t.documents,
            "INSERT INTO documents (referral, version, idx, state, next_attempt_at, record, bytes)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (referral, version, idx) DO NOTHING",
            |key, value| {
                let (referral, version, index) = document_key(key)?;
                let pending = t.due_documents.contains_key(key).map_err(sled_error)?;
                let state = if pending { "pending" } else { MIGRATED };
                let bytes = t
                    .document_bytes
                    .get(key)
                    .map_err(sled_error)?
                    .map(|b| b.to_vec());
                Ok(Some(vec![
                    Box::new(referral),
                    Box::new(to_i64(version)),
                    Box::new(index),
                    Box::new(state),
                    Box::new(now),
                    Box::new(value.to_vec()),
                    Box::new(bytes),
                ]))
            },
        )
        .await?;
    counts.push(("documents", documents));

    settings(copy, t, data_dir).await?;
    // New rows continue after the copied ids.
    copy.client
        .batch_execute(
            "SELECT setval(pg_get_serial_sequence('events', 'id'), GREATEST((SELECT max(id) FROM events), 1));
             SELECT setval(pg_get_serial_sequence('audit', 'id'), GREATEST((SELECT max(id) FROM audit), 1));
             SELECT setval(pg_get_serial_sequence('queue', 'id'), GREATEST((SELECT max(id) FROM queue), 1));",
        )
        .await
        .map_err(db_error("moving the id sequences"))?;

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
                &[&MIGRATION_UNFINISHED],
            )
            .await
            .map_err(db_error("marking the migration finished"))?;
    }
    Ok(out)
}

/// Refuses to serve from a database a `migrate` is filling, or left unfinished: its feed,
/// dedup keys and id sequences are not whole yet, so a delivery stored now could be stored
/// twice or break the audit chain.
///
/// # Errors
/// `Failed`, saying to finish the migration.
pub(super) async fn refuse_unfinished(client: &tokio_postgres::Client) -> Result<(), StoreError> {
    let unfinished = client
        .query_opt(
            "SELECT 1 FROM relay_settings WHERE name = $1",
            &[&MIGRATION_UNFINISHED],
        )
        .await
        .map_err(db_error("looking for an unfinished migration"))?
        .is_some();
    if unfinished {
        return Err(StoreError::failed(
            "a `referral-relay migrate` into this database has not finished (interrupted, or still running): run it again with the same data dir until it reports matching counts, then start the service",
        ));
    }
    Ok(())
}

/// Marks the database as filled from `data_dir`, or refuses one that already holds referrals
/// from elsewhere (a re-run after an interruption finds its own mark).
async fn claim(
    copy: &mut Copier<'_>,
    t: &crate::store::sled::trees::Trees,
    data_dir: &Path,
) -> Result<(), StoreError> {
    let from = std::fs::canonicalize(data_dir)
        .unwrap_or_else(|_| data_dir.to_path_buf())
        .display()
        .to_string();
    // What the data dir holds: where the feed, the outbox and the audit chain end. A re-run
    // finishes a copy only of the same data dir, unchanged since.
    let counter = |key: &[u8]| -> Result<String, StoreError> {
        Ok(t.meta
            .get(key)
            .map_err(sled_error)?
            .map(hex::encode)
            .unwrap_or_default())
    };
    let fingerprint = format!(
        "{from}\nfeed {}\nqueue {}\naudit {}",
        counter(EVENT_SEQ)?,
        counter(QUEUE_SEQ)?,
        counter(AUDIT_HEAD)?
    );
    let tx = copy
        .client
        .transaction()
        .await
        .map_err(db_error("starting the copy"))?;
    let mark: Option<Vec<u8>> = tx
        .query_opt(
            "SELECT value FROM relay_settings WHERE name = $1 FOR UPDATE",
            &[&MIGRATED_FROM],
        )
        .await
        .map_err(db_error("reading the migration mark"))?
        .map(|row| row.get(0));
    let holds: bool = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM referrals) OR EXISTS (SELECT 1 FROM events)
                 OR EXISTS (SELECT 1 FROM audit) OR EXISTS (SELECT 1 FROM queue)
                 OR EXISTS (SELECT 1 FROM deliveries) OR EXISTS (SELECT 1 FROM task_states)",
            &[],
        )
        .await
        .map_err(db_error("looking for rows"))?
        .get(0);
    match mark {
        Some(mark) if mark == fingerprint.as_bytes() => {}
        Some(mark) if !mark.starts_with(format!("{from}\n").as_bytes()) => {
            let other = String::from_utf8_lossy(&mark);
            return Err(StoreError::failed(format!(
                "this database was filled from another data dir ({}); migrate into an empty database or schema",
                other.lines().next().unwrap_or_default()
            )));
        }
        Some(_) => {
            return Err(StoreError::failed(
                "the data dir changed since the copy into this database began (the service ran on it): drop the schema and migrate again",
            ));
        }
        None if holds => {
            return Err(StoreError::failed(
                "this database already holds rows (a replica ran on it?); migrate into an empty database or schema, with every replica stopped",
            ));
        }
        None => {
            tx.execute(
                "INSERT INTO relay_settings (name, value) VALUES ($1, $2), ($3, ''::bytea)",
                &[
                    &MIGRATED_FROM,
                    &fingerprint.as_bytes(),
                    &MIGRATION_UNFINISHED,
                ],
            )
            .await
            .map_err(db_error("marking the migration"))?;
        }
    }
    tx.commit()
        .await
        .map_err(db_error("committing the migration mark"))
}

/// The ids of the keys that sealed records (merged with any already listed), and the generated
/// token signing key, so tokens issued before the move stay valid.
async fn settings(
    copy: &mut Copier<'_>,
    t: &crate::store::sled::trees::Trees,
    data_dir: &Path,
) -> Result<(), StoreError> {
    let tx = copy
        .client
        .transaction()
        .await
        .map_err(db_error("starting the settings copy"))?;
    if let Some(ids) = t.meta.get(SEAL_KEYS).map_err(sled_error)? {
        tx.execute(
            "INSERT INTO relay_settings (name, value) VALUES ($1, ''::bytea) ON CONFLICT (name) DO NOTHING",
            &[&SEAL_KEY_IDS],
        )
        .await
        .map_err(db_error("listing the sealing keys"))?;
        let listed: Vec<u8> = tx
            .query_one(
                "SELECT value FROM relay_settings WHERE name = $1 FOR UPDATE",
                &[&SEAL_KEY_IDS],
            )
            .await
            .map_err(db_error("reading the sealing keys"))?
            .get(0);
        let mut merged: Vec<&[u8]> = listed.chunks_exact(8).collect();
        for id in ids.chunks_exact(8) {
            if !merged.contains(&id) {
                merged.push(id);
            }
        }
        tx.execute(
            "UPDATE relay_settings SET value = $2 WHERE name = $1",
            &[&SEAL_KEY_IDS, &merged.concat()],
        )
        .await
        .map_err(db_error("listing the sealing keys"))?;
    }
    let key_file = data_dir.join(KEY_FILE);
    if let Ok(text) = std::fs::read_to_string(&key_file) {
        use base64::Engine;
        let key = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| {
                StoreError::failed(format!("{} is not valid base64", key_file.display()))
            })?;
        tx.execute(
            "INSERT INTO relay_settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
            &[&SIGNING_KEY, &plain_setting(&key)],
        )
        .await
        .map_err(db_error("copying the signing key"))?;
    }
    tx.commit()
        .await
        .map_err(db_error("committing the settings copy"))
}

/// Finishes what `migrate` left for a replica with the key, at every start: each update copied
/// sealed ([`MIGRATED`]) gets its state column from its record, and a signing key copied
/// unsealed is sealed, when a key is configured.
pub(super) async fn settle_migration(store: &PgStore) -> Result<(), StoreError> {
    let client = store.client().await?;
    let rows = client
        .query(
            "SELECT id, record FROM updates WHERE state = $1",
            &[&MIGRATED],
        )
        .await
        .map_err(db_error("reading migrated updates"))?;
    for row in &rows {
        let id: i64 = row.get(0);
        let update = store.open_update(u64::try_from(id).unwrap_or_default(), row.get(1))?;
        client
            .execute(
                "UPDATE updates SET state = $2 WHERE id = $1 AND state = $3",
                &[&id, &super::outbox::state_name(update.state), &MIGRATED],
            )
            .await
            .map_err(db_error("settling a migrated update"))?;
    }
    let rows = client
        .query(
            "SELECT id, queue, referral, version, record FROM queue WHERE state = $1",
            &[&MIGRATED],
        )
        .await
        .map_err(db_error("reading migrated updates"))?;
    for row in &rows {
        let message = store.open_message(row)?;
        client
            .execute(
                "UPDATE queue SET state = $2, referral = $3, next_attempt_at = $4, created_at = $5,
                     delivered_at = $6
                 WHERE id = $1 AND state = $7",
                &[
                    &row.get::<_, i64>("id"),
                    &super::outbox::state_name(message.state),
                    &message.referral.as_str(),
                    &message.next_attempt_at,
                    &message.created_at,
                    &message.delivered_at,
                    &MIGRATED,
                ],
            )
            .await
            .map_err(db_error("settling a migrated update"))?;
    }
    if store.codec.0.is_some()
        && let Some(row) = client
            .query_opt(
                "SELECT value FROM relay_settings WHERE name = $1",
                &[&SIGNING_KEY],
            )
            .await
            .map_err(db_error("reading the signing key"))?
    {
        let stored: Vec<u8> = row.get(0);
        if stored.first() == Some(&PLAIN_SETTING) {
            let key = store.open_setting(SIGNING_KEY, &stored)?;
            client
                .execute(
                    "UPDATE relay_settings SET value = $2 WHERE name = $1 AND value = $3",
                    &[
                        &SIGNING_KEY,
                        &store.seal_setting(SIGNING_KEY, &key)?,
                        &stored,
                    ],
                )
                .await
                .map_err(db_error("sealing the signing key"))?;
        }
    }
    Ok(())
}
