//! Patient Engagement, the collect side: eForms a patient completed in Ocean (through the
//! portal, a weblink or a tablet) reach the clinic's own records through the relay.
//!
//! Ocean POSTs a small notification to `/ocean/{name}/patient-engagement` (the route is in
//! [`crate::routes::patient_engagement`]); it names the patient (Ocean's ref) and the session.
//! The relay records it durably, once, answers 200, and the [`fetcher`] then reads the patient
//! and the session's note (its completed forms) from Ocean's Open API, decrypts them
//! ([`crypto`]) and keeps them, sealed like payloads. The API (`/api/v1/patient-forms`) and
//! the console serve them.
//!
//! What is stored as a submission's content ([`Content`]) is the decrypted JSON Ocean served,
//! as served: the relay does not reshape the patient or the note, so nothing is lost when
//! Ocean adds a field.

pub mod crypto;
pub mod fetcher;

use serde::{Deserialize, Serialize};

use crate::store::PatientFormState;

/// Notification types a form completion arrives as; others are acknowledged and not stored.
pub const KINDS: [&str; 2] = [
    "notify-patient-message-forms-completion",
    "notify-patient-note-added",
];

/// What was fetched for one submission, as stored (sealed) and served by the API.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Content {
    /// The decrypted patient (`GET /svc/v1/patients/{ref}`): `demographics`, `results`, ...
    pub patient: serde_json::Value,
    /// The decrypted note of the session (`GET .../notes?oceanSessionId=`): `progressNote`,
    /// `completedForms`, `emrFieldUpdates`, `formMetadata`; null when the notification named no
    /// session.
    pub note: Option<serde_json::Value>,
    /// The note's `noteId` header.
    pub note_id: Option<String>,
    /// The `extPatientRef` (patient) or `externalPtRef` (note) header: the clinic's own MRN.
    pub external_patient_ref: Option<String>,
}

/// One completed form of a note, its fields by name.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CompletedForm {
    /// The form's ref (the key of `completedForms`).
    pub form_ref: String,
    pub fields: Vec<FormField>,
}

/// One field of a completed form.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FormField {
    pub name: String,
    /// The value as Ocean sent it (a string, a number, a list ...).
    pub value: serde_json::Value,
    /// `formMetadata.{form}.{field}.hidden`: the form hid it from the patient.
    pub hidden: bool,
}

