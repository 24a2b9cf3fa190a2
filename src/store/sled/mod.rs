//! The embedded store: sled 0.34, one tree per record kind, one transaction per delivery, and a
//! group-commit flusher so every acknowledged write is fsync'd without one fsync per request.
//!
//! Trees (keys are ordered so scans are range reads; `\0` separates key parts, which
//! identifiers cannot contain):
//! - `referrals`:   referral ref → [`ReferralRecord`]
//! - `by_service`:  service id (empty = unassigned) `\0` referral ref → ()
//! - `versions`:    referral ref `\0` version (u64 BE) → [`VersionRecord`]
//! - `payloads`:    same key → the bytes as received, LZ4-compressed behind a format tag
//!   (kept apart from `versions` so listings do not read them)
//! - `deliveries`:  dedup key → (referral ref, version)
//! - `events`:      seq (u64 BE) → [`EventRecord`]
//! - `by_modified`: modified-at (µs, u64 BE) `\0` referral ref → ()
//! - `meta`:        counters and the readiness marker
//! - `updates`:     update id (u64 BE) → [`UpdateRecord`] (the outbox to Ocean)
//! - `open_updates`: update id → () while not delivered
//! - `referral_updates`: referral ref `\0` update id (u64 BE) → () (a referral's updates)
//! - `task_states`: referral ref → [`TaskState`]
//! - `audit`:       seq (u64 BE) → [`AuditEntry`]
//!
//! **Recovering from write failures.** Once sled fails to write (a full disk, an I/O error) it
//! refuses every later operation, for good. So the open database lives behind [`Open`], and the
//! first I/O failure any operation meets marks the store broken and wakes a recovery thread:
//! it lets the operations in progress fail, closes the database, and opens it again (sled
//! replays its log, so everything acknowledged is there) until a test write reaches the disk,
//! backing off from 1 s to 30 s between attempts. Meanwhile every operation answers
//! [`StoreError::Unavailable`] (the webhook answers 503 and Ocean retries) and
//! [`StoreHealth`] says why. A failure that waiting cannot cure (the filesystem turned
//! read-only, vanished or corrupt) is reported failed, which `/healthz` turns into a 503 for
//! the orchestrator; attempts go on, so an operator's repair is picked up.

mod audit;
mod codec;
mod deliveries;
mod feed;
mod flusher;
mod keys;
mod maintenance;
mod outbox;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use time::OffsetDateTime;
use tokio::sync::watch;

use self::codec::{Codec, read_u64};
use self::flusher::Flusher;
use super::seal::Keyring;
use super::{
    AuditEntry, ChangedReferrals, EventRecord, ModifiedBatch, NewDelivery, PutOutcome,
    ReferralRecord, Store, StoreError, StoreHealth, TaskState, UpdateRecord, UpdateState,
    VersionRecord,
};
use crate::domain::{ReferralRef, ServiceId};

const EVENT_SEQ: &[u8] = b"event_seq";
const READY_MARKER: &[u8] = b"ready_marker";
const LAST_RECEIVED: &[u8] = b"last_received_micros";
const UPDATE_SEQ: &[u8] = b"update_seq";
/// Set once `referral_updates` indexes every update (stores written before the index existed
/// are indexed when first opened).
const REFERRAL_UPDATES_INDEXED: &[u8] = b"referral_updates_indexed";
const AUDIT_HEAD: &[u8] = b"audit_head";

/// The live store under the data dir, and the two directories of a `rekey` swap.
const LIVE_DIR: &str = "sled";
const REKEY_DIR: &str = "sled.rekey";
const OLD_DIR: &str = "sled.old";
const LOCK_FILE: &str = "lock";
/// `meta` key: the ids of every key that has sealed records in this store (8 bytes each).
const SEAL_KEYS: &[u8] = b"seal_key_ids";

