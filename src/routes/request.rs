//! What both UIs (`/api/v1` and the console) read from a request alike: a body within its
//! limits, whole numbers, identifiers, and the referral or update a path names, looked up
//! within the caller's [`Scope`].

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::Request;
use http_body_util::{BodyExt, Limited};

use crate::auth::scope::Scope;
use crate::domain::{InvalidId, ReferralRef};
use crate::error::AppError;
use crate::state::AppState;
use crate::store::{ReferralRecord, UpdateRecord};

/// Largest request body the API takes (its bodies are small JSON documents).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The request body, at most [`MAX_BODY_BYTES`] (413 beyond), read within `timeout` (408
/// after): `/api/v1`'s JSON bodies and the console's forms.
pub async fn read_body(request: Request, timeout: Duration) -> Result<Bytes, AppError> {
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

/// The longest identifier a request may name, in characters (as the OpenAPI document says).
const MAX_IDENTIFIER_CHARS: usize = 256;

/// An identifier as a request names it (a path segment or a query parameter `name`), read by
/// `parse` (which drops surrounding white space) once the value as sent is checked as the
/// OpenAPI document describes it: at most 256 characters and no control character anywhere, a
/// tab or line break around it included. 400 otherwise, saying which.
pub fn identifier<T>(
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

/// The referral a request names (`raw`, as in its path), when `scope` may see it: 400 for a
/// malformed reference, 404 when none is stored, 403 outside the scope.
pub async fn referral(
    state: &AppState,
    scope: &Scope,
    raw: &str,
) -> Result<(ReferralRef, ReferralRecord), AppError> {
    let reference = identifier("referral", raw, ReferralRef::parse)?;
    let record = scope.referral(state.store.as_ref(), &reference).await?;
    Ok((reference, record))
}

/// The update for Ocean a request names (`raw`, as in its path), when `scope` may see its
/// referral: 400 for an id that is not a number, 404 when there is none, 403 outside the scope.
pub async fn update(state: &AppState, scope: &Scope, raw: &str) -> Result<UpdateRecord, AppError> {
    let id = whole_number(raw)
        .ok_or_else(|| AppError::BadRequest("the update id must be a whole number".into()))?;
    scope.update(state.store.as_ref(), id).await
}
