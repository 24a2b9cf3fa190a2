//! A destination's worker: sends its queue's due messages, up to `concurrency` at once (each
//! for a different referral: only a referral's oldest open message is ever due) and at most
//! `rate_per_sec` started per second, and records each outcome under the rules of
//! [`crate::outgoing`]. A failed send waits for its next attempt and holds back the later
//! messages of its referral only; a refusal (or the retry horizon) makes a dead letter that
//! holds them back until it is replayed or discarded.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::Destination;
use crate::config::DocumentsMode;
use crate::outgoing::{RetryPolicy, SendError, duration};
use crate::store::{DocumentState, MessageState, QueuedMessage, Store};
use crate::telemetry::Metrics;

/// Longest sleep when nothing is due (a stored delivery wakes the worker at once).
const IDLE: Duration = Duration::from_secs(30);
/// Wait after the store failed to answer.
const STORE_TROUBLE: Duration = Duration::from_secs(5);
/// How long a claimed message is leased to this process on a shared store, beyond twice the
/// request timeout: long enough for reading the version and one send, short enough that a dead
/// replica's claims move on soon.
const LEASE_SLACK: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct Worker {
    pub store: Arc<dyn Store>,
    pub destination: Arc<Destination>,
    pub policy: RetryPolicy,
    pub metrics: Metrics,
}

/// One finished attempt.
type Finished = (QueuedMessage, Outcome);

/// What came of taking a message up.
enum Outcome {
    /// It was sent: delivered, or why not.
    Sent(Result<(), SendError>),
    /// Not sent: its documents are still being fetched; look again at this time.
    Waiting(OffsetDateTime),
}

/// How often a version waiting for its documents looks at them again.
const DOCUMENTS_POLL: Duration = Duration::from_secs(2);

