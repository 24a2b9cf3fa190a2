//! Reads an Ocean message Bundle: checks that it is usable and extracts what the relay indexes.
//!
//! Resources are read through fhir-sdk's R4B types (identical to R4 on the wire for the resources
//! involved). fhir-sdk refuses a resource with an unknown code in a required field; Ocean's
//! payloads win over the spec, so such a resource is read from the JSON instead and the refusal
//! is recorded as a problem on the stored version. Only a Bundle that cannot be routed at all
//! (no MessageHeader, no event code, no referral reference) is rejected.

use std::collections::HashMap;

use fhir_sdk::r4b::resources::{
    Appointment, MessageHeader, MessageHeaderEvent, Patient, PractitionerRole, ServiceRequest, Task,
};
use fhir_sdk::r4b::types::{Extension, ExtensionValue, HumanName, Identifier, Reference};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::json;
use crate::domain::{
    Carried, EventCode, ReferralRef, ServiceId, Summary, is_code_like, redact_quoted,
};

/// The v0.11 extension holding the referral reference as an Identifier.
const EXT_REFERRAL_IDENTIFIER: &str = "/ext-referral-identifier";
/// The v0.10 extension holding the referral reference as a string.
const EXT_ID_MESSAGE_HEADER: &str = "/ext-id-message-header";
/// Identifier systems are per Ocean host, so they are matched by suffix.
const SYS_EREFERRAL_REFERENCE: &str = "/id-ereferral-reference";
const SYS_EXTERNAL_SERVICE: &str = "/id-referral-target-external-service";
const SYS_LICENCE: &str = "/ca-on-license-";

/// Why a body was refused. The message is safe to return to the sender: it names the problem and
/// a position, never a value from the payload.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    /// Not a JSON document we can read at all (HTTP 400).
    #[error("{0}")]
    Malformed(String),
    /// JSON, but not a message Bundle the relay can file (HTTP 422).
    #[error("{0}")]
    Unusable(String),
}

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
    pub summary: Summary,
    /// Resources that did not conform and were read leniently; kept on the stored version.
    /// They name the resource and the rule broken, with quoted payload values removed.
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

/// JSON nesting allowed before typed reading. serde_json stops at 128 levels; fhir-sdk's
/// recursive types use far more stack per level than a `Value` does, so the relay refuses
/// deeper documents before reading them (real FHIR messages stay well under 30).
pub const MAX_DEPTH: usize = 64;

