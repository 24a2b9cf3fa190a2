//! The updates that restate the referral's ServiceRequest as its stored messages hold it: a
//! forward to another listing (a new ServiceRequest replacing it) and a correction of its
//! service or category.

use fhir_check::Kind;
use serde_json::{Value, json};

use super::draft::{Draft, OutboxError, sent_status, task_id};
use super::task::current_status;
use crate::fhir::message::OriginalRequest;
use crate::fhir::outgoing::{ForwardUpdate, correction_message, forward_message};
use crate::store::{TaskState, UpdateKind, UpdateRecord};

/// The original ServiceRequest of `draft`, or why there is none.
fn original<'a>(draft: &Draft<'a>, what: &'static str) -> Result<&'a OriginalRequest, OutboxError> {
    draft.original.ok_or_else(|| OutboxError::NoServiceRequest {
        referral: draft.referral.referral.clone(),
        what,
    })
}

/// Task statuses a referral is not forwarded from, nor sent booking instructions: its work is
/// over.
pub(super) const NOT_FORWARDED_FROM: [&str; 3] = ["completed", "failed", "entered-in-error"];

/// A forward (`category` a FHIR Coding, when the clinic gave one): the referral's Task goes back to `requested`, on a new ServiceRequest for the
/// listing.
pub(super) fn forward(
    draft: &Draft<'_>,
    task: &mut TaskState,
    listing_ref: &str,
    category: Option<Value>,
    reason: Option<&str>,
) -> Result<UpdateRecord, OutboxError> {
    let current = current_status(task, draft.referral);
    if NOT_FORWARDED_FROM.contains(&current.as_str()) {
        return Err(OutboxError::NotAllowed {
            referral: draft.referral.referral.clone(),
            from: current,
            to: "forwarded".into(),
        });
    }
    let original = original(draft, "carries its ServiceRequest")?;
    let category = match category {
        Some(category) => category,
        None => original
            .snomed_category
            .clone()
            .ok_or_else(|| OutboxError::NoCategory(draft.referral.referral.clone()))?,
    };
    let subject = original
        .subject
        .clone()
        .ok_or_else(|| OutboxError::NoServiceRequest {
            referral: draft.referral.referral.clone(),
            what: "names its patient in a way a new ServiceRequest can refer to",
        })?;
    let (task_id, first) = task_id(draft, task);
    let message = forward_message(
        &draft.referral.referral,
        &ForwardUpdate {
            task_id: &task_id,
            first,
            listing_ref,
            category,
            subject,
            reason,
        },
        draft.endpoint,
    )?;
    Ok(UpdateRecord {
        task_status: Some("requested".into()),
        task_id: Some(task_id),
        ..sent_status(draft, task, "requested", UpdateKind::Forward, message)
    })
}

/// The referral's ServiceRequest as Ocean should now hold it: the newest stored message's, with
/// `service` and `category` replaced where given. Elements that refer to resources of that
/// message (`urn:uuid:` or `#` references resolve only inside it) are left out, the patient is
/// named as [`OriginalRequest::subject`] says, and an element R4 refuses (Ocean's messages are
/// read leniently) is left out rather than refusing the correction.
pub(super) fn correction(
    draft: &Draft<'_>,
    service: Option<Value>,
    category: Option<Value>,
) -> Result<UpdateRecord, OutboxError> {
    let original = original(draft, "carries its ServiceRequest")?;
    let subject = original
        .subject
        .clone()
        .ok_or_else(|| OutboxError::NoServiceRequest {
            referral: draft.referral.referral.clone(),
            what: "names its patient in a way a corrected ServiceRequest can refer to",
        })?;
    let sent = &original.resource;
    let mut required = json!({
        "resourceType": "ServiceRequest",
        "id": draft.referral.referral.as_str(),
        "status": code_of(&sent["status"], &REQUEST_STATUSES).unwrap_or("active"),
        "intent": code_of(&sent["intent"], &REQUEST_INTENTS).unwrap_or("order"),
        "subject": subject,
    });
    if let Some(category) = category {
        required["category"] = json!([{ "coding": [category] }]);
    }
    if let Some(service) = service {
        required["code"] = json!({ "coding": [service] });
    }
    let conforms =
        |resource: &Value| fhir_check::check(Kind::ServiceRequest, &resource.to_string()).is_ok();
    let mut request = required.clone();
    let kept = sent
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(name, value)| {
            !matches!(
                name.as_str(),
                "id" | "meta" | "text" | "contained" | "resourceType"
            ) && required.get(name.as_str()).is_none()
                && !refers_inside_its_message(value)
        });
    for (name, value) in kept {
        request[name.as_str()] = value.clone();
    }
    if !conforms(&request) {
        // Keep what R4 takes, element by element.
        let mut taken = required;
        for (name, value) in request.as_object().into_iter().flatten() {
            if taken.get(name.as_str()).is_some() {
                continue;
            }
            let mut trial = taken.clone();
            trial[name.as_str()] = value.clone();
            if conforms(&trial) {
                taken = trial;
            }
        }
        request = taken;
    }
    let message = correction_message(&draft.referral.referral, request, draft.endpoint)?;
    Ok(draft.pending(UpdateKind::Correction, message))
}

/// R4's request-status codes (`ServiceRequest.status`, required).
const REQUEST_STATUSES: [&str; 7] = [
    "draft",
    "active",
    "on-hold",
    "revoked",
    "completed",
    "entered-in-error",
    "unknown",
];

/// R4's request-intent codes (`ServiceRequest.intent`, required).
const REQUEST_INTENTS: [&str; 9] = [
    "proposal",
    "plan",
    "directive",
    "order",
    "original-order",
    "reflex-order",
    "filler-order",
    "instance-order",
    "option",
];

/// `value` when it is one of `codes`: a stored message read leniently may hold a code R4 does
/// not know (`pending-review`), which a corrected ServiceRequest cannot carry.
fn code_of<'a>(value: &'a Value, codes: &[&str]) -> Option<&'a str> {
    value.as_str().filter(|code| codes.contains(code))
}

/// Whether `value` holds a reference that resolves only inside the message it came in: a
/// `urn:uuid:`/`urn:oid:` full URL or a `#` contained resource.
fn refers_inside_its_message(value: &Value) -> bool {
    match value {
        Value::Object(fields) => fields.iter().any(|(name, v)| {
            (name == "reference"
                && v.as_str()
                    .is_some_and(|r| r.starts_with("urn:") || r.starts_with('#')))
                || refers_inside_its_message(v)
        }),
        Value::Array(items) => items.iter().any(refers_inside_its_message),
        _ => false,
    }
}
