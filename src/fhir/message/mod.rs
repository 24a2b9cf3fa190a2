//! Reads an Ocean message Bundle: checks that it can be filed and extracts what the relay indexes.
//!
//! One lenient reader per resource, over the lean JSON reader in [`super::json`]: anything RFC
//! 8259 allows is taken, and a field of an unexpected shape is simply absent. fhir-sdk's R4B
//! types (identical to R4 on the wire for the resources involved) then serve as a conformance
//! check of the resources read: what they refuse is recorded as a problem on the stored version,
//! never a reason to refuse the delivery. Only a Bundle that cannot be filed at all (no
//! MessageHeader, no event code, no referral reference) is refused, saying which field.
//!
//! This module owns the entry point, its result and refusals, and reading the body as text; each
//! part of the message is read by a submodule, in the order [`parse_message`] calls them.

mod change;
mod communication;
mod documents;
mod header;
mod original;
mod people;
mod recipient;
mod request;

use std::borrow::Cow;

use super::bundle::Bundle;
pub use super::bundle::ParseError;
use crate::domain::{Carried, EventCode, ReferralRef, ServiceId, Summary};
use change::{change_of, revocation_reason};
use communication::read_communication;
use documents::document_links;
use header::{read_header, referral, sent_at};
pub use original::{OriginalRequest, service_request_of};
use people::{read_patient, read_referrer};
use recipient::read_recipient;
use request::{read_appointment, read_service_request, read_task};

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
///
/// The parts are read in a fixed order, which is also the order of the problems recorded.
pub fn parse_message(
    body: &[u8],
    accepts: impl Fn(&EventCode) -> bool,
) -> Result<Parsed, ParseError> {
    let text = document_text(body)?;
    let bundle = Bundle::parse(&text)?;

    let mut problems = Vec::new();
    let header = read_header(&bundle, &mut problems)?;
    if !accepts(&header.event) {
        return Ok(Parsed::Ignored {
            event: header.event,
            message_header_id: header.id,
        });
    }
    let service_request = read_service_request(&bundle, &header, &mut problems);
    let sent_at = sent_at(
        &bundle,
        &header,
        service_request.entry.as_deref(),
        &mut problems,
    );
    let referral = referral(&header.view, &service_request.view)?;
    let recipient = read_recipient(&bundle, &header, &service_request, &mut problems);
    let patient = read_patient(&bundle, &service_request, &mut problems);
    let task = read_task(&bundle, &mut problems);
    let communication = read_communication(&bundle, &mut problems);
    let documents = document_links(&bundle);
    let appointment = read_appointment(&bundle, &mut problems);
    let referrer = read_referrer(&bundle, &header, &service_request, &mut problems);

    let request = service_request.view;
    let change = change_of(
        &header.event,
        &header.view,
        request.status.as_deref(),
        request.split_from.is_some(),
        (task.carried, appointment.carried),
    );
    let revocation_reason = revocation_reason(request.status_reason, &change, &header.view);

    let summary = Summary {
        carried: Carried {
            service_request: service_request.entry.is_some(),
            task: task.carried,
            appointment: appointment.carried,
            patient: patient.carried,
            referrer: referrer.carried,
            recipient: recipient.listing.is_some(),
            communication: communication.carried,
        },
        service_request_status: request.status,
        task_status: task.view.status,
        task_status_reason: task.view.status_reason,
        appointment_status: appointment.view.status,
        appointment_start: appointment.view.start,
        authored_on: request.authored_on,
        patient_name: patient.view.name,
        patient_phone: patient.view.phone,
        patient_email: patient.view.email,
        referrer_name: referrer.view.name,
        referrer_professional_id: referrer.view.professional_id,
        referring_site: referrer.view.site,
        recipient_listing: recipient.listing,
        description: request.description,
        notes: request.notes,
        revocation_reason,
        split_from: request.split_from,
        task_id: task.id,
        task_business_status: task.view.business_status,
        message_text: communication.text,
        message_sent: communication.sent,
        message_sender: communication.sender,
        latest_change: Some(change),
        documents,
    };

    Ok(Parsed::Message(Box::new(ParsedMessage {
        event: header.event,
        referral,
        service_id: recipient.service_id,
        message_header_id: header.id,
        bundle_id: bundle.root.text("id"),
        timestamp: bundle.root.text("timestamp"),
        sent_at,
        summary,
        problems,
    })))
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
    pub(super) fn accepted(body: &[u8]) -> Result<ParsedMessage, ParseError> {
        match parse_message(body, |_| true)? {
            Parsed::Message(m) => Ok(*m),
            Parsed::Ignored { .. } => unreachable!("every event is accepted"),
        }
    }

    pub(super) fn bundle(entries: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "resourceType": "Bundle", "id": "b1", "type": "message", "entry": entries
        }))
        .unwrap()
    }

    pub(super) fn header(extra: Value) -> Value {
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
