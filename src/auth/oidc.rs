//! The console's OpenID Connect relying party (OpenID Connect Core 1.0, authorization code
//! flow), on the `openidconnect` crate: discovery from the issuer's
//! `/.well-known/openid-configuration`, an authorization request with `state`, `nonce` and a
//! PKCE S256 challenge (RFC 7636), the code exchanged with the client secret, and the ID
//! token's signature (the provider's JWKS), issuer, audience, expiry and nonce checked.
//!
//! The provider's metadata and keys are kept for [`METADATA_TTL`]; an ID token signed with a
//! key they do not hold has them fetched again once before it is refused (key rotation,
//! OpenID Connect Core §10.1.1). Requests go through our own `reqwest` client, which follows no
//! redirects (the crate's advice against SSRF) and reads at most [`MAX_RESPONSE_BYTES`].

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use openidconnect::core::{
    CoreAuthDisplay, CoreAuthPrompt, CoreClientAuthMethod, CoreErrorResponseType, CoreGenderClaim,
    CoreJsonWebKey, CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm,
    CoreProviderMetadata, CoreResponseType, CoreRevocableToken, CoreRevocationErrorResponse,
    CoreTokenIntrospectionResponse, CoreTokenType,
};
use openidconnect::{
    AdditionalClaims, AsyncHttpClient, AuthType, AuthenticationFlow, AuthorizationCode,
    ClaimsVerificationError, Client, ClientId, ClientSecret, CsrfToken, EmptyExtraTokenFields,
    EndpointMaybeSet, EndpointNotSet, EndpointSet, HttpRequest, HttpResponse, IdTokenFields,
    IssuerUrl, JsonWebKeySet, Nonce, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope,
    SignatureVerificationError, StandardErrorResponse, StandardTokenResponse, TokenResponse as _,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::Mutex;

use crate::config::OidcConfig;
use crate::store::PendingSignIn;

/// How long the provider's metadata and keys are used before they are fetched again.
pub const METADATA_TTL: Duration = Duration::from_secs(3600);

/// The longest answer read from the provider (discovery, keys, token), in bytes.
pub const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// The bound on one request to the provider.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Every claim of the ID token beyond the standard ones (`groups`, `roles`, ...), as sent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OtherClaims {
    #[serde(flatten)]
    claims: Map<String, Value>,
}

impl AdditionalClaims for OtherClaims {}

type IdFields = IdTokenFields<
    OtherClaims,
    EmptyExtraTokenFields,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;

type OidcClient = Client<
    OtherClaims,
    CoreAuthDisplay,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJsonWebKey,
    CoreAuthPrompt,
    StandardErrorResponse<CoreErrorResponseType>,
    StandardTokenResponse<IdFields, CoreTokenType>,
    CoreTokenIntrospectionResponse,
    CoreRevocableToken,
    CoreRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// Why a sign-in through the provider did not succeed. The messages name no token, code or
/// claim value.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    /// The provider's discovery document or keys could not be read.
    #[error(
        "the identity provider {issuer} could not be reached or its discovery document read: {reason}"
    )]
    Discovery { issuer: String, reason: String },
    /// The provider did not exchange the code (or its answer was not a token response).
    #[error("the identity provider did not exchange the sign-in code: {0}")]
    Exchange(String),
    /// The ID token failed a check.
    #[error("the identity provider's ID token was refused: {0}")]
    IdToken(String),
    /// The client secret could not be read.
    #[error("{0}")]
    Config(String),
}

/// A sign-in leaving for the provider: where to send the browser, and what to keep until it
/// comes back.
pub struct Started {
    pub url: String,
    pub state: String,
    pub nonce: String,
    pub pkce_verifier: String,
}

/// The person the provider vouched for, from the checked ID token.
#[derive(Debug, Clone)]
pub struct Person {
    /// `sub`: who they are at the provider.
    pub subject: String,
    /// `name`, else `preferred_username`, else `email`, else the subject.
    pub name: String,
    /// The values of the configured role claim (a string or an array of strings).
    pub role_values: Vec<String>,
}

