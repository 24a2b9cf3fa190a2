//! `rekey`: re-sealing every record with the current key by copying the store and swapping
//! the copy in.

use std::path::Path;
use std::sync::Arc;

use super::dir::{LIVE_DIR, OLD_DIR, REKEY_DIR, io_unavailable, lock_dir, sync_dir};
use super::handle::SledStore;
use super::options::SledOptions;
use super::snapshot::copy_tree;
use super::trees::{SEAL_KEYS, unavailable};
use crate::store::error::StoreError;
use crate::store::record::SEALED_KINDS;
use crate::store::seal::Keyring;

impl SledStore {
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
        let store = Self::open_locked(
            dir,
            SledOptions {
                keys: Some(keys),
                ..SledOptions::default()
            },
            Arc::clone(&lock),
        )?;
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
            let tree = SEALED_KINDS
                .into_iter()
                .find(|t| t.as_bytes() == name.as_ref());
            let copied = copy_tree(&from, &to, |key, value| match tree {
                Some(tree) => {
                    let plain = codec.open(tree, key, &value)?;
                    Ok(codec.seal(tree, key, &plain)?.into())
                }
                None => Ok(value),
            })?;
            if tree.is_some() {
                sealed += copied;
            }
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
