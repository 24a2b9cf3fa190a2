//! Liveness and readiness for orchestrators.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::app::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

/// The process is up and serving HTTP; with what the webhook has done since start.
async fn healthz(State(state): State<AppState>) -> Json<Value> {
    let c = &state.counters;
    let read = |n: &std::sync::atomic::AtomicU64| n.load(Ordering::Relaxed);
    Json(json!({
        "status": "ok",
        "deliveries": {
            "stored": read(&c.stored),
            "duplicate": read(&c.duplicates),
            "ignored": read(&c.ignored),
            "rejected": read(&c.rejected),
        },
        "auth_failures": read(&c.auth_failures),
    }))
}

/// Ready when the store can take a durable write now and the outbox worker is alive.
async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let store = match state.store.check_writable().await {
        Ok(()) => None,
        Err(e) => {
            tracing::warn!(error = %e, "readiness check: store not writable");
            Some("not writable")
        }
    };
    let worker = state.worker_health.problem();
    if let Some(problem) = worker {
        tracing::warn!(problem, "readiness check: outbox worker not alive");
    }
    let ready = store.is_none() && worker.is_none();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({
            "status": if ready { "ready" } else { "not ready" },
            "store": store.unwrap_or("writable"),
            "worker": worker.unwrap_or("alive"),
            "worker_last_progress_secs": state.worker_health.since_beat().as_secs(),
        })),
    )
}
