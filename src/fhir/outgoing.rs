//! Messages the relay sends to Ocean: a message Bundle with a MessageHeader and its focus
//! resource (Task, Appointment, Communication or ServiceRequest, and for a forward the new
//! ServiceRequest and listing the Task names), as R4 JSON. Each resource is checked against
//! fhir-sdk's R4B type (through [`fhir_check`]) before it goes out, so a missing required element
//! or a code outside its value set is a [`BuildError`] here, never a message Ocean refuses.

use fhir_check::Kind;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::domain::ReferralRef;
use crate::ig::{
    EVENT_SYSTEM, EXT_ID_MESSAGE_HEADER, EXT_THIRD_PARTY_REDIRECT, MESSAGE_HEADER_PROFILE,
    OutboundEvent, SYS_REFERRAL_TARGET, extension_url,
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
    /// Where Ocean takes the referrer's browser next (an absolute URL), as Ocean's
    /// third-party redirect extension on the Task.
    pub redirect_url: Option<&'a str>,
}

/// A referral forwarded to another directory listing: a Task `requested` whose `basedOn` is a
/// new ServiceRequest that `replaces` the referral's, its performer the listing.
pub struct ForwardUpdate<'a> {
    /// The referral's Task (as for a status change).
    pub task_id: &'a str,
    pub first: bool,
    /// The target listing's reference in Ocean (`id-referral-target-reference`).
    pub listing_ref: &'a str,
    /// The new ServiceRequest's category: a SNOMED CT Coding (`{system, code, display?}`).
    pub category: Value,
    /// The patient, as a Reference that holds outside the referral's own messages.
    pub subject: Value,
    /// Why it is forwarded (`Task.statusReason.text`).
    pub reason: Option<&'a str>,
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
    set(
        &mut task,
        "extension",
        update
            .redirect_url
            .map(|url| json!([{ "url": EXT_THIRD_PARTY_REDIRECT, "valueUri": url }])),
    );
    let event = task_event(update.first);
    let task = checked(Kind::Task, task)?;
    message(
        referral,
        event,
        task,
        update.task_id,
        ocean_endpoint,
        Vec::new(),
    )
}

/// The event of a Task message: the referral's first Task is added, later ones update it.
fn task_event(first: bool) -> OutboundEvent {
    if first {
        OutboundEvent::NotifyAddProcessRequest
    } else {
        OutboundEvent::NotifyUpdateProcessRequest
    }
}

/// Ocean's FHIR base (`{host}/svc/fhir/v1/`) from where it takes messages
/// (`{base}$process-messages`); a stand-in base when the endpoint is not of that form.
fn fhir_base(ocean_endpoint: &str) -> &str {
    ocean_endpoint
        .strip_suffix("$process-messages")
        .unwrap_or("urn:referral-relay/")
}

/// The identifier system of directory listings on the Ocean host of `ocean_endpoint`.
fn listing_system(ocean_endpoint: &str) -> String {
    format!(
        "{}NamingSystem{SYS_REFERRAL_TARGET}",
        fhir_base(ocean_endpoint)
    )
}

pub fn forward_message(
    referral: &ReferralRef,
    forward: &ForwardUpdate<'_>,
    ocean_endpoint: &str,
) -> Result<OutgoingMessage, BuildError> {
    let now = instant(OffsetDateTime::now_utc())?;
    let request_url = format!("urn:uuid:{}", uuid::Uuid::new_v4());
    let listing_url = format!("urn:uuid:{}", uuid::Uuid::new_v4());
    let listing = checked(
        Kind::PractitionerRole,
        json!({
            "resourceType": "PractitionerRole",
            "identifier": [{
                "system": listing_system(ocean_endpoint),
                "value": forward.listing_ref,
            }],
        }),
    )?;
    let request = checked(
        Kind::ServiceRequest,
        json!({
            "resourceType": "ServiceRequest",
            "replaces": [service_request(referral)],
            "status": "active",
            "intent": "order",
            "category": [{ "coding": [forward.category] }],
            "subject": forward.subject,
            "authoredOn": now,
            "performer": [{ "reference": listing_url }],
        }),
    )?;
    let mut task = json!({
        "resourceType": "Task",
        "id": forward.task_id,
        "basedOn": [{ "reference": request_url }],
        "status": "requested",
        "intent": "order",
        "code": { "coding": [{ "code": "process-request" }] },
        "authoredOn": now,
        "lastModified": now,
        "owner": { "reference": listing_url },
    });
    set(
        &mut task,
        "statusReason",
        forward.reason.map(|r| json!({ "text": r })),
    );
    let task = checked(Kind::Task, task)?;
    message(
        referral,
        task_event(forward.first),
        task,
        forward.task_id,
        ocean_endpoint,
        vec![(request_url, request), (listing_url, listing)],
    )
}

/// The referral's ServiceRequest, corrected: `request` is the whole resource as Ocean should
/// now hold it, its `id` the referral reference (which must be a FHIR id to be one).
pub fn correction_message(
    referral: &ReferralRef,
    request: Value,
    ocean_endpoint: &str,
) -> Result<OutgoingMessage, BuildError> {
    if !super::is_fhir_id(referral.as_str()) {
        return Err(BuildError(
            "the referral reference is not a FHIR id (1 to 64 letters, digits, '-' and '.'), so it cannot be its ServiceRequest's id".into(),
        ));
    }
    let request = checked(Kind::ServiceRequest, request)?;
    message(
        referral,
        OutboundEvent::NotifyDataCorrection,
        request,
        referral.as_str(),
        ocean_endpoint,
        Vec::new(),
    )
}

