//! HTTP routes: one `router()` per module, merged here.

pub mod api;
pub mod export;
pub mod health;
pub mod metadata;
pub mod metrics;
pub mod oauth;
pub mod updates;
pub mod webhook;

use axum::Router;
use axum::http::Uri;

use crate::app::AppState;
use crate::error::AppError;

/// Every route of the service, without the layers `app` adds.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(webhook::router())
        .merge(health::router())
        .merge(oauth::router())
        .merge(api::router())
        .merge(metadata::router())
        .merge(metrics::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// Unknown paths answer in the same OperationOutcome format as everything else.
async fn not_found(uri: Uri) -> AppError {
    let path = uri.path();
    let shown = if path.len() <= 200 && path.chars().all(|c| c.is_ascii_graphic()) {
        path
    } else {
        "(this path)"
    };
    AppError::NotFound(format!("nothing is served at {shown}"))
}

async fn method_not_allowed() -> AppError {
    AppError::MethodNotAllowed
}
