//! CDS Hooks 2.0 for Ocean's `order-sign` hook: `GET /cds-services` (discovery, one service per
//! `[screening."<External Service ID>"]`) and `POST /cds-services/{id}` (the cards for a draft
//! referral; see [`crate::screening`]).
//!
//! In order: the caller must authenticate as `[cds_hooks.auth]` says (401; 503 when the
//! client's keys cannot be read); the service must be configured (404); the body must be
//! uncompressed (415), within `cds_hooks.max_body_bytes` (413), and a JSON object naming the
//! `order-sign` hook (400). Everything after that answers 200: a prefetch that is missing or
//! malformed leaves its rules without a card, and a draft addressed to another listing gets no
//! card at all (a client calls every service it discovered). The whole answer is
//! bounded by `cds_hooks.answer_within_ms`: past it, the answer is 200 with no card, so
//! screening never holds a referral up.
//!
//! Nothing of the body is logged: it names a patient.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::HeaderMap;
use axum::http::header::{CONTENT_ENCODING, CONTENT_LENGTH};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::{BodyExt, Limited};
use serde_json::Value;
use time::OffsetDateTime;

use crate::auth::bearer::CHALLENGE;
use crate::auth::budget::Held;
use crate::auth::cds_client::CdsAuthError;
use crate::auth::source::ClientAddr;
use crate::error::AppError;
use crate::screening::Listing;
use crate::screening::cards::{CdsResponse, HOOK};
use crate::state::AppState;

/// The `service` label of calls refused before the service was looked up.
const UNAUTHENTICATED: &str = "any";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/cds-services", get(discovery).fallback(method_not_allowed))
        .route(
            "/cds-services/{id}",
            post(service).fallback(method_not_allowed),
        )
}

async fn method_not_allowed() -> AppError {
    AppError::MethodNotAllowed(
        "GET /cds-services lists the screening services, POST /cds-services/{id} screens a referral",
    )
}

/// The answer time configured.
fn budget(state: &AppState) -> Duration {
    Duration::from_millis(state.config().cds_hooks.answer_within_ms)
}

/// Checks the caller; a refusal is reported as every refused caller is.
async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    service: Option<&str>,
    source: std::net::IpAddr,
) -> Result<(), AppError> {
    match state.cds_auth.check(headers, service).await {
        Ok(()) => Ok(()),
        Err(CdsAuthError::Refused(reason)) => {
            state.refused(
                None,
                "cds_hooks".into(),
                state.cds_auth.scheme(),
                &reason,
                source,
            );
            Err(AppError::Unauthorized {
                challenge: CHALLENGE,
                reason,
            })
        }
        Err(e @ CdsAuthError::Keys(_)) => {
            tracing::warn!(error = %e, "a CDS Hooks call could not be authenticated");
            Err(AppError::Busy(e.to_string()))
        }
    }
}

/// `GET /cds-services`.
async fn discovery(
    State(state): State<AppState>,
    ClientAddr(source): ClientAddr,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let check = authenticate(&state, &headers, None, source);
    match tokio::time::timeout(budget(&state), check).await {
        Ok(result) => result?,
        Err(_) => {
            return Err(AppError::Busy(
                "the CDS client's keys took too long to read".into(),
            ));
        }
    }
    Ok(Json(state.screening.discovery()).into_response())
}

/// `POST /cds-services/{id}`.
async fn service(
    State(state): State<AppState>,
    ClientAddr(source): ClientAddr,
    Path(id): Path<String>,
    headers: HeaderMap,
    request: Request,
) -> Result<Response, AppError> {
    let started = tokio::time::Instant::now();
    let within = budget(&state);
    // The caller first, so that service ids cannot be probed without credentials.
    match tokio::time::timeout(within, authenticate(&state, &headers, Some(&id), source)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            // Counted under no service: the id of a caller not let in is not trusted, and
            // counting it would tell /metrics readers which ids exist.
            state.metrics.cds_answer(UNAUTHENTICATED, outcome(&e));
            return Err(e);
        }
        Err(_) => return Ok(late(&state, state.screening.listing(&id))),
    }
    let Some(listing) = state.screening.listing(&id) else {
        return Err(AppError::NotFound(
            "no CDS service of that id is configured (GET /cds-services lists them)".into(),
        ));
    };
    let left = within.saturating_sub(started.elapsed());
    match tokio::time::timeout(left, answer(&state, listing, source, &headers, request)).await {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(e)) => {
            state.metrics.cds_answer(&listing.cds_id, outcome(&e));
            Err(e)
        }
        Err(_) => Ok(late(&state, Some(listing))),
    }
}

