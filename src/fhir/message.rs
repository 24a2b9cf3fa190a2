//! Reads an Ocean message Bundle: checks that it can be filed and extracts what the relay indexes.
//!
//! One lenient reader per resource, over the lean JSON reader in [`super::json`]: anything RFC
//! 8259 allows is taken, and a field of an unexpected shape is simply absent. fhir-sdk's R4B
//! types (identical to R4 on the wire for the resources involved) then serve as a conformance
//! check of the resources read: what they refuse is recorded as a problem on the stored version,
//! never a reason to refuse the delivery. Only a Bundle that cannot be filed at all (no
//! MessageHeader, no event code, no referral reference) is refused, saying which field.

use std::borrow::Cow;

use fhir_check::Kind;

pub use super::bundle::ParseError;
use super::bundle::{Bundle, conform, id_of_full_url};
use super::resources::{
    HeaderView, appointment_view, communication_view, document_link, first_named, header_view,
    patient_view, referrer, role_view, server_id, service_request_view, task_view,
};
use crate::domain::{Carried, Change, EventCode, ReferralRef, ServiceId, Summary};

/// What the relay needs from one message Bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedMessage {
    pub event: EventCode,
    pub referral: ReferralRef,
    /// The External Service ID the message names, if it names a valid one.
    pub service_id: Option<ServiceId>,
    /// `MessageHeader.id`, or the id in its `fullUrl` when the resource has none.
    pub message_header_id: Option<String>,
    pub bundle_id: Option<String>,
    pub timestamp: Option<String>,
    /// When the message was made, by its own word: `Bundle.timestamp`, else the MessageHeader's
    /// `meta.lastUpdated`, else the ServiceRequest's (RFC 3339 date-times; unreadable ones are
    /// skipped). Decides which of two versions is current when they arrive out of order.
    pub sent_at: Option<time::OffsetDateTime>,
    pub summary: Summary,
    /// Resources that do not conform to FHIR R4 (their fields were still read); kept on the
    /// stored version. They name the resource and the rule broken, with quoted payload values
    /// removed.
    pub problems: Vec<String>,
}

/// The outcome of reading a message Bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// A message with an accepted event code, ready to store.
    Message(Box<ParsedMessage>),
    /// A readable message whose event code the caller does not accept; nothing else was
    /// required of it (an ignored message without a referral reference is still acknowledged).
    Ignored {
        event: EventCode,
        message_header_id: Option<String>,
    },
}

