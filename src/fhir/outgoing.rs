//! Messages the relay sends to Ocean: a message Bundle with a MessageHeader and one focus
//! resource (Task, Appointment or Communication), as R4 JSON. Each resource is checked against
//! fhir-sdk's R4B type (through [`fhir_check`]) before it goes out, so a missing required element
//! or a code outside its value set is a [`BuildError`] here, never a message Ocean refuses.

use fhir_check::Kind;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::domain::ReferralRef;
use crate::ig::{
    EVENT_SYSTEM, EXT_ID_MESSAGE_HEADER, MESSAGE_HEADER_PROFILE, OutboundEvent, extension_url,
};

/// Why a message could not be built (a resource that does not conform to R4).
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
    /// An R4 Task status code (`http://hl7.org/fhir/task-status`).
    pub status: &'a str,
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

/// An R4 `instant`/`dateTime`: RFC 3339 in UTC.
fn instant(at: OffsetDateTime) -> Result<String, BuildError> {
    at.format(&Rfc3339).map_err(err)
}

fn service_request(referral: &ReferralRef) -> Value {
    json!({ "reference": format!("ServiceRequest/{referral}") })
}

/// Inserts `value` under `name` when there is one.
fn set(resource: &mut Value, name: &str, value: Option<Value>) {
    if let (Some(value), Some(object)) = (value, resource.as_object_mut()) {
        object.insert(name.to_owned(), value);
    }
}

/// `resource` once fhir-sdk's R4B type of `kind` takes it.
fn checked(kind: Kind, resource: Value) -> Result<Value, BuildError> {
    fhir_check::check(kind, &resource.to_string()).map_err(err)?;
    Ok(resource)
}

pub fn task_message(
    referral: &ReferralRef,
    update: &TaskUpdate<'_>,
    ocean_endpoint: &str,
) -> Result<OutgoingMessage, BuildError> {
    let now = instant(OffsetDateTime::now_utc())?;
    let mut task = json!({
        "resourceType": "Task",
        "id": update.task_id,
        "basedOn": [service_request(referral)],
        "status": update.status,
        "intent": "order",
        "code": { "coding": [{ "code": "process-request" }] },
        "authoredOn": now,
        "lastModified": now,
    });
    set(
        &mut task,
        "statusReason",
        update.reason.map(|r| json!({ "text": r })),
    );
    set(
        &mut task,
        "description",
        update.description.map(Value::from),
    );
    let event = if update.first {
        OutboundEvent::NotifyAddProcessRequest
    } else {
        OutboundEvent::NotifyUpdateProcessRequest
    };
    let task = checked(Kind::Task, task)?;
    message(referral, event, task, update.task_id, ocean_endpoint)
}

pub fn appointment_message(
    referral: &ReferralRef,
    update: &AppointmentUpdate<'_>,
    ocean_endpoint: &str,
) -> Result<OutgoingMessage, BuildError> {
    // R4 app-1: a participant names a type or an actor. The clinic is the performer.
    let mut participant = json!({
        "type": [{
            "coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                "code": "PPRF",
                "display": "primary performer",
            }],
        }],
        "status": if update.confirmed { "accepted" } else { "tentative" },
    });
    set(
        &mut participant,
        "actor",
        update
            .location
            .map(|l| json!({ "type": "Location", "display": l })),
    );
    let mut appointment = json!({
        "resourceType": "Appointment",
        "id": update.appointment_id,
        "status": if update.cancelled { "cancelled" } else { "booked" },
        "start": instant(update.start)?,
        "end": instant(update.end)?,
        "basedOn": [service_request(referral)],
        "participant": [participant],
    });
    set(&mut appointment, "comment", update.notes.map(Value::from));
    let event = if update.cancelled {
        OutboundEvent::NotifyUpdateAppointment
    } else {
        OutboundEvent::NotifyAddAppointment
    };
    let appointment = checked(Kind::Appointment, appointment)?;
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
    let communication = json!({
        "resourceType": "Communication",
        "id": communication_id,
        "basedOn": [service_request(referral)],
        "status": "completed",
        "sent": instant(OffsetDateTime::now_utc())?,
        "payload": [{ "contentString": body }],
    });
    message(
        referral,
        OutboundEvent::SendCommunicationFromProvider,
        checked(Kind::Communication, communication)?,
        communication_id,
        ocean_endpoint,
    )
}

/// Wraps `focus` (a checked resource) in a message Bundle with Ocean's MessageHeader.
fn message(
    referral: &ReferralRef,
    event: OutboundEvent,
    focus: Value,
    focus_id: &str,
    ocean_endpoint: &str,
) -> Result<OutgoingMessage, BuildError> {
    let header_id = uuid::Uuid::new_v4().to_string();
    // A resource the relay made has a UUID; Ocean's own Task keeps Ocean's id, and its full URL
    // is then its address on Ocean's FHIR base (a `urn:uuid:` must hold a UUID).
    let focus_url = if uuid::Uuid::parse_str(focus_id).is_ok() {
        format!("urn:uuid:{focus_id}")
    } else {
        let kind = focus["resourceType"].as_str().unwrap_or("Resource");
        let base = ocean_endpoint
            .strip_suffix("$process-messages")
            .unwrap_or("urn:referral-relay/");
        format!("{base}{kind}/{focus_id}")
    };
    let header = checked(
        Kind::MessageHeader,
        json!({
            "resourceType": "MessageHeader",
            "id": header_id,
            "meta": { "profile": [MESSAGE_HEADER_PROFILE] },
            "extension": [{
                "url": extension_url(EXT_ID_MESSAGE_HEADER),
                "valueString": referral.to_string(),
            }],
            "eventCoding": { "system": EVENT_SYSTEM, "code": event.code() },
            "destination": [{ "endpoint": ocean_endpoint }],
            "source": {
                "name": "referral-relay",
                "software": "referral-relay",
                "version": env!("CARGO_PKG_VERSION"),
                "endpoint": "urn:referral-relay",
            },
            "focus": [{ "reference": focus_url }],
        }),
    )?;
    // The Bundle itself: type `message`, the header first (R4 bdl-9, bdl-12).
    let bundle = json!({
        "resourceType": "Bundle",
        "id": uuid::Uuid::new_v4().to_string(),
        "type": "message",
        "timestamp": instant(OffsetDateTime::now_utc())?,
        "entry": [
            { "fullUrl": format!("urn:uuid:{header_id}"), "resource": header },
            { "fullUrl": focus_url, "resource": focus },
        ],
    });
    Ok(OutgoingMessage {
        event,
        json: bundle.to_string(),
    })
}
