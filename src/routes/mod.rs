//! HTTP routes: one `router()` per module, merged here.

pub mod health;
pub mod webhook;

use axum::Router;

use crate::app::AppState;

/// Every route of the service, without the layers `app` adds.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(webhook::router())
        .merge(health::router())
        .with_state(state)
}