/// Parses and checks a message Bundle; `accepts` says which event codes the caller stores.
pub fn parse_message(
    body: &[u8],
    accepts: impl Fn(&EventCode) -> bool,
) -> Result<Parsed, ParseError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ParseError::Malformed("the request body is empty".into()));
    }
    // serde_json refuses nesting deeper than 128 levels, so a hostile document cannot exhaust
    // the stack; that refusal is reported like any other unreadable body.
    let root: Value = serde_json::from_slice(body)
        .map_err(|e| ParseError::Malformed(format!("the body is not valid JSON: {e}")))?;
    if depth(&root) > MAX_DEPTH {
        return Err(ParseError::Malformed(format!(
            "the JSON nests deeper than {MAX_DEPTH} levels"
        )));
    }
    let bundle = Bundle::new(&root)?;

    let mut problems = Vec::new();
    let header_entry = bundle
        .first("MessageHeader")
        .ok_or_else(|| ParseError::Unusable("the Bundle has no MessageHeader entry".into()))?;
    let header = read(header_entry, &mut problems, header_typed, header_json);
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
        .or_else(|| header_entry.full_url.and_then(id_of_full_url));
    if !accepts(&event) {
        return Ok(Parsed::Ignored {
            event,
            message_header_id,
        });
    }

    let service_request_entry = header
        .focus
        .iter()
        .filter_map(|r| bundle.resolve(r))
        .find(|e| e.kind == "ServiceRequest")
        .or_else(|| bundle.first("ServiceRequest"));
    let service_request = service_request_entry
        .map(|e| {
            read(
                e,
                &mut problems,
                service_request_typed,
                service_request_json,
            )
        })
        .unwrap_or_default();

    let referral = header
        .referral
        .as_deref()
        .or(service_request.referral.as_deref())
        .ok_or_else(|| {
            ParseError::Unusable(
                "no referral reference: expected MessageHeader extension ext-referral-identifier \
                 or ext-id-message-header, or a ServiceRequest identifier whose system ends in \
                 /id-ereferral-reference"
                    .into(),
            )
        })
        .and_then(|r| {
            ReferralRef::parse(r)
                .map_err(|e| ParseError::Unusable(format!("referral reference: {e}")))
        })?;

    // The directory listing the referral was sent to: a destination's receiver, else the
    // ServiceRequest's performer.
    let target = header
        .receivers
        .iter()
        .chain(&service_request.performer)
        .filter_map(|r| bundle.resolve(r))
        .find(|e| e.kind == "PractitionerRole")
        .map(|e| read(e, &mut problems, role_typed, role_json));
    // The External Service ID: the target's identifier, then any destination receiver's; an
    // invalid candidate (blank, control characters) falls through to the next.
    let service_id = target
        .iter()
        .filter_map(|t| t.service_id.as_deref())
        .chain(header.receiver_service_ids.iter().map(String::as_str))
        .find_map(|s| ServiceId::parse(s).ok());

    let patient_entry = service_request
        .subject
        .as_deref()
        .and_then(|r| bundle.resolve(r))
        .filter(|e| e.kind == "Patient")
        .or_else(|| bundle.first("Patient"));
    let patient = patient_entry
        .map(|e| read(e, &mut problems, patient_typed, patient_json))
        .unwrap_or_default();
    let task_entry = bundle.first("Task");
    let task = task_entry
        .map(|e| read(e, &mut problems, task_typed, task_json))
        .unwrap_or_default();
    let appointment_entry = bundle.first("Appointment");
    let appointment = appointment_entry
        .map(|e| read(e, &mut problems, appointment_typed, appointment_json))
        .unwrap_or_default();
    let referrer_entry = service_request
        .requester
        .iter()
        .chain(&header.sender)
        .find_map(|r| bundle.resolve(r));
    let referrer = referrer_entry
        .map(|e| referrer(&bundle, e, &mut problems))
        .unwrap_or_default();

    let recipient_listing = header
        .destination_name
        .or(header.receiver_display)
        .or_else(|| {
            target
                .as_ref()
                .and_then(|t| first_named(&bundle, &t.locations))
        });

    let summary = Summary {
        carried: Carried {
            service_request: service_request_entry.is_some(),
            task: task_entry.is_some(),
            appointment: appointment_entry.is_some(),
            patient: patient_entry.is_some(),
            referrer: referrer_entry.is_some(),
            recipient: recipient_listing.is_some(),
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
    };

    Ok(Parsed::Message(Box::new(ParsedMessage {
        event,
        referral,
        service_id,
        message_header_id,
        bundle_id: json::str_at(&root, &["id"]).map(str::to_owned),
        timestamp: json::str_at(&root, &["timestamp"]).map(str::to_owned),
        summary,
        problems,
    })))
}

/// How deeply `value` nests, counted without recursion.
fn depth(value: &Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(value, 1)];
    while let Some((v, level)) = stack.pop() {
        deepest = deepest.max(level);
        match v {
            Value::Array(items) => stack.extend(items.iter().map(|i| (i, level + 1))),
            Value::Object(fields) => stack.extend(fields.values().map(|f| (f, level + 1))),
            _ => {}
        }
    }
    deepest
}

/// The id a MessageHeader's `fullUrl` stands for: the UUID of `urn:uuid:X` or a bare `X`, or
/// the last segment of a RESTful URL (`.../MessageHeader/id`).
fn id_of_full_url(url: &str) -> Option<String> {
    let id = match type_and_id_tail(url) {
        Some((_, tail)) => tail.rsplit('/').next().unwrap_or(tail),
        None => normalise_uuid(url),
    };
    (!id.trim().is_empty()).then(|| id.to_owned())
}

/// One `Bundle.entry` with a resource.
struct Entry<'a> {
    full_url: Option<&'a str>,
    kind: &'a str,
    resource: &'a Value,
}

/// The entries of a message Bundle and an index to resolve references between them.
struct Bundle<'a> {
    entries: Vec<Entry<'a>>,
    index: HashMap<String, usize>,
}

