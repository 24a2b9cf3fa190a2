//! Every write to the queues, inside one sled transaction: queue, chain, due index, state and
//! referral indexes and counts move together.

use sled::transaction::{ConflictableTransactionError, TransactionalTree};
use time::OffsetDateTime;

use crate::store::error::StoreError;
use crate::store::queue::{MessageState, QueuedMessage};
use crate::store::record::QUEUE;
use crate::store::record::{Codec, read_u64};
use crate::store::sled::keys::queue::{
    chain, chain_value, count_key, due_key, head_key, referral_key, state_key,
};
use crate::store::sled::trees::{QUEUE_SEQ, abort};

type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

/// The queue and its index inside one transaction.
pub(in crate::store::sled) struct QueueTx<'t> {
    pub(in crate::store::sled) queue: &'t TransactionalTree,
    pub(in crate::store::sled) index: &'t TransactionalTree,
    pub(in crate::store::sled) meta: &'t TransactionalTree,
    pub(in crate::store::sled) codec: &'t Codec,
}

impl QueueTx<'_> {
    fn get(&self, id: u64) -> TxResult<Option<QueuedMessage>> {
        let key = id.to_be_bytes();
        self.queue
            .get(key)?
            .map(|v| self.codec.decode(QUEUE, &key, &v))
            .transpose()
            .map_err(abort)
    }

    fn put(&self, message: &QueuedMessage) -> TxResult<()> {
        let key = message.id.to_be_bytes();
        let value = self.codec.encode(QUEUE, &key, message).map_err(abort)?;
        self.queue.insert(&key, value)?;
        Ok(())
    }

    fn count(&self, queue: &str, state: MessageState, by: i64) -> TxResult<()> {
        let key = count_key(queue, state);
        let now = self
            .index
            .get(&key)?
            .map(|v| read_u64(&v))
            .transpose()
            .map_err(abort)?
            .unwrap_or(0);
        let next = now.saturating_add_signed(by);
        self.index.insert(key, &next.to_be_bytes())?;
        Ok(())
    }

    /// The next id of the store's queues.
    fn next_id(&self) -> TxResult<u64> {
        let id = self
            .meta
            .get(QUEUE_SEQ)?
            .map(|v| read_u64(&v))
            .transpose()
            .map_err(abort)?
            .unwrap_or(0)
            + 1;
        self.meta.insert(QUEUE_SEQ, &id.to_be_bytes())?;
        Ok(id)
    }

    /// Appends `message` (given its id here) to its referral's chain; due at once when it is
    /// the head.
    pub(in crate::store::sled) fn enqueue(&self, message: &mut QueuedMessage) -> TxResult<()> {
        message.id = self.next_id()?;
        self.link(message)
    }

    /// Stores `message`, in any state, under the id it has (a record moved from elsewhere, in
    /// id order per referral), or under a new one when that is taken; later ids are greater.
    pub(in crate::store::sled) fn adopt(&self, message: &mut QueuedMessage) -> TxResult<()> {
        if message.id == 0 || self.get(message.id)?.is_some() {
            message.id = self.next_id()?;
        } else {
            let seq = self
                .meta
                .get(QUEUE_SEQ)?
                .map(|v| read_u64(&v))
                .transpose()
                .map_err(abort)?
                .unwrap_or(0);
            self.meta
                .insert(QUEUE_SEQ, &seq.max(message.id).to_be_bytes())?;
        }
        self.link(message)
    }

    /// Writes `message` with its index entries: an open one joins the end of its referral's
    /// chain (due at once, when pending and at its head).
    fn link(&self, message: &mut QueuedMessage) -> TxResult<()> {
        let id = message.id;
        message.next = None;
        if matches!(message.state, MessageState::Pending | MessageState::Dead) {
            let head = head_key(&message.queue, &message.referral);
            match self.index.get(&head)? {
                None => {
                    self.index.insert(head, &chain_value(id, id))?;
                    if message.state == MessageState::Pending {
                        self.index
                            .insert(due_key(&message.queue, message.next_attempt_at, id), &[])?;
                    }
                }
                Some(value) => {
                    let (first, last) = chain(&value).map_err(abort)?;
                    let mut tail = self.get(last)?.ok_or_else(|| {
                        abort(StoreError::failed("a queue chain names no message"))
                    })?;
                    tail.next = Some(id);
                    self.put(&tail)?;
                    self.index.insert(head, &chain_value(first, id))?;
                }
            }
        }
        self.index
            .insert(state_key(&message.queue, message.state, id), &[])?;
        self.index
            .insert(referral_key(&message.referral, id), &[])?;
        self.count(&message.queue, message.state, 1)?;
        self.put(message)
    }

    /// Stores `message`'s new state, keeping the chain, due index and counts in step, only
    /// while its stored state is `from` (`false` otherwise, writing nothing).
    pub(in crate::store::sled) fn save(
        &self,
        message: &QueuedMessage,
        from: MessageState,
    ) -> TxResult<bool> {
        let old = self.get(message.id)?.ok_or_else(|| {
            abort(StoreError::failed(format!(
                "no queued message {}",
                message.id
            )))
        })?;
        if old.state != from {
            return Ok(false);
        }
        let mut message = message.clone();
        // The chain is the store's: a message queued since the caller read this one linked it.
        message.next = old.next;
        let queue = message.queue.clone();
        if old.state != message.state {
            self.index
                .remove(state_key(&queue, old.state, message.id))?;
            self.index
                .insert(state_key(&queue, message.state, message.id), &[])?;
            self.count(&queue, old.state, -1)?;
            self.count(&queue, message.state, 1)?;
        }
        self.index
            .remove(due_key(&queue, old.next_attempt_at, message.id))?;
        let head = head_key(&queue, &message.referral);
        let chain_now = self
            .index
            .get(&head)?
            .map(|v| chain(&v))
            .transpose()
            .map_err(abort)?;
        let is_head = chain_now.is_some_and(|(first, _)| first == message.id);
        match message.state {
            MessageState::Pending if is_head => {
                self.index
                    .insert(due_key(&queue, message.next_attempt_at, message.id), &[])?;
            }
            MessageState::Pending | MessageState::Dead => {}
            MessageState::Delivered | MessageState::Discarded => {
                if let (true, Some((_, last))) = (is_head, chain_now) {
                    match old.next {
                        Some(next) => {
                            self.index.insert(head, &chain_value(next, last))?;
                            if let Some(following) = self.get(next)?
                                && following.state == MessageState::Pending
                            {
                                self.index.insert(
                                    due_key(&queue, following.next_attempt_at, next),
                                    &[],
                                )?;
                            }
                        }
                        None => {
                            self.index.remove(head)?;
                        }
                    }
                }
            }
        }
        self.put(&message)?;
        Ok(true)
    }
}

impl QueueTx<'_> {
    /// Removes message `id` and its index entries, if it is still settled before `cutoff`
    /// (it is never in a chain then: only an open message is a head or follows one).
    pub(in crate::store::sled) fn forget(&self, id: u64, cutoff: OffsetDateTime) -> TxResult<bool> {
        let Some(message) = self.get(id)? else {
            return Ok(false);
        };
        if !message.settled_before(cutoff) {
            return Ok(false);
        }
        let queue = &message.queue;
        self.queue.remove(&id.to_be_bytes())?;
        self.index.remove(state_key(queue, message.state, id))?;
        self.index.remove(referral_key(&message.referral, id))?;
        self.index
            .remove(due_key(queue, message.next_attempt_at, id))?;
        self.count(queue, message.state, -1)?;
        Ok(true)
    }
}
