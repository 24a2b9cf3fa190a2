//! Access tokens for the relay's own outgoing requests: the OAuth 2.0 client credentials grant
//! (RFC 6749 §4.4), used for Ocean sites and for FHIR destinations. A token is cached until a
//! little before it expires, fetched by one caller at a time (concurrent callers share the
//! fetch), and fetched anew when a request with it is answered 401.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use reqwest::header::CONTENT_TYPE;
use serde::Deserialize;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::SendError;
use crate::config::TokenAuth;
use crate::outgoing::answer::{MAX_ANSWER_BYTES, read_at_most, retry_after, transport};
use crate::secret::Secret;

/// Refresh a token this long before the server says it expires.
const TOKEN_MARGIN: Duration = Duration::from_secs(60);
/// Life assumed for a token when the answer gives no `expires_in`.
const DEFAULT_TOKEN_LIFE: Duration = Duration::from_secs(300);
/// The longest a token is kept, whatever `expires_in` says (a day).
const MAX_TOKEN_LIFE: Duration = Duration::from_secs(86_400);

/// Where and how to ask for tokens.
pub struct Grant {
    /// The token endpoint (`https`, or `http` on a private network).
    pub token_url: String,
    pub client_id: String,
    pub client_secret: Secret,
    /// How the credentials are sent: in the form body or an HTTP Basic header (RFC 6749 §2.3.1).
    pub token_auth: TokenAuth,
    /// The `scope` asked for (RFC 6749 §3.3), if any.
    pub scope: Option<String>,
}

struct CachedToken {
    value: String,
    refresh_at: Instant,
}

/// A [`Grant`] and the token it last gave.
pub struct ClientCredentials {
    http: reqwest::Client,
    grant: Grant,
    /// Who issues the tokens, as errors and logs name it ("Ocean", "destination 'emr'").
    issuer: String,
    cached: Mutex<Option<CachedToken>>,
    /// Token requests that succeeded and that failed, since start (for metrics).
    fetches: [AtomicU64; 2],
}

/// The token response's fields the relay uses (RFC 6749 §5.1). `expires_in` is read as a
/// number or a string of digits (some servers send `"3600"`); anything else is ignored in
/// favour of [`DEFAULT_TOKEN_LIFE`], since the token itself is good.
#[derive(Deserialize)]
struct TokenResponse {
    access_token: Option<serde_json::Value>,
    expires_in: Option<serde_json::Value>,
}

impl TokenResponse {
    /// The token and how long it lives, or why the answer holds no token (naming the field).
    fn read(self) -> Result<(String, Duration), String> {
        let token = match self.access_token {
            Some(serde_json::Value::String(token)) if crate::secret::is_bearer_token(&token) => {
                token
            }
            Some(serde_json::Value::String(_)) => {
                return Err("an access_token that cannot be a bearer token (RFC 6750 §2.1)".into());
            }
            Some(_) => return Err("access_token that is not a non-empty string".into()),
            None => return Err("no access_token".into()),
        };
        let expires_in = match &self.expires_in {
            None => None,
            Some(serde_json::Value::Number(n)) => n.as_u64(),
            Some(serde_json::Value::String(s)) => s.trim().parse::<u64>().ok(),
            Some(_) => None,
        };
        if self.expires_in.is_some() && expires_in.is_none() {
            tracing::warn!(
                assumed_secs = DEFAULT_TOKEN_LIFE.as_secs(),
                "the token endpoint's expires_in is not a number of seconds; the token is kept for the assumed life"
            );
        }
        let life = expires_in.map_or(DEFAULT_TOKEN_LIFE, Duration::from_secs);
        Ok((token, life.min(MAX_TOKEN_LIFE)))
    }
}

impl ClientCredentials {
    /// Tokens from `grant`, fetched with `http`; `issuer` names the server in errors and logs.
    pub fn new(http: reqwest::Client, grant: Grant, issuer: impl Into<String>) -> Self {
        Self {
            http,
            grant,
            issuer: issuer.into(),
            cached: Mutex::new(None),
            fetches: Default::default(),
        }
    }

