//! The sequencer: gives feed positions and audit links, after commit, to what deliveries and
//! audit appends committed, one run at a time across every replica.
//!
//! Why after commit: a position taken inside the writing transaction (a sequence, or `max + 1`)
//! is taken in one order and committed in another, so a reader who has seen position 11 may later
//! find 10 appear, and a consumer resuming "after 11" skips it for good. Taking one lock for the
//! whole delivery transaction would prevent that but lets only one delivery commit at a time
//! across all replicas. Instead rows are inserted without a position; a run of the sequencer
//! takes a transaction-scoped advisory lock (so runs, on any replica, follow one another), numbers
//! every committed row still without one from the end of the feed on, in insert order, and
//! commits. A run only numbers committed rows, runs commit in the order they number, so the rows
//! with a position are always a gap-free prefix of the feed: `WHERE seq > after` never skips.
//!
//! A delivery is acknowledged once its transaction commits: that is what makes it durable. It
//! then wakes this replica's background run rather than waiting for one (a run on the way to every
//! acknowledgement would cost each delivery a second transaction, all of them in one line behind
//! the lock). Readers of positions see their own writes all the same: every read that shows feed
//! positions or audit links first [settles](PgStore::settle): when committed rows are still
//! without one, it runs the sequencer before reading. Runs requested while one is under way are
//! served by the next single run. A replica killed between its commit and its run leaves rows
//! without a position: every replica's sweep (once a second by default), reads and start-up
//! number them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::Notify;

use super::{PgStore, db_error};
use crate::store::audit::{AUDIT_GENESIS, AuditEntry};
use crate::store::error::StoreError;

/// Coalesces this process's requests for a run.
#[derive(Default)]
pub(super) struct Sequencer {
    /// Runs begun by this process.
    started: AtomicU64,
    /// The number of the last run that ended; held while a run is under way.
    ended: tokio::sync::Mutex<u64>,
}

impl PgStore {
    /// Returns once a run of the sequencer that began after this call has ended: everything this
    /// task committed before calling has its feed position and audit link.
    pub(super) async fn sequence(&self) -> Result<(), StoreError> {
        let wanted = self.sequencer.started.load(Ordering::SeqCst) + 1;
        let mut ended = self.sequencer.ended.lock().await;
        if *ended >= wanted {
            return Ok(());
        }
        let run = self.sequencer.started.fetch_add(1, Ordering::SeqCst) + 1;
        let top = self.run_sequencer().await?;
        *ended = run;
        self.published(top);
        Ok(())
    }

    /// Runs the sequencer when committed rows are still without a feed position or audit link
    /// (one cheap indexed query otherwise): called before every read that shows positions or
    /// links, so a reader sees whatever committed before it asked, on any replica.
    pub(super) async fn settle(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        let pending = pending(&client).await?;
        drop(client);
        if pending && let Err(e) = self.sequence().await {
            // The numbered rows are a gap-free prefix whatever happens: serve those (a later
            // read, or the sweep, numbers the rest) rather than fail the read.
            tracing::warn!(error = %e.chain(), "PostgreSQL sequencer run failed before a read; reading what is numbered");
        }
        Ok(())
    }

    /// One run; returns the end of the feed.
    async fn run_sequencer(&self) -> Result<u64, StoreError> {
        let mut client = self.client().await?;
        // The numbering relies on each statement seeing what committed before it.
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::ReadCommitted)
            .start()
            .await
            .map_err(db_error("starting the sequencer"))?;
        if pending(&tx).await? {
            tx.execute(
                &tx.prepare_cached("SELECT pg_advisory_xact_lock($1)")
                    .await
                    .map_err(db_error("preparing a statement"))?,
                &[&self.sequencer_lock],
            )
            .await
            .map_err(db_error("locking the sequencer"))?;
            let numbered = tx
                .execute(
                    &tx.prepare_cached(
                        "WITH top AS (SELECT coalesce(max(seq), 0) AS seq FROM events),
                          pending AS (
                              SELECT id, row_number() OVER (ORDER BY id) AS n
                              FROM events WHERE seq IS NULL)
                     UPDATE events e SET seq = top.seq + pending.n
                     FROM pending, top WHERE e.id = pending.id AND e.seq IS NULL",
                    )
                    .await
                    .map_err(db_error("preparing a statement"))?,
                    &[],
                )
                .await
                .map_err(db_error("numbering the feed"))?;
            link_audit(&tx).await?;
            if numbered > 0 {
                tx.execute(
                    &tx.prepare_cached(
                        "SELECT pg_notify($1, (SELECT coalesce(max(seq), 0) FROM events)::text)",
                    )
                    .await
                    .map_err(db_error("preparing a statement"))?,
                    &[&self.channel],
                )
                .await
                .map_err(db_error("notifying the feed"))?;
            }
        }
        let top: i64 = tx
            .query_one(
                &tx.prepare_cached("SELECT coalesce(max(seq), 0) FROM events")
                    .await
                    .map_err(db_error("preparing a statement"))?,
                &[],
            )
            .await
            .map_err(db_error("reading the end of the feed"))?
            .get(0);
        tx.commit()
            .await
            .map_err(db_error("committing the sequencer"))?;
        Ok(u64::try_from(top).unwrap_or_default())
    }
}

