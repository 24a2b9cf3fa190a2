//! Authenticating a CDS Hooks client (Ocean) on `/cds-services`: nobody, a static bearer
//! token, or a JWT the client signed, as CDS Hooks 2.0 §"Trusting CDS Clients" describes:
//! `Authorization: Bearer <JWT>` signed with an asymmetric key (RS256/384/512, PS256/384/512,
//! ES256/384; never HMAC or `none`), `iss` = the configured issuer, `aud` = the URL called
//! (`<audience>/<id>`) or the base `<audience>` (which discovery's URL is, and which a client
//! may send for every call: Ocean's choice is not public), `exp` no more than 5 minutes ahead,
//! `nbf` (if any) passed, no `crit` header, and a `jti` used once.
//!
//! The keys are the configured `public_key` and the client's JWK Set at `jwks_url` (its
//! signing keys: `use` absent or `sig`): fetched when first needed, kept an hour, fetched again
//! for a `kid` it does not hold, and never tried twice within 10 seconds, whether the try
//! succeeded or not (a rotated key is taken within seconds; random `kid`s or keys that are down
//! cannot make the relay hammer the client).
//! A `jku` header is not followed: only the configured set is trusted.
//!
//! Used `jti`s are kept in memory until their `exp`, per process: a replay to another replica
//! within those minutes is not caught.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::bearer;
use crate::config::CdsAuth;

/// How long a fetched JWK Set is used.
const KEYS_FRESH: Duration = Duration::from_secs(3600);
/// The least time between two fetches of the JWK Set for key ids it lacked: a rotated key is
/// taken within this, and tokens naming random key ids cannot make the relay hammer the client.
const REFETCH_AFTER: Duration = Duration::from_secs(10);
/// A JWK Set larger than this is refused.
const MAX_JWKS_BYTES: usize = 256 * 1024;
/// The longest a token may live from now: CDS Hooks 2.0 says `exp` is at most 5 minutes out.
const MAX_LIFETIME_SECS: u64 = 300;
/// Clock difference allowed between the client and the relay.
const LEEWAY_SECS: u64 = 60;
/// Used `jti`s kept at most: past this, the oldest are forgotten.
const MAX_SEEN: usize = 100_000;

/// The algorithms accepted: CDS Hooks 2.0 asks clients for ES384 or RS384; the other
/// asymmetric ones a client may use are accepted too.
const ALGORITHMS: [Algorithm; 8] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
];

/// Why a call was not authenticated. The reason is safe to log and to answer: it names no
/// token or header value.
#[derive(Debug, thiserror::Error)]
pub enum CdsAuthError {
    #[error("{0}")]
    Refused(String),
    /// The client's keys could not be read (the refusal is the relay's trouble, not the caller's).
    #[error("the CDS client's keys could not be read: {0}")]
    Keys(String),
}

/// A key the client signs with.
#[derive(Clone)]
struct ClientKey {
    kid: Option<String>,
    /// The algorithm the JWK names, if it names one.
    alg: Option<String>,
    key: DecodingKey,
}

/// What was read of the client's JWK Set, and when it was last tried.
#[derive(Default)]
struct KeySet {
    /// The keys of the last good reading, and when it was.
    keys: Option<(Vec<ClientKey>, Instant)>,
    /// The last try, good or not: tries are this far apart at least (see [`REFETCH_AFTER`]).
    tried: Option<Instant>,
    /// Why the last try failed, if it did.
    failed: Option<String>,
}

#[derive(Deserialize)]
struct Claims {
    /// A string: one issuer (an array is refused as malformed).
    #[serde(default)]
    #[allow(dead_code)]
    iss: Option<String>,
    /// Required by the validation; optional here so that its absence is reported as such.
    #[serde(default)]
    exp: Option<u64>,
    #[serde(default)]
    jti: Option<String>,
}

