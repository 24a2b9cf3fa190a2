//! The console's referral pages: the list with its filters, and one referral with its versions.

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::macros::format_description;

use super::session::ConsoleUser;
use super::templates::render;
use super::{ConsolePath, ConsoleQuery, PageError};
use crate::auth::api::may_see;
use crate::domain::{ServiceId, Summary};
use crate::error::AppError;
use crate::fhir::changes::{self, ResourceChangeKind, Resources};
use crate::routes::v1::extract::{visible_to, whole_number};
use crate::state::AppState;
use crate::store::{
    DocumentRecord, DocumentState, ReferralRecord, StoreError, UpdateRecord, VersionRecord,
};

/// The service column of a referral filed under none.
const UNASSIGNED: &str = "(unassigned)";
/// Rows per page of the referral list.
const PAGE_ROWS: usize = 50;
/// Referrals one page reads from the store at most while filling up.
const MAX_SCAN: usize = 5_000;
/// Referrals read from the store at a time.
const BATCH: usize = 200;
/// Versions whose message is shown in the referral page (the latest); older ones are offered
/// as downloads, so a referral with many versions stays a page of reasonable size.
const SHOWN_VERSIONS: usize = 5;
/// Payloads up to this size (bytes) are shown pretty-printed in the page; larger ones are
/// offered as a download only.
const SHOWN_PAYLOAD_BYTES: usize = 1024 * 1024;

/// `/console`: the referrals, or the sign-in page for someone not signed in.
pub async fn home(State(state): State<AppState>) -> Response {
    if state.config().console.users.is_empty() {
        return Redirect::to("/console/login").into_response();
    }
    Redirect::to("/console/referrals").into_response()
}

/// The list's filters, as the form sends them (empty fields are no filter).
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct ListFilter {
    service_id: String,
    status: String,
    /// Modified on or after this day (`YYYY-MM-DD`, UTC).
    from: String,
    /// Modified on or before this day (`YYYY-MM-DD`, UTC).
    to: String,
    /// `yes`, `no`, or empty for either.
    exported: String,
    /// Where the page starts: the store's key from the previous page (base64url).
    #[serde(skip_serializing)]
    page: String,
}

#[derive(Serialize)]
struct Row {
    referral: String,
    patient: String,
    service: String,
    status: String,
    received: String,
    modified: String,
    exported: Option<String>,
    changed: bool,
}

/// A time as the console shows it: `2026-11-30 14:05 UTC`.
pub(super) fn shown(at: OffsetDateTime) -> String {
    at.to_offset(time::UtcOffset::UTC)
        .format(format_description!(
            "[year]-[month]-[day] [hour]:[minute] UTC"
        ))
        .unwrap_or_default()
}

pub(super) fn day(
    name: &str,
    raw: &str,
    end_of_day: bool,
) -> Result<Option<OffsetDateTime>, AppError> {
    if raw.is_empty() {
        return Ok(None);
    }
    let date = time::Date::parse(raw, format_description!("[year]-[month]-[day]"))
        .map_err(|_| AppError::BadRequest(format!("{name}: '{raw}' is not a date (YYYY-MM-DD)")))?;
    let at = if end_of_day {
        date.with_hms_nano(23, 59, 59, 999_999_999)
    } else {
        date.with_hms(0, 0, 0)
    }
    .map_err(|_| AppError::BadRequest(format!("{name}: '{raw}' is not a date")))?;
    Ok(Some(at.assume_utc()))
}

