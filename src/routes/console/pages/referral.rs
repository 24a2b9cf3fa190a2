//! `/console/referrals/{referral}`: one referral, its versions with what each changed, its
//! updates, pushes and documents, and the downloads of a version or a document.

use axum::extract::State;
use axum::response::Response;
use serde::Serialize;

use crate::domain::{Change, Summary};
use crate::error::AppError;
use crate::fhir::changes::{ResourceChangeKind, Resources};
use crate::routes::console::session::ConsoleUser;
use crate::routes::console::templates::render;
use crate::routes::console::views::{UpdateRow, shown, update_row};
use crate::routes::console::{ConsolePath, PageError};
use crate::routes::request::{self, whole_number};
use crate::state::AppState;
use crate::store::{DocumentRecord, DocumentState, ReferralRecord};
use crate::views::{VersionChanges, VersionWalk};

/// Versions whose message is shown in the referral page (the latest); older ones are offered
/// as downloads, so a referral with many versions stays a page of reasonable size.
const SHOWN_VERSIONS: usize = 5;
/// Payloads up to this size (bytes) are shown pretty-printed in the page; larger ones are
/// offered as a download only.
const SHOWN_PAYLOAD_BYTES: usize = 1024 * 1024;

#[derive(Serialize)]
struct VersionView {
    version: u64,
    event: String,
    received: String,
    integration: String,
    purged: bool,
    /// Made before the version that was current when it arrived.
    late: bool,
    problems: Vec<String>,
    changes: Vec<String>,
    json: String,
}

/// `/console/referrals/{referral}`: the summary, and every version with what it changed and
/// the message as received.
pub async fn referral(
    State(state): State<AppState>,
    user: ConsoleUser,
    ConsolePath(referral): ConsolePath<String>,
) -> Result<Response, PageError> {
    let (reference, record) = request::referral(&state, &user.scope(), &referral).await?;
    let versions = state.store.versions(&reference).await?;
    let mut views = Vec::with_capacity(versions.len());
    let mut walk = VersionWalk::default();
    let mut previous_change = None;
    // Older versions' messages are read for what they changed, not shown.
    let first_shown = versions.len().saturating_sub(SHOWN_VERSIONS);
    for (n, v) in versions.iter().enumerate() {
        let raw = if v.purged || v.size > SHOWN_PAYLOAD_BYTES as u64 {
            None
        } else {
            state.store.payload(&reference, v.version).await?
        };
        let value = raw
            .as_deref()
            .and_then(|raw| serde_json::from_slice::<serde_json::Value>(raw).ok());
        let json = match (&value, &raw) {
            _ if n < first_shown => String::new(),
            (Some(value), _) => serde_json::to_string_pretty(value).unwrap_or_default(),
            (None, Some(raw)) => String::from_utf8_lossy(raw).into_owned(),
            (None, None) => String::new(),
        };
        let (_, changed) = walk.step(&reference, v, value.as_ref().map(Resources::of_bundle));
        views.push(VersionView {
            version: v.version,
            event: v.event.to_string(),
            received: shown(v.received_at),
            integration: v.integration.to_string(),
            purged: v.purged,
            late: v.late,
            problems: v.problems.clone(),
            changes: change_lines(&changed, previous_change),
            json,
        });
        previous_change = changed.latest_change();
    }
    // Newest first, as a timeline reads.
    views.reverse();
    let (current_status, next_statuses) = state.outbox.status_choices(&record).await?;
    let updates: Vec<UpdateRow> = crate::store::referral_updates(state.store.as_ref(), &reference)
        .await?
        .iter()
        .rev()
        .map(update_row)
        .collect();
    // Newest version's documents first, as the timeline reads.
    let documents: Vec<DocumentRow> = state
        .store
        .documents(&reference)
        .await?
        .iter()
        .rev()
        .map(document_row)
        .collect();
    Ok(render(
        "referral.html",
        minijinja::context! {
            section => "referrals",
            r => minijinja::context! { referral => record.referral.to_string() },
            fields => summary_fields(&record),
            versions => views,
            current_status => current_status,
            next_statuses => next_statuses,
            has_appointment => record.summary.appointment_start.is_some()
                || updates.iter().any(|u| u.kind == "appointment"),
            updates => updates,
            pushed => crate::routes::console::destinations::pushed(&state, &reference).await?,
            documents => documents,
            ..user.header()
        },
    ))
}

/// One document kept with the referral, as its page lists it.
#[derive(Serialize)]
struct DocumentRow {
    version: u64,
    index: u32,
    kind: &'static str,
    title: String,
    state: &'static str,
    size: u64,
    last_error: Option<String>,
    /// Offered for download once fetched and not purged.
    downloadable: bool,
    purged: bool,
}

fn document_row(d: &DocumentRecord) -> DocumentRow {
    DocumentRow {
        version: d.version,
        index: d.index,
        kind: d.kind.as_str(),
        title: d.title.clone().unwrap_or_else(|| d.file_name()),
        state: d.state.as_str(),
        size: d.size,
        last_error: d.last_error.clone(),
        downloadable: d.state == DocumentState::Fetched && !d.purged,
        purged: d.purged,
    }
}

