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
/// The longest a token is kept, whatever `expires_in` says (a day).
const MAX_TOKEN_LIFE: Duration = Duration::from_secs(86_400);

pub use crate::outgoing::SendError;

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

/// The most read of an answer that is not the document asked for (an error's OperationOutcome,
/// a token response), in bytes: the rest is not read.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

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
            Some(serde_json::Value::String(token)) if !token.is_empty() => token,
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

/// Reads at most `max` bytes of `response`'s body: `Ok(None)` when there is more (the rest
/// is left unread and the connection dropped).
async fn read_at_most(
    mut response: reqwest::Response,
    max: usize,
) -> Result<Option<Vec<u8>>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > max {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
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
        let unreadable = |reason: String| SendError::Retry {
            reason: format!("token endpoint answered {reason}"),
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
            // A 401 after a fresh token is Ocean's trouble with tokens: worth another attempt.
            if status == StatusCode::UNAUTHORIZED {
                return Err(SendError::Retry { reason, after });
            }
            return Err(SendError::from_status(status, reason, after));
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
            // A web page is not a referral document (a sign-in or error page served with 200),
            // and markup a browser would run is never kept.
            if let Some(kind) = content_type.as_deref().and_then(markup_type) {
                return Err(SendError::Rejected(format!(
                    "Ocean answered with {kind} instead of the document"
                )));
            }
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(unreachable)? {
                if (body.len() + chunk.len()) as u64 > max_bytes {
                    return Err(too_large());
                }
                body.extend_from_slice(&chunk);
            }
            // Markup sent under another type (or none) is no document either.
            if let Some(kind) = sniff_markup(&body) {
                return Err(SendError::Rejected(format!(
                    "Ocean answered with {kind} instead of the document"
                )));
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

/// What a `Content-Type` names when it is markup a browser runs: HTML, XHTML or SVG.
fn markup_type(content_type: &str) -> Option<&'static str> {
    let media_type = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match media_type.as_str() {
        "text/html" => Some("an HTML page"),
        "application/xhtml+xml" => Some("an XHTML page"),
        "image/svg+xml" => Some("an SVG image"),
        _ => None,
    }
}

/// Whether `body` is markup a browser would run, whatever type it was sent under: after a
/// byte order mark, white space, an XML declaration or processing instructions, comments and a
/// non-HTML doctype, the first element is one the HTML sniffing rules name (WHATWG MIME
/// Sniffing §7.1: `html`, `head`, `body`, `script`, `iframe`, ...) or `svg`, or the start
/// declares the XHTML or SVG namespace. A PDF, an image or a CDA document is none of these.
fn sniff_markup(body: &[u8]) -> Option<&'static str> {
    const HTML_TAGS: [&[u8]; 17] = [
        b"html", b"head", b"body", b"script", b"iframe", b"h1", b"div", b"font", b"table", b"a",
        b"style", b"title", b"b", b"br", b"p", b"meta", b"object",
    ];
    let start = &body[..body.len().min(4096)];
    let lower = start.to_ascii_lowercase();
    for namespace in [
        &b"http://www.w3.org/1999/xhtml"[..],
        b"http://www.w3.org/2000/svg",
    ] {
        if lower.windows(namespace.len()).any(|w| w == namespace) {
            return Some("markup in the XHTML or SVG namespace");
        }
    }
    let mut rest: &[u8] = &lower;
    rest = rest.strip_prefix(b"\xef\xbb\xbf").unwrap_or(rest);
    loop {
        rest = rest.trim_ascii_start();
        let skip_to = |rest: &[u8], end: &[u8]| {
            rest.windows(end.len())
                .position(|w| w == end)
                .map(|at| at + end.len())
        };
        let skipped = if rest.starts_with(b"<?") {
            skip_to(rest, b"?>")
        } else if rest.starts_with(b"<!--") {
            skip_to(rest, b"-->")
        } else if rest.starts_with(b"<!doctype") {
            if rest[9..].trim_ascii_start().starts_with(b"html") {
                return Some("an HTML page");
            }
            skip_to(rest, b">")
        } else {
            None
        };
        match skipped {
            Some(at) => rest = &rest[at..],
            // Markup that does not end within the start read: judged by what it is.
            None if rest.starts_with(b"<?") || rest.starts_with(b"<!") => {
                return Some("markup that does not end");
            }
            None => break,
        }
    }
    let name = rest.strip_prefix(b"<")?;
    let end = name
        .iter()
        .position(|b| !b.is_ascii_alphanumeric())
        .unwrap_or(name.len());
    let (tag, after) = name.split_at(end);
    let ends = after.is_empty() || matches!(after[0], b' ' | b'>' | b'/' | b'\t' | b'\n' | b'\r');
    if !ends {
        return None;
    }
    if tag == b"svg" {
        Some("an SVG image")
    } else if HTML_TAGS.contains(&tag) {
        Some("an HTML page")
    } else {
        None
    }
}

/// A transport error without its URL's query or anything sent.
pub(crate) fn transport(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    }
}

