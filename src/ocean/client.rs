//! The outbound client for one Ocean site: OAuth client-credentials tokens (cached, one fetch
//! at a time, refreshed once on 401) and `POST {base}/svc/fhir/v1/$process-messages`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use serde::Deserialize;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::config::{SiteConfig, TokenAuth};
use crate::secret::Secret;

/// Refresh a token this long before Ocean says it expires.
const TOKEN_MARGIN: Duration = Duration::from_secs(60);
/// Life assumed for a token when Ocean gives no `expires_in`.
const DEFAULT_TOKEN_LIFE: Duration = Duration::from_secs(300);

/// Why a send did not land.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Worth retrying (5xx, 429, 408, timeouts, connection errors, token trouble).
    #[error("{reason}")]
    Retry {
        reason: String,
        /// `Retry-After`, when Ocean sent one.
        after: Option<Duration>,
    },
    /// Ocean refused the message (another 4xx): retrying cannot help.
    #[error("{0}")]
    Rejected(String),
}

struct CachedToken {
    value: String,
    refresh_at: Instant,
}

/// A typed client for one site, built once from config.
pub struct OceanClient {
    http: reqwest::Client,
    base_url: String,
    client_id: String,
    client_secret: Secret,
    token_auth: TokenAuth,
    token: Mutex<Option<CachedToken>>,
    /// Token requests that succeeded and that failed, since start (for metrics).
    token_fetches: [AtomicU64; 2],
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: Option<u64>,
}