/// A JWT's header as JSON, if it has a readable one.
fn header_json(token: &str) -> Option<serde_json::Value> {
    use base64::Engine;
    let header = token.split('.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The `alg` a JWT's header names.
fn header_alg(token: &str) -> Option<String> {
    header_json(token)?.get("alg")?.as_str().map(str::to_owned)
}

/// Whether a JWT's header has `name`.
fn header_names(token: &str, name: &str) -> bool {
    header_json(token).is_some_and(|h| h.get(name).is_some())
}

/// Checks CDS Hooks calls against `[cds_hooks.auth]`.
pub struct CdsClientAuth {
    config: CdsAuth,
    configured_keys: Vec<ClientKey>,
    keys: std::sync::Mutex<KeySet>,
    /// One reading of the JWK Set at a time.
    reading: tokio::sync::Mutex<()>,
    http: reqwest::Client,
    seen: std::sync::Mutex<HashMap<String, u64>>,
}

impl CdsClientAuth {
    /// `answer_within`: the answer time; a reading of the JWK Set is given up before it ends,
    /// so that keys that cannot be read answer 503 rather than run out the time.
    pub fn new(config: &CdsAuth, answer_within: Duration) -> Self {
        let mut configured_keys = Vec::new();
        if let CdsAuth::Jwt { public_key, .. } = config
            && !public_key.is_empty()
        {
            let key = DecodingKey::from_rsa_pem(public_key.as_bytes())
                .or_else(|_| DecodingKey::from_ec_pem(public_key.as_bytes()));
            if let Ok(key) = key {
                configured_keys.push(ClientKey {
                    kid: None,
                    alg: None,
                    key,
                });
            }
        }
        Self {
            config: config.clone(),
            configured_keys,
            keys: std::sync::Mutex::new(KeySet::default()),
            reading: tokio::sync::Mutex::new(()),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout((answer_within * 3 / 4).min(Duration::from_secs(5)))
                .build()
                .unwrap_or_default(),
            seen: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The configured scheme's name.
    pub fn scheme(&self) -> &'static str {
        self.config.scheme()
    }

    /// Checks a call of `/cds-services` (`service`: `None`) or `/cds-services/{service}`.
    pub async fn check(
        &self,
        headers: &HeaderMap,
        service: Option<&str>,
    ) -> Result<(), CdsAuthError> {
        let refused = |reason: &str| CdsAuthError::Refused(reason.to_owned());
        match &self.config {
            CdsAuth::None => Ok(()),
            CdsAuth::Bearer { tokens } => {
                let token = bearer::presented(headers).map_err(refused)?;
                if bearer::matches_any(token, tokens) {
                    Ok(())
                } else {
                    Err(refused(
                        "the bearer token is not one of cds_hooks.auth.tokens",
                    ))
                }
            }
            CdsAuth::Jwt {
                issuer,
                audience,
                jwks_url,
                ..
            } => {
                let token = bearer::presented(headers).map_err(refused)?;
                let base = audience.trim_end_matches('/');
                let mut audiences = vec![base.to_owned()];
                if let Some(id) = service {
                    audiences.push(format!("{base}/{id}"));
                }
                self.check_jwt(token, issuer, &audiences, jwks_url).await
            }
        }
    }

    async fn check_jwt(
        &self,
        token: &str,
        issuer: &str,
        audiences: &[String],
        jwks_url: &str,
    ) -> Result<(), CdsAuthError> {
        let refused = |reason: &str| CdsAuthError::Refused(reason.to_owned());
        let not_allowed = "the JWT's alg is not an asymmetric algorithm CDS Hooks allows (RS384 or ES384 are asked for)";
        if header_names(token, "crit") {
            return Err(refused(
                "the JWT's header has crit: the relay understands no extension (RFC 7515 §4.1.11)",
            ));
        }
        // `none` and unknown algorithms are not in jsonwebtoken's list: name them first.
        if !header_alg(token).is_some_and(|alg| ALGORITHMS.iter().any(|a| format!("{a:?}") == alg))
        {
            return Err(if header_alg(token).is_some() {
                refused(not_allowed)
            } else {
                refused("the bearer token is not a JWT")
            });
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| refused("the bearer token is not a JWT"))?;
        if !ALGORITHMS.contains(&header.alg) {
            return Err(refused(not_allowed));
        }
        let mut validation = Validation::new(header.alg);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.set_issuer(&[issuer]);
        validation.set_audience(audiences);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let kid = header.kid.as_deref();
        let (mut keys, mut failure) = self.candidates(kid, header.alg, jwks_url, false).await;
        if keys.is_empty() && !jwks_url.is_empty() {
            (keys, failure) = self.candidates(kid, header.alg, jwks_url, true).await;
        }
        // A key the relay cannot read may be the one: the client's trouble is not a verdict.
        let unreadable = |failure: Option<String>, refusal: &str| match failure {
            Some(reason) => CdsAuthError::Keys(reason),
            None => refused(refusal),
        };
        if keys.is_empty() {
            return Err(unreadable(
                failure,
                "no key of the CDS client's has the JWT's kid and alg",
            ));
        }
        let mut last = None;
        for key in &keys {
            match jsonwebtoken::decode::<Claims>(token, key, &validation) {
                Ok(data) => return self.fresh(data.claims),
                Err(e) => last = Some(e),
            }
        }
        use jsonwebtoken::errors::ErrorKind;
        let reason = match last.as_ref().map(|e| e.kind()) {
            Some(ErrorKind::ExpiredSignature) => "the JWT has expired",
            Some(ErrorKind::InvalidIssuer) => "the JWT's iss is not cds_hooks.auth.issuer",
            Some(ErrorKind::InvalidAudience) => {
                "the JWT's aud is not the URL of the CDS service called"
            }
            Some(ErrorKind::MissingRequiredClaim(_)) => "the JWT lacks exp, iss or aud",
            Some(ErrorKind::ImmatureSignature) => "the JWT is not valid yet (nbf)",
            Some(ErrorKind::Json(_)) => {
                "the JWT's claims are malformed (exp, nbf and iat are numbers; iss and jti strings)"
            }
            _ => {
                return Err(unreadable(
                    failure,
                    "the JWT's signature does not verify with the CDS client's keys",
                ));
            }
        };
        Err(refused(reason))
    }

    /// Refuses a token living longer than CDS Hooks allows, or whose `jti` is missing or was
    /// used before; remembers its `jti`.
    fn fresh(&self, claims: Claims) -> Result<(), CdsAuthError> {
        let now = jsonwebtoken::get_current_timestamp();
        let Some(exp) = claims.exp else {
            return Err(CdsAuthError::Refused("the JWT lacks exp".into()));
        };
        if exp > now + MAX_LIFETIME_SECS + LEEWAY_SECS {
            return Err(CdsAuthError::Refused(
                "the JWT's exp is more than 5 minutes ahead (CDS Hooks 2.0)".into(),
            ));
        }
        let Some(jti) = claims.jti.filter(|j| !j.is_empty()) else {
            return Err(CdsAuthError::Refused("the JWT has no jti".into()));
        };
        if jti.len() > 512 {
            return Err(CdsAuthError::Refused(
                "the JWT's jti is longer than 512 characters".into(),
            ));
        }
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.retain(|_, exp| *exp + LEEWAY_SECS >= now);
        if seen.len() >= MAX_SEEN
            && let Some(oldest) = seen
                .iter()
                .min_by_key(|(_, exp)| **exp)
                .map(|(j, _)| j.clone())
        {
            seen.remove(&oldest);
        }
        if seen.insert(jti, exp).is_some() {
            return Err(CdsAuthError::Refused(
                "the JWT's jti was used before".into(),
            ));
        }
        Ok(())
    }

    /// Whether the JWK Set should be read now: it was never read, is an hour old, or `refetch`
    /// asks for it; and no try (good or failed) was made within [`REFETCH_AFTER`].
    fn wants_reading(&self, refetch: bool) -> bool {
        let set = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = set
            .keys
            .as_ref()
            .is_some_and(|(_, at)| at.elapsed() <= KEYS_FRESH);
        (!fresh || refetch) && set.tried.is_none_or(|at| at.elapsed() > REFETCH_AFTER)
    }

    /// The keys a token with `kid` and `alg` may be signed with: the configured public key and
    /// the JWK Set's (read again first when [`Self::wants_reading`]), and why the last reading of
    /// the set failed, if it did. Only a caller that needs a reading waits for one: the others
    /// use the keys at hand.
    async fn candidates(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
        jwks_url: &str,
        refetch: bool,
    ) -> (Vec<DecodingKey>, Option<String>) {
        let mut all: Vec<ClientKey> = self.configured_keys.clone();
        let mut failure = None;
        if !jwks_url.is_empty() {
            if self.wants_reading(refetch) {
                let _one_reading = self.reading.lock().await;
                // Another caller may have read it while this one waited.
                if self.wants_reading(refetch) {
                    self.keys.lock().unwrap_or_else(|e| e.into_inner()).tried =
                        Some(Instant::now());
                    let read = self.fetch(jwks_url).await;
                    let mut set = self.keys.lock().unwrap_or_else(|e| e.into_inner());
                    match read {
                        Ok(keys) => {
                            set.keys = Some((keys, Instant::now()));
                            set.failed = None;
                        }
                        Err(reason) => {
                            tracing::warn!(reason = %reason, "cannot read the CDS client's JWK Set; keys read before (if any) are used, and it is tried again in 10 s at the earliest");
                            set.failed = Some(reason);
                        }
                    }
                }
            }
            let set = self.keys.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((keys, _)) = &set.keys {
                all.extend(keys.iter().cloned());
            }
            failure = set.failed.clone();
        }
        let alg_name = format!("{alg:?}");
        let keys = all
            .into_iter()
            .filter(|k| kid.is_none() || k.kid.is_none() || k.kid.as_deref() == kid)
            .filter(|k| k.alg.as_deref().is_none_or(|a| a == alg_name))
            .filter(|k| k.key.family() == alg.family())
            .map(|k| k.key)
            .collect();
        (keys, failure)
    }

    /// Reads the JWK Set; keys it cannot use (other types, private or malformed ones) are left
    /// out, not fatal.
    async fn fetch(&self, url: &str) -> Result<Vec<ClientKey>, String> {
        let keys_error = |what: &str| what.to_owned();
        let mut response = self
            .http
            .get(url)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| {
                keys_error(if e.is_timeout() {
                    "timed out"
                } else {
                    "unreachable"
                })
            })?;
        if !response.status().is_success() {
            return Err(format!("answered {}", response.status().as_u16()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| {
            keys_error(if e.is_timeout() {
                "timed out"
            } else {
                "the answer broke off"
            })
        })? {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_JWKS_BYTES {
                return Err(keys_error("the JWK Set is larger than 256 KiB"));
            }
        }
        #[derive(Deserialize)]
        struct Set {
            keys: Vec<serde_json::Value>,
        }
        let set: Set = serde_json::from_slice(&body).map_err(|_| keys_error("not a JWK Set"))?;
        Ok(set
            .keys
            .into_iter()
            .filter_map(|value| {
                // A private key published by mistake is not used, nor one for encryption.
                if value.get("d").is_some()
                    || value.get("use").is_some_and(|u| u.as_str() != Some("sig"))
                {
                    return None;
                }
                let jwk: Jwk = serde_json::from_value(value).ok()?;
                Some(ClientKey {
                    kid: jwk.common.key_id.clone(),
                    alg: jwk.common.key_algorithm.map(|a| format!("{a:?}")),
                    key: DecodingKey::from_jwk(&jwk).ok()?,
                })
            })
            .collect())
    }
}
