//! What a clinic asks the outbox for (a Task status, an appointment booked or cancelled, a
//! message), checked when it is made, and the FHIR message each becomes once accepted.

use time::OffsetDateTime;

use super::super::transitions::{ACTIONABLE, Transitions};
use super::task::current_status;
use crate::domain::ReferralRef;
use crate::fhir::outgoing::{
    AppointmentUpdate, BuildError, OutgoingMessage, TaskUpdate, appointment_message,
    communication_message, task_message,
};
use crate::store::{
    AppointmentSlot, ReferralRecord, StoreError, TaskState, UpdateKind, UpdateRecord,
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

/// What an accepted update is made for: the referral, the site it goes to (and where that site
/// takes messages), and when it was accepted.
pub(super) struct Draft<'a> {
    pub(super) referral: &'a ReferralRecord,
    pub(super) site: &'a str,
    pub(super) endpoint: &'a str,
    pub(super) now: OffsetDateTime,
}

impl Draft<'_> {
    /// The pending update of `kind` carrying `message`.
    fn pending(&self, kind: UpdateKind, message: OutgoingMessage) -> UpdateRecord {
        let referral = self.referral.referral.clone();
        UpdateRecord::pending(
            referral,
            self.site.to_owned(),
            kind,
            message.event,
            message.json,
            self.now,
        )
    }
}

impl UpdateRequest {
    /// Whether a revoked referral refuses it (a status or a booking; a message can still be
    /// sent, and a booked appointment cancelled).
    pub(super) fn needs_a_live_referral(&self) -> bool {
        matches!(self.0, Request::Status { .. } | Request::Appointment { .. })
    }

    /// The update this request becomes for `draft`, checked against the referral's Task state
    /// `task`, which it changes as the update will.
    pub(super) fn into_update(
        self,
        draft: &Draft<'_>,
        task: &mut TaskState,
        transitions: &Transitions,
    ) -> Result<UpdateRecord, OutboxError> {
        match self.0 {
            Request::Status {
                status,
                reason,
                description,
            } => status_update(draft, task, transitions, status, reason, description),
            Request::Appointment {
                start,
                end,
                confirmed,
                location,
                notes,
            } => {
                let booking = Booking {
                    start,
                    end,
                    confirmed,
                    location,
                    notes,
                };
                appointment_update(draft, task, booking)
            }
            Request::CancelAppointment => cancellation(draft, task),
            Request::Message { text } => {
                let id = uuid::Uuid::new_v4().to_string();
                let message =
                    communication_message(&draft.referral.referral, &id, &text, draft.endpoint)?;
                Ok(draft.pending(UpdateKind::Message, message))
            }
        }
    }
}

/// A Task status change, when the transition table allows it from the current status.
fn status_update(
    draft: &Draft<'_>,
    task: &mut TaskState,
    transitions: &Transitions,
    status: String,
    reason: Option<String>,
    description: Option<String>,
) -> Result<UpdateRecord, OutboxError> {
    let current = current_status(task, draft.referral);
    if !transitions.allows(&current, &status) {
        return Err(OutboxError::NotAllowed {
            referral: draft.referral.referral.clone(),
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
    let oceans = draft.referral.summary.task_id.clone();
    let first = !task.task_sent && oceans.is_none();
    let task_id = match oceans {
        Some(id) => task.task_id.insert(id).clone(),
        None => task
            .task_id
            .get_or_insert_with(|| uuid::Uuid::new_v4().to_string())
            .clone(),
    };
    let message = task_message(
        &draft.referral.referral,
        &TaskUpdate {
            task_id: &task_id,
            status: &status,
            reason: reason.as_deref(),
            description: description.as_deref(),
            first,
        },
        draft.endpoint,
    )?;
    task.task_sent = true;
    task.status = Some(status.clone());
    task.status_set_at = Some(draft.now);
    Ok(UpdateRecord {
        task_status: Some(status),
        task_id: Some(task_id),
        ..draft.pending(UpdateKind::Status, message)
    })
}

/// An appointment to book.
struct Booking {
    start: OffsetDateTime,
    end: OffsetDateTime,
    confirmed: bool,
    location: Option<String>,
    notes: Option<String>,
}

/// A booking: a new Appointment, which becomes the current one.
fn appointment_update(
    draft: &Draft<'_>,
    task: &mut TaskState,
    booking: Booking,
) -> Result<UpdateRecord, OutboxError> {
    let Booking {
        start,
        end,
        confirmed,
        location,
        notes,
    } = booking;
    let slot = AppointmentSlot {
        id: uuid::Uuid::new_v4().to_string(),
        start,
        end,
    };
    let message = appointment_message(
        &draft.referral.referral,
        &AppointmentUpdate {
            appointment_id: &slot.id,
            start,
            end,
            confirmed,
            location: location.as_deref(),
            notes: notes.as_deref(),
            cancelled: false,
        },
        draft.endpoint,
    )?;
    task.set_appointment(Some(&slot));
    Ok(UpdateRecord {
        appointment: Some(slot),
        ..draft.pending(UpdateKind::Appointment, message)
    })
}

/// The cancellation of the current appointment.
fn cancellation(draft: &Draft<'_>, task: &mut TaskState) -> Result<UpdateRecord, OutboxError> {
    let slot = task
        .appointment()
        .ok_or_else(|| OutboxError::NoAppointment(draft.referral.referral.clone()))?;
    let message = appointment_message(
        &draft.referral.referral,
        &AppointmentUpdate {
            appointment_id: &slot.id,
            start: slot.start,
            end: slot.end,
            confirmed: false,
            location: None,
            notes: None,
            cancelled: true,
        },
        draft.endpoint,
    )?;
    task.set_appointment(None);
    Ok(UpdateRecord {
        appointment: Some(slot),
        ..draft.pending(UpdateKind::CancelAppointment, message)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
