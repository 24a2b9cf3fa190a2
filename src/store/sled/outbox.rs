//! The outbox: updates accepted for Ocean, their delivery state, and each referral's Task state.

use sled::Transactional;
use sled::transaction::ConflictableTransactionError;

use super::codec::read_u64;
use super::{Open, TASK_STATES, UPDATE_SEQ, UPDATES, abort, tx_error, unavailable};
use crate::domain::ReferralRef;
use crate::store::{StoreError, TaskState, UpdateRecord, UpdateState};

impl Open {
    pub(super) async fn enqueue_update(
        &self,
        mut update: UpdateRecord,
        task: TaskState,
    ) -> Result<UpdateRecord, StoreError> {
        let t = &self.trees;
        let referral_key = update.referral.as_str().as_bytes().to_vec();
        let task = self.codec.encode(TASK_STATES, &referral_key, &task)?;
        let codec = &self.codec;
        let stored = (&t.updates, &t.open_updates, &t.task_states, &t.meta)
            .transaction(|(updates, open, tasks, meta)| {
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
                updates.insert(&key, codec.encode(UPDATES, &key, &record).map_err(abort)?)?;
                open.insert(&id.to_be_bytes(), &[])?;
                tasks.insert(referral_key.as_slice(), task.as_slice())?;
                Ok(record)
            })
            .map_err(tx_error)?;
        self.flusher.durable().await?;
        update.id = stored.id;
        Ok(stored)
    }

    pub(super) async fn save_update(&self, update: &UpdateRecord) -> Result<(), StoreError> {
        let t = &self.trees;
        let key = update.id.to_be_bytes();
        let value = self.codec.encode(UPDATES, &key, update)?;
        (&t.updates, &t.open_updates)
            .transaction(|(updates, open)| {
                updates.insert(&key, value.as_slice())?;
                if matches!(
                    update.state,
                    UpdateState::Delivered | UpdateState::Discarded
                ) {
                    open.remove(&key)?;
                } else {
                    open.insert(&key, &[])?;
                }
                Ok::<_, ConflictableTransactionError<StoreError>>(())
            })
            .map_err(tx_error)?;
        self.flusher.durable().await
    }

    pub(super) async fn update(&self, id: u64) -> Result<Option<UpdateRecord>, StoreError> {
        let key = id.to_be_bytes();
        self.trees
            .updates
            .get(key)
            .map_err(unavailable)?
            .map(|v| self.codec.decode(UPDATES, &key, &v))
            .transpose()
    }

    pub(super) async fn updates(
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

    pub(super) async fn open_updates(&self) -> Result<Vec<UpdateRecord>, StoreError> {
        let mut found = Vec::new();
        for item in self.trees.open_updates.iter() {
            let (key, _) = item.map_err(unavailable)?;
            if let Some(v) = self.trees.updates.get(&key).map_err(unavailable)? {
                found.push(self.codec.decode(UPDATES, &key, &v)?);
            }
        }
        Ok(found)
    }

    pub(super) async fn discard_update(
        &self,
        update: &UpdateRecord,
        task: TaskState,
    ) -> Result<(), StoreError> {
        let t = &self.trees;
        let key = update.id.to_be_bytes();
        let value = self.codec.encode(UPDATES, &key, update)?;
        let referral = update.referral.as_str().as_bytes();
        let task = self.codec.encode(TASK_STATES, referral, &task)?;
        (&t.updates, &t.open_updates, &t.task_states)
            .transaction(|(updates, open, tasks)| {
                updates.insert(&key, value.as_slice())?;
                open.remove(&key)?;
                tasks.insert(referral, task.as_slice())?;
                Ok::<_, ConflictableTransactionError<StoreError>>(())
            })
            .map_err(tx_error)?;
        self.flusher.durable().await
    }

    pub(super) async fn task_state(&self, referral: &ReferralRef) -> Result<TaskState, StoreError> {
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