impl<'a> Bundle<'a> {
    fn new(root: &'a Value) -> Result<Self, ParseError> {
        let Some(object) = root.as_object() else {
            let what = match root {
                Value::Array(_) => "a JSON array",
                Value::String(_) => "a JSON string",
                Value::Number(_) => "a JSON number",
                Value::Bool(_) => "a JSON boolean",
                _ => "JSON null",
            };
            return Err(ParseError::Unusable(format!(
                "the body is {what}, not a FHIR Bundle resource"
            )));
        };
        match object.get("resourceType").and_then(Value::as_str) {
            Some("Bundle") => {}
            Some(other) => {
                return Err(ParseError::Unusable(format!(
                    "expected resourceType Bundle, got {}",
                    printable(other)
                )));
            }
            None => {
                return Err(ParseError::Unusable(
                    "the JSON object has no resourceType; expected a FHIR Bundle".into(),
                ));
            }
        }
        match object.get("type").and_then(Value::as_str) {
            Some("message") => {}
            Some(other) => {
                return Err(ParseError::Unusable(format!(
                    "Bundle.type is {}; only message Bundles can be processed",
                    printable(other)
                )));
            }
            None => {
                return Err(ParseError::Unusable(
                    "Bundle.type is missing; expected message".into(),
                ));
            }
        }

        let mut entries = Vec::new();
        let mut index = HashMap::new();
        for entry in json::items(root, "entry") {
            let Some(resource) = entry.get("resource").filter(|r| r.is_object()) else {
                continue;
            };
            let Some(kind) = json::str_at(resource, &["resourceType"]) else {
                continue;
            };
            let full_url = json::str_at(entry, &["fullUrl"]);
            let position = entries.len();
            let mut keys = Vec::new();
            if let Some(url) = full_url {
                keys.push(url.to_owned());
                keys.push(normalise_uuid(url).to_owned());
                if let Some((_, tail)) = type_and_id_tail(url) {
                    keys.push(tail.to_owned());
                }
            }
            if let Some(id) = json::str_at(resource, &["id"]) {
                keys.push(format!("{kind}/{id}"));
            }
            for key in keys {
                // The first entry wins, as a reference resolves to one resource.
                index.entry(key).or_insert(position);
            }
            entries.push(Entry {
                full_url,
                kind,
                resource,
            });
        }
        Ok(Self { entries, index })
    }

    fn first(&self, kind: &str) -> Option<&Entry<'a>> {
        self.entries.iter().find(|e| e.kind == kind)
    }

    /// Resolves `urn:uuid:X`, a bare `X`, `Type/id` and absolute URLs ending in `Type/id`.
    fn resolve(&self, reference: &str) -> Option<&Entry<'a>> {
        let candidates = [
            Some(reference),
            Some(normalise_uuid(reference)),
            type_and_id_tail(reference).map(|(_, tail)| tail),
        ];
        candidates
            .into_iter()
            .flatten()
            .find_map(|key| self.index.get(key))
            .map(|&i| &self.entries[i])
    }
}

/// `urn:uuid:X` and `X` name the same entry; both are indexed and looked up as `X`.
fn normalise_uuid(reference: &str) -> &str {
    reference.strip_prefix("urn:uuid:").unwrap_or(reference)
}

/// For `.../Type/id` returns `("Type", "Type/id")`.
fn type_and_id_tail(url: &str) -> Option<(&str, &str)> {
    let mut parts = url.rsplitn(3, '/');
    let id = parts.next()?;
    let kind = parts.next()?;
    let starts_upper = kind.chars().next().is_some_and(|c| c.is_ascii_uppercase());
    if id.is_empty() || !starts_upper {
        return None;
    }
    let start = url.len() - id.len() - kind.len() - 1;
    Some((kind, &url[start..]))
}

/// Echoes a short sender-chosen token (a resourceType, a Bundle.type) only when it looks like a
/// code, so error messages never carry arbitrary payload text.
fn printable(code: &str) -> String {
    if is_code_like(code) {
        format!("'{code}'")
    } else {
        "an unrecognised value".into()
    }
}

/// Reads one resource through fhir-sdk's types, or leniently from its JSON when they refuse it.
fn read<T: DeserializeOwned, V>(
    entry: &Entry<'_>,
    problems: &mut Vec<String>,
    typed: fn(&T) -> V,
    lenient: fn(&Value) -> V,
) -> V {
    match T::deserialize(entry.resource) {
        Ok(resource) => typed(&resource),
        Err(e) => {
            let at = entry.full_url.unwrap_or("(no fullUrl)");
            problems.push(format!(
                "{} {at} does not conform to FHIR R4 ({}); its fields were read leniently",
                entry.kind,
                redact_quoted(&e.to_string())
            ));
            lenient(entry.resource)
        }
    }
}

