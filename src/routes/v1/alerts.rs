//! `/alerts`: the conditions holding now and the latest alerts, with where each was sent; for
//! clients not limited to some service ids (alerts are about the whole relay).

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use utoipa::IntoParams;

use super::extract::{Caller, ProblemDoc, Query, limit};
use crate::error::{AppError, Problem};
use crate::state::AppState;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AlertsQuery {
    /// How many of the latest alerts (default 100; capped at 500).
    limit: Option<String>,
}

/// The conditions holding now (`active`, as the last look found them) and the latest alerts,
/// newest first, each with its deliveries: the channel, the message's state (`pending`,
/// `delivered`, `dead`, `discarded`), attempts and last error, and the digest it went in.
#[utoipa::path(
    get,
    path = "/alerts",
    params(AlertsQuery),
    responses(
        (status = 200, description = "Conditions holding now, and the latest alerts"),
        (status = 403, description = "The client is limited to some service ids", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
pub async fn alerts(
    State(state): State<AppState>,
    Caller(client): Caller,
    Query(q): Query<AlertsQuery>,
) -> Result<Json<serde_json::Value>, Problem> {
    if !client.service_ids.is_empty() {
        return Err(AppError::Forbidden(format!(
            "client '{}' is limited to some service ids and may not read the relay's alerts",
            client.name
        ))
        .into());
    }
    let limit = limit(q.limit.as_deref())?;
    let recent = state.alerts.recent(state.store.as_ref(), limit).await?;
    let channels: Vec<&str> = state.alerts.channels().map(|c| c.name.as_str()).collect();
    Ok(Json(serde_json::json!({
        "channels": channels,
        "active": state.alerts.active(),
        "alerts": recent,
    })))
}
