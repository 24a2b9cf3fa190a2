//! `/console/patient-forms`: the eForms patients completed through Ocean's Patient Engagement,
//! newest first, and one submission with its forms and note. For users not limited to some
//! service ids, admin or staff ([`Scope::patient_forms`](crate::auth::scope::Scope::patient_forms)):
//! submissions have no service to limit them by, and the clinic staff who file them into charts
//! are the ones who need them.

use axum::extract::State;
use axum::response::Response;
use serde::{Deserialize, Serialize};

use crate::error::AppError;
use crate::patient_engagement::Content;
use crate::routes::console::session::ConsoleUser;
use crate::routes::console::templates::render;
use crate::routes::console::views::shown;
use crate::routes::console::{ConsolePath, ConsoleQuery, PageError};
use crate::routes::request::whole_number;
use crate::state::AppState;
use crate::store::{PatientFormRecord, Store, StoreError};

/// Rows per page.
const PAGE_ROWS: u64 = 50;

/// The page's position: list the submissions with ids below `before` (empty: the newest).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct PageQuery {
    before: String,
}

#[derive(Serialize)]
struct Row {
    id: u64,
    received: String,
    endpoint: String,
    source: String,
    state: &'static str,
    patient: String,
    forms: usize,
    last_error: Option<String>,
}

/// A patient's name as the demographics give it (`lastName, firstName`), else empty.
fn patient_name(content: &Content) -> String {
    let part = |name: &str| {
        content
            .demographics()
            .and_then(|d| d.get(name))
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    match (part("lastName"), part("firstName")) {
        (last, first) if last.is_empty() => first,
        (last, first) if first.is_empty() => last,
        (last, first) => format!("{last}, {first}"),
    }
}

/// What was fetched for `record`, when it is kept.
async fn content(store: &dyn Store, record: &PatientFormRecord) -> Result<Content, StoreError> {
    let Some(bytes) = store.patient_form_content(record.id).await? else {
        return Ok(Content::default());
    };
    serde_json::from_slice(&bytes)
        .map_err(|e| StoreError::corrupt("a patient form's content").caused_by(e))
}

/// `/console/patient-forms`: a page of submissions, newest first.
pub async fn patient_forms(
    State(state): State<AppState>,
    user: ConsoleUser,
    ConsoleQuery(query): ConsoleQuery<PageQuery>,
) -> Result<Response, PageError> {
    user.scope().patient_forms()?;
    let before = if query.before.is_empty() {
        u64::MAX
    } else {
        whole_number(&query.before)
            .ok_or_else(|| AppError::BadRequest("before: not a position of this list".into()))?
    };
    let last = if before == u64::MAX {
        last_id(state.store.as_ref()).await?
    } else {
        before.saturating_sub(1)
    };
    let first = last.saturating_sub(PAGE_ROWS);
    let mut records = state
        .store
        .patient_forms(first, usize::try_from(last - first).unwrap_or(0))
        .await?;
    records.reverse();
    let mut rows = Vec::new();
    for record in &records {
        let content = content(state.store.as_ref(), record).await?;
        rows.push(Row {
            id: record.id,
            received: shown(record.received_at),
            endpoint: record.endpoint.clone(),
            source: record.completion_source.clone().unwrap_or_default(),
            state: record.state.as_str(),
            patient: patient_name(&content),
            forms: content.completed_forms().len(),
            last_error: record.last_error.clone(),
        });
    }
    let older = (first > 0).then_some(first + 1);
    Ok(render(
        "patient_forms.html",
        minijinja::context! {
            section => "patient-forms",
            rows => rows,
            older => older,
            ..user.header()
        },
    ))
}

/// The highest id stored (0 when none). Ids are given from 1 without gaps and never removed,
/// so it is found by point reads (doubling, then halving), not by reading every record.
async fn last_id(store: &dyn Store) -> Result<u64, StoreError> {
    let exists = async |id: u64| store.patient_form(id).await.map(|r| r.is_some());
    if !exists(1).await? {
        return Ok(0);
    }
    // `low` exists, `high` does not.
    let (mut low, mut high) = (1u64, 2u64);
    while exists(high).await? {
        low = high;
        high = high.saturating_mul(2);
    }
    while high - low > 1 {
        let middle = low + (high - low) / 2;
        if exists(middle).await? {
            low = middle;
        } else {
            high = middle;
        }
    }
    Ok(low)
}

#[derive(Serialize)]
struct Field {
    name: String,
    value: String,
    hidden: bool,
}

#[derive(Serialize)]
struct Form {
    form_ref: String,
    fields: Vec<Field>,
}

/// `/console/patient-forms/{id}`: one submission, its patient, forms and note.
pub async fn patient_form(
    State(state): State<AppState>,
    user: ConsoleUser,
    ConsolePath(id): ConsolePath<String>,
) -> Result<Response, PageError> {
    user.scope().patient_forms()?;
    let not_found = || AppError::NotFound("no patient form has this id".into());
    let id = whole_number(&id).ok_or_else(not_found)?;
    let record = state.store.patient_form(id).await?.ok_or_else(not_found)?;
    let content = content(state.store.as_ref(), &record).await?;
    let text = |value: &serde_json::Value| match value {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let forms: Vec<Form> = content
        .completed_forms()
        .into_iter()
        .map(|f| Form {
            form_ref: f.form_ref,
            fields: f
                .fields
                .into_iter()
                .map(|field| Field {
                    name: field.name,
                    value: text(&field.value),
                    hidden: field.hidden,
                })
                .collect(),
        })
        .collect();
    let demographics: Vec<(String, String)> = content
        .demographics()
        .and_then(serde_json::Value::as_object)
        .map(|d| d.iter().map(|(k, v)| (k.clone(), text(v))).collect())
        .unwrap_or_default();
    let note = content.progress_note().map(|n| {
        minijinja::context! {
            title => n.get("title").map(text),
            text => n.get("text").map(text),
        }
    });
    Ok(render(
        "patient_form.html",
        minijinja::context! {
            section => "patient-forms",
            id => record.id,
            state_name => record.state.as_str(),
            received => shown(record.received_at),
            fetched => record.fetched_at.map(shown),
            endpoint => record.endpoint,
            source => record.completion_source,
            last_error => record.last_error,
            purged => record.purged,
            patient => patient_name(&content),
            external_patient_ref => content.external_patient_ref,
            demographics => demographics,
            forms => forms,
            note => note,
            ..user.header()
        },
    ))
}
