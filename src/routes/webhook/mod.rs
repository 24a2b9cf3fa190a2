//! The inbound webhook Ocean posts message Bundles to.
//!
//! Order of work, cheapest refusal first, and nothing read before it is needed:
//! 1. find the integration (404);
//! 2. check what the headers say about the caller (401): credentials, or for `hmac` the
//!    signature headers;
//! 3. check the media type and content coding (415) and a declared length (413, without
//!    inviting the body with `100 Continue`);
//! 4. read the body within its size and time limits (413, 408); a body whose sender is not
//!    authenticated yet counts against a shared budget (503 when it is spent);
//! 5. verify the signature over the raw bytes (`hmac`, 401), then undo the content coding (the
//!    size limit applies to the decoded body);
//! 6. file it through [`crate::intake`]: read and check the Bundle (400, 422), store it durably
//!    (a referral of another integration is refused with 403, a full write queue with 503);
//! 7. only then answer 200 with a response message Bundle.
//!
//! Every refusal is a 4xx with an OperationOutcome; a store that cannot write answers 503 so
//! Ocean retries.

mod body;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{OriginalUri, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use time::OffsetDateTime;

use crate::auth::Refusal;
use crate::auth::source::ClientAddr;
use crate::domain::is_code_like;
use crate::error::{AppError, fhir_json};
use crate::fhir::outcome::response_bundle;
use crate::intake::{Filed, Sender};
use crate::state::{AppState, Integration};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/fhir/{integration}/$process-message", post(receive))
        // The same address with its `$` percent-encoded, as some HTTP clients send it (RFC 3986
        // §2.2 makes the two equivalent only by convention; routes match the raw path).
        .route("/fhir/{integration}/%24process-message", post(receive))
        .route("/fhir/{integration}/Bundle", post(receive))
        .route("/fhir/{integration}", post(receive))
}

/// Longest wait for the rest of a refused request's body, and the most of it that is read.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
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
    ClientAddr(source): ClientAddr,
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
    let request = Request {
        state: &state,
        source,
        uri,
        headers,
    };
    let result = request.handle(path, &mut body).await;
    let metrics = &state.metrics;
    metrics.ingest_latency(&label, started.elapsed());
    // Refused before the body was read. A small one is read anyway (bounded), so the
    // connection stays usable; a large or unknown one is not invited: the connection closes.
    let mut close = false;
    if let Some(unread) = body {
        if drainable {
            let _ = tokio::time::timeout(DRAIN_TIMEOUT, unread.drain(DRAIN_LIMIT)).await;
        } else {
            close = true;
        }
    }
    match &result {
        Ok((_, Handled::Stored)) => {
            metrics.delivery(&label, "stored", None);
            state.signals.delivered(&label);
        }
        Ok((_, Handled::Duplicate)) => {
            metrics.delivery(&label, "duplicate", None);
            state.signals.delivered(&label);
        }
        Ok((_, Handled::Ignored)) => metrics.delivery(&label, "ignored", None),
        // Counted as authentication failures where they are refused.
        Err(AppError::Unauthorized { .. }) => {}
        Err(e) => metrics.delivery(&label, "rejected", Some(rejection_reason(e))),
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
        AppError::Forbidden(_) => "foreign_referral",
        AppError::UnsupportedMediaType(_) | AppError::UnsupportedEncoding(_) => {
            "unsupported_media_type"
        }
        AppError::Busy(_) => "busy",
        AppError::MethodNotAllowed(_) | AppError::Conflict(_) | AppError::Internal(_) => "internal",
    }
}

/// One webhook request, before its body is read.
struct Request<'s> {
    state: &'s AppState,
    source: std::net::IpAddr,
    uri: OriginalUri,
    headers: HeaderMap,
}

