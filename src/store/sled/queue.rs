//! Outgoing queues on sled: messages in `queue` (sealed, by id), and in `queue_index`:
//!
//! - `\x01` queue `\0` due time (16 bytes, [`due_time`]) id: the pending heads, by due time;
//! - `\x02` queue `\0` referral → head id, tail id: each referral's chain of open messages
//!   (pending or dead), linked through [`QueuedMessage::next`];
//! - `\x03` queue `\0` state id: messages by state, for listings;
//! - `\x04` referral `\0` id: a referral's messages in every queue;
//! - `\x05` queue `\0` state → count; `\x06` queue: paused.
//!
//! Queue names hold no NUL and referral refs no control character, so keys never run into each
//! other. Every change is one transaction, so the chain, the due index and the counts move
//! together with the message.

use async_trait::async_trait;
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionalTree};
use time::OffsetDateTime;

use super::codec::{Codec, read_u64};
use super::documents::due_time;
use super::handle::SledStore;
use super::keys::referral_seq_key;
use super::open::Open;
use super::trees::{QUEUE, QUEUE_SEQ, abort, tx_error, unavailable};
use super::writer::Target;
use crate::domain::ReferralRef;
use crate::store::error::StoreError;
use crate::store::queue::{MessageState, QueueStats, QueueStore, QueuedMessage};

type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

const DUE: u8 = 0x01;
const HEAD: u8 = 0x02;
const BY_STATE: u8 = 0x03;
const BY_REFERRAL: u8 = 0x04;
const COUNT: u8 = 0x05;
const PAUSED: u8 = 0x06;

fn prefixed(tag: u8, queue: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(queue.len() + 32);
    key.push(tag);
    key.extend_from_slice(queue.as_bytes());
    key.push(0);
    key
}

fn due_key(queue: &str, at: OffsetDateTime, id: u64) -> Vec<u8> {
    let mut key = prefixed(DUE, queue);
    key.extend_from_slice(&due_time(at));
    key.extend_from_slice(&id.to_be_bytes());
    key
}

fn head_key(queue: &str, referral: &ReferralRef) -> Vec<u8> {
    let mut key = prefixed(HEAD, queue);
    key.extend_from_slice(referral.as_str().as_bytes());
    key
}

fn state_byte(state: MessageState) -> u8 {
    match state {
        MessageState::Pending => 0,
        MessageState::Dead => 1,
        MessageState::Delivered => 2,
        MessageState::Discarded => 3,
    }
}

fn state_key(queue: &str, state: MessageState, id: u64) -> Vec<u8> {
    let mut key = prefixed(BY_STATE, queue);
    key.push(state_byte(state));
    key.extend_from_slice(&id.to_be_bytes());
    key
}

fn count_key(queue: &str, state: MessageState) -> Vec<u8> {
    let mut key = prefixed(COUNT, queue);
    key.push(state_byte(state));
    key
}

fn paused_key(queue: &str) -> Vec<u8> {
    prefixed(PAUSED, queue)
}

fn referral_key(referral: &ReferralRef, id: u64) -> Vec<u8> {
    let mut key = vec![BY_REFERRAL];
    key.extend_from_slice(&referral_seq_key(referral, id));
    key
}

/// Head and tail ids of a referral's chain.
fn chain(value: &[u8]) -> Result<(u64, u64), StoreError> {
    if value.len() != 16 {
        return Err(StoreError::failed("a queue chain entry is damaged"));
    }
    Ok((read_u64(&value[..8])?, read_u64(&value[8..])?))
}

fn chain_value(head: u64, tail: u64) -> [u8; 16] {
    let mut value = [0; 16];
    value[..8].copy_from_slice(&head.to_be_bytes());
    value[8..].copy_from_slice(&tail.to_be_bytes());
    value
}

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

