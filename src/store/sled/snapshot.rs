//! Live snapshots: a consistent copy of every tree into a fresh database, made on the writer
//! thread, so no write lands while the copy is made (writes wait in the queue meanwhile; a
//! delivery finding it full is answered 503 and retried by its sender). Every write
//! acknowledged before the snapshot was asked for is in it. Records are copied as stored:
//! sealed ones stay sealed. Also the tree copy `rekey` uses.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::dir::LIVE_DIR;
use super::handle::SledStore;
use super::stopped::Stopped;
use super::trees::{EVENT_SEQ, unavailable};
use crate::store::error::StoreError;
use crate::store::maintenance::SnapshotInfo;
use crate::store::record::read_u64;

/// Items written per batch when copying a tree.
const BATCH: usize = 1000;

/// Copies every item of `from` into `to`, each value passed through `value`; returns how many.
pub(super) fn copy_tree(
    from: &sled::Tree,
    to: &sled::Tree,
    mut value: impl FnMut(&[u8], sled::IVec) -> Result<sled::IVec, StoreError>,
) -> Result<u64, StoreError> {
    let mut batch = sled::Batch::default();
    let (mut batched, mut copied) = (0, 0);
    for item in from.iter() {
        let (key, stored) = item.map_err(unavailable)?;
        let written = value(&key, stored)?;
        batch.insert(key, written);
        batched += 1;
        copied += 1;
        if batched == BATCH {
            to.apply_batch(std::mem::take(&mut batch))
                .map_err(unavailable)?;
            batched = 0;
        }
    }
    to.apply_batch(batch).map_err(unavailable)?;
    Ok(copied)
}

/// The name of a tree as the snapshot's counts give it.
fn tree_name(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

/// Copies every tree of `db` into a new database in `into/sled`, flushed and closed.
fn copy_db(db: &sled::Db, into: &Path) -> Result<SnapshotInfo, StoreError> {
    let fresh = sled::Config::new()
        .path(into.join(LIVE_DIR))
        .open()
        .map_err(unavailable)?;
    let mut trees = BTreeMap::new();
    for name in db.tree_names() {
        let from = db.open_tree(&name).map_err(unavailable)?;
        let to = fresh.open_tree(&name).map_err(unavailable)?;
        trees.insert(tree_name(&name), copy_tree(&from, &to, |_, v| Ok(v))?);
    }
    let feed_seq = fresh
        .open_tree("meta")
        .and_then(|meta| meta.get(EVENT_SEQ))
        .map_err(unavailable)?
        .map(|v| read_u64(&v))
        .transpose()?
        .unwrap_or_default();
    fresh.flush().map_err(unavailable)?;
    Ok(SnapshotInfo { trees, feed_seq })
}

impl SledStore {
    /// See [`MaintenanceStore::snapshot`](crate::store::MaintenanceStore::snapshot).
    pub(super) async fn snapshot_into(&self, into: PathBuf) -> Result<SnapshotInfo, StoreError> {
        let open = self.open_db()?;
        let copied = open
            .writer
            .write(move |target| {
                std::fs::create_dir_all(&into).map_err(|e| {
                    StoreError::io(format!("cannot create {}", into.display())).caused_by(e)
                })?;
                copy_db(&target.db, &into)
            })
            .await;
        self.checked(copied)
    }

    /// Locks the data dir `dir` as an open store does, until the returned handle is dropped: for
    /// commands that write a data dir without opening a store in it (`restore`).
    ///
    /// # Errors
    /// [`StoreError::InUse`] while a service or another command holds `dir`.
    pub fn lock_data_dir(dir: &Path) -> Result<impl Drop, StoreError> {
        super::dir::lock_dir(dir)
    }

    /// The items of each tree of the stopped store in `dir` (what [`SnapshotInfo::trees`]
    /// counts): how a restored store is checked against its backup's manifest.
    ///
    /// # Errors
    /// `InUse` while a service holds `dir`; `Failed` when it holds no store.
    pub fn tree_counts(dir: &Path) -> Result<BTreeMap<String, u64>, StoreError> {
        let stopped = Stopped::open(dir)?;
        let db = stopped.db();
        db.tree_names()
            .iter()
            .map(|name| {
                let tree = db.open_tree(name).map_err(unavailable)?;
                let mut count = 0;
                for item in tree.iter() {
                    item.map_err(unavailable)?;
                    count += 1;
                }
                Ok((tree_name(name), count))
            })
            .collect()
    }
}
