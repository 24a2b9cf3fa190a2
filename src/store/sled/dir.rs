//! The data dir: its lock, and the directory swap `rekey` does (finished or undone after a
//! crash).

use std::path::Path;
use std::sync::Arc;

use crate::store::error::StoreError;

/// The live store under the data dir, and the two directories of a `rekey` swap.
pub(super) const LIVE_DIR: &str = "sled";
pub(super) const REKEY_DIR: &str = "sled.rekey";
pub(super) const OLD_DIR: &str = "sled.old";
/// The file a data dir is locked by (see [`lock_dir`]).
pub const LOCK_FILE: &str = "lock";

/// Finishes or undoes a `rekey` swap that a crash interrupted. `sled.old` exists only once the
/// copy in `sled.rekey` was complete, so: with `sled.old` and no `sled`, the copy goes live;
/// with `sled` and `sled.rekey` (no `sled.old`), the copy was unfinished and is removed; with
/// `sled` and `sled.old`, only the removal of the old store was left.
pub(super) fn recover_swap(dir: &Path) -> Result<(), StoreError> {
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
pub(super) fn lock_dir(dir: &Path) -> Result<Arc<std::fs::File>, StoreError> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(LOCK_FILE))
        .map_err(|e| not_writable(dir, e))?;
    match file.try_lock() {
        Ok(()) => Ok(Arc::new(file)),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::InUse {
            dir: dir.to_path_buf(),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(io_unavailable(e)),
    }
}

/// The first write to the data dir failed: say which directory and who owns it, since the
/// usual cause is a volume or bind mount owned by another user than the relay's.
fn not_writable(dir: &Path, e: std::io::Error) -> StoreError {
    use std::os::unix::fs::MetadataExt;
    if e.kind() != std::io::ErrorKind::PermissionDenied {
        return io_unavailable(e);
    }
    let owner = std::fs::metadata(dir).map_or_else(
        |_| String::new(),
        |m| {
            format!(
                " (owned by uid {}, gid {}, mode {:o})",
                m.uid(),
                m.gid(),
                m.mode() & 0o7777
            )
        },
    );
    StoreError::unavailable(format!(
        "cannot write to the data dir {}{owner}: the relay's user must be able to (uid 10001 in the container image)",
        dir.display()
    ))
    .caused_by(e)
}

/// Makes renames in `dir` durable.
pub(super) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_unavailable)
}

pub(super) fn io_unavailable(e: std::io::Error) -> StoreError {
    StoreError::unavailable("data dir I/O failed").caused_by(e)
}

/// How long [`open_live`] waits for a closing database's own lock.
const LIVE_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Opens the database in `<dir>/sled` (with a page cache of `cache_bytes`, else sled's
/// default), under the [`lock_dir`] lock the caller holds.
///
/// Holding that lock, no other store in any process has `dir` open, so sled's own lock on its
/// `db` file can only still be held by a store of this process that just closed: sled's
/// background threads drop their handle on the file a moment after the final flush returns
/// (a restart in the same process, as the recovery thread and the tests do). That lock is
/// waited for, up to 10 s; any other error is returned at once.
pub(super) fn open_live(dir: &Path, cache_bytes: Option<u64>) -> sled::Result<sled::Db> {
    let started = std::time::Instant::now();
    loop {
        let mut config = sled::Config::new().path(dir.join(LIVE_DIR));
        if let Some(bytes) = cache_bytes {
            config = config.cache_capacity(bytes);
        }
        match config.open() {
            Err(sled::Error::Io(e)) if is_sled_lock(&e) && started.elapsed() < LIVE_LOCK_WAIT => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            result => return result,
        }
    }
}

/// Whether `e` is sled's refusal to take the lock on its `db` file.
pub(super) fn is_sled_lock(e: &std::io::Error) -> bool {
    e.to_string().contains("could not acquire lock")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sled::{SledOptions, SledStore};

    #[test]
    fn a_store_reopens_while_a_closing_one_still_holds_sleds_lock() {
        let dir = tempfile::TempDir::new().unwrap();
        drop(SledStore::open_opts(dir.path(), SledOptions::default()).unwrap());
        // Stands in for the background thread of a store just closed in this process.
        let lingering = sled::Config::new()
            .path(dir.path().join(LIVE_DIR))
            .open()
            .unwrap();
        let closer = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            drop(lingering);
        });
        let reopened = SledStore::open_opts(dir.path(), SledOptions::default());
        closer.join().unwrap();
        assert!(reopened.is_ok(), "{:?}", reopened.err());
    }
}
