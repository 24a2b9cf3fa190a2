//! `/audit`: the audit log, for clients not limited to some service ids.

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use utoipa::IntoParams;

use super::extract::{Caller, ProblemDoc, Query, after_param, limit};
use crate::error::{AppError, Problem};
use crate::state::AppState;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Entries after this sequence number.
    after: Option<String>,
    /// Page size (default 100; capped at 500).
    limit: Option<String>,
}

/// The audit log, oldest first. Only clients not limited to some service ids may read it.
#[utoipa::path(
    get,
    path = "/audit",
    params(AuditQuery),
    responses(
        (status = 200, description = "Audit entries, each with the hash of the one before"),
        (status = 403, description = "The client is limited to some service ids", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
pub async fn audit(
    State(state): State<AppState>,
    Caller(client): Caller,
    Query(q): Query<AuditQuery>,
) -> Result<Json<serde_json::Value>, Problem> {
    if !client.service_ids.is_empty() {
        return Err(AppError::Forbidden(format!(
            "client '{}' is limited to some service ids and may not read the whole audit log",
            client.name
        ))
        .into());
    }
    let after = after_param(q.after.as_deref())?;
    let entries = state
        .store
        .audit_entries(after, limit(q.limit.as_deref())?)
        .await?;
    let next = entries.last().map_or(after, |e| e.seq);
    Ok(Json(serde_json::json!({"entries": entries, "next": next})))
}
