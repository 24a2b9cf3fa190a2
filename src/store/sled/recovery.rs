//! Recovering from write failures: the first I/O failure marks the store broken and wakes the
//! recovery thread, which reopens the database until a test write reaches the disk.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use tokio::sync::watch;

use super::dir::LIVE_DIR;
use super::open::Open;
use super::options::SledOptions;
use super::trees::{READY_MARKER, from_sled};
use crate::backoff::Backoff;
use crate::store::error::StoreError;
use crate::store::maintenance::StoreHealth;
use crate::store::record::Codec;

/// Wait before each recovery attempt: 1 s, doubling per failed attempt up to 30 s.
const RECOVERY_BACKOFF: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));

/// What the store's users and its recovery thread share.
pub(super) struct Shared {
    dir: PathBuf,
    codec: Codec,
    /// Cache and queue sizes, for reopening (its keys are in `codec`).
    options: SledOptions,
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

impl Shared {
    /// Opens the database in `dir`.
    pub(super) fn open(dir: &Path, codec: Codec, options: SledOptions) -> Result<Self, StoreError> {
        let feed = Arc::new(watch::channel(0).0);
        let open = Open::start(dir, &codec, &options, &feed)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            codec,
            options,
            current: RwLock::new(Some(Arc::new(open))),
            feed,
            health: Mutex::new(Health::default()),
            wake: Condvar::new(),
        })
    }

    /// Starts the recovery thread; it runs until [`Shared::close`].
    pub(super) fn start_recovery(
        shared: &Arc<Self>,
    ) -> Result<std::thread::JoinHandle<()>, StoreError> {
        let shared = Arc::clone(shared);
        std::thread::Builder::new()
            .name("store-recovery".into())
            .spawn(move || shared.recover_when_broken())
            .map_err(|e| StoreError::unavailable("cannot start the recovery thread").caused_by(e))
    }

    /// Stops the recovery thread (it returns at once).
    pub(super) fn close(&self) {
        self.health().closing = true;
        self.wake.notify_all();
    }

    /// Lets go of the open database (closing it once no operation holds it).
    pub(super) fn release(&self) {
        drop(
            self.current
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
    }

    /// The highest feed sequence on disk, across reopenings.
    pub(super) fn feed(&self) -> watch::Receiver<u64> {
        self.feed.subscribe()
    }

    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn open_db(&self) -> Result<Arc<Open>, StoreError> {
        if let Some((_, reason)) = &self.health().broken {
            return Err(StoreError::unavailable(format!(
                "the store cannot write ({reason}); it is being reopened"
            )));
        }
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(|| StoreError::unavailable("the store is being reopened"))
    }

    /// Marks the store broken (once) and wakes the recovery thread.
    pub(super) fn broke(&self, reason: &str) {
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
            let mut failures = 0;
            loop {
                if self.sleep_or_close(RECOVERY_BACKOFF.after(failures + 1)) {
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
                            broken.1 = e.chain();
                        }
                        // Some failures do not pass by waiting: say so (attempts go on, in case
                        // an operator mends it).
                        health.failed =
                            matches!(e, StoreError::Failed { .. } | StoreError::Corrupt { .. })
                                .then(|| e.chain());
                        tracing::warn!(error = %e, attempt = health.attempts, "the store still cannot write");
                    }
                }
                failures += 1;
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
            // Its writer fails every write waiting on it; the callers then let go of it.
            old.writer.stop();
            let deadline = Instant::now() + Duration::from_secs(60);
            while Arc::strong_count(&old) > 1 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if Arc::strong_count(&old) > 1 {
                // Still in use: try again later rather than open a second copy.
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = Some(old);
                return Err(StoreError::unavailable(
                    "operations on the failed store have not finished",
                ));
            }
            drop(old);
        }
        // sled creates a store where there is none: a vanished one must not come back empty.
        if !self.dir.join(LIVE_DIR).join("db").is_file() {
            return Err(StoreError::failed(format!(
                "the store's files in {} are gone",
                self.dir.join(LIVE_DIR).display()
            )));
        }
        // sled opened on a full disk can leave a write torn that the next open reads as
        // corruption (seen: "Read corrupted data", every acknowledged delivery out of reach).
        // It is opened only once there is room for what opening writes.
        let live = self.dir.join(LIVE_DIR);
        let (free, needed) = (free_bytes(&live)?, room_to_open(&live));
        if free < needed {
            return Err(StoreError::unavailable(format!(
                "the disk is still full: {free} bytes free, {needed} needed to reopen the store"
            )));
        }
        let open = Open::start(&self.dir, &self.codec, &self.options, &self.feed)?;
        let now = OffsetDateTime::now_utc().unix_timestamp().to_be_bytes();
        open.trees
            .meta
            .insert(READY_MARKER, &now)
            .map_err(|e| from_sled(e, "test write"))?;
        open.db.flush().map_err(|e| from_sled(e, "test flush"))?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(open));
        Ok(())
    }

    /// Whether the store can write, is recovering, or cannot recover.
    pub(super) fn health_report(&self) -> StoreHealth {
        let health = self.health();
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

/// Bytes free to this process on the filesystem holding `dir` (statvfs(3)).
fn free_bytes(dir: &Path) -> Result<u64, StoreError> {
    let stat = rustix::fs::statvfs(dir).map_err(|e| {
        StoreError::unavailable(format!("cannot read the free space of {}", dir.display()))
            .caused_by(std::io::Error::from(e))
    })?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// Free space wanted before the store is opened again: 8 MiB, or an eighth of what its files
/// take when more (opening writes a snapshot of the page table, which grows with the store).
fn room_to_open(dir: &Path) -> u64 {
    fn size(path: &Path) -> u64 {
        std::fs::read_dir(path).map_or(0, |entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| match e.file_type() {
                    Ok(t) if t.is_dir() => size(&e.path()),
                    _ => e.metadata().map_or(0, |m| m.len()),
                })
                .sum()
        })
    }
    (8 << 20).max(size(dir) / 8)
}
