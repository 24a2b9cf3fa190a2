//! Signing in to the console through the organisation's identity provider (OpenID Connect,
//! [`crate::auth::oidc`]): `/console/oidc/start` sends the browser to the provider, and the
//! provider sends it back to `/console/oidc/callback` with a code.
//!
//! Between the two, the browser carries the sign-in (its `state`, `nonce` and PKCE verifier)
//! in a short-lived signed cookie ([`SignInSeal`](crate::auth::oidc::SignInSeal); `SameSite=Lax`:
//! the answer is a top-level navigation from the provider's site), so the answer may reach any
//! replica and nothing is kept on the server for sign-ins that never come back. The answer must
//! carry the cookie's `state`. The claims of the checked ID token decide the role and the
//! services (`[console.oidc]`); a person they give nothing is refused with a page saying so.
//! Failures that are the provider's (unreachable) are 502 pages; answers that fail a check are
//! 401 pages and are reported like failed logins (`AUTH_FAILURE`, grouped per interval).

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use cookie::{Cookie, SameSite};
use serde::Deserialize;

use super::session::{cookie_value, login_page, secure_cookies, signed_in};
use super::{ConsoleQuery, PageError};
use crate::auth::oidc::{OidcError, SIGN_IN_LIMIT};
use crate::auth::session::{NewSession, OIDC_ACCOUNT};
use crate::auth::source::ClientAddr;
use crate::state::AppState;

/// The cookie holding the signed sign-in while the browser is at the identity provider.
const STATE_COOKIE: &str = "relay_console_oidc";

/// The longest `code` or `state` read from the provider's answer, in bytes.
const MAX_PARAMETER: usize = 4096;

/// A `Set-Cookie` for the signed sign-in (empty and expired: cleared).
fn state_cookie(value: String, secure: bool, max_age_secs: i64) -> HeaderValue {
    let cookie = Cookie::build((STATE_COOKIE, value))
        .path("/console/oidc")
        .http_only(true)
        .same_site(SameSite::Lax)
        .secure(secure)
        .max_age(cookie::time::Duration::seconds(max_age_secs))
        .build();
    // The name is a constant and values base64url: always a valid header value.
    HeaderValue::from_str(&cookie.to_string()).unwrap_or(HeaderValue::from_static(""))
}

/// The sign-in page with `problem`, answered with `status`.
fn refused(
    state: &AppState,
    peer: SocketAddr,
    headers: &HeaderMap,
    status: StatusCode,
    problem: &str,
) -> Response {
    let mut response = login_page(state, Some(peer.ip()), headers, Some(problem), "");
    *response.status_mut() = status;
    response
}

/// What a failure to reach or believe the provider shows, and with which status: the provider
/// unreachable is the provider's fault (502), a refused answer the sign-in's (401).
fn failure(error: &OidcError) -> (StatusCode, &'static str) {
    match error {
        OidcError::Discovery { .. } | OidcError::Unreachable(_) => (
            StatusCode::BAD_GATEWAY,
            "The identity provider could not be reached. Start the sign-in again in a moment; if it keeps failing, tell your administrator.",
        ),
        OidcError::Config(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "Sign-in through the identity provider is not set up correctly here; tell your administrator.",
        ),
        OidcError::Exchange(_) | OidcError::IdToken(_) => (
            StatusCode::UNAUTHORIZED,
            "The identity provider's answer could not be verified, so you are not signed in. Start again.",
        ),
    }
}

