//! Outgoing queues on PostgreSQL (table `queue`, migration 4). A referral's messages in a queue
//! go out in id order: a message is due only when no older message of its referral in that
//! queue is still open (pending or dead). Replicas share the work: a claim moves a due
//! message's `next_attempt_at` on by a lease, under `FOR UPDATE SKIP LOCKED`, and while it is
//! leased the referral's later messages wait behind it.

use async_trait::async_trait;
use time::OffsetDateTime;

use super::deliveries::{to_i64, to_u64};
use super::{PgStore, db_error};
use crate::domain::ReferralRef;
use crate::store::alert::ALERTS_QUEUE;
use crate::store::error::StoreError;
use crate::store::queue::{MessageState, QueueStats, QueueStore, QueuedMessage};
use crate::store::record::QUEUE;
use crate::store::record::version_key;
use crate::store::update::OCEAN_QUEUE;

const CLAIM: &str = "UPDATE queue SET next_attempt_at = $3
     WHERE id IN (
         SELECT q.id FROM queue q
         WHERE q.queue = $1 AND q.state = 'pending' AND q.next_attempt_at <= $2
           AND NOT EXISTS (SELECT 1 FROM queue_paused p WHERE p.queue = $1)
           AND NOT EXISTS (SELECT 1 FROM queue e
               WHERE e.queue = q.queue AND e.referral = q.referral AND e.id < q.id
                 AND e.state IN ('pending', 'dead'))
         ORDER BY q.next_attempt_at LIMIT $4 FOR UPDATE SKIP LOCKED)
     RETURNING id, queue, referral, version, record";

const NEXT_DUE: &str = "SELECT min(q.next_attempt_at) FROM queue q
     WHERE q.queue = $1 AND q.state = 'pending'
       AND NOT EXISTS (SELECT 1 FROM queue_paused p WHERE p.queue = $1)
       AND NOT EXISTS (SELECT 1 FROM queue e
           WHERE e.queue = q.queue AND e.referral = q.referral AND e.id < q.id
             AND e.state IN ('pending', 'dead'))";

const SAVE: &str =
    "UPDATE queue SET state = $2, next_attempt_at = $3, delivered_at = $4, record = $5
     WHERE id = $1 AND state = $6";

/// Inserts messages given as parallel arrays (queue names, sealed records), for one version.
pub(super) const INSERT: &str = "INSERT INTO queue
         (queue, referral, version, state, next_attempt_at, created_at, record)
     SELECT m.queue, $1::text, $2::bigint, 'pending', $3::timestamptz, $3::timestamptz, m.record
     FROM unnest($4::text[], $5::bytea[]) AS m(queue, record)";

/// What a message's record is sealed to: for a destination's, the version's key and the
/// queue's name (the row's id is not known before it is inserted, with the delivery); for an
/// Ocean update, its id, as the embedded store seals it (so `migrate` copies it sealed).
fn seal_context(queue: &str, referral: &str, version: u64, id: u64) -> Vec<u8> {
    if queue == OCEAN_QUEUE {
        return id.to_be_bytes().to_vec();
    }
    let mut key = version_key(referral, version);
    key.push(0);
    key.extend_from_slice(queue.as_bytes());
    key
}

impl PgStore {
    /// A message's record as stored (sealed when a key is configured).
    pub(super) fn seal_message(&self, message: &QueuedMessage) -> Result<Vec<u8>, StoreError> {
        let key = seal_context(
            &message.queue,
            message.referral.as_str(),
            message.version,
            message.id,
        );
        self.codec.encode(QUEUE, &key, message)
    }

    pub(super) fn open_message(
        &self,
        row: &tokio_postgres::Row,
    ) -> Result<QueuedMessage, StoreError> {
        let id: i64 = row.get("id");
        let queue: &str = row.get("queue");
        let referral: &str = row.get("referral");
        let version = to_u64(row.get("version"));
        let key = seal_context(queue, referral, version, to_u64(id));
        let mut message: QueuedMessage =
            self.codec
                .decode(QUEUE, &key, row.get::<_, &[u8]>("record"))?;
        message.id = to_u64(id);
        Ok(message)
    }