/// `/console/referrals`: referrals by modification time (oldest first within the range),
/// filtered, a page at a time; what changed since the user last looked at the list before this
/// session is marked, all session long.
pub async fn referrals(
    State(state): State<AppState>,
    user: ConsoleUser,
    ConsoleQuery(filter): ConsoleQuery<ListFilter>,
) -> Result<Response, PageError> {
    let from = day("from", &filter.from, false)?;
    let to = day("to", &filter.to, true)?;
    let service = if filter.service_id.is_empty() {
        None
    } else {
        let s = ServiceId::parse(&filter.service_id)
            .map_err(|e| AppError::BadRequest(format!("service: {e}")))?;
        if !may_see(&user.service_ids, Some(&s)) {
            return Err(PageError(AppError::Forbidden(format!(
                "{} may not read referrals of service {s}",
                user.name
            ))));
        }
        Some(s)
    };
    let exported = match filter.exported.as_str() {
        "" => None,
        "yes" => Some(true),
        "no" => Some(false),
        other => {
            return Err(PageError(AppError::BadRequest(format!(
                "exported: '{other}' is not yes, no or empty"
            ))));
        }
    };
    let (mut start, mut skip) = if filter.page.is_empty() {
        (None, 0)
    } else {
        read_page(&filter.page)
            .ok_or_else(|| AppError::BadRequest("page: not a page of this list".into()))?
    };
    let previous_visit = user.session.changes_since;
    state
        .console_sessions
        .looked_at_list(&user.name, OffsetDateTime::now_utc());
    let keep = |r: &ReferralRecord| {
        may_see(&user.service_ids, r.service_id.as_ref())
            && service
                .as_ref()
                .is_none_or(|s| r.service_id.as_ref() == Some(s))
            && (filter.status.is_empty() || r.summary.status() == Some(filter.status.as_str()))
            && exported.is_none_or(|e| r.exported_at.is_some() == e)
    };
    // Fixed batches from the store; a page that fills up part way through one continues, on
    // the next page, at the same batch's start, skipping the rows already looked at (store
    // cursors are the store's own, so the handler makes none). A page that scanned `MAX_SCAN`
    // referrals without filling up ends early, with a link to go on.
    let mut rows = Vec::new();
    let mut scanned = 0;
    let mut next_page: Option<(Option<Vec<u8>>, usize)> = None;
    'scan: while scanned < MAX_SCAN {
        let batch = match state
            .store
            .referrals_modified(from, to, start.clone(), BATCH)
            .await
        {
            Ok(batch) => batch,
            // A cursor edited by hand: the store says it never gave it.
            Err(StoreError::Corrupt { .. }) if start.is_some() => {
                return Err(PageError(AppError::BadRequest(
                    "page: not a page of this list".into(),
                )));
            }
            Err(e) => return Err(e.into()),
        };
        let count = batch.referrals.len();
        for (i, record) in batch.referrals.iter().enumerate().skip(skip) {
            scanned += 1;
            if keep(record) {
                rows.push(row(record, previous_visit));
            }
            if rows.len() == PAGE_ROWS {
                next_page = if i + 1 < count {
                    Some((start.clone(), i + 1))
                } else {
                    batch.next.clone().map(|key| (Some(key), 0))
                };
                break 'scan;
            }
        }
        skip = 0;
        match batch.next {
            Some(key) => start = Some(key),
            None => break,
        }
        if scanned >= MAX_SCAN {
            next_page = Some((start.clone(), 0));
        }
    }
    let scan_limited = rows.len() < PAGE_ROWS && next_page.is_some();
    let mut next = None;
    if let Some((key, skip)) = next_page {
        let page = write_page(key.as_deref(), skip);
        next = Some(
            serde_urlencoded::to_string([
                ("service_id", filter.service_id.as_str()),
                ("status", filter.status.as_str()),
                ("from", filter.from.as_str()),
                ("to", filter.to.as_str()),
                ("exported", filter.exported.as_str()),
                ("page", page.as_str()),
            ])
            .unwrap_or_default(),
        );
    }
    // Offered in the service field: the user's services, or (unlimited) those configured and
    // those on this page.
    let services: std::collections::BTreeSet<String> = if user.service_ids.is_empty() {
        let config = state.config();
        config
            .integrations
            .values()
            .filter_map(|i| i.default_service())
            .chain(config.sites.values().flat_map(|s| s.service_ids.clone()))
            .map(|s| s.to_string())
            .chain(
                rows.iter()
                    .filter(|r| r.service != UNASSIGNED)
                    .map(|r| r.service.clone()),
            )
            .collect()
    } else {
        user.service_ids.iter().map(ToString::to_string).collect()
    };
    Ok(render(
        "referrals.html",
        minijinja::context! {
            section => "referrals",
            rows => rows,
            filter => filter,
            services => services,
            next => next,
            scan_limited => scan_limited,
            scanned => scanned,
            ..user.header()
        },
    ))
}

/// A page of the referral list: where its first store batch starts (`None`: the range's start)
/// and how many rows of that batch earlier pages showed. Base64url of the count (4 bytes,
/// big-endian), then the store's cursor, if any.
fn write_page(start: Option<&[u8]>, skip: usize) -> String {
    let mut bytes = u32::try_from(skip)
        .unwrap_or(u32::MAX)
        .to_be_bytes()
        .to_vec();
    if let Some(start) = start {
        bytes.extend_from_slice(start);
    }
    base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, bytes)
}

fn read_page(page: &str) -> Option<(Option<Vec<u8>>, usize)> {
    let bytes =
        base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, page).ok()?;
    let (skip, start) = bytes.split_first_chunk::<4>()?;
    let skip = usize::try_from(u32::from_be_bytes(*skip)).ok()?;
    if skip >= BATCH {
        return None;
    }
    Some(((!start.is_empty()).then(|| start.to_vec()), skip))
}