pub(crate) fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    let value = response.headers().get(RETRY_AFTER)?.to_str().ok()?;
    parse_retry_after(value, std::time::SystemTime::now())
}

/// `Retry-After` (RFC 9110 §10.2.3) as delay-seconds or an HTTP-date in any of its three forms
/// (IMF-fixdate, RFC 850, asctime; §5.6.7), seen at `now`. A date in the past is no delay.
fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// `: <diagnostics>` of an OperationOutcome body, if Ocean sent one (read up to
/// [`MAX_ANSWER_BYTES`]; a longer body is not read).
pub(crate) async fn outcome_text(response: reqwest::Response) -> String {
    let Ok(Some(bytes)) = read_at_most(response, MAX_ANSWER_BYTES).await else {
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
    fn retry_after_takes_seconds_or_an_http_date_in_each_form() {
        // 2015-10-21 07:27:00 UTC
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_445_412_420);
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        for date in [
            "Wed, 21 Oct 2015 07:28:00 GMT",
            "Wednesday, 21-Oct-15 07:28:00 GMT",
            "Wed Oct 21 07:28:00 2015",
        ] {
            assert_eq!(
                parse_retry_after(date, now),
                Some(Duration::from_secs(60)),
                "{date}"
            );
        }
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn markup_is_found_behind_what_precedes_it() {
        let padding = " ".repeat(200);
        for page in [
            "<!DOCTYPE html><html><body>x</body></html>".to_owned(),
            "\u{feff}<html><script>alert(1)</script></html>".to_owned(),
            format!("{padding}<html>"),
            "<?xml version=\"1.0\"?>\n<!-- a comment -->\n<html>".to_owned(),
            "<!-- <html> --><body onload=x>".to_owned(),
            "<svg xmlns=\"http://www.w3.org/2000/svg\"><script/></svg>".to_owned(),
            "<?xml version=\"1.0\"?><svg><script/></svg>".to_owned(),
            "<x:y xmlns:x=\"http://www.w3.org/1999/xhtml\"><x:script/></x:y>".to_owned(),
            "<SCRIPT>alert(1)</SCRIPT>".to_owned(),
            "<!--".to_owned(),
        ] {
            assert!(sniff_markup(page.as_bytes()).is_some(), "{page}");
        }
        for document in [
            &b"%PDF-1.7\n%\xe2\xe3"[..],
            b"\x89PNG\r\n\x1a\n",
            b"<?xml version=\"1.0\"?><ClinicalDocument xmlns=\"urn:hl7-org:v3\"/>",
            b"plain text with <html> later on",
            b"<abbr>",
        ] {
            assert_eq!(sniff_markup(document), None, "{document:?}");
        }
        assert_eq!(
            markup_type("Image/SVG+xml; charset=utf-8"),
            Some("an SVG image")
        );
        assert_eq!(markup_type("application/pdf"), None);
    }

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
