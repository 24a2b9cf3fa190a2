//! Signing in and out of the console, and the signed-in user every other page takes.
//!
//! The session id travels in the `relay_console` cookie (`HttpOnly`, `SameSite=Strict`, path
//! `/console`, `Secure` when the request came over TLS through a trusted proxy or
//! `console.secure_cookies` is set). Every form carries the session's token in a hidden `csrf`
//! field, checked before anything is done. The sign-in form, which has no session yet, carries a
//! token that must match a short-lived cookie set with the form (double submit). Failed
//! sign-ins are limited per address and user as the token endpoint's are, and sign-ins, failed
//! sign-ins and sign-outs are in the audit chain with the user as actor (`console:<user>`).

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRef, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use cookie::{Cookie, SameSite};
use serde::Deserialize;

use super::templates::render;
use super::{ConsoleForm, PageError};
use crate::auth::scope::Scope;
use crate::auth::session::{COOKIE, NewSession, OIDC_ACCOUNT, Session, Sessions, random_token};
use crate::auth::source::{ClientAddr, TrustedProxies};
use crate::config::{ConsoleRole, ConsoleUserConfig, verify_password};
use crate::domain::ServiceId;
use crate::error::AppError;
use crate::state::AppState;

/// The cookie carrying the sign-in form's token until the form is posted.
const LOGIN_COOKIE: &str = "relay_console_login";
/// The limiter's account, and the audit trail's actor, for every name that is no user.
const UNKNOWN_USER: &str = "console:(unknown user)";
/// The longest user name read from the sign-in form, in bytes (configured names are at most 64).
const MAX_USER_NAME: usize = 64;
/// Password hashes checked at once (each takes 19 MiB and tens of milliseconds of a core).
static HASHING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);
/// The longest a sign-in waits for a turn to have its password checked.
const HASHING_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// A signed-in console user, with their session. Pages that take one send everyone else to the
/// sign-in page.
#[derive(Debug, Clone)]
pub struct ConsoleUser {
    pub name: String,
    pub role: ConsoleRole,
    pub service_ids: Vec<ServiceId>,
    pub session: Session,
}

impl ConsoleUser {
    /// What this user may see; refusals name them.
    pub fn scope(&self) -> Scope {
        Scope::new(self.name.clone(), self.service_ids.clone())
    }

    /// The actor of this user's audit entries: `console:<name>` for a local user, and
    /// `console:<name> (oidc:<subject>)` for one signed in through the identity provider (the
    /// subject is what identifies them there; the name alone may be shared or change).
    pub fn actor(&self) -> String {
        if self.session.account.starts_with(OIDC_ACCOUNT) {
            format!("console:{} ({})", self.name, self.session.account)
        } else {
            format!("console:{}", self.name)
        }
    }

    /// What every page's header shows.
    pub fn header(&self) -> minijinja::Value {
        minijinja::context! {
            user => self.name,
            role => self.role.as_str(),
            csrf => self.session.csrf,
        }
    }

    /// Whether `presented` is this session's form token; a form without it is refused (403).
    pub fn check_csrf(&self, presented: Option<&str>) -> Result<(), PageError> {
        match presented {
            Some(token) if Sessions::csrf_matches(&self.session, token) => Ok(()),
            _ => Err(PageError(AppError::Forbidden(
                "this form was not sent from this session's page (its form token is missing or wrong); reload the page and try again".into(),
            ))),
        }
    }
}

/// Why a page that needs a signed-in user is not shown: no live session (to the sign-in page),
/// or the store could not say (a 503 page).
pub enum SignInFirst {
    NoSession,
    Store(PageError),
}

impl IntoResponse for SignInFirst {
    fn into_response(self) -> Response {
        match self {
            SignInFirst::NoSession => Redirect::to("/console/login").into_response(),
            SignInFirst::Store(e) => e.into_response(),
        }
    }
}

