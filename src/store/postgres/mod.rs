//! The PostgreSQL backend, for several replicas of the service on one database.
//!
//! Written one concern at a time (see [`crate::store`]), one file each, like the embedded store.
//!
//! What holds across replicas, and how:
//! - a delivery posted to two replicas at once is stored once: its dedup key is a primary key
//!   (`deliveries`), claimed first in the delivery's transaction;
//! - the feed never skips an event that commits late: feed positions are given after commit by
//!   the [`sequencer`], one run at a time across every replica;
//! - a long-poll on one replica wakes when a delivery lands on another: the sequencer sends
//!   `NOTIFY` with the new end of the feed, and every replica `LISTEN`s ([`listener`]);
//! - the audit chain is one chain: the sequencer links entries from every replica in order.

mod audit;
mod console;
mod deliveries;
mod documents;
mod feed;
mod listener;
mod maintenance;
mod migrate;
mod migrated;
mod outbox;
mod patient_forms;
mod queue;
mod records;
mod replicas;
mod screening;
mod sequencer;

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::sync::watch;
use tokio_postgres::NoTls;

use super::error::StoreError;
use super::seal::Keyring;
use crate::store::record::Codec;

pub use migrate::MIGRATIONS;

/// What [`crate::store::copy`] writes with: this store's connection, row and setting formats.
pub(in crate::store) mod for_copy {
    pub(in crate::store) use super::deliveries::to_i64;
    pub(in crate::store) use super::migrated::{MIGRATED, MIGRATION_UNFINISHED};
    pub(in crate::store) use super::outbox::state_name;
    pub(in crate::store) use super::records::{SEAL_KEY_IDS, plain_setting};
    pub(in crate::store) use super::replicas::SIGNING_KEY;
    pub(in crate::store) use super::{db_error, session_config};

    /// Applies this build's schema migrations to the database `client` is connected to.
    pub(in crate::store) async fn migrate(
        client: &mut tokio_postgres::Client,
        schema: &str,
    ) -> Result<(), crate::store::error::StoreError> {
        super::migrate::apply(client, super::advisory_key("migrations", schema)).await?;
        Ok(())
    }
}

/// How to reach the database. Its `Debug` leaves the URL out (it may hold a password).
#[derive(Clone)]
pub struct PgOptions {
    /// A libpq connection string or `postgres://` URL (tokio-postgres's syntax).
    pub url: String,
    /// Most connections this process opens (one more is held for `LISTEN`).
    pub max_connections: usize,
    /// The schema the tables live in (`public` when `None`); created if missing.
    pub schema: Option<String>,
    /// How often this replica looks for feed rows another replica left without a position, and
    /// rereads the end of the feed in case a notification was missed (1 s by default).
    pub sweep_interval: Duration,
    /// Seals patient data and the shared signing key at rest (`None`: stored plain).
    pub keys: Option<Arc<Keyring>>,
}

impl std::fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgOptions")
            .field("url", &"[redacted]")
            .field("max_connections", &self.max_connections)
            .field("schema", &self.schema)
            .field("sweep_interval", &self.sweep_interval)
            .field("encrypted", &self.keys.is_some())
            .finish()
    }
}

impl PgOptions {
    /// Options for `url` with the defaults: 16 connections, schema `public`, a 1 s sweep, no
    /// encryption.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            max_connections: 16,
            schema: None,
            sweep_interval: Duration::from_secs(1),
            keys: None,
        }
    }
}