/// How the patient is to book when there is no date yet: a proposed Appointment whose
/// `description` and `patientInstruction` are `text`.
pub fn booking_instructions_message(
    referral: &ReferralRef,
    appointment_id: &str,
    text: &str,
    ocean_endpoint: &str,
) -> Result<OutgoingMessage, BuildError> {
    // R4 app-3: only a proposed (or cancelled) appointment may lack its times.
    let appointment = json!({
        "resourceType": "Appointment",
        "id": appointment_id,
        "status": "proposed",
        "description": text,
        "patientInstruction": text,
        "basedOn": [service_request(referral)],
        "participant": [performer("needs-action", None)],
    });
    message(
        referral,
        OutboundEvent::NotifyAddAppointment,
        checked(Kind::Appointment, appointment)?,
        appointment_id,
        ocean_endpoint,
        Vec::new(),
    )
}

/// The clinic as an Appointment's participant (R4 app-1: a participant names a type or an
/// actor), with its participation `status`, at `location` when given.
fn performer(status: &str, location: Option<&str>) -> Value {
    let mut participant = json!({
        "type": [{
            "coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                "code": "PPRF",
                "display": "primary performer",
            }],
        }],
        "status": status,
    });
    set(
        &mut participant,
        "actor",
        location.map(|l| json!({ "type": "Location", "display": l })),
    );
    participant
}

pub fn appointment_message(
    referral: &ReferralRef,
    update: &AppointmentUpdate<'_>,
    ocean_endpoint: &str,
) -> Result<OutgoingMessage, BuildError> {
    let participant = performer(
        if update.confirmed {
            "accepted"
        } else {
            "tentative"
        },
        update.location,
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
        Vec::new(),
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
        Vec::new(),
    )
}

/// Wraps `focus` (a checked resource) in a message Bundle with Ocean's MessageHeader, followed
/// by the `others` it references (full URL and checked resource).
fn message(
    referral: &ReferralRef,
    event: OutboundEvent,
    focus: Value,
    focus_id: &str,
    ocean_endpoint: &str,
    others: Vec<(String, Value)>,
) -> Result<OutgoingMessage, BuildError> {
    let header_id = uuid::Uuid::new_v4().to_string();
    // A resource the relay made has a UUID; Ocean's own Task keeps Ocean's id, and its full URL
    // is then its address on Ocean's FHIR base (a `urn:uuid:` must hold a UUID).
    let focus_url = if uuid::Uuid::parse_str(focus_id).is_ok() {
        format!("urn:uuid:{focus_id}")
    } else {
        let kind = focus["resourceType"].as_str().unwrap_or("Resource");
        format!("{}{kind}/{focus_id}", fhir_base(ocean_endpoint))
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
    let mut entries = vec![
        json!({ "fullUrl": format!("urn:uuid:{header_id}"), "resource": header }),
        json!({ "fullUrl": focus_url, "resource": focus }),
    ];
    entries.extend(
        others
            .into_iter()
            .map(|(url, resource)| json!({ "fullUrl": url, "resource": resource })),
    );
    let bundle = json!({
        "resourceType": "Bundle",
        "id": uuid::Uuid::new_v4().to_string(),
        "type": "message",
        "timestamp": instant(OffsetDateTime::now_utc())?,
        "entry": entries,
    });
    Ok(OutgoingMessage {
        event,
        json: bundle.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENDPOINT: &str = "https://ocean.example/svc/fhir/v1/$process-messages";

    fn request(id: &str) -> Value {
        json!({
            "resourceType": "ServiceRequest", "id": id, "status": "active", "intent": "order",
            "subject": {"reference": "Patient/p-1"},
        })
    }

    #[test]
    fn a_correction_names_the_referrals_service_request_at_oceans_address() {
        let referral = ReferralRef::parse("R-1.a").unwrap();
        let sent = correction_message(&referral, request("R-1.a"), ENDPOINT).unwrap();
        let bundle: Value = serde_json::from_str(&sent.json).unwrap();
        assert_eq!(sent.event, OutboundEvent::NotifyDataCorrection);
        assert_eq!(
            bundle["entry"][1]["fullUrl"],
            "https://ocean.example/svc/fhir/v1/ServiceRequest/R-1.a"
        );
        // A reference that cannot be a resource id cannot name the ServiceRequest.
        let odd = ReferralRef::parse("R_1").unwrap();
        let refused = correction_message(&odd, request("R_1"), ENDPOINT).unwrap_err();
        assert!(refused.to_string().contains("not a FHIR id"), "{refused}");
    }

    #[test]
    fn booking_instructions_are_a_proposed_appointment_without_times() {
        let referral = ReferralRef::parse("R-1").unwrap();
        let id = uuid::Uuid::new_v4().to_string();
        let sent = booking_instructions_message(&referral, &id, "Call us", ENDPOINT).unwrap();
        let bundle: Value = serde_json::from_str(&sent.json).unwrap();
        let appointment = &bundle["entry"][1]["resource"];
        assert_eq!(appointment["status"], "proposed");
        assert_eq!(appointment["patientInstruction"], "Call us");
        assert!(appointment.get("start").is_none());
        assert_eq!(sent.event, OutboundEvent::NotifyAddAppointment);
    }
}
