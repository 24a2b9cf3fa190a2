//! `/watch-list`: the referrals that need a person's attention now (see [`crate::watch_list`]),
//! within the caller's service ids.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};

use super::extract::{Caller, ProblemDoc, Query, rfc3339, service_param};
use crate::error::{AppError, Problem};
use crate::state::AppState;
use crate::watch_list::{WatchCounts, WatchEntry, WatchFilter, WatchKind, watch_list};

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct WatchListQuery {
    /// Only entries of this kind.
    #[param(inline, value_type = Option<WatchKind>)]
    kind: Option<String>,
    /// Only referrals filed under this External Service ID.
    service_id: Option<String>,
}

/// One referral that needs attention, and why.
#[derive(Debug, Serialize, ToSchema)]
pub struct WatchEntryView {
    /// Ocean's referral reference.
    referral: String,
    /// The External Service ID it is filed under; null when unassigned.
    service_id: Option<String>,
    kind: WatchKind,
    /// When the condition began (RFC 3339): the day it became overdue, the appointment's
    /// start, the revocation, or (nearing_archival, closed_by_ocean) when it reached its
    /// terminal state.
    #[schema(format = DateTime)]
    since: String,
    /// nearing_archival: when Ocean will archive it (RFC 3339); null for the other kinds.
    #[schema(format = DateTime)]
    archival_at: Option<String>,
    /// Why, with the dates and identifiers it rests on (never a patient detail).
    reason: String,
}

impl From<WatchEntry> for WatchEntryView {
    fn from(e: WatchEntry) -> Self {
        Self {
            referral: e.referral.to_string(),
            service_id: e.service_id.map(|s| s.to_string()),
            kind: e.kind,
            since: rfc3339(e.since),
            archival_at: e.archival_at.map(rfc3339),
            reason: e.reason,
        }
    }
}

/// The watch-list at one moment.
#[derive(Debug, Serialize, ToSchema)]
pub struct WatchListView {
    /// When it was computed (RFC 3339).
    #[schema(format = DateTime)]
    computed_at: String,
    /// Entries by kind, counted after the filters.
    counts: WatchCounts,
    /// By kind (overdue, appointment_passed, revoked_after_action, nearing_archival,
    /// closed_by_ocean), then by
    /// `since`, oldest first. A referral may be listed under more than one kind.
    entries: Vec<WatchEntryView>,
}

/// The referrals that need attention now: overdue (no status from the clinic N days after
/// arrival), an appointment passed with no status since, revoked by the requester after the
/// clinic acted, and nearing Ocean's archival.
///
/// Computed from the stored referrals and the clinic's updates on every call, over every
/// referral the client may see.
#[utoipa::path(
    get,
    path = "/watch-list",
    params(WatchListQuery),
    responses(
        (status = 200, description = "The watch-list", body = WatchListView),
        (status = 400, description = "A query parameter is invalid", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "No or an unknown API key", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "service_id outside the client's service ids", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
pub async fn get_watch_list(
    State(state): State<AppState>,
    Caller(client): Caller,
    Query(q): Query<WatchListQuery>,
) -> Result<Json<WatchListView>, Problem> {
    let kind = q
        .kind
        .as_deref()
        .map(|k| {
            WatchKind::parse(k).ok_or_else(|| {
                AppError::BadRequest(
                    "kind must be overdue, appointment_passed, revoked_after_action, nearing_archival or closed_by_ocean"
                        .into(),
                )
            })
        })
        .transpose()?;
    let filter = WatchFilter {
        kind,
        service_id: service_param(&client, q.service_id.as_deref())?,
        scope: Some(client.scope()),
    };
    let now = OffsetDateTime::now_utc();
    let list = watch_list(
        state.store.as_ref(),
        &state.config().watch_list,
        now,
        &filter,
    )
    .await?;
    Ok(Json(WatchListView {
        computed_at: rfc3339(now),
        counts: list.counts(),
        entries: list.entries.into_iter().map(WatchEntryView::from).collect(),
    }))
}
