//! `GET /api/v1/export.csv`: the referral backup as CSV, streamed as it is read from the store
//! (memory stays flat whatever the size), filtered by modification date.
//!
//! With `mark_exported=true` the rows written are marked exported only once the whole file has
//! been taken by the client: an export cut off part way marks nothing.

use axum::extract::State;
use axum::response::Response;
use serde::Deserialize;
use utoipa::IntoParams;

use super::extract::{Caller, ProblemDoc, Query, instant, service_param};
use crate::error::Problem;
use crate::export::{ExportFilter, ExportRequest};
use crate::routes::stream::stream_export;
use crate::state::AppState;
use crate::store::ReferralRecord;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ExportQuery {
    /// Modified at or after this date (YYYY-MM-DD) or RFC 3339 date-time.
    from: Option<String>,
    /// Modified at or before this date (the whole day) or date-time.
    to: Option<String>,
    service_id: Option<String>,
    /// Only referrals never exported, or modified since their last export.
    unexported_only: Option<bool>,
    /// Mark the rows written as exported once the file is complete.
    mark_exported: Option<bool>,
    /// Start with a UTF-8 byte order mark for Excel.
    excel: Option<bool>,
}

/// Export referrals as CSV (Ocean's columns, then External Service ID, Last Modified and
/// Exported At), ordered by modification.
#[utoipa::path(
    get,
    path = "/export.csv",
    params(ExportQuery),
    responses(
        (status = 200, description = "The CSV file, streamed", content_type = "text/csv"),
        (status = 400, description = "A query parameter is invalid", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "service_id outside the client's service ids", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
pub async fn export_csv(
    State(state): State<AppState>,
    Caller(client): Caller,
    Query(q): Query<ExportQuery>,
) -> Result<Response, Problem> {
    let from = q
        .from
        .as_deref()
        .map(|f| instant("from", f, false))
        .transpose()?;
    let to =
        q.to.as_deref()
            .map(|t| instant("to", t, true))
            .transpose()?;
    let service = service_param(&client, q.service_id.as_deref())?;
    let filter = ExportFilter {
        from,
        to,
        service,
        unexported_only: q.unexported_only.unwrap_or(false),
    };
    let request = ExportRequest {
        filter,
        mark_exported: q.mark_exported.unwrap_or(false),
        excel: q.excel.unwrap_or(false),
        actor: format!("api:{}", client.name),
    };
    let scope = client.scope();
    Ok(stream_export(&state, request, move |r: &ReferralRecord| {
        scope.sees(r)
    }))
}
