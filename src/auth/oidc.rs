//! The console's OpenID Connect relying party (OpenID Connect Core 1.0, authorization code
//! flow), on the `openidconnect` crate: discovery from the issuer's
//! `/.well-known/openid-configuration`, an authorization request with `state`, `nonce` and a
//! PKCE S256 challenge (RFC 7636), the code exchanged with the client secret, and the ID
//! token's signature (the provider's JWKS), issuer, audience, expiry and nonce checked.
//!
//! The provider's metadata and keys are kept for [`METADATA_TTL`]; an ID token signed with a
//! key they do not hold has them fetched again once before it is refused (key rotation,
//! OpenID Connect Core §10.1.1). A failure to read them is remembered for [`FAILURE_MEMORY`],
//! so sign-ins during an outage are answered at once rather than each waiting out a timeout.
//! Requests go through our own `reqwest` client, which follows no redirects (the crate's advice
//! against SSRF) and reads at most [`MAX_RESPONSE_BYTES`].
//!
//! Between leaving for the provider and coming back, a sign-in lives only in the browser: its
//! `state`, `nonce` and PKCE verifier in a cookie holding a JWT (RFC 7519, HS256) signed with
//! a key every replica shares ([`SignInSeal`]), valid for [`SIGN_IN_LIMIT`]. Nothing is kept on
//! the server, so starting sign-ins costs an attacker's requests and nothing of the store's;
//! the provider's codes are single-use, so an answer cannot be used twice.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use openidconnect::core::{
    CoreAuthDisplay, CoreAuthPrompt, CoreClientAuthMethod, CoreErrorResponseType, CoreGenderClaim,
    CoreJsonWebKey, CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm, CoreResponseType,
    CoreRevocableToken, CoreRevocationErrorResponse, CoreTokenIntrospectionResponse, CoreTokenType,
};
use openidconnect::{
    AdditionalClaims, AsyncHttpClient, AuthType, AuthenticationFlow, AuthorizationCode,
    ClaimsVerificationError, Client, ClientId, ClientSecret, CsrfToken, EmptyExtraTokenFields,
    EndpointMaybeSet, EndpointNotSet, EndpointSet, HttpRequest, HttpResponse, IdTokenFields,
    IssuerUrl, JsonWebKeySet, LogoutRequest, Nonce, PkceCodeChallenge, PkceCodeVerifier,
    PostLogoutRedirectUrl, ProviderMetadataWithLogout, RedirectUrl, RequestTokenError, Scope,
    SignatureVerificationError, StandardErrorResponse, StandardTokenResponse, TokenResponse as _,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;
use tokio::sync::Mutex;

use crate::config::OidcConfig;

/// The provider's metadata as discovery gives it, with its `end_session_endpoint` (OpenID
/// Connect RP-Initiated Logout 1.0) when it has one.
type Metadata = ProviderMetadataWithLogout;

/// How long the provider's metadata and keys are used before they are fetched again.
pub const METADATA_TTL: Duration = Duration::from_secs(3600);

/// The longest answer read from the provider (discovery, keys, token), in bytes.
pub const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// The bound on one request to the provider.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a failure to read the provider's metadata is answered from memory.
pub const FAILURE_MEMORY: Duration = Duration::from_secs(10);

/// How long a sign-in may spend at the identity provider (the person typing a password, MFA).
pub const SIGN_IN_LIMIT: Duration = Duration::from_secs(600);

/// The longest `sub` taken (OpenID Connect Core §2: at most 255 ASCII characters).
const MAX_SUBJECT: usize = 255;

/// The longest name shown and audited, in characters; a longer one is cut.
const MAX_NAME: usize = 200;

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
    /// The token request did not reach the provider, or had no answer in time.
    #[error("the identity provider's token endpoint could not be reached: {0}")]
    Unreachable(String),
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

/// A sign-in leaving for the provider: where to send the browser, and what it carries until it
/// comes back (see [`SignInSeal`]).
pub struct Started {
    pub url: String,
    pub pending: Pending,
}

/// What a sign-in's answer must match: the `state` sent, the `nonce` the ID token must carry,
/// the PKCE code verifier (RFC 7636) the token request proves the code with.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pending {
    pub state: String,
    pub nonce: String,
    pub pkce_verifier: String,
}

