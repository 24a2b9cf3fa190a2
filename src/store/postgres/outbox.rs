//! The outbox on PostgreSQL: updates accepted for Ocean, as rows of [`OCEAN_QUEUE`] in the
//! `queue` table (see `queue.rs`), written with each referral's Task state (`task_states`).
//!
//! Earlier builds kept updates in a table of their own (`updates`);
//! [`PgStore::move_updates_to_queue`] moves them into the queue, under the same ids, when a
//! replica connects.

use async_trait::async_trait;
use deadpool_postgres::GenericClient;

use super::deliveries::{to_i64, to_u64};
use super::{PgStore, db_error};
use crate::domain::ReferralRef;
use crate::store::error::StoreError;
use crate::store::outbox::{OutboxStore, TaskState, UpdateRecord, UpdateState};
use crate::store::update::OCEAN_QUEUE;

/// The stored name of a state (as serde writes it).
pub(in crate::store) fn state_name(state: UpdateState) -> &'static str {
    state.as_str()
}

/// Inserts one message under a given id (its record sealed to it).
const INSERT_WITH_ID: &str = "INSERT INTO queue
         (id, queue, referral, version, state, next_attempt_at, created_at, delivered_at, record)
     VALUES ($1, $2, $3, 0, $4, $5, $6, $7, $8)";

impl PgStore {
    /// Stores `update` and the referral's new Task state in one transaction; with `read`, only
    /// while the Task state is still that (the referral's row is locked first, so replicas
    /// accepting updates of one referral follow one another), else `None`.
    async fn enqueue(
        &self,
        update: UpdateRecord,
        task: TaskState,
        read: Option<&TaskState>,
    ) -> Result<Option<UpdateRecord>, StoreError> {
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(db_error("starting an update"))?;
        let referral = update.referral.as_str().to_owned();
        if let Some(read) = read
            && !self.task_state_is(&tx, &referral, read).await?
        {
            tx.rollback()
                .await
                .map_err(db_error("rolling back an update"))?;
            return Ok(None);
        }
        // The id first: the record is sealed to it.
        let id: i64 = tx
            .query_one("SELECT nextval(pg_get_serial_sequence('queue', 'id'))", &[])
            .await
            .map_err(db_error("numbering an update"))?
            .get(0);
        let record = UpdateRecord {
            id: to_u64(id),
            ..update
        };
        insert_message(&tx, self, &record).await?;
        write_task_state(&tx, &referral, &self.seal_task_state(&referral, &task)?).await?;
        tx.commit()
            .await
            .map_err(db_error("committing an update"))?;
        Ok(Some(record))
    }

    /// Locks the referral's row (so replicas changing its updates follow one another), then
    /// says whether its Task state is still `read`.
    async fn task_state_is(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        referral: &str,
        read: &TaskState,
    ) -> Result<bool, StoreError> {
        tx.execute(
            &tx.prepare_cached("SELECT 1 FROM referrals WHERE referral = $1 FOR UPDATE")
                .await
                .map_err(db_error("preparing a statement"))?,
            &[&referral],
        )
        .await
        .map_err(db_error("locking a referral"))?;
        let current = tx
            .query_opt(
                &tx.prepare_cached("SELECT record FROM task_states WHERE referral = $1")
                    .await
                    .map_err(db_error("preparing a statement"))?,
                &[&referral],
            )
            .await
            .map_err(db_error("reading a Task state"))?
            .map(|row| self.open_task_state(referral, row.get::<_, &[u8]>(0)))
            .transpose()?
            .unwrap_or_default();
        Ok(current == *read)
    }

