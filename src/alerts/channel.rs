//! A channel's queue as the [`Channel`] its worker ([`crate::outgoing::worker`]) sends: one
//! alert (or digest) per message, in the order they were filed. An alert the channel refused
//! for good, or could not take within the retry horizon, is given up at once (audited as
//! `ALERT_DEAD_LETTERED`, shown as discarded with its last error in `GET /api/v1/alerts`), so
//! it never holds back the channel's later alerts.

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::Notify;

use super::AlertChannel;
use crate::outgoing::SendError;
use crate::outgoing::worker::{Channel, Outcome};
use crate::store::{MessageState, QueuedMessage, Store};

/// A channel and the bound on one of its sends.
pub struct AlertWorkerChannel {
    pub channel: Arc<AlertChannel>,
    pub request_timeout: Duration,
}

#[async_trait::async_trait]
impl Channel for AlertWorkerChannel {
    fn queue(&self) -> &str {
        &self.channel.queue
    }

    /// One at a time: a channel's alerts go out in order.
    fn concurrency(&self) -> usize {
        1
    }

    fn rate_per_sec(&self) -> u32 {
        0
    }

    fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    fn wake(&self) -> &Notify {
        &self.channel.wake
    }

    async fn attempt(
        &self,
        _store: &dyn Store,
        message: &QueuedMessage,
        _now: OffsetDateTime,
    ) -> Outcome {
        let Some(alert) = &message.alert else {
            return Outcome::Sent(Err(SendError::Rejected(
                "the message holds no alert".into(),
            )));
        };
        Outcome::Sent(self.channel.send(&message.webhook_id, alert).await)
    }

    async fn recorded(&self, store: &dyn Store, message: &QueuedMessage, outcome: &'static str) {
        let name = &self.channel.name;
        match outcome {
            "delivered" => {
                tracing::info!(channel = %name, message_id = message.id, attempts = message.attempts, "alert sent");
            }
            "dead" => {
                tracing::error!(channel = %name, message_id = message.id, "an alert could not be sent within the retry horizon, or was refused; dead letter");
                let details = serde_json::json!({
                    "channel": name,
                    "message": message.id,
                    "alert": message.webhook_id,
                    "attempts": message.attempts,
                });
                if let Err(e) = store
                    .audit("ALERT_DEAD_LETTERED", &format!("alerts:{name}"), details)
                    .await
                {
                    tracing::error!(channel = %name, error = %e.chain(), "cannot audit a dead letter");
                }
                let mut given_up = message.clone();
                given_up.state = MessageState::Discarded;
                if let Err(e) = store.save_message(&given_up, MessageState::Dead).await {
                    tracing::error!(channel = %name, error = %e.chain(), "cannot give up a dead alert; it holds back the channel's later alerts until the next attempt to");
                }
            }
            _ => {
                tracing::warn!(channel = %name, message_id = message.id, attempts = message.attempts, "an alert was not sent; it will be retried");
            }
        }
    }
}
