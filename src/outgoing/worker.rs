//! The worker of one outgoing queue, the Ocean outbox's or a destination's: sends the queue's
//! due messages through its [`Channel`], up to `concurrency` at once (each for a different
//! referral: only a referral's oldest open message is ever due) and at most `rate_per_sec`
//! started per second, and records each outcome under the rules of [`crate::outgoing`]. A
//! failed send waits for its next attempt and holds back the later messages of its referral
//! only; a refusal (or the retry horizon) makes a dead letter that holds them back until it is
//! replayed or discarded. On a store shared by replicas each claim is leased, so a message is
//! sent by one replica at a time and a dead replica's claims move on when their leases lapse.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tracing::Instrument;

use super::{RetryPolicy, SendError, duration};
use crate::store::{MessageState, QueuedMessage, Store};

/// Longest sleep when nothing is due (a stored delivery wakes the worker at once).
const IDLE: Duration = Duration::from_secs(30);
/// Wait after the store failed to answer.
const STORE_TROUBLE: Duration = Duration::from_secs(5);
/// How long a claimed message is leased to this process on a shared store, beyond twice the
/// request timeout: long enough for reading the version and one send, short enough that a dead
/// replica's claims move on soon.
const LEASE_SLACK: Duration = Duration::from_secs(10);

/// What a queue's worker sends through: a destination, or the Ocean outbox.
#[async_trait::async_trait]
pub trait Channel: Send + Sync + 'static {
    /// The queue it sends.
    fn queue(&self) -> &str;
    /// Sends in flight at once.
    fn concurrency(&self) -> usize;
    /// Most sends started per second; 0: no limit.
    fn rate_per_sec(&self) -> u32;
    /// Bound on one send.
    fn request_timeout(&self) -> Duration;
    /// Woken when a message may have become due (queued, replayed, resumed).
    fn wake(&self) -> &Notify;
    /// Takes `message` up at `now`: sends it, or says when to look again.
    async fn attempt(
        &self,
        store: &dyn Store,
        message: &QueuedMessage,
        now: OffsetDateTime,
    ) -> Outcome;
    /// Called once an attempt's outcome (`delivered`, `retry` or `dead`) is recorded: its
    /// metrics, logs and audit entries.
    async fn recorded(&self, store: &dyn Store, message: &QueuedMessage, outcome: &'static str);
    /// A sign of progress: the worker looked at its queue, or began a send.
    fn progress(&self) {}
}

#[derive(Clone)]
pub struct Worker {
    pub store: Arc<dyn Store>,
    pub channel: Arc<dyn Channel>,
    pub policy: RetryPolicy,
}

/// One finished attempt.
type Finished = (QueuedMessage, Outcome);

/// What came of taking a message up.
pub enum Outcome {
    /// It was sent: delivered, or why not.
    Sent(Result<(), SendError>),
    /// Not sent (its documents are still being fetched): look again at this time.
    Waiting(OffsetDateTime),
}

impl Worker {
    /// Runs until `stop` turns true; sends in progress are allowed to finish (cutting one off
    /// could post it twice) and are recorded.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let name = self.channel.queue().to_owned();
        let concurrency = self.channel.concurrency();
        let lease = self.channel.request_timeout() * 2 + LEASE_SLACK;
        let spacing = match self.channel.rate_per_sec() {
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
                        self.channel.progress();
                        let claimed = due.len();
                        for message in due {
                            next_start = tokio::time::Instant::now() + spacing;
                            let id = message.id;
                            // Its log lines name the queue and message (ids only).
                            let span = send_span(&name, id);
                            let task =
                                sending.spawn(self.clone().attempt(message).instrument(span));
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
                                    tracing::warn!(queue = %name, error = %e.chain(), "cannot read the queue");
                                    sleep = STORE_TROUBLE;
                                }
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(queue = %name, error = %e.chain(), "cannot claim due messages");
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
                                tracing::error!(queue = %name, message_id = id, "a send panicked; the message stays pending");
                            }
                        }
                    }
                }
                () = self.channel.wake().notified() => {}
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

    /// Takes one message up through the channel.
    async fn attempt(self, message: QueuedMessage) -> Finished {
        self.channel.progress();
        let now = OffsetDateTime::now_utc();
        let outcome = self
            .channel
            .attempt(self.store.as_ref(), &message, now)
            .await;
        (message, outcome)
    }

    /// Records an attempt's outcome durably, then lets the channel count and audit it. The
    /// receiver's answer goes to `last_error` (read through the API), never to the logs: it may
    /// echo what it was sent.
    async fn record(&self, finished: Finished) {
        let span = send_span(self.channel.queue(), finished.0.id);
        self.record_in_span(finished).instrument(span).await;
    }

    async fn record_in_span(&self, (mut message, outcome): Finished) {
        let result = match outcome {
            Outcome::Sent(result) => result,
            Outcome::Waiting(again) => {
                message.next_attempt_at = again;
                if let Err(e) = self
                    .store
                    .save_message(&message, MessageState::Pending)
                    .await
                {
                    tracing::error!(error = %e.chain(), "cannot record a wait");
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
                "delivered"
            }
            Err(SendError::Rejected(reason)) => {
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
                        tracing::info!(
                            retry_in_secs = wait.as_secs_f32(),
                            "not delivered; will retry"
                        );
                        message.next_attempt_at = next;
                        message.last_error = Some(reason);
                        "retry"
                    }
                    None => {
                        tracing::warn!("retry horizon reached; dead letter");
                        message.state = MessageState::Dead;
                        message.last_error =
                            Some(self.policy.gave_up(message.attempts, &reason, after));
                        "dead"
                    }
                }
            }
        };
        match self
            .store
            .save_message(&message, MessageState::Pending)
            .await
        {
            Ok(true) => {}
            // Recorded meanwhile by another replica whose lease ran out on this one's send.
            Ok(false) => {
                tracing::warn!(
                    "the message was recorded by another sender meanwhile; this outcome is left out"
                );
                return;
            }
            Err(e) => {
                // Left as it was: sent again later (the receiver deduplicates).
                tracing::error!(error = %e.chain(), "cannot record a send");
                return;
            }
        }
        self.channel
            .recorded(self.store.as_ref(), &message, outcome)
            .await;
    }
}

/// The span of one message's send and its record: its queue and id (never its content).
fn send_span(queue: &str, id: u64) -> tracing::Span {
    tracing::info_span!("send", queue = %queue, message_id = id)
}
