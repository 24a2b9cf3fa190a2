//! Standard Webhooks signatures (<https://www.standardwebhooks.com/>): `webhook-id`,
//! `webhook-timestamp` and `webhook-signature` headers, HMAC-SHA256 over
//! `{id}.{timestamp}.{raw body}` with the key base64-decoded from a `whsec_` secret. Senders
//! built on Svix send the same scheme as `svix-id`, `svix-timestamp` and `svix-signature`; those
//! names are accepted too, and a request that mixes the two sets inconsistently is refused.
//!
//! The headers are checked before the body is read ([`HmacVerifier::check_headers`]), so an
//! unsigned or stale request costs no memory; the raw bytes as received are then verified before
//! anything parses them (a re-serialised body would not match). Each presented signature is
//! compared with the computed tag in constant time (`secret::same_secret`).

use aws_lc_rs::hmac;
use axum::http::HeaderMap;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// `WWW-Authenticate` for signed webhooks (there is no registered scheme; this names it).
pub const CHALLENGE: &str = "Signature realm=\"referral-relay\", headers=\"webhook-id webhook-timestamp webhook-signature\"";

/// The header names of the scheme: Standard Webhooks', then Svix's for the same thing.
const NAMES: [[&str; 3]; 2] = [
    ["webhook-id", "webhook-timestamp", "webhook-signature"],
    ["svix-id", "svix-timestamp", "svix-signature"],
];

/// Why a signed request was refused. Its text is a fixed phrase, safe to log and return.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the {0} header is missing")]
    MissingHeader(&'static str),
    #[error("the webhook-* and svix-* signature headers disagree; send one set")]
    MixedHeaders,
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
    #[error("webhook-signature carries more signatures than are ever needed")]
    TooManySignatures,
    #[error("no signature matches")]
    NoMatch,
}

/// The signature headers of a request, checked for presence, form and freshness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedHeaders {
    /// The sender's delivery id.
    pub id: String,
    timestamp: String,
    /// The decoded `v1` signatures.
    signatures: Vec<Vec<u8>>,
}

/// `v1` signatures looked at, at most: a sender signs with one secret, or two while it rotates.
/// More are refused, so a request cannot make the relay compare without end.
pub const MAX_SIGNATURES: usize = 8;

/// Verifies signatures against every configured secret (several during a rotation).
pub struct HmacVerifier {
    keys: Vec<hmac::Key>,
    tolerance_secs: i64,
}

impl HmacVerifier {
    /// Checks signatures made with any of `keys` (the bytes of `whsec_` secrets), sent at most
    /// `tolerance_secs` from now.
    pub fn new<K: AsRef<[u8]>>(keys: &[K], tolerance_secs: u64) -> Self {
        Self {
            keys: keys
                .iter()
                .map(|k| hmac::Key::new(hmac::HMAC_SHA256, k.as_ref()))
                .collect(),
            tolerance_secs: i64::try_from(tolerance_secs).unwrap_or(i64::MAX),
        }
    }

    /// Checks the signature headers of a request at `now` (Unix seconds), before its body is
    /// read: present (under one set of names), a usable id, a timestamp within the tolerance,
    /// and at least one decodable `v1` signature.
    pub fn check_headers(
        &self,
        headers: &HeaderMap,
        now: i64,
    ) -> Result<SignedHeaders, SignatureError> {
        let [id, timestamp, signatures] = signature_headers(headers)?;
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
        // Other versions (v1a, v2, ...) are for other schemes; they are skipped, not errors.
        let v1: Vec<&str> = signatures
            .split(' ')
            .filter_map(|entry| entry.strip_prefix("v1,"))
            .collect();
        if v1.is_empty() {
            return Err(SignatureError::NoV1Signature);
        }
        if v1.len() > MAX_SIGNATURES {
            return Err(SignatureError::TooManySignatures);
        }
        let decoded: Vec<Vec<u8>> = v1.iter().filter_map(|s| STANDARD.decode(s).ok()).collect();
        if decoded.is_empty() {
            return Err(SignatureError::MalformedSignature);
        }
        Ok(SignedHeaders {
            id: id.to_owned(),
            timestamp: timestamp.to_owned(),
            signatures: decoded,
        })
    }

    /// Whether one of the signatures is a configured secret's over `body`. Each secret's HMAC is
    /// computed once, over the body in place, and compared with every signature in constant
    /// time: the work is one pass over the body per secret, whatever the request carries.
    pub fn verify_body(&self, signed: &SignedHeaders, body: &[u8]) -> Result<(), SignatureError> {
        let mut matches = false;
        for key in &self.keys {
            let mut context = hmac::Context::with_key(key);
            context.update(signed.id.as_bytes());
            context.update(b".");
            context.update(signed.timestamp.as_bytes());
            context.update(b".");
            context.update(body);
            let tag = context.sign();
            for signature in &signed.signatures {
                matches |= crate::secret::same_secret(signature, tag.as_ref());
            }
        }
        if matches {
            Ok(())
        } else {
            Err(SignatureError::NoMatch)
        }
    }