/// Trees whose records hold patient data: sealed when a key is configured. Their names are
/// part of each record's associated data.
const REFERRALS: &str = "referrals";
const VERSIONS: &str = "versions";
const PAYLOADS: &str = "payloads";
const UPDATES: &str = "updates";
/// Task states hold appointment times.
const TASK_STATES: &str = "task_states";
const SEALED_TREES: [&str; 5] = [REFERRALS, VERSIONS, PAYLOADS, UPDATES, TASK_STATES];

/// Wait between recovery attempts: doubling from the first to the last.
const RECOVERY_BACKOFF: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(30));

/// Finishes or undoes a `rekey` swap that a crash interrupted. `sled.old` exists only once the
/// copy in `sled.rekey` was complete, so: with `sled.old` and no `sled`, the copy goes live;
/// with `sled` and `sled.rekey` (no `sled.old`), the copy was unfinished and is removed; with
/// `sled` and `sled.old`, only the removal of the old store was left.
fn recover_swap(dir: &Path) -> Result<(), StoreError> {
    let (live, fresh, old) = (dir.join(LIVE_DIR), dir.join(REKEY_DIR), dir.join(OLD_DIR));
    if old.exists() {
        if !live.exists() {
            if fresh.exists() {
                std::fs::rename(&fresh, &live).map_err(io_unavailable)?;
                tracing::warn!(
                    "finished a rekey that was interrupted: the re-sealed store is live"
                );
            } else {
                // Should not happen under the lock; never lose the only copy.
                std::fs::rename(&old, &live).map_err(io_unavailable)?;
                tracing::warn!("a rekey left no copy behind: the store before it is live again");
            }
            sync_dir(dir)?;
        }
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(io_unavailable)?;
        }
    } else if fresh.exists() {
        tracing::warn!("removing the copy left by an interrupted rekey; run rekey again");
        std::fs::remove_dir_all(&fresh).map_err(io_unavailable)?;
    }
    Ok(())
}

/// Takes an exclusive lock on `<dir>/lock` for as long as the returned file is held, so no two
/// processes open, repair or swap the same data dir (sled's own lock covers only its
/// directory, not the `rekey` swap around it).
fn lock_dir(dir: &Path) -> Result<Arc<std::fs::File>, StoreError> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(LOCK_FILE))
        .map_err(io_unavailable)?;
    match file.try_lock() {
        Ok(()) => Ok(Arc::new(file)),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Unavailable(format!(
            "data dir {} is in use by another process (its lock file is held)",
            dir.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(io_unavailable(e)),
    }
}

/// Makes renames in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_unavailable)
}

