//! The outbox on PostgreSQL: updates accepted for Ocean and each referral's Task state.

use async_trait::async_trait;

use super::deliveries::{to_i64, to_u64};
use deadpool_postgres::GenericClient;

use super::{PgStore, db_error};
use crate::domain::ReferralRef;
use crate::store::error::StoreError;
use crate::store::outbox::{OutboxStore, TaskState, UpdateRecord, UpdateState};

/// The stored name of a state (as serde writes it).
pub(super) fn state_name(state: UpdateState) -> &'static str {
    match state {
        UpdateState::Pending => "pending",
        UpdateState::Delivered => "delivered",
        UpdateState::Dead => "dead",
        UpdateState::Discarded => "discarded",
    }
}

const COLUMNS: &str = "SELECT id, record FROM updates";

/// The outbox lease: a connection of its own holding the schema's outbox lock (session-level). PostgreSQL releases the
/// lock when the connection closes: when this is dropped, or when the process dies (kill -9
/// closes its sockets), so another replica takes over at its next look.
pub(super) struct Lease {
    client: tokio_postgres::Client,
    connection: tokio::task::JoinHandle<()>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

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
        let id: i64 = tx
            .query_one(
&tx.prepare_cached("INSERT INTO updates (referral, state, record) VALUES ($1, $2, ''::bytea) RETURNING id").await.map_err(db_error("preparing a statement"))?,
                &[&referral, &state_name(update.state)],
            )
            .await
            .map_err(db_error("adding an update"))?
            .get(0);
        let mut record = update;
        record.id = to_u64(id);
        tx.execute(
            &tx.prepare_cached("UPDATE updates SET record = $2 WHERE id = $1")
                .await
                .map_err(db_error("preparing a statement"))?,
            &[&id, &self.seal_update(&record)?],
        )
        .await
        .map_err(db_error("adding an update"))?;
        write_task_state(&tx, &referral, &self.seal_task_state(&referral, &task)?).await?;
        // The replica sending the outbox may be another one: wake it.
        tx.execute(
            &tx.prepare_cached("SELECT pg_notify($1, '')")
                .await
                .map_err(db_error("preparing a statement"))?,
            &[&self.outbox_channel],
        )
        .await
        .map_err(db_error("notifying the outbox"))?;
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

    /// Marks `update` discarded with the referral's rebuilt Task state; with `read`, only while
    /// the Task state is still that, else `false`.
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
        write_update(
            &tx,
            update,
            &self.seal_update(update)?,
            "discarding an update",
        )
        .await?;
        write_task_state(&tx, referral, &self.seal_task_state(referral, &task)?).await?;
        tx.commit()
            .await
            .map_err(db_error("committing a discard"))?;
        Ok(true)
    }

    async fn updates_where(
        &self,
        condition: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<UpdateRecord>, StoreError> {
        let client = self.client().await?;
        client
            .query(&format!("{COLUMNS} {condition}"), params)
            .await
            .map_err(db_error("reading the outbox"))?
            .iter()
            .map(|row| self.open_update(to_u64(row.get(0)), row.get::<_, &[u8]>(1)))
            .collect()
    }
}

/// Writes an update's state and record (`sealed`, from [`PgStore::seal_update`]).
async fn write_update<C: GenericClient + Sync>(
    client: &C,
    update: &UpdateRecord,
    sealed: &[u8],
    doing: &'static str,
) -> Result<(), StoreError> {
    client
        .execute(
            &client
                .prepare_cached("UPDATE updates SET state = $2, record = $3 WHERE id = $1")
                .await
                .map_err(db_error("preparing a statement"))?,
            &[&to_i64(update.id), &state_name(update.state), &sealed],
        )
        .await
        .map_err(db_error(doing))?;
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
    ) -> Result<UpdateRecord, StoreError> {
        self.bounded("storing an update", async {
            self.enqueue(update, task, None)
                .await?
                .ok_or_else(|| StoreError::unavailable("an update was not stored"))
        })
        .await
    }

    async fn enqueue_update_if(
        &self,
        update: UpdateRecord,
        task: TaskState,
        read: &TaskState,
    ) -> Result<Option<UpdateRecord>, StoreError> {
        self.bounded("storing an update", async {
            self.enqueue(update, task, Some(read)).await
        })
        .await
    }

    async fn save_update(&self, update: &UpdateRecord) -> Result<(), StoreError> {
        let sealed = self.seal_update(update)?;
        write_update(&self.client().await?, update, &sealed, "saving an update").await
    }

    async fn discard_update(
        &self,
        update: &UpdateRecord,
        task: TaskState,
    ) -> Result<(), StoreError> {
        self.discard(update, task, None).await.map(|_| ())
    }

    async fn discard_update_if(
        &self,
        update: &UpdateRecord,
        task: TaskState,
        read: &TaskState,
    ) -> Result<bool, StoreError> {
        self.discard(update, task, Some(read)).await
    }

    async fn update(&self, id: u64) -> Result<Option<UpdateRecord>, StoreError> {
        Ok(self
            .updates_where("WHERE id = $1", &[&to_i64(id)])
            .await?
            .pop())
    }

    async fn updates(
        &self,
        state: Option<UpdateState>,
        after: u64,
        limit: usize,
    ) -> Result<Vec<UpdateRecord>, StoreError> {
        let (after, limit) = (to_i64(after), to_i64(limit as u64));
        match state {
            Some(state) => {
                self.updates_where(
                    "WHERE id > $1 AND state = $2 ORDER BY id LIMIT $3",
                    &[&after, &state_name(state), &limit],
                )
                .await
            }
            None => {
                self.updates_where("WHERE id > $1 ORDER BY id LIMIT $2", &[&after, &limit])
                    .await
            }
        }
    }

    async fn open_updates(&self) -> Result<Vec<UpdateRecord>, StoreError> {
        self.updates_where("WHERE state IN ('pending', 'dead') ORDER BY id", &[])
            .await
    }

    async fn referral_updates(
        &self,
        referral: &ReferralRef,
    ) -> Result<Vec<UpdateRecord>, StoreError> {
        self.bounded("reading updates", async {
            self.updates_where("WHERE referral = $1 ORDER BY id", &[&referral.as_str()])
                .await
        })
        .await
    }

    async fn may_send_outbox(&self) -> Result<bool, StoreError> {
        let mut lease = self.outbox_lease.lock().await;
        if let Some(held) = lease.as_ref() {
            // Asked of the server each pass, not of the local socket: a connection dropped by
            // the network (and its lock freed by the server) is found here, not after sending.
            let alive = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                held.client.simple_query("SELECT 1"),
            )
            .await
            .is_ok_and(|answer| answer.is_ok());
            if alive {
                return Ok(true);
            }
            tracing::warn!("lost the outbox lease's connection; trying to take the lease again");
        }
        *lease = None;
        let (client, connection) = self
            .config
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(db_error("connecting for the outbox lease"))?;
        let connection = tokio::spawn(async move {
            let _ = connection.await;
        });
        let candidate = Lease { client, connection };
        let granted: bool = candidate
            .client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&self.outbox_lock])
            .await
            .map_err(db_error("taking the outbox lease"))?
            .get(0);
        if granted {
            tracing::info!("this replica sends the outbox");
            *lease = Some(candidate);
        }
        Ok(granted)
    }

    async fn wait_for_outbox_change(&self) {
        self.outbox_changed.notified().await;
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
