//! `POST /oauth2/token`: the relay as the OAuth 2.0 authorization server Ocean calls
//! (client credentials grant, RFC 6749 §4.4). Ocean sends `grant_type`, `client_id` and
//! `client_secret` in a form body; an HTTP Basic header with the client credentials works too.
//! Errors are RFC 6749 JSON (`invalid_client` 401, `invalid_request` and
//! `unsupported_grant_type` 400), never OperationOutcomes: this is OAuth, not FHIR.

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http_body_util::{BodyExt, Limited};
use serde_json::json;

use crate::auth::source::ClientAddr;
use crate::auth::{basic, bearer};
use crate::secret::Secret;
use crate::state::{AppState, OAuthClientEntry};

/// A token request is a few short form fields.
const MAX_FORM_BYTES: usize = 16 * 1024;
/// Longest wait for them.
const FORM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Failed logins of unknown client ids share one limiter bucket.
const UNKNOWN_CLIENT: &str = "(unknown client)";

pub fn router() -> Router<AppState> {
    Router::new().route("/oauth2/token", post(token))
}

/// The token request's parameters (RFC 6749 §3.2): one sent without a value is treated as
/// omitted, one sent twice is refused, others are ignored (`scope` among them: tokens grant
/// posting to one integration, nothing narrower).
#[derive(Debug, Default)]
struct TokenForm {
    grant_type: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
}

impl TokenForm {
    /// Reads a form body; `Err` says what is wrong with it.
    fn parse(body: &[u8]) -> Result<Self, String> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(body)
            .map_err(|_| "the body is not application/x-www-form-urlencoded".to_owned())?;
        let mut form = Self::default();
        let mut seen = Vec::new();
        for (name, value) in pairs {
            let field = match name.as_str() {
                "grant_type" => &mut form.grant_type,
                "client_id" => &mut form.client_id,
                "client_secret" => &mut form.client_secret,
                _ => continue,
            };
            // Sent without a value: as if not sent at all.
            if value.is_empty() {
                continue;
            }
            if seen.contains(&name) {
                return Err(format!("{name} is sent more than once"));
            }
            *field = Some(value);
            seen.push(name);
        }
        Ok(form)
    }
}

/// `POST /oauth2/token` (RFC 6749 §4.4): a token for an integration's client, after its
/// credentials pass the failed-login limiter.
async fn token(
    State(state): State<AppState>,
    ClientAddr(source): ClientAddr,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (client_id, secret) = match credentials(&state, &headers, body).await {
        Ok(credentials) => credentials,
        Err(refusal) => return refusal,
    };
    let client = state.oauth_client(&client_id);
    // Unknown client ids share one account name, so inventing ids gains a guesser nothing.
    let account = if client.is_some() {
        client_id.as_str()
    } else {
        UNKNOWN_CLIENT
    };
    // Holds a place in the limiter's counts until its outcome is counted, so parallel guesses
    // cannot pass the check together.
    let attempt = match state.login_limiter.check(source, account).await {
        Ok(attempt) => attempt,
        Err(wait) => return too_many_attempts(&state, client, source, wait),
    };
    let Some(client) = client.filter(|c| bearer::matches_any(secret.expose(), &c.secrets)) else {
        attempt.failed().await;
        let integration = state.oauth_client(&client_id).map(|c| &c.integration);
        let reason = if integration.is_some() {
            "token request: wrong client secret"
        } else {
            "token request: unknown client"
        };
        let actor = format!("integration:{}", integration.map_or("-", |i| i.as_str()));
        let label = integration.map_or("unknown", |i| i.as_str());
        state.refused(Some(label), actor, "oauth2", reason, source);
        return invalid_client("unknown client or wrong client secret");
    };
    attempt.succeeded().await;
    issue(&state, client, &client_id)
}

/// The client id and secret of a token request: its form read within its limits, the grant
/// type checked, the credentials from the `Authorization: Basic` header or the body (not both).
/// Otherwise the OAuth error response to send.
async fn credentials(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<(String, Secret), Response> {
    let bad_request =
        |reason: &str| oauth_error(StatusCode::BAD_REQUEST, "invalid_request", reason);
    // A few form fields: no reason to wait long for them from anyone.
    let read = tokio::time::timeout(
        state.body_timeout.min(FORM_TIMEOUT),
        Limited::new(body, MAX_FORM_BYTES).collect(),
    )
    .await;
    let Ok(Ok(body)) = read else {
        return Err(bad_request("the form body could not be read"));
    };
    let form = TokenForm::parse(&body.to_bytes()).map_err(|reason| bad_request(&reason))?;
    match form.grant_type.as_deref() {
        Some("client_credentials") => {}
        Some(_) => {
            return Err(oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "only grant_type=client_credentials is supported",
            ));
        }
        None => return Err(bad_request("grant_type is missing")),
    }
    let from_header = basic_client(headers).map_err(bad_request)?;
    match (from_header, form.client_id, form.client_secret) {
        (Some(_), _, Some(_)) => Err(bad_request(
            "client credentials were sent both in the Authorization header and in the body",
        )),
        (Some(credentials), _, None) => Ok(credentials),
        (None, Some(id), Some(secret)) => Ok((id, Secret::new(secret))),
        (None, _, _) => Err(invalid_client("client_id and client_secret are required")),
    }
}

