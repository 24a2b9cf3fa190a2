//! One error kind for every HTTP handler, [`AppError`], with one status code each, and two
//! renderings: a FHIR OperationOutcome (the webhook and the FHIR routes) and, through
//! [`Problem`], an RFC 9457 problem document (the point-of-service API).
//!
//! Client errors carry a message meant for the caller. Internal errors become an opaque 500 and
//! are logged once with their cause chain; their text is never sent.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::fhir::outcome::{IssueCode, Severity, operation_outcome};
use crate::ocean::outbox::OutboxError;
use crate::store::StoreError;

/// The FHIR JSON media type of every response body the webhook writes.
pub const FHIR_JSON: &str = "application/fhir+json";

/// The content codings the webhook decodes, as `Accept-Encoding` names them.
pub const ACCEPTED_ENCODINGS: &str = "gzip, deflate";

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The request cannot be read (not JSON, empty, wrong content type): 400.
    #[error("{0}")]
    BadRequest(String),
    /// JSON, but not something the relay can process: 422.
    #[error("{0}")]
    Unprocessable(String),
    /// The caller did not authenticate as the integration requires: 401 with a challenge.
    #[error("authentication failed: {reason}")]
    Unauthorized {
        challenge: &'static str,
        reason: String,
    },
    /// Authenticated, but not allowed to do this: 403.
    #[error("{0}")]
    Forbidden(String),
    /// No such integration or resource: 404.
    #[error("{0}")]
    NotFound(String),
    /// Not allowed in the resource's current state: 409.
    #[error("{0}")]
    Conflict(String),
    /// A media type the relay does not take: 415.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// A content coding the relay does not decode: 415 with `Accept-Encoding`
    /// (RFC 9110 §12.5.3).
    #[error("{0}")]
    UnsupportedEncoding(String),
    /// Too busy to take this request now; the sender should retry: 503 with `Retry-After`.
    #[error("{0}")]
    Busy(String),
    /// The route exists, the method does not: 405 (with a hint where to look).
    #[error("method not allowed here; {0}")]
    MethodNotAllowed(&'static str),
    /// The client took too long to send the body: 408.
    #[error("the request body did not arrive within {secs} s")]
    Timeout { secs: u64 },
    /// The body is larger than the configured limit: 413.
    #[error("the request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// Storage cannot take the delivery now; the sender should retry: 503.
    #[error("the relay cannot store deliveries right now; retry later")]
    Unavailable(#[source] StoreError),
    /// Anything else: an opaque 500.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl AppError {
    pub fn status_code(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::UnsupportedMediaType(_) | Self::UnsupportedEncoding(_) => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            Self::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::Timeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn issue_code(&self) -> IssueCode {
        match self {
            Self::BadRequest(_) | Self::Unprocessable(_) => IssueCode::Invalid,
            Self::Unauthorized { .. } => IssueCode::Login,
            Self::Forbidden(_) => IssueCode::Forbidden,
            Self::NotFound(_) => IssueCode::NotFound,
            Self::Conflict(_) => IssueCode::Conflict,
            Self::UnsupportedMediaType(_) | Self::UnsupportedEncoding(_) => IssueCode::NotSupported,
            Self::Busy(_) => IssueCode::Transient,
            Self::MethodNotAllowed(_) => IssueCode::NotSupported,
            Self::Timeout { .. } => IssueCode::Timeout,
            Self::PayloadTooLarge { .. } => IssueCode::TooLong,
            Self::Unavailable(_) => IssueCode::Transient,
            Self::Internal(_) => IssueCode::Exception,
        }
    }
}

impl From<crate::destinations::DestinationError> for AppError {
    fn from(e: crate::destinations::DestinationError) -> Self {
        use crate::destinations::DestinationError;
        let message = e.to_string();
        match e {
            DestinationError::Unknown(_) | DestinationError::UnknownMessage { .. } => {
                Self::NotFound(message)
            }
            DestinationError::NotDead { .. } => Self::Conflict(message),
            DestinationError::Store(e) => e.into(),
        }
    }
}

impl From<OutboxError> for AppError {
    fn from(e: OutboxError) -> Self {
        let message = e.to_string();
        match e {
            OutboxError::Invalid(_) | OutboxError::BadText { .. } | OutboxError::Redirect(_) => {
                Self::BadRequest(message)
            }
            OutboxError::NotActionable | OutboxError::NoSite(_) | OutboxError::Build(_) => {
                Self::Unprocessable(message)
            }
            OutboxError::NotAllowed { .. }
            | OutboxError::NotDead { .. }
            | OutboxError::Revoked(_)
            | OutboxError::Booked(_)
            // What the referral's stored messages lack: its state, not the request.
            | OutboxError::NoCategory(_)
            | OutboxError::NoServiceRequest { .. } => Self::Conflict(message),
            OutboxError::NoAppointment(_) | OutboxError::UnknownUpdate(_) => {
                Self::NotFound(message)
            }
            OutboxError::Store(e) => e.into(),
        }
    }
}

impl From<crate::intake::IntakeError> for AppError {
    fn from(e: crate::intake::IntakeError) -> Self {
        use crate::intake::IntakeError;
        let message = e.to_string();
        match e {
            IntakeError::Malformed(_) => Self::BadRequest(message),
            IntakeError::Unusable(_) => Self::Unprocessable(message),
            IntakeError::OwnedElsewhere { .. } => Self::Forbidden(message),
            IntakeError::Store(e) => e.into(),
            IntakeError::Interrupted(e) => Self::Internal(e.into()),
        }
    }
}

impl From<crate::auth::budget::Spent> for AppError {
    fn from(e: crate::auth::budget::Spent) -> Self {
        Self::Busy(e.to_string())
    }
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable { .. }
            | StoreError::Io { .. }
            | StoreError::Failed { .. }
            | StoreError::InUse { .. } => Self::Unavailable(e),
            StoreError::Busy { .. } => Self::Busy(format!("{e}; retry later")),
            StoreError::Corrupt { .. } => Self::Internal(e.into()),
        }
    }
}

