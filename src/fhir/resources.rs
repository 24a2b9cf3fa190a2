//! One lenient reader per resource: the fields the relay indexes, each absent when the
//! resource does not hold it in the expected shape.

use std::borrow::Cow;

use fhir_check::Kind;

use super::bundle::{Bundle, Entry, conform};
use super::json::Object;
use crate::domain::DocumentLink;
use crate::ig;

pub(super) fn non_empty(s: Option<String>) -> Option<String> {
    s.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

/// The `value` of the first identifier in `identifier[]` whose system ends with `suffix`.
pub(super) fn identifier_with_suffix(value: &Object<'_>, suffix: &str) -> Option<String> {
    value
        .objects("identifier")
        .find(|i| i.text("system").is_some_and(|s| s.ends_with(suffix)))
        .and_then(|i| i.text("value"))
}

pub(super) fn reference(value: &Object<'_>, key: &str) -> Option<String> {
    value.object(key).and_then(|r| r.text("reference"))
}

pub(super) fn references(value: &Object<'_>, key: &str) -> Vec<String> {
    value
        .objects(key)
        .filter_map(|r| r.text("reference"))
        .collect()
}

#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct HeaderView {
    pub(super) id: Option<String>,
    pub(super) event: Option<String>,
    pub(super) referral: Option<String>,
    /// `destination[].receiver.reference`, in order.
    pub(super) receivers: Vec<String>,
    /// `destination[].receiver.identifier.value` where the system is the External Service ID's.
    pub(super) receiver_service_ids: Vec<String>,
    pub(super) receiver_display: Option<String>,
    pub(super) destination_name: Option<String>,
    pub(super) focus: Vec<String>,
    pub(super) sender: Option<String>,
    /// The value field of a referral extension that is present but holds no string.
    pub(super) unreadable_referral: Option<&'static str>,
    /// `reason.text`, and the codes of `reason.coding[]`.
    pub(super) reason_text: Option<String>,
    pub(super) reason_codes: Vec<String>,
}

