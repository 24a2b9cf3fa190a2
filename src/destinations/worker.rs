//! A destination as the [`Channel`] its queue's worker ([`crate::outgoing::worker`]) sends
//! through: with `documents = "wait"` a version waits for its documents, then goes by the
//! destination's sender; each outcome is counted, and a dead letter audited.

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::Notify;

use super::Destination;
use crate::config::DocumentsMode;
use crate::outgoing::duration;
use crate::outgoing::worker::{Channel, Outcome};
use crate::signals::{Signals, Target};
use crate::store::{DocumentState, QueuedMessage, Store};
use crate::telemetry::Metrics;

/// How often a version waiting for its documents looks at them again.
const DOCUMENTS_POLL: Duration = Duration::from_secs(2);

/// A destination and the metrics its sends are counted in.
pub struct DestinationChannel {
    pub destination: Arc<Destination>,
    pub metrics: Metrics,
    pub signals: Arc<Signals>,
}

impl DestinationChannel {
    /// With `documents = "wait"`: when to look again, while the version's documents are still
    /// being fetched and its wait has not run out.
    async fn documents_pending(
        &self,
        store: &dyn Store,
        message: &QueuedMessage,
        now: OffsetDateTime,
    ) -> Option<OffsetDateTime> {
        let config = &self.destination.config;
        if config.documents != DocumentsMode::Wait {
            return None;
        }
        let wait =
            time::Duration::seconds(i64::try_from(config.documents_wait_secs).unwrap_or(i64::MAX));
        let deadline = message.created_at.checked_add(wait)?;
        if now >= deadline {
            return None;
        }
        // A store that cannot be read now is found out by the send's own reads.
        let documents = store.documents(&message.referral).await.ok()?;
        documents
            .iter()
            .any(|d| d.version == message.version && d.state == DocumentState::Pending)
            .then(|| (now + DOCUMENTS_POLL).min(deadline))
    }
}

#[async_trait::async_trait]
impl Channel for DestinationChannel {
    fn queue(&self) -> &str {
        &self.destination.name
    }

    fn concurrency(&self) -> usize {
        self.destination.config.concurrency
    }

    fn rate_per_sec(&self) -> u32 {
        self.destination.config.rate_per_sec
    }

    fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.destination.config.request_timeout_secs)
    }

    fn wake(&self) -> &Notify {
        &self.destination.wake
    }

    /// Sends the version, read from the store now (unless it waits for its documents).
    async fn attempt(
        &self,
        store: &dyn Store,
        message: &QueuedMessage,
        now: OffsetDateTime,
    ) -> Outcome {
        if let Some(again) = self.documents_pending(store, message, now).await {
            return Outcome::Waiting(again);
        }
        let destination = &self.destination;
        Outcome::Sent(
            destination
                .sender
                .send(store, message, &destination.config, now)
                .await,
        )
    }

    async fn recorded(&self, store: &dyn Store, message: &QueuedMessage, outcome: &'static str) {
        let name = &self.destination.name;
        self.metrics.destination_send(name, outcome);
        self.signals.sent(
            Target::Destination(name.clone()),
            outcome,
            message.last_error.as_deref(),
        );
        match outcome {
            "delivered" => {
                let lag = duration(OffsetDateTime::now_utc() - message.created_at);
                self.metrics.destination_lag(name, lag);
                tracing::info!(destination = %name, message_id = message.id, attempts = message.attempts, "version delivered to a destination");
            }
            "dead" => {
                tracing::warn!(destination = %name, message_id = message.id, "the destination refused the version, or its retry horizon passed; dead letter");
                let details = serde_json::json!({
                    "destination": name,
                    "message": message.id,
                    "referral": message.referral.as_str(),
                    "version": message.version,
                    "attempts": message.attempts,
                });
                if let Err(e) = store
                    .audit(
                        "DESTINATION_DEAD_LETTERED",
                        &format!("destination:{name}"),
                        details,
                    )
                    .await
                {
                    tracing::error!(destination = %name, error = %e.chain(), "cannot audit a dead letter");
                }
            }
            _ => {}
        }
    }
}
