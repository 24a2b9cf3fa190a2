//! The outbox: updates accepted for Ocean, as messages of [`OCEAN_QUEUE`] in the outgoing
//! queues (see `queue/`), written with each referral's Task state.
//!
//! Stores written before the outbox joined the queues kept updates in trees of their own
//! (`updates`, `open_updates`, `referral_updates`); [`Trees::move_updates_to_queue`] moves them
//! into the queue, under the same ids, when the store is opened.

use async_trait::async_trait;
use sled::Transactional;

use super::apply::queue::QueueTx;
use super::handle::SledStore;
use super::keys::referral_seq_key;
use super::open::Open;
use super::trees::{Trees, tx_error, unavailable};
use super::writer::Target;
use crate::domain::ReferralRef;
use crate::store::error::StoreError;
use crate::store::outbox::{OutboxStore, TaskState, UpdateRecord, UpdateState};
use crate::store::record::{Codec, read_u64};
use crate::store::record::{TASK_STATES, UPDATES};
use crate::store::update::OCEAN_QUEUE;

impl Trees {
    /// Moves the updates of a store written before the outbox joined the queues into
    /// [`OCEAN_QUEUE`], each under its id (unless a destination's message has it: then a new
    /// one, logged), its state kept and the open ones in their referral's order; one transaction per update, so a crash midway
    /// leaves each either moved or not. Returns how many were moved (the caller flushes).
    pub(super) fn move_updates_to_queue(&self, codec: &Codec) -> Result<u64, StoreError> {
        let mut moved = 0;
        for item in self.updates.iter() {
            let (key, value) = item.map_err(unavailable)?;
            let id = read_u64(&key)?;
            let mut update: UpdateRecord = codec.decode(UPDATES, &key, &value)?;
            update.id = id;
            let given = (
                &self.queue,
                &self.queue_index,
                &self.meta,
                &self.updates,
                &self.open_updates,
                &self.referral_updates,
            )
                .transaction(|(queue, index, meta, updates, open, by_referral)| {
                    let mut message = update.clone().into_message();
                    QueueTx {
                        queue,
                        index,
                        meta,
                        codec,
                    }
                    .adopt(&mut message)?;
                    updates.remove(&key)?;
                    open.remove(&key)?;
                    by_referral.remove(referral_seq_key(&update.referral, id))?;
                    Ok(message.id)
                })
                .map_err(tx_error)?;
            if given != id {
                // A destination's message (sealed to its id here) had it: the update's order
                // in its referral's chain is kept, its number is not.
                tracing::warn!(
                    was = id,
                    now = given,
                    "an earlier build's update took a new id: its old one is in use"
                );
            }
            moved += 1;
        }
        if moved > 0 {
            tracing::info!(
                moved,
                "moved the outbox's updates into the outgoing queue (ids kept)"
            );
        }
        Ok(moved)
    }
}

impl Open {
    async fn enqueue_update(
        &self,
        update: UpdateRecord,
        task: TaskState,
    ) -> Result<UpdateRecord, StoreError> {
        let referral_key = update.referral.as_str().as_bytes().to_vec();
        let task = self.codec.encode(TASK_STATES, &referral_key, &task)?;
        let message = update.clone().into_message();
        let id = self
            .writer
            .write(
                move |Target {
                          trees: t, codec, ..
                      }| {
                    (&t.queue, &t.queue_index, &t.meta, &t.task_states)
                        .transaction(|(queue, index, meta, tasks)| {
                            let mut message = message.clone();
                            QueueTx {
                                queue,
                                index,
                                meta,
                                codec,
                            }
                            .enqueue(&mut message)?;
                            tasks.insert(referral_key.as_slice(), task.as_slice())?;
                            Ok(message.id)
                        })
                        .map_err(tx_error)
                },
            )
            .await?;
        Ok(UpdateRecord { id, ..update })
    }

    async fn discard_update(
        &self,
        update: &UpdateRecord,
        task: TaskState,
    ) -> Result<bool, StoreError> {
        let message = UpdateRecord {
            state: UpdateState::Discarded,
            ..update.clone()
        }
        .into_message();
        let referral = update.referral.as_str().as_bytes().to_vec();
        let task = self.codec.encode(TASK_STATES, &referral, &task)?;
        self.writer
            .write(
                move |Target {
                          trees: t, codec, ..
                      }| {
                    (&t.queue, &t.queue_index, &t.meta, &t.task_states)
                        .transaction(|(queue, index, meta, tasks)| {
                            let tx = QueueTx {
                                queue,
                                index,
                                meta,
                                codec,
                            };
                            if !tx.save(&message, UpdateState::Dead)? {
                                return Ok(false);
                            }
                            tasks.insert(referral.as_slice(), task.as_slice())?;
                            Ok(true)
                        })
                        .map_err(tx_error)
                },
            )
            .await
    }

    async fn task_state(&self, referral: &ReferralRef) -> Result<TaskState, StoreError> {
        let key = referral.as_str().as_bytes();
        Ok(self
            .trees
            .task_states
            .get(key)
            .map_err(unavailable)?
            .map(|v| self.codec.decode(TASK_STATES, key, &v))
            .transpose()?
            .unwrap_or_default())
    }
}

