//! Reads an Ocean message Bundle: checks that it can be filed and extracts what the relay indexes.
//!
//! One lenient reader per resource, over the lean JSON reader in [`super::json`]: anything RFC
//! 8259 allows is taken, and a field of an unexpected shape is simply absent. fhir-sdk's R4B
//! types (identical to R4 on the wire for the resources involved) then serve as a conformance
//! check of the resources read: what they refuse is recorded as a problem on the stored version,
//! never a reason to refuse the delivery. Only a Bundle that cannot be filed at all (no
//! MessageHeader, no event code, no referral reference) is refused, saying which field.

use std::borrow::Cow;
use std::collections::HashMap;

use fhir_sdk::r4b::resources::{
    Appointment, MessageHeader, Patient, PractitionerRole, ServiceRequest, Task,
};
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

use super::json::{self, Object};
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
    /// Not a JSON document at all (HTTP 400).
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

/// Nesting beyond which a resource is not put through fhir-sdk's types: they recurse with far
/// more stack per level than the lean reader, which has no limit. Real FHIR resources stay well
/// under 30 levels; a deeper one is stored with a problem saying it was not checked.
pub const MAX_CHECKED_DEPTH: usize = 64;

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
    conform::<MessageHeader>(header_entry, &mut problems);
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
        conform::<ServiceRequest>(entry, &mut problems);
    }
    let service_request = service_request_entry
        .as_ref()
        .map(|e| service_request_view(&e.resource))
        .unwrap_or_default();

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
        conform::<PractitionerRole>(entry, &mut problems);
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
        conform::<Patient>(entry, &mut problems);
    }
    let patient = patient_entry
        .as_ref()
        .map(|e| patient_view(&e.resource))
        .unwrap_or_default();
    let task_entry = bundle.first("Task");
    if let Some(entry) = task_entry {
        conform::<Task>(entry, &mut problems);
    }
    let task = task_entry
        .map(|e| task_view(&e.resource))
        .unwrap_or_default();
    let appointment_entry = bundle.first("Appointment");
    if let Some(entry) = appointment_entry {
        conform::<Appointment>(entry, &mut problems);
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
        bundle_id: bundle.root.text("id"),
        timestamp: bundle.root.text("timestamp"),
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
    Ok(String::from_utf8_lossy(body))
}

/// The id a MessageHeader's `fullUrl` stands for: the UUID of `urn:uuid:X` or a bare `X`, or
/// the id of a RESTful URL (`.../MessageHeader/id`, with or without `_history`).
fn id_of_full_url(url: &str) -> Option<String> {
    let id = match Restful::parse(url) {
        Some(restful) => restful.id,
        None => normalise_uuid(url),
    };
    (!id.trim().is_empty()).then(|| id.to_owned())
}

/// Checks a resource against fhir-sdk's R4B type and records what it refuses.
fn conform<T: DeserializeOwned>(entry: &Entry<'_>, problems: &mut Vec<String>) {
    let at = entry.full_url.as_deref().unwrap_or("(no fullUrl)");
    let text = entry.resource.to_json();
    let levels = json::depth(&text);
    if levels > MAX_CHECKED_DEPTH {
        problems.push(format!(
            "{} {at} nests {levels} levels deep, beyond the {MAX_CHECKED_DEPTH} checked against FHIR R4; its fields were read without that check",
            entry.kind
        ));
        return;
    }
    if let Err(e) = serde_json::from_str::<T>(&text) {
        problems.push(format!(
            "{} {at} does not conform to FHIR R4 ({}); its fields were read leniently",
            entry.kind,
            redact_quoted(&e.to_string())
        ));
    }
}

/// One `Bundle.entry` with a resource.
#[derive(Debug, Clone)]
struct Entry<'a> {
    full_url: Option<String>,
    kind: String,
    /// `meta.versionId`, which a version-specific reference must match.
    version_id: Option<String>,
    resource: Object<'a>,
    /// Its contained resources by id, read the first time a `#id` reference needs them.
    contained: std::cell::OnceCell<HashMap<String, Object<'a>>>,
}