impl FromRequestParts<AppState> for ConsoleUser {
    type Rejection = SignInFirst;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, SignInFirst> {
        let id = cookie_value(&parts.headers, COOKIE).ok_or(SignInFirst::NoSession)?;
        let session = state
            .console_sessions
            .find(&id)
            .await
            .map_err(|e| SignInFirst::Store(PageError(e.into())))?
            .ok_or(SignInFirst::NoSession)?;
        let config = state.config();
        let granted = if session.account.starts_with(OIDC_ACCOUNT) {
            // Decided from the identity provider's claims at sign-in. Over once sign-in through
            // that provider is not configured any more (none, or another issuer).
            let same_provider = config
                .console
                .oidc
                .as_ref()
                .is_some_and(|o| session.issuer.as_deref() == Some(o.issuer.as_str()));
            same_provider.then(|| {
                let role = match session.role.as_str() {
                    "admin" => ConsoleRole::Admin,
                    _ => ConsoleRole::Staff,
                };
                let ids = session
                    .service_ids
                    .iter()
                    .filter_map(|id| ServiceId::parse(id).ok())
                    .collect();
                (role, ids)
            })
        } else {
            // A local user removed from the config or renamed has no account any more, and
            // none at all once local users are switched off; their role is the config's as it
            // is now.
            config
                .console
                .users
                .get(&session.account)
                .filter(|_| config.console.local_users)
                .map(|user| (user.role, user.service_ids.clone()))
        };
        let Some((role, service_ids)) = granted else {
            // Ended for good, so it does not come back if the config does.
            state
                .console_sessions
                .end(&id)
                .await
                .map_err(|e| SignInFirst::Store(PageError(e.into())))?;
            return Err(SignInFirst::NoSession);
        };
        Ok(ConsoleUser {
            name: session.name.clone(),
            role,
            service_ids,
            session,
        })
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub(super) fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == name)
        .map(|c| c.value().to_owned())
}

/// Whether cookies must be `Secure`: configured so, the listener speaks HTTPS, or the request
/// reached a trusted proxy over HTTPS (`X-Forwarded-Proto: https` from a peer in `server.trusted_proxies`).
pub(super) fn secure_cookies(state: &AppState, peer: Option<IpAddr>, headers: &HeaderMap) -> bool {
    let config = state.config();
    if config.console.secure_cookies || config.server.tls.enabled() {
        return true;
    }
    let TrustedProxies(trusted) = TrustedProxies::from_ref(state);
    let from_proxy = peer.is_some_and(|p| trusted.iter().any(|net| net.contains(&p)));
    from_proxy
        && headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .is_some_and(|proto| proto.trim().eq_ignore_ascii_case("https"))
}

/// A `Set-Cookie` value for the console's path.
pub(super) fn set_cookie(
    name: &'static str,
    value: String,
    secure: bool,
    max_age_secs: i64,
) -> HeaderValue {
    let cookie = Cookie::build((name, value))
        .path("/console")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(secure)
        .max_age(cookie::time::Duration::seconds(max_age_secs))
        .build();
    // Names are constants and values base64url: always a valid header value.
    HeaderValue::from_str(&cookie.to_string()).unwrap_or(HeaderValue::from_static(""))
}

/// The sign-in page (or, with no way to sign in configured, how to add one).
pub async fn login_form(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    login_page(&state, Some(peer.ip()), &headers, None, "")
}

/// Whether local users may sign in with a password: some are configured and they are not
/// switched off.
fn passwords_allowed(state: &AppState) -> bool {
    let console = &state.config().console;
    console.local_users && !console.users.is_empty()
}

pub(super) fn login_page(
    state: &AppState,
    peer: Option<IpAddr>,
    headers: &HeaderMap,
    problem: Option<&str>,
    name: &str,
) -> Response {
    let config = state.config();
    let oidc_label = config.console.oidc.as_ref().map(|o| o.label.clone());
    let passwords = passwords_allowed(state);
    if !passwords && oidc_label.is_none() {
        return render("setup.html", minijinja::context! {});
    }
    let token = random_token();
    let mut response = render(
        "login.html",
        minijinja::context! {
            login_csrf => token,
            problem => problem,
            name => name,
            passwords => passwords,
            oidc_label => oidc_label,
        },
    );
    if passwords {
        response.headers_mut().append(
            header::SET_COOKIE,
            set_cookie(
                LOGIN_COOKIE,
                token,
                secure_cookies(state, peer, headers),
                3600,
            ),
        );
    }
    response
}

#[derive(Deserialize)]
pub struct LoginForm {
    user: String,
    password: String,
    csrf: Option<String>,
}