/// One process has this store: the Task state read cannot change behind the caller's back
/// (the outbox accepts one update at a time), so `read` is not looked at.
#[async_trait]
impl OutboxStore for SledStore {
    async fn enqueue_update(
        &self,
        update: UpdateRecord,
        task: TaskState,
        _read: Option<&TaskState>,
    ) -> Result<Option<UpdateRecord>, StoreError> {
        debug_assert_eq!(update.clone().into_message().queue, OCEAN_QUEUE);
        let open = self.open_db()?;
        self.checked(open.enqueue_update(update, task).await)
            .map(Some)
    }

    async fn discard_update(
        &self,
        update: &UpdateRecord,
        task: TaskState,
        _read: Option<&TaskState>,
    ) -> Result<bool, StoreError> {
        let open = self.open_db()?;
        self.checked(open.discard_update(update, task).await)
    }

    async fn task_state(&self, referral: &ReferralRef) -> Result<TaskState, StoreError> {
        let open = self.open_db()?;
        self.checked(open.task_state(referral).await)
    }
}

#[cfg(test)]
mod tests {
    use time::OffsetDateTime;

    use super::*;
    use crate::ig::OutboundEvent;
    use crate::store::QueueStore;
    use crate::store::outbox::referral_updates;
    use crate::store::update::UpdateKind;

    fn update(referral: &str, state: UpdateState) -> UpdateRecord {
        let mut update = UpdateRecord::pending(
            ReferralRef::parse(referral).unwrap(),
            "main".into(),
            UpdateKind::Message,
            OutboundEvent::SendCommunicationFromProvider,
            "{}".into(),
            OffsetDateTime::now_utc(),
        );
        update.state = state;
        update
    }

    /// A store written before the outbox joined the queues: its updates move into the queue
    /// under their ids, settled ones stay settled, and the open ones are sent in order.
    #[tokio::test]
    async fn an_older_stores_updates_move_into_the_queue_under_their_ids() {
        let dir = tempfile::tempdir().unwrap();
        let old = [
            (1, "ref-a", UpdateState::Delivered),
            (2, "ref-a", UpdateState::Dead),
            (3, "ref-b", UpdateState::Pending),
            (4, "ref-a", UpdateState::Pending),
            (7, "ref-c", UpdateState::Discarded),
        ];
        {
            // Written as an older build did: the record under its id, open ones listed.
            let store = SledStore::open(dir.path()).unwrap();
            let open = store.open_db().unwrap();
            let codec = &open.codec;
            for (id, referral, state) in old {
                let mut record = update(referral, state);
                record.id = id;
                let key = u64::to_be_bytes(id);
                let value = codec.encode(UPDATES, &key, &record).unwrap();
                open.trees.updates.insert(key, value).unwrap();
                if matches!(state, UpdateState::Pending | UpdateState::Dead) {
                    open.trees.open_updates.insert(key, &[]).unwrap();
                }
                let by_referral = referral_seq_key(&record.referral, id);
                open.trees
                    .referral_updates
                    .insert(by_referral, &[])
                    .unwrap();
            }
            open.db.flush().unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        let open = store.open_db().unwrap();
        assert!(open.trees.updates.is_empty() && open.trees.open_updates.is_empty());
        let ids = |updates: Vec<UpdateRecord>| -> Vec<(u64, UpdateState)> {
            updates.iter().map(|u| (u.id, u.state)).collect()
        };
        let a = ReferralRef::parse("ref-a").unwrap();
        assert_eq!(
            ids(referral_updates(&store, &a).await.unwrap()),
            [
                (1, UpdateState::Delivered),
                (2, UpdateState::Dead),
                (4, UpdateState::Pending)
            ]
        );
        // ref-a's dead letter holds back its update 4; ref-b's goes.
        let now = OffsetDateTime::now_utc() + time::Duration::seconds(1);
        let lease = std::time::Duration::from_secs(30);
        let due = store
            .due_messages(OCEAN_QUEUE, now, lease, 10, &[])
            .await
            .unwrap();
        let due: Vec<u64> = due.iter().map(|m| m.id).collect();
        assert_eq!(due, [3]);
        // A new update takes an id after the moved ones.
        let new = store
            .enqueue_update(
                update("ref-d", UpdateState::Pending),
                TaskState::default(),
                None,
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(new.id, 8);
        // Discarding the dead letter lets update 4 go.
        let dead = crate::store::outbox::update(&store, 2)
            .await
            .unwrap()
            .unwrap();
        assert!(
            store
                .discard_update(&dead, TaskState::default(), None)
                .await
                .unwrap()
        );
        assert!(
            !store
                .discard_update(&dead, TaskState::default(), None)
                .await
                .unwrap()
        );
        let due = store
            .due_messages(OCEAN_QUEUE, now, lease, 10, &[3, 8])
            .await
            .unwrap();
        let due: Vec<u64> = due.iter().map(|m| m.id).collect();
        assert_eq!(due, [4]);
    }
}