impl<'a> Entry<'a> {
    fn new(full_url: Option<String>, kind: String, resource: Object<'a>) -> Self {
        Self {
            full_url,
            version_id: resource.path_text(&["meta", "versionId"]),
            kind,
            resource,
            contained: std::cell::OnceCell::new(),
        }
    }

    /// The contained resource with this id (the first, if several claim it).
    fn contained(&self, id: &str) -> Option<&Object<'a>> {
        self.contained
            .get_or_init(|| {
                let mut by_id = HashMap::new();
                for resource in self.resource.objects("contained") {
                    if let Some(id) = resource.text("id") {
                        by_id.entry(id).or_insert(resource);
                    }
                }
                by_id
            })
            .get(id)
    }
}

/// The entries of a message Bundle and an index to resolve references between them.
struct Bundle<'a> {
    root: Object<'a>,
    entries: Vec<Entry<'a>>,
    /// Reference forms → the entries they name, in Bundle order.
    index: HashMap<String, Vec<usize>>,
}

impl<'a> Bundle<'a> {
    fn parse(text: &'a str) -> Result<Self, ParseError> {
        let not_json = |e: serde_json::Error| {
            ParseError::Malformed(format!("the body is not valid JSON: {e}"))
        };
        let start = text.trim_start_matches([' ', '\t', '\n', '\r']);
        if !start.starts_with('{') {
            // Valid JSON of another kind is a 422; anything else is not JSON (400).
            serde_json::from_str::<&RawValue>(text).map_err(not_json)?;
            let what = match start.as_bytes().first() {
                Some(b'[') => "a JSON array",
                Some(b'"') => "a JSON string",
                Some(b't' | b'f') => "a JSON boolean",
                Some(b'n') => "JSON null",
                _ => "a JSON number",
            };
            return Err(ParseError::Unusable(format!(
                "the body is {what}, not a FHIR Bundle resource"
            )));
        }
        let root = Object::parse_text(text).map_err(not_json)?;
        match root.text("resourceType").as_deref() {
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
        match root.text("type").as_deref() {
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

        let mut bundle = Self {
            entries: Vec::new(),
            index: HashMap::new(),
            root,
        };
        for entry in bundle.root.objects("entry") {
            let Some(resource) = entry.object("resource") else {
                continue;
            };
            let Some(kind) = resource.text("resourceType") else {
                continue;
            };
            let full_url = entry.text("fullUrl");
            let position = bundle.entries.len();
            let mut keys = Vec::new();
            if let Some(url) = &full_url {
                keys.push(url.clone());
                keys.push(normalise_uuid(url).to_owned());
                if let Some(restful) = Restful::parse(url) {
                    keys.push(restful.unversioned().to_owned());
                    keys.push(restful.tail().to_owned());
                }
            }
            if let Some(id) = resource.text("id") {
                keys.push(format!("{kind}/{id}"));
            }
            keys.sort();
            keys.dedup();
            for key in keys {
                bundle.index.entry(key).or_default().push(position);
            }
            bundle.entries.push(Entry::new(full_url, kind, resource));
        }
        Ok(bundle)
    }

    fn first(&self, kind: &str) -> Option<&Entry<'a>> {
        self.entries.iter().find(|e| e.kind == kind)
    }

    /// Resolves a reference made from within `from` as R4's Bundle rules say (3.3.1.4.1), and
    /// leniently beyond them:
    /// - `#id` names a resource contained in `from`;
    /// - a version-specific reference (`.../_history/v`) matches without its version, then
    ///   prefers the entry whose `meta.versionId` is `v`;
    /// - a relative `Type/id` is made absolute against `from`'s RESTful `fullUrl`, then matched
    ///   on its own against `fullUrl` tails and `Type/id` of resource ids;
    /// - `urn:uuid:X` and a bare `X` name the same entry.
    fn resolve<'b>(
        &'b self,
        reference: &str,
        from: Option<&Entry<'a>>,
    ) -> Option<Cow<'b, Entry<'a>>> {
        if let Some(fragment) = reference.strip_prefix('#') {
            let from = from?;
            let resource = from.contained(fragment)?.clone();
            let kind = resource.text("resourceType")?;
            return Some(Cow::Owned(Entry::new(
                from.full_url.clone(),
                kind,
                resource,
            )));
        }
        let (unversioned, version) = match Restful::parse(reference) {
            Some(restful) => (restful.unversioned(), restful.version),
            None => (reference, None),
        };
        let mut candidates: Vec<Cow<'_, str>> = Vec::new();
        if let (Some(relative), Some(base)) = (
            Restful::parse(unversioned).filter(|r| r.base.is_empty()),
            from.and_then(|f| f.full_url.as_deref())
                .and_then(Restful::parse)
                .map(|r| r.base),
        ) && !base.is_empty()
        {
            candidates.push(Cow::Owned(format!("{base}{}", relative.tail())));
        }
        candidates.push(Cow::Borrowed(unversioned));
        candidates.push(Cow::Borrowed(normalise_uuid(unversioned)));
        if let Some(restful) = Restful::parse(unversioned) {
            candidates.push(Cow::Borrowed(restful.tail()));
        }
        let found = candidates
            .iter()
            .find_map(|key| self.index.get(key.as_ref()))?;
        let chosen = version
            .and_then(|v| {
                found
                    .iter()
                    .find(|&&i| self.entries[i].version_id.as_deref() == Some(v))
            })
            .or_else(|| found.first())?;
        Some(Cow::Borrowed(&self.entries[*chosen]))
    }
}