/// Checks a sign-in; on success starts a session and goes to the referrals.
pub async fn login(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ClientAddr(source): ClientAddr,
    headers: HeaderMap,
    ConsoleForm(form): ConsoleForm<LoginForm>,
) -> Result<Response, PageError> {
    if !passwords_allowed(&state) {
        let mut response = login_page(
            &state,
            Some(peer.ip()),
            &headers,
            Some("Signing in with a password is switched off here."),
            "",
        );
        *response.status_mut() = StatusCode::FORBIDDEN;
        return Ok(response);
    }
    // The sign-in page again, with `status` and `message` (and the user name kept in the form).
    let again = |status: StatusCode, message: &str, user: &str| {
        let mut response = login_page(&state, Some(peer.ip()), &headers, Some(message), user);
        *response.status_mut() = status;
        response
    };
    if form.user.len() > MAX_USER_NAME {
        return Ok(again(
            StatusCode::BAD_REQUEST,
            &format!("A user name has at most {MAX_USER_NAME} characters; that one is longer."),
            "",
        ));
    }
    from_the_sign_in_page(&headers, form.csrf.as_deref())?;
    let user: Option<ConsoleUserConfig> = state.config().console.users.get(&form.user).cloned();
    // Unknown names share one account in the limiter (as unknown client ids do at the token
    // endpoint): what a caller types is never kept, however long or however many.
    let account = match user {
        Some(_) => format!("console:{}", form.user),
        None => UNKNOWN_USER.to_owned(),
    };
    // Holds a place in the limiter's counts until its outcome is counted, so parallel guesses
    // cannot pass the check together.
    let attempt = match state.login_limiter.check(source, &account).await {
        Ok(attempt) => attempt,
        Err(wait) => {
            state.refused(
                None,
                account.clone(),
                "console",
                "console sign-in: too many failed attempts",
                source,
            );
            return Ok(again(
                StatusCode::TOO_MANY_REQUESTS,
                &format!(
                    "Too many failed sign-ins from this address; try again in {wait} seconds."
                ),
                "",
            ));
        }
    };
    let hash = user.as_ref().map(|u| u.password_hash.expose().to_owned());
    let Some(matches) = password_matches(hash, form.password).await? else {
        let mut response = again(
            StatusCode::SERVICE_UNAVAILABLE,
            "Too many sign-ins are being checked right now; try again in a few seconds.",
            "",
        );
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(HASHING_WAIT.as_secs()),
        );
        return Ok(response);
    };
    if !(matches && user.is_some()) {
        attempt.failed().await;
        // Counted and written to the audit trail once per report interval (AUTH_FAILURE), like
        // every other refused login: a flood cannot grow the trail. An unknown name may be a
        // password typed in the wrong box: it is not recorded.
        let reason = match user {
            Some(_) => "console sign-in: wrong password",
            None => "console sign-in: unknown user",
        };
        state.refused(None, account.clone(), "console", reason, source);
        let known = user.is_some();
        return Ok(again(
            StatusCode::UNAUTHORIZED,
            "That user name and password do not match.",
            if known { form.user.as_str() } else { "" },
        ));
    }
    attempt.succeeded().await;
    let user = user.expect("a matching password belongs to a configured user");
    let who = NewSession {
        account: form.user.clone(),
        name: form.user.clone(),
        role: user.role.as_str(),
        service_ids: user
            .service_ids
            .iter()
            .map(|s| s.as_str().to_owned())
            .collect(),
        issuer: None,
    };
    let details = serde_json::json!({ "source": source.to_string() });
    signed_in(&state, peer, &headers, who, &account, details, false).await
}

/// A sign-in form must carry the token of the sign-in page that set its cookie (a form posted
/// from elsewhere cannot).
fn from_the_sign_in_page(headers: &HeaderMap, csrf: Option<&str>) -> Result<(), PageError> {
    let same = match (cookie_value(headers, LOGIN_COOKIE), csrf) {
        (Some(cookie), Some(field)) => {
            crate::secret::same_secret(cookie.as_bytes(), field.as_bytes())
        }
        _ => false,
    };
    if same {
        Ok(())
    } else {
        Err(PageError(AppError::Forbidden(
            "this sign-in form was not sent from the sign-in page (its form token is missing or wrong); open the sign-in page again".into(),
        )))
    }
}

