//! What a clinic asks the outbox for (a Task status, an appointment booked or cancelled,
//! booking instructions, a message, a forward to another listing, a correction of the
//! referral's service or category), checked when it is made, and the FHIR message each becomes
//! once accepted.

use time::OffsetDateTime;

use super::super::transitions::{ACTIONABLE, Transitions};
use super::draft::{Draft, OutboxError, sent_status, task_id};
use super::restate::{NOT_FORWARDED_FROM, correction, forward};
use super::task::current_status;
use serde_json::{Value, json};

use crate::domain::RedirectUrl;
use crate::fhir::outgoing::{
    AppointmentUpdate, TaskUpdate, appointment_message, booking_instructions_message,
    communication_message, task_message,
};
use crate::ig::SNOMED_CT;
use crate::store::{AppointmentSlot, TaskState, UpdateKind, UpdateRecord};

/// An appointment booked without an end lasts this long (FHIR requires an end on a booked
/// one).
pub const DEFAULT_APPOINTMENT_MINUTES: i64 = 30;

/// An update a clinic asks for, checked on construction.
#[derive(Debug, Clone)]
pub struct UpdateRequest(Request);

#[derive(Debug, Clone)]
enum Request {
    Status {
        status: String,
        reason: Option<String>,
        description: Option<String>,
        redirect_url: Option<RedirectUrl>,
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
    BookingInstructions {
        text: String,
    },
    Forward {
        listing_ref: String,
        category: Option<Coding>,
        reason: Option<String>,
    },
    Correction {
        service: Option<Coding>,
        category: Option<Coding>,
    },
}

/// A code the clinic gives: a `code` in a `system` (SNOMED CT unless it names another), with
/// an optional `display`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coding {
    system: String,
    code: String,
    display: Option<String>,
}

impl Coding {
    /// A code of `system` (SNOMED CT when `None`); the code is not blank and holds no white
    /// space, as R4's `code` type says.
    pub fn new(
        system: Option<String>,
        code: String,
        display: Option<String>,
    ) -> Result<Self, OutboxError> {
        if !crate::fhir::is_fhir_code(&code) {
            return Err(OutboxError::BadText {
                field: "code",
                rule: "must be words separated by single spaces, without control characters",
            });
        }
        let system = system.unwrap_or_else(|| SNOMED_CT.to_owned());
        let absolute = reqwest::Url::parse(&system).is_ok() || system.starts_with("urn:");
        if !absolute || !crate::fhir::is_fhir_uri(&system) {
            return Err(OutboxError::BadText {
                field: "system",
                rule: "must be an absolute URI without white space",
            });
        }
        Ok(Self {
            system,
            code,
            display: optional_text("display", display)?,
        })
    }

    pub(super) fn to_fhir(&self) -> Value {
        let mut coding = json!({ "system": self.system, "code": self.code });
        if let Some(display) = &self.display {
            coding["display"] = Value::from(display.as_str());
        }
        coding
    }
}

/// `text` of `field`, when it is a FHIR `string`.
fn fhir_text(field: &'static str, text: String) -> Result<String, OutboxError> {
    if crate::fhir::is_fhir_string(&text) {
        Ok(text)
    } else {
        Err(OutboxError::BadText {
            field,
            rule: "must not hold control characters (other than tabs and line breaks)",
        })
    }
}

/// `text` of `field` when given, checked as [`fhir_text`]; blank is absent.
fn optional_text(field: &'static str, text: Option<String>) -> Result<Option<String>, OutboxError> {
    text.filter(|t| !t.trim().is_empty())
        .map(|t| fhir_text(field, t))
        .transpose()
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
            reason: optional_text("reason", reason)?,
            description: optional_text("description", description)?,
            redirect_url: None,
        }))
    }

    /// This status change, taking the referrer's browser to `url` (see [`RedirectUrl`]) in
    /// place of the site's default. Other updates carry no redirect: the call is refused.
    pub fn with_redirect(self, url: Option<String>) -> Result<Self, OutboxError> {
        let Some(url) = url else { return Ok(self) };
        let url = RedirectUrl::parse(&url).map_err(OutboxError::Redirect)?;
        match self.0 {
            Request::Status {
                status,
                reason,
                description,
                ..
            } => Ok(Self(Request::Status {
                status,
                reason,
                description,
                redirect_url: Some(url),
            })),
            _ => Err(OutboxError::Invalid(
                "only a status change carries a redirect_url",
            )),
        }
    }

    /// How the patient is to book, when there is no date yet; not blank.
    pub fn booking_instructions(text: String) -> Result<Self, OutboxError> {
        if text.trim().is_empty() {
            return Err(OutboxError::Invalid("text must not be empty"));
        }
        let text = fhir_text("text", text)?;
        Ok(Self(Request::BookingInstructions { text }))
    }

    /// The referral forwarded to the directory listing `listing_ref` (Ocean's reference of the
    /// listing), under `category` (taken from the referral's messages when `None`).
    pub fn forward(
        listing_ref: String,
        category: Option<Coding>,
        reason: Option<String>,
    ) -> Result<Self, OutboxError> {
        if !(1..=200).contains(&listing_ref.chars().count())
            || listing_ref
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(OutboxError::Invalid(
                "listing_ref must be 1 to 200 characters without white space",
            ));
        }
        Ok(Self(Request::Forward {
            listing_ref,
            category,
            reason: optional_text("reason", reason)?,
        }))
    }

    /// The referral's service (`ServiceRequest.code`) or category corrected; at least one.
    pub fn correction(
        service: Option<Coding>,
        category: Option<Coding>,
    ) -> Result<Self, OutboxError> {
        if service.is_none() && category.is_none() {
            return Err(OutboxError::Invalid(
                "give the corrected service, category or both",
            ));
        }
        Ok(Self(Request::Correction { service, category }))
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
            location: optional_text("location", location)?,
            notes: optional_text("notes", notes)?,
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
        let text = fhir_text("text", text)?;
        Ok(Self(Request::Message { text }))
    }
}

