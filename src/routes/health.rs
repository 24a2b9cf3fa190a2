//! Liveness and readiness for orchestrators.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::state::AppState;
use crate::store::StoreHealth;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

/// The process is up and serving HTTP (what it has done is in `/metrics`). 503 when the store
/// has failed in a way it cannot recover from by itself (restarting may help, and an operator
/// should look); a store that is only waiting for the disk to take writes again is healthy,
/// just not ready.
async fn healthz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let (status, store) = match state.store.health() {
        StoreHealth::Failed(reason) => {
            tracing::error!(reason = %reason, "health check: the store cannot recover");
            (StatusCode::SERVICE_UNAVAILABLE, format!("failed: {reason}"))
        }
        StoreHealth::Recovering { .. } => (StatusCode::OK, "recovering".to_owned()),
        StoreHealth::Writable => (StatusCode::OK, "writable".to_owned()),
    };
    (
        status,
        Json(json!({
            "status": if status == StatusCode::OK { "ok" } else { "failed" },
            "store": store,
        })),
    )
}

/// Ready when the store can take a durable write now and the outbox worker is alive. A store
/// recovering from a write failure is not ready, and says since when and why.
async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let (store, worker) = readiness(&state).await;
    let ready = store.is_none() && worker.is_none();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut body = json!({
        "status": if ready { "ready" } else { "not ready" },
        "store": store.as_deref().unwrap_or("writable"),
        "worker": worker.unwrap_or("alive"),
        "worker_last_progress_secs": state.worker_health.since_beat().as_secs(),
    });
    // The certificate in use, and why the files were not taken if a reload failed: the old
    // certificate still serves, so readiness is unchanged, but an operator sees it here.
    if let Some(certificate) = &state.tls_certificate {
        body["tls"] = json!(certificate.status());
    }
    (status, Json(body))
}

/// What keeps the service from being ready, if anything: the store's problem (a test write
/// failed, recovering, or failed for good) and the outbox worker's. `(None, None)` is ready.
/// `/readyz` and the console's status page.
pub(crate) async fn readiness(state: &AppState) -> (Option<String>, Option<&'static str>) {
    let store = match state.store.health() {
        StoreHealth::Writable => match state.store.check_writable().await {
            Ok(()) => None,
            Err(e) => {
                tracing::warn!(error = %e, "readiness check: store not writable");
                Some("not writable".to_owned())
            }
        },
        StoreHealth::Recovering {
            for_secs,
            attempts,
            reason,
        } => Some(format!(
            "not writable for {for_secs} s ({reason}); reopened {attempts} times so far"
        )),
        StoreHealth::Failed(reason) => Some(format!("failed: {reason}")),
    };
    let worker = state.worker_health.problem();
    if let Some(problem) = worker {
        tracing::warn!(problem, "readiness check: outbox worker not alive");
    }
    (store, worker)
}
