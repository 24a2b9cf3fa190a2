//! `/patient-forms`: eForms patients completed through Ocean's Patient Engagement, as a feed
//! of submissions in the order their notifications were recorded, and each one with the
//! patient, the completed forms and the progress note. For clients not limited to some service
//! ids only: a submission has no External Service ID to scope it by.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::extract::{Caller, Path, ProblemDoc, Query, after_param, limit, rfc3339};
use crate::auth::api::ApiClient;
use crate::error::{AppError, Problem};
use crate::patient_engagement::Content;
use crate::routes::request::whole_number;
use crate::state::AppState;
use crate::store::{PatientFormRecord, PatientFormState};

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PatientFormsQuery {
    /// Only submissions with a greater id (0, the default, from the start).
    after: Option<String>,
    /// Page size (default 100; capped at 500).
    limit: Option<String>,
}

/// One submission, as the feed lists it.
#[derive(Debug, Serialize, ToSchema)]
pub struct PatientFormSummary {
    /// Increasing, in the order the notifications were recorded: the feed's position.
    id: u64,
    /// The `[patient_engagement.NAME]` endpoint that received it.
    endpoint: String,
    /// The notification's type, e.g. `notify-patient-message-forms-completion`.
    r#type: String,
    /// Ocean's patient ref.
    patient_ref: String,
    /// Ocean's session id, whose note holds the completed forms.
    session_id: Option<String>,
    /// `PORTAL`, `PATIENT` or `TABLET`, as Ocean said.
    completion_source: Option<String>,
    /// `pending` (being fetched from Ocean), `fetched` or `failed` (given up; `last_error` says why).
    state: &'static str,
    attempts: u32,
    /// Why the last attempt failed (for a failed submission, why it was given up).
    last_error: Option<String>,
    #[schema(format = DateTime)]
    received_at: String,
    /// When a pending submission is tried next.
    #[schema(format = DateTime)]
    next_attempt_at: Option<String>,
    #[schema(format = DateTime)]
    fetched_at: Option<String>,
    /// True once retention dropped what was fetched.
    purged: bool,
}

