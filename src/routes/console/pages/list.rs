//! `/console/referrals`: the referral list with its filters, a page at a time.

use std::collections::BTreeSet;

use axum::extract::State;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::domain::ServiceId;
use crate::error::AppError;
use crate::routes::console::session::ConsoleUser;
use crate::routes::console::templates::render;
use crate::routes::console::views::{day, shown};
use crate::routes::console::{ConsoleQuery, PageError};
use crate::state::AppState;
use crate::store::{ReferralRecord, StoreError};

/// The service column of a referral filed under none.
const UNASSIGNED: &str = "(unassigned)";
/// Rows per page of the referral list.
const PAGE_ROWS: usize = 50;
/// Referrals one page reads from the store at most while filling up.
const MAX_SCAN: usize = 5_000;
/// Referrals read from the store at a time.
const BATCH: usize = 200;

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
    let scope = user.scope();
    let service = if filter.service_id.is_empty() {
        None
    } else {
        let s = ServiceId::parse(&filter.service_id)
            .map_err(|e| AppError::BadRequest(format!("service: {e}")))?;
        Some(scope.service(s)?)
    };
    let exported = exported_filter(&filter.exported)?;
    let (mut start, mut skip) = if filter.page.is_empty() {
        (None, 0)
    } else {
        read_page(&filter.page)
            .ok_or_else(|| AppError::BadRequest("page: not a page of this list".into()))?
    };
    let previous_visit = user.session.changes_since;
    // What is new to the user next time; a store that cannot keep it does not hide the list.
    if let Err(e) = state
        .console_sessions
        .looked_at_list(&user.session.account, OffsetDateTime::now_utc())
        .await
    {
        tracing::warn!(error = %e.chain(), "could not record the console user's visit to the list");
    }
    let keep = |r: &ReferralRecord| {
        scope.sees(r)
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
    let next = next_page.map(|(key, skip)| next_query(&filter, &write_page(key.as_deref(), skip)));
    let services = offered_services(&state, &user, &rows);
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

/// The `exported` filter: `yes`, `no`, or empty for either.
fn exported_filter(raw: &str) -> Result<Option<bool>, AppError> {
    match raw {
        "" => Ok(None),
        "yes" => Ok(Some(true)),
        "no" => Ok(Some(false)),
        other => Err(AppError::BadRequest(format!(
            "exported: '{other}' is not yes, no or empty"
        ))),
    }
}

/// The query string of the list's next `page` under the same filters.
fn next_query(filter: &ListFilter, page: &str) -> String {
    serde_urlencoded::to_string([
        ("service_id", filter.service_id.as_str()),
        ("status", filter.status.as_str()),
        ("from", filter.from.as_str()),
        ("to", filter.to.as_str()),
        ("exported", filter.exported.as_str()),
        ("page", page),
    ])
    .unwrap_or_default()
}

/// What the service field offers: the user's services, or (unlimited) those configured and
/// those on this page.
fn offered_services(state: &AppState, user: &ConsoleUser, rows: &[Row]) -> BTreeSet<String> {
    if !user.service_ids.is_empty() {
        return user.service_ids.iter().map(ToString::to_string).collect();
    }
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
