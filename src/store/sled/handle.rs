//! [`SledStore`], the handle the store's users hold: it opens the data dir and hands each
//! operation the open database, unless recovery is replacing it.

use std::path::Path;
use std::sync::Arc;

use super::dir::{lock_dir, recover_swap};
use super::open::Open;
use super::options::SledOptions;
use super::recovery::Shared;
use crate::store::error::StoreError;
use crate::store::maintenance::StoreHealth;
use crate::store::record::Codec;
use crate::store::seal::Keyring;

/// The sled-backed [`Store`](crate::store::Store).
pub struct SledStore {
    shared: Arc<Shared>,
    /// Runs recovery when a write fails; stopped when the store is dropped.
    recovery: Option<std::thread::JoinHandle<()>>,
    /// Held while the store is open (see [`lock_dir`]).
    _lock: Arc<std::fs::File>,
}

impl SledStore {
    /// Opens (or creates) the store in `dir`, unencrypted, with the default options, and starts
    /// its writer thread.
    ///
    /// # Errors
    /// [`StoreError::InUse`] when another process holds `dir`; otherwise why it cannot open.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(dir, None)
    }

    /// Opens the store with `keys` sealing records that hold patient data (see `seal`). Refuses
    /// a store whose records were sealed with a key `keys` does not hold.
    ///
    /// # Errors
    /// As [`SledStore::open`], and [`StoreError::Unavailable`] or [`StoreError::Corrupt`] for
    /// records `keys` cannot open.
    pub fn open_with(dir: &Path, keys: Option<Keyring>) -> Result<Self, StoreError> {
        Self::open_opts(
            dir,
            SledOptions {
                keys,
                ..SledOptions::default()
            },
        )
    }

    /// Opens the store with `options` (keys, cache size, write queue).
    ///
    /// # Errors
    /// As [`SledStore::open_with`].
    pub fn open_opts(dir: &Path, options: SledOptions) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::unavailable(format!("cannot create data dir {}", dir.display()))
                .caused_by(e)
        })?;
        Self::open_locked(dir, options, lock_dir(dir)?)
    }

    /// Opens the store under a lock already taken on `dir`.
    pub(super) fn open_locked(
        dir: &Path,
        mut options: SledOptions,
        lock: Arc<std::fs::File>,
    ) -> Result<Self, StoreError> {
        recover_swap(dir)?;
        let codec = Codec(options.keys.take().map(Arc::new));
        let shared = Arc::new(Shared::open(dir, codec, options)?);
        let recovery = Shared::start_recovery(&shared)?;
        Ok(Self {
            shared,
            recovery: Some(recovery),
            _lock: lock,
        })
    }

    /// The open database, unless the store is broken or being reopened.
    pub(super) fn open_db(&self) -> Result<Arc<Open>, StoreError> {
        self.shared.open_db()
    }

    /// Passes `result` on; an I/O failure in it breaks the store, which sets recovery off.
    pub(super) fn checked<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(e) = &result
            && e.is_disk_failure()
        {
            self.shared.broke(&e.chain());
        }
        result
    }

    /// Runs `scan` on the open database on the blocking pool, so a long read or rewrite (a
    /// whole-tree scan) never holds an async worker; then as [`SledStore::checked`].
    pub(super) async fn off_worker<T: Send + 'static>(
        &self,
        scan: impl FnOnce(&Open) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.off_worker_on(&self.open_db()?, scan).await
    }

    /// As [`SledStore::off_worker`], on `open` (which the caller goes on using, to wait until
    /// what `scan` wrote is durable).
    pub(super) async fn off_worker_on<T: Send + 'static>(
        &self,
        open: &Arc<Open>,
        scan: impl FnOnce(&Open) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let open = Arc::clone(open);
        let result = tokio::task::spawn_blocking(move || scan(&open))
            .await
            .unwrap_or_else(|e| {
                Err(StoreError::unavailable("a store scan did not finish").caused_by(e))
            });
        self.checked(result)
    }

    /// The highest feed sequence on disk, across reopenings.
    pub(super) fn feed(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.feed()
    }

    /// Whether the store can write, as the recovery thread sees it.
    pub(super) fn health_now(&self) -> StoreHealth {
        self.shared.health_report()
    }
}

impl Drop for SledStore {
    fn drop(&mut self) {
        self.shared.close();
        if let Some(recovery) = self.recovery.take() {
            let _ = recovery.join();
        }
        // Closing the database flushes it and logs.
        self.shared.release();
    }
}
