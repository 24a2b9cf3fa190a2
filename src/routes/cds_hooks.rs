//! CDS Hooks 2.0 for Ocean's `order-sign` hook: `GET /cds-services` (discovery, one service per
//! `[screening."<External Service ID>"]`) and `POST /cds-services/{id}` (the cards for a draft
//! referral; see [`crate::screening`]).
//!
//! In order: the service must be configured (404); the caller must authenticate as
//! `[cds_hooks.auth]` says (401; 503 when the client's keys cannot be read); the body must be a
//! JSON object naming the `order-sign` hook (400). Everything after that answers 200: a
//! prefetch that is missing or malformed leaves its rules without a card. The whole answer is
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
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::{BodyExt, Limited};
use serde_json::Value;
use time::OffsetDateTime;

use crate::auth::bearer::CHALLENGE;
use crate::auth::cds_client::CdsAuthError;
use crate::auth::source::ClientAddr;
use crate::error::AppError;
use crate::screening::Listing;
use crate::screening::cards::{CdsResponse, HOOK};
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/cds-services", get(discovery))
        .route("/cds-services/{id}", post(service))
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
    let Some(listing) = state.screening.listing(&id) else {
        return Err(AppError::NotFound(
            "no CDS service of that id is configured (GET /cds-services lists them)".into(),
        ));
    };
    let cds_id = listing.cds_id.clone();
    match tokio::time::timeout(
        budget(&state),
        answer(&state, listing, source, &headers, request),
    )
    .await
    {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(e)) => {
            let outcome = match e {
                AppError::Unauthorized { .. } => "unauthorized",
                AppError::Busy(_) => "unavailable",
                _ => "invalid",
            };
            state.metrics.cds_answer(&cds_id, outcome);
            Err(e)
        }
        Err(_) => {
            state.metrics.cds_answer(&cds_id, "timeout");
            tracing::warn!(service = %cds_id, "a CDS Hooks answer was not ready in time; answered with no card");
            Ok(Json(CdsResponse { cards: Vec::new() }).into_response())
        }
    }
}

async fn answer(
    state: &AppState,
    listing: &Listing,
    source: std::net::IpAddr,
    headers: &HeaderMap,
    request: Request,
) -> Result<Response, AppError> {
    authenticate(state, headers, Some(&listing.cds_id), source).await?;
    let body = read(request, state.max_body_bytes).await?;
    let screening = Arc::clone(&state.screening);
    let id = listing.cds_id.clone();
    let today = OffsetDateTime::now_utc().date();
    // Parsing a large body and reading it is CPU work: off the request threads.
    let findings = tokio::task::spawn_blocking(move || {
        let request: Value = serde_json::from_slice(&body)
            .ok()
            .filter(Value::is_object)
            .ok_or_else(|| AppError::BadRequest("the body is not a JSON object".into()))?;
        if request.get("hook").and_then(Value::as_str) != Some(HOOK) {
            return Err(AppError::BadRequest(format!(
                "hook must be \"{HOOK}\": this CDS service answers Ocean's {HOOK} hook"
            )));
        }
        Ok(screening
            .listing(&id)
            .map(|l| l.screen(&request, today))
            .unwrap_or_default())
    })
    .await
    .map_err(|e| AppError::Internal(anyhow::anyhow!("screening stopped: {e}")))??;
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

/// The body, within `limit` bytes (413 past it).
async fn read(request: Request, limit: usize) -> Result<Bytes, AppError> {
    match Limited::new(request.into_body(), limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(AppError::PayloadTooLarge { limit })
        }
        Err(_) => Err(AppError::BadRequest(
            "the request body could not be read completely".into(),
        )),
    }
}