struct Cached {
    issuer: String,
    metadata: CoreProviderMetadata,
    fetched: Instant,
}

/// The relying party: the HTTP client and the provider's metadata while it is fresh.
pub struct OidcRelyingParty {
    http: OidcHttp,
    cached: Mutex<Option<Cached>>,
}

impl Default for OidcRelyingParty {
    fn default() -> Self {
        Self::new()
    }
}

impl OidcRelyingParty {
    pub fn new() -> Self {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(REQUEST_TIMEOUT)
            .build()
            .unwrap_or_default();
        Self {
            http: OidcHttp(client),
            cached: Mutex::new(None),
        }
    }

    /// The provider's metadata (with its keys): the kept copy while fresh, unless `refresh`.
    async fn metadata(
        &self,
        config: &OidcConfig,
        refresh: bool,
    ) -> Result<CoreProviderMetadata, OidcError> {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref()
            && !refresh
            && c.issuer == config.issuer
            && c.fetched.elapsed() < METADATA_TTL
        {
            return Ok(c.metadata.clone());
        }
        let discovery = |reason: String| OidcError::Discovery {
            issuer: config.issuer.clone(),
            reason,
        };
        let issuer = IssuerUrl::new(config.issuer.clone()).map_err(|e| discovery(e.to_string()))?;
        // Discovery checks that the document names this issuer, and fetches its JWKS.
        let metadata = CoreProviderMetadata::discover_async(issuer, &self.http)
            .await
            .map_err(|e| discovery(error_chain(&e)))?;
        *cached = Some(Cached {
            issuer: config.issuer.clone(),
            metadata: metadata.clone(),
            fetched: Instant::now(),
        });
        Ok(metadata)
    }

    /// Re-reads only the keys of the kept metadata (rotation), or everything when none is kept.
    async fn refreshed_keys(&self, config: &OidcConfig) -> Result<CoreProviderMetadata, OidcError> {
        let metadata = self.metadata(config, false).await?;
        let keys = JsonWebKeySet::fetch_async(metadata.jwks_uri(), &self.http)
            .await
            .map_err(|e| OidcError::Discovery {
                issuer: config.issuer.clone(),
                reason: error_chain(&e),
            })?;
        let metadata = metadata.set_jwks(keys);
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_mut()
            && c.issuer == config.issuer
        {
            c.metadata = metadata.clone();
        }
        Ok(metadata)
    }

    fn client(
        config: &OidcConfig,
        metadata: CoreProviderMetadata,
    ) -> Result<OidcClient, OidcError> {
        let secret = config
            .client_secret()
            .map_err(|e| OidcError::Config(e.to_string()))?;
        // client_secret_basic unless the provider lists only client_secret_post.
        let post_only = metadata
            .token_endpoint_auth_methods_supported()
            .is_some_and(|methods| {
                methods.contains(&CoreClientAuthMethod::ClientSecretPost)
                    && !methods.contains(&CoreClientAuthMethod::ClientSecretBasic)
            });
        let redirect = RedirectUrl::new(config.redirect_uri.clone())
            .map_err(|e| OidcError::Config(format!("console.oidc.redirect_uri: {e}")))?;
        Ok(OidcClient::from_provider_metadata(
            metadata,
            ClientId::new(config.client_id.clone()),
            Some(ClientSecret::new(secret.expose().to_owned())),
        )
        .set_redirect_uri(redirect)
        .set_auth_type(if post_only {
            AuthType::RequestBody
        } else {
            AuthType::BasicAuth
        }))
    }