    async fn query_messages(
        &self,
        what: &'static str,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<QueuedMessage>, StoreError> {
        self.bounded(what, async {
            let client = self.client().await?;
            let statement = client
                .prepare_cached(sql)
                .await
                .map_err(db_error("preparing a statement"))?;
            client
                .query(&statement, params)
                .await
                .map_err(db_error(what))?
                .iter()
                .map(|row| self.open_message(row))
                .collect()
        })
        .await
    }
}

#[async_trait]
impl QueueStore for PgStore {
    async fn due_messages(
        &self,
        queue: &str,
        now: OffsetDateTime,
        lease: std::time::Duration,
        limit: usize,
        _busy: &[u64],
    ) -> Result<Vec<QueuedMessage>, StoreError> {
        // What this replica sends is leased, so not due: nothing to leave out.
        let until = now + lease;
        let mut due = self
            .query_messages(
                "claiming due messages",
                CLAIM,
                &[&queue, &now, &until, &to_i64(limit as u64)],
            )
            .await?;
        due.sort_by_key(|m| (m.next_attempt_at, m.id));
        Ok(due)
    }

    async fn next_due(
        &self,
        queue: &str,
        _busy: &[u64],
    ) -> Result<Option<OffsetDateTime>, StoreError> {
        // What this replica sends is leased until after the send: not among the earliest.
        self.bounded("reading a queue", async {
            let client = self.client().await?;
            let statement = client
                .prepare_cached(NEXT_DUE)
                .await
                .map_err(db_error("preparing a statement"))?;
            Ok(client
                .query_one(&statement, &[&queue])
                .await
                .map_err(db_error("reading a queue"))?
                .get(0))
        })
        .await
    }

    async fn save_message(
        &self,
        message: &QueuedMessage,
        from: MessageState,
    ) -> Result<bool, StoreError> {
        let sealed = self.seal_message(message)?;
        self.bounded("saving a queued message", async {
            let client = self.client().await?;
            let statement = client
                .prepare_cached(SAVE)
                .await
                .map_err(db_error("preparing a statement"))?;
            let (state, from) = (message.state.as_str(), from.as_str());
            let changed = client
                .execute(
                    &statement,
                    &[
                        &to_i64(message.id),
                        &state,
                        &message.next_attempt_at,
                        &message.delivered_at,
                        &sealed,
                        &from,
                    ],
                )
                .await
                .map_err(db_error("saving a queued message"))?;
            Ok(changed == 1)
        })
        .await
    }

    async fn message(&self, id: u64) -> Result<Option<QueuedMessage>, StoreError> {
        Ok(self
            .query_messages(
                "reading a queued message",
                "SELECT id, queue, referral, version, record FROM queue WHERE id = $1",
                &[&to_i64(id)],
            )
            .await?
            .pop())
    }

    async fn queue_messages(
        &self,
        queue: &str,
        state: Option<MessageState>,
        after: u64,
        limit: usize,
    ) -> Result<Vec<QueuedMessage>, StoreError> {
        let state = state.map(MessageState::as_str);
        self.query_messages(
            "listing queued messages",
            "SELECT id, queue, referral, version, record FROM queue
             WHERE queue = $1 AND ($2::text IS NULL OR state = $2) AND id > $3
             ORDER BY id LIMIT $4",
            &[&queue, &state, &to_i64(after), &to_i64(limit as u64)],
        )
        .await
    }

    async fn referral_messages(
        &self,
        referral: &ReferralRef,
    ) -> Result<Vec<QueuedMessage>, StoreError> {
        self.query_messages(
            "reading a referral's queued messages",
            "SELECT id, queue, referral, version, record FROM queue WHERE referral = $1 ORDER BY id",
            &[&referral.as_str()],
        )
        .await
    }

