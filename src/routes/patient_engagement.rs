//! `POST /ocean/{name}/patient-engagement`: the Request URL an Ocean admin registers for
//! Patient Engagement notifications (a patient completed eForms, a note was added).
//!
//! In order: the endpoint must be configured (404); the caller must present the endpoint's
//! secret as `?k=` or `x-ocean-webhook-key`, compared in constant time (401; Ocean signs
//! nothing, so this is all the authentication there is); the body is read within a small
//! limit (413) and must be a JSON object (400). Then:
//! - a body with `challenge` is Ocean's validation and is answered `200 {"challenge": same}`.
//!   It is answered only after the secret check: Ocean's validation POST goes to the Request
//!   URL, `?k=` included, so an admin who registered the wrong secret learns it at once;
//! - `siteNum` must be the configured site's number (403);
//! - a `type` that is not a form completion is acknowledged (200) and not stored: refusing it
//!   would only have Ocean retry it for 96 hours and e-mail the site's administrator;
//! - `ref` (and the session id, when given) must be plain identifiers (422);
//! - the notification is recorded durably, once per (endpoint, type, ref, session), before the
//!   200: the same notification again is answered 200 and stores nothing new. The fetcher is
//!   woken; an audit entry `PATIENT_FORM_RECEIVED` is written for each new one.
//!
//! Nothing of the body, the headers or the query is logged: they name a patient.

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::HeaderMap;
use axum::routing::post;
use http_body_util::{BodyExt, Limited};
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::auth::source::ClientAddr;
use crate::error::AppError;
use crate::patient_engagement::{KINDS, safe_segment};
use crate::secret::same_secret;
use crate::state::AppState;
use crate::store::{NewPatientForm, Recorded};

/// Largest notification taken: they are a few hundred bytes.
pub const MAX_NOTIFICATION_BYTES: usize = 64 * 1024;

/// The header a caller may present the secret in, instead of `?k=`.
pub const SECRET_HEADER: &str = "x-ocean-webhook-key";

const CHALLENGE: &str = "Bearer realm=\"patient-engagement\"";

pub fn router() -> Router<AppState> {
    Router::new().route("/ocean/{name}/patient-engagement", post(receive))
}

/// The secret the caller presented: `?k=` first, else the header.
fn presented(query: Option<&str>, headers: &HeaderMap) -> Option<String> {
    let from_query = query.and_then(|q| {
        serde_urlencoded::from_str::<Vec<(String, String)>>(q)
            .ok()?
            .into_iter()
            .find(|(name, _)| name == "k")
            .map(|(_, value)| value)
    });
    from_query.or_else(|| {
        headers
            .get(SECRET_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    })
}

/// A string, or a number as its digits (Ocean sends `siteNum` and `ref` either way).
fn text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.trim().to_owned()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

async fn read(request: Request, timeout: std::time::Duration) -> Result<Bytes, AppError> {
    let body = Limited::new(request.into_body(), MAX_NOTIFICATION_BYTES).collect();
    match tokio::time::timeout(timeout, body).await {
        Err(_) => Err(AppError::Timeout {
            secs: timeout.as_secs(),
        }),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            Err(AppError::PayloadTooLarge {
                limit: MAX_NOTIFICATION_BYTES,
            })
        }
        Ok(Err(_)) => Err(AppError::BadRequest(
            "the request body could not be read completely".into(),
        )),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

/// Records a refused caller (logged and audited in the interval's report, as every refused
/// caller is) and builds the 401.
fn refused(state: &AppState, name: &str, source: std::net::IpAddr, reason: String) -> AppError {
    state.refused(
        None,
        format!("patient_engagement:{name}"),
        "secret",
        &reason,
        source,
    );
    AppError::Unauthorized {
        challenge: CHALLENGE,
        reason,
    }
}

async fn receive(
    State(state): State<AppState>,
    ClientAddr(source): ClientAddr,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    request: Request,
) -> Result<Json<Value>, AppError> {
    let Some(endpoint) = state.config().patient_engagement.get(&name) else {
        return Err(AppError::NotFound(
            "no Patient Engagement endpoint of that name is configured".into(),
        ));
    };
    let Some(secret) = presented(query.as_deref(), &headers) else {
        return Err(refused(
            &state,
            &name,
            source,
            format!(
                "present the endpoint's secret as ?k= in the Request URL or as {SECRET_HEADER}"
            ),
        ));
    };
    if !same_secret(secret.as_bytes(), endpoint.secret.expose().as_bytes()) {
        return Err(refused(
            &state,
            &name,
            source,
            "the secret is not this endpoint's".into(),
        ));
    }
    let body = read(request, state.body_timeout).await?;
    let Ok(Value::Object(notification)) = serde_json::from_slice::<Value>(&body) else {
        return Err(AppError::BadRequest("the body is not a JSON object".into()));
    };
    if let Some(challenge) = notification.get("challenge") {
        return Ok(Json(json!({ "challenge": challenge })));
    }
    let site_num = notification.get("siteNum").and_then(text);
    if site_num.as_deref() != Some(endpoint.site_num.trim()) {
        return Err(AppError::Forbidden(
            "siteNum is not the site number this endpoint is configured for".into(),
        ));
    }
    let kind = notification.get("type").and_then(Value::as_str);
    let Some(kind) = kind.filter(|k| KINDS.contains(k)) else {
        tracing::info!(endpoint = %name, "a Patient Engagement notification of another type was acknowledged and not stored");
        return Ok(Json(json!({ "status": "ignored" })));
    };
    let patient_ref = notification
        .get("ref")
        .and_then(text)
        .filter(|r| safe_segment(r))
        .ok_or_else(|| {
            AppError::Unprocessable(
                "ref must be Ocean's patient ref: 1 to 128 letters, digits, '-', '.' or '_'".into(),
            )
        })?;
    let properties = notification.get("customProperties");
    let session_id = match properties.and_then(|p| p.get("oceanSessionId")) {
        // Empty is absent: refusing it would only make Ocean retry for 96 hours.
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(value) => Some(text(value).filter(|s| safe_segment(s)).ok_or_else(|| {
            AppError::Unprocessable(
                "customProperties.oceanSessionId must be 1 to 128 letters, digits, '-', '.' or '_'"
                    .into(),
            )
        })?),
    };
    let completion_source = properties
        .and_then(|p| p.get("noteCompletionSource"))
        .and_then(Value::as_str)
        .filter(|s| s.len() <= 32 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        .map(str::to_owned);
    let new = NewPatientForm {
        endpoint: name.clone(),
        kind: kind.to_owned(),
        patient_ref,
        session_id,
        completion_source,
        site_num: endpoint.site_num.trim().to_owned(),
        received_at: OffsetDateTime::now_utc(),
    };
    match state.store.record_patient_form(&new).await? {
        Recorded::Duplicate(id) => Ok(Json(json!({ "status": "duplicate", "id": id }))),
        Recorded::New(record) => {
            state.patient_forms_wake.notify_one();
            let details = json!({
                "patient_form": record.id,
                "endpoint": record.endpoint,
                "type": record.kind,
                "source": record.completion_source,
            });
            state
                .store
                .audit(
                    "PATIENT_FORM_RECEIVED",
                    &format!("patient_engagement:{name}"),
                    details,
                )
                .await?;
            Ok(Json(json!({ "status": "recorded", "id": record.id })))
        }
    }
}