    /// How many token requests succeeded and how many failed, since start.
    pub fn fetches(&self) -> (u64, u64) {
        let [ok, failed] = &self.fetches;
        (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed))
    }

    /// A valid token: the cached one, unless it expired or is `rejected` (a server answered
    /// 401 to it), else a new one. Callers that had the same token rejected at once share one
    /// fetch: the first fetches, the others find the new one cached.
    ///
    /// # Errors
    /// [`SendError::Retry`] when the endpoint cannot be reached or gives no token: even a 401
    /// there is retried, since credentials are fixed by an operator and what waits to be sent
    /// must not die meanwhile.
    pub async fn token(&self, rejected: Option<&str>) -> Result<String, SendError> {
        let mut cached = self.cached.lock().await;
        if let Some(token) = cached.as_ref()
            && rejected != Some(token.value.as_str())
            && token.refresh_at > Instant::now()
        {
            return Ok(token.value.clone());
        }
        let fetched = self.fetch().await;
        let [ok, failed] = &self.fetches;
        let counter = if fetched.is_ok() { ok } else { failed };
        counter.fetch_add(1, Ordering::Relaxed);
        let (value, life) = fetched?;
        *cached = Some(CachedToken {
            value: value.clone(),
            refresh_at: Instant::now() + life,
        });
        tracing::info!(issuer = %self.issuer, token_life_secs = life.as_secs(), "fetched an access token");
        Ok(value)
    }

    /// A token fetched now, whatever is cached (to prove the credentials work).
    ///
    /// # Errors
    /// As [`ClientCredentials::token`].
    pub async fn fresh_token(&self) -> Result<String, SendError> {
        self.cached.lock().await.take();
        self.token(None).await
    }

    /// Asks the token endpoint for a token; returns it and how long to use it.
    async fn fetch(&self) -> Result<(String, Duration), SendError> {
        let grant = &self.grant;
        let issuer = &self.issuer;
        let mut request = self
            .http
            .post(&grant.token_url)
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded");
        let mut form = vec![("grant_type", "client_credentials")];
        match grant.token_auth {
            TokenAuth::Form => {
                form.push(("client_id", &grant.client_id));
                form.push(("client_secret", grant.client_secret.expose()));
            }
            TokenAuth::Basic => {
                // RFC 6749 §2.3.1: each form-encoded before the Basic scheme joins them.
                let encode = |text: &str| {
                    serde_urlencoded::to_string([("", text)])
                        .map(|pair| pair[1..].to_owned())
                        .unwrap_or_default()
                };
                request = request.basic_auth(
                    encode(&grant.client_id),
                    Some(encode(grant.client_secret.expose())),
                );
            }
        }
        if let Some(scope) = &grant.scope {
            form.push(("scope", scope));
        }
        let body = serde_urlencoded::to_string(&form).map_err(|e| SendError::Retry {
            reason: format!("cannot encode the token request: {e}"),
            after: None,
        })?;
        let response = request
            .body(body)
            .send()
            .await
            .map_err(|e| SendError::Retry {
                reason: format!("{issuer}'s token endpoint unreachable: {}", transport(&e)),
                after: None,
            })?;
        let status = response.status();
        if !status.is_success() {
            return Err(SendError::Retry {
                reason: format!(
                    "{issuer}'s token endpoint answered {status}; check the client_id and client_secret"
                ),
                after: retry_after(&response),
            });
        }
        let unreadable = |reason: String| SendError::Retry {
            reason: format!("{issuer}'s token endpoint answered {reason}"),
            after: None,
        };
        let body = read_at_most(response, MAX_ANSWER_BYTES)
            .await
            .map_err(|e| unreadable(transport(&e).to_owned()))?
            .ok_or_else(|| unreadable(format!("more than {MAX_ANSWER_BYTES} bytes")))?;
        let (token, given) = serde_json::from_slice::<TokenResponse>(&body)
            .map_err(|_| "a body that is not a JSON object".to_owned())
            .and_then(TokenResponse::read)
            .map_err(unreadable)?;
        // Refresh a minute early, or halfway through a token shorter-lived than two minutes.
        let life = given.saturating_sub(TOKEN_MARGIN.min(given / 2));
        Ok((token, life))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(json: &str) -> Result<(String, Duration), String> {
        serde_json::from_str::<TokenResponse>(json).unwrap().read()
    }

    #[test]
    fn a_token_answer_is_read_field_by_field() {
        let hour = Duration::from_secs(3600);
        assert_eq!(
            token(r#"{"access_token":"t","expires_in":3600}"#),
            Ok(("t".into(), hour))
        );
        assert_eq!(
            token(r#"{"access_token":"t","expires_in":"3600"}"#),
            Ok(("t".into(), hour))
        );
        for unreadable in [r#""soon""#, "-5", "1.5", "null", "[]"] {
            let json = format!(r#"{{"access_token":"t","expires_in":{unreadable}}}"#);
            assert_eq!(token(&json), Ok(("t".into(), DEFAULT_TOKEN_LIFE)), "{json}");
        }
        assert_eq!(
            token(r#"{"token_type":"bearer"}"#),
            Err("no access_token".into())
        );
        for unusable in [r#""""#, r#""bad\ntoken""#, r#""two words""#] {
            let json = format!(r#"{{"access_token":{unusable}}}"#);
            assert!(token(&json).unwrap_err().contains("RFC 6750"), "{json}");
        }
        assert!(
            token(r#"{"access_token":42}"#)
                .unwrap_err()
                .contains("access_token")
        );
        // A life no clock can add is kept to a day.
        for huge in ["18446744073709551615", r#""18446744073709551615""#] {
            let json = format!(r#"{{"access_token":"t","expires_in":{huge}}}"#);
            assert_eq!(token(&json), Ok(("t".into(), MAX_TOKEN_LIFE)), "{json}");
        }
    }
}
