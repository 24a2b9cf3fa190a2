//! What every `/api/v1` handler shares: the authenticated caller, extractors whose rejections
//! are problem documents, the parsing of the parameters the API uses everywhere (page sizes,
//! positions, dates), and the scoping of a client to its External Service IDs.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::Serialize;
use serde::de::DeserializeOwned;
use time::OffsetDateTime;
use utoipa::ToSchema;

use crate::auth::api::ApiClient;
use crate::auth::source::ClientAddr;
use crate::domain::{ReferralRef, ServiceId, redact_quoted};
use crate::error::{AppError, Problem};
use crate::routes::request::{self, read_body, whole_number};
use crate::server::tls::ClientIdentity;
use crate::state::AppState;
use crate::store::ReferralRecord;

/// Largest page of referrals, events, updates or audit entries.
pub const MAX_LIMIT: usize = 500;
pub const DEFAULT_LIMIT: usize = 100;

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

pub use crate::views::rfc3339;

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

/// The `service_id` query parameter, checked and within the client's service ids.
pub fn service_param(client: &ApiClient, raw: Option<&str>) -> Result<Option<ServiceId>, AppError> {
    raw.map(|raw| {
        client
            .scope()
            .service(request::identifier("service_id", raw, ServiceId::parse)?)
    })
    .transpose()
}

/// Looks up a referral the client may see (see [`request::referral`]).
pub async fn visible(
    state: &AppState,
    client: &ApiClient,
    referral: &str,
) -> Result<(ReferralRef, ReferralRecord), AppError> {
    request::referral(state, &client.scope(), referral).await
}
