//! Messages the relay sends to Ocean: a message Bundle with a MessageHeader and one focus
//! resource (Task, Appointment or Communication), built with fhir-sdk's types so every required
//! element and code is checked by construction, and serialised as R4 JSON.

use fhir_sdk::r4b::codes::{
    AppointmentStatus, BundleType, EventStatus, ParticipationStatus, TaskIntent, TaskStatus,
};
use fhir_sdk::r4b::resources::{
    Appointment, AppointmentParticipant, Bundle, BundleEntry, Communication, CommunicationPayload,
    CommunicationPayloadContent, MessageHeader, MessageHeaderDestination, MessageHeaderEvent,
    MessageHeaderSource, Resource, Task,
};
use fhir_sdk::r4b::types::{CodeableConcept, Coding, Extension, ExtensionValue, Meta, Reference};
use fhir_sdk::{DateTime, Instant};
use time::OffsetDateTime;

use crate::domain::ReferralRef;
use crate::ig::{
    EVENT_SYSTEM, EXT_ID_MESSAGE_HEADER, MESSAGE_HEADER_PROFILE, OutboundEvent, extension_url,
};

/// Why a message could not be built (a value fhir-sdk refuses).
#[derive(Debug, thiserror::Error)]
#[error("cannot build the FHIR message: {0}")]
pub struct BuildError(String);

fn err(e: impl std::fmt::Display) -> BuildError {
    BuildError(e.to_string())
}

/// A built message: its event code and its JSON.
#[derive(Debug, Clone)]
pub struct OutgoingMessage {
    pub event: OutboundEvent,
    pub json: String,
}

/// A Task status change. The first Task of a referral is `notify-add-process-request`, later
/// ones `notify-update-process-request`.
pub struct TaskUpdate<'a> {
    pub task_id: &'a str,
    pub status: TaskStatus,
    pub reason: Option<&'a str>,
    pub description: Option<&'a str>,
    pub first: bool,
}

/// A booked (or cancelled) appointment.
pub struct AppointmentUpdate<'a> {
    pub appointment_id: &'a str,
    pub start: OffsetDateTime,
    pub end: OffsetDateTime,
    pub confirmed: bool,
    pub location: Option<&'a str>,
    pub notes: Option<&'a str>,
    pub cancelled: bool,
}

fn service_request(referral: &ReferralRef) -> Result<Reference, BuildError> {
    Reference::builder()
        .reference(format!("ServiceRequest/{referral}"))
        .build()
        .map_err(err)
}

fn text(value: &str) -> Result<CodeableConcept, BuildError> {
    CodeableConcept::builder()
        .text(value.to_owned())
        .build()
        .map_err(err)
}

pub fn task_message(
    referral: &ReferralRef,
    update: &TaskUpdate<'_>,
    ocean_endpoint: &str,
) -> Result<OutgoingMessage, BuildError> {
    let now = OffsetDateTime::now_utc();
    let mut task = Task::builder()
        .id(update.task_id.to_owned())
        .status(update.status)
        .intent("order".parse::<TaskIntent>().map_err(err)?)
        .code(
            CodeableConcept::builder()
                .coding(vec![Some(
                    Coding::builder()
                        .code("process-request".to_owned())
                        .build()
                        .map_err(err)?,
                )])
                .build()
                .map_err(err)?,
        )
        .based_on(vec![Some(service_request(referral)?)])
        .authored_on(DateTime::DateTime(Instant(now)))
        .last_modified(DateTime::DateTime(Instant(now)));
    if let Some(reason) = update.reason {
        task = task.status_reason(text(reason)?);
    }
    if let Some(description) = update.description {
        task = task.description(description.to_owned());
    }
    let event = if update.first {
        OutboundEvent::NotifyAddProcessRequest
    } else {
        OutboundEvent::NotifyUpdateProcessRequest
    };
    let task = Resource::Task(task.build().map_err(err)?);
    message(referral, event, task, update.task_id, ocean_endpoint)
}

