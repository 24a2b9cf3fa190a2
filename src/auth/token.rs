//! The bearer tokens the relay issues from its own token endpoint: HS256 JWTs whose audience
//! is the integration they were issued for.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::config::OAuth2Config;
use crate::domain::IntegrationName;

/// File in the data dir that keeps a generated signing key across restarts.
pub const KEY_FILE: &str = "oauth2-signing.key";
/// Issuer claim of every token.
const ISSUER: &str = "referral-relay";
/// Clock skew tolerated on `exp`.
const LEEWAY_SECS: u64 = 30;

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    iss: String,
    /// The integration the token is for.
    aud: String,
    /// The client it was issued to.
    sub: String,
    iat: i64,
    exp: i64,
    jti: String,
}

/// Why a presented token was refused; `reason()` is a fixed phrase safe to log and return.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token has expired")]
    Expired,
    #[error("the token was issued for another integration")]
    WrongAudience,
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the token's algorithm is not accepted")]
    WrongAlgorithm,
    #[error("the token is malformed")]
    Malformed,
}

/// The relay's signing key: `oauth2.signing_key` when configured, else `shared` (the key
/// replicas share through their store), else the one generated earlier in `data_dir`, or one
/// generated there now. Also the base of the console's sign-in cookie key.
///
/// # Errors
/// The key file cannot be read or written.
pub fn signing_key(
    config: &OAuth2Config,
    shared: Option<Vec<u8>>,
    data_dir: &Path,
) -> anyhow::Result<Vec<u8>> {
    if !config.signing_key.is_empty() {
        Ok(config.signing_key.expose().as_bytes().to_vec())
    } else if let Some(shared) = shared {
        Ok(shared)
    } else {
        load_or_generate_key(data_dir)
    }
}

/// Issues and verifies tokens. Built once at start.
pub struct TokenIssuer {
    encoding: EncodingKey,
    /// The current key first, then earlier ones still accepted during a rotation.
    decoding: Vec<DecodingKey>,
}

impl TokenIssuer {
    /// Uses the configured key; else `shared`, the key replicas share through their store
    /// ([`crate::store::ReplicaStore::shared_signing_key`]); else the one generated earlier in
    /// `data_dir`, or generates one there.
    pub fn load(
        config: &OAuth2Config,
        shared: Option<Vec<u8>>,
        data_dir: &Path,
    ) -> anyhow::Result<Self> {
        let key = signing_key(config, shared, data_dir)?;
        let mut decoding = vec![DecodingKey::from_secret(&key)];
        decoding.extend(
            config
                .previous_signing_keys
                .iter()
                .map(|k| DecodingKey::from_secret(k.expose().as_bytes())),
        );
        Ok(Self {
            encoding: EncodingKey::from_secret(&key),
            decoding,
        })
    }

    /// A token for `client_id` to post to `integration`, valid for `ttl_secs`.
    pub fn issue(
        &self,
        integration: &IntegrationName,
        client_id: &str,
        ttl_secs: u64,
    ) -> anyhow::Result<String> {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let claims = Claims {
            iss: ISSUER.into(),
            aud: integration.to_string(),
            sub: client_id.into(),
            iat: now,
            exp: now.saturating_add(i64::try_from(ttl_secs).unwrap_or(i64::MAX)),
            jti: uuid::Uuid::new_v4().to_string(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .context("cannot sign a token")
    }

    /// Checks signature (HS256 only), issuer, audience and expiry.
    pub fn verify(&self, token: &str, integration: &IntegrationName) -> Result<(), TokenError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&[integration.as_str()]);
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "aud", "iss"]);
        validation.leeway = LEEWAY_SECS;
        let mut refusal = TokenError::BadSignature;
        for key in &self.decoding {
            match jsonwebtoken::decode::<Claims>(token, key, &validation) {
                Ok(_) => return Ok(()),
                Err(e) => {
                    refusal = match e.kind() {
                        ErrorKind::InvalidSignature => TokenError::BadSignature,
                        ErrorKind::ExpiredSignature => TokenError::Expired,
                        ErrorKind::InvalidAudience => TokenError::WrongAudience,
                        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                            TokenError::WrongAlgorithm
                        }
                        _ => TokenError::Malformed,
                    };
                    // Only a signature mismatch is worth trying the next (older) key for.
                    if refusal != TokenError::BadSignature {
                        return Err(refusal);
                    }
                }
            }
        }
        Err(refusal)
    }
}

/// A new signing key: 32 random bytes (256 bits, as RFC 7518 §3.2 asks of an HS256 key).
pub fn generate_key() -> anyhow::Result<Vec<u8>> {
    let mut key = vec![0; 32];
    aws_lc_rs::rand::fill(&mut key).map_err(|_| anyhow::anyhow!("no randomness for a key"))?;
    Ok(key)
}

/// Reads `<data_dir>/oauth2-signing.key`, creating it (32 random bytes, base64, mode 0600)
/// the first time.
fn load_or_generate_key(data_dir: &Path) -> anyhow::Result<Vec<u8>> {
    let path = data_dir.join(KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            return STANDARD
                .decode(text.trim())
                .with_context(|| format!("{} is not valid base64", path.display()));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create data dir {}", data_dir.display()))?;
    let key = generate_key()?;
    let mut file = crate::files::create_private(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(STANDARD.encode(&key).as_bytes())?;
    file.sync_all()?;
    tracing::info!(file = %path.display(), "generated the OAuth2 token signing key");
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn issuer(key: &str) -> TokenIssuer {
        let config = OAuth2Config {
            signing_key: Secret::new(key),
            previous_signing_keys: Vec::new(),
        };
        TokenIssuer::load(&config, None, Path::new("/nonexistent")).unwrap()
    }

    #[test]
    fn tokens_verify_only_for_their_integration_and_key() {
        let a = IntegrationName::parse("a").unwrap();
        let b = IntegrationName::parse("b").unwrap();
        let one = issuer("0123456789abcdef0123456789abcdef");
        let token = one.issue(&a, "client", 60).unwrap();
        assert_eq!(one.verify(&token, &a), Ok(()));
        assert_eq!(one.verify(&token, &b), Err(TokenError::WrongAudience));
        let other = issuer("fedcba9876543210fedcba9876543210");
        assert_eq!(other.verify(&token, &a), Err(TokenError::BadSignature));
        assert_eq!(one.verify("not.a.token", &a), Err(TokenError::Malformed));
    }

    #[test]
    fn a_generated_key_is_kept_in_the_data_dir() {
        let dir = tempfile::TempDir::new().unwrap();
        let config = OAuth2Config {
            signing_key: Secret::default(),
            previous_signing_keys: Vec::new(),
        };
        let a = IntegrationName::parse("a").unwrap();
        let token = TokenIssuer::load(&config, None, dir.path())
            .unwrap()
            .issue(&a, "c", 60)
            .unwrap();
        let again = TokenIssuer::load(&config, None, dir.path()).unwrap();
        assert_eq!(again.verify(&token, &a), Ok(()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
