//! A stopped store opened for reading its records exactly as stored, sealed or not, without
//! its key and without starting a writer: what `referral-relay migrate` copies elsewhere.

use std::path::Path;
use std::sync::Arc;

use super::dir::{LIVE_DIR, lock_dir, open_live, recover_swap};
use super::trees::{Trees, from_sled};
use crate::store::error::StoreError;

/// The trees of a data dir no service holds; the dir stays locked while this lives.
pub(in crate::store) struct Stopped {
    pub(in crate::store) trees: Trees,
    /// Named with a leading `_` as it is mostly held, to keep the store open.
    _db: sled::Db,
    _lock: Arc<std::fs::File>,
}

impl Stopped {
    /// The database, for reading trees not in [`Trees`].
    pub(super) fn db(&self) -> &sled::Db {
        &self._db
    }

    /// # Errors
    /// [`StoreError::InUse`] while a service holds `dir`; `Failed` when `dir` holds no store.
    pub(in crate::store) fn open(dir: &Path) -> Result<Self, StoreError> {
        if !dir.join(LIVE_DIR).is_dir() {
            return Err(StoreError::failed(format!(
                "{} holds no referral-relay store (no {LIVE_DIR} directory in it)",
                dir.display()
            )));
        }
        let lock = lock_dir(dir)?;
        recover_swap(dir)?;
        let db = open_live(dir, None)
            .map_err(|e| from_sled(e, &format!("cannot open the store in {}", dir.display())))?;
        Ok(Self {
            trees: Trees::open(&db)?,
            _db: db,
            _lock: lock,
        })
    }
}