pub(super) fn header_view(h: &Object<'_>) -> HeaderView {
    let mut unreadable_referral = None;
    let referral = h.objects("extension").find_map(|e| {
        let url = e.text("url")?;
        let (value, field) = if ig::is_extension(&url, ig::EXT_REFERRAL_IDENTIFIER) {
            (
                e.path_text(&["valueIdentifier", "value"]),
                "valueIdentifier.value",
            )
        } else if ig::is_extension(&url, ig::EXT_ID_MESSAGE_HEADER) {
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
                    .is_some_and(|s| s.ends_with(ig::SYS_EXTERNAL_SERVICE))
            })
            .filter_map(|i| i.text("value"))
            .collect(),
        receiver_display: receivers.iter().find_map(|r| non_empty(r.text("display"))),
        destination_name: destinations.iter().find_map(|d| non_empty(d.text("name"))),
        focus: references(h, "focus"),
        sender: reference(h, "sender").or_else(|| reference(h, "author")),
        unreadable_referral,
        reason_text: h.object("reason").and_then(|r| non_empty(r.text("text"))),
        reason_codes: h
            .object("reason")
            .map(|r| {
                r.objects("coding")
                    .filter_map(|c| non_empty(c.text("code")))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// The text of a CodeableConcept: its `text`, else its first coding's display, else its code.
pub(super) fn concept_text(concept: &Object<'_>) -> Option<String> {
    non_empty(concept.text("text")).or_else(|| {
        concept
            .objects("coding")
            .find_map(|c| non_empty(c.text("display")).or_else(|| non_empty(c.text("code"))))
    })
}

/// The value of an extension as text: `valueString`, `valueCode`, `valueMarkdown`, a
/// `valueCodeableConcept`'s or a `valueCoding`'s text.
fn extension_text(extension: &Object<'_>) -> Option<String> {
    ["valueString", "valueCode", "valueMarkdown"]
        .iter()
        .find_map(|name| non_empty(extension.text(name)))
        .or_else(|| {
            extension
                .object("valueCodeableConcept")
                .and_then(|c| concept_text(&c))
        })
        .or_else(|| {
            extension
                .object("valueCoding")
                .and_then(|c| non_empty(c.text("display")).or_else(|| non_empty(c.text("code"))))
        })
}

/// The referral a Reference names: an identifier in the `id-ereferral-reference` system, else
/// the id of a `ServiceRequest/{id}` reference.
fn referral_of(reference: &Object<'_>) -> Option<String> {
    reference
        .object("identifier")
        .filter(|i| {
            i.text("system")
                .is_some_and(|s| s.ends_with(ig::SYS_EREFERRAL_REFERENCE))
        })
        .and_then(|i| non_empty(i.text("value")))
        .or_else(|| {
            let text = reference.text("reference")?;
            let (_, id) = text.split_once("ServiceRequest/")?;
            non_empty(Some(id.split('/').next().unwrap_or_default().to_owned()))
        })
}

#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct ServiceRequestView {
    pub(super) status: Option<String>,
    /// The value of an extension on `status` (`_status.extension[]`): the revocation reason.
    pub(super) status_reason: Option<String>,
    /// Another referral this one `replaces` or is `basedOn` (a split).
    pub(super) split_from: Option<String>,
    pub(super) referral: Option<String>,
    pub(super) description: Option<String>,
    pub(super) authored_on: Option<String>,
    pub(super) notes: Vec<String>,
    pub(super) requester: Option<String>,
    pub(super) performer: Vec<String>,
    pub(super) subject: Option<String>,
}

pub(super) fn service_request_view(s: &Object<'_>) -> ServiceRequestView {
    let code_text = s.object("code").and_then(|code| {
        non_empty(code.text("text")).or_else(|| {
            code.objects("coding")
                .find_map(|c| non_empty(c.text("display")))
        })
    });
    let category_text = s
        .objects("category")
        .find_map(|c| non_empty(c.text("text")));
    let referral = identifier_with_suffix(s, ig::SYS_EREFERRAL_REFERENCE);
    let split_from = s
        .objects("replaces")
        .chain(s.objects("basedOn"))
        .filter_map(|r| referral_of(&r))
        .find(|other| Some(other) != referral.as_ref());
    ServiceRequestView {
        status: non_empty(s.text("status")),
        status_reason: s
            .object("_status")
            .and_then(|status| status.objects("extension").find_map(|e| extension_text(&e))),
        split_from,
        referral,
        description: code_text.or(category_text),
        authored_on: non_empty(s.text("authoredOn")),
        notes: s.objects("note").filter_map(|n| n.text("text")).collect(),
        requester: reference(s, "requester"),
        performer: references(s, "performer"),
        subject: reference(s, "subject"),
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct TaskView {
    pub(super) status: Option<String>,
    pub(super) status_reason: Option<String>,
    pub(super) business_status: Option<String>,
}

pub(super) fn task_view(t: &Object<'_>) -> TaskView {
    TaskView {
        status: non_empty(t.text("status")),
        status_reason: non_empty(t.path_text(&["statusReason", "text"])),
        business_status: t.object("businessStatus").and_then(|c| concept_text(&c)),
    }
}

/// The id a resource goes by on its server: `id`, else the id of a RESTful `fullUrl`
/// (`.../Type/id`); a `urn:uuid:` name is local to one message and does not count. Only a valid
/// FHIR id (R4 `id`: 1 to 64 of `A-Z a-z 0-9 - .`) counts: it is sent back to Ocean.
pub(super) fn server_id(entry: &Entry<'_>) -> Option<String> {
    non_empty(entry.resource.text("id"))
        .or_else(|| {
            let url = entry.full_url.as_deref()?;
            let restful = super::bundle::Restful::parse(url)?;
            non_empty(Some(restful.id.to_owned()))
        })
        .filter(|id| super::is_fhir_id(id))
}

#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct CommunicationView {
    pub(super) text: Option<String>,
    pub(super) sent: Option<String>,
    pub(super) sender_display: Option<String>,
    pub(super) sender: Option<String>,
}

pub(super) fn communication_view(c: &Object<'_>) -> CommunicationView {
    let texts: Vec<String> = c
        .objects("payload")
        .filter_map(|p| non_empty(p.text("contentString")))
        .collect();
    CommunicationView {
        text: (!texts.is_empty()).then(|| texts.join("\n")),
        sent: non_empty(c.text("sent")),
        sender_display: non_empty(c.path_text(&["sender", "display"])),
        sender: reference(c, "sender"),
    }
}

/// A DocumentReference's first attachment.
pub(super) fn document_link(entry: &Entry<'_>) -> DocumentLink {
    let d = &entry.resource;
    let attachment = d.objects("content").find_map(|c| c.object("attachment"));
    let text = |name: &str| attachment.as_ref().and_then(|a| non_empty(a.text(name)));
    DocumentLink {
        id: server_id(entry).or_else(|| {
            d.objects("identifier")
                .find_map(|i| non_empty(i.text("value")))
        }),
        title: text("title").or_else(|| non_empty(d.text("description"))),
        content_type: text("contentType"),
        url: text("url"),
        inline: attachment.as_ref().is_some_and(|a| a.get("data").is_some()),
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct AppointmentView {
    pub(super) status: Option<String>,
    pub(super) start: Option<String>,
}

pub(super) fn appointment_view(a: &Object<'_>) -> AppointmentView {
    AppointmentView {
        status: non_empty(a.text("status")),
        start: non_empty(a.text("start")),
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct PatientView {
    pub(super) name: Option<String>,
    pub(super) phone: Option<String>,
    pub(super) email: Option<String>,
}

/// Patient names read "Family, Given Middle", as clinics list them.
pub(super) fn patient_name(
    text: Option<String>,
    family: Option<String>,
    given: &[String],
) -> Option<String> {
    let given = given.join(" ");
    match (non_empty(family), given.trim()) {
        (Some(family), "") => Some(family),
        (Some(family), given) => Some(format!("{family}, {given}")),
        (None, "") => non_empty(text),
        (None, given) => Some(given.to_owned()),
    }
}

/// The `official` name of a Patient or Practitioner, else its first.
pub(super) fn official_name<'a>(value: &Object<'a>) -> Option<Object<'a>> {
    let names: Vec<Object<'a>> = value.objects("name").collect();
    let official = names
        .iter()
        .position(|n| n.text("use").as_deref() == Some("official"));
    names.into_iter().nth(official.unwrap_or(0))
}

pub(super) fn patient_view(p: &Object<'_>) -> PatientView {
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
pub(super) struct RoleView {
    pub(super) service_id: Option<String>,
    pub(super) practitioner: Option<String>,
    pub(super) practitioner_display: Option<String>,
    pub(super) locations: Vec<String>,
    pub(super) organization: Option<String>,
    pub(super) organization_display: Option<String>,
}

pub(super) fn role_view(r: &Object<'_>) -> RoleView {
    RoleView {
        service_id: identifier_with_suffix(r, ig::SYS_EXTERNAL_SERVICE),
        practitioner: reference(r, "practitioner"),
        practitioner_display: non_empty(r.path_text(&["practitioner", "display"])),
        locations: references(r, "location"),
        organization: reference(r, "organization"),
        organization_display: non_empty(r.path_text(&["organization", "display"])),
    }
}

#[derive(Debug, Default)]
pub(super) struct ReferrerView {
    pub(super) name: Option<String>,
    pub(super) professional_id: Option<String>,
    pub(super) site: Option<String>,
}

/// The referring clinician and site, from the requester (a PractitionerRole, or directly a
/// Practitioner).
pub(super) fn referrer<'a>(
    bundle: &Bundle<'a>,
    entry: &Entry<'a>,
    problems: &mut Vec<String>,
) -> ReferrerView {
    let (practitioner, role) = if entry.kind == "PractitionerRole" {
        conform(Kind::PractitionerRole, entry, problems);
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
                .filter(|i| {
                    i.text("system")
                        .is_some_and(|s| s.contains(ig::SYS_LICENCE))
                })
                .find_map(|i| non_empty(i.text("value")))
        }),
        site,
    }
}

/// The `name` of the first resolvable resource among `refs` (a Location or an Organization)
/// referenced from `from`.
pub(super) fn first_named<'a>(
    bundle: &Bundle<'a>,
    refs: &[String],
    from: &Entry<'a>,
) -> Option<String> {
    refs.iter()
        .filter_map(|r| bundle.resolve(r, Some(from)))
        .find_map(|e| non_empty(e.resource.text("name")))
}