fn non_empty(s: Option<&str>) -> Option<String> {
    s.map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

fn typed_identifier<'a>(ids: &'a [Option<Identifier>], suffix: &str) -> Option<&'a str> {
    ids.iter()
        .flatten()
        .find(|i| i.system.as_deref().is_some_and(|s| s.ends_with(suffix)))
        .and_then(|i| i.value.as_deref())
}

fn references(refs: &[Option<Reference>]) -> Vec<String> {
    refs.iter()
        .flatten()
        .filter_map(|r| r.reference.clone())
        .collect()
}

fn json_reference(value: &Value, key: &str) -> Option<String> {
    json::str_at(value, &[key, "reference"]).map(str::to_owned)
}

fn json_references(value: &Value, key: &str) -> Vec<String> {
    json::items(value, key)
        .filter_map(|r| json::str_at(r, &["reference"]))
        .map(str::to_owned)
        .collect()
}

/// A JSON value that fhir-sdk serialises as a string (a date, an instant) back as that string.
fn as_text<T: serde::Serialize>(value: &T) -> Option<String> {
    match serde_json::to_value(value).ok()? {
        Value::String(s) => Some(s),
        _ => None,
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
struct HeaderView {
    id: Option<String>,
    event: Option<String>,
    referral: Option<String>,
    /// `destination[].receiver.reference`, in order.
    receivers: Vec<String>,
    /// `destination[].receiver.identifier.value` where the system is the External Service ID's.
    receiver_service_ids: Vec<String>,
    receiver_display: Option<String>,
    destination_name: Option<String>,
    focus: Vec<String>,
    sender: Option<String>,
}

fn header_typed(h: &MessageHeader) -> HeaderView {
    fn referral(e: &Extension) -> Option<String> {
        match &e.value {
            Some(ExtensionValue::Identifier(i)) if e.url.ends_with(EXT_REFERRAL_IDENTIFIER) => {
                i.value.clone()
            }
            Some(ExtensionValue::String(s)) if e.url.ends_with(EXT_ID_MESSAGE_HEADER) => {
                Some(s.clone())
            }
            _ => None,
        }
    }
    let destinations: Vec<_> = h.destination.iter().flatten().collect();
    let receivers: Vec<&Reference> = destinations
        .iter()
        .filter_map(|d| d.receiver.as_ref())
        .collect();
    HeaderView {
        id: h.id.clone(),
        event: match &h.event {
            MessageHeaderEvent::Coding(c) => c.code.clone(),
            MessageHeaderEvent::Uri(_) => None,
        },
        referral: h.extension.iter().find_map(referral),
        receivers: receivers
            .iter()
            .filter_map(|r| r.reference.clone())
            .collect(),
        receiver_service_ids: receivers
            .iter()
            .filter_map(|r| r.identifier.as_ref())
            .filter(|i| {
                i.system
                    .as_deref()
                    .is_some_and(|s| s.ends_with(SYS_EXTERNAL_SERVICE))
            })
            .filter_map(|i| i.value.clone())
            .collect(),
        receiver_display: receivers
            .iter()
            .find_map(|r| non_empty(r.display.as_deref())),
        destination_name: destinations
            .iter()
            .find_map(|d| non_empty(d.name.as_deref())),
        focus: references(&h.focus),
        sender: h
            .sender
            .as_ref()
            .or(h.author.as_ref())
            .and_then(|r| r.reference.clone()),
    }
}

fn header_json(h: &Value) -> HeaderView {
    let referral = json::items(h, "extension").find_map(|e| {
        let url = json::str_at(e, &["url"])?;
        if url.ends_with(EXT_REFERRAL_IDENTIFIER) {
            json::str_at(e, &["valueIdentifier", "value"])
        } else if url.ends_with(EXT_ID_MESSAGE_HEADER) {
            json::str_at(e, &["valueString"])
        } else {
            None
        }
    });
    let receivers: Vec<&Value> = json::items(h, "destination")
        .filter_map(|d| d.get("receiver"))
        .collect();
    HeaderView {
        id: json::str_at(h, &["id"]).map(str::to_owned),
        event: json::str_at(h, &["eventCoding", "code"]).map(str::to_owned),
        referral: referral.map(str::to_owned),
        receivers: receivers
            .iter()
            .filter_map(|r| json::str_at(r, &["reference"]))
            .map(str::to_owned)
            .collect(),
        receiver_service_ids: receivers
            .iter()
            .filter_map(|r| r.get("identifier"))
            .filter(|i| {
                json::str_at(i, &["system"]).is_some_and(|s| s.ends_with(SYS_EXTERNAL_SERVICE))
            })
            .filter_map(|i| json::str_at(i, &["value"]))
            .map(str::to_owned)
            .collect(),
        receiver_display: receivers
            .iter()
            .find_map(|r| non_empty(json::str_at(r, &["display"]))),
        destination_name: json::items(h, "destination")
            .find_map(|d| non_empty(json::str_at(d, &["name"]))),
        focus: json_references(h, "focus"),
        sender: json_reference(h, "sender").or_else(|| json_reference(h, "author")),
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
struct ServiceRequestView {
    status: Option<String>,
    referral: Option<String>,
    description: Option<String>,
    authored_on: Option<String>,
    notes: Vec<String>,
    requester: Option<String>,
    performer: Vec<String>,
    subject: Option<String>,
}

fn service_request_typed(s: &ServiceRequest) -> ServiceRequestView {
    let code_text = s.code.as_ref().and_then(|c| {
        non_empty(c.text.as_deref()).or_else(|| {
            c.coding
                .iter()
                .flatten()
                .find_map(|c| non_empty(c.display.as_deref()))
        })
    });
    let category_text = s
        .category
        .iter()
        .flatten()
        .find_map(|c| non_empty(c.text.as_deref()));
    ServiceRequestView {
        status: Some(s.status.as_ref().to_owned()),
        referral: typed_identifier(&s.identifier, SYS_EREFERRAL_REFERENCE).map(str::to_owned),
        description: code_text.or(category_text),
        authored_on: s.authored_on.as_ref().and_then(as_text),
        notes: s.note.iter().flatten().map(|n| n.text.clone()).collect(),
        requester: s.requester.as_ref().and_then(|r| r.reference.clone()),
        performer: references(&s.performer),
        subject: s.subject.reference.clone(),
    }
}

fn service_request_json(s: &Value) -> ServiceRequestView {
    let code_text = non_empty(json::str_at(s, &["code", "text"])).or_else(|| {
        s.get("code")
            .map(|c| json::items(c, "coding"))
            .into_iter()
            .flatten()
            .find_map(|c| non_empty(json::str_at(c, &["display"])))
    });
    let category_text =
        json::items(s, "category").find_map(|c| non_empty(json::str_at(c, &["text"])));
    ServiceRequestView {
        status: non_empty(json::str_at(s, &["status"])),
        referral: json::identifier_with_suffix(s, SYS_EREFERRAL_REFERENCE).map(str::to_owned),
        description: code_text.or(category_text),
        authored_on: non_empty(json::str_at(s, &["authoredOn"])),
        notes: json::items(s, "note")
            .filter_map(|n| json::str_at(n, &["text"]))
            .map(str::to_owned)
            .collect(),
        requester: json_reference(s, "requester"),
        performer: json_references(s, "performer"),
        subject: json_reference(s, "subject"),
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
struct TaskView {
    status: Option<String>,
    status_reason: Option<String>,
}

fn task_typed(t: &Task) -> TaskView {
    TaskView {
        status: Some(t.status.as_ref().to_owned()),
        status_reason: t
            .status_reason
            .as_ref()
            .and_then(|r| non_empty(r.text.as_deref())),
    }
}

fn task_json(t: &Value) -> TaskView {
    TaskView {
        status: non_empty(json::str_at(t, &["status"])),
        status_reason: non_empty(json::str_at(t, &["statusReason", "text"])),
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
struct AppointmentView {
    status: Option<String>,
    start: Option<String>,
}

fn appointment_typed(a: &Appointment) -> AppointmentView {
    AppointmentView {
        status: Some(a.status.as_ref().to_owned()),
        start: a.start.as_ref().and_then(as_text),
    }
}

fn appointment_json(a: &Value) -> AppointmentView {
    AppointmentView {
        status: non_empty(json::str_at(a, &["status"])),
        start: non_empty(json::str_at(a, &["start"])),
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
struct PatientView {
    name: Option<String>,
    phone: Option<String>,
    email: Option<String>,
}

/// Patient names read "Family, Given Middle", as clinics list them.
fn patient_name(text: Option<&str>, family: Option<&str>, given: &[&str]) -> Option<String> {
    let given = given.join(" ");
    match (non_empty(family), given.trim()) {
        (Some(family), "") => Some(family),
        (Some(family), given) => Some(format!("{family}, {given}")),
        (None, "") => non_empty(text),
        (None, given) => Some(given.to_owned()),
    }
}

fn official_first(names: &[Option<HumanName>]) -> Option<&HumanName> {
    let names: Vec<&HumanName> = names.iter().flatten().collect();
    names
        .iter()
        .find(|n| n.r#use.as_ref().is_some_and(|u| u.as_ref() == "official"))
        .or(names.first())
        .copied()
}

fn patient_typed(p: &Patient) -> PatientView {
    let telecom = |system: &str| {
        p.telecom
            .iter()
            .flatten()
            .find(|t| t.system.as_ref().is_some_and(|s| s.as_ref() == system))
            .and_then(|t| non_empty(t.value.as_deref()))
    };
    PatientView {
        name: official_first(&p.name).and_then(|n| {
            let given: Vec<&str> = n.given.iter().flatten().map(String::as_str).collect();
            patient_name(n.text.as_deref(), n.family.as_deref(), &given)
        }),
        phone: telecom("phone"),
        email: telecom("email"),
    }
}

fn json_official_name(value: &Value) -> Option<&Value> {
    json::items(value, "name")
        .find(|n| json::str_at(n, &["use"]) == Some("official"))
        .or_else(|| json::items(value, "name").next())
}

fn patient_json(p: &Value) -> PatientView {
    let telecom = |system: &str| {
        json::items(p, "telecom")
            .find(|t| json::str_at(t, &["system"]) == Some(system))
            .and_then(|t| non_empty(json::str_at(t, &["value"])))
    };
    PatientView {
        name: json_official_name(p).and_then(|n| {
            let given: Vec<&str> = json::strings(n, "given").collect();
            patient_name(
                json::str_at(n, &["text"]),
                json::str_at(n, &["family"]),
                &given,
            )
        }),
        phone: telecom("phone"),
        email: telecom("email"),
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
struct RoleView {
    service_id: Option<String>,
    practitioner: Option<String>,
    practitioner_display: Option<String>,
    locations: Vec<String>,
    organization: Option<String>,
    organization_display: Option<String>,
}

fn role_typed(r: &PractitionerRole) -> RoleView {
    RoleView {
        service_id: typed_identifier(&r.identifier, SYS_EXTERNAL_SERVICE).map(str::to_owned),
        practitioner: r.practitioner.as_ref().and_then(|p| p.reference.clone()),
        practitioner_display: r
            .practitioner
            .as_ref()
            .and_then(|p| non_empty(p.display.as_deref())),
        locations: references(&r.location),
        organization: r.organization.as_ref().and_then(|o| o.reference.clone()),
        organization_display: r
            .organization
            .as_ref()
            .and_then(|o| non_empty(o.display.as_deref())),
    }
}

fn role_json(r: &Value) -> RoleView {
    RoleView {
        service_id: json::identifier_with_suffix(r, SYS_EXTERNAL_SERVICE).map(str::to_owned),
        practitioner: json_reference(r, "practitioner"),
        practitioner_display: non_empty(json::str_at(r, &["practitioner", "display"])),
        locations: json_references(r, "location"),
        organization: json_reference(r, "organization"),
        organization_display: non_empty(json::str_at(r, &["organization", "display"])),
    }
}

#[derive(Debug, Default)]
struct ReferrerView {
    name: Option<String>,
    professional_id: Option<String>,
    site: Option<String>,
}

/// The referring clinician and site, from the requester (a PractitionerRole, or directly a
/// Practitioner). Practitioner, Location and Organization are only read for names and a licence
/// number, so they are read from the JSON.
fn referrer(bundle: &Bundle<'_>, entry: &Entry<'_>, problems: &mut Vec<String>) -> ReferrerView {
    let (practitioner, role) = if entry.kind == "PractitionerRole" {
        let role = read(entry, problems, role_typed, role_json);
        let practitioner = role.practitioner.as_deref().and_then(|r| bundle.resolve(r));
        (practitioner, Some(role))
    } else {
        (Some(entry).filter(|e| e.kind == "Practitioner"), None)
    };
    let name = practitioner
        .and_then(|p| json_official_name(p.resource))
        .and_then(|n| {
            let words: Vec<&str> = json::strings(n, "prefix")
                .chain(json::strings(n, "given"))
                .chain(json::str_at(n, &["family"]))
                .collect();
            non_empty(Some(&words.join(" "))).or_else(|| non_empty(json::str_at(n, &["text"])))
        })
        .or_else(|| role.as_ref().and_then(|r| r.practitioner_display.clone()));
    let site = role.as_ref().and_then(|r| {
        first_named(bundle, &r.locations)
            .or_else(|| first_named(bundle, r.organization.as_slice()))
            .or_else(|| r.organization_display.clone())
    });
    ReferrerView {
        name,
        professional_id: practitioner.and_then(|p| {
            json::items(p.resource, "identifier")
                .filter(|i| json::str_at(i, &["system"]).is_some_and(|s| s.contains(SYS_LICENCE)))
                .find_map(|i| non_empty(json::str_at(i, &["value"])))
        }),
        site,
    }
}

/// The `name` of the first resolvable resource among `refs` (a Location or an Organization).
fn first_named(bundle: &Bundle<'_>, refs: &[String]) -> Option<String> {
    refs.iter()
        .filter_map(|r| bundle.resolve(r))
        .find_map(|e| non_empty(json::str_at(e.resource, &["name"])))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
    }

    #[test]
    fn type_and_id_tail_of_urls() {
        assert_eq!(
            type_and_id_tail("https://h/svc/fhir/v1/Patient/p-1"),
            Some(("Patient", "Patient/p-1"))
        );
        assert_eq!(
            type_and_id_tail("Patient/p-1"),
            Some(("Patient", "Patient/p-1"))
        );
        assert_eq!(type_and_id_tail("urn:uuid:abc"), None);
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

    #[test]
    fn documents_nested_beyond_the_limit_are_refused_before_typed_reading() {
        let mut deep = json!("leaf");
        for _ in 0..MAX_DEPTH {
            deep = json!([deep]);
        }
        let body =
            bundle(json!([{"fullUrl": "urn:uuid:a", "resource": header(json!({"x": deep}))}]));
        assert!(
            matches!(accepted(&body), Err(ParseError::Malformed(m)) if m.contains("deeper than 64"))
        );
        assert_eq!(depth(&json!({"a": [1, {"b": 2}]})), 4);
    }

    /// The typed and the lenient readers must agree on every resource fhir-sdk accepts, or the
    /// stored summary would depend on whether an unrelated field was odd.
    #[test]
    fn typed_and_lenient_readers_agree_on_every_fixture() {
        fn agree<T: DeserializeOwned, V: PartialEq + std::fmt::Debug>(
            resource: &Value,
            typed: fn(&T) -> V,
            lenient: fn(&Value) -> V,
        ) -> bool {
            match T::deserialize(resource) {
                Ok(t) => {
                    assert_eq!(typed(&t), lenient(resource), "{resource}");
                    true
                }
                Err(_) => false,
            }
        }
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fhir-fixtures");
        let mut compared = 0;
        for file in std::fs::read_dir(dir).unwrap() {
            let path = file.unwrap().path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let root: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            for entry in json::items(&root, "entry") {
                let r = &entry["resource"];
                compared += usize::from(match r["resourceType"].as_str() {
                    Some("MessageHeader") => agree(r, header_typed, header_json),
                    Some("ServiceRequest") => agree(r, service_request_typed, service_request_json),
                    Some("Task") => agree(r, task_typed, task_json),
                    Some("Appointment") => agree(r, appointment_typed, appointment_json),
                    Some("Patient") => agree(r, patient_typed, patient_json),
                    Some("PractitionerRole") => agree(r, role_typed, role_json),
                    _ => false,
                });
            }
        }
        assert!(compared >= 35, "only {compared} resources compared");
    }
}