impl From<PatientFormRecord> for PatientFormSummary {
    fn from(r: PatientFormRecord) -> Self {
        Self {
            id: r.id,
            endpoint: r.endpoint,
            r#type: r.kind,
            patient_ref: r.patient_ref,
            session_id: r.session_id,
            completion_source: r.completion_source,
            state: r.state.as_str(),
            attempts: r.attempts,
            last_error: r.last_error,
            received_at: rfc3339(r.received_at),
            next_attempt_at: (r.state == PatientFormState::Pending)
                .then(|| rfc3339(r.next_attempt_at)),
            fetched_at: r.fetched_at.map(rfc3339),
            purged: r.purged,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PatientFormPage {
    patient_forms: Vec<PatientFormSummary>,
    /// Pass as `after` next time: the last id listed (`after` again when none was).
    next: u64,
}

/// One field of a completed form.
#[derive(Debug, Serialize, ToSchema)]
pub struct FormFieldView {
    name: String,
    /// The value as Ocean sent it: any JSON value (a string, a number, a list, ...).
    value: serde_json::Value,
    /// The form hid this field from the patient.
    hidden: bool,
}

/// One completed form, its fields by name.
#[derive(Debug, Serialize, ToSchema)]
pub struct CompletedFormView {
    form_ref: String,
    fields: Vec<FormFieldView>,
}

/// One submission, with what was fetched from Ocean (null while pending, when failed, or once
/// purged).
#[derive(Debug, Serialize, ToSchema)]
pub struct PatientFormView {
    #[serde(flatten)]
    summary: PatientFormSummary,
    /// The clinic's own patient reference (Ocean's `extPatientRef`).
    external_patient_ref: Option<String>,
    /// The patient's `demographics` as Ocean sent them (names, `birthDate`, `hn`, `address`, ...).
    #[schema(value_type = Option<Object>)]
    demographics: Option<serde_json::Value>,
    /// The completed forms with their field values.
    forms: Vec<CompletedFormView>,
    /// The progress note: `title`, `text`, `noteType`.
    #[schema(value_type = Option<Object>)]
    progress_note: Option<serde_json::Value>,
    /// Ocean's `noteId`.
    note_id: Option<String>,
    /// The decrypted patient, whole, as Ocean served it.
    #[schema(value_type = Option<Object>)]
    patient: Option<serde_json::Value>,
    /// The decrypted note, whole, as Ocean served it (`emrFieldUpdates`, `formMetadata`, ...).
    #[schema(value_type = Option<Object>)]
    note: Option<serde_json::Value>,
}

/// Patient forms are not filed under an External Service ID: a client limited to some sees none.
fn unscoped(client: &ApiClient) -> Result<(), AppError> {
    client.scope().patient_forms()
}

/// The submissions of patients' completed eForms, in the order their notifications were
/// recorded, each with where its fetch from Ocean stands. Read on with `after` = `next`; a
/// submission listed as `pending` is listed again with its outcome only when read by id.
/// Clients limited to some service ids are refused (403): submissions have none.
#[utoipa::path(
    get,
    path = "/patient-forms",
    params(PatientFormsQuery),
    responses(
        (status = 200, description = "A page of submissions", body = PatientFormPage),
        (status = 403, description = "The client is limited to some service ids", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
pub async fn list_patient_forms(
    State(state): State<AppState>,
    Caller(client): Caller,
    Query(q): Query<PatientFormsQuery>,
) -> Result<Json<PatientFormPage>, Problem> {
    unscoped(&client)?;
    let after = after_param(q.after.as_deref())?;
    let limit = limit(q.limit.as_deref())?;
    let records = state.store.patient_forms(after, limit).await?;
    let next = records.last().map_or(after, |r| r.id);
    Ok(Json(PatientFormPage {
        patient_forms: records.into_iter().map(PatientFormSummary::from).collect(),
        next,
    }))
}

/// One submission: the patient's demographics, the completed forms with their field values,
/// the progress note, and the whole decrypted patient and note as Ocean served them. Clients
/// limited to some service ids are refused (403).
#[utoipa::path(
    get,
    path = "/patient-forms/{id}",
    params(("id" = u64, Path, description = "The submission's id")),
    responses(
        (status = 200, description = "The submission", body = PatientFormView),
        (status = 403, description = "The client is limited to some service ids", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such submission", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
pub async fn get_patient_form(
    State(state): State<AppState>,
    Caller(client): Caller,
    Path(id): Path<String>,
) -> Result<Json<PatientFormView>, Problem> {
    unscoped(&client)?;
    let not_found = || AppError::NotFound("no patient form has this id".into());
    let id = whole_number(&id).ok_or_else(not_found)?;
    let record = state.store.patient_form(id).await?.ok_or_else(not_found)?;
    let content = match state.store.patient_form_content(id).await? {
        Some(bytes) => Some(serde_json::from_slice::<Content>(&bytes).map_err(|e| {
            AppError::Internal(anyhow::Error::new(e).context("a patient form's content"))
        })?),
        None => None,
    };
    let content = content.unwrap_or_default();
    let has_patient = !content.patient.is_null();
    Ok(Json(PatientFormView {
        summary: record.into(),
        forms: content
            .completed_forms()
            .into_iter()
            .map(|f| CompletedFormView {
                form_ref: f.form_ref,
                fields: f
                    .fields
                    .into_iter()
                    .map(|field| FormFieldView {
                        name: field.name,
                        value: field.value,
                        hidden: field.hidden,
                    })
                    .collect(),
            })
            .collect(),
        demographics: content.demographics().cloned(),
        progress_note: content.progress_note().cloned(),
        external_patient_ref: content.external_patient_ref,
        note_id: content.note_id,
        patient: has_patient.then_some(content.patient),
        note: content.note,
    }))
}
