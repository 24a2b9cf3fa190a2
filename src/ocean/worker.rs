//! The outbox to Ocean as the [`Channel`] of its queue ([`OCEAN_QUEUE`]): the same worker as
//! every destination's ([`crate::outgoing::worker`]) sends accepted updates in the order they
//! were accepted per referral, retrying with exponential backoff and jitter (honouring
//! `Retry-After`) until they land, the retry horizon passes, or Ocean refuses them (dead
//! letter). An update waiting for its next attempt, or dead, holds back the later updates of
//! its referral only.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::Notify;

use super::sites::Sites;
use crate::config::OutboxConfig;
use crate::outgoing::worker::{Channel, Outcome};
use crate::outgoing::{RetryPolicy, SendError};
use crate::signals::Target;
use crate::store::{OCEAN_QUEUE, QueuedMessage, Store, UpdateRecord};
use crate::telemetry::Metrics;

/// Longest the queue worker sleeps when nothing is due (new updates wake it at once).
const IDLE: Duration = Duration::from_secs(30);

/// Updates sent at once (each for a different referral), so one slow site does not hold up
/// the others.
const OCEAN_CONCURRENCY: usize = 4;

/// Slack on top of the longest legitimate silence (an idle sleep plus one send) before a
/// worker that shows no progress is called stalled.
const STALL_SLACK: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub struct Worker {
    pub store: Arc<dyn Store>,
    pub sites: Arc<Sites>,
    pub config: OutboxConfig,
    /// Woken when an update is accepted or replayed.
    pub wake: Arc<Notify>,
    pub metrics: Metrics,
    pub health: Arc<WorkerHealth>,
    pub signals: Arc<crate::signals::Signals>,
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

#[async_trait::async_trait]
impl Channel for Worker {
    fn queue(&self) -> &str {
        OCEAN_QUEUE
    }

    fn concurrency(&self) -> usize {
        OCEAN_CONCURRENCY
    }

    fn rate_per_sec(&self) -> u32 {
        0
    }

    fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.config.request_timeout_secs)
    }

    fn wake(&self) -> &Notify {
        &self.wake
    }

    /// Posts the update's Bundle, built when it was accepted, to its site.
    async fn attempt(&self, _: &dyn Store, message: &QueuedMessage, _: OffsetDateTime) -> Outcome {
        let Some(update) = &message.update else {
            return Outcome::Sent(Err(SendError::Rejected(
                "the queued message holds no update".into(),
            )));
        };
        Outcome::Sent(match self.sites.named(&update.site) {
            Some(site) => site.client().send(&update.bundle).await,
            None => Err(SendError::Rejected(format!(
                "site '{}' is no longer configured",
                update.site
            ))),
        })
    }

    /// Counts the outcome; a delivered update and a dead letter are logged and audited
    /// (Ocean's diagnostics stay in `last_error`, read through the API: they may echo message
    /// content).
    async fn recorded(&self, store: &dyn Store, message: &QueuedMessage, outcome: &'static str) {
        let Some(update) = UpdateRecord::from_message(message.clone()) else {
            return;
        };
        self.metrics.outbox_send(&update.site, outcome);
        self.signals.sent(
            Target::Site(update.site.clone()),
            outcome,
            update.last_error.as_deref(),
        );
        let action = match outcome {
            "delivered" => {
                tracing::info!(update = update.id, event = %update.event, attempts = update.attempts, "update delivered to Ocean");
                "UPDATE_SENT"
            }
            "dead" => {
                tracing::warn!(
                    update = update.id,
                    "Ocean refused the update, or its retry horizon passed; dead letter"
                );
                "UPDATE_DEAD_LETTERED"
            }
            _ => return,
        };
        let details = serde_json::json!({"update": update.id, "referral": update.referral.as_str(), "event": update.event, "attempts": update.attempts});
        if let Err(e) = store
            .audit(action, &format!("site:{}", update.site), details)
            .await
        {
            tracing::error!(update = update.id, error = %e.chain(), "cannot audit an update's delivery");
        }
    }

    fn progress(&self) {
        self.health.pass_completed();
    }
}

impl Worker {
    /// The queue worker that sends this outbox.
    pub fn sender(self) -> crate::outgoing::worker::Worker {
        crate::outgoing::worker::Worker {
            store: Arc::clone(&self.store),
            policy: RetryPolicy::from_config(&self.config),
            channel: Arc::new(self),
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