/// `GET /console/oidc/start`: sends the browser to the provider, carrying the sign-in in a
/// signed cookie.
pub async fn start(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Response, PageError> {
    let config = state.config();
    let Some(oidc) = config.console.oidc.as_ref() else {
        return Ok(refused(
            &state,
            peer,
            &headers,
            StatusCode::NOT_FOUND,
            "Sign-in through an identity provider is not set up here.",
        ));
    };
    let started = state.oidc.start(oidc).await;
    let sealed = started.and_then(|s| Ok((state.oidc.seal.seal(&s.pending)?, s.url)));
    let (sealed, url) = match sealed {
        Ok(sealed) => sealed,
        Err(e) => {
            tracing::warn!(error = %e, "console sign-in could not start at the identity provider");
            let (status, problem) = failure(&e);
            return Ok(refused(&state, peer, &headers, status, problem));
        }
    };
    let secure = secure_cookies(&state, Some(peer.ip()), &headers);
    let max_age = i64::try_from(SIGN_IN_LIMIT.as_secs()).unwrap_or(600);
    let mut response = Redirect::to(&url).into_response();
    response
        .headers_mut()
        .append(header::SET_COOKIE, state_cookie(sealed, secure, max_age));
    Ok(response)
}

/// The provider's answer (RFC 6749 §4.1.2): a code, or an error.
#[derive(Deserialize)]
pub struct Answer {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

/// `GET /console/oidc/callback`: checks the answer, signs the person in with what their claims
/// give, or says why not.
pub async fn callback(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ClientAddr(source): ClientAddr,
    headers: HeaderMap,
    ConsoleQuery(answer): ConsoleQuery<Answer>,
) -> Result<Response, PageError> {
    let config = state.config();
    // A failed answer leaves the browser's sign-in cookie alone: a link with a wrong `state`
    // must not cancel a sign-in in progress. It expires by itself.
    let fail = |status: StatusCode, problem: &str| refused(&state, peer, &headers, status, problem);
    let Some(oidc) = config.console.oidc.as_ref() else {
        return Ok(fail(
            StatusCode::NOT_FOUND,
            "Sign-in through an identity provider is not set up here.",
        ));
    };
    if answer.error.is_some() {
        // The provider's own refusal (the person cancelled, or may not use this client); its
        // description is the provider's text and is not shown.
        return Ok(fail(
            StatusCode::UNAUTHORIZED,
            "The identity provider did not sign you in. Start again, or ask your administrator whether your account may use the relay.",
        ));
    }
    let (Some(code), Some(returned)) = (answer.code, answer.state) else {
        return Ok(fail(
            StatusCode::BAD_REQUEST,
            "This address is where the identity provider sends you back after signing in; it was opened without a sign-in. Start again.",
        ));
    };
    let pending = (code.len() <= MAX_PARAMETER && returned.len() <= MAX_PARAMETER)
        .then(|| cookie_value(&headers, STATE_COOKIE))
        .flatten()
        .and_then(|cookie| state.oidc.seal.open(&cookie, &returned));
    let Some(pending) = pending else {
        state.refused(
            None,
            "console:(identity provider)".into(),
            "console",
            "console sign-in: the answer's state is not this browser's sign-in",
            source,
        );
        return Ok(fail(
            StatusCode::FORBIDDEN,
            "This sign-in was not started in this browser, has expired (after 10 minutes), or was started again since. Start again.",
        ));
    };
    let person = match state.oidc.finish(oidc, &code, &pending).await {
        Ok(person) => person,
        Err(e) => {
            tracing::warn!(error = %e, "console sign-in through the identity provider failed");
            if matches!(e, OidcError::Exchange(_) | OidcError::IdToken(_)) {
                state.refused(
                    None,
                    "console:(identity provider)".into(),
                    "console",
                    "console sign-in: the identity provider's answer failed a check",
                    source,
                );
            }
            let (status, problem) = failure(&e);
            return Ok(fail(status, problem));
        }
    };
    let account = format!("{OIDC_ACCOUNT}{}", person.subject);
    let actor = format!("console:{} ({account})", person.name);
    let Some(granted) = oidc.grant(&person.role_values) else {
        // Reported like other refused sign-ins: grouped per interval, so a person going round
        // through the provider again and again cannot grow the audit trail.
        state.refused(
            None,
            actor,
            "console",
            "console sign-in: the identity provider's claims give no console role",
            source,
        );
        return Ok(fail(
            StatusCode::FORBIDDEN,
            &format!(
                "You signed in as {} at the identity provider, but your account gives you no role in this console: none of its {} values is one the relay maps to staff or admin. Ask your administrator to add you to the right group.",
                person.name, oidc.role_claim
            ),
        ));
    };
    let who = NewSession {
        account: account.clone(),
        name: person.name.clone(),
        role: granted.role.as_str(),
        service_ids: granted
            .service_ids
            .iter()
            .map(|s| s.as_str().to_owned())
            .collect(),
        issuer: Some(oidc.issuer.clone()),
    };
    let details = serde_json::json!({
        "source": source.to_string(),
        "issuer": oidc.issuer,
        "subject": person.subject,
        "name": person.name,
        "role": granted.role.as_str(),
    });
    let mut response = signed_in(&state, peer, &headers, who, &actor, details, true).await?;
    let secure = secure_cookies(&state, Some(peer.ip()), &headers);
    response
        .headers_mut()
        .append(header::SET_COOKIE, state_cookie(String::new(), secure, 0));
    Ok(response)
}
