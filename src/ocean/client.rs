//! The outbound client for one Ocean site: OAuth client-credentials tokens (cached, one fetch
//! at a time, refreshed once on 401) and `POST {base}/svc/fhir/v1/$process-messages`.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};

use crate::config::SiteConfig;
use crate::outgoing::answer::{outcome_text, retry_after, transport};
use crate::outgoing::token::{ClientCredentials, Grant};

pub use crate::outgoing::SendError;

/// A typed client for one site, built once from config.
pub struct OceanClient {
    http: reqwest::Client,
    base_url: String,
    /// Tokens from `{base_url}/svc/oauth2/token`.
    credentials: ClientCredentials,
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
        let base_url = site.base_url.trim_end_matches('/').to_owned();
        let grant = Grant {
            token_url: format!("{base_url}/svc/oauth2/token"),
            client_id: site.client_id.clone(),
            client_secret: site.client_secret.clone(),
            token_auth: site.token_auth,
            scope: None,
        };
        let credentials = ClientCredentials::new(http.clone(), grant, "Ocean");
        Ok(Self {
            http,
            base_url,
            credentials,
        })
    }

    /// The URL messages are posted to.
    pub fn messages_url(&self) -> String {
        format!("{}/svc/fhir/v1/$process-messages", self.base_url)
    }

    /// How many token requests succeeded and how many failed, since start.
    pub fn token_fetches(&self) -> (u64, u64) {
        self.credentials.fetches()
    }

    async fn token(&self, rejected: Option<&str>) -> Result<String, SendError> {
        self.credentials.token(rejected).await
    }

    /// Posts one message Bundle; a 401 gets one retry with a fresh token.
    pub async fn send(&self, bundle: &str) -> Result<(), SendError> {
        let mut rejected: Option<String> = None;
        loop {
            let token = self.token(rejected.as_deref()).await?;
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
            if status == StatusCode::UNAUTHORIZED && rejected.is_none() {
                rejected = Some(token);
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
        let mut rejected: Option<String> = None;
        loop {
            let token = self.token(rejected.as_deref()).await?;
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
            if status == StatusCode::UNAUTHORIZED && rejected.is_none() {
                rejected = Some(token);
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
        let token = self
            .credentials
            .fresh_token()
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
