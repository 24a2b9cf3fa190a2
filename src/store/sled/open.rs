//! One open sled database: its trees, its writer thread and the durable feed sequence.

use std::path::Path;
use std::sync::Arc;

use tokio::sync::watch;

use super::dir::{is_sled_lock, open_live};
use super::options::SledOptions;
use super::trees::{EVENT_SEQ, Trees, from_sled, unavailable};
use super::writer::{Target, Writer};
use crate::store::error::StoreError;
use crate::store::record::{Codec, read_u64};

/// One open sled database with its trees and its writer.
pub(super) struct Open {
    pub(super) db: sled::Db,
    pub(super) trees: Trees,
    /// Every write goes through it.
    pub(super) writer: Writer,
    pub(super) codec: Codec,
    feed: watch::Receiver<u64>,
}

impl Open {
    /// Opens the database in `dir`, checks the keys, and starts its writer. The feed's durable
    /// sequence is published on `feed`.
    pub(super) fn start(
        dir: &Path,
        codec: &Codec,
        options: &SledOptions,
        feed: &Arc<watch::Sender<u64>>,
    ) -> Result<Self, StoreError> {
        let db = open_live(dir, Some(options.cache_bytes)).map_err(|e| match e {
            sled::Error::Io(io) if is_sled_lock(&io) => StoreError::InUse {
                dir: dir.to_path_buf(),
            },
            other => from_sled(
                other,
                &format!("cannot open the store in {}", dir.display()),
            ),
        })?;
        let trees = Trees::open(&db)?;
        // Before the writer starts: it holds the database (and its lock) until stopped.
        trees.admit_keys(codec)?;
        if trees.move_updates_to_queue(codec)? > 0 {
            db.flush().map_err(unavailable)?;
        }
        trees.index_due_documents(codec)?;
        // Referrals by service id are no longer indexed (listings filter the modification
        // index); stores written before keep a tree of them, dropped here.
        db.drop_tree("by_service").map_err(unavailable)?;
        let on_disk = trees
            .meta
            .get(EVENT_SEQ)
            .map_err(unavailable)?
            .map(|v| read_u64(&v))
            .transpose()?
            .unwrap_or_default();
        feed.send_if_modified(|seq| {
            let moved = on_disk > *seq;
            *seq = (*seq).max(on_disk);
            moved
        });
        let target = Target {
            db: db.clone(),
            trees: trees.clone(),
            codec: codec.clone(),
        };
        let writer = Writer::start(target, options.write_queue, Arc::clone(feed))?;
        Ok(Self {
            db,
            trees,
            writer,
            codec: codec.clone(),
            feed: feed.subscribe(),
        })
    }

    /// The highest feed sequence on disk.
    pub(super) fn durable_seq(&self) -> u64 {
        *self.feed.borrow()
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.writer.stop();
        match self.db.flush() {
            Ok(_) => tracing::info!("store flushed and closed"),
            Err(e) => tracing::error!(error = %e, "final flush of the store failed"),
        }
    }
}
