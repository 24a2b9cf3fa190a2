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

/// The store can take a durable write now.
async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    match state.store.check_writable().await {
        Ok(()) => (
            StatusCode::OK,
            Json(json!({"status": "ready", "store": "writable"})),
        ),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check: store not writable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"status": "not ready", "store": "not writable"})),
            )
        }
    }
}
