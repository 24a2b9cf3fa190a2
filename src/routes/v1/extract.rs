//! What every `/api/v1` handler shares: the authenticated caller, extractors whose rejections
//! are problem documents, the parsing of the parameters the API uses everywhere (page sizes,
//! positions, dates), and the scoping of a client to its External Service IDs.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use http_body_util::{BodyExt, Limited};
use serde::Serialize;
use serde::de::DeserializeOwned;
use time::OffsetDateTime;
use utoipa::ToSchema;

use crate::auth::api::ApiClient;
use crate::auth::source::ClientAddr;
use crate::domain::{InvalidId, ReferralRef, ServiceId, redact_quoted};
use crate::error::{AppError, Problem};
use crate::server::tls::ClientIdentity;
use crate::state::AppState;
use crate::store::ReferralRecord;

/// Largest page of referrals, events, updates or audit entries.
pub const MAX_LIMIT: usize = 500;
pub const DEFAULT_LIMIT: usize = 100;
/// Largest request body the API takes (its bodies are small JSON documents).
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// `WWW-Authenticate` of the API: its clients send their key as a bearer token.
const CHALLENGE: &str = "Bearer realm=\"referral-relay-api\"";

/// The authenticated API client of a request.
pub struct Caller(pub ApiClient);

impl FromRequestParts<AppState> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Problem> {
        let certificate = parts.extensions.get::<ClientIdentity>();
        match state.api_clients.authenticate(&parts.headers, certificate) {
            Ok(client) => Ok(Caller(client.clone())),
            Err(reason) => {
                let Ok(ClientAddr(source)) = ClientAddr::from_request_parts(parts, state).await;
                state.refused(None, "api".into(), "bearer", reason, source);
                Err(Problem(AppError::Unauthorized {
                    challenge: CHALLENGE,
                    reason: reason.to_owned(),
                }))
            }
        }
    }
}

/// An RFC 9457 problem document.
#[derive(Serialize, ToSchema)]
pub struct ProblemDoc {
    r#type: String,
    title: String,
    status: u16,
    detail: String,
}

/// The query string as `T`; a parameter that does not fit is a 400 naming it.
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Problem> {
        serde_urlencoded::from_str(parts.uri.query().unwrap_or(""))
            .map(Query)
            .map_err(|e| {
                Problem(AppError::BadRequest(format!(
                    "invalid query: {}",
                    redact_quoted(&e.to_string())
                )))
            })
    }
}

/// The path's parameters as `T`; a segment that does not decode (say `%FF`) is a 400.
pub struct Path<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| Path(value))
            .map_err(|e| Problem(AppError::BadRequest(redact_quoted(&e.body_text()))))
    }
}

/// A JSON body as `T`: at most 1 MiB, within `server.body_timeout_secs`, and a document that
/// does not fit is a 400 saying where.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = Problem;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Problem> {
        let bytes = read_body(request, state.body_timeout).await?;
        serde_json::from_slice(&bytes).map(JsonBody).map_err(|e| {
            Problem(AppError::BadRequest(format!(
                "invalid JSON body: {}",
                redact_quoted(&e.to_string())
            )))
        })
    }
}

