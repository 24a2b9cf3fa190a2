//! The vocabulary of Ontario's eReferral implementation guide as Ocean uses it: message event
//! codes, extension and identifier-system URLs, profiles. One place, shared by the FHIR reader
//! and writer, the CapabilityStatement and the records that name an event.

use serde::{Deserialize, Serialize};

/// CodeSystem of the message event codes (`MessageHeader.eventCoding.system`).
pub const EVENT_SYSTEM: &str = "https://ehealthontario.ca/fhir/CodeSystem/message-event-code";

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
    fn outbound_events_are_stored_by_their_codes() {
        for event in [
            OutboundEvent::NotifyAddProcessRequest,
            OutboundEvent::NotifyUpdateProcessRequest,
            OutboundEvent::NotifyAddAppointment,
            OutboundEvent::NotifyUpdateAppointment,
            OutboundEvent::SendCommunicationFromProvider,
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
