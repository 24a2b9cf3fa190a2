//! The web console at `/console`: server-rendered pages for clinic staff (sign in, referrals,
//! one referral with its versions). Works without JavaScript; the stylesheet is embedded in the
//! binary and every page is sent with a strict Content-Security-Policy, `no-store` and
//! `no-referrer`. Patient details never appear in a URL: pages are addressed by referral ref.
//!
//! Users and their roles come from `[console.users]` or the identity provider's claims
//! (`[console.oidc]`); sessions and their form tokens from
//! [`Sessions`](crate::auth::session::Sessions). The pages read through the same store calls and
//! the same service scoping as `/api/v1`.

mod actions;
mod admin;
mod backup;
mod destinations;
mod oidc;
mod pages;
mod screening;
mod session;
mod sessions;
mod templates;
mod views;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::error::AppError;
use crate::state::AppState;

pub use session::ConsoleUser;

/// The console's routes, each response carrying the console's security headers.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/console", get(pages::home).fallback(method_not_allowed))
        .route("/console/", get(pages::home).fallback(method_not_allowed))
        .route(
            "/console/login",
            get(session::login_form)
                .post(session::login)
                .fallback(method_not_allowed),
        )
        .route(
            "/console/oidc/start",
            get(oidc::start).fallback(method_not_allowed),
        )
        .route(
            "/console/oidc/callback",
            get(oidc::callback).fallback(method_not_allowed),
        )
        .route(
            "/console/sessions",
            get(sessions::list).fallback(method_not_allowed),
        )
        .route(
            "/console/sessions/end",
            post(sessions::end).fallback(method_not_allowed),
        )
        .route(
            "/console/logout",
            post(session::logout).fallback(method_not_allowed),
        )
        .route(
            "/console/referrals",
            get(pages::referrals).fallback(method_not_allowed),
        )
        .route(
            "/console/referrals/{referral}",
            get(pages::referral).fallback(method_not_allowed),
        )
        .route(
            "/console/referrals/{referral}/versions/{version}/raw",
            get(pages::raw_version).fallback(method_not_allowed),
        )
        .route(
            "/console/referrals/{referral}/documents/{version}/{index}",
            get(pages::document).fallback(method_not_allowed),
        )
        .route(
            "/console/referrals/{referral}/status",
            post(actions::set_status).fallback(method_not_allowed),
        )
        .route(
            "/console/referrals/{referral}/appointments",
            post(actions::book).fallback(method_not_allowed),
        )
        .route(
            "/console/referrals/{referral}/appointments/cancel",
            post(actions::cancel).fallback(method_not_allowed),
        )
        .route(
            "/console/referrals/{referral}/messages",
            post(actions::send_message).fallback(method_not_allowed),
        )
        .route(
            "/console/referrals/{referral}/booking-instructions",
            post(actions::booking_instructions).fallback(method_not_allowed),
        )
        .route(
            "/console/referrals/{referral}/forward",
            post(actions::forward).fallback(method_not_allowed),
        )
        .route(
            "/console/referrals/{referral}/correction",
            post(actions::correct).fallback(method_not_allowed),
        )
        .route(
            "/console/watch-list",
            get(pages::watch_list_page).fallback(method_not_allowed),
        )
        .route(
            "/console/patient-forms",
            get(pages::patient_forms).fallback(method_not_allowed),
        )
        .route(
            "/console/patient-forms/{id}",
            get(pages::patient_form).fallback(method_not_allowed),
        )
        .route(
            "/console/backup",
            get(backup::form)
                .post(backup::count)
                .fallback(method_not_allowed),
        )
        .route(
            "/console/backup/export.csv",
            post(backup::export).fallback(method_not_allowed),
        )
        .route(
            "/console/screening",
            get(screening::page).fallback(method_not_allowed),
        )
        .route(
            "/console/outbox",
            get(admin::outbox).fallback(method_not_allowed),
        )
        .route(
            "/console/outbox/{id}/{action}",
            get(admin::confirm)
                .post(admin::act)
                .fallback(method_not_allowed),
        )
        .route(
            "/console/destinations",
            get(destinations::list).fallback(method_not_allowed),
        )
        .route(
            "/console/destinations/{name}/{action}",
            post(destinations::pause_or_resume).fallback(method_not_allowed),
        )
        .route(
            "/console/destinations/{name}/messages/{id}/{action}",
            post(destinations::act).fallback(method_not_allowed),
        )
        .route(
            "/console/status",
            get(admin::status).fallback(method_not_allowed),
        )
        .route(
            "/console/status/sites/{name}/check",
            post(admin::check_site).fallback(method_not_allowed),
        )
        .route(
            "/console/audit",
            get(admin::audit).fallback(method_not_allowed),
        )
        .route(
            "/console/audit/verify",
            post(admin::verify).fallback(method_not_allowed),
        )
        .route(
            "/console/assets/console.css",
            get(stylesheet).fallback(method_not_allowed),
        )
        .route("/console/{*rest}", axum::routing::any(not_found))
        .layer(axum::middleware::from_fn(security_headers))
}

