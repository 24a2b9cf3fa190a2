//! What a queued message that is an update for Ocean carries (see
//! [`crate::store::outbox::UpdateRecord`]), and the queue those messages wait in.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::ig::OutboundEvent;

/// The queue Ocean updates wait in (see [`crate::store::QueueStore`]); no destination can
/// have this name (theirs are `a-z`, `0-9`, `-` and `_`).
pub const OCEAN_QUEUE: &str = "ocean:";

/// What a queued message that is an Ocean update carries (see [`UpdateRecord`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OceanUpdate {
    pub site: String,
    pub kind: UpdateKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub appointment: Option<AppointmentSlot>,
    pub event: OutboundEvent,
    pub bundle: String,
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
    /// How to book, when there is no date yet (a proposed Appointment).
    BookingInstructions,
    /// The referral forwarded to another listing (a Task `requested` on a new ServiceRequest).
    Forward,
    /// The referral's service or category corrected (`notify-data-correction`).
    Correction,
}

impl UpdateKind {
    /// The name shown in the API and logs (`status`, `appointment`, `cancel-appointment`,
    /// `message`, `booking-instructions`, `forward`, `correction`), the same as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Status => "status",
            Self::Appointment => "appointment",
            Self::CancelAppointment => "cancel-appointment",
            Self::Message => "message",
            Self::BookingInstructions => "booking-instructions",
            Self::Forward => "forward",
            Self::Correction => "correction",
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
