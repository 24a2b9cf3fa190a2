//! What every update is made from: the referral and site it goes to ([`Draft`]), the Task id
//! and status a Task message records, and why an update is refused ([`OutboxError`]). Shared
//! by the requests of [`request`](super::request) and the restatements of
//! [`restate`](super::restate).

use time::OffsetDateTime;

use super::super::transitions::ACTIONABLE;
use crate::domain::{RedirectError, RedirectUrl, ReferralRef};
use crate::fhir::message::OriginalRequest;
use crate::fhir::outgoing::{BuildError, OutgoingMessage};
use crate::store::{ReferralRecord, StoreError, TaskState, UpdateKind, UpdateRecord};

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
    /// when the request [needs it](super::UpdateRequest::needs_the_original).
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
