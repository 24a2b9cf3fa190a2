//! The outbox: updates accepted for Ocean, their delivery state, and each referral's Task
//! state.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::error::StoreError;
use super::queue::{MessageState, QueueStore, QueuedMessage};
use super::update::{AppointmentSlot, OCEAN_QUEUE, OceanUpdate, UpdateKind};
use crate::domain::ReferralRef;
use crate::ig::OutboundEvent;

/// Where an outgoing update stands: a queued message's state.
pub type UpdateState = MessageState;

/// An update for Ocean, as accepted from the point-of-service API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateRecord {
    pub id: u64,
    pub referral: ReferralRef,
    /// The configured Ocean site it goes to.
    pub site: String,
    pub kind: UpdateKind,
    /// For status updates: the Task status requested.
    pub task_status: Option<String>,
    /// For status updates: the id of the Task resource sent (absent on updates stored by
    /// earlier builds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    /// For appointment updates: the appointment booked or cancelled (absent on updates stored
    /// by earlier builds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub appointment: Option<AppointmentSlot>,
    /// The message event.
    pub event: OutboundEvent,
    /// The FHIR message Bundle to post, built when the update was accepted.
    pub bundle: String,
    pub state: UpdateState,
    pub attempts: u32,
    pub last_error: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub next_attempt_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub delivered_at: Option<OffsetDateTime>,
}

impl UpdateRecord {
    /// A new update, pending from `at`; the store gives it its id.
    pub fn pending(
        referral: ReferralRef,
        site: String,
        kind: UpdateKind,
        event: OutboundEvent,
        bundle: String,
        at: OffsetDateTime,
    ) -> Self {
        Self {
            id: 0,
            referral,
            site,
            kind,
            task_status: None,
            task_id: None,
            appointment: None,
            event,
            bundle,
            state: UpdateState::Pending,
            attempts: 0,
            last_error: None,
            next_attempt_at: at,
            created_at: at,
            delivered_at: None,
        }
    }
}

impl UpdateRecord {
    /// The update as a message of [`OCEAN_QUEUE`].
    pub fn into_message(self) -> QueuedMessage {
        QueuedMessage {
            id: self.id,
            webhook_id: String::new(),
            queue: OCEAN_QUEUE.to_owned(),
            referral: self.referral,
            version: 0,
            state: self.state,
            attempts: self.attempts,
            last_error: self.last_error,
            next_attempt_at: self.next_attempt_at,
            created_at: self.created_at,
            delivered_at: self.delivered_at,
            backfill: false,
            next: None,
            update: Some(Box::new(OceanUpdate {
                site: self.site,
                kind: self.kind,
                task_status: self.task_status,
                task_id: self.task_id,
                appointment: self.appointment,
                event: self.event,
                bundle: self.bundle,
            })),
            alert: None,
            patient_form: None,
        }
    }

    /// The update a message of [`OCEAN_QUEUE`] is; `None` for any other message.
    pub fn from_message(message: QueuedMessage) -> Option<Self> {
        if message.queue != OCEAN_QUEUE {
            return None;
        }
        let update = *message.update?;
        Some(Self {
            id: message.id,
            referral: message.referral,
            site: update.site,
            kind: update.kind,
            task_status: update.task_status,
            task_id: update.task_id,
            appointment: update.appointment,
            event: update.event,
            bundle: update.bundle,
            state: message.state,
            attempts: message.attempts,
            last_error: message.last_error,
            next_attempt_at: message.next_attempt_at,
            created_at: message.created_at,
            delivered_at: message.delivered_at,
        })
    }
}

/// What the relay has told Ocean about a referral's Task, as left by the updates accepted so
/// far (stored with each accepted update, so the next is checked against it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskState {
    /// The last Task status accepted for sending, and when.
    pub status: Option<String>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub status_set_at: Option<OffsetDateTime>,
    /// True once a Task update was accepted: later ones are `notify-update-process-request`.
    pub task_sent: bool,
    /// The id of the Task resource used for this referral's updates.
    pub task_id: Option<String>,
    /// The id of the current Appointment, if one was booked and not cancelled.
    pub appointment_id: Option<String>,
    /// Its start and end, repeated when it is cancelled.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub appointment_start: Option<OffsetDateTime>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub appointment_end: Option<OffsetDateTime>,
}

