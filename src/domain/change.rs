//! What Ocean's latest message about a referral was about: the [`Change`] code stored with each
//! summary and shown to users.

use serde::{Deserialize, Serialize};

/// What Ocean's latest message about a referral was about, read from its event code and what it
/// carried (Ocean's update messages do not say what changed). Serialised as the kebab-case code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Change {
    /// `add-service-request`: a new referral.
    NewReferral,
    /// `revoke-service-request`, or an update whose ServiceRequest is `revoked`: the sender
    /// cancelled the referral.
    Revoked,
    /// A Task came (`notify-add-process-request`, `notify-update-process-request`), or a generic
    /// update changed the Task's status, business status or id.
    TaskUpdated,
    /// An Appointment came (`notify-add-appointment`, `notify-update-appointment`, or a
    /// process-request event carrying an Appointment, as CA:eReC 1.1.0 sends it), or a generic
    /// update changed the Appointment's status or start.
    AppointmentUpdated,
    /// `notify-data-correction` or `update-patient-data`: earlier data was corrected.
    DataCorrected,
    /// `send-communication-from-requester` (or `send-communication-to-provider`).
    MessageFromRequester,
    /// `send-communication-from-provider`: a message from the receiving side (Ocean echoes
    /// the clinic's own messages too).
    MessageFromProvider,
    /// A generic update carrying a DocumentReference the referral did not have before, or
    /// saying so in `MessageHeader.reason`.
    AttachmentAdded,
    /// The referral was split: a new referral whose ServiceRequest `replaces` (or is `basedOn`)
    /// another, a generic update that first names such a referral, or `MessageHeader.reason`
    /// says so.
    ReferralSplit,
    /// A generic update (`notify-update-service-request`, `notify-update-status`) that changed
    /// none of the above.
    Updated,
    /// An event code the relay does not know (stored all the same).
    Other,
}

impl Change {
    /// The code as serialised (`attachment-added`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NewReferral => "new-referral",
            Self::Revoked => "revoked",
            Self::TaskUpdated => "task-updated",
            Self::AppointmentUpdated => "appointment-updated",
            Self::DataCorrected => "data-corrected",
            Self::MessageFromRequester => "message-from-requester",
            Self::MessageFromProvider => "message-from-provider",
            Self::AttachmentAdded => "attachment-added",
            Self::ReferralSplit => "referral-split",
            Self::Updated => "updated",
            Self::Other => "other",
        }
    }
}
