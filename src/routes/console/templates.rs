//! The console's page templates (minijinja), embedded in the binary and parsed once. Names
//! ending in `.html` are auto-escaped: every value put into a page is HTML-escaped unless a
//! template says otherwise (none does).

use std::sync::OnceLock;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use minijinja::Environment;

const TEMPLATES: [(&str, &str); 19] = [
    ("status.html", include_str!("templates/status.html")),
    ("outbox.html", include_str!("templates/outbox.html")),
    ("confirm.html", include_str!("templates/confirm.html")),
    ("audit.html", include_str!("templates/audit.html")),
    ("backup.html", include_str!("templates/backup.html")),
    ("base.html", include_str!("templates/base.html")),
    ("login.html", include_str!("templates/login.html")),
    ("signed_in.html", include_str!("templates/signed_in.html")),
    ("signed_out.html", include_str!("templates/signed_out.html")),
    ("sessions.html", include_str!("templates/sessions.html")),
    ("screening.html", include_str!("templates/screening.html")),
    ("setup.html", include_str!("templates/setup.html")),
    ("error.html", include_str!("templates/error.html")),
    ("referrals.html", include_str!("templates/referrals.html")),
    ("referral.html", include_str!("templates/referral.html")),
    ("watch_list.html", include_str!("templates/watch_list.html")),
    (
        "patient_forms.html",
        include_str!("templates/patient_forms.html"),
    ),
    (
        "patient_form.html",
        include_str!("templates/patient_form.html"),
    ),
    (
        "destinations.html",
        include_str!("templates/destinations.html"),
    ),
];

fn environment() -> &'static Environment<'static> {
    static ENVIRONMENT: OnceLock<Environment<'static>> = OnceLock::new();
    ENVIRONMENT.get_or_init(|| {
        let mut env = Environment::new();
        // A referral ref in a path: every character but the unreserved ones percent-encoded
        // (`urlencode` keeps `/`, which would split the ref into path segments).
        env.add_filter("segment", |value: String| {
            crate::domain::path_segment(&value)
        });
        for (name, source) in TEMPLATES {
            // The templates are part of the binary: one that does not parse is a build defect,
            // caught by the console tests, which render every page.
            env.add_template(name, source)
                .unwrap_or_else(|e| panic!("console template {name}: {e}"));
        }
        env
    })
}

/// The page `name` rendered with `context`, as a `200 text/html` response (500 with a plain
/// message, the cause logged, when rendering fails).
pub fn render(name: &str, context: minijinja::Value) -> Response {
    match environment()
        .get_template(name)
        .and_then(|t| t.render(context))
    {
        Ok(html) => {
            let mut response = (StatusCode::OK, html).into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            response
        }
        Err(e) => {
            tracing::error!(template = name, error = %e, "rendering a console page failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the console could not render this page",
            )
                .into_response()
        }
    }
}