impl UpdateRequest {
    /// Whether a revoked referral refuses it (a status or a booking; a message can still be
    /// sent, and a booked appointment cancelled).
    pub(super) fn needs_a_live_referral(&self) -> bool {
        matches!(
            self.0,
            Request::Status { .. }
                | Request::Appointment { .. }
                | Request::BookingInstructions { .. }
                | Request::Forward { .. }
                | Request::Correction { .. }
        )
    }

    /// Whether its message restates the referral's ServiceRequest (read from the stored
    /// messages).
    pub(super) fn needs_the_original(&self) -> bool {
        matches!(self.0, Request::Forward { .. } | Request::Correction { .. })
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
                redirect_url,
            } => {
                let change = StatusChange {
                    status,
                    reason,
                    description,
                    redirect_url,
                };
                status_update(draft, task, transitions, change)
            }
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
            Request::BookingInstructions { text } => {
                let current = current_status(task, draft.referral);
                if NOT_FORWARDED_FROM.contains(&current.as_str()) {
                    return Err(OutboxError::NotAllowed {
                        referral: draft.referral.referral.clone(),
                        from: current,
                        to: "booking instructions".into(),
                    });
                }
                if draft.booked {
                    return Err(OutboxError::Booked(draft.referral.referral.clone()));
                }
                let id = uuid::Uuid::new_v4().to_string();
                let message = booking_instructions_message(
                    &draft.referral.referral,
                    &id,
                    &text,
                    draft.endpoint,
                )?;
                Ok(draft.pending(UpdateKind::BookingInstructions, message))
            }
            Request::Forward {
                listing_ref,
                category,
                reason,
            } => {
                let category = category.map(|c| c.to_fhir());
                forward(draft, task, &listing_ref, category, reason.as_deref())
            }
            Request::Correction { service, category } => correction(
                draft,
                service.map(|c| c.to_fhir()),
                category.map(|c| c.to_fhir()),
            ),
        }
    }
}

/// A Task status change as asked.
struct StatusChange {
    status: String,
    reason: Option<String>,
    description: Option<String>,
    redirect_url: Option<RedirectUrl>,
}

/// A Task status change, when the transition table allows it from the current status (and
/// `completed` also when the referral is booked: Ocean closes booked referrals as completed).
fn status_update(
    draft: &Draft<'_>,
    task: &mut TaskState,
    transitions: &Transitions,
    change: StatusChange,
) -> Result<UpdateRecord, OutboxError> {
    let StatusChange {
        status,
        reason,
        description,
        redirect_url,
    } = change;
    let current = current_status(task, draft.referral);
    if !transitions.allows(&current, &status, draft.booked) {
        return Err(OutboxError::NotAllowed {
            referral: draft.referral.referral.clone(),
            from: current,
            to: status,
        });
    }
    if !fhir_check::is_task_status(&status) {
        return Err(OutboxError::NotActionable);
    }
    // The site's redirect goes with the first Task message the relay sends for a referral
    // (whether Ocean's messages carried a Task or not).
    let redirect_url = redirect_url
        .as_ref()
        .or(draft.redirect_url.filter(|_| !task.task_sent))
        .map(RedirectUrl::as_str);
    let (task_id, first) = task_id(draft, task);
    let message = task_message(
        &draft.referral.referral,
        &TaskUpdate {
            task_id: &task_id,
            status: &status,
            reason: reason.as_deref(),
            description: description.as_deref(),
            first,
            redirect_url,
        },
        draft.endpoint,
    )?;
    Ok(UpdateRecord {
        task_status: Some(status.clone()),
        task_id: Some(task_id),
        ..sent_status(draft, task, &status, UpdateKind::Status, message)
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
            UpdateRequest::status("failed".into(), None, None),
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