pub fn appointment_message(
    referral: &ReferralRef,
    update: &AppointmentUpdate<'_>,
    ocean_endpoint: &str,
) -> Result<OutgoingMessage, BuildError> {
    let participant_status = if update.confirmed {
        ParticipationStatus::Accepted
    } else {
        ParticipationStatus::Tentative
    };
    // R4 app-1: a participant names a type or an actor. The clinic is the performer.
    let mut participant = AppointmentParticipant::builder()
        .status(participant_status)
        .r#type(vec![Some(
            CodeableConcept::builder()
                .coding(vec![Some(
                    Coding::builder()
                        .system(
                            "http://terminology.hl7.org/CodeSystem/v3-ParticipationType".to_owned(),
                        )
                        .code("PPRF".to_owned())
                        .display("primary performer".to_owned())
                        .build()
                        .map_err(err)?,
                )])
                .build()
                .map_err(err)?,
        )]);
    if let Some(location) = update.location {
        participant = participant.actor(
            Reference::builder()
                .display(location.to_owned())
                .r#type("Location".to_owned())
                .build()
                .map_err(err)?,
        );
    }
    let status = if update.cancelled {
        AppointmentStatus::Cancelled
    } else {
        AppointmentStatus::Booked
    };
    let mut appointment = Appointment::builder()
        .id(update.appointment_id.to_owned())
        .status(status)
        .start(Instant(update.start))
        .end(Instant(update.end))
        .based_on(vec![Some(service_request(referral)?)])
        .participant(vec![Some(participant.build().map_err(err)?)]);
    if let Some(notes) = update.notes {
        appointment = appointment.comment(notes.to_owned());
    }
    let event = if update.cancelled {
        OutboundEvent::NotifyUpdateAppointment
    } else {
        OutboundEvent::NotifyAddAppointment
    };
    let appointment = Resource::Appointment(appointment.build().map_err(err)?);
    message(
        referral,
        event,
        appointment,
        update.appointment_id,
        ocean_endpoint,
    )
}

pub fn communication_message(
    referral: &ReferralRef,
    communication_id: &str,
    body: &str,
    ocean_endpoint: &str,
) -> Result<OutgoingMessage, BuildError> {
    let communication = Communication::builder()
        .id(communication_id.to_owned())
        .status(EventStatus::Completed)
        .based_on(vec![Some(service_request(referral)?)])
        .sent(DateTime::DateTime(Instant(OffsetDateTime::now_utc())))
        .payload(vec![Some(
            CommunicationPayload::builder()
                .content(CommunicationPayloadContent::String(body.to_owned()))
                .build()
                .map_err(err)?,
        )])
        .build()
        .map_err(err)?;
    message(
        referral,
        OutboundEvent::SendCommunicationFromProvider,
        Resource::Communication(communication),
        communication_id,
        ocean_endpoint,
    )
}

/// Wraps `focus` in a message Bundle with Ocean's MessageHeader.
fn message(
    referral: &ReferralRef,
    event: OutboundEvent,
    focus: Resource,
    focus_id: &str,
    ocean_endpoint: &str,
) -> Result<OutgoingMessage, BuildError> {
    let header_id = uuid::Uuid::new_v4().to_string();
    let focus_url = format!("urn:uuid:{focus_id}");
    let header = MessageHeader::builder()
        .id(header_id.clone())
        .meta(
            Meta::builder()
                .profile(vec![Some(MESSAGE_HEADER_PROFILE.to_owned())])
                .build()
                .map_err(err)?,
        )
        .extension(vec![
            Extension::builder()
                .url(extension_url(EXT_ID_MESSAGE_HEADER))
                .value(ExtensionValue::String(referral.to_string()))
                .build()
                .map_err(err)?,
        ])
        .event(MessageHeaderEvent::Coding(
            Coding::builder()
                .system(EVENT_SYSTEM.to_owned())
                .code(event.code().to_owned())
                .build()
                .map_err(err)?,
        ))
        .destination(vec![Some(
            MessageHeaderDestination::builder()
                .endpoint(ocean_endpoint.to_owned())
                .build()
                .map_err(err)?,
        )])
        .source(
            MessageHeaderSource::builder()
                .name("referral-relay".to_owned())
                .software("referral-relay".to_owned())
                .version(env!("CARGO_PKG_VERSION").to_owned())
                .endpoint("urn:referral-relay".to_owned())
                .build()
                .map_err(err)?,
        )
        .focus(vec![Some(
            Reference::builder()
                .reference(focus_url.clone())
                .build()
                .map_err(err)?,
        )])
        .build()
        .map_err(err)?;
    let entry = |url: String, resource: Resource| {
        BundleEntry::builder()
            .full_url(url)
            .resource(resource)
            .build()
            .map_err(err)
    };
    let bundle = Bundle::builder()
        .id(uuid::Uuid::new_v4().to_string())
        .r#type(BundleType::Message)
        .timestamp(Instant(OffsetDateTime::now_utc()))
        .entry(vec![
            Some(entry(
                format!("urn:uuid:{header_id}"),
                Resource::MessageHeader(header),
            )?),
            Some(entry(focus_url, focus)?),
        ])
        .build()
        .map_err(err)?;
    let json = serde_json::to_string(&bundle).map_err(err)?;
    Ok(OutgoingMessage { event, json })
}
