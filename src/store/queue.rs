//! Outgoing queues: referral versions waiting to be pushed to a destination (a clinic's
//! system), and where each push stands.
//!
//! A queue is named after its destination. Its messages go out in the order they were queued
//! per referral: only the oldest open message of a referral (its *head*) is ever due, so a
//! message waiting for its next attempt, or dead, holds back the later ones of that referral
//! and of no other. Messages are queued in the same atomic write as the delivery that stored
//! the version (see [`QueueRoute`]), so no acknowledged delivery can be missed.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::alert::AlertRecord;
use super::error::StoreError;
use super::update::OceanUpdate;
use crate::domain::{Change, IntegrationName, ReferralRef, ServiceId};

/// Where a queued message (an Ocean update, a destination's version) stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageState {
    /// Waiting to be sent, or between attempts.
    Pending,
    /// The receiver answered 2xx; never sent again.
    Delivered,
    /// Refused by the receiver (a 4xx it does not retry) or out of retry time; holds back the
    /// later messages of its referral until it is replayed or discarded.
    Dead,
    /// A dead letter given up on by the clinic; no longer holds anything back.
    Discarded,
}

impl MessageState {
    /// The name shown in the API and stored (`pending`, `delivered`, `dead`, `discarded`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Dead => "dead",
            Self::Discarded => "discarded",
        }
    }
}

/// One referral version queued for one destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedMessage {
    /// Unique in the store, increasing in the order messages were queued.
    pub id: u64,
    /// The `webhook-id` it is sent with (`msg_` and a random UUID): the same on every attempt,
    /// so a receiver can drop repeats, and never the same for two messages, whichever store
    /// (a restored backup, a new database) queued them.
    #[serde(default)]
    pub webhook_id: String,
    /// The destination's name.
    pub queue: String,
    pub referral: ReferralRef,
    pub version: u64,
    pub state: MessageState,
    pub attempts: u32,
    /// Why the last attempt failed (the receiver's answer, bounded).
    pub last_error: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub next_attempt_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub delivered_at: Option<OffsetDateTime>,
    /// Queued by a backfill rather than by the delivery that stored the version.
    #[serde(default)]
    pub backfill: bool,
    /// The next message of the same referral in the same queue (the store's own chain).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<u64>,
    /// In [`crate::store::update::OCEAN_QUEUE`]: the update for Ocean it is (`version` is 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<Box<OceanUpdate>>,
    /// In an alerts queue ([`super::alert::is_alert_queue`]): the alert it is (`version` is 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert: Option<Box<AlertRecord>>,
    /// In a destination's queue: the id of the patient's completed eForms it pushes (see
    /// [`QueuedMessage::patient_form`]) rather than a referral version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient_form: Option<u64>,
}

impl QueuedMessage {
    /// Whether it is a destination's message that left its queue before `cutoff`: delivered
    /// before it, or discarded and queued before it (see
    /// [`QueueStore::purge_messages_before`]; Ocean updates and alert records are kept).
    pub fn settled_before(&self, cutoff: OffsetDateTime) -> bool {
        if self.queue == super::update::OCEAN_QUEUE || self.queue == super::alert::ALERTS_QUEUE {
            return false;
        }
        match self.state {
            MessageState::Delivered => self.delivered_at.unwrap_or(self.created_at) < cutoff,
            MessageState::Discarded => self.created_at < cutoff,
            MessageState::Pending | MessageState::Dead => false,
        }
    }

    /// A new pending message, due at `at`; the store gives it its id.
    pub fn pending(queue: &str, referral: ReferralRef, version: u64, at: OffsetDateTime) -> Self {
        Self {
            id: 0,
            webhook_id: format!("msg_{}", uuid::Uuid::new_v4().simple()),
            queue: queue.to_owned(),
            referral,
            version,
            state: MessageState::Pending,
            attempts: 0,
            last_error: None,
            next_attempt_at: at,
            created_at: at,
            delivered_at: None,
            backfill: false,
            next: None,
            update: None,
            alert: None,
            patient_form: None,
        }
    }

    /// A new pending message of `queue` pushing patient form `id`, due at `at`. Its "referral"
    /// is `patient-form-{id}` (each submission its own chain, so one that is refused holds back
    /// no other) and its version 0.
    pub fn patient_form(queue: &str, id: u64, at: OffsetDateTime) -> Self {
        let referral = ReferralRef::parse(&format!("patient-form-{id}"))
            .unwrap_or_else(|_| unreachable!("a valid referral ref"));
        Self {
            patient_form: Some(id),
            ..Self::pending(queue, referral, 0, at)
        }
    }
}

/// Which stored versions a destination takes: empty lists take everything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueRoute {
    /// The destination's name, which is its queue's.
    pub queue: String,
    /// The referral's `latest_change` kinds after the version.
    pub events: Vec<Change>,
    /// External Service IDs the referral is filed under; an unassigned referral matches only
    /// an empty list.
    pub service_ids: Vec<ServiceId>,
    /// Integrations that delivered the version.
    pub integrations: Vec<IntegrationName>,
}