/// The claims of the sign-in cookie's JWT.
#[derive(Serialize, Deserialize)]
struct PendingClaims {
    aud: String,
    iat: i64,
    exp: i64,
    #[serde(flatten)]
    pending: Pending,
}

/// The `aud` of the sign-in cookie's JWT: it is good for nothing else.
const PENDING_AUDIENCE: &str = "referral-relay console sign-in";

/// Signs and opens the sign-in cookie: a JWT signed with HS256 under a key derived from the
/// relay's own signing key (HMAC-SHA256 of a fixed label), so a token the relay issues for
/// something else never passes for one.
pub struct SignInSeal {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl SignInSeal {
    /// The seal under `base_key` (the relay's signing key, shared by replicas).
    pub fn new(base_key: &[u8]) -> Self {
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, base_key);
        let derived = aws_lc_rs::hmac::sign(&key, PENDING_AUDIENCE.as_bytes());
        Self {
            encoding: EncodingKey::from_secret(derived.as_ref()),
            decoding: DecodingKey::from_secret(derived.as_ref()),
        }
    }

    /// The cookie value carrying `pending` until [`SIGN_IN_LIMIT`] from now.
    ///
    /// # Errors
    /// The JWT cannot be made (serialisation; not expected).
    pub fn seal(&self, pending: &Pending) -> Result<String, OidcError> {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let limit = i64::try_from(SIGN_IN_LIMIT.as_secs()).unwrap_or(600);
        let claims = PendingClaims {
            aud: PENDING_AUDIENCE.into(),
            iat: now,
            exp: now + limit,
            pending: pending.clone(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| OidcError::Config(format!("cannot sign the sign-in cookie: {e}")))
    }

    /// The sign-in `cookie` carries, when its signature holds, it has not expired and its
    /// `state` is `returned` (compared in constant time); else `None`.
    pub fn open(&self, cookie: &str, returned: &str) -> Option<Pending> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&[PENDING_AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "aud"]);
        validation.leeway = 0;
        let claims = jsonwebtoken::decode::<PendingClaims>(cookie, &self.decoding, &validation)
            .ok()?
            .claims;
        crate::secret::same_secret(claims.pending.state.as_bytes(), returned.as_bytes())
            .then_some(claims.pending)
    }
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

/// The provider's metadata as last read, or why it could not be.
struct Cached {
    issuer: String,
    metadata: Result<Metadata, String>,
    fetched: Instant,
}

/// The relying party: the HTTP client, the provider's metadata while it is fresh, and the
/// sign-in cookie's seal.
pub struct OidcRelyingParty {
    http: OidcHttp,
    cached: Mutex<Option<Cached>>,
    pub seal: SignInSeal,
}

impl OidcRelyingParty {
    /// `base_key`: the relay's signing key (see [`SignInSeal::new`]).
    pub fn new(base_key: &[u8]) -> Self {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(REQUEST_TIMEOUT)
            .build()
            .unwrap_or_default();
        Self {
            http: OidcHttp(client),
            cached: Mutex::new(None),
            seal: SignInSeal::new(base_key),
        }
    }

    /// The provider's metadata (with its keys): the kept copy while fresh (a failure while it
    /// is [`FAILURE_MEMORY`] old), else read now. One request reads it at a time; the others
    /// wait for that reading and take its result.
    async fn metadata(&self, config: &OidcConfig) -> Result<Metadata, OidcError> {
        let discovery = |reason: String| OidcError::Discovery {
            issuer: config.issuer.clone(),
            reason,
        };
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref()
            && c.issuer == config.issuer
        {
            let fresh = match &c.metadata {
                Ok(_) => METADATA_TTL,
                Err(_) => FAILURE_MEMORY,
            };
            if c.fetched.elapsed() < fresh {
                return c.metadata.clone().map_err(discovery);
            }
        }
        // Discovery checks that the document names exactly this issuer, and fetches its JWKS.
        let metadata = match IssuerUrl::new(config.issuer.clone()) {
            Ok(issuer) => Metadata::discover_async(issuer, &self.http)
                .await
                .map_err(|e| error_chain(&e)),
            Err(e) => Err(e.to_string()),
        };
        *cached = Some(Cached {
            issuer: config.issuer.clone(),
            metadata: metadata.clone(),
            fetched: Instant::now(),
        });
        metadata.map_err(discovery)
    }