fn row(r: &ReferralRecord, previous_visit: Option<OffsetDateTime>) -> Row {
    Row {
        referral: r.referral.to_string(),
        patient: r.summary.patient_name.clone().unwrap_or_default(),
        service: r
            .service_id
            .as_ref()
            .map_or_else(|| UNASSIGNED.to_owned(), ToString::to_string),
        status: r.summary.status().unwrap_or_default().to_owned(),
        received: shown(r.created_at),
        modified: shown(r.modified_at),
        exported: r.exported_at.map(shown),
        changed: previous_visit.is_some_and(|v| r.modified_at > v),
    }
}

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
    let (reference, record) = visible_to(&state, &user.name, &user.service_ids, &referral).await?;
    let versions = state.store.versions(&reference).await?;
    let mut views = Vec::with_capacity(versions.len());
    let mut before: Option<&VersionRecord> = None;
    // Resources of the version before, when its message could be read.
    let mut before_resources: Option<Resources> = None;
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
        let resources = value.as_ref().map(Resources::of_bundle);
        let mut changed = changes(before.map(|b| &b.summary), &v.summary);
        if let (Some(old), Some(new)) = (&before_resources, &resources) {
            changed.extend(resource_changes(old, new));
        }
        views.push(VersionView {
            version: v.version,
            event: v.event.to_string(),
            received: shown(v.received_at),
            integration: v.integration.to_string(),
            purged: v.purged,
            late: v.late,
            problems: v.problems.clone(),
            changes: changed,
            json,
        });
        before = Some(v);
        before_resources = resources;
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
            pushed => super::destinations::pushed(&state, &reference).await?,
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
    let (reference, _) = visible_to(&state, &user.name, &user.service_ids, &referral).await?;
    Ok(crate::routes::v1::documents::document_response(&state, &reference, version, index).await?)
}

/// One update sent (or to be sent) to Ocean, as the referral and outbox pages list it.
#[derive(Serialize)]
pub(super) struct UpdateRow {
    id: u64,
    referral: String,
    kind: &'static str,
    detail: String,
    state: String,
    attempts: u32,
    last_error: Option<String>,
    accepted: String,
    delivered: Option<String>,
    next_attempt: String,
}

pub(super) fn update_row(u: &UpdateRecord) -> UpdateRow {
    let detail = match (&u.task_status, &u.appointment) {
        (Some(status), _) => status.clone(),
        (None, Some(slot)) => serde_json::to_value(slot)
            .ok()
            .and_then(|v| v.get("start").and_then(|s| s.as_str().map(str::to_owned)))
            .unwrap_or_default(),
        _ => String::new(),
    };
    UpdateRow {
        id: u.id,
        referral: u.referral.to_string(),
        kind: u.kind.as_str(),
        detail,
        state: serde_json::to_value(u.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        attempts: u.attempts,
        last_error: u.last_error.clone(),
        accepted: shown(u.created_at),
        delivered: u.delivered_at.map(shown),
        next_attempt: shown(u.next_attempt_at),
    }
}

/// How a message's resources differ from the message before's, as the page lists them.
fn resource_changes(before: &Resources, now: &Resources) -> Vec<String> {
    let changes = changes::resource_changes(before, now);
    let mut lines: Vec<String> = changes
        .iter()
        .filter_map(|c| match c.change {
            ResourceChangeKind::Added => Some(format!("new: {}", c.name)),
            ResourceChangeKind::Changed => Some(format!("changed: {}", c.name)),
            ResourceChangeKind::Removed => None,
        })
        .collect();
    let dropped: Vec<&str> = changes
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

/// What a version's own summary changed from the one before: `Label: old → new` for each field
/// it carries with a different value (the first version lists what it set).
fn changes(before: Option<&Summary>, now: &Summary) -> Vec<String> {
    SUMMARY_LABELS
        .iter()
        .filter_map(|(field, label)| {
            let new = summary_value(now, field)?;
            let old = before.and_then(|b| summary_value(b, field));
            match old {
                Some(old) if old == new => None,
                Some(old) => Some(format!("{label}: {old} → {new}")),
                None => Some(format!("{label}: {new}")),
            }
        })
        .collect()
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
    let (reference, _) = visible_to(&state, &user.name, &user.service_ids, &referral).await?;
    let raw = state
        .store
        .payload(&reference, version)
        .await?
        .ok_or_else(|| {
            AppError::NotFound(format!(
                "referral {reference} has no version {version} to download"
            ))
        })?;
    let mut response = raw.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(crate::error::FHIR_JSON),
    );
    let name = format!(
        "attachment; filename=\"{}-v{version}.json\"",
        reference.file_stem()
    );
    if let Ok(value) = HeaderValue::from_str(&name) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    Ok(response)
}