    /// Checks the headers and the signature over `body` at `now`; returns the delivery id.
    pub fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: i64,
    ) -> Result<String, SignatureError> {
        let signed = self.check_headers(headers, now)?;
        self.verify_body(&signed, body)?;
        Ok(signed.id)
    }
}

/// The id, timestamp and signature headers under one set of names. A value present under both
/// names must be the same, and one set may not be completed from the other's names.
fn signature_headers(headers: &HeaderMap) -> Result<[&str; 3], SignatureError> {
    let read = |name: &str| {
        headers
            .get(name)
            .map(|v| v.to_str().map(str::trim).unwrap_or("\u{fffd}"))
    };
    let [standard, svix] = NAMES.map(|names| names.map(read));
    let complete = |set: &[Option<&str>; 3]| set.iter().all(Option::is_some);
    let absent = |set: &[Option<&str>; 3]| set.iter().all(Option::is_none);
    let missing = |set: &[Option<&str>; 3], names: &[&'static str; 3]| {
        let at = set.iter().position(Option::is_none).unwrap_or(0);
        SignatureError::MissingHeader(names[at])
    };
    let chosen = match (complete(&standard), complete(&svix)) {
        (true, true) if standard == svix => standard,
        (true, false) if absent(&svix) => standard,
        (false, true) if absent(&standard) => svix,
        (false, false) if absent(&svix) => return Err(missing(&standard, &NAMES[0])),
        (false, false) if absent(&standard) => return Err(missing(&svix, &NAMES[1])),
        _ => return Err(SignatureError::MixedHeaders),
    };
    Ok(chosen.map(Option::unwrap_or_default))
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
        let keys: Vec<Vec<u8>> = secrets
            .iter()
            .map(|s| STANDARD.decode(s.trim_start_matches("whsec_")).unwrap())
            .collect();
        HmacVerifier::new(&keys, 300)
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
    fn svix_header_names_are_the_same_scheme_and_may_not_be_mixed() {
        let v = verifier(&[SECRET]);
        let ts = TIMESTAMP.to_string();
        let mut svix = HeaderMap::new();
        for (from, to) in NAMES[0].iter().zip(NAMES[1]) {
            let value = headers(ID, &ts, SIGNATURE).remove(*from).unwrap();
            svix.insert(to, value);
        }
        assert_eq!(v.verify(&svix, BODY, TIMESTAMP).unwrap(), ID);
        // Both sets with the same values: fine.
        let mut both = headers(ID, &ts, SIGNATURE);
        both.extend(svix.clone());
        assert_eq!(v.verify(&both, BODY, TIMESTAMP).unwrap(), ID);
        // Both sets with different ids: refused, although one set verifies.
        let mut differ = headers("msg_other", &ts, SIGNATURE);
        differ.extend(svix.clone());
        assert_eq!(
            v.verify(&differ, BODY, TIMESTAMP).unwrap_err(),
            SignatureError::MixedHeaders
        );
        // One set completed from the other's names.
        let mut mixed = headers(ID, &ts, SIGNATURE);
        let signature = mixed.remove("webhook-signature").unwrap();
        mixed.insert("svix-signature", signature);
        assert_eq!(
            v.verify(&mixed, BODY, TIMESTAMP).unwrap_err(),
            SignatureError::MixedHeaders
        );
        let mut partial = svix.clone();
        partial.remove("svix-timestamp");
        assert_eq!(
            v.verify(&partial, BODY, TIMESTAMP).unwrap_err(),
            SignatureError::MissingHeader("svix-timestamp")
        );
    }

    #[test]
    fn a_flood_of_signatures_is_refused_before_any_is_computed() {
        let v = verifier(&[SECRET]);
        let ts = TIMESTAMP.to_string();
        let many = ["v1,AA=="; MAX_SIGNATURES + 1].join(" ");
        assert_eq!(
            v.verify(&headers(ID, &ts, &many), BODY, TIMESTAMP)
                .unwrap_err(),
            SignatureError::TooManySignatures
        );
        // Within the bound, the right one among wrong ones still passes.
        let some = format!("{} {SIGNATURE}", ["v1,AA=="; MAX_SIGNATURES - 1].join(" "));
        assert_eq!(
            v.verify(&headers(ID, &ts, &some), BODY, TIMESTAMP).unwrap(),
            ID
        );
    }
}
