//! The outbox worker: sends accepted updates to Ocean in the order they were accepted per
//! referral, retrying with exponential backoff and jitter (honouring `Retry-After`) until they
//! land, the retry horizon passes, or Ocean refuses them (dead letter).
//!
//! Ordering: an update that is waiting for its next attempt, or dead, holds back every later
//! update of the same referral. A dead letter holds them back until it is replayed or
//! discarded.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::{Notify, watch};

use super::client::OceanClient;
use crate::config::OutboxConfig;
use crate::domain::ReferralRef;
use crate::outgoing::SendError;
use crate::outgoing::{RetryPolicy, duration};
use crate::store::{Store, UpdateRecord, UpdateState};
use crate::telemetry::Metrics;

/// Longest sleep between passes when nothing is due (new updates wake the worker at once).
const IDLE: Duration = Duration::from_secs(30);

/// How often a replica that does not send the outbox checks whether the one that does stopped.
const STANDBY: Duration = Duration::from_secs(5);

/// Slack on top of the longest legitimate silence (an idle sleep plus one send) before a
/// worker that shows no progress is called stalled.
const STALL_SLACK: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub struct Worker {
    pub store: Arc<dyn Store>,
    pub sites: HashMap<String, Arc<OceanClient>>,
    pub config: OutboxConfig,
    /// Woken when an update is accepted or replayed.
    pub wake: Arc<Notify>,
    pub metrics: Metrics,
    pub health: Arc<WorkerHealth>,
}

/// Whether the worker is doing its job, for `/readyz`. The worker beats at the top of every
/// loop and before every send; a panic marks it unhealthy until a pass completes again.
#[derive(Debug)]
pub struct WorkerHealth {
    origin: std::time::Instant,
    /// Milliseconds from `origin` to the last sign of progress.
    beat_ms: AtomicU64,
    panicked: AtomicBool,
    stall_after: Duration,
}

impl WorkerHealth {
    /// `send_bound`: the longest one send to Ocean can take.
    pub fn new(send_bound: Duration) -> Self {
        Self::stalled_after(IDLE + send_bound + STALL_SLACK)
    }

    fn stalled_after(stall_after: Duration) -> Self {
        Self {
            origin: std::time::Instant::now(),
            beat_ms: AtomicU64::new(0),
            panicked: AtomicBool::new(false),
            stall_after,
        }
    }

    fn beat(&self) {
        let now = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.beat_ms.store(now, Ordering::Relaxed);
    }

    fn pass_completed(&self) {
        self.panicked.store(false, Ordering::Relaxed);
        self.beat();
    }

    /// Called by the supervisor when the worker panicked.
    pub fn mark_panicked(&self) {
        self.panicked.store(true, Ordering::Relaxed);
    }

    /// Time since the last sign of progress.
    pub fn since_beat(&self) -> Duration {
        let beat = Duration::from_millis(self.beat_ms.load(Ordering::Relaxed));
        self.origin.elapsed().saturating_sub(beat)
    }

    /// `None` when the worker is alive; otherwise what is wrong.
    pub fn problem(&self) -> Option<&'static str> {
        if self.panicked.load(Ordering::Relaxed) {
            Some("the outbox worker panicked and has not completed a pass since")
        } else if self.since_beat() > self.stall_after {
            Some("the outbox worker has shown no progress for too long")
        } else {
            None
        }
    }
}