impl Request<'_> {
    async fn handle(
        self,
        path: Result<Path<String>, PathRejection>,
        body: &mut Option<Body>,
    ) -> Result<(Response, Handled), AppError> {
        let state = self.state;
        let Path(name) = path.map_err(|e| AppError::BadRequest(e.body_text()))?;
        let integration = state.integration(&name).ok_or_else(|| {
            AppError::NotFound(format!(
                "no integration named '{}' is configured",
                printable(&name)
            ))
        })?;
        let inbound = &integration.inbound;
        let refuse = |refusal: Refusal| refused(state, integration, self.source, refusal);
        let headers = &self.headers;
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let signed = inbound
            .check_headers(&integration.name, headers, now)
            .map_err(refuse)?;
        body::check_media_type(headers)?;
        let codings = body::content_codings(headers)?;
        let limit = state.max_body_bytes;
        let declared = body::declared_length(headers);
        if declared.is_some_and(|length| length > limit as u64) {
            return Err(AppError::PayloadTooLarge { limit });
        }

        // Until a signature over it is verified, the body counts against the shared budget.
        let mut account = signed
            .as_ref()
            .map(|_| state.unauthenticated.account(self.source));
        let unread = body.take().unwrap_or_default();
        let raw = body::read(
            unread,
            limit,
            state.body_timeout,
            declared,
            account.as_mut(),
        )
        .await?;
        let decoded = match signed.clone() {
            Some(signed) => {
                let check = |bytes: bytes::Bytes, signed| {
                    let inbound = Arc::clone(&integration.inbound);
                    off_worker(move || inbound.check_signature(&signed, &bytes))
                };
                // Signed as sent (the usual way), or before the body was compressed: then the
                // decoded body is needed to know, and while unauthenticated it counts against
                // the budget too, as it is decoded.
                match check(raw.clone(), signed.clone()).await? {
                    Ok(()) => {
                        drop(account);
                        body::decode(raw, codings, limit, None).await?.0
                    }
                    Err(refusal) if codings.is_empty() => return Err(refuse(refusal)),
                    Err(_) => {
                        let (decoded, _held) = body::decode(raw, codings, limit, account).await?;
                        check(decoded.clone(), signed).await?.map_err(refuse)?;
                        decoded
                    }
                }
            }
            None => body::decode(raw, codings, limit, None).await?.0,
        };
        let webhook_id = signed.map(|s| s.id);
        self.file(integration, decoded, webhook_id).await
    }

    /// Files the delivery ([`crate::intake`]) and answers with a response message Bundle.
    async fn file(
        &self,
        integration: &Integration,
        body: bytes::Bytes,
        webhook_id: Option<String>,
    ) -> Result<(Response, Handled), AppError> {
        let sender = Sender {
            name: &integration.name,
            events: &integration.events,
            default_service: integration.default_service.as_ref(),
            shares_with: &integration.shares_with,
        };
        let filed = self.state.intake.file(&sender, body, webhook_id).await?;
        let (receipt, note, handled) = match &filed {
            Filed::Stored { receipt, .. } => (receipt, None, Handled::Stored),
            Filed::Duplicate {
                receipt,
                referral,
                version,
            } => (
                receipt,
                Some(format!(
                    "this delivery was already stored as version {version} of referral {referral}; nothing new was stored"
                )),
                Handled::Duplicate,
            ),
            Filed::Ignored(receipt) => (
                receipt,
                Some(format!(
                    "event code '{}' is not among those integration '{}' accepts; the message was acknowledged and not stored",
                    receipt.event, integration.name
                )),
                Handled::Ignored,
            ),
        };
        let body = response_bundle(
            receipt.message_header_id.as_deref(),
            receipt.event.as_str(),
            self.uri.path(),
            note.as_deref(),
        );
        Ok((fhir_json(StatusCode::OK, &body), handled))
    }
}

/// Records a refused caller and builds the 401.
fn refused(
    state: &AppState,
    integration: &Integration,
    source: std::net::IpAddr,
    refusal: Refusal,
) -> AppError {
    state.refused(
        Some(integration.name.as_str()),
        format!("integration:{}", integration.name),
        integration.inbound.scheme(),
        &refusal.reason,
        source,
    );
    AppError::Unauthorized {
        challenge: refusal.challenge,
        reason: refusal.reason,
    }
}

/// Runs CPU-bound work (signature checks, decompression) on the blocking
/// pool, so a large body does not hold up the requests the async workers serve meanwhile.
async fn off_worker<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, AppError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| AppError::Internal(e.into()))
}

/// Reads and drops at most `limit` bytes of a body nobody needs, keeping none of it.
trait Drain {
    async fn drain(self, limit: usize);
}

impl Drain for Body {
    async fn drain(mut self, limit: usize) {
        let mut read = 0;
        while read < limit {
            match http_body_util::BodyExt::frame(&mut self).await {
                Some(Ok(frame)) => read += frame.data_ref().map_or(0, bytes::Bytes::len),
                _ => return,
            }
        }
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