    async fn queue_stats(&self, queue: &str) -> Result<QueueStats, StoreError> {
        let mut stats = self
            .bounded("reading a queue", async {
                let client = self.client().await?;
                let rows = client
                    .query(
                        "SELECT state, count(*), min(created_at), max(delivered_at)
                         FROM queue WHERE queue = $1 GROUP BY state",
                        &[&queue],
                    )
                    .await
                    .map_err(db_error("reading a queue"))?;
                let mut stats = QueueStats::default();
                for row in rows {
                    let count = to_u64(row.get(1));
                    match row.get::<_, &str>(0) {
                        "pending" => {
                            stats.pending = count;
                            stats.oldest_pending_at = row.get(2);
                        }
                        "dead" => stats.dead = count,
                        "delivered" => {
                            stats.delivered = count;
                            stats.last_delivered_at = row.get(3);
                        }
                        "discarded" => stats.discarded = count,
                        _ => {}
                    }
                }
                stats.paused = client
                    .query_opt("SELECT 1 FROM queue_paused WHERE queue = $1", &[&queue])
                    .await
                    .map_err(db_error("reading a queue"))?
                    .is_some();
                Ok(stats)
            })
            .await?;
        let open = self
            .query_messages(
                "reading a queue",
                "(SELECT id, queue, referral, version, record FROM queue
                  WHERE queue = $1 AND state = 'dead' ORDER BY id LIMIT 1)
                 UNION ALL
                 (SELECT id, queue, referral, version, record FROM queue
                  WHERE queue = $1 AND state = 'pending' ORDER BY id LIMIT 1)",
                &[&queue],
            )
            .await?;
        stats.last_error = open.into_iter().find_map(|m| m.last_error);
        Ok(stats)
    }

    async fn set_queue_paused(&self, queue: &str, paused: bool) -> Result<(), StoreError> {
        self.bounded("pausing a queue", async {
            let client = self.client().await?;
            let sql = if paused {
                "INSERT INTO queue_paused (queue) VALUES ($1) ON CONFLICT DO NOTHING"
            } else {
                "DELETE FROM queue_paused WHERE queue = $1"
            };
            client
                .execute(sql, &[&queue])
                .await
                .map_err(db_error("pausing a queue"))?;
            Ok(())
        })
        .await
    }

    async fn purge_messages_before(&self, cutoff: OffsetDateTime) -> Result<u64, StoreError> {
        // In batches, so no statement runs long or holds many rows locked.
        const PURGE: &str = "DELETE FROM queue WHERE id IN (
             SELECT id FROM queue
             WHERE queue <> $2 AND queue <> $3
               AND ((state = 'delivered' AND coalesce(delivered_at, created_at) < $1)
                    OR (state = 'discarded' AND created_at < $1))
             LIMIT 5000)";
        let mut purged = 0;
        loop {
            let deleted = self
                .bounded("forgetting settled messages", async {
                    let client = self.client().await?;
                    client
                        .execute(PURGE, &[&cutoff, &OCEAN_QUEUE, &ALERTS_QUEUE])
                        .await
                        .map_err(db_error("forgetting settled messages"))
                })
                .await?;
            purged += deleted;
            if deleted == 0 {
                return Ok(purged);
            }
        }
    }

    async fn enqueue_messages(&self, messages: Vec<QueuedMessage>) -> Result<(), StoreError> {
        let sealed = messages
            .iter()
            .map(|m| self.seal_message(m))
            .collect::<Result<Vec<_>, _>>()?;
        self.bounded("queuing messages", async {
            let mut client = self.client().await?;
            let tx = client
                .transaction()
                .await
                .map_err(db_error("queuing messages"))?;
            let statement = tx
                .prepare_cached(INSERT)
                .await
                .map_err(db_error("preparing a statement"))?;
            for (message, record) in messages.iter().zip(sealed) {
                tx.execute(
                    &statement,
                    &[
                        &message.referral.as_str(),
                        &to_i64(message.version),
                        &message.created_at,
                        &vec![message.queue.as_str()],
                        &vec![record],
                    ],
                )
                .await
                .map_err(db_error("queuing messages"))?;
            }
            tx.commit().await.map_err(db_error("queuing messages"))
        })
        .await
    }
}