    /// Re-reads only the keys of the kept metadata (rotation), or everything when none is kept.
    async fn refreshed_keys(&self, config: &OidcConfig) -> Result<Metadata, OidcError> {
        let metadata = self.metadata(config).await?;
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
            c.metadata = Ok(metadata.clone());
        }
        Ok(metadata)
    }

    fn client(config: &OidcConfig, metadata: Metadata) -> Result<OidcClient, OidcError> {
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
        let client = Self::client(config, self.metadata(config).await?)?;
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
            pending: Pending {
                state: state.secret().clone(),
                nonce: nonce.secret().clone(),
                pkce_verifier: verifier.secret().clone(),
            },
        })
    }

    /// Finishes a sign-in that came back with `code`: exchanges it (with the PKCE verifier of
    /// `pending`) and checks the ID token against `pending`'s nonce.
    ///
    /// # Errors
    /// [`OidcError::Exchange`] (the provider refused the code), [`OidcError::Unreachable`],
    /// [`OidcError::IdToken`] (a check failed, or the subject is unusable),
    /// [`OidcError::Discovery`].
    pub async fn finish(
        &self,
        config: &OidcConfig,
        code: &str,
        pending: &Pending,
    ) -> Result<Person, OidcError> {
        let client = Self::client(config, self.metadata(config).await?)?;
        let response = client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .map_err(|e| OidcError::Exchange(e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(pending.pkce_verifier.clone()))
            .request_async(&self.http)
            .await
            .map_err(|e| match e {
                RequestTokenError::Request(e) => OidcError::Unreachable(error_chain(&e)),
                other => OidcError::Exchange(error_chain(&other)),
            })?;
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
        if subject.is_empty()
            || subject.len() > MAX_SUBJECT
            || !subject.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(OidcError::IdToken(format!(
                "its subject (sub) is not 1 to {MAX_SUBJECT} printable ASCII characters"
            )));
        }
        let name: String = text("name")
            .or_else(|| text("preferred_username"))
            .or_else(|| text("email"))
            .unwrap_or_else(|| subject.clone())
            .chars()
            .filter(|c| !c.is_control() && !invisible(*c))
            .take(MAX_NAME)
            .collect();
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

impl OidcRelyingParty {
    /// Where to send the browser after the relay's own sign-out so that the provider's session
    /// ends too (OpenID Connect RP-Initiated Logout 1.0): its `end_session_endpoint` with our
    /// `client_id` and, as `post_logout_redirect_uri`, the console's sign-in page on the
    /// callback's origin (register it at the provider). `None` when the provider has no such
    /// endpoint or cannot be read now (the relay's sign-out stands on its own).
    pub async fn logout_url(&self, config: &OidcConfig) -> Option<String> {
        let metadata = self.metadata(config).await.ok()?;
        let endpoint = metadata
            .additional_metadata()
            .end_session_endpoint
            .clone()?;
        let mut back = reqwest::Url::parse(&config.redirect_uri).ok()?;
        back.set_path("/console/login");
        back.set_query(None);
        let back = PostLogoutRedirectUrl::new(back.to_string()).ok()?;
        Some(
            LogoutRequest::from(endpoint)
                .set_client_id(ClientId::new(config.client_id.clone()))
                .set_post_logout_redirect_uri(back)
                .http_get_url()
                .to_string(),
        )
    }
}

/// Characters that change how the text around them looks without showing themselves
/// (zero-width characters, bidirectional controls, the byte-order mark): a name holding them
/// could pass for another's on the console's pages.
fn invisible(c: char) -> bool {
    matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
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