/// Seconds between two warnings that the store refused a request.
const UNAVAILABLE_WARNING_SECS: u64 = 10;

/// Whether this refusal is the first in its interval (and so is logged as a warning).
fn unavailable_warning_due() -> bool {
    static LAST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let last = LAST.load(std::sync::atomic::Ordering::Relaxed);
    now >= last + UNAVAILABLE_WARNING_SECS
        && LAST
            .compare_exchange(
                last,
                now,
                std::sync::atomic::Ordering::Relaxed,
                std::sync::atomic::Ordering::Relaxed,
            )
            .is_ok()
}

impl AppError {
    /// Logs what the caller is not told: an internal error's cause chain, once.
    pub(crate) fn log(&self) {
        match self {
            Self::Internal(cause) => {
                tracing::error!(error = format!("{cause:#}"), "request failed")
            }
            // One line per refused request would flood the log during an outage: the first in
            // each interval is a warning with the cause (never patient data: store errors name
            // tables, keys and ids), the rest are debug lines.
            Self::Unavailable(cause) => {
                if unavailable_warning_due() {
                    tracing::warn!(error = %cause.chain(), "storage unavailable; requests are answered 503 (further failures within {UNAVAILABLE_WARNING_SECS} s are logged at debug)");
                } else {
                    tracing::debug!(error = %cause.chain(), "storage unavailable");
                }
            }
            _ => {}
        }
    }

    /// The headers an answer of this kind carries (RFC 9110): a challenge, the codings
    /// accepted, when to retry.
    fn add_headers(&self, headers: &mut axum::http::HeaderMap) {
        match self {
            Self::Unauthorized { challenge, .. } => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(challenge),
                );
            }
            Self::UnsupportedEncoding(_) => {
                headers.insert(
                    header::ACCEPT_ENCODING,
                    HeaderValue::from_static(ACCEPTED_ENCODINGS),
                );
            }
            Self::Busy(_) | Self::Unavailable(_) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            _ => {}
        }
    }
}

/// The FHIR rendering: an OperationOutcome (`application/fhir+json`).
impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        self.log();
        let body = operation_outcome(Severity::Error, self.issue_code(), &self.to_string());
        let mut response = fhir_json(self.status_code(), &body);
        self.add_headers(response.headers_mut());
        response
    }
}

/// A response with a FHIR JSON body.
pub fn fhir_json(status: StatusCode, body: &serde_json::Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    response
}

/// The same errors, answered as RFC 9457 `application/problem+json`: the rendering of the
/// point-of-service API (`/api/v1`). Any [`AppError`] (and so any [`StoreError`]) converts.
#[derive(Debug)]
pub struct Problem(pub AppError);

impl<E: Into<AppError>> From<E> for Problem {
    fn from(e: E) -> Self {
        Self(e.into())
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let error = self.0;
        error.log();
        let status = error.status_code();
        let body = serde_json::json!({
            "type": "about:blank",
            "title": status.canonical_reason().unwrap_or("Error"),
            "status": status.as_u16(),
            "detail": error.to_string(),
        });
        let mut response = (status, body.to_string()).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        error.add_headers(response.headers_mut());
        response
    }
}
