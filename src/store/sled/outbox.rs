//! The outbox: updates accepted for Ocean, their delivery state, and each referral's Task state.

use async_trait::async_trait;
use sled::Transactional;
use sled::transaction::ConflictableTransactionError;

use super::codec::{Codec, read_u64};
use super::handle::SledStore;
use super::keys::{referral_prefix, referral_seq_key};
use super::open::Open;
use super::trees::{
    REFERRAL_UPDATES_INDEXED, TASK_STATES, Trees, UPDATE_SEQ, UPDATES, abort, tx_error, unavailable,
};
use super::writer::Target;
use crate::domain::ReferralRef;
use crate::store::error::StoreError;
use crate::store::outbox::{OutboxStore, TaskState, UpdateRecord, UpdateState};

impl Trees {
    /// Indexes the updates of a store written before `referral_updates` existed (once; later
    /// updates are indexed as they are accepted).
    pub(super) fn index_referral_updates(&self, codec: &Codec) -> Result<(), StoreError> {
        if self
            .meta
            .get(REFERRAL_UPDATES_INDEXED)
            .map_err(unavailable)?
            .is_some()
        {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for item in self.updates.iter() {
            let (key, value) = item.map_err(unavailable)?;
            let update: UpdateRecord = codec.decode(UPDATES, &key, &value)?;
            batch.insert(referral_seq_key(&update.referral, update.id), &[]);
        }
        self.referral_updates
            .apply_batch(batch)
            .map_err(unavailable)?;
        self.meta
            .insert(REFERRAL_UPDATES_INDEXED, &[])
            .map_err(unavailable)?;
        Ok(())
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
        self.writer
            .write(
                move |Target {
                          trees: t, codec, ..
                      }| {
                    (
                        &t.updates,
                        &t.open_updates,
                        &t.referral_updates,
                        &t.task_states,
                        &t.meta,
                    )
                        .transaction(|(updates, open, by_referral, tasks, meta)| {
                            let id = meta
                                .get(UPDATE_SEQ)?
                                .map(|v| read_u64(&v))
                                .transpose()
                                .map_err(abort)?
                                .unwrap_or(0)
                                + 1;
                            let mut record = update.clone();
                            record.id = id;
                            meta.insert(UPDATE_SEQ, &id.to_be_bytes())?;
                            let key = id.to_be_bytes();
                            updates.insert(
                                &key,
                                codec.encode(UPDATES, &key, &record).map_err(abort)?,
                            )?;
                            open.insert(&id.to_be_bytes(), &[])?;
                            by_referral.insert(referral_seq_key(&record.referral, id), &[])?;
                            tasks.insert(referral_key.as_slice(), task.as_slice())?;
                            Ok(record)
                        })
                        .map_err(tx_error)
                },
            )
            .await
    }

    async fn save_update(&self, update: &UpdateRecord) -> Result<(), StoreError> {
        let key = update.id.to_be_bytes();
        let value = self.codec.encode(UPDATES, &key, update)?;
        let settled = matches!(
            update.state,
            UpdateState::Delivered | UpdateState::Discarded
        );
        self.writer
            .write(move |Target { trees: t, .. }| {
                (&t.updates, &t.open_updates)
                    .transaction(|(updates, open)| {
                        updates.insert(&key, value.as_slice())?;
                        if settled {
                            open.remove(&key)?;
                        } else {
                            open.insert(&key, &[])?;
                        }
                        Ok::<_, ConflictableTransactionError<StoreError>>(())
                    })
                    .map_err(tx_error)
            })
            .await
    }

    fn update(&self, id: u64) -> Result<Option<UpdateRecord>, StoreError> {
        let key = id.to_be_bytes();
        self.trees
            .updates
            .get(key)
            .map_err(unavailable)?
            .map(|v| self.codec.decode(UPDATES, &key, &v))
            .transpose()
    }

    /// Blocking: with a `state`, may read the whole outbox.
    fn updates(
        &self,
        state: Option<UpdateState>,
        after: u64,
        limit: usize,
    ) -> Result<Vec<UpdateRecord>, StoreError> {
        let mut found = Vec::new();
        for item in self
            .trees
            .updates
            .range(after.saturating_add(1).to_be_bytes()..)
        {
            let (key, value) = item.map_err(unavailable)?;
            let record: UpdateRecord = self.codec.decode(UPDATES, &key, &value)?;
            if state.is_none_or(|s| s == record.state) {
                found.push(record);
                if found.len() == limit {
                    break;
                }
            }
        }
        Ok(found)
    }

    async fn open_updates(&self) -> Result<Vec<UpdateRecord>, StoreError> {
        let mut found = Vec::new();
        for item in self.trees.open_updates.iter() {
            let (key, _) = item.map_err(unavailable)?;
            if let Some(v) = self.trees.updates.get(&key).map_err(unavailable)? {
                found.push(self.codec.decode(UPDATES, &key, &v)?);
            }
        }
        Ok(found)
    }

    async fn referral_updates(
        &self,
        referral: &ReferralRef,
    ) -> Result<Vec<UpdateRecord>, StoreError> {
        let prefix = referral_prefix(referral);
        let mut found = Vec::new();
        for item in self.trees.referral_updates.scan_prefix(&prefix) {
            let (key, _) = item.map_err(unavailable)?;
            let id = read_u64(&key[prefix.len()..])?;
            if let Some(update) = self.update(id)? {
                found.push(update);
            }
        }
        Ok(found)
    }

    async fn discard_update(
        &self,
        update: &UpdateRecord,
        task: TaskState,
    ) -> Result<(), StoreError> {
        let key = update.id.to_be_bytes();
        let value = self.codec.encode(UPDATES, &key, update)?;
        let referral = update.referral.as_str().as_bytes().to_vec();
        let task = self.codec.encode(TASK_STATES, &referral, &task)?;
        self.writer
            .write(move |Target { trees: t, .. }| {
                (&t.updates, &t.open_updates, &t.task_states)
                    .transaction(|(updates, open, tasks)| {
                        updates.insert(&key, value.as_slice())?;
                        open.remove(&key)?;
                        tasks.insert(referral.as_slice(), task.as_slice())?;
                        Ok::<_, ConflictableTransactionError<StoreError>>(())
                    })
                    .map_err(tx_error)
            })
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

#[async_trait]
impl OutboxStore for SledStore {
    async fn enqueue_update(
        &self,
        update: UpdateRecord,
        task: TaskState,
    ) -> Result<UpdateRecord, StoreError> {
        let open = self.open_db()?;
        self.checked(open.enqueue_update(update, task).await)
    }

    async fn save_update(&self, update: &UpdateRecord) -> Result<(), StoreError> {
        let open = self.open_db()?;
        self.checked(open.save_update(update).await)
    }

    async fn discard_update(
        &self,
        update: &UpdateRecord,
        task: TaskState,
    ) -> Result<(), StoreError> {
        let open = self.open_db()?;
        self.checked(open.discard_update(update, task).await)
    }

    async fn update(&self, id: u64) -> Result<Option<UpdateRecord>, StoreError> {
        let open = self.open_db()?;
        self.checked(open.update(id))
    }

    async fn updates(
        &self,
        state: Option<UpdateState>,
        after: u64,
        limit: usize,
    ) -> Result<Vec<UpdateRecord>, StoreError> {
        self.off_worker(move |open| open.updates(state, after, limit))
            .await
    }

    async fn open_updates(&self) -> Result<Vec<UpdateRecord>, StoreError> {
        let open = self.open_db()?;
        self.checked(open.open_updates().await)
    }

    async fn referral_updates(
        &self,
        referral: &ReferralRef,
    ) -> Result<Vec<UpdateRecord>, StoreError> {
        let open = self.open_db()?;
        self.checked(open.referral_updates(referral).await)
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
    use crate::store::outbox::UpdateKind;

    fn update(referral: &str) -> UpdateRecord {
        UpdateRecord::pending(
            ReferralRef::parse(referral).unwrap(),
            "main".into(),
            UpdateKind::Message,
            OutboundEvent::SendCommunicationFromProvider,
            "{}".into(),
            OffsetDateTime::now_utc(),
        )
    }

    async fn ids(store: &SledStore, referral: &str) -> Vec<u64> {
        let referral = ReferralRef::parse(referral).unwrap();
        let updates = store.referral_updates(&referral).await.unwrap();
        updates.iter().map(|u| u.id).collect()
    }

    /// A store written before the index existed gets it when opened.
    #[tokio::test]
    async fn the_updates_of_a_referral_are_indexed_even_in_an_older_store() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path()).unwrap();
            for referral in ["ref-a", "ref-b", "ref-a", "ref-a0"] {
                let task = TaskState::default();
                store.enqueue_update(update(referral), task).await.unwrap();
            }
            assert_eq!(ids(&store, "ref-a").await, [1, 3]);
            assert_eq!(ids(&store, "ref-c").await, Vec::<u64>::new());
        }
        {
            let db = super::super::dir::open_live(dir.path(), None).unwrap();
            db.drop_tree("referral_updates").unwrap();
            db.open_tree("meta")
                .unwrap()
                .remove(REFERRAL_UPDATES_INDEXED)
                .unwrap();
            db.flush().unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(ids(&store, "ref-a").await, [1, 3]);
        assert_eq!(ids(&store, "ref-b").await, [2]);
        assert_eq!(ids(&store, "ref-a0").await, [4]);
    }
}