fn io_unavailable(e: std::io::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// The sled-backed [`Store`].
pub struct SledStore {
    shared: Arc<Shared>,
    /// Runs recovery when a write fails; stopped when the store is dropped.
    recovery: Option<std::thread::JoinHandle<()>>,
    /// Held while the store is open (see [`lock_dir`]).
    _lock: Arc<std::fs::File>,
}

/// What the store's users and its recovery thread share.
struct Shared {
    dir: PathBuf,
    codec: Codec,
    /// The open database; `None` while recovery replaces it.
    current: RwLock<Option<Arc<Open>>>,
    /// The highest feed sequence on disk, across reopenings.
    feed: Arc<watch::Sender<u64>>,
    health: Mutex<Health>,
    /// Wakes the recovery thread (a failure, or the store closing).
    wake: Condvar,
}

/// Where the store stands, as recovery sees it.
#[derive(Debug, Default)]
struct Health {
    /// Since when writes fail, and the last failure.
    broken: Option<(Instant, String)>,
    /// Failed reopen attempts since it broke.
    attempts: u32,
    /// Set when reopening cannot succeed (the store is corrupt).
    failed: Option<String>,
    closing: bool,
}

/// One open sled database with its trees and its flusher.
struct Open {
    db: sled::Db,
    trees: Trees,
    flusher: Flusher,
    codec: Codec,
    feed: watch::Receiver<u64>,
}

#[derive(Clone)]
struct Trees {
    referrals: sled::Tree,
    by_service: sled::Tree,
    versions: sled::Tree,
    payloads: sled::Tree,
    deliveries: sled::Tree,
    events: sled::Tree,
    by_modified: sled::Tree,
    meta: sled::Tree,
    updates: sled::Tree,
    open_updates: sled::Tree,
    referral_updates: sled::Tree,
    task_states: sled::Tree,
    audit: sled::Tree,
}

impl Open {
    /// Opens the database in `dir`, checks the keys, and starts its flusher. The feed's durable
    /// sequence is published on `feed`.
    fn start(
        dir: &Path,
        codec: &Codec,
        feed: &Arc<watch::Sender<u64>>,
    ) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(dir.join(LIVE_DIR))
            .open()
            .map_err(|e| match e {
                sled::Error::Io(io) if io.to_string().contains("lock") => {
                    StoreError::Unavailable(format!(
                        "data dir {} is in use by another process ({io})",
                        dir.display()
                    ))
                }
                other => StoreError::from_sled(
                    &other,
                    &format!("cannot open the store in {}", dir.display()),
                ),
            })?;
        let tree = |name: &str| db.open_tree(name).map_err(unavailable);
        let trees = Trees {
            referrals: tree("referrals")?,
            by_service: tree("by_service")?,
            versions: tree("versions")?,
            payloads: tree("payloads")?,
            deliveries: tree("deliveries")?,
            events: tree("events")?,
            by_modified: tree("by_modified")?,
            meta: tree("meta")?,
            updates: tree("updates")?,
            open_updates: tree("open_updates")?,
            referral_updates: tree("referral_updates")?,
            task_states: tree("task_states")?,
            audit: tree("audit")?,
        };
        // Before the flusher starts: it holds the database (and its lock) until stopped.
        codec.admit_keys(&trees)?;
        outbox::index_referral_updates(&trees, codec)?;
        // Each flush reports the feed sequence it made durable: the counter as read before
        // the flush, since every write it covers was committed before that read.
        let meta = trees.meta.clone();
        let read_seq = move || -> Result<u64, String> {
            let seq = meta.get(EVENT_SEQ).map_err(|e| e.to_string())?;
            seq.map(|v| read_u64(&v).map_err(|e| e.to_string()))
                .transpose()
                .map(Option::unwrap_or_default)
        };
        let on_disk = read_seq().map_err(StoreError::Unavailable)?;
        feed.send_if_modified(|seq| {
            let moved = on_disk > *seq;
            *seq = (*seq).max(on_disk);
            moved
        });
        let flushed = db.clone();
        let flusher = Flusher::start(Arc::clone(feed), move || {
            let seq = read_seq()?;
            flushed.flush().map_err(|e| e.to_string())?;
            Ok(seq)
        })?;
        Ok(Self {
            db,
            trees,
            flusher,
            codec: codec.clone(),
            feed: feed.subscribe(),
        })
    }

    /// The highest feed sequence on disk.
    fn durable_seq(&self) -> u64 {
        *self.feed.borrow()
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.flusher.stop();
        match self.db.flush() {
            Ok(_) => tracing::info!("store flushed and closed"),
            Err(e) => tracing::error!(error = %e, "final flush of the store failed"),
        }
    }
}

impl StoreError {
    /// A sled error as a store error. A failure to read or write the disk sets recovery off:
    /// [`StoreError::Io`] when waiting can cure it (a full disk, a passing I/O error), and
    /// [`StoreError::Failed`] when it cannot (a read-only or vanished filesystem, no
    /// permission, corruption).
    fn from_sled(e: &sled::Error, context: &str) -> Self {
        use std::io::ErrorKind;
        let message = format!("{context}: {e}");
        match e {
            sled::Error::Io(io)
                if matches!(
                    io.kind(),
                    ErrorKind::ReadOnlyFilesystem
                        | ErrorKind::PermissionDenied
                        | ErrorKind::NotFound
                ) =>
            {
                Self::Failed(message)
            }
            sled::Error::Io(_) => Self::Io(message),
            sled::Error::Corruption { .. } | sled::Error::ReportableBug(_) => Self::Failed(message),
            _ => Self::Unavailable(message),
        }
    }
}