/// Whether committed rows are still without a feed position or an audit link (two indexed
/// lookups in the partial indexes of such rows).
async fn pending<C: deadpool_postgres::GenericClient + Sync>(
    client: &C,
) -> Result<bool, StoreError> {
    Ok(client
        .query_one(
            &client
                .prepare_cached(
                    "SELECT EXISTS (SELECT 1 FROM events WHERE seq IS NULL)
                     OR EXISTS (SELECT 1 FROM audit WHERE seq IS NULL)",
                )
                .await
                .map_err(db_error("preparing a statement"))?,
            &[],
        )
        .await
        .map_err(db_error("looking for unsequenced rows"))?
        .get(0))
}

/// Links the audit entries committed without a place in the chain, in insert order, to its head.
async fn link_audit(tx: &deadpool_postgres::Transaction<'_>) -> Result<(), StoreError> {
    let head = tx
        .query_opt(
            &tx.prepare_cached(
                "SELECT seq, hash FROM audit WHERE seq IS NOT NULL ORDER BY seq DESC LIMIT 1",
            )
            .await
            .map_err(db_error("preparing a statement"))?,
            &[],
        )
        .await
        .map_err(db_error("reading the audit head"))?;
    let (mut seq, mut prev) = match head {
        Some(row) => (row.get::<_, i64>(0), row.get::<_, String>(1)),
        None => (0, AUDIT_GENESIS.to_owned()),
    };
    let pending = tx
        .query(
            &tx.prepare_cached(
                "SELECT id, at, action, actor, details FROM audit WHERE seq IS NULL ORDER BY id",
            )
            .await
            .map_err(db_error("preparing a statement"))?,
            &[],
        )
        .await
        .map_err(db_error("reading unlinked audit entries"))?;
    let (mut ids, mut seqs, mut prevs, mut hashes) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for row in pending {
        seq += 1;
        let mut entry = AuditEntry {
            seq: u64::try_from(seq).unwrap_or_default(),
            at: row.get::<_, OffsetDateTime>(1),
            action: row.get(2),
            actor: row.get(3),
            details: row.get(4),
            prev: prev.clone(),
            hash: String::new(),
        };
        entry.hash = entry.expected_hash();
        prev = entry.hash.clone();
        ids.push(row.get::<_, i64>(0));
        seqs.push(seq);
        prevs.push(entry.prev);
        hashes.push(entry.hash);
    }
    if !ids.is_empty() {
        // One statement for the whole run.
        tx.execute(
            &tx.prepare_cached(
                "UPDATE audit a SET seq = u.seq, prev = u.prev, hash = u.hash
                 FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[]) AS u(id, seq, prev, hash)
                 WHERE a.id = u.id",
            )
            .await
            .map_err(db_error("preparing a statement"))?,
            &[&ids, &seqs, &prevs, &hashes],
        )
        .await
        .map_err(db_error("linking audit entries"))?;
    }
    Ok(())
}

/// The replica's background run: whenever a delivery or audit entry of this replica commits
/// (`wake`), and every `interval` for rows another replica left without a position (the end of
/// the feed is read again too, in case a notification was missed).
pub(super) fn spawn_sweep(
    store: Weak<PgStore>,
    wake: Arc<Notify>,
    interval: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = wake.notified() => {}
            }
            let Some(store) = store.upgrade() else { return };
            if let Err(e) = store.sequence().await {
                tracing::warn!(error = %e.chain(), "PostgreSQL sequencer sweep failed; retrying");
            }
            drop(store);
            // Under load, one run per pause numbers everything committed meanwhile: fewer,
            // larger runs (readers that need their rows numbered at once settle themselves).
            tokio::time::sleep(BACKGROUND_PAUSE).await;
        }
    })
}

/// The least time between two background runs of one replica.
const BACKGROUND_PAUSE: Duration = Duration::from_millis(10);