/// After a successful sign-in of `who`: audited as `actor` with `details`, a session
/// started, its cookie set (and the sign-in form's cleared), and on to the referrals.
pub(super) async fn signed_in(
    state: &AppState,
    peer: SocketAddr,
    headers: &HeaderMap,
    who: NewSession,
    actor: &str,
    details: serde_json::Value,
    from_elsewhere: bool,
) -> Result<Response, PageError> {
    state.store.audit("CONSOLE_LOGIN", actor, details).await?;
    let id = state.console_sessions.start(who).await?;
    let secure = secure_cookies(state, Some(peer.ip()), headers);
    let max_age = i64::try_from(state.config().console.session_max_secs).unwrap_or(i64::MAX);
    // A sign-in through the identity provider arrives from another site, and the browser would
    // not send the new `SameSite=Strict` cookie along a redirect that began there: it gets a
    // page of our own that moves on to the referrals.
    let mut response = if from_elsewhere {
        render("signed_in.html", minijinja::context! {})
    } else {
        Redirect::to("/console/referrals").into_response()
    };
    let headers = response.headers_mut();
    headers.append(header::SET_COOKIE, set_cookie(COOKIE, id, secure, max_age));
    headers.append(
        header::SET_COOKIE,
        set_cookie(LOGIN_COOKIE, String::new(), secure, 0),
    );
    Ok(response)
}

/// Whether `password` matches `hash` (an unknown user's is checked against a fixed hash, so
/// both answers take as long); `None` when too many sign-ins are being checked to wait for a
/// turn. Hashing takes tens of milliseconds of a core and 19 MiB: off the async workers, and
/// only a few at once, and a flood of sign-ins must not hold the rightful user (or the
/// connections the webhook shares) for minutes, so past a short wait the answer is "busy".
async fn password_matches(
    hash: Option<String>,
    password: String,
) -> Result<Option<bool>, AppError> {
    let Ok(hashing) = tokio::time::timeout(HASHING_WAIT, HASHING.acquire()).await else {
        return Ok(None);
    };
    let hashing = hashing.expect("the hashing semaphore is never closed");
    let matches = tokio::task::spawn_blocking(move || match hash {
        Some(hash) => verify_password(&hash, &password),
        None => verify_password(unknown_user_hash(), &password),
    })
    .await
    .map_err(|e| AppError::Internal(e.into()))?;
    drop(hashing);
    Ok(Some(matches))
}

/// An argon2id hash of a random password nobody knows, checked for unknown user names (made
/// on the first such sign-in, on the blocking pool), so both answers cost a hash.
fn unknown_user_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| {
        crate::config::hash_password(&random_token())
            .expect("the operating system provides randomness for a salt")
    })
}

#[derive(Deserialize)]
pub struct CsrfForm {
    csrf: Option<String>,
}

/// Ends the session and goes back to the sign-in page.
pub async fn logout(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    user: ConsoleUser,
    headers: HeaderMap,
    ConsoleForm(form): ConsoleForm<CsrfForm>,
) -> Result<Response, PageError> {
    user.check_csrf(form.csrf.as_deref())?;
    if let Some(id) = cookie_value(&headers, COOKIE) {
        state.console_sessions.end(&id).await?;
    }
    state
        .store
        .audit("CONSOLE_LOGOUT", &user.actor(), serde_json::json!({}))
        .await?;
    // A person signed in through the identity provider is sent on to end their session there
    // too: otherwise the next person at a shared workstation would be signed in as them
    // without a password.
    let config = state.config();
    let provider_logout = match config.console.oidc.as_ref() {
        Some(oidc) if user.session.account.starts_with(OIDC_ACCOUNT) => {
            state.oidc.logout_url(oidc).await
        }
        _ => None,
    };
    // A page that moves on, not a redirect: the console's Content-Security-Policy lets a form's
    // answer redirect only to the console itself (`form-action 'self'`).
    let mut response = match (
        provider_logout,
        user.session.account.starts_with(OIDC_ACCOUNT),
    ) {
        (Some(url), _) => render(
            "signed_out.html",
            minijinja::context! { provider_logout => url },
        ),
        // The provider's session could not be ended from here: say so, rather than let the next
        // person at this computer find it open.
        (None, true) => render("signed_out.html", minijinja::context! {}),
        (None, false) => Redirect::to("/console/login").into_response(),
    };
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(
            COOKIE,
            String::new(),
            secure_cookies(&state, Some(peer.ip()), &headers),
            0,
        ),
    );
    Ok(response)
}