/// The queue and its index inside one transaction.
pub(super) struct QueueTx<'t> {
    pub(super) queue: &'t TransactionalTree,
    pub(super) index: &'t TransactionalTree,
    pub(super) meta: &'t TransactionalTree,
    pub(super) codec: &'t Codec,
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
    pub(super) fn enqueue(&self, message: &mut QueuedMessage) -> TxResult<()> {
        message.id = self.next_id()?;
        self.link(message)
    }

    /// Stores `message`, in any state, under the id it has (a record moved from elsewhere, in
    /// id order per referral), or under a new one when that is taken; later ids are greater.
    pub(super) fn adopt(&self, message: &mut QueuedMessage) -> TxResult<()> {
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
    pub(super) fn save(&self, message: &QueuedMessage, from: MessageState) -> TxResult<bool> {
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
    fn forget(&self, id: u64, cutoff: OffsetDateTime) -> TxResult<bool> {
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

impl Open {
    /// Blocking (on a blocking thread): reads every message and hands the writer the ids to
    /// forget in chunks; durable when it returns.
    fn purge_messages_before(&self, cutoff: OffsetDateTime) -> Result<u64, StoreError> {
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

    fn queue_message(&self, id: u64) -> Result<Option<QueuedMessage>, StoreError> {
        let key = id.to_be_bytes();
        self.trees
            .queue
            .get(key)
            .map_err(unavailable)?
            .map(|v| self.codec.decode(QUEUE, &key, &v))
            .transpose()
    }

    fn queue_paused(&self, queue: &str) -> Result<bool, StoreError> {
        Ok(self
            .trees
            .queue_index
            .get(paused_key(queue))
            .map_err(unavailable)?
            .is_some())
    }

    fn due_messages(
        &self,
        queue: &str,
        now: OffsetDateTime,
        limit: usize,
        busy: &[u64],
    ) -> Result<Vec<QueuedMessage>, StoreError> {
        if self.queue_paused(queue)? {
            return Ok(Vec::new());
        }
        let prefix = prefixed(DUE, queue);
        let now = due_time(now);
        let mut due = Vec::new();
        for item in self.trees.queue_index.scan_prefix(&prefix) {
            if due.len() >= limit {
                break;
            }
            let (key, _) = item.map_err(unavailable)?;
            let rest = &key[prefix.len()..];
            if rest.len() != 24 {
                continue;
            }
            if rest[..16] > now[..] {
                break;
            }
            let id = read_u64(&rest[16..])?;
            if busy.contains(&id) {
                continue;
            }
            if let Some(message) = self.queue_message(id)?
                && message.state == MessageState::Pending
            {
                due.push(message);
            }
        }
        Ok(due)
    }

    fn next_due(&self, queue: &str, busy: &[u64]) -> Result<Option<OffsetDateTime>, StoreError> {
        if self.queue_paused(queue)? {
            return Ok(None);
        }
        let prefix = prefixed(DUE, queue);
        for item in self.trees.queue_index.scan_prefix(&prefix) {
            let (key, _) = item.map_err(unavailable)?;
            let Some(id) = key.get(prefix.len() + 16..).map(read_u64).transpose()? else {
                continue;
            };
            if busy.contains(&id) {
                continue;
            }
            // As `due_messages`, only a pending message counts (an entry left behind would
            // otherwise read as due now, every time).
            if let Some(message) = self.queue_message(id)?
                && message.state == MessageState::Pending
            {
                return Ok(Some(message.next_attempt_at));
            }
        }
        Ok(None)
    }

    async fn save_message(
        &self,
        message: &QueuedMessage,
        from: MessageState,
    ) -> Result<bool, StoreError> {
        let message = message.clone();
        self.writer
            .write(
                move |Target {
                          trees: t, codec, ..
                      }| {
                    (&t.queue, &t.queue_index, &t.meta)
                        .transaction(|(queue, index, meta)| {
                            QueueTx {
                                queue,
                                index,
                                meta,
                                codec,
                            }
                            .save(&message, from)
                        })
                        .map_err(tx_error)
                },
            )
            .await
    }

    fn queue_messages(
        &self,
        queue: &str,
        state: Option<MessageState>,
        after: u64,
        limit: usize,
    ) -> Result<Vec<QueuedMessage>, StoreError> {
        let mut found = Vec::new();
        let states = match state {
            Some(state) => vec![state],
            None => vec![
                MessageState::Pending,
                MessageState::Dead,
                MessageState::Delivered,
                MessageState::Discarded,
            ],
        };
        for state in states {
            let start = state_key(queue, state, after.saturating_add(1));
            let end = state_key(queue, state, u64::MAX);
            for item in self.trees.queue_index.range(start..=end).take(limit) {
                let (key, _) = item.map_err(unavailable)?;
                let id = read_u64(&key[key.len() - 8..])?;
                if let Some(message) = self.queue_message(id)? {
                    found.push(message);
                }
            }
        }
        found.sort_by_key(|m| m.id);
        found.truncate(limit);
        Ok(found)
    }

    fn referral_messages(&self, referral: &ReferralRef) -> Result<Vec<QueuedMessage>, StoreError> {
        let mut prefix = vec![BY_REFERRAL];
        prefix.extend_from_slice(referral.as_str().as_bytes());
        prefix.push(0);
        let mut found = Vec::new();
        for item in self.trees.queue_index.scan_prefix(&prefix) {
            let (key, _) = item.map_err(unavailable)?;
            let id = read_u64(&key[prefix.len()..])?;
            if let Some(message) = self.queue_message(id)? {
                found.push(message);
            }
        }
        Ok(found)
    }

    fn queue_stats(&self, queue: &str) -> Result<QueueStats, StoreError> {
        let count = |state| -> Result<u64, StoreError> {
            self.trees
                .queue_index
                .get(count_key(queue, state))
                .map_err(unavailable)?
                .map_or(Ok(0), |v| read_u64(&v))
        };
        let first = |state, last: bool| -> Result<Option<QueuedMessage>, StoreError> {
            let mut prefix = prefixed(BY_STATE, queue);
            prefix.push(state_byte(state));
            let mut scan = self.trees.queue_index.scan_prefix(&prefix);
            let item = if last { scan.next_back() } else { scan.next() };
            match item {
                Some(item) => {
                    let (key, _) = item.map_err(unavailable)?;
                    self.queue_message(read_u64(&key[prefix.len()..])?)
                }
                None => Ok(None),
            }
        };
        let oldest_pending = first(MessageState::Pending, false)?;
        let oldest_dead = first(MessageState::Dead, false)?;
        Ok(QueueStats {
            pending: count(MessageState::Pending)?,
            dead: count(MessageState::Dead)?,
            delivered: count(MessageState::Delivered)?,
            discarded: count(MessageState::Discarded)?,
            oldest_pending_at: oldest_pending.as_ref().map(|m| m.created_at),
            last_error: oldest_dead
                .and_then(|m| m.last_error)
                .or_else(|| oldest_pending.and_then(|m| m.last_error)),
            last_delivered_at: first(MessageState::Delivered, true)?.and_then(|m| m.delivered_at),
            paused: self.queue_paused(queue)?,
        })
    }
}

#[async_trait]
impl QueueStore for SledStore {
    async fn due_messages(
        &self,
        queue: &str,
        now: OffsetDateTime,
        _lease: std::time::Duration,
        limit: usize,
        busy: &[u64],
    ) -> Result<Vec<QueuedMessage>, StoreError> {
        // One process per store: what the caller sends is left out through `busy`.
        let open = self.open_db()?;
        self.checked(open.due_messages(queue, now, limit, busy))
    }

    async fn next_due(
        &self,
        queue: &str,
        busy: &[u64],
    ) -> Result<Option<OffsetDateTime>, StoreError> {
        let open = self.open_db()?;
        self.checked(open.next_due(queue, busy))
    }

    async fn save_message(
        &self,
        message: &QueuedMessage,
        from: MessageState,
    ) -> Result<bool, StoreError> {
        let open = self.open_db()?;
        self.checked(open.save_message(message, from).await)
    }

    async fn message(&self, id: u64) -> Result<Option<QueuedMessage>, StoreError> {
        let open = self.open_db()?;
        self.checked(open.queue_message(id))
    }

    async fn queue_messages(
        &self,
        queue: &str,
        state: Option<MessageState>,
        after: u64,
        limit: usize,
    ) -> Result<Vec<QueuedMessage>, StoreError> {
        let queue = queue.to_owned();
        self.off_worker(move |open| open.queue_messages(&queue, state, after, limit))
            .await
    }

    async fn referral_messages(
        &self,
        referral: &ReferralRef,
    ) -> Result<Vec<QueuedMessage>, StoreError> {
        let open = self.open_db()?;
        self.checked(open.referral_messages(referral))
    }

    async fn queue_stats(&self, queue: &str) -> Result<QueueStats, StoreError> {
        let open = self.open_db()?;
        self.checked(open.queue_stats(queue))
    }

    async fn set_queue_paused(&self, queue: &str, paused: bool) -> Result<(), StoreError> {
        let open = self.open_db()?;
        let key = paused_key(queue);
        let result = open
            .writer
            .write(move |Target { trees: t, .. }| {
                if paused {
                    t.queue_index.insert(key, &[]).map_err(unavailable)?;
                } else {
                    t.queue_index.remove(key).map_err(unavailable)?;
                }
                Ok(())
            })
            .await;
        self.checked(result)
    }

    async fn purge_messages_before(&self, cutoff: OffsetDateTime) -> Result<u64, StoreError> {
        self.off_worker(move |open| open.purge_messages_before(cutoff))
            .await
    }

    async fn enqueue_messages(&self, messages: Vec<QueuedMessage>) -> Result<(), StoreError> {
        let open = self.open_db()?;
        let written = open
            .writer
            .write(
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
                            for message in &messages {
                                tx.enqueue(&mut message.clone())?;
                            }
                            Ok(())
                        })
                        .map_err(tx_error)
                },
            )
            .await;
        self.checked(written)
    }
}
