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

mod upkeep;

use async_trait::async_trait;
use sled::Transactional;
use time::OffsetDateTime;

pub(in crate::store) use self::upkeep::{open_messages, queue_referrals};
use super::apply::queue::QueueTx;
use super::handle::SledStore;
use super::keys::due_time;
use super::keys::queue::{
    BY_REFERRAL, BY_STATE, DUE, count_key, paused_key, prefixed, state_byte, state_key,
};
use super::open::Open;
use super::trees::{tx_error, unavailable};
use super::writer::Target;
use crate::domain::ReferralRef;
use crate::store::error::StoreError;
use crate::store::queue::{MessageState, QueueStats, QueueStore, QueuedMessage};
use crate::store::record::QUEUE;
use crate::store::record::read_u64;

impl Open {
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