impl SledStore {
    /// Opens (or creates) the store in `dir`, unencrypted, and starts its flusher thread.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(dir, None)
    }

    /// Opens the store with `keys` sealing records that hold patient data (see `seal`). Refuses
    /// a store whose records were sealed with a key `keys` does not hold.
    pub fn open_with(dir: &Path, keys: Option<Keyring>) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Unavailable(format!("cannot create data dir {}: {e}", dir.display()))
        })?;
        Self::open_locked(dir, keys, lock_dir(dir)?)
    }

    /// Opens the store under a lock already taken on `dir`.
    fn open_locked(
        dir: &Path,
        keys: Option<Keyring>,
        lock: Arc<std::fs::File>,
    ) -> Result<Self, StoreError> {
        recover_swap(dir)?;
        let codec = Codec(keys.map(Arc::new));
        let feed = Arc::new(watch::channel(0).0);
        let open = Open::start(dir, &codec, &feed)?;
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            codec,
            current: RwLock::new(Some(Arc::new(open))),
            feed,
            health: Mutex::new(Health::default()),
            wake: Condvar::new(),
        });
        let recovery = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("store-recovery".into())
                .spawn(move || shared.recover_when_broken())
                .map_err(|e| {
                    StoreError::Unavailable(format!("cannot start the recovery thread: {e}"))
                })?
        };
        Ok(Self {
            shared,
            recovery: Some(recovery),
            _lock: lock,
        })
    }

    /// The open database, unless the store is broken or being reopened.
    fn open_db(&self) -> Result<Arc<Open>, StoreError> {
        self.shared.open_db()
    }

    /// Passes `result` on; an I/O failure in it breaks the store, which sets recovery off.
    fn checked<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(StoreError::Io(reason) | StoreError::Failed(reason)) = &result {
            self.shared.broke(reason);
        }
        result
    }

    /// Re-seals every record that holds patient data with the current key of `keys` (records
    /// written before encryption was enabled, and records sealed with a previous key) by
    /// copying the whole store into a fresh one and swapping it in. A copy rather than
    /// rewriting in place: sled keeps superseded bytes in its log files, so only a new store
    /// leaves no plaintext or old-key records behind. The service must be stopped. Returns how
    /// many records were sealed.
    ///
    /// Crash-safe: the copy is complete and flushed before `sled` is renamed to `sled.old` and
    /// `sled.rekey` to `sled`; [`recover_swap`] finishes or undoes a swap a crash interrupted.
    pub fn rekey(dir: &Path, keys: Keyring) -> Result<u64, StoreError> {
        // The lock outlives the store opened here: no one may open the data dir mid-swap.
        let lock = lock_dir(dir)?;
        let store = Self::open_locked(dir, Some(keys), Arc::clone(&lock))?;
        let open = store.open_db()?;
        let fresh_dir = dir.join(REKEY_DIR);
        if fresh_dir.exists() {
            std::fs::remove_dir_all(&fresh_dir).map_err(io_unavailable)?;
        }
        let fresh = sled::Config::new()
            .path(&fresh_dir)
            .open()
            .map_err(unavailable)?;
        let codec = &open.codec;
        let mut sealed = 0;
        for name in open.db.tree_names() {
            let from = open.db.open_tree(&name).map_err(unavailable)?;
            let to = fresh.open_tree(&name).map_err(unavailable)?;
            let tree = SEALED_TREES
                .into_iter()
                .find(|t| t.as_bytes() == name.as_ref());
            let mut batch = sled::Batch::default();
            let mut batched = 0;
            for item in from.iter() {
                let (key, value) = item.map_err(unavailable)?;
                match tree {
                    Some(tree) => {
                        let plain = codec.open(tree, &key, &value)?;
                        batch.insert(&*key, codec.seal(tree, &key, &plain)?);
                        sealed += 1;
                    }
                    None => batch.insert(key, value),
                }
                batched += 1;
                if batched == 1000 {
                    to.apply_batch(std::mem::take(&mut batch))
                        .map_err(unavailable)?;
                    batched = 0;
                }
            }
            to.apply_batch(batch).map_err(unavailable)?;
        }
        // Everything is sealed with the current key now; earlier keys are no longer needed.
        let current = codec.0.as_ref().map(|k| k.current_id().to_vec());
        fresh
            .open_tree("meta")
            .and_then(|meta| meta.insert(SEAL_KEYS, current.unwrap_or_default()))
            .map_err(unavailable)?;
        fresh.flush().map_err(unavailable)?;
        drop(fresh);
        drop(open);
        drop(store);
        let (live, old) = (dir.join(LIVE_DIR), dir.join(OLD_DIR));
        std::fs::rename(&live, &old).map_err(io_unavailable)?;
        sync_dir(dir)?;
        std::fs::rename(&fresh_dir, &live).map_err(io_unavailable)?;
        sync_dir(dir)?;
        std::fs::remove_dir_all(&old).map_err(io_unavailable)?;
        drop(lock);
        Ok(sealed)
    }
}

