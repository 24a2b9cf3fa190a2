//! Standard Webhooks signatures (<https://www.standardwebhooks.com/>): `webhook-id`,
//! `webhook-timestamp` and `webhook-signature` headers, HMAC-SHA256 over
//! `{id}.{timestamp}.{raw body}` with the key base64-decoded from a `whsec_` secret.
//!
//! The raw bytes as received are verified before anything parses them; a re-serialised body
//! would not match. Comparison is constant-time (aws-lc's `hmac::verify`).

use aws_lc_rs::hmac;
use axum::http::HeaderMap;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::config::Secret;

/// `WWW-Authenticate` for signed webhooks (there is no registered scheme; this names it).
pub const CHALLENGE: &str = "Signature realm=\"referral-relay\", headers=\"webhook-id webhook-timestamp webhook-signature\"";

/// Why a signed request was refused. `reason()` is a fixed phrase, safe to log and return.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the {0} header is missing")]
    MissingHeader(&'static str),
    #[error("webhook-id is not a usable delivery id")]
    BadId,
    #[error("webhook-timestamp is not a whole number of seconds")]
    BadTimestamp,
    #[error("webhook-timestamp is older than the tolerance")]
    TooOld,
    #[error("webhook-timestamp is in the future beyond the tolerance")]
    InFuture,
    #[error("webhook-signature has no v1 signature")]
    NoV1Signature,
    #[error("webhook-signature is not valid base64")]
    MalformedSignature,
    #[error("no signature matches")]
    NoMatch,
}

/// Decodes a `whsec_<base64>` secret into its HMAC key.
pub fn decode_secret(secret: &str) -> Result<Vec<u8>, &'static str> {
    let encoded = secret
        .strip_prefix("whsec_")
        .ok_or("a Standard Webhooks secret starts with whsec_")?;
    let key = STANDARD
        .decode(encoded)
        .map_err(|_| "the part after whsec_ is not valid base64")?;
    if key.len() < 16 {
        return Err("the key after whsec_ must be at least 16 bytes");
    }
    Ok(key)
}

/// Verifies signatures against every configured secret (several during a rotation).
pub struct HmacVerifier {
    keys: Vec<hmac::Key>,
    tolerance_secs: i64,
}