    /// Marks dead letter `update` discarded with the referral's rebuilt Task state; with
    /// `read`, only while the Task state is still that; `false`, writing nothing, otherwise or
    /// when the update is no longer dead.
    async fn discard(
        &self,
        update: &UpdateRecord,
        task: TaskState,
        read: Option<&TaskState>,
    ) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(db_error("starting a discard"))?;
        let referral = update.referral.as_str();
        if let Some(read) = read
            && !self.task_state_is(&tx, referral, read).await?
        {
            tx.rollback()
                .await
                .map_err(db_error("rolling back a discard"))?;
            return Ok(false);
        }
        let discarded = UpdateRecord {
            state: UpdateState::Discarded,
            ..update.clone()
        }
        .into_message();
        let changed = tx
            .execute(
                "UPDATE queue SET state = 'discarded', record = $2
                 WHERE id = $1 AND queue = $3 AND state = 'dead'",
                &[
                    &to_i64(update.id),
                    &self.seal_message(&discarded)?,
                    &OCEAN_QUEUE,
                ],
            )
            .await
            .map_err(db_error("discarding an update"))?;
        if changed == 0 {
            tx.rollback()
                .await
                .map_err(db_error("rolling back a discard"))?;
            return Ok(false);
        }
        write_task_state(&tx, referral, &self.seal_task_state(referral, &task)?).await?;
        tx.commit()
            .await
            .map_err(db_error("committing a discard"))?;
        Ok(true)
    }

    /// Moves the updates an earlier build kept in `updates` into the queue, under their ids
    /// (unless a queued message has one), in one transaction that replicas starting together
    /// take in turn.
    pub(super) async fn move_updates_to_queue(&self) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(db_error("moving the outbox"))?;
        tx.batch_execute("LOCK TABLE updates IN EXCLUSIVE MODE")
            .await
            .map_err(db_error("moving the outbox"))?;
        let rows = tx
            .query("SELECT id, record FROM updates ORDER BY id", &[])
            .await
            .map_err(db_error("reading the outbox"))?;
        if rows.is_empty() {
            return tx.commit().await.map_err(db_error("moving the outbox"));
        }
        // The two id sequences both began at 1: destinations' messages (sealed to their
        // versions, not their ids) move above every id in use, in their order, so each update
        // keeps its id (the one the clinic knows) and a referral's updates keep their order.
        tx.batch_execute(
            "UPDATE queue SET id = -id WHERE queue <> 'ocean:';
             UPDATE queue SET id = -id + GREATEST(
                 (SELECT max(id) FROM updates), (SELECT coalesce(max(id), 0) FROM queue))
             WHERE id < 0;",
        )
        .await
        .map_err(db_error("moving the outbox"))?;
        for row in &rows {
            let id: i64 = row.get(0);
            let mut update = self.open_update(to_u64(id), row.get::<_, &[u8]>(1))?;
            let taken = tx
                .query_opt("SELECT 1 FROM queue WHERE id = $1", &[&id])
                .await
                .map_err(db_error("moving the outbox"))?
                .is_some();
            if taken {
                // Only when an Ocean update was queued by this build while an earlier one still
                // wrote the table (replicas upgraded while others ran): a new id, after all.
                let fresh: i64 = tx
                    .query_one("SELECT nextval(pg_get_serial_sequence('queue', 'id'))", &[])
                    .await
                    .map_err(db_error("moving the outbox"))?
                    .get(0);
                update.id = to_u64(fresh);
                tracing::warn!(
                    was = id,
                    now = fresh,
                    "an earlier build's update took a new id: its old one is in use"
                );
            }
            insert_message(&tx, self, &update).await?;
        }
        tx.batch_execute(
            "DELETE FROM updates;
             SELECT setval(pg_get_serial_sequence('queue', 'id'),
                 GREATEST((SELECT max(id) FROM queue), 1));",
        )
        .await
        .map_err(db_error("moving the outbox"))?;
        tx.commit().await.map_err(db_error("moving the outbox"))?;
        tracing::info!(
            moved = rows.len(),
            "moved the outbox's updates into the outgoing queue (ids kept)"
        );
        Ok(())
    }
}

/// Inserts `update` as a row of [`OCEAN_QUEUE`] under its id.
async fn insert_message<C: GenericClient + Sync>(
    client: &C,
    store: &PgStore,
    update: &UpdateRecord,
) -> Result<(), StoreError> {
    let message = update.clone().into_message();
    client
        .execute(
            &client
                .prepare_cached(INSERT_WITH_ID)
                .await
                .map_err(db_error("preparing a statement"))?,
            &[
                &to_i64(message.id),
                &OCEAN_QUEUE,
                &message.referral.as_str(),
                &state_name(message.state),
                &message.next_attempt_at,
                &message.created_at,
                &message.delivered_at,
                &store.seal_message(&message)?,
            ],
        )
        .await
        .map_err(db_error("adding an update"))?;
    Ok(())
}

/// Sets the Task state of `referral` (`sealed`, from [`PgStore::seal_task_state`]).
async fn write_task_state<C: GenericClient + Sync>(
    client: &C,
    referral: &str,
    sealed: &[u8],
) -> Result<(), StoreError> {
    client
        .execute(
            &client
                .prepare_cached(
                    "INSERT INTO task_states (referral, record) VALUES ($1, $2)
                     ON CONFLICT (referral) DO UPDATE SET record = excluded.record",
                )
                .await
                .map_err(db_error("preparing a statement"))?,
            &[&referral, &sealed],
        )
        .await
        .map_err(db_error("recording a Task state"))?;
    Ok(())
}

#[async_trait]
impl OutboxStore for PgStore {
    async fn enqueue_update(
        &self,
        update: UpdateRecord,
        task: TaskState,
        read: Option<&TaskState>,
    ) -> Result<Option<UpdateRecord>, StoreError> {
        self.bounded("storing an update", async {
            self.enqueue(update, task, read).await
        })
        .await
    }

    async fn discard_update(
        &self,
        update: &UpdateRecord,
        task: TaskState,
        read: Option<&TaskState>,
    ) -> Result<bool, StoreError> {
        self.bounded("discarding an update", async {
            self.discard(update, task, read).await
        })
        .await
    }

    async fn task_state(&self, referral: &ReferralRef) -> Result<TaskState, StoreError> {
        let client = self.client().await?;
        Ok(client
            .query_opt(
                &client
                    .prepare_cached("SELECT record FROM task_states WHERE referral = $1")
                    .await
                    .map_err(db_error("preparing a statement"))?,
                &[&referral.as_str()],
            )
            .await
            .map_err(db_error("reading a Task state"))?
            .map(|row| self.open_task_state(referral.as_str(), row.get::<_, &[u8]>(0)))
            .transpose()?
            .unwrap_or_default())
    }
}