impl Shared {
    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn open_db(&self) -> Result<Arc<Open>, StoreError> {
        if let Some((_, reason)) = &self.health().broken {
            return Err(StoreError::Unavailable(format!(
                "the store cannot write ({reason}); it is being reopened"
            )));
        }
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(|| StoreError::Unavailable("the store is being reopened".into()))
    }

    /// Marks the store broken (once) and wakes the recovery thread.
    fn broke(&self, reason: &str) {
        let mut health = self.health();
        if health.broken.is_none() && !health.closing {
            tracing::error!(
                error = reason,
                "the store cannot write; it will be reopened once the disk takes writes again"
            );
            health.broken = Some((Instant::now(), reason.to_owned()));
            health.attempts = 0;
            self.wake.notify_all();
        }
    }

    /// The recovery thread: sleeps until the store breaks, then reopens it until a write
    /// reaches the disk again; returns when the store closes.
    fn recover_when_broken(&self) {
        loop {
            {
                let mut health = self.health();
                while health.broken.is_none() && !health.closing {
                    health = self
                        .wake
                        .wait(health)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                if health.closing {
                    return;
                }
            }
            let mut backoff = RECOVERY_BACKOFF.0;
            loop {
                if self.sleep_or_close(backoff) {
                    return;
                }
                match self.reopen() {
                    Ok(()) => {
                        let mut health = self.health();
                        let since = health.broken.take().map(|(at, _)| at.elapsed());
                        health.failed = None;
                        tracing::warn!(
                            attempts = health.attempts + 1,
                            outage_secs = since.map_or(0, |d| d.as_secs()),
                            "the store takes writes again"
                        );
                        health.attempts = 0;
                        break;
                    }
                    Err(e) => {
                        let mut health = self.health();
                        health.attempts += 1;
                        if let Some(broken) = &mut health.broken {
                            broken.1 = e.to_string();
                        }
                        // Some failures do not pass by waiting: say so (attempts go on, in case
                        // an operator mends it).
                        health.failed = matches!(e, StoreError::Failed(_) | StoreError::Corrupt(_))
                            .then(|| e.to_string());
                        tracing::warn!(error = %e, attempt = health.attempts, "the store still cannot write");
                    }
                }
                backoff = (backoff * 2).min(RECOVERY_BACKOFF.1);
            }
        }
    }

    /// Waits `pause`, or less when the store closes meanwhile; true when it closed.
    fn sleep_or_close(&self, pause: Duration) -> bool {
        let health = self.health();
        let (health, _) = self
            .wake
            .wait_timeout_while(health, pause, |h| !h.closing)
            .unwrap_or_else(PoisonError::into_inner);
        health.closing
    }

    /// Closes the broken database (once the operations using it have given up) and opens it
    /// again; succeeds once a test write is on disk.
    fn reopen(&self) -> Result<(), StoreError> {
        let old = self
            .current
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(old) = old {
            // Its flusher fails every write waiting on it; the callers then let go of it.
            old.flusher.stop();
            let deadline = Instant::now() + Duration::from_secs(60);
            while Arc::strong_count(&old) > 1 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if Arc::strong_count(&old) > 1 {
                // Still in use: try again later rather than open a second copy.
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = Some(old);
                return Err(StoreError::Unavailable(
                    "operations on the failed store have not finished".into(),
                ));
            }
            drop(old);
        }
        // sled creates a store where there is none: a vanished one must not come back empty.
        if !self.dir.join(LIVE_DIR).join("db").is_file() {
            return Err(StoreError::Failed(format!(
                "the store's files in {} are gone",
                self.dir.join(LIVE_DIR).display()
            )));
        }
        let open = Open::start(&self.dir, &self.codec, &self.feed)?;
        let now = OffsetDateTime::now_utc().unix_timestamp().to_be_bytes();
        open.trees
            .meta
            .insert(READY_MARKER, &now)
            .map_err(|e| StoreError::from_sled(&e, "test write"))?;
        open.db
            .flush()
            .map_err(|e| StoreError::from_sled(&e, "test flush"))?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(open));
        Ok(())
    }
}