/// The 429 for a client and address the failed-login limiter holds back for `wait` seconds,
/// counted with the other refusals (so a report says how hard the client was tried).
fn too_many_attempts(
    state: &AppState,
    client: Option<&OAuthClientEntry>,
    source: std::net::IpAddr,
    wait: u64,
) -> Response {
    let label = client.map(|c| c.integration.as_str()).unwrap_or("unknown");
    let actor = format!(
        "integration:{}",
        client.map_or("-", |c| c.integration.as_str())
    );
    state.refused(
        Some(label),
        actor,
        "oauth2",
        "token request: too many failed attempts",
        source,
    );
    let mut response = oauth_error(
        StatusCode::TOO_MANY_REQUESTS,
        "invalid_client",
        &format!("too many failed attempts for this client from this address; retry in {wait} s"),
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(wait));
    response
}

/// The token response (RFC 6749 §5.1) for an authenticated `client`.
fn issue(state: &AppState, client: &OAuthClientEntry, client_id: &str) -> Response {
    let Some(issuer) = state.tokens.as_ref() else {
        return oauth_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "no token issuer",
        );
    };
    match issuer.issue(&client.integration, client_id, client.ttl_secs) {
        Ok(token) => {
            tracing::info!(integration = %client.integration, "token issued");
            no_store(
                (
                    StatusCode::OK,
                    axum::Json(json!({
                        "access_token": token,
                        "token_type": "Bearer",
                        "expires_in": client.ttl_secs,
                    })),
                )
                    .into_response(),
            )
        }
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "cannot issue a token");
            oauth_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "cannot issue a token",
            )
        }
    }
}

/// Client credentials from an `Authorization: Basic` header: form-encoded id and secret
/// (RFC 6749 §2.3.1), base64 joined by ':'. `Ok(None)` when there is no such header.
fn basic_client(headers: &HeaderMap) -> Result<Option<(String, Secret)>, &'static str> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| "the Authorization header is unreadable")?;
    let Some((scheme, encoded)) = value.trim().split_once(' ') else {
        return Err("the Authorization header is not Basic client credentials");
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err("the Authorization header is not Basic client credentials");
    }
    let decoded = STANDARD
        .decode(encoded.trim())
        .ok()
        .and_then(|d| String::from_utf8(d).ok())
        .ok_or("the Basic client credentials are not valid base64")?;
    let (id, secret) = decoded
        .split_once(':')
        .ok_or("the Basic client credentials have no ':'")?;
    let (id, secret) = (form_decode(id)?, form_decode(secret)?);
    Ok(Some((id, Secret::new(secret))))
}

/// Undoes application/x-www-form-urlencoded encoding of one value.
fn form_decode(value: &str) -> Result<String, &'static str> {
    #[derive(serde::Deserialize)]
    struct One {
        v: String,
    }
    serde_urlencoded::from_str::<One>(&format!("v={}", value.replace('&', "%26")))
        .map(|one| one.v)
        .map_err(|_| "the Basic client credentials are not form-encoded")
}

fn invalid_client(description: &str) -> Response {
    let mut response = oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", description);
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(basic::CHALLENGE),
    );
    response
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    no_store(
        (
            status,
            axum::Json(json!({"error": error, "error_description": description})),
        )
            .into_response(),
    )
}

/// Token responses must not be cached (RFC 6749 §5.1).
fn no_store(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_client_credentials_are_form_decoded() {
        let mut h = HeaderMap::new();
        assert_eq!(basic_client(&h), Ok(None));
        let encoded = STANDARD.encode("ocean%3Aprod:s3cr%2Bt+x");
        h.insert(
            header::AUTHORIZATION,
            format!("Basic {encoded}").parse().unwrap(),
        );
        let (id, secret) = basic_client(&h).unwrap().unwrap();
        assert_eq!(id, "ocean:prod");
        assert_eq!(secret.expose(), "s3cr+t x");
    }
}