impl HmacVerifier {
    pub fn new(secrets: &[Secret], tolerance_secs: u64) -> Result<Self, &'static str> {
        let keys = secrets
            .iter()
            .map(|s| decode_secret(s.expose()).map(|k| hmac::Key::new(hmac::HMAC_SHA256, &k)))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            keys,
            tolerance_secs: i64::try_from(tolerance_secs).unwrap_or(i64::MAX),
        })
    }

    /// Checks the request signed at `now` (Unix seconds); returns its `webhook-id`.
    pub fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: i64,
    ) -> Result<String, SignatureError> {
        let id = header(headers, "webhook-id")?;
        let timestamp = header(headers, "webhook-timestamp")?;
        let signatures = header(headers, "webhook-signature")?;
        if id.is_empty() || id.len() > 256 || id.chars().any(char::is_control) {
            return Err(SignatureError::BadId);
        }
        let sent: i64 = timestamp
            .parse()
            .map_err(|_| SignatureError::BadTimestamp)?;
        if now.saturating_sub(sent) > self.tolerance_secs {
            return Err(SignatureError::TooOld);
        }
        if sent.saturating_sub(now) > self.tolerance_secs {
            return Err(SignatureError::InFuture);
        }

        let mut signed = Vec::with_capacity(id.len() + timestamp.len() + body.len() + 2);
        signed.extend_from_slice(id.as_bytes());
        signed.push(b'.');
        signed.extend_from_slice(timestamp.as_bytes());
        signed.push(b'.');
        signed.extend_from_slice(body);

        let (mut saw_v1, mut saw_decodable) = (false, false);
        for entry in signatures.split(' ') {
            // Other versions (v1a, v2, ...) are for other schemes; they are skipped, not errors.
            let Some(encoded) = entry.strip_prefix("v1,") else {
                continue;
            };
            saw_v1 = true;
            let Ok(signature) = STANDARD.decode(encoded) else {
                continue;
            };
            saw_decodable = true;
            if self
                .keys
                .iter()
                .any(|key| hmac::verify(key, &signed, &signature).is_ok())
            {
                return Ok(id.to_owned());
            }
        }
        Err(match (saw_v1, saw_decodable) {
            (false, _) => SignatureError::NoV1Signature,
            (true, false) => SignatureError::MalformedSignature,
            (true, true) => SignatureError::NoMatch,
        })
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<&'a str, SignatureError> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .ok_or(SignatureError::MissingHeader(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    // The example from the Standard Webhooks specification. The signature was computed outside
    // this project, with Python's standard library:
    //   key = base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    //   base64.b64encode(hmac.new(key, b'msg_p5jXN8AQM9LWM0D4loKWxJek.1614265330.{"test": 2432232314}',
    //                             hashlib.sha256).digest())
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TIMESTAMP: i64 = 1_614_265_330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn headers(id: &str, timestamp: &str, signature: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("webhook-id", id.parse().unwrap());
        h.insert("webhook-timestamp", timestamp.parse().unwrap());
        h.insert("webhook-signature", signature.parse().unwrap());
        h
    }

    fn verifier(secrets: &[&str]) -> HmacVerifier {
        let secrets: Vec<Secret> = secrets.iter().map(|s| Secret::new(*s)).collect();
        HmacVerifier::new(&secrets, 300).unwrap()
    }

    #[test]
    fn the_specification_example_verifies() {
        let h = headers(ID, &TIMESTAMP.to_string(), SIGNATURE);
        assert_eq!(
            verifier(&[SECRET])
                .verify(&h, BODY, TIMESTAMP + 10)
                .unwrap(),
            ID
        );
        // Among several signatures and several secrets (a rotation on both sides).
        let other = "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        let h = headers(
            ID,
            &TIMESTAMP.to_string(),
            &format!("v1,bm9wZQ== v2,xyz {SIGNATURE}"),
        );
        assert_eq!(
            verifier(&[other, SECRET])
                .verify(&h, BODY, TIMESTAMP)
                .unwrap(),
            ID
        );
    }

    #[test]
    fn every_wrong_variant_is_refused() {
        let v = verifier(&[SECRET]);
        let ts = TIMESTAMP.to_string();
        let at = TIMESTAMP;
        let check = |h: &HeaderMap, body: &[u8], now: i64| v.verify(h, body, now).unwrap_err();

        assert_eq!(
            check(&headers(ID, &ts, SIGNATURE), br#"{"test": 2432232315}"#, at),
            SignatureError::NoMatch
        );
        assert_eq!(
            check(&headers("msg_other", &ts, SIGNATURE), BODY, at),
            SignatureError::NoMatch
        );
        assert_eq!(
            check(&headers(ID, &ts, SIGNATURE), BODY, at + 301),
            SignatureError::TooOld
        );
        assert_eq!(
            check(&headers(ID, &ts, SIGNATURE), BODY, at - 301),
            SignatureError::InFuture
        );
        assert_eq!(
            check(&headers(ID, "soon", SIGNATURE), BODY, at),
            SignatureError::BadTimestamp
        );
        let v2 = SIGNATURE.replacen("v1,", "v2,", 1);
        assert_eq!(
            check(&headers(ID, &ts, &v2), BODY, at),
            SignatureError::NoV1Signature
        );
        assert_eq!(
            check(&headers(ID, &ts, "v1,@@not-base64@@"), BODY, at),
            SignatureError::MalformedSignature
        );
        let wrong_key = verifier(&["whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"]);
        assert_eq!(
            wrong_key
                .verify(&headers(ID, &ts, SIGNATURE), BODY, at)
                .unwrap_err(),
            SignatureError::NoMatch
        );
        let mut missing = headers(ID, &ts, SIGNATURE);
        missing.remove("webhook-timestamp");
        assert_eq!(
            check(&missing, BODY, at),
            SignatureError::MissingHeader("webhook-timestamp")
        );
    }

    #[test]
    fn secrets_must_be_whsec_base64() {
        assert!(decode_secret(SECRET).is_ok());
        assert!(decode_secret("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(decode_secret("whsec_***").is_err());
        assert!(decode_secret("whsec_AAAA").is_err());
    }
}