    /// Starts a sign-in: the authorization request URL, with a fresh `state`, `nonce` and PKCE
    /// challenge.
    ///
    /// # Errors
    /// [`OidcError::Discovery`] when the provider cannot be read; [`OidcError::Config`].
    pub async fn start(&self, config: &OidcConfig) -> Result<Started, OidcError> {
        let client = Self::client(config, self.metadata(config, false).await?)?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request = client.authorize_url(
            AuthenticationFlow::<CoreResponseType>::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        );
        for scope in config.scopes.iter().filter(|s| *s != "openid") {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        let (url, state, nonce) = request.set_pkce_challenge(challenge).url();
        Ok(Started {
            url: url.to_string(),
            state: state.secret().clone(),
            nonce: nonce.secret().clone(),
            pkce_verifier: verifier.secret().clone(),
        })
    }

    /// Finishes a sign-in that came back with `code`: exchanges it (with the PKCE verifier of
    /// `pending`) and checks the ID token against `pending`'s nonce.
    ///
    /// # Errors
    /// [`OidcError::Exchange`], [`OidcError::IdToken`], [`OidcError::Discovery`].
    pub async fn finish(
        &self,
        config: &OidcConfig,
        code: &str,
        pending: &PendingSignIn,
    ) -> Result<Person, OidcError> {
        let client = Self::client(config, self.metadata(config, false).await?)?;
        let response = client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .map_err(|e| OidcError::Exchange(e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(pending.pkce_verifier.clone()))
            .request_async(&self.http)
            .await
            .map_err(|e| OidcError::Exchange(error_chain(&e)))?;
        let token = response
            .id_token()
            .ok_or_else(|| OidcError::IdToken("the token response holds no ID token".into()))?;
        let nonce = Nonce::new(pending.nonce.clone());
        let claims = match token.claims(&client.id_token_verifier(), &nonce) {
            Ok(claims) => claims.clone(),
            Err(ClaimsVerificationError::SignatureVerification(
                SignatureVerificationError::NoMatchingKey,
            )) => {
                // Signed with a key we do not hold yet: the provider may have rotated.
                let client = Self::client(config, self.refreshed_keys(config).await?)?;
                token
                    .claims(&client.id_token_verifier(), &nonce)
                    .map_err(|e| OidcError::IdToken(error_chain(&e)))?
                    .clone()
            }
            Err(e) => return Err(OidcError::IdToken(error_chain(&e))),
        };
        let all = serde_json::to_value(&claims)
            .map_err(|e| OidcError::IdToken(format!("its claims do not serialise: {e}")))?;
        let text = |name: &str| {
            all.get(name)
                .and_then(Value::as_str)
                .filter(|s| !s.trim().is_empty())
                .map(str::to_owned)
        };
        let subject = claims.subject().as_str().to_owned();
        let name = text("name")
            .or_else(|| text("preferred_username"))
            .or_else(|| text("email"))
            .unwrap_or_else(|| subject.clone());
        let role_values = match all.get(&config.role_claim) {
            Some(Value::String(one)) => vec![one.clone()],
            Some(Value::Array(many)) => many
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            _ => Vec::new(),
        };
        Ok(Person {
            subject,
            name,
            role_values,
        })
    }
}

/// `error` and its sources, `: `-separated.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// The provider's HTTP requests, through our `reqwest` (see the module documentation).
struct OidcHttp(reqwest::Client);

/// Why a request to the provider failed.
#[derive(Debug, thiserror::Error)]
pub enum OidcHttpError {
    #[error("{0}")]
    Request(#[from] reqwest::Error),
    #[error("an answer longer than {MAX_RESPONSE_BYTES} bytes")]
    TooLong,
    #[error("an answer that is not HTTP: {0}")]
    Http(#[from] openidconnect::http::Error),
}

impl<'c> AsyncHttpClient<'c> for OidcHttp {
    type Error = OidcHttpError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, OidcHttpError>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let mut response = self
                .0
                .request(parts.method, parts.uri.to_string())
                .headers(parts.headers)
                .body(body)
                .send()
                .await?;
            let mut answer = openidconnect::http::Response::builder().status(response.status());
            for (name, value) in response.headers() {
                answer = answer.header(name, value);
            }
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await? {
                if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                    return Err(OidcHttpError::TooLong);
                }
                body.extend_from_slice(&chunk);
            }
            Ok(answer.body(body)?)
        })
    }
}