/// Content-Security-Policy of every console response: nothing but this origin's stylesheet and
/// forms posting back here; no script, no frames, no third party.
const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
                   frame-ancestors 'none'; base-uri 'none'";

async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CACHE_CONTROL, "no-store"),
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (
            HeaderName::from_static("cross-origin-opener-policy"),
            "same-origin",
        ),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

async fn stylesheet() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("assets/console.css"),
    )
        .into_response()
}

/// A posted form (`application/x-www-form-urlencoded`): read within `server.body_timeout_secs`
/// and at most 1 MiB like the API's bodies (408 and 413 otherwise), and a body that is not the
/// form the page sends is answered with a console page (400).
pub struct ConsoleForm<T>(pub T);

impl<T: serde::de::DeserializeOwned> axum::extract::FromRequest<AppState> for ConsoleForm<T> {
    type Rejection = PageError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, PageError> {
        let is_form = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(';').next().is_some_and(|m| {
                    m.trim()
                        .eq_ignore_ascii_case("application/x-www-form-urlencoded")
                })
            });
        if !is_form {
            return Err(PageError(AppError::BadRequest(
                "this form was not sent as a form; reload the page and try again".into(),
            )));
        }
        let body = crate::routes::request::read_body(request, state.body_timeout).await?;
        serde_urlencoded::from_bytes(&body)
            .map(Self)
            .map_err(|_| PageError(AppError::BadRequest(unreadable("form"))))
    }
}

/// A query string, like axum's `Query`, but one that is not what the page sends is answered
/// with a console page (400).
pub struct ConsoleQuery<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> axum::extract::FromRequestParts<S>
    for ConsoleQuery<T>
{
    type Rejection = PageError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, PageError> {
        serde_urlencoded::from_str(parts.uri.query().unwrap_or(""))
            .map(Self)
            .map_err(|_| PageError(AppError::BadRequest(unreadable("address's query"))))
    }
}

/// Path segments, like axum's `Path`, but an address that does not fit is answered with a
/// console page (400).
pub struct ConsolePath<T>(pub T);

impl<T: serde::de::DeserializeOwned + Send, S: Send + Sync> axum::extract::FromRequestParts<S>
    for ConsolePath<T>
{
    type Rejection = PageError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, PageError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(p)| Self(p))
            .map_err(|_| PageError(AppError::BadRequest(unreadable("address"))))
    }
}

fn unreadable(what: &str) -> String {
    format!(
        "this {what} could not be read (a field missing, repeated or not valid text); go back to the page and try again"
    )
}

/// Any other address under `/console`: a console page.
async fn not_found() -> PageError {
    PageError(AppError::NotFound(
        "nothing is at this address in the console".into(),
    ))
}

/// A method a console address does not take (a form's address opened directly, say).
async fn method_not_allowed() -> Response {
    let mut response = PageError(AppError::BadRequest(
        "this address takes a form from the console's pages; go back to the page and use its button".into(),
    ))
    .into_response();
    *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    response
}

/// An error shown as a console page (the API's errors, in HTML), with the same status code.
pub struct PageError(pub AppError);

impl<E: Into<AppError>> From<E> for PageError {
    fn from(e: E) -> Self {
        Self(e.into())
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let status = self.0.status_code();
        let heading = match status {
            StatusCode::FORBIDDEN => "Not allowed",
            StatusCode::NOT_FOUND => "Not found",
            StatusCode::BAD_REQUEST => "Not understood",
            StatusCode::SERVICE_UNAVAILABLE => "Unavailable",
            _ if status.is_server_error() => "Something went wrong",
            _ => "Refused",
        };
        // The message of a server error stays in the log (it may name internals).
        let message = if status.is_server_error() {
            // Logged as the API logs it: with its cause chain.
            self.0.log();
            "The relay could not show this page. Try again; if it keeps failing, tell your administrator."
                .to_owned()
        } else {
            self.0.to_string()
        };
        let mut response = templates::render(
            "error.html",
            minijinja::context! { heading => heading, message => message },
        );
        *response.status_mut() = status;
        response
    }
}