impl Worker {
    /// Runs until `stop` turns true; stops between attempts, never in the middle of one.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        loop {
            if *stop.borrow() {
                return;
            }
            // Progress is a completed pass or a send; a pass that keeps failing shows none.
            let sleep = match self.pass(&stop).await {
                Ok(next) => {
                    self.health.pass_completed();
                    next
                }
                Err(e) => {
                    tracing::error!(error = %e, "outbox pass failed");
                    Duration::from_secs(5)
                }
            };
            tokio::select! {
                () = self.wake.notified() => {}
                () = self.store.wait_for_outbox_change() => {}
                () = tokio::time::sleep(sleep) => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// Sends everything due; returns how long until the next update is due.
    async fn pass(
        &self,
        stop: &watch::Receiver<bool>,
    ) -> Result<Duration, crate::store::StoreError> {
        if !self.store.may_send_outbox().await? {
            // Another replica sends; look again in a while in case it stops.
            return Ok(STANDBY);
        }
        let mut held: HashSet<ReferralRef> = HashSet::new();
        // A site that failed with a retryable error is not tried again in this pass, so one
        // unreachable site does not hold up the others for a timeout per update.
        let mut failing: HashSet<String> = HashSet::new();
        let mut next = IDLE;
        for mut update in self.store.open_updates().await? {
            if *stop.borrow() {
                break;
            }
            if held.contains(&update.referral) {
                continue;
            }
            let now = OffsetDateTime::now_utc();
            if update.state == UpdateState::Dead {
                held.insert(update.referral.clone());
                continue;
            }
            if update.next_attempt_at > now {
                next = next.min(duration(update.next_attempt_at - now));
                held.insert(update.referral.clone());
                continue;
            }
            if failing.contains(&update.site) {
                held.insert(update.referral.clone());
                next = next.min(Duration::from_secs(self.config.initial_backoff_secs));
                continue;
            }
            self.health.beat();
            let result = match self.sites.get(&update.site) {
                Some(site) => site.send(&update.bundle).await,
                None => Err(SendError::Rejected(format!(
                    "site '{}' is no longer configured",
                    update.site
                ))),
            };
            if matches!(result, Err(SendError::Retry { .. })) {
                failing.insert(update.site.clone());
            }
            self.record(&mut update, result);
            let outcome = match update.state {
                UpdateState::Delivered => "delivered",
                UpdateState::Dead => "dead",
                UpdateState::Pending | UpdateState::Discarded => "retry",
            };
            self.metrics.outbox_send(&update.site, outcome);
            self.store.save_update(&update).await?;
            let action = match update.state {
                UpdateState::Delivered => Some("UPDATE_SENT"),
                UpdateState::Dead => Some("UPDATE_DEAD_LETTERED"),
                _ => None,
            };
            if let Some(action) = action {
                let details = serde_json::json!({"update": update.id, "referral": update.referral.as_str(), "event": update.event, "attempts": update.attempts});
                self.store
                    .audit(action, &format!("site:{}", update.site), details)
                    .await?;
            }
            if update.state != UpdateState::Delivered {
                held.insert(update.referral.clone());
                if update.state == UpdateState::Pending {
                    next = next.min(duration(update.next_attempt_at - OffsetDateTime::now_utc()));
                }
            }
        }
        Ok(next)
    }

    fn record(&self, update: &mut UpdateRecord, result: Result<(), SendError>) {
        update.attempts += 1;
        let now = OffsetDateTime::now_utc();
        match result {
            Ok(()) => {
                update.state = UpdateState::Delivered;
                update.delivered_at = Some(now);
                update.last_error = None;
                tracing::info!(update = update.id, event = %update.event, attempts = update.attempts, "update delivered to Ocean");
            }
            // Ocean's diagnostics may echo message content, so they go to `last_error` (read
            // through the API), not to the logs.
            Err(SendError::Rejected(reason)) => {
                tracing::warn!(update = update.id, "Ocean refused the update; dead letter");
                update.state = UpdateState::Dead;
                update.last_error = Some(reason);
            }
            Err(SendError::Retry { reason, after }) => {
                // An update whose next attempt would fall past the horizon is a dead letter now.
                let policy = RetryPolicy::from_config(&self.config);
                match policy.next_attempt(update.attempts, update.created_at, now, after) {
                    Some((next, wait)) => {
                        tracing::info!(
                            update = update.id,
                            retry_in_secs = wait.as_secs_f32(),
                            "update not delivered; will retry"
                        );
                        update.last_error = Some(reason);
                        update.next_attempt_at = next;
                    }
                    None => {
                        tracing::warn!(update = update.id, "retry horizon reached; dead letter");
                        update.state = UpdateState::Dead;
                        update.last_error = Some(policy.gave_up(update.attempts, &reason, after));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worker_is_alive_while_it_makes_progress_and_not_after_a_panic() {
        let health = WorkerHealth::stalled_after(Duration::from_millis(200));
        assert_eq!(health.problem(), None);
        std::thread::sleep(Duration::from_millis(300));
        assert!(health.problem().unwrap().contains("no progress"));
        health.beat();
        assert_eq!(health.problem(), None);
        health.mark_panicked();
        assert!(health.problem().unwrap().contains("panicked"));
        // Restarted, it is alive again only once a pass completes.
        health.beat();
        assert!(health.problem().unwrap().contains("panicked"));
        health.pass_completed();
        assert_eq!(health.problem(), None);
    }
}