impl Content {
    /// The note's completed forms (`completedForms`, with `formMetadata`'s hidden flags), by
    /// form ref then field name; empty without a note. The API and the console both show them.
    pub fn completed_forms(&self) -> Vec<CompletedForm> {
        let Some(note) = &self.note else {
            return Vec::new();
        };
        let Some(forms) = note.get("completedForms").and_then(|f| f.as_object()) else {
            return Vec::new();
        };
        forms
            .iter()
            .map(|(form_ref, fields)| CompletedForm {
                form_ref: form_ref.clone(),
                fields: fields
                    .as_object()
                    .map(|fields| {
                        fields
                            .iter()
                            .map(|(name, value)| FormField {
                                name: name.clone(),
                                value: value.clone(),
                                hidden: note
                                    .pointer(&format!(
                                        "/formMetadata/{}/{}/hidden",
                                        pointer_escape(form_ref),
                                        pointer_escape(name)
                                    ))
                                    .and_then(serde_json::Value::as_bool)
                                    .unwrap_or(false),
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            })
            .collect()
    }

    /// The note's `progressNote`, when there is one.
    pub fn progress_note(&self) -> Option<&serde_json::Value> {
        self.note.as_ref()?.get("progressNote")
    }

    /// The patient's `demographics`, when there are.
    pub fn demographics(&self) -> Option<&serde_json::Value> {
        self.patient.get("demographics")
    }
}

/// The `type` of a webhook destination's message carrying a fetched submission.
pub const WEBHOOK_TYPE: &str = "patient_form.fetched";

/// What a destination's message of a submission is, read from the store now.
#[derive(Debug)]
pub enum WebhookBody {
    /// The JSON body to post.
    Ready(Vec<u8>),
    /// Not saved as fetched yet (the message is queued just before the fetch is saved): sent
    /// once it is.
    NotYet,
    /// Never to be sent, and why.
    Gone(&'static str),
}

/// The JSON a webhook destination is sent for patient form `id` (queued as `message`), read
/// from the store now: `{type, timestamp, data: {message, id, endpoint, type, patient_ref,
/// session_id, completion_source, received_at, fetched_at, external_patient_ref, note_id,
/// demographics, forms, progress_note, patient, note}}`. A receiver drops repeats by `data.id`.
///
/// # Errors
/// The store's, or content that does not decode.
pub async fn webhook_body(
    store: &dyn crate::store::Store,
    message: &crate::store::QueuedMessage,
    id: u64,
    now: time::OffsetDateTime,
) -> Result<WebhookBody, crate::store::StoreError> {
    let Some(record) = store.patient_form(id).await? else {
        return Ok(WebhookBody::Gone("it is no longer stored"));
    };
    if record.purged {
        return Ok(WebhookBody::Gone("retention purged it"));
    }
    match record.state {
        PatientFormState::Pending => return Ok(WebhookBody::NotYet),
        PatientFormState::Failed => return Ok(WebhookBody::Gone("its fetch was given up")),
        PatientFormState::Fetched => {}
    }
    let Some(bytes) = store.patient_form_content(id).await? else {
        return Ok(WebhookBody::Gone("its content is no longer stored"));
    };
    let content: Content = serde_json::from_slice(&bytes)
        .map_err(|e| crate::store::StoreError::corrupt("a patient form's content").caused_by(e))?;
    let mut data = submission(&record, &content);
    data["message"] = message.id.into();
    let body = serde_json::json!({
        "type": WEBHOOK_TYPE,
        "timestamp": crate::views::rfc3339(now),
        "data": data,
    });
    serde_json::to_vec(&body)
        .map(WebhookBody::Ready)
        .map_err(|e| crate::store::StoreError::failed("cannot encode a message").caused_by(e))
}

/// A submission as JSON, the way destinations and the export archive hold it: `{id, endpoint,
/// type, state, patient_ref, session_id, completion_source, received_at, fetched_at,
/// external_patient_ref, note_id, demographics, forms, progress_note, patient, note}`.
pub fn submission(
    record: &crate::store::PatientFormRecord,
    content: &Content,
) -> serde_json::Value {
    serde_json::json!({
        "id": record.id,
        "endpoint": record.endpoint,
        "type": record.kind,
        "state": record.state.as_str(),
        "patient_ref": record.patient_ref,
        "session_id": record.session_id,
        "completion_source": record.completion_source,
        "received_at": crate::views::rfc3339(record.received_at),
        "fetched_at": record.fetched_at.map(crate::views::rfc3339),
        "external_patient_ref": content.external_patient_ref,
        "note_id": content.note_id,
        "demographics": content.demographics(),
        "forms": content.completed_forms(),
        "progress_note": content.progress_note(),
        "patient": content.patient,
        "note": content.note,
    })
}

/// A JSON Pointer token (RFC 6901): `~` and `/` escaped.
fn pointer_escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// Whether `text` can name something in an Open API address (a patient ref, a session id):
/// 1 to 128 of letters, digits, `-`, `.` and `_`, not only dots. Nothing else is put in a URL
/// the relay sends its site credentials to.
pub fn safe_segment(text: &str) -> bool {
    (1..=128).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        && !text.bytes().all(|b| b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completed_forms_are_listed_by_name_with_their_hidden_flags() {
        let content = Content {
            note: Some(serde_json::json!({
                "completedForms": {"intake/v2": {"zName": "Zoë", "age": 41}, "b": {}},
                "formMetadata": {"intake/v2": {"age": {"hidden": true}}}
            })),
            ..Content::default()
        };
        let forms = content.completed_forms();
        assert_eq!(forms.len(), 2);
        assert_eq!(forms[1].form_ref, "intake/v2");
        assert_eq!(forms[1].fields[0].name, "age");
        assert!(forms[1].fields[0].hidden);
        assert_eq!(forms[1].fields[1].value, "Zoë");
        assert!(!forms[1].fields[1].hidden);
        assert!(Content::default().completed_forms().is_empty());
    }

    #[test]
    fn only_plain_identifiers_go_into_addresses() {
        for ok in ["690", "1759442545187t415674", "a-b_c.d"] {
            assert!(safe_segment(ok), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "a?b", "a b", "é", &"x".repeat(129)] {
            assert!(!safe_segment(bad), "{bad}");
        }
    }
}