/// The request body, at most [`MAX_BODY_BYTES`] (413 beyond), read within `timeout` (408
/// after): `/api/v1`'s JSON bodies and the console's forms.
pub(crate) async fn read_body(request: Request, timeout: Duration) -> Result<Bytes, AppError> {
    let body = Limited::new(request.into_body(), MAX_BODY_BYTES).collect();
    match tokio::time::timeout(timeout, body).await {
        Err(_) => Err(AppError::Timeout {
            secs: timeout.as_secs(),
        }),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            Err(AppError::PayloadTooLarge {
                limit: MAX_BODY_BYTES,
            })
        }
        Ok(Err(_)) => Err(AppError::BadRequest(
            "the request body could not be read completely".into(),
        )),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

pub use crate::views::rfc3339;

/// A whole number in a query or path: digits only; one too large for 64 bits reads as the
/// largest (a page size or a wait is capped anyway, a position that far is past the end).
pub fn whole_number(text: &str) -> Option<u64> {
    match text.parse::<u64>() {
        Ok(n) => Some(n),
        Err(e) if *e.kind() == std::num::IntErrorKind::PosOverflow && !text.starts_with('+') => {
            Some(u64::MAX)
        }
        Err(_) => None,
    }
}

/// The `limit` query parameter: at least 1; larger than [`MAX_LIMIT`] is capped, not refused.
pub fn limit(raw: Option<&str>) -> Result<usize, AppError> {
    match raw {
        None => Ok(DEFAULT_LIMIT),
        Some(text) => whole_number(text)
            .filter(|n| *n >= 1)
            .map(|n| usize::try_from(n).unwrap_or(MAX_LIMIT).min(MAX_LIMIT))
            .ok_or_else(|| {
                AppError::BadRequest("limit must be a whole number of at least 1".into())
            }),
    }
}

/// `2026-11-02` (midnight UTC) or an RFC 3339 date-time; a bare date as an upper bound
/// (`end_of_day`) covers the whole day.
pub fn instant(name: &str, raw: &str, end_of_day: bool) -> Result<OffsetDateTime, AppError> {
    crate::export::parse_bound(raw, end_of_day).ok_or_else(|| {
        AppError::BadRequest(format!(
            "{name} must be a date (YYYY-MM-DD) or an RFC 3339 date-time"
        ))
    })
}

/// A request field that must be an RFC 3339 date-time.
pub fn date_time(name: &str, raw: &str) -> Result<OffsetDateTime, AppError> {
    OffsetDateTime::parse(raw, &time::format_description::well_known::Rfc3339)
        .map_err(|_| AppError::BadRequest(format!("{name} must be an RFC 3339 date-time")))
}

/// The `after` query parameter: a sequence number or id, 0 when absent.
pub fn after_param(raw: Option<&str>) -> Result<u64, AppError> {
    raw.map_or(Ok(0), |text| {
        whole_number(text)
            .ok_or_else(|| AppError::BadRequest("after must be a whole number".into()))
    })
}

/// The longest identifier a request may name, in characters (as the OpenAPI document says).
const MAX_IDENTIFIER_CHARS: usize = 256;

/// An identifier as a request names it (a path segment or a query parameter `name`), read by
/// `parse` (which drops surrounding white space) once the value as sent is checked as the
/// OpenAPI document describes it: at most 256 characters and no control character anywhere, a
/// tab or line break around it included. 400 otherwise, saying which.
fn request_identifier<T>(
    name: &str,
    raw: &str,
    parse: impl FnOnce(&str) -> Result<T, InvalidId>,
) -> Result<T, AppError> {
    if raw.chars().any(char::is_control) {
        return Err(AppError::BadRequest(format!(
            "{name} contains a control character"
        )));
    }
    if raw.chars().count() > MAX_IDENTIFIER_CHARS {
        return Err(AppError::BadRequest(format!(
            "{name} is longer than {MAX_IDENTIFIER_CHARS} characters"
        )));
    }
    parse(raw).map_err(|e| AppError::BadRequest(format!("{name}: {e}")))
}

/// The `service_id` query parameter, checked and within the client's service ids.
pub fn service_param(client: &ApiClient, raw: Option<&str>) -> Result<Option<ServiceId>, AppError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let service = request_identifier("service_id", raw, ServiceId::parse)?;
    if !client.may_see(Some(&service)) {
        return Err(AppError::Forbidden(format!(
            "client '{}' may not read service_id {service}",
            client.name
        )));
    }
    Ok(Some(service))
}

/// Looks up a referral the client may see.
pub async fn visible(
    state: &AppState,
    client: &ApiClient,
    referral: &str,
) -> Result<(ReferralRef, ReferralRecord), AppError> {
    visible_to(
        state,
        &format!("client '{}'", client.name),
        &client.service_ids,
        referral,
    )
    .await
}

/// Looks up update `id` (as written in a path) of a referral that `who`, limited to
/// `service_ids`, may see: 400 for an id that is not a number, 404 when there is none, 403
/// outside their services.
pub async fn update_visible_to(
    state: &AppState,
    who: &str,
    service_ids: &[ServiceId],
    id: &str,
) -> Result<crate::store::UpdateRecord, AppError> {
    let id = whole_number(id)
        .ok_or_else(|| AppError::BadRequest("the update id must be a whole number".into()))?;
    let update = crate::store::update(state.store.as_ref(), id)
        .await?
        .ok_or_else(|| AppError::NotFound(format!("no update {id}")))?;
    visible_to(state, who, service_ids, update.referral.as_str()).await?;
    Ok(update)
}

/// Looks up a referral that `who` (named so in the refusal), limited to `service_ids`, may see:
/// 400 for a malformed reference, 404 when none is stored, 403 when it is outside their services.
pub async fn visible_to(
    state: &AppState,
    who: &str,
    service_ids: &[ServiceId],
    referral: &str,
) -> Result<(ReferralRef, ReferralRecord), AppError> {
    let reference = request_identifier("referral", referral, ReferralRef::parse)?;
    let record = state
        .store
        .referral(&reference)
        .await?
        .ok_or_else(|| AppError::NotFound(format!("no referral {reference} is stored")))?;
    if !crate::auth::api::may_see(service_ids, record.service_id.as_ref()) {
        return Err(AppError::Forbidden(format!(
            "{who} may not read referrals of this service"
        )));
    }
    Ok((reference, record))
}