impl TaskState {
    /// The current appointment, if one was booked and not cancelled.
    pub fn appointment(&self) -> Option<AppointmentSlot> {
        Some(AppointmentSlot {
            id: self.appointment_id.clone()?,
            start: self.appointment_start?,
            end: self.appointment_end?,
        })
    }

    /// Records `slot` as the current appointment, or none.
    pub fn set_appointment(&mut self, slot: Option<&AppointmentSlot>) {
        self.appointment_id = slot.map(|s| s.id.clone());
        self.appointment_start = slot.map(|s| s.start);
        self.appointment_end = slot.map(|s| s.end);
    }
}

/// The durable outbox to Ocean: its updates are messages of [`OCEAN_QUEUE`] in the store's
/// outgoing queues (sent by the same worker rules as every destination), written together with
/// each referral's [`TaskState`].
#[async_trait]
pub trait OutboxStore: Send + Sync {
    /// Stores a new outgoing update (its `id` is assigned here) together with the referral's
    /// new [`TaskState`], durably, and returns it; with `read`, only while the referral's Task
    /// state is still that (what the caller decided the update from): `None`, storing nothing,
    /// when another replica changed it since (the caller reads it again and decides again). A
    /// store of one process, whose outbox accepts one update at a time, need not look.
    async fn enqueue_update(
        &self,
        update: UpdateRecord,
        task: TaskState,
        read: Option<&TaskState>,
    ) -> Result<Option<UpdateRecord>, StoreError>;

    /// Marks dead letter `update` discarded and sets the referral's [`TaskState`] in one
    /// durable write; `false`, writing nothing, when the update is no longer dead, or (with
    /// `read`) the Task state is no longer that.
    async fn discard_update(
        &self,
        update: &UpdateRecord,
        task: TaskState,
        read: Option<&TaskState>,
    ) -> Result<bool, StoreError>;

    /// What the updates accepted so far for `referral` told Ocean (default when none).
    async fn task_state(&self, referral: &ReferralRef) -> Result<TaskState, StoreError>;
}

/// Update `id`, if it is one.
///
/// # Errors
/// The store's.
pub async fn update(store: &dyn QueueStore, id: u64) -> Result<Option<UpdateRecord>, StoreError> {
    Ok(store
        .message(id)
        .await?
        .and_then(UpdateRecord::from_message))
}

/// Updates with an id greater than `after`, in id order, optionally only those in `state`.
///
/// # Errors
/// The store's.
pub async fn updates(
    store: &dyn QueueStore,
    state: Option<UpdateState>,
    after: u64,
    limit: usize,
) -> Result<Vec<UpdateRecord>, StoreError> {
    let messages = store
        .queue_messages(OCEAN_QUEUE, state, after, limit)
        .await?;
    Ok(messages
        .into_iter()
        .filter_map(UpdateRecord::from_message)
        .collect())
}

/// Updates not yet delivered (pending and dead), in the order they were accepted.
///
/// # Errors
/// The store's.
pub async fn open_updates(store: &dyn QueueStore) -> Result<Vec<UpdateRecord>, StoreError> {
    let mut open = Vec::new();
    for state in [UpdateState::Pending, UpdateState::Dead] {
        let mut after = 0;
        loop {
            let batch = updates(store, Some(state), after, 1000).await?;
            let Some(last) = batch.last() else { break };
            after = last.id;
            open.extend(batch);
        }
    }
    open.sort_by_key(|u| u.id);
    Ok(open)
}

/// Every update of `referral`, in the order they were accepted.
///
/// # Errors
/// The store's.
pub async fn referral_updates(
    store: &dyn QueueStore,
    referral: &ReferralRef,
) -> Result<Vec<UpdateRecord>, StoreError> {
    let messages = store.referral_messages(referral).await?;
    Ok(messages
        .into_iter()
        .filter_map(UpdateRecord::from_message)
        .collect())
}