impl Drop for SledStore {
    fn drop(&mut self) {
        self.shared.health().closing = true;
        self.shared.wake.notify_all();
        if let Some(recovery) = self.recovery.take() {
            let _ = recovery.join();
        }
        // Closing the database flushes it and logs.
        drop(
            self.shared
                .current
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
    }
}

#[async_trait]
impl Store for SledStore {
    async fn put_delivery(&self, delivery: NewDelivery) -> Result<PutOutcome, StoreError> {
        let open = self.open_db()?;
        self.checked(open.put_delivery(delivery).await)
    }

    async fn referral(&self, referral: &ReferralRef) -> Result<Option<ReferralRecord>, StoreError> {
        let open = self.open_db()?;
        self.checked(open.referral(referral).await)
    }

    async fn referrals_for_service(
        &self,
        service: Option<&ServiceId>,
    ) -> Result<Vec<ReferralRecord>, StoreError> {
        let open = self.open_db()?;
        self.checked(open.referrals_for_service(service).await)
    }

    async fn versions(&self, referral: &ReferralRef) -> Result<Vec<VersionRecord>, StoreError> {
        let open = self.open_db()?;
        self.checked(open.versions(referral).await)
    }

    async fn payload(
        &self,
        referral: &ReferralRef,
        version: u64,
    ) -> Result<Option<Bytes>, StoreError> {
        let open = self.open_db()?;
        self.checked(open.payload(referral, version).await)
    }

    async fn events_after(&self, after: u64, limit: usize) -> Result<Vec<EventRecord>, StoreError> {
        let open = self.open_db()?;
        self.checked(open.events_after(after, limit).await)
    }

    fn durable_seq(&self) -> u64 {
        *self.shared.feed.borrow()
    }

    async fn wait_for_events_after(&self, after: u64) {
        let mut feed = self.shared.feed.subscribe();
        if feed.wait_for(|seq| *seq > after).await.is_err() {
            // The store is closing: nothing new will arrive.
            std::future::pending::<()>().await;
        }
    }

