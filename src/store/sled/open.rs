//! One open sled database: its trees, its group-commit flusher and the durable feed sequence.

use std::path::Path;
use std::sync::Arc;

use tokio::sync::watch;

use super::codec::{Codec, read_u64};
use super::dir::LIVE_DIR;
use super::flusher::Flusher;
use super::trees::{EVENT_SEQ, Trees, from_sled, unavailable};
use crate::store::error::StoreError;

/// One open sled database with its trees and its flusher.
pub(super) struct Open {
    pub(super) db: sled::Db,
    pub(super) trees: Trees,
    pub(super) flusher: Flusher,
    pub(super) codec: Codec,
    feed: watch::Receiver<u64>,
}

impl Open {
    /// Opens the database in `dir`, checks the keys, and starts its flusher. The feed's durable
    /// sequence is published on `feed`.
    pub(super) fn start(
        dir: &Path,
        codec: &Codec,
        feed: &Arc<watch::Sender<u64>>,
    ) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(dir.join(LIVE_DIR))
            .open()
            .map_err(|e| match e {
                sled::Error::Io(io) if io.to_string().contains("lock") => StoreError::InUse {
                    dir: dir.to_path_buf(),
                },
                other => from_sled(
                    other,
                    &format!("cannot open the store in {}", dir.display()),
                ),
            })?;
        let trees = Trees::open(&db)?;
        // Before the flusher starts: it holds the database (and its lock) until stopped.
        codec.admit_keys(&trees)?;
        trees.index_referral_updates(codec)?;
        // Referrals by service id are no longer indexed (listings filter the modification
        // index); stores written before keep a tree of them, dropped here.
        db.drop_tree("by_service").map_err(unavailable)?;
        // Each flush reports the feed sequence it made durable: the counter as read before
        // the flush, since every write it covers was committed before that read.
        let meta = trees.meta.clone();
        let read_seq = move || -> Result<u64, String> {
            let seq = meta.get(EVENT_SEQ).map_err(|e| e.to_string())?;
            seq.map(|v| read_u64(&v).map_err(|e| e.to_string()))
                .transpose()
                .map(Option::unwrap_or_default)
        };
        let on_disk = read_seq()
            .map_err(|e| StoreError::unavailable("cannot read the feed sequence").caused_by(e))?;
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
    pub(super) fn durable_seq(&self) -> u64 {
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