impl Worker {
    /// Runs until `stop` turns true; sends in progress are allowed to finish (cutting one off
    /// could post it twice) and are recorded.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let name = self.destination.name.clone();
        let concurrency = self.destination.config.concurrency;
        let lease =
            Duration::from_secs(self.destination.config.request_timeout_secs) * 2 + LEASE_SLACK;
        let spacing = match self.destination.config.rate_per_sec {
            0 => Duration::ZERO,
            rate => Duration::from_secs(1) / rate,
        };
        let mut next_start = tokio::time::Instant::now();
        let mut sending: JoinSet<Finished> = JoinSet::new();
        // The messages being sent, by their task (a task that panics still names its message).
        let mut busy: HashMap<tokio::task::Id, u64> = HashMap::new();
        loop {
            if *stop.borrow() {
                break;
            }
            let mut sleep = IDLE;
            let mut room = concurrency.saturating_sub(sending.len());
            if room > 0 && !spacing.is_zero() {
                // A rate limit claims one message when it may start, so no claim waits (and
                // its lease runs) behind the limit.
                room = 1;
                tokio::time::sleep_until(next_start).await;
            }
            if room > 0 {
                let now = OffsetDateTime::now_utc();
                let ids: Vec<u64> = busy.values().copied().collect();
                match self.store.due_messages(&name, now, lease, room, &ids).await {
                    Ok(due) => {
                        let claimed = due.len();
                        for message in due {
                            next_start = tokio::time::Instant::now() + spacing;
                            let id = message.id;
                            let task = sending.spawn(self.clone().attempt(message));
                            busy.insert(task.id(), id);
                        }
                        if claimed == room {
                            // There may be more: look again as soon as there is room.
                            sleep = Duration::ZERO;
                        } else {
                            let ids: Vec<u64> = busy.values().copied().collect();
                            match self.store.next_due(&name, &ids).await {
                                Ok(Some(at)) => {
                                    sleep = sleep.min(duration(at - OffsetDateTime::now_utc()));
                                }
                                Ok(None) => {}
                                Err(e) => {
                                    tracing::warn!(destination = %name, error = %e.chain(), "cannot read the queue");
                                    sleep = STORE_TROUBLE;
                                }
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(destination = %name, error = %e.chain(), "cannot claim due messages");
                        sleep = STORE_TROUBLE;
                    }
                }
            }
            if sleep.is_zero() && sending.len() < concurrency {
                continue;
            }
            tokio::select! {
                Some(finished) = sending.join_next_with_id(), if !sending.is_empty() => {
                    match finished {
                        Ok((task, finished)) => {
                            busy.remove(&task);
                            self.record(finished).await;
                        }
                        Err(e) => {
                            // Left pending in the store: taken up again (on a shared store,
                            // once its lease lapses).
                            if let Some(id) = busy.remove(&e.id()) {
                                tracing::error!(destination = %name, message = id, "a send panicked; the message stays pending");
                            }
                        }
                    }
                }
                () = self.destination.wake.notified() => {}
                () = tokio::time::sleep(sleep) => {}
                _ = stop.changed() => {}
            }
        }
        while let Some(finished) = sending.join_next().await {
            if let Ok(finished) = finished {
                self.record(finished).await;
            }
        }
    }

    /// With `documents = "wait"`: when to look again, while the version's documents are still
    /// being fetched and its wait has not run out.
    async fn documents_pending(
        &self,
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
        // A store that cannot be read now is found out by the envelope's reads.
        let documents = self.store.documents(&message.referral).await.ok()?;
        documents
            .iter()
            .any(|d| d.version == message.version && d.state == DocumentState::Pending)
            .then(|| (now + DOCUMENTS_POLL).min(deadline))
    }

    /// Sends one message: its version, read from the store now (unless it waits for its
    /// documents).
    async fn attempt(self, message: QueuedMessage) -> Finished {
        let now = OffsetDateTime::now_utc();
        if let Some(again) = self.documents_pending(&message, now).await {
            return (message, Outcome::Waiting(again));
        }
        let result = self
            .destination
            .sender
            .send(self.store.as_ref(), &message, &self.destination.config, now)
            .await;
        (message, Outcome::Sent(result))
    }

    /// Records an attempt's outcome durably, with its metrics and, for a dead letter, an audit
    /// entry. The receiver's answer goes to `last_error` (read through the API), never to the
    /// logs: it may echo what it was sent.
    async fn record(&self, (mut message, outcome): Finished) {
        let name = &self.destination.name;
        let result = match outcome {
            Outcome::Sent(result) => result,
            Outcome::Waiting(again) => {
                message.next_attempt_at = again;
                if let Err(e) = self
                    .store
                    .save_message(&message, MessageState::Pending)
                    .await
                {
                    tracing::error!(destination = %name, message = message.id, error = %e.chain(), "cannot record a wait for documents");
                }
                return;
            }
        };
        message.attempts += 1;
        let now = OffsetDateTime::now_utc();
        let outcome = match result {
            Ok(()) => {
                message.state = MessageState::Delivered;
                message.delivered_at = Some(now);
                message.last_error = None;
                self.metrics
                    .destination_lag(name, duration(now - message.created_at));
                tracing::info!(destination = %name, message = message.id, attempts = message.attempts, "version delivered to a destination");
                "delivered"
            }
            Err(SendError::Rejected(reason)) => {
                tracing::warn!(destination = %name, message = message.id, "the destination refused the version; dead letter");
                message.state = MessageState::Dead;
                message.last_error = Some(reason);
                "dead"
            }
            Err(SendError::Retry { reason, after }) => {
                match self
                    .policy
                    .next_attempt(message.attempts, message.created_at, now, after)
                {
                    Some((next, wait)) => {
                        tracing::info!(destination = %name, message = message.id, retry_in_secs = wait.as_secs_f32(), "version not delivered; will retry");
                        message.next_attempt_at = next;
                        message.last_error = Some(reason);
                        "retry"
                    }
                    None => {
                        tracing::warn!(destination = %name, message = message.id, "retry horizon reached; dead letter");
                        message.state = MessageState::Dead;
                        message.last_error =
                            Some(self.policy.gave_up(message.attempts, &reason, after));
                        "dead"
                    }
                }
            }
        };
        self.metrics.destination_send(name, outcome);
        match self
            .store
            .save_message(&message, MessageState::Pending)
            .await
        {
            Ok(true) => {}
            // Recorded meanwhile by another replica whose lease ran out on this one's send.
            Ok(false) => {
                tracing::warn!(destination = %name, message = message.id, "the message was recorded by another sender meanwhile; this outcome is left out");
                return;
            }
            Err(e) => {
                // Left as it was: sent again later (the receiver deduplicates by webhook-id).
                tracing::error!(destination = %name, message = message.id, error = %e.chain(), "cannot record a send");
                return;
            }
        }
        if outcome == "dead" {
            let details = serde_json::json!({
                "destination": name,
                "message": message.id,
                "referral": message.referral.as_str(),
                "version": message.version,
                "attempts": message.attempts,
            });
            if let Err(e) = self
                .store
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
    }
}
