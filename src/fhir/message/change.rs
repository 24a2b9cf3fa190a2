//! What a message is about: the [`Change`] its event code and contents announce, and the reason
//! given when the referral is revoked.

use crate::domain::{Change, EventCode};
use crate::fhir::resources::HeaderView;

/// What a message is about, from its event code (the codes of Ontario's IG and of CA:eReC 1.1.0)
/// and what it carries: `revoked` whenever the ServiceRequest says so, a split or an added
/// attachment where `MessageHeader.reason` names one; a generic update is [`Change::Updated`]
/// until it is compared with what the referral already had.
pub(super) fn change_of(
    event: &EventCode,
    header: &HeaderView,
    service_request_status: Option<&str>,
    split: bool,
    (task, appointment): (bool, bool),
) -> Change {
    let reason_says = |word: &str| {
        header.reason_codes.iter().any(|c| c.contains(word))
            || header
                .reason_text
                .as_deref()
                .is_some_and(|t| t.to_ascii_lowercase().contains(word))
    };
    let code = event.as_str();
    if code == "revoke-service-request" || service_request_status == Some("revoked") {
        return Change::Revoked;
    }
    match code {
        // A referral split off another arrives as a new referral that replaces it.
        "add-service-request" if split => Change::ReferralSplit,
        "add-service-request" => Change::NewReferral,
        "notify-data-correction" | "update-patient-data" => Change::DataCorrected,
        "send-communication-from-requester" | "send-communication-to-provider" => {
            Change::MessageFromRequester
        }
        "send-communication-from-provider" => Change::MessageFromProvider,
        "notify-add-appointment" | "notify-update-appointment" => Change::AppointmentUpdated,
        "notify-add-process-request" | "notify-update-process-request" if appointment && !task => {
            Change::AppointmentUpdated
        }
        "notify-add-process-request" | "notify-update-process-request" => Change::TaskUpdated,
        // What a generic update changed is refined against the referral when it is stored
        // (`Summary::fill_from`): Ocean sends one for every change, carrying much unchanged.
        "notify-update-service-request" | "notify-update-status" => {
            if reason_says("split") {
                Change::ReferralSplit
            } else if reason_says("attachment") {
                Change::AttachmentAdded
            } else {
                Change::Updated
            }
        }
        _ => Change::Other,
    }
}

/// Why the referral was revoked: the ServiceRequest's `statusReason`, else, when the message
/// revokes it, the MessageHeader's reason text.
pub(super) fn revocation_reason(
    status_reason: Option<String>,
    change: &Change,
    header: &HeaderView,
) -> Option<String> {
    status_reason.or_else(|| {
        (*change == Change::Revoked)
            .then(|| header.reason_text.clone())
            .flatten()
    })
}