/// Parses and checks a message Bundle; `accepts` says which event codes the caller stores.
pub fn parse_message(
    body: &[u8],
    accepts: impl Fn(&EventCode) -> bool,
) -> Result<Parsed, ParseError> {
    let text = document_text(body)?;
    let bundle = Bundle::parse(&text)?;

    let mut problems = Vec::new();
    let header_entry = bundle
        .first("MessageHeader")
        .ok_or_else(|| ParseError::Unusable("the Bundle has no MessageHeader entry".into()))?;
    conform(Kind::MessageHeader, header_entry, &mut problems);
    let header = header_view(&header_entry.resource);
    let event = header
        .event
        .as_deref()
        .ok_or_else(|| ParseError::Unusable("MessageHeader has no eventCoding.code".into()))
        .and_then(|code| {
            EventCode::parse(code)
                .map_err(|e| ParseError::Unusable(format!("MessageHeader.eventCoding.code: {e}")))
        })?;
    let message_header_id = header
        .id
        .clone()
        .or_else(|| header_entry.full_url.as_deref().and_then(id_of_full_url));
    if !accepts(&event) {
        return Ok(Parsed::Ignored {
            event,
            message_header_id,
        });
    }

    let service_request_entry = header
        .focus
        .iter()
        .filter_map(|r| bundle.resolve(r, Some(header_entry)))
        .find(|e| e.kind == "ServiceRequest")
        .or_else(|| bundle.first("ServiceRequest").map(Cow::Borrowed));
    if let Some(entry) = &service_request_entry {
        conform(Kind::ServiceRequest, entry, &mut problems);
    }
    let service_request = service_request_entry
        .as_ref()
        .map(|e| service_request_view(&e.resource))
        .unwrap_or_default();

    let timestamp = bundle.root.text("timestamp");
    if timestamp.as_deref().is_some_and(|t| {
        time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).is_err()
    }) {
        problems.push(
            "Bundle.timestamp is not an RFC 3339 date-time with a zone; the message's time is taken from meta.lastUpdated, else it counts as the newest".into(),
        );
    }
    let sent_at = [
        timestamp,
        header_entry.resource.path_text(&["meta", "lastUpdated"]),
        service_request_entry
            .as_ref()
            .and_then(|e| e.resource.path_text(&["meta", "lastUpdated"])),
    ]
    .into_iter()
    .flatten()
    .find_map(|t| {
        time::OffsetDateTime::parse(&t, &time::format_description::well_known::Rfc3339).ok()
    });

    let referral = header
        .referral
        .as_deref()
        .or(service_request.referral.as_deref())
        .ok_or_else(|| {
            ParseError::Unusable(match header.unreadable_referral {
                Some(value) => format!(
                    "no referral reference: the MessageHeader's referral extension has no {value} string"
                ),
                None => "no referral reference: expected MessageHeader extension \
                         ext-referral-identifier or ext-id-message-header, or a ServiceRequest \
                         identifier whose system ends in /id-ereferral-reference"
                    .into(),
            })
        })
        .and_then(|r| {
            // Two references that differ only where their text does not decode would read
            // alike: such a reference cannot file a referral.
            if r.contains(char::REPLACEMENT_CHARACTER) {
                return Err(ParseError::Unusable(
                    "referral reference: it holds bytes that are not UTF-8 or an escape that is not Unicode".into(),
                ));
            }
            ReferralRef::parse(r)
                .map_err(|e| ParseError::Unusable(format!("referral reference: {e}")))
        })?;

    // The directory listing the referral was sent to: a destination's receiver, else the
    // ServiceRequest's performer.
    let target_entry = header
        .receivers
        .iter()
        .filter_map(|r| bundle.resolve(r, Some(header_entry)))
        .chain(
            service_request
                .performer
                .iter()
                .filter_map(|r| bundle.resolve(r, service_request_entry.as_deref())),
        )
        .find(|e| e.kind == "PractitionerRole");
    if let Some(entry) = &target_entry {
        conform(Kind::PractitionerRole, entry, &mut problems);
    }
    let target = target_entry.as_ref().map(|e| role_view(&e.resource));
    // The External Service ID: the target's identifier, then any destination receiver's; an
    // invalid candidate (blank, control characters) falls through to the next.
    let service_id = target
        .iter()
        .filter_map(|t| t.service_id.as_deref())
        .chain(header.receiver_service_ids.iter().map(String::as_str))
        .filter(|s| !s.contains(char::REPLACEMENT_CHARACTER))
        .find_map(|s| ServiceId::parse(s).ok());

    let patient_entry = service_request
        .subject
        .as_deref()
        .and_then(|r| bundle.resolve(r, service_request_entry.as_deref()))
        .filter(|e| e.kind == "Patient")
        .or_else(|| bundle.first("Patient").map(Cow::Borrowed));
    if let Some(entry) = &patient_entry {
        conform(Kind::Patient, entry, &mut problems);
    }
    let patient = patient_entry
        .as_ref()
        .map(|e| patient_view(&e.resource))
        .unwrap_or_default();
    let task_entry = bundle.first("Task");
    if let Some(entry) = task_entry {
        conform(Kind::Task, entry, &mut problems);
    }
    let task = task_entry
        .map(|e| task_view(&e.resource))
        .unwrap_or_default();
    let communication_entry = bundle.first("Communication");
    if let Some(entry) = communication_entry {
        conform(Kind::Communication, entry, &mut problems);
    }
    let communication = communication_entry
        .map(|e| communication_view(&e.resource))
        .unwrap_or_default();
    let message_sender = communication.sender_display.clone().or_else(|| {
        let entry = communication_entry?;
        let sender = bundle.resolve(communication.sender.as_deref()?, Some(entry))?;
        referrer(&bundle, &sender, &mut problems).name
    });
    let documents = bundle
        .entries
        .iter()
        .filter(|e| e.kind == "DocumentReference")
        .map(document_link)
        .collect();
    let appointment_entry = bundle.first("Appointment");
    if let Some(entry) = appointment_entry {
        conform(Kind::Appointment, entry, &mut problems);
    }
    let appointment = appointment_entry
        .map(|e| appointment_view(&e.resource))
        .unwrap_or_default();
    let referrer_entry = service_request
        .requester
        .iter()
        .filter_map(|r| bundle.resolve(r, service_request_entry.as_deref()))
        .chain(
            header
                .sender
                .iter()
                .filter_map(|r| bundle.resolve(r, Some(header_entry))),
        )
        .next();
    let referrer = referrer_entry
        .as_ref()
        .map(|e| referrer(&bundle, e, &mut problems))
        .unwrap_or_default();

    let change = change_of(
        &event,
        &header,
        service_request.status.as_deref(),
        service_request.split_from.is_some(),
        (task_entry.is_some(), appointment_entry.is_some()),
    );
    let revocation_reason = service_request.status_reason.or_else(|| {
        (change == Change::Revoked)
            .then(|| header.reason_text.clone())
            .flatten()
    });
    let recipient_listing = header
        .destination_name
        .or(header.receiver_display)
        .or_else(|| {
            let (entry, role) = (target_entry.as_ref()?, target.as_ref()?);
            first_named(&bundle, &role.locations, entry)
        });

    let summary = Summary {
        carried: Carried {
            service_request: service_request_entry.is_some(),
            task: task_entry.is_some(),
            appointment: appointment_entry.is_some(),
            patient: patient_entry.is_some(),
            referrer: referrer_entry.is_some(),
            recipient: recipient_listing.is_some(),
            communication: communication_entry.is_some(),
        },
        service_request_status: service_request.status,
        task_status: task.status,
        task_status_reason: task.status_reason,
        appointment_status: appointment.status,
        appointment_start: appointment.start,
        authored_on: service_request.authored_on,
        patient_name: patient.name,
        patient_phone: patient.phone,
        patient_email: patient.email,
        referrer_name: referrer.name,
        referrer_professional_id: referrer.professional_id,
        referring_site: referrer.site,
        recipient_listing,
        description: service_request.description,
        notes: service_request.notes,
        revocation_reason,
        split_from: service_request.split_from,
        task_id: task_entry.and_then(server_id),
        task_business_status: task.business_status,
        message_text: communication.text,
        message_sent: communication.sent,
        message_sender,
        latest_change: Some(change),
        documents,
    };

    Ok(Parsed::Message(Box::new(ParsedMessage {
        event,
        referral,
        service_id,
        message_header_id,
        bundle_id: bundle.root.text("id"),
        timestamp: bundle.root.text("timestamp"),
        sent_at,
        summary,
        problems,
    })))
}

