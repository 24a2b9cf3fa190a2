//! The web console at `/console`: server-rendered pages for clinic staff (sign in, referrals,
//! one referral with its versions). Works without JavaScript; the stylesheet is embedded in the
//! binary and every page is sent with a strict Content-Security-Policy, `no-store` and
//! `no-referrer`. Patient details never appear in a URL: pages are addressed by referral ref.
//!
//! Users and their roles come from `[console.users]`; sessions and their form tokens from
//! [`Sessions`](crate::auth::session::Sessions). The pages read through the same store calls and
//! the same service scoping as `/api/v1`.

mod actions;
mod admin;
mod backup;
mod pages;
mod session;
mod templates;

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
        .route("/console", get(pages::home))
        .route("/console/", get(pages::home))
        .route(
            "/console/login",
            get(session::login_form).post(session::login),
        )
        .route("/console/logout", post(session::logout))
        .route("/console/referrals", get(pages::referrals))
        .route("/console/referrals/{referral}", get(pages::referral))
        .route(
            "/console/referrals/{referral}/versions/{version}/raw",
            get(pages::raw_version),
        )
        .route(
            "/console/referrals/{referral}/status",
            post(actions::set_status),
        )
        .route(
            "/console/referrals/{referral}/appointments",
            post(actions::book),
        )
        .route(
            "/console/referrals/{referral}/appointments/cancel",
            post(actions::cancel),
        )
        .route(
            "/console/referrals/{referral}/messages",
            post(actions::send_message),
        )
        .route("/console/backup", get(backup::form).post(backup::count))
        .route("/console/backup/export.csv", post(backup::export))
        .route("/console/outbox", get(admin::outbox))
        .route(
            "/console/outbox/{id}/{action}",
            get(admin::confirm).post(admin::act),
        )
        .route("/console/status", get(admin::status))
        .route(
            "/console/status/sites/{name}/check",
            post(admin::check_site),
        )
        .route("/console/audit", get(admin::audit))
        .route("/console/audit/verify", post(admin::verify))
        .route("/console/assets/console.css", get(stylesheet))
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

/// A posted form (`application/x-www-form-urlencoded`), like axum's `Form`, but a body that is
/// not the form the page sends is answered with a console page (400), not plain text.
pub struct ConsoleForm<T>(pub T);

impl<T, S> axum::extract::FromRequest<S> for ConsoleForm<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = PageError;

    async fn from_request(request: Request, state: &S) -> Result<Self, PageError> {
        axum::extract::Form::<T>::from_request(request, state)
            .await
            .map(|axum::extract::Form(form)| Self(form))
            .map_err(|rejection| {
                PageError(AppError::BadRequest(format!(
                    "this form could not be read: {}",
                    rejection.body_text()
                )))
            })
    }
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
            tracing::error!(error = %self.0, "console page failed");
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