/// `urn:uuid:X` and `X` name the same entry; both are indexed and looked up as `X`.
fn normalise_uuid(reference: &str) -> &str {
    reference.strip_prefix("urn:uuid:").unwrap_or(reference)
}

/// A RESTful reference or URL, `[base]Type/id[/_history/version]` (R4's RESTful URL form).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Restful<'s> {
    /// Everything before `Type/`, empty for a relative reference (ends with `/` otherwise).
    base: &'s str,
    /// `[base]Type/id` as written.
    whole: &'s str,
    kind: &'s str,
    id: &'s str,
    version: Option<&'s str>,
}

impl<'s> Restful<'s> {
    fn parse(url: &'s str) -> Option<Self> {
        let (whole, version) = match url.rsplit_once("/_history/") {
            Some((head, version)) if !version.is_empty() && !version.contains('/') => {
                (head, Some(version))
            }
            _ => (url, None),
        };
        let (rest, id) = whole.rsplit_once('/')?;
        let kind = rest.rsplit('/').next()?;
        let starts_upper = kind.chars().next().is_some_and(|c| c.is_ascii_uppercase());
        if id.is_empty() || !starts_upper || !kind.chars().all(|c| c.is_ascii_alphanumeric()) {
            return None;
        }
        let base = &whole[..whole.len() - id.len() - kind.len() - 1];
        Some(Self {
            base,
            whole,
            kind,
            id,
            version,
        })
    }

    /// `Type/id`.
    fn tail(&self) -> &'s str {
        &self.whole[self.base.len()..]
    }

    /// The reference without its `_history` part.
    fn unversioned(&self) -> &'s str {
        self.whole
    }
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