impl OceanClient {
    pub fn new(site: &SiteConfig, timeout: Duration) -> anyhow::Result<Self> {
        // Redirects are followed on the site's own origin only: an answer sending the relay
        // elsewhere (another host, an internal address) is an error, not a fetch.
        let redirects = reqwest::redirect::Policy::custom(|attempt| {
            let same_origin = attempt
                .previous()
                .first()
                .is_some_and(|first| first.origin() == attempt.url().origin());
            if attempt.previous().len() > 5 {
                attempt.error("more than 5 redirects")
            } else if same_origin {
                attempt.follow()
            } else {
                attempt.stop()
            }
        });
        let http = reqwest::Client::builder()
            .redirect(redirects)
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("referral-relay/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            http,
            base_url: site.base_url.trim_end_matches('/').to_owned(),
            client_id: site.client_id.clone(),
            client_secret: site.client_secret.clone(),
            token_auth: site.token_auth,
            token: Mutex::new(None),
            token_fetches: Default::default(),
        })
    }

    /// The URL messages are posted to.
    pub fn messages_url(&self) -> String {
        format!("{}/svc/fhir/v1/$process-messages", self.base_url)
    }

    /// How many token requests succeeded and how many failed, since start.
    pub fn token_fetches(&self) -> (u64, u64) {
        let [ok, failed] = &self.token_fetches;
        (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed))
    }

    /// A valid token: the cached one, or a new one (`renew` forces that). The lock makes
    /// concurrent callers share one fetch.
    async fn token(&self, renew: bool) -> Result<String, SendError> {
        let mut cached = self.token.lock().await;
        if !renew
            && let Some(token) = cached.as_ref()
            && token.refresh_at > Instant::now()
        {
            return Ok(token.value.clone());
        }
        let fetched = self.fetch_token().await;
        let [ok, failed] = &self.token_fetches;
        let counter = if fetched.is_ok() { ok } else { failed };
        counter.fetch_add(1, Ordering::Relaxed);
        let (value, life) = fetched?;
        *cached = Some(CachedToken {
            value: value.clone(),
            refresh_at: Instant::now() + life,
        });
        tracing::info!(
            token_life_secs = life.as_secs(),
            "fetched an Ocean access grant"
        );
        Ok(value)
    }

    /// Asks the site's token endpoint for a token; returns it and how long to use it.
    async fn fetch_token(&self) -> Result<(String, Duration), SendError> {
        let url = format!("{}/svc/oauth2/token", self.base_url);
        let mut request = self
            .http
            .post(&url)
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded");
        let mut form = vec![("grant_type", "client_credentials")];
        match self.token_auth {
            TokenAuth::Form => {
                form.push(("client_id", &self.client_id));
                form.push(("client_secret", self.client_secret.expose()));
            }
            TokenAuth::Basic => {
                request = request.basic_auth(&self.client_id, Some(self.client_secret.expose()));
            }
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
                reason: format!("token endpoint unreachable: {}", transport(&e)),
                after: None,
            })?;
        let status = response.status();
        if !status.is_success() {
            // Even a 401 here is retried: credentials are fixed by an operator, and updates
            // must not die in the meantime.
            return Err(SendError::Retry {
                reason: format!(
                    "token endpoint answered {status}; check the site's client_id and client_secret"
                ),
                after: retry_after(&response),
            });
        }
        let token: TokenResponse = response.json().await.map_err(|e| {
            let reason = if e.is_decode() {
                "a body that is not the expected JSON"
            } else {
                transport(&e)
            };
            SendError::Retry {
                reason: format!("token endpoint answered {reason}"),
                after: None,
            }
        })?;
        // Refresh a minute early, or halfway through a token shorter-lived than two minutes.
        let given = token
            .expires_in
            .map_or(DEFAULT_TOKEN_LIFE, Duration::from_secs);
        let life = given.saturating_sub(TOKEN_MARGIN.min(given / 2));
        Ok((token.access_token, life))
    }

    /// Posts one message Bundle; a 401 gets one retry with a fresh token.
    pub async fn send(&self, bundle: &str) -> Result<(), SendError> {
        let mut renewed = false;
        loop {
            let token = self.token(renewed).await?;
            let response = self
                .http
                .post(self.messages_url())
                .header(AUTHORIZATION, format!("Bearer {token}"))
                .header(CONTENT_TYPE, "application/fhir+json")
                .body(bundle.to_owned())
                .send()
                .await
                .map_err(|e| SendError::Retry {
                    reason: format!("Ocean unreachable: {}", transport(&e)),
                    after: None,
                })?;
            let status = response.status();
            if status.is_success() {
                return Ok(());
            }
            if status == StatusCode::UNAUTHORIZED && !renewed {
                renewed = true;
                continue;
            }
            let after = retry_after(&response);
            let detail = outcome_text(response).await;
            let reason = format!("Ocean answered {status}{detail}");
            return Err(
                if status.is_server_error()
                    || status == StatusCode::TOO_MANY_REQUESTS
                    || status == StatusCode::REQUEST_TIMEOUT
                    || status == StatusCode::UNAUTHORIZED
                {
                    SendError::Retry { reason, after }
                } else {
                    SendError::Rejected(reason)
                },
            );
        }
    }

    /// The site's base URL, without a trailing `/`.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Downloads a document from this site with the bearer token (a 401 gets one retry with a
    /// fresh token): its bytes and the `Content-Type` Ocean gave. `timeout` bounds the whole
    /// download; more than `max_bytes` is refused (as [`SendError::Rejected`]), as are 4xx
    /// answers other than 401, 408 and 429.
    pub async fn fetch(
        &self,
        url: &str,
        timeout: Duration,
        max_bytes: u64,
    ) -> Result<(bytes::Bytes, Option<String>), SendError> {
        let mut renewed = false;
        loop {
            let token = self.token(renewed).await?;
            let unreachable = |e: reqwest::Error| {
                if e.is_redirect() {
                    SendError::Rejected("Ocean answered with more than 5 redirects".into())
                } else {
                    SendError::Retry {
                        reason: format!("Ocean unreachable: {}", transport(&e)),
                        after: None,
                    }
                }
            };
            let mut response = self
                .http
                .get(url)
                .header(AUTHORIZATION, format!("Bearer {token}"))
                .timeout(timeout)
                .send()
                .await
                .map_err(unreachable)?;
            let status = response.status();
            if status == StatusCode::UNAUTHORIZED && !renewed {
                renewed = true;
                continue;
            }
            if status.is_redirection() {
                return Err(SendError::Rejected(format!(
                    "Ocean answered {status}, a redirect to another host, which is not followed"
                )));
            }
            if !status.is_success() {
                let after = retry_after(&response);
                let reason = format!("Ocean answered {status}{}", outcome_text(response).await);
                let retry = status.is_server_error()
                    || status == StatusCode::TOO_MANY_REQUESTS
                    || status == StatusCode::REQUEST_TIMEOUT
                    || status == StatusCode::UNAUTHORIZED;
                return Err(if retry {
                    SendError::Retry { reason, after }
                } else {
                    SendError::Rejected(reason)
                });
            }
            let too_large = || {
                SendError::Rejected(format!(
                    "the document is larger than documents.max_bytes ({max_bytes} bytes)"
                ))
            };
            if response.content_length().is_some_and(|n| n > max_bytes) {
                return Err(too_large());
            }
            let content_type = response
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            // A web page is not a referral document (a sign-in or error page served with 200).
            if content_type
                .as_deref()
                .is_some_and(|c| c.trim_start().to_ascii_lowercase().starts_with("text/html"))
            {
                return Err(SendError::Rejected(
                    "Ocean answered with an HTML page instead of the document".into(),
                ));
            }
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(unreachable)? {
                if (body.len() + chunk.len()) as u64 > max_bytes {
                    return Err(too_large());
                }
                body.extend_from_slice(&chunk);
            }
            // A web page sent under another type (or none) is no document either.
            let start = String::from_utf8_lossy(&body[..body.len().min(64)]).to_ascii_lowercase();
            let start = start.trim_start();
            if start.starts_with("<!doctype html") || start.starts_with("<html") {
                return Err(SendError::Rejected(
                    "Ocean answered with an HTML page instead of the document".into(),
                ));
            }
            if body.is_empty() {
                return Err(SendError::Retry {
                    reason: "Ocean answered with an empty body".into(),
                    after: None,
                });
            }
            return Ok((bytes::Bytes::from(body), content_type));
        }
    }

    /// Proves the credentials work: a token, then `GET .../NamingSystem/id-site-number`.
    pub async fn check(&self) -> anyhow::Result<u16> {
        let token = self.token(true).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        let url = format!("{}/svc/fhir/v1/NamingSystem/id-site-number", self.base_url);
        let response = self
            .http
            .get(&url)
            .header(AUTHORIZATION, format!("Bearer {token}"))
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("{url} unreachable: {}", transport(&e)))?;
        let status = response.status();
        if !status.is_success() {
            anyhow::bail!("{url} answered {status}");
        }
        Ok(status.as_u16())
    }
}

/// A transport error without its URL's query or anything sent.
fn transport(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    }
}

fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    let value = response.headers().get(RETRY_AFTER)?.to_str().ok()?;
    parse_retry_after(value, time::OffsetDateTime::now_utc())
}

/// `Retry-After` as delay-seconds or an HTTP-date, seen at `now`.
fn parse_retry_after(value: &str, now: time::OffsetDateTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at =
        time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc2822).ok()?;
    Some(Duration::try_from(at - now).unwrap_or(Duration::ZERO))
}

/// `: <diagnostics>` of an OperationOutcome body, if Ocean sent one.
async fn outcome_text(response: reqwest::Response) -> String {
    let Ok(bytes) = response.bytes().await else {
        return String::new();
    };
    let Ok(body) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return String::new();
    };
    let texts: Vec<&str> = body["issue"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["diagnostics"].as_str().or(i["details"]["text"].as_str()))
        .collect();
    if texts.is_empty() {
        String::new()
    } else {
        format!(
            ": {}",
            texts.join("; ").chars().take(500).collect::<String>()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_or_an_http_date() {
        let now = time::macros::datetime!(2015-10-21 07:27:00 UTC);
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
