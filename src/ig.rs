//! The vocabulary of Ontario's eReferral implementation guide as Ocean uses it: message event
//! codes, extension and identifier-system URLs, profiles. One place, shared by the FHIR reader
//! and writer, the CapabilityStatement and the records that name an event.

use serde::{Deserialize, Serialize};

/// CodeSystem of the message event codes (`MessageHeader.eventCoding.system`).
pub const EVENT_SYSTEM: &str = "https://ehealthontario.ca/fhir/CodeSystem/message-event-code";

/// The MessageDefinition of eReferral and eConsult messages, which the relay receives.
pub const MESSAGE_DEFINITION: &str =
    "http://ehealthontario.ca/fhir/MessageDefinition/ereferral-econsult";

/// The event codes of the messages Ocean sends that the relay knows (others are stored too,
/// unless an integration lists the codes it accepts).
pub const RECEIVED_EVENTS: &[&str] = &[
    "add-service-request",
    "notify-update-service-request",
    "revoke-service-request",
    "notify-data-correction",
    "notify-add-process-request",
    "notify-update-process-request",
    "notify-add-appointment",
    "notify-update-appointment",
    "send-communication-from-requester",
    "send-communication-from-provider",
    "send-communication-to-provider",
    "notify-update-status",
    "update-patient-data",
];

/// Where the guide's StructureDefinitions (profiles and extensions) live.
pub const STRUCTURE_DEFINITIONS: &str = "http://ehealthontario.ca/fhir/StructureDefinition/";

/// The profile of the MessageHeader of the messages the relay sends.
pub const MESSAGE_HEADER_PROFILE: &str =
    "http://ehealthontario.ca/fhir/StructureDefinition/ca-on-eReferral-profile-MessageHeader|1.0.1";

/// The v0.10 MessageHeader extension holding the referral reference as a string (the relay
/// sends it too). Extensions are named by the last segment of their URL.
pub const EXT_ID_MESSAGE_HEADER: &str = "ext-id-message-header";
/// The v0.11 MessageHeader extension holding the referral reference as an Identifier.
pub const EXT_REFERRAL_IDENTIFIER: &str = "ext-referral-identifier";

/// Whether extension `url` is the one named `name`: its last path segment, whatever the scheme
/// and host before it (senders vary them).
pub fn is_extension(url: &str, name: &str) -> bool {
    url.strip_suffix(name)
        .is_some_and(|head| head.ends_with('/'))
}

/// The full URL of the extension named `name`, as the relay writes it.
pub fn extension_url(name: &str) -> String {
    format!("{STRUCTURE_DEFINITIONS}{name}")
}

/// Identifier systems live on each Ocean host (`https://{host}/NamingSystem/...`), so they are
/// matched by how they end. The referral reference:
pub const SYS_EREFERRAL_REFERENCE: &str = "/id-ereferral-reference";
/// A directory listing (the target of a forward).
pub const SYS_REFERRAL_TARGET: &str = "/id-referral-target-reference";
/// The External Service ID of a directory listing.
pub const SYS_EXTERNAL_SERVICE: &str = "/id-referral-target-external-service";
/// SNOMED CT, the code system of a ServiceRequest's `category` (Ocean requires one on the
/// ServiceRequest of a forward).
pub const SNOMED_CT: &str = "http://snomed.info/sct";

/// Ocean's extension on a Task that takes the referrer's browser to a page of the receiver's
/// (`valueUri`), seen on Tasks its own clients send.
pub const EXT_THIRD_PARTY_REDIRECT: &str =
    "https://ocean.cognisantmd.com/ext-ocean-third-party-redirect-url";

/// Part of Ontario's professional licence systems (`.../ca-on-license-physician`, ...).
pub const SYS_LICENCE: &str = "/ca-on-license-";

/// The message events the relay sends to Ocean, stored and shown by their codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OutboundEvent {
    /// The first Task update of a referral.
    NotifyAddProcessRequest,
    /// Every later Task update.
    NotifyUpdateProcessRequest,
    /// A booked appointment.
    NotifyAddAppointment,
    /// A changed (here: cancelled) appointment.
    NotifyUpdateAppointment,
    /// A message from the clinic to the referrer.
    SendCommunicationFromProvider,
    /// The referral's ServiceRequest, corrected (its service or category).
    NotifyDataCorrection,
}

impl OutboundEvent {
    /// The event code, as in `MessageHeader.eventCoding.code`.
    pub fn code(self) -> &'static str {
        match self {
            Self::NotifyAddProcessRequest => "notify-add-process-request",
            Self::NotifyUpdateProcessRequest => "notify-update-process-request",
            Self::NotifyAddAppointment => "notify-add-appointment",
            Self::NotifyUpdateAppointment => "notify-update-appointment",
            Self::SendCommunicationFromProvider => "send-communication-from-provider",
            Self::NotifyDataCorrection => "notify-data-correction",
        }
    }
}

impl std::fmt::Display for OutboundEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensions_are_named_by_their_last_segment() {
        let written = extension_url(EXT_ID_MESSAGE_HEADER);
        assert_eq!(
            written,
            "http://ehealthontario.ca/fhir/StructureDefinition/ext-id-message-header"
        );
        assert!(is_extension(&written, EXT_ID_MESSAGE_HEADER));
        assert!(is_extension(
            "https://other.host/x/ext-id-message-header",
            EXT_ID_MESSAGE_HEADER
        ));
        assert!(!is_extension(
            "ext-id-message-header",
            EXT_ID_MESSAGE_HEADER
        ));
        assert!(!is_extension(&written, EXT_REFERRAL_IDENTIFIER));
        assert!(!is_extension(
            "http://h/my-ext-id-message-header",
            EXT_ID_MESSAGE_HEADER
        ));
    }

    #[test]
    fn outbound_events_are_stored_by_their_codes() {
        for event in [
            OutboundEvent::NotifyAddProcessRequest,
            OutboundEvent::NotifyUpdateProcessRequest,
            OutboundEvent::NotifyAddAppointment,
            OutboundEvent::NotifyUpdateAppointment,
            OutboundEvent::SendCommunicationFromProvider,
            OutboundEvent::NotifyDataCorrection,
        ] {
            let stored = serde_json::to_string(&event).unwrap();
            assert_eq!(stored, format!("\"{}\"", event.code()));
            assert_eq!(
                serde_json::from_str::<OutboundEvent>(&stored).unwrap(),
                event
            );
        }
    }
}
