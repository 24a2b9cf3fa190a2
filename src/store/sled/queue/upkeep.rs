//! What the queues need beside sending: forgetting messages delivered long ago (retention), and
//! reading the unsealed index for `migrate` (open counts, each message's referral).

use sled::Transactional;
use time::OffsetDateTime;

use crate::store::error::StoreError;
use crate::store::queue::{MessageState, QueuedMessage};
use crate::store::record::QUEUE;
use crate::store::record::read_u64;
use crate::store::sled::apply::queue::QueueTx;
use crate::store::sled::keys::queue::{BY_REFERRAL, BY_STATE, COUNT, prefixed, state_byte};
use crate::store::sled::open::Open;
use crate::store::sled::trees::{tx_error, unavailable};
use crate::store::sled::writer::Target;

/// How many messages of destinations' queues (every queue but `except`) are still open
/// (pending or dead): read from the counts, which are not sealed.
pub(in crate::store) fn open_messages(index: &sled::Tree, except: &str) -> Result<u64, StoreError> {
    let mut open = 0u64;
    let skipped = prefixed(COUNT, except);
    for item in index.scan_prefix([COUNT]) {
        let (key, value) = item.map_err(unavailable)?;
        if key.starts_with(&skipped) && key.len() == skipped.len() + 1 {
            continue;
        }
        let state = key.last().copied();
        if state == Some(state_byte(MessageState::Pending))
            || state == Some(state_byte(MessageState::Dead))
        {
            open = open.saturating_add(read_u64(&value)?);
        }
    }
    Ok(open)
}

/// The ids of `queue`'s messages, and each message's referral (read from the index, which is
/// not sealed), in id order.
pub(in crate::store) fn queue_referrals(
    index: &sled::Tree,
    queue: &str,
) -> Result<Vec<(u64, String)>, StoreError> {
    let mut referral_of = std::collections::HashMap::new();
    for item in index.scan_prefix([BY_REFERRAL]) {
        let (key, _) = item.map_err(unavailable)?;
        let Some(split) = key.len().checked_sub(9) else {
            continue;
        };
        let referral = std::str::from_utf8(&key[1..split])
            .map_err(|_| StoreError::corrupt("a queue index key is not text"))?;
        referral_of.insert(read_u64(&key[split + 1..])?, referral.to_owned());
    }
    let prefix = prefixed(BY_STATE, queue);
    let mut found = Vec::new();
    for item in index.scan_prefix(&prefix) {
        let (key, _) = item.map_err(unavailable)?;
        let id = read_u64(&key[key.len() - 8..])?;
        let referral = referral_of.get(&id).cloned().ok_or_else(|| {
            StoreError::corrupt("a queued message is missing from its referral's index")
        })?;
        found.push((id, referral));
    }
    found.sort_unstable();
    Ok(found)
}

impl Open {
    /// Blocking (on a blocking thread): reads every message and hands the writer the ids to
    /// forget in chunks; durable when it returns.
    pub(super) fn purge_messages_before(&self, cutoff: OffsetDateTime) -> Result<u64, StoreError> {
        const CHUNK: usize = 512;
        let mut purged = 0;
        let mut chunk = Vec::with_capacity(CHUNK);
        for item in self.trees.queue.iter() {
            let (key, value) = item.map_err(unavailable)?;
            let message: QueuedMessage = self.codec.decode(QUEUE, &key, &value)?;
            if message.settled_before(cutoff) {
                chunk.push(message.id);
            }
            if chunk.len() == CHUNK {
                purged += self.forget_chunk(std::mem::take(&mut chunk), cutoff)?;
            }
        }
        purged += self.forget_chunk(chunk, cutoff)?;
        Ok(purged)
    }

    fn forget_chunk(&self, ids: Vec<u64>, cutoff: OffsetDateTime) -> Result<u64, StoreError> {
        if ids.is_empty() {
            return Ok(0);
        }
        self.writer.write_blocking(
            move |Target {
                      trees: t, codec, ..
                  }| {
                (&t.queue, &t.queue_index, &t.meta)
                    .transaction(|(queue, index, meta)| {
                        let tx = QueueTx {
                            queue,
                            index,
                            meta,
                            codec,
                        };
                        let mut forgotten = 0;
                        for id in &ids {
                            forgotten += u64::from(tx.forget(*id, cutoff)?);
                        }
                        Ok(forgotten)
                    })
                    .map_err(tx_error)
            },
        )
    }
}
