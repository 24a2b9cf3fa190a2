//! `/referrals`: referrals by their latest change, one referral with its versions, and each
//! version exactly as received.

use axum::Json;
use axum::extract::State;
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::extract::{Caller, Path, ProblemDoc, Query, instant, limit, service_param, visible};
use crate::error::{AppError, Problem};
use crate::routes::request::whole_number;
use crate::state::AppState;
use crate::views::{ReferralView, VersionChanges, VersionView, version_view};

/// Feed entries one listing request reads at most before answering with a cursor.
const MAX_SCAN: usize = 20_000;

#[derive(Debug, Serialize, ToSchema)]
pub struct ReferralPage {
    referrals: Vec<ReferralView>,
    /// Pass as `cursor` for the next page; null when the listing is complete.
    next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReferralDetail {
    referral: ReferralView,
    versions: Vec<VersionView>,
}

/// What a listing cursor looks like: two feed sequence numbers, `after.until`.
pub const CURSOR_PATTERN: &str = "^(0|[1-9][0-9]{0,18})\\.(0|[1-9][0-9]{0,18})$";

/// The listing's position: after `after`, in the snapshot bounded by `until`.
fn encode_cursor(after: u64, until: u64) -> String {
    format!("{after}.{until}")
}

/// A cursor as [`encode_cursor`] makes it (or base64url of the same, as earlier versions
/// issued). A cursor past its own bound reads as a finished listing.
fn decode_cursor(cursor: &str) -> Result<(u64, u64), AppError> {
    let bad = || AppError::BadRequest("cursor is not one this API issued".into());
    let text = if cursor.contains('.') {
        cursor.to_owned()
    } else {
        URL_SAFE_NO_PAD
            .decode(cursor)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(bad)?
    };
    let (after, until) = text.split_once('.').ok_or_else(bad)?;
    let (after, until): (u64, u64) = (
        after.parse().map_err(|_| bad())?,
        until.parse().map_err(|_| bad())?,
    );
    Ok((after.min(until), until))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only referrals filed under this External Service ID.
    service_id: Option<String>,
    /// Only referrals with this workflow status (Task status, else ServiceRequest status).
    status: Option<String>,
    /// Only referrals whose latest event has this code.
    event: Option<String>,
    /// Only referrals modified at or after this date or date-time.
    modified_since: Option<String>,
    /// Page size (default 100; more than 500 is capped at 500).
    limit: Option<String>,
    /// From the previous page's `next_cursor`.
    cursor: Option<String>,
}

/// List referrals, ordered by their latest modification.
///
/// A listing is a snapshot taken by its first page: later pages neither skip nor repeat a
/// referral while deliveries keep arriving. Changes after the snapshot show up in the next
/// listing (use `modified_since`) and at once in the event feed.
#[utoipa::path(
    get,
    path = "/referrals",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of referrals", body = ReferralPage),
        (status = 400, description = "A query parameter is invalid", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "No or an unknown API key", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "service_id outside the client's service ids", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
pub async fn list_referrals(
    State(state): State<AppState>,
    Caller(client): Caller,
    Query(q): Query<ListQuery>,
) -> Result<Json<ReferralPage>, Problem> {
    let limit = limit(q.limit.as_deref())?;
    let service = service_param(&client, q.service_id.as_deref())?;
    let scope = client.scope();
    let since = q
        .modified_since
        .as_deref()
        .map(|s| instant("modified_since", s, false))
        .transpose()?;
    let store = &state.store;
    let (mut after, until) = match q.cursor.as_deref() {
        Some(cursor) => decode_cursor(cursor)?,
        None => {
            let start = match since {
                Some(since) => store.seq_before(since).await?,
                None => 0,
            };
            (start, store.feed_end().await?)
        }
    };

    let mut referrals = Vec::new();
    let mut scanned = 0;
    while after < until && referrals.len() < limit && scanned < MAX_SCAN {
        let slice = store.referrals_changed(after, until, 1000).await?;
        scanned += 1000;
        let mut stopped_early = false;
        for (seq, record) in slice.referrals {
            let keep = scope.sees(&record)
                && service
                    .as_ref()
                    .is_none_or(|s| record.service_id.as_ref() == Some(s))
                && q.event
                    .as_deref()
                    .is_none_or(|e| record.latest_event.as_str() == e)
                && q.status
                    .as_deref()
                    .is_none_or(|s| record.summary.status() == Some(s))
                && since.is_none_or(|t| record.modified_at >= t);
            if keep {
                referrals.push(ReferralView::new(record));
            }
            if referrals.len() == limit {
                after = seq;
                stopped_early = true;
                break;
            }
        }
        if !stopped_early {
            after = slice.scanned_to;
        }
    }
    let next_cursor = (after < until).then(|| encode_cursor(after, until));
    Ok(Json(ReferralPage {
        referrals,
        next_cursor,
    }))
}

/// One referral and its versions.
#[utoipa::path(
    get,
    path = "/referrals/{referral}",
    params(("referral" = String, Path, description = "Ocean's referral reference")),
    responses(
        (status = 200, description = "The referral and its versions", body = ReferralDetail),
        (status = 401, description = "No or an unknown API key", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Outside the client's service ids", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such referral", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
pub async fn get_referral(
    State(state): State<AppState>,
    Caller(client): Caller,
    Path(referral): Path<String>,
) -> Result<Json<ReferralDetail>, Problem> {
    let (reference, record) = visible(&state, &client, &referral).await?;
    let versions = state.store.versions(&reference).await?;
    Ok(Json(ReferralDetail {
        referral: ReferralView::new(record),
        versions: versions.into_iter().map(VersionView::from).collect(),
    }))
}

/// One version exactly as it was received, byte for byte.
#[utoipa::path(
    get,
    path = "/referrals/{referral}/versions/{version}",
    params(
        ("referral" = String, Path, description = "Ocean's referral reference"),
        ("version" = u64, Path, description = "Version number, from 1"),
    ),
    responses(
        (status = 200, description = "The FHIR message Bundle as received", content_type = "application/fhir+json"),
        (status = 401, description = "No or an unknown API key", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Outside the client's service ids", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such referral or version", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
pub async fn get_version(
    State(state): State<AppState>,
    Caller(client): Caller,
    Path((referral, version)): Path<(String, String)>,
) -> Result<Response, Problem> {
    let version = whole_number(&version)
        .ok_or_else(|| AppError::BadRequest("version must be a whole number".into()))?;
    let (reference, _) = visible(&state, &client, &referral).await?;
    Ok(crate::routes::download::version(&state, &reference, version, false).await?)
}

/// What one version changed: the referral's summary fields, and the resources its message
/// added, removed or changed, compared with version n-1.
///
/// Ocean's update messages do not say what changed; its playbook asks receiving systems to show
/// their users. Summary fields compare the referral as versions 1..n-1 left it with what
/// version n made of it (so a message that repeats a value changes nothing). Resources are
/// compared under lasting names (`Type/id`, else `Type` and its first identifier, else `Type
/// #n`), ignoring the `urn:uuid:` names that change with every message.
#[utoipa::path(
    get,
    path = "/referrals/{referral}/versions/{version}/changes",
    params(
        ("referral" = String, Path, description = "Ocean's referral reference"),
        ("version" = u64, Path, description = "Version number, from 1"),
    ),
    responses(
        (status = 200, description = "What the version changed", body = VersionChanges),
        (status = 400, description = "version is not a whole number", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "No or an unknown API key", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Outside the client's service ids", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such referral or version", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
pub async fn get_version_changes(
    State(state): State<AppState>,
    Caller(client): Caller,
    Path((referral, version)): Path<(String, String)>,
) -> Result<Json<VersionChanges>, Problem> {
    let version = whole_number(&version)
        .ok_or_else(|| AppError::BadRequest("version must be a whole number".into()))?;
    let (reference, _) = visible(&state, &client, &referral).await?;
    let (_, changes, _) = version_view(state.store.as_ref(), &reference, version)
        .await?
        .ok_or_else(|| {
            AppError::NotFound(format!("referral {reference} has no version {version}"))
        })?;
    Ok(Json(changes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_forgeries() {
        assert_eq!(decode_cursor(&encode_cursor(5, 9)).unwrap(), (5, 9));
        assert_eq!(
            decode_cursor(&URL_SAFE_NO_PAD.encode("5.9")).unwrap(),
            (5, 9)
        );
        assert_eq!(decode_cursor("9.5").unwrap(), (5, 5));
        assert!(decode_cursor("!!").is_err());
        assert!(decode_cursor(&URL_SAFE_NO_PAD.encode("x.5")).is_err());
        assert!(decode_cursor("1.99999999999999999999").is_err());
    }
}