impl QueueRoute {
    /// Whether a version delivered by `integration`, leaving the referral filed under
    /// `service_id` with `change` as its latest change, goes to this route's queue.
    pub fn takes(
        &self,
        integration: &IntegrationName,
        service_id: Option<&ServiceId>,
        change: Option<Change>,
    ) -> bool {
        (self.integrations.is_empty() || self.integrations.contains(integration))
            && (self.service_ids.is_empty()
                || service_id.is_some_and(|s| self.service_ids.contains(s)))
            && (self.events.is_empty() || change.is_some_and(|c| self.events.contains(&c)))
    }
}

/// How many messages of a queue stand where, for the API and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct QueueStats {
    pub pending: u64,
    pub dead: u64,
    pub delivered: u64,
    pub discarded: u64,
    /// When the oldest pending message was queued.
    #[serde(with = "time::serde::rfc3339::option")]
    pub oldest_pending_at: Option<OffsetDateTime>,
    /// The last failure of the oldest dead letter, else of the oldest pending message.
    pub last_error: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_delivered_at: Option<OffsetDateTime>,
    /// Paused by an operator: nothing is sent until resumed.
    pub paused: bool,
}

/// The durable outgoing queues.
#[async_trait]
pub trait QueueStore: Send + Sync {
    /// Pending heads of `queue` due at `now`, earliest due first, at most `limit`, leaving out
    /// the ids in `busy` (being sent by the caller); none while the queue is paused. On a store
    /// shared by replicas the messages returned are leased to the caller for `lease` (no other
    /// replica gets them meanwhile), so a caller should send every one it is given.
    async fn due_messages(
        &self,
        queue: &str,
        now: OffsetDateTime,
        lease: std::time::Duration,
        limit: usize,
        busy: &[u64],
    ) -> Result<Vec<QueuedMessage>, StoreError>;

    /// When the earliest pending head of `queue` is due, leaving out `busy` (being sent by the
    /// caller); `None` when there is none, or the queue is paused.
    async fn next_due(
        &self,
        queue: &str,
        busy: &[u64],
    ) -> Result<Option<OffsetDateTime>, StoreError>;

    /// Records a message's new state durably, only while its stored state is still `from` (what
    /// the caller read): `false`, writing nothing, when someone else changed it since (an
    /// operator's replay or discard, another replica). A message that left the open states
    /// (delivered, discarded) makes the next of its referral the head, due at once.
    async fn save_message(
        &self,
        message: &QueuedMessage,
        from: MessageState,
    ) -> Result<bool, StoreError>;

    async fn message(&self, id: u64) -> Result<Option<QueuedMessage>, StoreError>;

    /// Messages of `queue` with an id greater than `after`, in id order, optionally only those
    /// in `state`.
    async fn queue_messages(
        &self,
        queue: &str,
        state: Option<MessageState>,
        after: u64,
        limit: usize,
    ) -> Result<Vec<QueuedMessage>, StoreError>;

    /// Every message queued for `referral`, in every queue, oldest first.
    async fn referral_messages(
        &self,
        referral: &ReferralRef,
    ) -> Result<Vec<QueuedMessage>, StoreError>;

    async fn queue_stats(&self, queue: &str) -> Result<QueueStats, StoreError>;

    /// Pauses (`true`) or resumes a queue, durably.
    async fn set_queue_paused(&self, queue: &str, paused: bool) -> Result<(), StoreError>;

    /// Forgets the destinations' messages that left their queue long ago: delivered before
    /// `cutoff`, or discarded and queued before it. Open messages are never touched, nor Ocean
    /// updates (a referral's Task state is rebuilt from them). Returns how many were forgotten;
    /// durable when it returns.
    async fn purge_messages_before(&self, cutoff: OffsetDateTime) -> Result<u64, StoreError>;

    /// Queues `messages` (their ids are given here), each behind the open messages of its
    /// referral in its queue, in one durable write. For backfills: a delivery queues its own
    /// in its write (see [`QueueRoute`]).
    async fn enqueue_messages(&self, messages: Vec<QueuedMessage>) -> Result<(), StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_takes_what_each_of_its_lists_allows() {
        let a = IntegrationName::parse("a").unwrap();
        let b = IntegrationName::parse("b").unwrap();
        let s1 = ServiceId::parse("s1").unwrap();
        let s2 = ServiceId::parse("s2").unwrap();
        let all = QueueRoute {
            queue: "emr".into(),
            events: vec![],
            service_ids: vec![],
            integrations: vec![],
        };
        assert!(all.takes(&a, None, None));
        let narrow = QueueRoute {
            events: vec![Change::NewReferral],
            service_ids: vec![s1.clone()],
            integrations: vec![a.clone()],
            ..all
        };
        assert!(narrow.takes(&a, Some(&s1), Some(Change::NewReferral)));
        assert!(!narrow.takes(&b, Some(&s1), Some(Change::NewReferral)));
        assert!(!narrow.takes(&a, Some(&s2), Some(Change::NewReferral)));
        assert!(!narrow.takes(&a, None, Some(Change::NewReferral)));
        assert!(!narrow.takes(&a, Some(&s1), Some(Change::Revoked)));
        assert!(!narrow.takes(&a, Some(&s1), None));
    }
}