/// The metric outcome of a refused call.
fn outcome(e: &AppError) -> &'static str {
    match e {
        AppError::Unauthorized { .. } => "unauthorized",
        AppError::Busy(_) => "unavailable",
        _ => "invalid",
    }
}

/// The answer when the time is up: no card, counted.
fn late(state: &AppState, listing: Option<&Listing>) -> Response {
    if let Some(listing) = listing {
        state.metrics.cds_answer(&listing.cds_id, "timeout");
        let today = OffsetDateTime::now_utc().date();
        state
            .screening
            .tallies
            .count_late(&listing.service_id, today);
        tracing::warn!(service = %listing.service_id, "a CDS Hooks answer was not ready in time; answered with no card");
    }
    Json(CdsResponse { cards: Vec::new() }).into_response()
}

async fn answer(
    state: &AppState,
    listing: &Listing,
    source: std::net::IpAddr,
    headers: &HeaderMap,
    request: Request,
) -> Result<Response, AppError> {
    let limit = state.config().cds_hooks.max_body_bytes;
    match headers.get(CONTENT_ENCODING).map(|v| v.as_bytes()) {
        None => {}
        Some(coding) if coding.eq_ignore_ascii_case(b"identity") => {}
        Some(_) => {
            return Err(AppError::UnsupportedEncoding(
                "send the CDS Hooks request uncompressed (no Content-Encoding)".into(),
            ));
        }
    }
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(AppError::PayloadTooLarge { limit });
    }
    // Held until the screening is done: the body stays in memory that long.
    let mut account =
        (state.cds_auth.scheme() == "none").then(|| state.screening.bodies.account(source));
    let body = read(request, limit, account.as_mut()).await?;
    let screening = Arc::clone(&state.screening);
    let id = listing.cds_id.clone();
    let today = OffsetDateTime::now_utc().date();
    // One screening per core at a time; the permit goes with the work, which outlives a
    // request whose time ran out.
    let permit = Arc::clone(&state.screening.parsing)
        .acquire_owned()
        .await
        .map_err(|e| AppError::Internal(anyhow::anyhow!("screening stopped: {e}")))?;
    // Parsing a large body and reading it is CPU work: off the request threads.
    let screened = tokio::task::spawn_blocking(move || {
        let _held = (permit, account);
        let request: Value = serde_json::from_slice(&body)
            .ok()
            .filter(Value::is_object)
            .ok_or_else(|| {
                AppError::BadRequest(
                    "the body is not a JSON object (or is nested 128 levels deep or more)".into(),
                )
            })?;
        if request.get("hook").and_then(Value::as_str) != Some(HOOK) {
            return Err(AppError::BadRequest(format!(
                "hook must be \"{HOOK}\": this CDS service answers Ocean's {HOOK} hook"
            )));
        }
        Ok(screening
            .listing(&id)
            .and_then(|l| l.screen(&request, today)))
    })
    .await
    .map_err(|e| AppError::Internal(anyhow::anyhow!("screening stopped: {e}")))??;
    let Some(findings) = screened else {
        // Addressed to another listing: its rules are not this listing's business.
        state.metrics.cds_answer(&listing.cds_id, "other_listing");
        return Ok(Json(CdsResponse { cards: Vec::new() }).into_response());
    };
    let cards = listing.cards(&findings);
    state
        .screening
        .tallies
        .count(&listing.service_id, today, &findings);
    let outcome = if cards.is_empty() { "no_card" } else { "cards" };
    state.metrics.cds_answer(&listing.cds_id, outcome);
    for finding in &findings {
        state.metrics.cds_card(
            &listing.cds_id,
            finding.rule.as_str(),
            finding.indicator.as_str(),
        );
    }
    tracing::debug!(service = %listing.service_id, cards = cards.len(), "screened a draft referral");
    Ok(Json(CdsResponse { cards }).into_response())
}

/// The body, within `limit` bytes (413 past it). With `account`, every byte is also taken from
/// the screening's budget of unauthenticated bodies (503 when it cannot hold them): with
/// `cds_hooks.auth` none, anyone's body is such a body.
async fn read(
    request: Request,
    limit: usize,
    mut account: Option<&mut Held>,
) -> Result<Bytes, AppError> {
    let mut body = Limited::new(request.into_body(), limit);
    let mut bytes = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                AppError::PayloadTooLarge { limit }
            } else {
                AppError::BadRequest("the request body could not be read completely".into())
            }
        })?;
        if let Ok(data) = frame.into_data() {
            if let Some(account) = account.as_deref_mut() {
                account
                    .take(data.len())
                    .map_err(|e| AppError::Busy(e.to_string()))?;
            }
            bytes.extend_from_slice(&data);
        }
    }
    Ok(bytes.freeze())
}
