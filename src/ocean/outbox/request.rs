//! What a clinic asks the outbox for (a Task status, an appointment booked or cancelled,
//! booking instructions, a message, a forward to another listing, a correction of the
//! referral's service or category), checked when it is made, and the FHIR message each becomes
//! once accepted.

use time::OffsetDateTime;

use super::super::transitions::{ACTIONABLE, Transitions};
use super::restate::{NOT_FORWARDED_FROM, correction, forward};
use super::task::current_status;
use serde_json::{Value, json};

use crate::domain::{RedirectError, RedirectUrl, ReferralRef};
use crate::fhir::message::OriginalRequest;
use crate::fhir::outgoing::{
    AppointmentUpdate, BuildError, OutgoingMessage, TaskUpdate, appointment_message,
    booking_instructions_message, communication_message, task_message,
};
use crate::ig::SNOMED_CT;
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
    /// A field's text cannot go into the FHIR element it fills (R4's `string`, `code` or `uri`
    /// rules).
    #[error("{field} {rule}")]
    BadText {
        field: &'static str,
        rule: &'static str,
    },
    /// A `redirect_url` that is not a page to send a browser to.
    #[error("redirect_url {0}")]
    Redirect(RedirectError),
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
    /// Booking instructions for a referral with a booked appointment.
    #[error("referral {0} has a booked appointment: cancel it before sending booking instructions")]
    Booked(ReferralRef),
    /// A forward without a category, and none in SNOMED CT in the referral's stored messages
    /// (Ocean requires one on the new ServiceRequest).
    #[error(
        "referral {0} has no SNOMED CT category in its stored messages: give `category`, the SNOMED CT code of the forwarded referral's category"
    )]
    NoCategory(ReferralRef),
    /// A forward or correction restates the referral's ServiceRequest, but no stored message
    /// carries it (or none names the patient usably).
    #[error("no stored message of referral {referral} {what}")]
    NoServiceRequest {
        referral: ReferralRef,
        what: &'static str,
    },
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

/// What an accepted update is made for: the referral, the site it goes to (and where that site
/// takes messages), and when it was accepted.
pub(super) struct Draft<'a> {
    pub(super) referral: &'a ReferralRecord,
    pub(super) site: &'a str,
    pub(super) endpoint: &'a str,
    /// The site's redirect for a referral's first Task update.
    pub(super) redirect_url: Option<&'a RedirectUrl>,
    /// Whether the referral has a booked appointment now (see [`booked`](super::booked)).
    pub(super) booked: bool,
    /// The referral's ServiceRequest as its newest stored message carrying one has it, read
    /// when the request [needs it](UpdateRequest::needs_the_original).
    pub(super) original: Option<&'a OriginalRequest>,
    pub(super) now: OffsetDateTime,
}

impl Draft<'_> {
    /// The pending update of `kind` carrying `message`.
    pub(super) fn pending(&self, kind: UpdateKind, message: OutgoingMessage) -> UpdateRecord {
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
            } => forward(draft, task, &listing_ref, category, reason.as_deref()),
            Request::Correction { service, category } => correction(draft, service, category),
        }
    }
}

/// The id of the Task a Task message names, and whether it is the referral's first: Ocean's
/// own Task for the referral, once its messages carried one (Ocean refuses a Task id it does
/// not know), else the relay's own, created by its first Task message.
pub(super) fn task_id(draft: &Draft<'_>, task: &mut TaskState) -> (String, bool) {
    let oceans = draft.referral.summary.task_id.clone();
    let first = !task.task_sent && oceans.is_none();
    let id = match oceans {
        Some(id) => task.task_id.insert(id).clone(),
        None => task
            .task_id
            .get_or_insert_with(|| uuid::Uuid::new_v4().to_string())
            .clone(),
    };
    (id, first)
}

/// The pending update of `kind` carrying a Task message that leaves the Task at `status`,
/// recorded in `task`.
pub(super) fn sent_status(
    draft: &Draft<'_>,
    task: &mut TaskState,
    status: &str,
    kind: UpdateKind,
    message: OutgoingMessage,
) -> UpdateRecord {
    task.task_sent = true;
    task.status = Some(status.to_owned());
    task.status_set_at = Some(draft.now);
    draft.pending(kind, message)
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
