//! The inbound webhook Ocean posts message Bundles to.
//!
//! Order of work: find the integration, check the media type, read the body within the limit,
//! parse and check the Bundle, store it durably, and only then answer 200 with a response
//! message Bundle. Every refusal is a 4xx with an OperationOutcome; a store that cannot write
//! answers 503 so Ocean retries.

use std::sync::atomic::Ordering;
use std::time::Instant;
use tracing::Instrument;

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{OriginalUri, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use time::OffsetDateTime;

use crate::app::{AppState, Integration};
use crate::auth::Refusal;
use crate::domain::is_code_like;
use crate::error::{AppError, fhir_json};
use crate::fhir::outcome::response_bundle;
use crate::fhir::{ParseError, Parsed, parse_message};
use crate::store::{NewDelivery, ServiceAssignment, delivery_key, sha256_hex};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/fhir/{integration}/$process-message", post(receive))
        .route("/fhir/{integration}/Bundle", post(receive))
        .route("/fhir/{integration}", post(receive))
}

/// Longest wait for the rest of a refused request's body, and the most of it that is read.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
const DRAIN_LIMIT: usize = 1024 * 1024;

/// What the webhook did with a delivery it answered 200.
enum Handled {
    Stored,
    Duplicate,
    Ignored,
}

/// Counts and times every delivery, then answers.
async fn receive(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    uri: OriginalUri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, AppError> {
    let started = Instant::now();
    // Only configured names become metric labels: a path segment is the caller's to choose.
    let label = match &path {
        Ok(Path(name)) if state.integration(name).is_some() => name.clone(),
        _ => "unknown".to_owned(),
    };
    // A body small enough to be worth reading even when the request is refused.
    // Neither a length nor chunked transfer means no body at all.
    let length = match headers.get(header::CONTENT_LENGTH) {
        Some(v) => v.to_str().ok().and_then(|v| v.parse::<usize>().ok()),
        None if headers.contains_key(header::TRANSFER_ENCODING) => None,
        None => Some(0),
    };
    let drainable =
        !headers.contains_key(header::EXPECT) && length.is_some_and(|length| length <= DRAIN_LIMIT);
    let mut body = Some(body);
    let result = handle(&state, path, uri, headers, &mut body).await;
    let metrics = &state.metrics;
    metrics.ingest_latency(&label, started.elapsed());
    // Refused before the body was read. A small one is read anyway (bounded), so the
    // connection stays usable; a large or unknown one is not invited: the connection closes.
    let mut close = false;
    if let Some(unread) = body {
        if drainable {
            let _ = tokio::time::timeout(DRAIN_TIMEOUT, read_body(unread, DRAIN_LIMIT)).await;
        } else {
            close = true;
        }
    }
    let counters = &state.counters;
    match &result {
        Ok((_, Handled::Stored)) => {
            counters.stored.fetch_add(1, Ordering::Relaxed);
            metrics.delivery(&label, "stored", None);
        }
        Ok((_, Handled::Duplicate)) => {
            counters.duplicates.fetch_add(1, Ordering::Relaxed);
            metrics.delivery(&label, "duplicate", None);
        }
        Ok((_, Handled::Ignored)) => {
            counters.ignored.fetch_add(1, Ordering::Relaxed);
            metrics.delivery(&label, "ignored", None);
        }
        // Counted as authentication failures where they are refused.
        Err(AppError::Unauthorized { .. }) => {}
        Err(e) => {
            counters.rejected.fetch_add(1, Ordering::Relaxed);
            metrics.delivery(&label, "rejected", Some(rejection_reason(e)));
        }
    }
    let mut response = match result {
        Ok((response, _)) => response,
        Err(e) => e.into_response(),
    };
    if close {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    Ok(response)
}

/// A metric label for why a delivery was refused.
fn rejection_reason(e: &AppError) -> &'static str {
    match e {
        AppError::BadRequest(_) => "bad_request",
        AppError::Unprocessable(_) => "unprocessable",
        AppError::NotFound(_) => "unknown_integration",
        AppError::Timeout { .. } => "body_timeout",
        AppError::PayloadTooLarge { .. } => "too_large",
        AppError::Unavailable(_) => "store_unavailable",
        AppError::Unauthorized { .. } => "unauthorized",
        AppError::MethodNotAllowed | AppError::Internal(_) => "internal",
    }
}

async fn handle(
    state: &AppState,
    path: Result<Path<String>, PathRejection>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: &mut Option<Body>,
) -> Result<(Response, Handled), AppError> {
    let Path(name) = path.map_err(|e| AppError::BadRequest(e.body_text()))?;
    let integration = state.integration(&name).ok_or_else(|| {
        AppError::NotFound(format!(
            "no integration named '{}' is configured",
            printable(&name)
        ))
    })?;
    let inbound = &integration.inbound;
    let refuse = |refusal: Refusal| {
        state.counters.auth_failures.fetch_add(1, Ordering::Relaxed);
        state
            .metrics
            .auth_failure(integration.name.as_str(), inbound.scheme());
        let (store, actor) = (
            state.store.clone(),
            format!("integration:{}", integration.name),
        );
        let details = serde_json::json!({"scheme": inbound.scheme(), "reason": refusal.reason});
        // Written in the background: a refusal is answered without waiting for the disk.
        tokio::spawn(
            async move {
                if let Err(e) = store.audit("AUTH_FAILURE", &actor, details).await {
                    tracing::error!(error = %e, "cannot audit an authentication failure");
                }
            }
            // Its log lines keep the request's id.
            .in_current_span(),
        );
        tracing::warn!(
            integration = %integration.name,
            scheme = inbound.scheme(),
            reason = %refusal.reason,
            "authentication failed"
        );
        AppError::Unauthorized {
            challenge: refusal.challenge,
            reason: refusal.reason,
        }
    };
    // Schemes that only look at headers are checked before the body is read; a signature
    // over the body is checked on the raw bytes, before anything parses them.
    if !inbound.signs_body() {
        inbound
            .check_headers(&integration.name, &headers)
            .map_err(refuse)?;
    }
    check_media_type(&headers)?;
    let body = body.take().unwrap_or_default();
    let body = tokio::time::timeout(state.body_timeout, read_body(body, state.max_body_bytes))
        .await
        .map_err(|_| AppError::Timeout {
            secs: state.body_timeout.as_secs(),
        })??;

    let webhook_id = inbound
        .check_signature(&headers, &body, OffsetDateTime::now_utc().unix_timestamp())
        .map_err(refuse)?;

    let endpoint = uri.path().to_owned();
    let parsed = parse_message(&body, |event| integration.accepts(event)).map_err(|e| {
        let reason = match &e {
            ParseError::Malformed(_) => "malformed",
            ParseError::Unusable(_) => "unusable",
        };
        tracing::info!(integration = %integration.name, reason, "delivery rejected");
        match e {
            ParseError::Malformed(m) => AppError::BadRequest(m),
            ParseError::Unusable(m) => AppError::Unprocessable(m),
        }
    })?;
    let message = match parsed {
        Parsed::Message(message) => message,
        Parsed::Ignored {
            event,
            message_header_id,
        } => {
            tracing::info!(integration = %integration.name, %event, "event not accepted by this integration; acknowledged, not stored");
            let note = format!(
                "event code '{event}' is not among those integration '{}' accepts; the message was acknowledged and not stored",
                integration.name
            );
            let body = response_bundle(
                message_header_id.as_deref(),
                event.as_str(),
                &endpoint,
                Some(&note),
            );
            return Ok((fhir_json(StatusCode::OK, &body), Handled::Ignored));
        }
    };

    let service = match (&message.service_id, &integration.default_service) {
        (Some(named), _) => ServiceAssignment::Named(named.clone()),
        (None, Some(default)) => ServiceAssignment::Default(default.clone()),
        (None, None) => ServiceAssignment::Unassigned,
    };
    let sha256 = sha256_hex(&body);
    let delivery = NewDelivery {
        // A signed delivery's webhook-id names it; otherwise its Bundle.id does.
        dedup_key: delivery_key(
            &integration.name,
            webhook_id.as_deref().or(message.bundle_id.as_deref()),
            &sha256,
        ),
        sha256,
        integration: integration.name.clone(),
        referral: message.referral.clone(),
        service,
        event: message.event.clone(),
        message_header_id: message.message_header_id.clone(),
        bundle_id: message.bundle_id.clone(),
        bundle_timestamp: message.timestamp.clone(),
        raw: body,
        summary: message.summary,
        problems: message.problems,
        received_at: OffsetDateTime::now_utc(),
    };
    let outcome = state.store.put_delivery(delivery).await?;
    tracing::info!(
        integration = %integration.name,
        event = %message.event,
        referral = %message.referral,
        version = outcome.version,
        duplicate = outcome.duplicate,
        "delivery stored"
    );
    let note = outcome.duplicate.then(|| {
        format!(
            "this delivery was already stored as version {} of referral {}; nothing new was stored",
            outcome.version, message.referral
        )
    });
    let body = response_bundle(
        message.message_header_id.as_deref(),
        message.event.as_str(),
        &endpoint,
        note.as_deref(),
    );
    let handled = if outcome.duplicate {
        Handled::Duplicate
    } else {
        Handled::Stored
    };
    Ok((fhir_json(StatusCode::OK, &body), handled))
}

/// FHIR JSON (`application/fhir+json`) or plain `application/json`, parameters allowed.
fn check_media_type(headers: &HeaderMap) -> Result<(), AppError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Err(AppError::BadRequest(
            "Content-Type is missing; send application/fhir+json".into(),
        ));
    };
    let essence = value
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if essence == "application/fhir+json" || essence == "application/json" {
        Ok(())
    } else {
        Err(AppError::BadRequest(
            "unsupported Content-Type; send application/fhir+json or application/json".into(),
        ))
    }
}

/// Reads the whole body, refusing it as soon as it passes `limit` bytes.
async fn read_body(body: Body, limit: usize) -> Result<Bytes, AppError> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(AppError::PayloadTooLarge { limit }),
        Err(_) => Err(AppError::BadRequest(
            "the request body could not be read completely".into(),
        )),
    }
}

/// Echoes a path segment in an error only when it is a plausible integration name.
fn printable(name: &str) -> &str {
    if is_code_like(name) {
        name
    } else {
        "(invalid name)"
    }
}

impl Integration {
    fn accepts(&self, event: &crate::domain::EventCode) -> bool {
        self.events.is_empty() || self.events.contains(event)
    }
}
