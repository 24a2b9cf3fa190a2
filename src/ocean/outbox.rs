//! The outbox's rules: which updates a clinic may send for a referral, the FHIR message each
//! one becomes, and what replaying or discarding a dead letter does. Accepted updates are
//! stored durably with the referral's new [`TaskState`]; the [worker](super::worker) delivers
//! them.
//!
//! Acceptance is serialised, so each Task status change is checked against the state the
//! previous update left.

use std::collections::HashMap;
use std::sync::Arc;

use time::OffsetDateTime;
use tokio::sync::{Mutex, Notify};

use super::client::OceanClient;
use super::transitions::{ACTIONABLE, Transitions};
use crate::config::Config;
use crate::domain::{ReferralRef, ServiceId};
use crate::fhir::outgoing::{
    AppointmentUpdate, BuildError, OutgoingMessage, TaskUpdate, appointment_message,
    communication_message, task_message,
};
use crate::store::{
    AppointmentSlot, ReferralRecord, Store, StoreError, TaskState, UpdateKind, UpdateRecord,
    UpdateState,
};

/// An appointment booked without an end lasts this long (FHIR requires an end on a booked
/// one).
pub const DEFAULT_APPOINTMENT_MINUTES: i64 = 30;

/// Why an update was not accepted, replayed or discarded.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// The request itself is wrong (a blank message, an appointment ending before it starts).
    #[error("{0}")]
    Invalid(&'static str),
    /// A Task status Ocean does not act on.
    #[error("status must be one Ocean acts on: {}", ACTIONABLE.join(", "))]
    NotActionable,
    /// No configured Ocean site answers for the referral's External Service ID.
    #[error("no Ocean site is configured for the External Service ID of referral {0}")]
    NoSite(ReferralRef),
    /// The requester revoked the referral: it takes no further status or appointment updates.
    #[error(
        "referral {0} was revoked by its requester: Ocean takes no further status or appointment updates for it"
    )]
    Revoked(ReferralRef),
    /// The Task status change is not allowed from the referral's current status.
    #[error("referral {referral} cannot go from {from} to {to}")]
    NotAllowed {
        referral: ReferralRef,
        from: String,
        to: String,
    },
    /// A cancellation, but no appointment booked through the relay is current.
    #[error("referral {0} has no current appointment booked through this relay")]
    NoAppointment(ReferralRef),
    #[error("no update {0}")]
    UnknownUpdate(u64),
    /// Replay and discard apply to dead letters only.
    #[error("update {id} is not a dead letter; only dead letters are {verb}")]
    NotDead { id: u64, verb: &'static str },
    /// fhir-sdk refused a value of the message.
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An update a clinic asks for, checked on construction.
#[derive(Debug, Clone)]
pub struct UpdateRequest(Request);

#[derive(Debug, Clone)]
enum Request {
    Status {
        status: String,
        reason: Option<String>,
        description: Option<String>,
    },
    Appointment {
        start: OffsetDateTime,
        end: OffsetDateTime,
        confirmed: bool,
        location: Option<String>,
        notes: Option<String>,
    },
    CancelAppointment,
    Message {
        text: String,
    },
}

impl UpdateRequest {
    /// A Task status change; `status` must be one of [`ACTIONABLE`]. `reason` is shown in
    /// Ocean (the reason for declining, say).
    pub fn status(
        status: String,
        reason: Option<String>,
        description: Option<String>,
    ) -> Result<Self, OutboxError> {
        if !ACTIONABLE.contains(&status.as_str()) {
            return Err(OutboxError::NotActionable);
        }
        Ok(Self(Request::Status {
            status,
            reason,
            description,
        }))
    }

    /// An appointment from `start` to `end` ([`DEFAULT_APPOINTMENT_MINUTES`] after `start`
    /// when `None`); `confirmed` with the patient or tentative.
    pub fn appointment(
        start: OffsetDateTime,
        end: Option<OffsetDateTime>,
        confirmed: bool,
        location: Option<String>,
        notes: Option<String>,
    ) -> Result<Self, OutboxError> {
        let end = match end {
            Some(end) => end,
            None => start
                .checked_add(time::Duration::minutes(DEFAULT_APPOINTMENT_MINUTES))
                .ok_or(OutboxError::Invalid("start is too far in the future"))?,
        };
        if end <= start {
            return Err(OutboxError::Invalid("end must be after start"));
        }
        Ok(Self(Request::Appointment {
            start,
            end,
            confirmed,
            location,
            notes,
        }))
    }

    /// The cancellation of the appointment booked last.
    pub fn cancel_appointment() -> Self {
        Self(Request::CancelAppointment)
    }

    /// A message to the referrer; not blank.
    pub fn message(text: String) -> Result<Self, OutboxError> {
        if text.trim().is_empty() {
            return Err(OutboxError::Invalid("text must not be empty"));
        }
        Ok(Self(Request::Message { text }))
    }
}

/// An Ocean site updates go to.
struct Site {
    name: String,
    service_ids: Vec<ServiceId>,
    messages_url: String,
}

/// `ServiceRequest.status` of a referral the requester cancelled.
const REVOKED: &str = "revoked";

/// Attempts of [`Outbox::accept`] when other replicas keep changing the referral's Task state.
const MAX_RACES: usize = 8;

/// Accepts updates into the durable outbox, and replays or discards dead letters.
pub struct Outbox {
    store: Arc<dyn Store>,
    /// In name order.
    sites: Vec<Site>,
    transitions: Transitions,
    /// Serialises acceptance, replay and discard.
    accepting: Mutex<()>,
    /// Wakes the worker when an update is accepted or replayed.
    wake: Arc<Notify>,
}

impl Outbox {
    /// The outbox for `config`'s sites, whose `clients` say where messages are posted.
    pub fn new(
        config: &Config,
        clients: &HashMap<String, Arc<OceanClient>>,
        store: Arc<dyn Store>,
    ) -> Self {
        let sites = config
            .sites
            .iter()
            .map(|(name, site)| Site {
                name: name.clone(),
                service_ids: site.service_ids.clone(),
                messages_url: clients
                    .get(name)
                    .map(|c| c.messages_url())
                    .unwrap_or_default(),
            })
            .collect();
        Self {
            store,
            sites,
            transitions: Transitions::new(&config.outbox.transitions),
            accepting: Mutex::new(()),
            wake: Arc::default(),
        }
    }

    /// What the worker waits on between passes.
    pub fn wake(&self) -> Arc<Notify> {
        Arc::clone(&self.wake)
    }

    /// The site that answers for referrals filed under `service`: the first (by name) listing
    /// it, else the first that lists no service ids.
    /// The name of the site that answers for referrals filed under `service`, if any.
    pub fn site_name_for(&self, service: Option<&ServiceId>) -> Option<&str> {
        self.site_for(service).map(|s| s.name.as_str())
    }

    fn site_for(&self, service: Option<&ServiceId>) -> Option<&Site> {
        let listed = self
            .sites
            .iter()
            .find(|s| service.is_some_and(|id| s.service_ids.contains(id)));
        listed.or_else(|| self.sites.iter().find(|s| s.service_ids.is_empty()))
    }

    /// The referral's current Task status as the outbox decides from it, and the statuses the
    /// transition table lets a clinic move it to (what a status form should offer).
    pub async fn status_choices(
        &self,
        referral: &ReferralRecord,
    ) -> Result<(String, Vec<String>), OutboxError> {
        let task = self.store.task_state(&referral.referral).await?;
        let current = current_status(&task, referral);
        let next = self.transitions.next(&current);
        Ok((current, next))
    }

    /// Builds the message for `request` and stores it, pending, with the referral's new Task
    /// state. Returns the stored update (with its id) once it is on disk.
    ///
    /// # Errors
    /// [`OutboxError::NoSite`], [`OutboxError::NotAllowed`] (a status change the transition
    /// table refuses), [`OutboxError::NoAppointment`], [`OutboxError::Build`], or the store's.
    pub async fn accept(
        &self,
        referral: &ReferralRecord,
        request: UpdateRequest,
    ) -> Result<UpdateRecord, OutboxError> {
        let _one_at_a_time = self.accepting.lock().await;
        // Another replica may accept an update of the same referral between reading its Task
        // state and writing the new one: then this one is decided again from the new state.
        for _ in 0..MAX_RACES {
            if let Some(stored) = self.try_accept(referral, request.clone()).await? {
                self.wake.notify_one();
                tracing::info!(update = stored.id, referral = %referral.referral, kind = stored.kind.as_str(), event = %stored.event, "update accepted for Ocean");
                return Ok(stored);
            }
        }
        Err(StoreError::Busy {
            context: "other replicas keep changing this referral's Task state".into(),
        }
        .into())
    }

    /// One attempt of [`Outbox::accept`]: `None` when the referral's Task state changed
    /// between reading it and storing the update.
    async fn try_accept(
        &self,
        referral: &ReferralRecord,
        request: UpdateRequest,
    ) -> Result<Option<UpdateRecord>, OutboxError> {
        let reference = &referral.referral;
        let site = self
            .site_for(referral.service_id.as_ref())
            .ok_or_else(|| OutboxError::NoSite(reference.clone()))?;
        let mut task = self.store.task_state(reference).await?;
        let read = task.clone();
        let now = OffsetDateTime::now_utc();
        let endpoint = &site.messages_url;
        let pending = |kind, message: OutgoingMessage| {
            let (referral, site) = (reference.clone(), site.name.clone());
            UpdateRecord::pending(referral, site, kind, message.event, message.json, now)
        };
        // Only the requester can cancel a referral, and a revoked one takes no new status or
        // booking (a message can still be sent, and a booked appointment cancelled).
        if referral.summary.service_request_status.as_deref() == Some(REVOKED)
            && matches!(
                request.0,
                Request::Status { .. } | Request::Appointment { .. }
            )
        {
            return Err(OutboxError::Revoked(reference.clone()));
        }
        let update = match request.0 {
            Request::Status {
                status,
                reason,
                description,
            } => {
                let current = current_status(&task, referral);
                if !self.transitions.allows(&current, &status) {
                    return Err(OutboxError::NotAllowed {
                        referral: reference.clone(),
                        from: current,
                        to: status,
                    });
                }
                if !fhir_check::is_task_status(&status) {
                    return Err(OutboxError::NotActionable);
                }
                // Ocean's own Task for the referral, once its messages carried one, is the Task
                // to update (Ocean refuses a Task id it does not know); else the relay's own,
                // created by its first update.
                let oceans = referral.summary.task_id.clone();
                let first = !task.task_sent && oceans.is_none();
                let task_id = match oceans {
                    Some(id) => task.task_id.insert(id).clone(),
                    None => task
                        .task_id
                        .get_or_insert_with(|| uuid::Uuid::new_v4().to_string())
                        .clone(),
                };
                let message = task_message(
                    reference,
                    &TaskUpdate {
                        task_id: &task_id,
                        status: &status,
                        reason: reason.as_deref(),
                        description: description.as_deref(),
                        first,
                    },
                    endpoint,
                )?;
                task.task_sent = true;
                task.status = Some(status.clone());
                task.status_set_at = Some(now);
                UpdateRecord {
                    task_status: Some(status),
                    task_id: Some(task_id),
                    ..pending(UpdateKind::Status, message)
                }
            }
            Request::Appointment {
                start,
                end,
                confirmed,
                location,
                notes,
            } => {
                let slot = AppointmentSlot {
                    id: uuid::Uuid::new_v4().to_string(),
                    start,
                    end,
                };
                let message = appointment_message(
                    reference,
                    &AppointmentUpdate {
                        appointment_id: &slot.id,
                        start,
                        end,
                        confirmed,
                        location: location.as_deref(),
                        notes: notes.as_deref(),
                        cancelled: false,
                    },
                    endpoint,
                )?;
                task.set_appointment(Some(&slot));
                UpdateRecord {
                    appointment: Some(slot),
                    ..pending(UpdateKind::Appointment, message)
                }
            }
            Request::CancelAppointment => {
                let slot = task
                    .appointment()
                    .ok_or_else(|| OutboxError::NoAppointment(reference.clone()))?;
                let message = appointment_message(
                    reference,
                    &AppointmentUpdate {
                        appointment_id: &slot.id,
                        start: slot.start,
                        end: slot.end,
                        confirmed: false,
                        location: None,
                        notes: None,
                        cancelled: true,
                    },
                    endpoint,
                )?;
                task.set_appointment(None);
                UpdateRecord {
                    appointment: Some(slot),
                    ..pending(UpdateKind::CancelAppointment, message)
                }
            }
            Request::Message { text } => {
                let id = uuid::Uuid::new_v4().to_string();
                let message = communication_message(reference, &id, &text, endpoint)?;
                pending(UpdateKind::Message, message)
            }
        };
        Ok(self.store.enqueue_update(update, task, Some(&read)).await?)
    }

    /// Makes dead letter `id` pending again, its retry horizon starting over, and records
    /// `UPDATE_REPLAYED` for `actor` in the audit log.
    ///
    /// # Errors
    /// [`OutboxError::UnknownUpdate`], [`OutboxError::NotDead`], or the store's.
    pub async fn replay(&self, id: u64, actor: &str) -> Result<UpdateRecord, OutboxError> {
        let _one_at_a_time = self.accepting.lock().await;
        let mut update = self.dead_letter(id, "replayed").await?;
        let now = OffsetDateTime::now_utc();
        update.state = UpdateState::Pending;
        update.next_attempt_at = now;
        update.created_at = now;
        // Compare-and-set: a second replay (a double click, another replica) finds it pending.
        let saved = self
            .store
            .save_message(&update.clone().into_message(), UpdateState::Dead)
            .await?;
        if !saved {
            return Err(OutboxError::NotDead {
                id,
                verb: "replayed",
            });
        }
        self.audit("UPDATE_REPLAYED", actor, &update).await?;
        self.wake.notify_one();
        tracing::info!(update = update.id, "dead letter replayed");
        Ok(update)
    }

    /// Gives up on dead letter `id`: it stays on record, discarded, and the referral's later
    /// updates go out. Ocean never received it, so the referral's Task state is rebuilt from
    /// the updates that remain. Records `UPDATE_DISCARDED` for `actor` in the audit log.
    ///
    /// # Errors
    /// [`OutboxError::UnknownUpdate`], [`OutboxError::NotDead`], or the store's.
    pub async fn discard(&self, id: u64, actor: &str) -> Result<UpdateRecord, OutboxError> {
        let _one_at_a_time = self.accepting.lock().await;
        let mut update = self.dead_letter(id, "discarded").await?;
        update.state = UpdateState::Discarded;
        // Rebuilt again when another replica changes the referral's updates meanwhile.
        let mut discarded = false;
        for _ in 0..MAX_RACES {
            let previous = self.store.task_state(&update.referral).await?;
            let updates =
                crate::store::referral_updates(self.store.as_ref(), &update.referral).await?;
            let task = task_state(
                previous.task_id.clone(),
                updates
                    .iter()
                    .filter(|u| u.id != update.id && u.state != UpdateState::Discarded),
            );
            if self
                .store
                .discard_update(&update, task, Some(&previous))
                .await?
            {
                discarded = true;
                break;
            }
            // Discarded or replayed meanwhile, or the Task state changed: look again.
            self.dead_letter(id, "discarded").await?;
        }
        if !discarded {
            return Err(StoreError::Busy {
                context: "other replicas keep changing this referral's Task state".into(),
            }
            .into());
        }
        self.audit("UPDATE_DISCARDED", actor, &update).await?;
        self.wake.notify_one();
        tracing::info!(update = update.id, "dead letter discarded");
        Ok(update)
    }

    async fn dead_letter(&self, id: u64, verb: &'static str) -> Result<UpdateRecord, OutboxError> {
        let update = crate::store::update(self.store.as_ref(), id)
            .await?
            .ok_or(OutboxError::UnknownUpdate(id))?;
        if update.state != UpdateState::Dead {
            return Err(OutboxError::NotDead { id, verb });
        }
        Ok(update)
    }

    async fn audit(
        &self,
        action: &str,
        actor: &str,
        update: &UpdateRecord,
    ) -> Result<(), StoreError> {
        self.store
            .audit(
                action,
                actor,
                serde_json::json!({"update": update.id, "referral": update.referral.as_str()}),
            )
            .await
            .map(drop)
    }
}

/// The referral's current Task status: `revoked` once the requester revoked the referral (the
/// transition table has no way out of it), else the newer of what the relay last sent and what
/// Ocean last said (a referral can also be declined or reopened in Ocean's own screens);
/// `requested` when neither said anything.
fn current_status(task: &TaskState, referral: &ReferralRecord) -> String {
    if referral.summary.service_request_status.as_deref() == Some(REVOKED) {
        return REVOKED.into();
    }
    let ours_is_newer = task
        .status_set_at
        .is_some_and(|at| at >= referral.modified_at);
    let current = if ours_is_newer {
        task.status.clone()
    } else {
        referral.summary.task_status.clone().or(task.status.clone())
    };
    current.unwrap_or_else(|| "requested".into())
}

/// The Task state a referral's `updates` (in the order they were accepted) leave, for a Task
/// with id `task_id` (the one already chosen, if any).
///
/// Updates stored by builds that did not record the appointment of an appointment update leave
/// no current appointment.
pub fn task_state<'a>(
    task_id: Option<String>,
    updates: impl IntoIterator<Item = &'a UpdateRecord>,
) -> TaskState {
    let mut task = TaskState {
        task_id,
        ..TaskState::default()
    };
    for update in updates {
        match update.kind {
            UpdateKind::Status => {
                task.status.clone_from(&update.task_status);
                task.status_set_at = Some(update.created_at);
                task.task_sent = true;
                if update.task_id.is_some() {
                    task.task_id.clone_from(&update.task_id);
                }
            }
            UpdateKind::Appointment => task.set_appointment(update.appointment.as_ref()),
            UpdateKind::CancelAppointment => task.set_appointment(None),
            UpdateKind::Message => {}
        }
    }
    task
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ig::OutboundEvent;

    fn update(id: u64, kind: UpdateKind) -> UpdateRecord {
        let at = OffsetDateTime::from_unix_timestamp(1_700_000_000 + i64::try_from(id).unwrap())
            .unwrap();
        let referral = ReferralRef::parse("ref-1").unwrap();
        let event = OutboundEvent::NotifyUpdateProcessRequest;
        UpdateRecord {
            id,
            state: UpdateState::Delivered,
            ..UpdateRecord::pending(referral, "main".into(), kind, event, "{}".into(), at)
        }
    }

    fn status(id: u64, status: &str) -> UpdateRecord {
        UpdateRecord {
            task_status: Some(status.into()),
            task_id: Some("task-1".into()),
            ..update(id, UpdateKind::Status)
        }
    }

    fn booking(id: u64, slot: &str) -> UpdateRecord {
        let start = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        UpdateRecord {
            appointment: Some(AppointmentSlot {
                id: slot.into(),
                start,
                end: start + time::Duration::minutes(30),
            }),
            ..update(id, UpdateKind::Appointment)
        }
    }

    #[test]
    fn the_task_state_follows_the_updates_in_order() {
        let updates = [
            status(1, "accepted"),
            booking(2, "a1"),
            update(3, UpdateKind::Message),
            booking(4, "a2"),
            status(5, "in-progress"),
        ];
        let task = task_state(None, &updates);
        assert_eq!(task.status.as_deref(), Some("in-progress"));
        assert_eq!(task.status_set_at, Some(updates[4].created_at));
        assert!(task.task_sent);
        assert_eq!(task.task_id.as_deref(), Some("task-1"));
        assert_eq!(task.appointment(), updates[3].appointment);
    }

    #[test]
    fn a_cancellation_leaves_no_appointment_and_nothing_leaves_the_default() {
        let updates = [booking(1, "a1"), update(2, UpdateKind::CancelAppointment)];
        let task = task_state(Some("task-0".into()), &updates);
        assert_eq!(task.appointment(), None);
        assert!(!task.task_sent);
        assert_eq!(task.task_id.as_deref(), Some("task-0"));
        assert_eq!(task_state(None, &[]), TaskState::default());
    }

    #[test]
    fn requests_are_checked_when_made() {
        assert!(matches!(
            UpdateRequest::status("completed".into(), None, None),
            Err(OutboxError::NotActionable)
        ));
        assert!(UpdateRequest::status("accepted".into(), None, None).is_ok());
        assert!(matches!(
            UpdateRequest::message(" \n".into()),
            Err(OutboxError::Invalid(_))
        ));
        let start = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        assert!(matches!(
            UpdateRequest::appointment(start, Some(start), false, None, None),
            Err(OutboxError::Invalid("end must be after start"))
        ));
        let Ok(UpdateRequest(Request::Appointment { end, .. })) =
            UpdateRequest::appointment(start, None, false, None, None)
        else {
            panic!("an appointment without an end is accepted");
        };
        assert_eq!(
            end - start,
            time::Duration::minutes(DEFAULT_APPOINTMENT_MINUTES)
        );
    }
}
