//! What every outgoing request reads from its answer, whoever the receiver is (Ocean, a token
//! endpoint, a destination): a body up to a limit, `Retry-After`, an OperationOutcome's text,
//! and a transport error named without its URL.

use std::time::Duration;

use reqwest::header::RETRY_AFTER;

/// The most read of an answer that is not the document asked for (an error's OperationOutcome,
/// a token response), in bytes: the rest is not read.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Reads at most `max` bytes of `response`'s body: `Ok(None)` when there is more (the rest
/// is left unread and the connection dropped).
pub async fn read_at_most(
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

/// A transport error without its URL's query or anything sent.
pub fn transport(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    }
}

/// The answer's `Retry-After`, when it has a valid one.
pub fn retry_after(response: &reqwest::Response) -> Option<Duration> {
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

/// `: <diagnostics>` of an OperationOutcome body, if the receiver sent one (read up to
/// [`MAX_ANSWER_BYTES`]; a longer body is not read).
pub async fn outcome_text(response: reqwest::Response) -> String {
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
}