/// The PostgreSQL store. Cheap to clone handles are not offered: share it in an `Arc`.
pub struct PgStore {
    pool: Pool,
    /// Seals and opens records (see [`records`]).
    codec: Codec,
    /// The highest feed position known sequenced (by this replica or, through `NOTIFY`, others).
    feed: watch::Sender<u64>,
    sequencer: sequencer::Sequencer,
    /// Wakes the background run of the sequencer (see [`sequencer`]).
    sequence_soon: Arc<tokio::sync::Notify>,
    /// The channel this store's schema notifies on.
    channel: String,
    /// This process among the replicas (a random id), for its readiness row.
    replica: String,
    /// The advisory lock of this schema's runs of the sequencer.
    sequencer_lock: i64,
    /// Mixed into the hash of a referral's ref to make the advisory lock a delivery of it holds
    /// (see `deliveries.rs`).
    referral_lock_seed: i64,
    /// Background work (the `LISTEN` connection, the sequencer's sweep), stopped on drop.
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for PgStore {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// A database error as a store error: PostgreSQL unreachable or refusing is `Unavailable`
/// (callers answer 503 and senders retry). The cause keeps PostgreSQL's severity, message and
/// SQLSTATE but not its DETAIL, which can quote a failing row's values (patient data among
/// them), since causes are logged.
pub(in crate::store) fn db_error(
    context: &'static str,
) -> impl Fn(tokio_postgres::Error) -> StoreError {
    move |e| {
        StoreError::unavailable(format!("PostgreSQL: {context}")).caused_by(without_row_data(&e))
    }
}

/// The text of a database error without its DETAIL or HINT; other errors (connecting, the
/// protocol) as they are.
fn without_row_data(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        ),
        None => e.to_string(),
    }
}

/// The advisory lock of `purpose` for the tables in `schema`: locks are database-wide, so
/// deployments (or tests) in different schemas of one database must not share them. The first 8
/// bytes of SHA-256 over `purpose/schema`.
fn advisory_key(purpose: &str, schema: &str) -> i64 {
    let digest = crate::digest::sha256(format!("referral-relay/{purpose}/{schema}").as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(first)
}

/// Moves the known end of the feed to `seq` (never backwards), waking long-polls.
fn publish(feed: &watch::Sender<u64>, seq: u64) {
    feed.send_if_modified(|known| {
        let moved = seq > *known;
        if moved {
            *known = seq;
        }
        moved
    });
}

/// The connection settings every connection of `options` uses, and its schema, which is
/// created if missing (on a connection of its own).
pub(in crate::store) async fn session_config(
    options: &PgOptions,
) -> Result<(tokio_postgres::Config, String), StoreError> {
    let mut config: tokio_postgres::Config = options.url.parse().map_err(|e| {
        StoreError::failed("storage.url is not a PostgreSQL connection string").caused_by(e)
    })?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(5));
    }
    // A connection whose peer vanished (a failover, a network that drops packets) is found out
    // within seconds, not after the system's TCP retry minutes: probes after 10 s idle, and
    // data unacknowledged for 10 s closes it.
    config
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(10))
        .keepalives_interval(Duration::from_secs(5))
        .keepalives_retries(3)
        .tcp_user_timeout(Duration::from_secs(10));
    let schema = options.schema.clone().unwrap_or_else(|| "public".into());
    if !schema
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_')
        || schema.is_empty()
        || schema.len() > 50
    {
        return Err(StoreError::failed(
            "storage.schema must be 1 to 50 ASCII letters, digits or _",
        ));
    }
    // Every connection works in the schema (created first, on a connection of its own).
    {
        let (client, connection) = config
            .connect(NoTls)
            .await
            .map_err(db_error("connecting"))?;
        let driver = tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""))
            .await
            .map_err(db_error("creating the schema"))?;
        drop(client);
        let _ = driver.await;
    }
    // Every connection works in the schema, waits at most 30 s for a lock, and is not left
    // idle in a transaction for more than a minute (a frozen replica cannot hold the
    // sequencer's lock for long). Options from the URL are kept.
    let ours = format!(
        "-c search_path=\"{schema}\" -c lock_timeout=30000 -c idle_in_transaction_session_timeout=60000"
    );
    let combined = match config.get_options() {
        Some(theirs) if !theirs.trim().is_empty() => format!("{theirs} {ours}"),
        _ => ours,
    };
    config.options(combined);
    Ok((config, schema))
}

/// Longest a database operation on a request's path may take (a delivery, a read, a login
/// check, readiness) before it is answered as unavailable (503, and Ocean retries).
pub const OPERATION_BOUND: Duration = Duration::from_secs(10);

pub(super) fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    StoreError::unavailable("PostgreSQL: no connection").caused_by(e)
}