    async fn seq_before(&self, since: OffsetDateTime) -> Result<u64, StoreError> {
        let open = self.open_db()?;
        self.checked(open.seq_before(since).await)
    }

    async fn referrals_changed(
        &self,
        after: u64,
        until: u64,
        max_events: usize,
    ) -> Result<ChangedReferrals, StoreError> {
        let open = self.open_db()?;
        self.checked(open.referrals_changed(after, until, max_events).await)
    }

    async fn enqueue_update(
        &self,
        update: UpdateRecord,
        task: TaskState,
    ) -> Result<UpdateRecord, StoreError> {
        let open = self.open_db()?;
        self.checked(open.enqueue_update(update, task).await)
    }

    async fn save_update(&self, update: &UpdateRecord) -> Result<(), StoreError> {
        let open = self.open_db()?;
        self.checked(open.save_update(update).await)
    }

    async fn update(&self, id: u64) -> Result<Option<UpdateRecord>, StoreError> {
        let open = self.open_db()?;
        self.checked(open.update(id).await)
    }

    async fn updates(
        &self,
        state: Option<UpdateState>,
        after: u64,
        limit: usize,
    ) -> Result<Vec<UpdateRecord>, StoreError> {
        let open = self.open_db()?;
        self.checked(open.updates(state, after, limit).await)
    }

    async fn open_updates(&self) -> Result<Vec<UpdateRecord>, StoreError> {
        let open = self.open_db()?;
        self.checked(open.open_updates().await)
    }

    async fn referral_updates(
        &self,
        referral: &ReferralRef,
    ) -> Result<Vec<UpdateRecord>, StoreError> {
        let open = self.open_db()?;
        self.checked(open.referral_updates(referral).await)
    }

    async fn task_state(&self, referral: &ReferralRef) -> Result<TaskState, StoreError> {
        let open = self.open_db()?;
        self.checked(open.task_state(referral).await)
    }

    async fn referrals_modified(
        &self,
        from: Option<OffsetDateTime>,
        to: Option<OffsetDateTime>,
        after: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<ModifiedBatch, StoreError> {
        let open = self.open_db()?;
        self.checked(open.referrals_modified(from, to, after, limit).await)
    }

    async fn mark_exported(
        &self,
        written: &[(ReferralRef, OffsetDateTime)],
        at: OffsetDateTime,
    ) -> Result<usize, StoreError> {
        let open = self.open_db()?;
        self.checked(open.mark_exported(written, at).await)
    }

    async fn purge_versions_before(&self, cutoff: OffsetDateTime) -> Result<u64, StoreError> {
        let open = self.open_db()?;
        self.checked(open.purge_versions_before(cutoff).await)
    }

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

    async fn discard_update(
        &self,
        update: &UpdateRecord,
        task: TaskState,
    ) -> Result<(), StoreError> {
        let open = self.open_db()?;
        self.checked(open.discard_update(update, task).await)
    }

    async fn check_writable(&self) -> Result<(), StoreError> {
        let open = self.open_db()?;
        self.checked(open.check_writable().await)
    }

    fn health(&self) -> StoreHealth {
        let health = self.shared.health();
        match (&health.failed, &health.broken) {
            (Some(reason), _) => StoreHealth::Failed(reason.clone()),
            (None, Some((since, reason))) => StoreHealth::Recovering {
                for_secs: since.elapsed().as_secs(),
                attempts: health.attempts,
                reason: reason.clone(),
            },
            (None, None) => StoreHealth::Writable,
        }
    }
}

/// A failed transaction as a store error: our own abort, or sled's failure.
fn tx_error(e: TransactionError<StoreError>) -> StoreError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => unavailable(e),
    }
}

fn unavailable(e: sled::Error) -> StoreError {
    StoreError::from_sled(&e, "sled")
}

fn abort(e: StoreError) -> ConflictableTransactionError<StoreError> {
    ConflictableTransactionError::Abort(e)
}
