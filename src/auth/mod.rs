//! Inbound authentication: one module per scheme, and [`Inbound`], the check an integration
//! runs on every webhook request.
//!
//! Failures carry a fixed, low-cardinality reason that is safe to log and to return; secrets,
//! tokens and header values never appear in them. Secrets are compared in constant time.

pub mod api;
pub mod basic;
pub mod bearer;
pub mod budget;
pub mod cds_client;
pub mod hmac;
pub mod limiter;
pub mod oidc;
pub mod refusals;
pub mod scope;
pub mod session;
pub mod source;
pub mod token;

use std::sync::Arc;

use axum::http::HeaderMap;

use crate::config::AuthConfig;
use crate::domain::IntegrationName;
use crate::secret::Secret;
use basic::BasicCredentials;
use hmac::{HmacVerifier, SignedHeaders};
use token::TokenIssuer;

/// The one `Authorization` header of a request (RFC 9110 §11.6.2 allows a single value): two
/// are refused, since a proxy in front might judge the other one.
pub fn authorization(headers: &HeaderMap) -> Result<&axum::http::HeaderValue, &'static str> {
    let mut values = headers.get_all(axum::http::header::AUTHORIZATION).iter();
    let first = values.next().ok_or("the Authorization header is missing")?;
    if values.next().is_some() {
        return Err("the Authorization header is sent more than once");
    }
    Ok(first)
}

pub use refusals::Refusal;

/// How one integration checks its callers.
pub enum Inbound {
    None,
    Basic(BasicCredentials),
    OAuth2(Arc<TokenIssuer>),
    Bearer(Vec<Secret>),
    Hmac(HmacVerifier),
}

impl Inbound {
    /// Builds the check from config; `issuer` is required for `oauth2`.
    pub fn from_config(
        auth: &AuthConfig,
        issuer: Option<&Arc<TokenIssuer>>,
    ) -> anyhow::Result<Self> {
        Ok(match auth {
            AuthConfig::None => Self::None,
            AuthConfig::Basic {
                username,
                password,
                previous_passwords,
            } => Self::Basic(BasicCredentials::new(
                username,
                password,
                previous_passwords,
            )),
            AuthConfig::Oauth2 { .. } => Self::OAuth2(Arc::clone(
                issuer.ok_or_else(|| anyhow::anyhow!("oauth2 needs the token issuer"))?,
            )),
            AuthConfig::Bearer { tokens } => Self::Bearer(tokens.clone()),
            AuthConfig::Hmac {
                secrets,
                tolerance_secs,
            } => {
                let keys: Vec<&[u8]> = secrets.iter().map(|s| s.key()).collect();
                Self::Hmac(HmacVerifier::new(&keys, *tolerance_secs))
            }
        })
    }

    pub fn scheme(&self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Basic(_) => "basic",
            Self::OAuth2(_) => "oauth2",
            Self::Bearer(_) => "bearer",
            Self::Hmac(_) => "hmac",
        }
    }

    /// True when the check needs the raw body (a signature over it): the sender is known only
    /// once the body is read.
    pub fn signs_body(&self) -> bool {
        matches!(self, Self::Hmac(_))
    }

    /// Checks what a request for `integration` carries in its headers, at `now` (Unix
    /// seconds), before its body is read: the credentials of every scheme but `hmac`, and for
    /// `hmac` the signature headers (present, fresh, well formed), which are returned so that
    /// [`Inbound::check_signature`] can verify the body against them.
    pub fn check_headers(
        &self,
        integration: &IntegrationName,
        headers: &HeaderMap,
        now: i64,
    ) -> Result<Option<SignedHeaders>, Refusal> {
        match self {
            Self::None => Ok(None),
            Self::Basic(credentials) => {
                credentials
                    .check(headers)
                    .map(|()| None)
                    .map_err(|reason| Refusal {
                        challenge: basic::CHALLENGE,
                        reason: reason.to_owned(),
                    })
            }
            Self::Bearer(tokens) => {
                let presented = bearer::presented(headers).map_err(bearer::refusal)?;
                if bearer::matches_any(presented, tokens) {
                    Ok(None)
                } else {
                    Err(bearer::refusal("the bearer token is not recognised"))
                }
            }
            Self::OAuth2(issuer) => {
                let presented = bearer::presented(headers).map_err(bearer::refusal)?;
                issuer
                    .verify(presented, integration)
                    .map(|()| None)
                    .map_err(|e| bearer::refusal(&e.to_string()))
            }
            Self::Hmac(verifier) => verifier
                .check_headers(headers, now)
                .map(Some)
                .map_err(hmac_refusal),
        }
    }

    /// Verifies the signature over `body` (`hmac` only; other schemes have nothing to check).
    pub fn check_signature(&self, signed: &SignedHeaders, body: &[u8]) -> Result<(), Refusal> {
        match self {
            Self::Hmac(verifier) => verifier.verify_body(signed, body).map_err(hmac_refusal),
            _ => Ok(()),
        }
    }
}

fn hmac_refusal(e: hmac::SignatureError) -> Refusal {
    Refusal {
        challenge: hmac::CHALLENGE,
        reason: e.to_string(),
    }
}