/// `/console/referrals/{referral}/documents/{version}/{index}`: one document's bytes.
pub async fn document(
    State(state): State<AppState>,
    user: ConsoleUser,
    ConsolePath((referral, version, index)): ConsolePath<(String, String, String)>,
) -> Result<Response, PageError> {
    let version = whole_number(&version)
        .ok_or_else(|| AppError::BadRequest("version must be a whole number".into()))?;
    let index = whole_number(&index)
        .ok_or_else(|| AppError::BadRequest("index must be a whole number".into()))?;
    let (reference, _) = request::referral(&state, &user.scope(), &referral).await?;
    Ok(crate::routes::download::document(&state, &reference, version, index).await?)
}

/// What a version changed ([`VersionWalk`]) as the timeline lists it: what its message was
/// about when that differs from `previous` (the version before's), `Label: before → after`
/// for each summary field a person reads (`Label: after` when it had none, `Label: before →
/// (none)` when the version cleared it), then the message's resources: `new: X`, `changed: X`,
/// and one `not carried this time: …` line.
fn change_lines(changes: &VersionChanges, previous: Option<Change>) -> Vec<String> {
    let text = |value: &serde_json::Value| match value {
        serde_json::Value::String(text) => Some(text.clone()),
        serde_json::Value::Null => None,
        other => Some(other.to_string()),
    };
    let mut lines: Vec<String> = SUMMARY_LABELS
        .iter()
        .filter_map(|(field, label)| {
            let change = changes.fields().iter().find(|c| c.field() == *field)?;
            let (before, after) = change.values();
            match (text(before), text(after)) {
                (None, Some(after)) => Some(format!("{label}: {after}")),
                (Some(before), Some(after)) => Some(format!("{label}: {before} → {after}")),
                (Some(before), None) => Some(format!("{label}: {before} → (none)")),
                (None, None) => None,
            }
        })
        .collect();
    // What Ocean's message was about, when it differs from the version before's.
    if let Some(change) = changes.latest_change().filter(|c| Some(*c) != previous) {
        lines.insert(0, format!("Latest change: {}", change.as_str()));
    }
    let resources = changes.resources().unwrap_or_default();
    lines.extend(resources.iter().filter_map(|c| match c.change {
        ResourceChangeKind::Added => Some(format!("new: {}", c.name)),
        ResourceChangeKind::Changed => Some(format!("changed: {}", c.name)),
        ResourceChangeKind::Removed => None,
    }));
    let dropped: Vec<&str> = resources
        .iter()
        .filter(|c| c.change == ResourceChangeKind::Removed)
        .map(|c| c.name.as_str())
        .collect();
    if !dropped.is_empty() {
        lines.push(format!("not carried this time: {}", dropped.join(", ")));
    }
    lines
}

/// The summary rows of the referral page: (label, value), empty ones left out.
fn summary_fields(r: &ReferralRecord) -> Vec<(String, String)> {
    let s = &r.summary;
    let mut fields = vec![
        ("Status".to_owned(), s.status().map(str::to_owned)),
        (
            "Service".to_owned(),
            r.service_id.as_ref().map(ToString::to_string),
        ),
        ("Latest event".to_owned(), Some(r.latest_event.to_string())),
        ("Versions".to_owned(), Some(r.version.to_string())),
        ("Received".to_owned(), Some(shown(r.created_at))),
        ("Modified".to_owned(), Some(shown(r.modified_at))),
        ("Exported".to_owned(), r.exported_at.map(shown)),
    ];
    fields.extend(
        SUMMARY_LABELS
            .iter()
            .map(|(field, label)| ((*label).to_owned(), summary_value(s, field))),
    );
    fields
        .into_iter()
        .filter_map(|(label, value)| value.filter(|v| !v.is_empty()).map(|v| (label, v)))
        .collect()
}

/// The summary fields a person reads, with their labels, in page order.
const SUMMARY_LABELS: [(&str, &str); 22] = [
    ("latest_change", "Latest change"),
    ("patient_name", "Patient"),
    ("patient_phone", "Phone"),
    ("patient_email", "Email"),
    ("referrer_name", "Referrer"),
    ("referrer_professional_id", "Referrer ID"),
    ("referring_site", "Referring site"),
    ("recipient_listing", "Listing"),
    ("description", "Reason"),
    ("authored_on", "Authored"),
    ("service_request_status", "ServiceRequest status"),
    ("task_status", "Task status"),
    ("task_status_reason", "Task status reason"),
    ("appointment_status", "Appointment"),
    ("appointment_start", "Appointment start"),
    ("revocation_reason", "Revocation reason"),
    ("split_from", "Split from"),
    ("task_id", "Ocean's Task"),
    ("task_business_status", "Task business status"),
    ("message_text", "Latest message"),
    ("message_sender", "Message from"),
    ("message_sent", "Message sent"),
];

/// One summary field as text (notes joined), through its JSON form so every field reads alike.
fn summary_value(s: &Summary, field: &str) -> Option<String> {
    let value = serde_json::to_value(s).ok()?;
    match value.get(field)? {
        serde_json::Value::String(text) => Some(text.clone()),
        serde_json::Value::Null => None,
        other => Some(other.to_string()),
    }
}

/// `/console/referrals/{referral}/versions/{n}/raw`: the version exactly as received, as a
/// download named by referral and version.
pub async fn raw_version(
    State(state): State<AppState>,
    user: ConsoleUser,
    ConsolePath((referral, version)): ConsolePath<(String, String)>,
) -> Result<Response, PageError> {
    let version = whole_number(&version)
        .ok_or_else(|| AppError::BadRequest("version must be a whole number".into()))?;
    let (reference, _) = request::referral(&state, &user.scope(), &referral).await?;
    Ok(crate::routes::download::version(&state, &reference, version, true).await?)
}
