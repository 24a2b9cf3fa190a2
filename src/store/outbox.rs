//! The outbox: updates accepted for Ocean, their delivery state, and each referral's Task
//! state.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::error::StoreError;
use crate::domain::ReferralRef;
use crate::ig::OutboundEvent;

/// Where an outgoing update stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpdateState {
    /// Waiting to be sent, or between attempts.
    Pending,
    /// Ocean answered 2xx; never sent again.
    Delivered,
    /// Refused by Ocean (a 4xx other than 401/429) or out of retry time; holds back later
    /// updates of its referral until it is replayed or discarded.
    Dead,
    /// A dead letter given up on by the clinic; no longer holds anything back.
    Discarded,
}

impl UpdateState {
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

/// What an update tells Ocean.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateKind {
    /// A Task status change.
    Status,
    /// A booked appointment.
    Appointment,
    /// The cancellation of the appointment booked last.
    CancelAppointment,
    /// A message to the referrer.
    Message,
}

impl UpdateKind {
    /// The name shown in the API and logs (`status`, `appointment`, `cancel-appointment`,
    /// `message`), the same as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Status => "status",
            Self::Appointment => "appointment",
            Self::CancelAppointment => "cancel-appointment",
            Self::Message => "message",
        }
    }
}

/// An appointment the relay booked: the id of its Appointment resource and its times.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppointmentSlot {
    pub id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub start: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub end: OffsetDateTime,
}

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

/// The durable outbox to Ocean.
#[async_trait]
pub trait OutboxStore: Send + Sync {
    /// Stores a new outgoing update (its `id` is assigned here) together with the referral's
    /// new [`TaskState`], durably, and returns it.
    async fn enqueue_update(
        &self,
        update: UpdateRecord,
        task: TaskState,
    ) -> Result<UpdateRecord, StoreError>;

    /// As [`OutboxStore::enqueue_update`], only while the referral's Task state is still
    /// `read` (what the caller decided the update from); `None`, storing nothing, when it
    /// changed since (another replica accepted an update of the referral): the caller reads it
    /// again and decides again. By default (one process per store, whose outbox accepts one
    /// update at a time) it does not look.
    async fn enqueue_update_if(
        &self,
        update: UpdateRecord,
        task: TaskState,
        read: &TaskState,
    ) -> Result<Option<UpdateRecord>, StoreError> {
        let _ = read;
        self.enqueue_update(update, task).await.map(Some)
    }

    /// Records a new state of an update, durably.
    async fn save_update(&self, update: &UpdateRecord) -> Result<(), StoreError>;

    /// Marks an update discarded and sets the referral's [`TaskState`] in one durable write.
    async fn discard_update(
        &self,
        update: &UpdateRecord,
        task: TaskState,
    ) -> Result<(), StoreError>;

    /// As [`OutboxStore::discard_update`], only while the referral's Task state is still
    /// `read`; `false`, writing nothing, when another replica changed it since (the caller
    /// rebuilds the state again). By default it does not look (see
    /// [`OutboxStore::enqueue_update_if`]).
    async fn discard_update_if(
        &self,
        update: &UpdateRecord,
        task: TaskState,
        read: &TaskState,
    ) -> Result<bool, StoreError> {
        let _ = read;
        self.discard_update(update, task).await.map(|()| true)
    }

    async fn update(&self, id: u64) -> Result<Option<UpdateRecord>, StoreError>;

    /// Updates with an id greater than `after`, in id order, optionally only those in `state`.
    async fn updates(
        &self,
        state: Option<UpdateState>,
        after: u64,
        limit: usize,
    ) -> Result<Vec<UpdateRecord>, StoreError>;

    /// Updates not yet delivered (pending and dead), in the order they were accepted.
    async fn open_updates(&self) -> Result<Vec<UpdateRecord>, StoreError>;

    /// Every update of `referral`, in the order they were accepted (read from an index, not a
    /// scan of the outbox).
    async fn referral_updates(
        &self,
        referral: &ReferralRef,
    ) -> Result<Vec<UpdateRecord>, StoreError>;

    /// What the updates accepted so far for `referral` told Ocean (default when none).
    async fn task_state(&self, referral: &ReferralRef) -> Result<TaskState, StoreError>;

    /// Whether this process may send the outbox now. With several replicas on one store one of
    /// them at a time does, so each update is sent by one replica and each referral's updates go
    /// in order; when it dies another takes over. A store of one process always may.
    async fn may_send_outbox(&self) -> Result<bool, StoreError> {
        Ok(true)
    }

    /// Completes when another replica accepted an update (so the one sending wakes for it);
    /// never for a store of one process, whose worker is woken directly.
    async fn wait_for_outbox_change(&self) {
        std::future::pending::<()>().await;
    }
}
