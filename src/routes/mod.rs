//! HTTP routes: one `router()` per module (the webhook, the token endpoint, the FHIR
//! metadata, health, metrics, CDS Hooks, and `/api/v1` in its own folder), merged here under the layers
//! every request goes through: a request id and span, the metrics of each route, and a 500
//! for a handler that panics.

pub mod cds_hooks;
pub mod console;
pub mod download;
pub mod health;
pub mod metadata;
pub mod metrics;
pub mod oauth;
pub mod patient_engagement;
pub mod request;
pub mod stream;
pub mod v1;
pub mod webhook;

use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, Uri};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

use crate::error::AppError;
use crate::state::AppState;
use crate::telemetry::Metrics;

/// The router with its layers. Each request gets an id, returned as `x-request-id` and carried
/// by the `request` span on every log line written while it is handled; the span holds the
/// matched route, never the body or a header value. A handler that panics despite everything
/// answers 500 instead of dropping the connection.
pub fn router(state: AppState) -> Router {
    let metrics = state.metrics.clone();
    let https = state.config().server.tls.enabled();
    let router = routes(state)
        .layer(tower_http::catch_panic::CatchPanicLayer::new())
        .layer(axum::middleware::from_fn_with_state(metrics, observe));
    if https {
        router.layer(axum::middleware::map_response(strict_transport_security))
    } else {
        router
    }
}

/// When the relay serves HTTPS itself, browsers (the console's users) are told to use nothing
/// else for this host for a year (RFC 6797). Behind a proxy, the proxy says so.
async fn strict_transport_security(mut response: Response) -> Response {
    response.headers_mut().insert(
        axum::http::header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=31536000"),
    );
    response
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Wraps each request in its span, counts it by route and status, and logs its end.
async fn observe(State(metrics): State<Metrics>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let method = request.method().clone();
    let request_id = uuid::Uuid::new_v4().to_string();
    let span =
        tracing::info_span!("request", request_id = %request_id, method = %method, route = %route);
    let started = Instant::now();
    let mut response = next.run(request).instrument(span.clone()).await;
    let status = response.status();
    metrics.http_request(&method, &route, status.as_u16());
    span.in_scope(|| {
        tracing::debug!(
            status = status.as_u16(),
            latency_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            "request finished"
        );
    });
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}

/// Every route of the service, without the layers.
fn routes(state: AppState) -> Router {
    Router::new()
        .merge(webhook::router())
        .merge(health::router())
        .merge(oauth::router())
        .merge(patient_engagement::router())
        .merge(cds_hooks::router())
        .merge(v1::router())
        .merge(console::router())
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
    AppError::MethodNotAllowed("the webhook takes POST")
}