impl PgStore {
    /// Connects, applies the schema migrations this build knows (see [`MIGRATIONS`]), and
    /// starts listening for other replicas' feed notifications.
    ///
    /// # Errors
    /// `Unavailable` when the database cannot be reached or a migration fails; `Failed` when the
    /// URL does not parse or the schema is newer than this build.
    pub async fn connect(options: &PgOptions) -> Result<Arc<Self>, StoreError> {
        let (config, schema) = session_config(options).await?;
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.max_connections.max(1))
            .wait_timeout(Some(OPERATION_BOUND))
            .create_timeout(Some(Duration::from_secs(5)))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::failed("PostgreSQL: the pool").caused_by(e))?;
        {
            let mut client = pool.get().await.map_err(pool_error)?;
            migrate::apply(&mut client, advisory_key("migrations", &schema)).await?;
            migrated::refuse_unfinished(&client).await?;
            records::admit_keys(&mut client, options.keys.as_deref()).await?;
        }

        // Notifications are database-wide: one channel per schema, named by a hash of it
        // (channel names are at most 63 bytes).
        let hash = &super::sha256_hex(schema.as_bytes())[..16];
        let channel = format!("relay_feed_{hash}");
        let (feed, _) = watch::channel(0);
        let mut store = Self {
            pool,
            codec: Codec(options.keys.clone()),
            feed,
            sequencer: sequencer::Sequencer::default(),
            sequence_soon: Arc::new(tokio::sync::Notify::new()),
            channel: channel.clone(),
            replica: uuid::Uuid::new_v4().to_string(),
            sequencer_lock: advisory_key("sequencer", &schema),
            referral_lock_seed: advisory_key("referral", &schema),
            tasks: Vec::new(),
        };
        // Whatever a replica left unsequenced (killed between its commit and its run) goes now.
        store.sequence().await?;
        // What `migrate` copied sealed gets its columns, now that the key is here.
        migrated::settle_migration(&store).await?;
        // Updates kept by an earlier build in the `updates` table join the queue.
        store.move_updates_to_queue().await?;
        let store = Arc::new_cyclic(|weak: &std::sync::Weak<Self>| {
            store.tasks.push(listener::spawn(
                config,
                listener::Channels { feed: channel },
                store.feed.clone(),
            ));
            store.tasks.push(sequencer::spawn_sweep(
                weak.clone(),
                Arc::clone(&store.sequence_soon),
                options.sweep_interval,
            ));
            store
        });
        Ok(store)
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(pool_error)
    }

    /// Runs `operation` for at most [`OPERATION_BOUND`]. When the database does not answer in
    /// time (a failover left the old primary silent, a network that drops packets), the
    /// operation is abandoned, answered as unavailable, and every idle connection is closed, so
    /// none that may be silent is used again: the next operation connects anew and the store
    /// recovers by itself when the database is back.
    pub(super) async fn bounded<T>(
        &self,
        what: &'static str,
        operation: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        // The operation (and the connection it holds, back to the pool) is dropped with this
        // statement.
        let outcome = tokio::time::timeout(OPERATION_BOUND, operation).await;
        match outcome {
            Ok(result) => result,
            Err(_) => {
                self.pool.retain(|_, _| false);
                tracing::warn!(
                    operation = what,
                    bound_secs = OPERATION_BOUND.as_secs(),
                    "PostgreSQL did not answer in time; its idle connections are closed"
                );
                Err(StoreError::unavailable(format!(
                    "PostgreSQL did not answer within {} s ({what})",
                    OPERATION_BOUND.as_secs()
                )))
            }
        }
    }

    /// Applies the schema migrations this build knows that the database lacks (what
    /// [`PgStore::connect`] does first), and nothing else: `referral-relay migrate-schema`.
    /// Returns every migration this build knows, each with whether it was applied now.
    ///
    /// # Errors
    /// As [`PgStore::connect`].
    pub async fn migrate_schema(
        options: &PgOptions,
    ) -> Result<Vec<(i32, &'static str, bool)>, StoreError> {
        let (config, schema) = session_config(options).await?;
        let (mut client, connection) = config
            .connect(NoTls)
            .await
            .map_err(db_error("connecting"))?;
        let driver = tokio::spawn(connection);
        let applied = migrate::apply(&mut client, advisory_key("migrations", &schema)).await;
        drop(client);
        let _ = driver.await;
        let applied = applied?;
        Ok(MIGRATIONS
            .iter()
            .map(|(version, name, _)| (*version, *name, applied.contains(version)))
            .collect())
    }

    /// Publishes `seq` as sequenced.
    fn published(&self, seq: u64) {
        publish(&self.feed, seq);
    }
}
