//! The point-of-service API, `/api/v1`: referrals, their versions, the ordered event feed,
//! updates to Ocean, the CSV backup, the audit log, the alerts, a backup of the whole store, and the
//! watch-list of referrals that need attention, and the eForms patients completed (Patient
//! Engagement).
//!
//! Clients authenticate with their key as a bearer token; a client limited to some External
//! Service IDs sees nothing else. Every error, unknown paths and methods included, is an RFC 9457
//! problem document. Each route is registered together with its OpenAPI operation, so the
//! document at `/api/v1/openapi.json` always lists exactly the routes served.

mod alerts;
mod audit;
mod backup;
mod destinations;
mod doc;
pub(crate) mod documents;
mod events;
pub(crate) mod export;
pub(crate) mod extract;
mod patient_forms;
mod referrals;
mod updates;
mod watch_list;

use std::sync::Arc;

use axum::http::Uri;
use axum::{Extension, Json, Router};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{AppError, Problem};
use crate::state::AppState;

/// Where the API is served.
const BASE: &str = "/api/v1";

/// The API's routes, nested under `/api/v1`, with its own fallbacks.
pub fn router() -> Router<AppState> {
    let (api, openapi) = build();
    let api = api
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(Extension(Arc::new(openapi)));
    Router::new().nest(BASE, api)
}

/// The routes (relative to the base) and the finished document.
fn build() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let (api, openapi) = OpenApiRouter::new()
        .routes(routes!(referrals::list_referrals))
        .routes(routes!(referrals::get_referral))
        .routes(routes!(referrals::get_version))
        .routes(routes!(referrals::get_version_changes))
        .routes(routes!(documents::list_documents))
        .routes(routes!(documents::get_document))
        .routes(routes!(events::events))
        .routes(routes!(updates::set_status))
        .routes(routes!(updates::book))
        .routes(routes!(updates::cancel))
        .routes(routes!(updates::send_message))
        .routes(routes!(updates::booking_instructions))
        .routes(routes!(updates::forward))
        .routes(routes!(updates::correct))
        .routes(routes!(updates::list_updates))
        .routes(routes!(updates::get_update))
        .routes(routes!(updates::replay))
        .routes(routes!(updates::discard))
        .routes(routes!(destinations::list_destinations))
        .routes(routes!(destinations::list_messages))
        .routes(routes!(destinations::replay_message))
        .routes(routes!(destinations::discard_message))
        .routes(routes!(destinations::pause))
        .routes(routes!(destinations::resume))
        .routes(routes!(destinations::backfill))
        .routes(routes!(export::export_csv))
        .routes(routes!(alerts::alerts))
        .routes(routes!(audit::audit))
        .routes(routes!(backup::backup))
        .routes(routes!(watch_list::get_watch_list))
        .routes(routes!(patient_forms::list_patient_forms))
        .routes(routes!(patient_forms::get_patient_form))
        .routes(routes!(openapi))
        .split_for_parts();
    let mut openapi = doc::ApiDoc::openapi().nest(BASE, openapi);
    doc::finish(&mut openapi);
    (api, openapi)
}

/// This API's OpenAPI 3.1 document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json"))
)]
async fn openapi(
    Extension(document): Extension<Arc<utoipa::openapi::OpenApi>>,
) -> Json<utoipa::openapi::OpenApi> {
    Json((*document).clone())
}

async fn not_found(uri: Uri) -> Problem {
    let path = uri.path();
    let shown = if path.len() <= 200 && path.chars().all(|c| c.is_ascii_graphic()) {
        path
    } else {
        "(this path)"
    };
    Problem(AppError::NotFound(format!(
        "the API serves nothing at {BASE}{shown}; see {BASE}/openapi.json"
    )))
}

async fn method_not_allowed() -> Problem {
    Problem(AppError::MethodNotAllowed(
        "see /api/v1/openapi.json for the methods of each path",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The document is built from the routes, so it lists exactly them, under the base, each
    /// with the answers every operation shares.
    #[test]
    fn every_route_is_documented_under_the_base_with_the_shared_answers() {
        let (_, document) = build();
        let value = serde_json::to_value(&document).unwrap();
        assert!(value["openapi"].as_str().unwrap().starts_with("3.1"));
        let paths: Vec<&str> = document.paths.paths.keys().map(String::as_str).collect();
        let expected = [
            "/api/v1/alerts",
            "/api/v1/audit",
            "/api/v1/backup",
            "/api/v1/destinations",
            "/api/v1/destinations/{name}/backfill",
            "/api/v1/destinations/{name}/messages",
            "/api/v1/destinations/{name}/messages/{id}/discard",
            "/api/v1/destinations/{name}/messages/{id}/replay",
            "/api/v1/destinations/{name}/pause",
            "/api/v1/destinations/{name}/resume",
            "/api/v1/events",
            "/api/v1/export.csv",
            "/api/v1/openapi.json",
            "/api/v1/patient-forms",
            "/api/v1/patient-forms/{id}",
            "/api/v1/referrals",
            "/api/v1/referrals/{referral}",
            "/api/v1/referrals/{referral}/appointments",
            "/api/v1/referrals/{referral}/appointments/current",
            "/api/v1/referrals/{referral}/booking-instructions",
            "/api/v1/referrals/{referral}/correction",
            "/api/v1/referrals/{referral}/documents",
            "/api/v1/referrals/{referral}/documents/{version}/{index}",
            "/api/v1/referrals/{referral}/forward",
            "/api/v1/referrals/{referral}/messages",
            "/api/v1/referrals/{referral}/status",
            "/api/v1/referrals/{referral}/versions/{version}",
            "/api/v1/referrals/{referral}/versions/{version}/changes",
            "/api/v1/updates",
            "/api/v1/updates/{id}",
            "/api/v1/updates/{id}/discard",
            "/api/v1/updates/{id}/replay",
            "/api/v1/watch-list",
        ];
        assert_eq!(paths, expected);
        for (path, item) in &document.paths.paths {
            assert!(path.starts_with("/api/v1/"), "{path}");
            for operation in [&item.get, &item.post, &item.delete].into_iter().flatten() {
                let answers = &operation.responses.responses;
                if path == "/api/v1/openapi.json" {
                    assert!(
                        operation.security.as_ref().is_some_and(Vec::is_empty),
                        "{path}"
                    );
                } else {
                    assert!(
                        answers.contains_key("401") && answers.contains_key("503"),
                        "{path}"
                    );
                }
            }
        }
    }
}