fn non_empty(s: Option<String>) -> Option<String> {
    s.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

/// The `value` of the first identifier in `identifier[]` whose system ends with `suffix`.
fn identifier_with_suffix(value: &Object<'_>, suffix: &str) -> Option<String> {
    value
        .objects("identifier")
        .find(|i| i.text("system").is_some_and(|s| s.ends_with(suffix)))
        .and_then(|i| i.text("value"))
}

fn reference(value: &Object<'_>, key: &str) -> Option<String> {
    value.object(key).and_then(|r| r.text("reference"))
}

fn references(value: &Object<'_>, key: &str) -> Vec<String> {
    value
        .objects(key)
        .filter_map(|r| r.text("reference"))
        .collect()
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
    /// The value field of a referral extension that is present but holds no string.
    unreadable_referral: Option<&'static str>,
}

fn header_view(h: &Object<'_>) -> HeaderView {
    let mut unreadable_referral = None;
    let referral = h.objects("extension").find_map(|e| {
        let url = e.text("url")?;
        let (value, field) = if url.ends_with(EXT_REFERRAL_IDENTIFIER) {
            (
                e.path_text(&["valueIdentifier", "value"]),
                "valueIdentifier.value",
            )
        } else if url.ends_with(EXT_ID_MESSAGE_HEADER) {
            (e.text("valueString"), "valueString")
        } else {
            return None;
        };
        if value.is_none() {
            unreadable_referral = Some(field);
        }
        value
    });
    let destinations: Vec<Object<'_>> = h.objects("destination").collect();
    let receivers: Vec<Object<'_>> = destinations
        .iter()
        .filter_map(|d| d.object("receiver"))
        .collect();
    HeaderView {
        id: h.text("id"),
        event: h.path_text(&["eventCoding", "code"]),
        referral,
        receivers: receivers
            .iter()
            .filter_map(|r| r.text("reference"))
            .collect(),
        receiver_service_ids: receivers
            .iter()
            .filter_map(|r| r.object("identifier"))
            .filter(|i| {
                i.text("system")
                    .is_some_and(|s| s.ends_with(SYS_EXTERNAL_SERVICE))
            })
            .filter_map(|i| i.text("value"))
            .collect(),
        receiver_display: receivers.iter().find_map(|r| non_empty(r.text("display"))),
        destination_name: destinations.iter().find_map(|d| non_empty(d.text("name"))),
        focus: references(h, "focus"),
        sender: reference(h, "sender").or_else(|| reference(h, "author")),
        unreadable_referral,
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

fn service_request_view(s: &Object<'_>) -> ServiceRequestView {
    let code_text = s.object("code").and_then(|code| {
        non_empty(code.text("text")).or_else(|| {
            code.objects("coding")
                .find_map(|c| non_empty(c.text("display")))
        })
    });
    let category_text = s
        .objects("category")
        .find_map(|c| non_empty(c.text("text")));
    ServiceRequestView {
        status: non_empty(s.text("status")),
        referral: identifier_with_suffix(s, SYS_EREFERRAL_REFERENCE),
        description: code_text.or(category_text),
        authored_on: non_empty(s.text("authoredOn")),
        notes: s.objects("note").filter_map(|n| n.text("text")).collect(),
        requester: reference(s, "requester"),
        performer: references(s, "performer"),
        subject: reference(s, "subject"),
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
struct TaskView {
    status: Option<String>,
    status_reason: Option<String>,
}

fn task_view(t: &Object<'_>) -> TaskView {
    TaskView {
        status: non_empty(t.text("status")),
        status_reason: non_empty(t.path_text(&["statusReason", "text"])),
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
struct AppointmentView {
    status: Option<String>,
    start: Option<String>,
}

fn appointment_view(a: &Object<'_>) -> AppointmentView {
    AppointmentView {
        status: non_empty(a.text("status")),
        start: non_empty(a.text("start")),
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
struct PatientView {
    name: Option<String>,
    phone: Option<String>,
    email: Option<String>,
}

/// Patient names read "Family, Given Middle", as clinics list them.
fn patient_name(text: Option<String>, family: Option<String>, given: &[String]) -> Option<String> {
    let given = given.join(" ");
    match (non_empty(family), given.trim()) {
        (Some(family), "") => Some(family),
        (Some(family), given) => Some(format!("{family}, {given}")),
        (None, "") => non_empty(text),
        (None, given) => Some(given.to_owned()),
    }
}

/// The `official` name of a Patient or Practitioner, else its first.
fn official_name<'a>(value: &Object<'a>) -> Option<Object<'a>> {
    let names: Vec<Object<'a>> = value.objects("name").collect();
    let official = names
        .iter()
        .position(|n| n.text("use").as_deref() == Some("official"));
    names.into_iter().nth(official.unwrap_or(0))
}

fn patient_view(p: &Object<'_>) -> PatientView {
    let telecom = |system: &str| {
        p.objects("telecom")
            .find(|t| t.text("system").as_deref() == Some(system))
            .and_then(|t| non_empty(t.text("value")))
    };
    PatientView {
        name: official_name(p)
            .and_then(|n| patient_name(n.text("text"), n.text("family"), &n.texts("given"))),
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

fn role_view(r: &Object<'_>) -> RoleView {
    RoleView {
        service_id: identifier_with_suffix(r, SYS_EXTERNAL_SERVICE),
        practitioner: reference(r, "practitioner"),
        practitioner_display: non_empty(r.path_text(&["practitioner", "display"])),
        locations: references(r, "location"),
        organization: reference(r, "organization"),
        organization_display: non_empty(r.path_text(&["organization", "display"])),
    }
}

#[derive(Debug, Default)]
struct ReferrerView {
    name: Option<String>,
    professional_id: Option<String>,
    site: Option<String>,
}

/// The referring clinician and site, from the requester (a PractitionerRole, or directly a
/// Practitioner).
fn referrer<'a>(
    bundle: &Bundle<'a>,
    entry: &Entry<'a>,
    problems: &mut Vec<String>,
) -> ReferrerView {
    let (practitioner, role) = if entry.kind == "PractitionerRole" {
        conform::<PractitionerRole>(entry, problems);
        let role = role_view(&entry.resource);
        let practitioner = role
            .practitioner
            .as_deref()
            .and_then(|r| bundle.resolve(r, Some(entry)));
        (practitioner, Some(role))
    } else {
        (
            Some(Cow::Borrowed(entry)).filter(|e| e.kind == "Practitioner"),
            None,
        )
    };
    let practitioner = practitioner.filter(|p| p.kind == "Practitioner");
    let name = practitioner
        .as_ref()
        .and_then(|p| official_name(&p.resource))
        .and_then(|n| {
            let mut words = n.texts("prefix");
            words.extend(n.texts("given"));
            words.extend(n.text("family"));
            non_empty(Some(words.join(" "))).or_else(|| non_empty(n.text("text")))
        })
        .or_else(|| role.as_ref().and_then(|r| r.practitioner_display.clone()));
    let site = role.as_ref().and_then(|r| {
        first_named(bundle, &r.locations, entry)
            .or_else(|| first_named(bundle, r.organization.as_slice(), entry))
            .or_else(|| r.organization_display.clone())
    });
    ReferrerView {
        name,
        professional_id: practitioner.and_then(|p| {
            p.resource
                .objects("identifier")
                .filter(|i| i.text("system").is_some_and(|s| s.contains(SYS_LICENCE)))
                .find_map(|i| non_empty(i.text("value")))
        }),
        site,
    }
}

/// The `name` of the first resolvable resource among `refs` (a Location or an Organization)
/// referenced from `from`.
fn first_named<'a>(bundle: &Bundle<'a>, refs: &[String], from: &Entry<'a>) -> Option<String> {
    refs.iter()
        .filter_map(|r| bundle.resolve(r, Some(from)))
        .find_map(|e| non_empty(e.resource.text("name")))
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
    fn restful_references_split_into_their_parts() {
        let r = Restful::parse("https://h/fhir/Patient/p-1/_history/3").unwrap();
        assert_eq!(
            (r.base, r.kind, r.id, r.version, r.tail(), r.unversioned()),
            (
                "https://h/fhir/",
                "Patient",
                "p-1",
                Some("3"),
                "Patient/p-1",
                "https://h/fhir/Patient/p-1"
            )
        );
        let r = Restful::parse("Patient/p-1").unwrap();
        assert_eq!((r.base, r.tail(), r.version), ("", "Patient/p-1", None));
        assert_eq!(Restful::parse("urn:uuid:abc"), None);
        assert_eq!(Restful::parse("p-1"), None);
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
