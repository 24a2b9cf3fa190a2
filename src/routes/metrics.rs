//! `/metrics` in the Prometheus text format. It holds counts and route templates only, never
//! identifiers or patient data; `server.metrics_token` keeps it from anyone without the token.

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use time::OffsetDateTime;

use crate::auth::bearer;
use crate::state::AppState;
use crate::store::UpdateState;

const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

pub fn router() -> Router<AppState> {
    Router::new().route("/metrics", get(metrics))
}

/// Reads the outbox and the Ocean clients' token counts, then renders everything.
async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let token = &state.config().server.metrics_token;
    if !token.is_empty() {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !presented.is_some_and(|p| bearer::matches_any(p, std::slice::from_ref(token))) {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer realm=\"metrics\"")],
                "a bearer token is required for /metrics\n",
            )
                .into_response();
        }
    }
    match crate::store::open_updates(state.store.as_ref()).await {
        Ok(open) => {
            let now = OffsetDateTime::now_utc();
            let pending: Vec<_> = open
                .iter()
                .filter(|u| u.state == UpdateState::Pending)
                .collect();
            let dead = open.iter().filter(|u| u.state == UpdateState::Dead).count();
            let oldest = pending
                .iter()
                .map(|u| u.created_at)
                .min()
                .map_or(Duration::ZERO, |created| {
                    Duration::try_from(now - created).unwrap_or(Duration::ZERO)
                });
            state.metrics.outbox(pending.len(), dead, oldest);
        }
        // The rest is still worth having; the outbox gauges keep their last values.
        Err(e) => tracing::warn!(error = %e, "metrics: cannot read the outbox"),
    }
    for destination in state.destinations.iter() {
        match state.store.queue_stats(&destination.name).await {
            Ok(stats) => {
                let oldest = stats.oldest_pending_at.map_or(Duration::ZERO, |at| {
                    Duration::try_from(OffsetDateTime::now_utc() - at).unwrap_or(Duration::ZERO)
                });
                state.metrics.destination_queue(
                    &destination.name,
                    stats.pending,
                    stats.dead,
                    oldest,
                );
            }
            Err(e) => tracing::warn!(error = %e, "metrics: cannot read a destination's queue"),
        }
    }
    state
        .metrics
        .unauthenticated_body_bytes(state.unauthenticated.held());
    for site in state.sites.iter() {
        let (ok, failed) = site.client().token_fetches();
        state.metrics.token_fetches(site.name(), ok, failed);
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, PROMETHEUS_TEXT)],
        state.metrics.render(),
    )
        .into_response()
}
