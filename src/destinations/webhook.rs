//! Sending to a webhook destination: a `POST` signed as Standard Webhooks
//! (<https://www.standardwebhooks.com/>): `webhook-id` (the same on every attempt, so the
//! receiver can deduplicate), `webhook-timestamp` (Unix seconds of this attempt) and
//! `webhook-signature` (`v1,` and base64 of HMAC-SHA256 over `id.timestamp.body`, one per
//! secret during a rotation, space-separated).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use reqwest::header::CONTENT_TYPE;

use crate::config::{BodyMode, DestinationConfig, signing_key};
use crate::outgoing::SendError;
use crate::outgoing::answer::{outcome_text, retry_after, transport};

/// A webhook destination's HTTP client and signing keys.
pub struct WebhookSender {
    http: reqwest::Client,
    url: String,
    /// The current key first, then earlier ones still signing during a rotation.
    keys: Vec<Vec<u8>>,
    body: BodyMode,
}

/// The `webhook-signature` value for `body` sent as `id` at `timestamp` (Unix seconds), signed
/// with each of `keys`.
pub fn signature(keys: &[Vec<u8>], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut signed = format!("{id}.{timestamp}.").into_bytes();
    signed.extend_from_slice(body);
    keys.iter()
        .map(|key| {
            let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key);
            let tag = aws_lc_rs::hmac::sign(&key, &signed);
            format!("v1,{}", STANDARD.encode(tag.as_ref()))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

impl WebhookSender {
    pub fn new(config: &DestinationConfig) -> anyhow::Result<Self> {
        let http = super::http_client(config)?;
        let keys = config
            .secret
            .iter()
            .chain(&config.previous_secrets)
            .map(signing_key)
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            http,
            url: config.url.clone(),
            keys,
            body: config.body.unwrap_or_default(),
        })
    }

    /// Posts one message: the envelope, or the Bundle alone (`body = "bundle"`).
    pub async fn send(&self, id: &str, envelope: &super::Envelope) -> Result<(), SendError> {
        let (body, content_type) = match self.body {
            BodyMode::Envelope => (envelope.json.clone(), "application/json"),
            BodyMode::Bundle => (envelope.bundle.to_vec(), "application/fhir+json"),
        };
        self.post(id, body, content_type).await
    }

    /// Posts `body` (of `content_type`), signed, as message `id`: what the destination's
    /// versions go as, and alerts (JSON) too.
    ///
    /// # Errors
    /// Why it did not land, under the rules of [`crate::outgoing`].
    pub async fn post(
        &self,
        id: &str,
        body: Vec<u8>,
        content_type: &'static str,
    ) -> Result<(), SendError> {
        let timestamp = time::OffsetDateTime::now_utc().unix_timestamp();
        let response = self
            .http
            .post(&self.url)
            .header(CONTENT_TYPE, content_type)
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header(
                "webhook-signature",
                signature(&self.keys, id, timestamp, &body),
            )
            .body(body)
            .send()
            .await
            .map_err(|e| SendError::Retry {
                reason: format!("the destination is unreachable: {}", transport(&e)),
                after: None,
            })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let after = retry_after(&response);
        let detail = outcome_text(response).await;
        let reason = format!("the destination answered {status}{detail}");
        Err(SendError::from_status(status, reason, after))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification (its reference libraries' tests).
    #[test]
    fn signatures_match_the_specifications_example() {
        let key = STANDARD.decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            signature(&[key], "msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }
}