/// What a message is about, from its event code (the codes of Ontario's IG and of CA:eReC 1.1.0)
/// and what it carries: `revoked` whenever the ServiceRequest says so, a split or an added
/// attachment where `MessageHeader.reason` names one; a generic update is [`Change::Updated`]
/// until it is compared with what the referral already had.
fn change_of(
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

/// The body as text for reading. A leading UTF-8 byte order mark is skipped (RFC 8259 §8.1 lets
/// a parser ignore it); bytes that are not UTF-8 are read as U+FFFD (the stored bytes stay as
/// they came). A body in UTF-16 or UTF-32 is refused: JSON exchanged between systems is UTF-8.
fn document_text(body: &[u8]) -> Result<Cow<'_, str>, ParseError> {
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    if body.starts_with(&[0xFE, 0xFF])
        || body.starts_with(&[0xFF, 0xFE])
        || body.starts_with(&[0, 0, 0xFE, 0xFF])
    {
        return Err(ParseError::Malformed(
            "the body is encoded in UTF-16 or UTF-32; send FHIR JSON in UTF-8".into(),
        ));
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ParseError::Malformed("the request body is empty".into()));
    }
    // `from_utf8` checks UTF-8 several times faster than the lossy decoder, which only text
    // that is not UTF-8 needs.
    Ok(match std::str::from_utf8(body) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(body),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    /// Parses accepting every event code.
    fn accepted(body: &[u8]) -> Result<ParsedMessage, ParseError> {
        match parse_message(body, |_| true)? {
            Parsed::Message(m) => Ok(*m),
            Parsed::Ignored { .. } => unreachable!("every event is accepted"),
        }
    }

    fn bundle(entries: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "resourceType": "Bundle", "id": "b1", "type": "message", "entry": entries
        }))
        .unwrap()
    }

    fn header(extra: Value) -> Value {
        let mut h = json!({
            "resourceType": "MessageHeader",
            "eventCoding": {"code": "add-service-request"},
            "source": {"endpoint": "https://ocean.test/svc/fhir/v1/$process-messages"}
        });
        h.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        h
    }

    #[test]
    fn references_resolve_by_full_url_with_or_without_urn_prefix_and_by_type_and_id() {
        let body = bundle(json!([
            {"fullUrl": "11111111-1111-4111-8111-111111111111", "resource": header(json!({
                "focus": [{"reference": "urn:uuid:22222222-2222-4222-8222-222222222222"}],
                "destination": [{"endpoint": "x", "receiver": {"reference": "https://h/PractitionerRole/pr1"}}]
            }))},
            {"fullUrl": "22222222-2222-4222-8222-222222222222", "resource": {
                "resourceType": "ServiceRequest", "status": "active", "intent": "order",
                "subject": {"reference": "Patient/p1"},
                "identifier": [{"system": "https://h/NamingSystem/id-ereferral-reference", "value": "R-1"}]
            }},
            {"fullUrl": "urn:uuid:33333333-3333-4333-8333-333333333333", "resource": {
                "resourceType": "PractitionerRole", "id": "pr1",
                "identifier": [{"system": "https://h/NamingSystem/id-referral-target-external-service", "value": "SVC-1"}]
            }},
            {"fullUrl": "urn:uuid:44444444-4444-4444-8444-444444444444", "resource": {
                "resourceType": "Patient", "id": "p1", "name": [{"family": "Doe", "given": ["Sam"]}]
            }}
        ]));
        let m = accepted(&body).unwrap();
        assert_eq!(m.referral.as_str(), "R-1");
        assert_eq!(m.service_id.unwrap().as_str(), "SVC-1");
        assert_eq!(m.summary.patient_name.as_deref(), Some("Doe, Sam"));
        assert_eq!(
            m.message_header_id.as_deref(),
            Some("11111111-1111-4111-8111-111111111111")
        );
        assert!(m.problems.is_empty(), "{:?}", m.problems);
    }

    /// Every form a reference to the target PractitionerRole can take under R4's Bundle rules
    /// finds it, and with it the External Service ID.
    #[test]
    fn versioned_relative_absolute_and_contained_references_resolve() {
        let with_receiver = |reference: &str, role_full_url: &str, role: Value| {
            bundle(json!([
                {"fullUrl": "https://h/fhir/MessageHeader/mh1", "resource": header(json!({
                    "extension": [{"url": "x/ext-id-message-header", "valueString": "R-5"}],
                    "destination": [{"endpoint": "e", "receiver": {"reference": reference}}],
                    "contained": [{"resourceType": "PractitionerRole", "id": "inner",
                        "identifier": [{"system": "x/id-referral-target-external-service", "value": "SVC-C"}]}]
                }))},
                {"fullUrl": role_full_url, "resource": role}
            ]))
        };
        let role = |version: &str, service: &str| {
            json!({"resourceType": "PractitionerRole", "id": "pr1", "meta": {"versionId": version},
                   "identifier": [{"system": "x/id-referral-target-external-service", "value": service}]})
        };
        let service = |body: Vec<u8>| accepted(&body).unwrap().service_id.map(|s| s.to_string());
        for reference in [
            "PractitionerRole/pr1",
            "PractitionerRole/pr1/_history/1",
            "https://h/fhir/PractitionerRole/pr1",
            "https://h/fhir/PractitionerRole/pr1/_history/1",
        ] {
            let body = with_receiver(
                reference,
                "https://h/fhir/PractitionerRole/pr1",
                role("1", "SVC-V"),
            );
            assert_eq!(service(body).as_deref(), Some("SVC-V"), "{reference}");
        }
        // A versioned reference picks the entry of that version when the Bundle holds two.
        let two = bundle(json!([
            {"fullUrl": "urn:uuid:h", "resource": header(json!({
                "extension": [{"url": "x/ext-id-message-header", "valueString": "R-6"}],
                "destination": [{"endpoint": "e", "receiver": {"reference": "PractitionerRole/pr1/_history/2"}}]
            }))},
            {"fullUrl": "https://h/fhir/PractitionerRole/pr1", "resource": role("1", "SVC-OLD")},
            {"fullUrl": "https://h/fhir/PractitionerRole/pr1", "resource": role("2", "SVC-NEW")}
        ]));
        assert_eq!(service(two).as_deref(), Some("SVC-NEW"));
        // A fragment names a resource contained in the referring one.
        let contained = with_receiver("#inner", "urn:uuid:other", json!({"resourceType": "Basic"}));
        assert_eq!(service(contained).as_deref(), Some("SVC-C"));
    }

    /// Many `#id` references against many contained resources: each lookup is one probe of an
    /// index built once, not a re-read of the contained list (which would take hours here).
    #[test]
    fn many_fragment_references_resolve_through_one_index() {
        let contained: Vec<Value> = (0..20_000)
            .map(|n| json!({"resourceType": "Basic", "id": format!("c{n}")}))
            .collect();
        let performers: Vec<Value> = (0..20_000)
            .map(|n| json!({"reference": format!("#c{n}")}))
            .collect();
        let body = bundle(json!([
            {"fullUrl": "urn:uuid:h", "resource": header(json!({
                "extension": [{"url": "x/ext-id-message-header", "valueString": "R-8"}],
                "focus": [{"reference": "urn:uuid:sr"}]
            }))},
            {"fullUrl": "urn:uuid:sr", "resource": {"resourceType": "ServiceRequest",
                "status": "active", "intent": "order", "subject": {"reference": "#nobody"},
                "contained": contained, "performer": performers}}
        ]));
        let m = accepted(&body).unwrap();
        assert_eq!(m.referral.as_str(), "R-8");
        assert_eq!(m.service_id, None);
    }

    #[test]
    fn a_resource_fhir_sdk_refuses_is_read_leniently_and_recorded() {
        let body = bundle(json!([
            {"fullUrl": "urn:uuid:a", "resource": header(json!({
                "extension": [{"url": "http://ehealthontario.ca/fhir/StructureDefinition/ext-id-message-header", "valueString": "R-2"}]
            }))},
            {"fullUrl": "urn:uuid:b", "resource": {
                "resourceType": "Task", "status": "mulling-it-over", "intent": "order",
                "statusReason": {"text": "thinking"}
            }}
        ]));
        let m = accepted(&body).unwrap();
        assert_eq!(m.referral.as_str(), "R-2");
        assert_eq!(m.summary.task_status.as_deref(), Some("mulling-it-over"));
        assert_eq!(m.summary.task_status_reason.as_deref(), Some("thinking"));
        assert_eq!(m.problems.len(), 1);
        assert!(m.problems[0].starts_with("Task urn:uuid:b does not conform"));
    }

    #[test]
    fn unusable_bundles_name_what_is_missing() {
        let no_ref = bundle(json!([{"fullUrl": "urn:uuid:a", "resource": header(json!({}))}]));
        assert!(
            matches!(accepted(&no_ref), Err(ParseError::Unusable(m)) if m.starts_with("no referral reference"))
        );
        assert_eq!(
            accepted(b"{\"resourceType\": \"Patient\"}"),
            Err(ParseError::Unusable(
                "expected resourceType Bundle, got 'Patient'".into()
            ))
        );
        assert!(matches!(accepted(b"  "), Err(ParseError::Malformed(_))));
        assert!(matches!(
            accepted(b"{\"resourceType\": \"<script>\"}"),
            Err(ParseError::Unusable(m)) if m.contains("unrecognised")
        ));
        assert!(matches!(
            accepted(b" 1e400 "),
            Err(ParseError::Unusable(m)) if m.contains("a JSON number")
        ));
        assert!(matches!(
            accepted(b"\xFF\xFE{\0}\0"),
            Err(ParseError::Malformed(m)) if m.contains("UTF-16")
        ));
        let undecodable = bundle(json!([{"fullUrl": "urn:uuid:a", "resource": header(json!({
            "extension": [{"url": "x/ext-id-message-header", "valueString": "R-LONE"}]
        }))}]));
        let undecodable = String::from_utf8(undecodable)
            .unwrap()
            .replace("R-LONE", "R-\\udc00");
        assert!(matches!(
            accepted(undecodable.as_bytes()),
            Err(ParseError::Unusable(m)) if m.contains("not UTF-8")
        ));
    }

    #[test]
    fn an_ignored_event_needs_no_referral_reference() {
        let body = bundle(
            json!([{"fullUrl": "https://h/MessageHeader/mh-9", "resource": header(json!({}))}]),
        );
        let parsed = parse_message(&body, |e| e.as_str() != "add-service-request").unwrap();
        assert_eq!(
            parsed,
            Parsed::Ignored {
                event: EventCode::parse("add-service-request").unwrap(),
                // A RESTful fullUrl stands for the id at its end.
                message_header_id: Some("mh-9".into()),
            }
        );
    }

    #[test]
    fn an_invalid_service_id_candidate_falls_through_to_the_next() {
        let body = bundle(json!([
            {"fullUrl": "urn:uuid:a", "resource": header(json!({
                "extension": [{"url": "x/ext-id-message-header", "valueString": "R-3"}],
                "destination": [
                    {"endpoint": "e1", "receiver": {"reference": "urn:uuid:pr"}},
                    {"endpoint": "e2", "receiver": {"identifier": {
                        "system": "https://h/NamingSystem/id-referral-target-external-service",
                        "value": "SVC-2"}}}
                ]
            }))},
            {"fullUrl": "urn:uuid:pr", "resource": {"resourceType": "PractitionerRole",
                "identifier": [{"system": "https://h/NamingSystem/id-referral-target-external-service", "value": "   "}]}}
        ]));
        assert_eq!(
            accepted(&body).unwrap().service_id.unwrap().as_str(),
            "SVC-2"
        );
    }

    /// Anything RFC 8259 allows is read: a byte order mark, repeated names, huge numbers, lone
    /// surrogates and bytes that are not UTF-8 (both read as U+FFFD), any depth.
    #[test]
    fn valid_json_of_any_shape_is_read() {
        let mut deep = json!("leaf");
        for _ in 0..200 {
            deep = json!([deep]);
        }
        let body = bundle(json!([
            {"fullUrl": "urn:uuid:a", "resource": header(json!({
                "extension": [{"url": "x/ext-id-message-header", "valueString": "R-7"}],
                "deep": deep
            }))},
            {"fullUrl": "urn:uuid:p", "resource": {"resourceType": "Patient",
                "name": [{"family": "FAMILY", "given": ["GIVEN"]}], "big": 1}}
        ]));
        let text = String::from_utf8(body)
            .unwrap()
            .replace("\"big\":1", "\"big\":1e400,\"big\":-0.0E-99999")
            .replace("FAMILY", "Fam\\ud800ily")
            .replace(
                "\"resourceType\":\"Bundle\"",
                "\"resourceType\":\"Patient\",\"resourceType\":\"Bundle\"",
            );
        let mut bytes = b"\xEF\xBB\xBF".to_vec();
        bytes.extend(text.replace("GIVEN", "G~").into_bytes());
        let at = bytes.windows(2).position(|w| w == b"G~").unwrap() + 1;
        bytes[at] = 0xFF;
        let m = accepted(&bytes).unwrap();
        assert_eq!(m.referral.as_str(), "R-7");
        assert_eq!(
            m.summary.patient_name.as_deref(),
            Some("Fam\u{fffd}ily, G\u{fffd}")
        );
        // The deep header was read, but not put through fhir-sdk's types.
        assert!(
            m.problems.iter().any(|p| p.contains("levels deep")),
            "{:?}",
            m.problems
        );
    }
}
