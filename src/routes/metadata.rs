//! `GET /fhir/metadata`: the CapabilityStatement of the webhook side, so FHIR tooling (and
//! people) can see what this endpoint accepts.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use serde_json::json;

use crate::error::fhir_json;
use crate::ig;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/fhir/metadata", get(metadata))
}

async fn metadata(State(state): State<AppState>) -> Response {
    let endpoints: Vec<_> = state
        .integration_names()
        .map(|name| {
            json!({
                "protocol": {"system": "http://terminology.hl7.org/CodeSystem/message-transport", "code": "http"},
                "address": format!("/fhir/{name}/$process-message"),
            })
        })
        .collect();
    let codes = ig::RECEIVED_EVENTS.join(", ");
    let body = json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": time::OffsetDateTime::now_utc().date().to_string(),
        "publisher": "referral-relay",
        "kind": "instance",
        "software": {"name": "referral-relay", "version": env!("CARGO_PKG_VERSION")},
        "implementation": {"description": "Receives Ocean eReferral message Bundles and stores them durably before answering"},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "application/json"],
        "rest": [{
            "mode": "server",
            "documentation": "POST a message Bundle to /fhir/{integration}/$process-message (also /fhir/{integration} and /fhir/{integration}/Bundle).",
            "operation": [{
                "name": "process-message",
                "definition": "http://hl7.org/fhir/OperationDefinition/MessageHeader-process-message"
            }]
        }],
        "messaging": [{
            "endpoint": endpoints,
            "reliableCache": 0,
            "documentation": format!(
                "Accepts message Bundles of the Ontario eReferral-eConsult IG (Ocean v0.10 and v0.11). Known event codes: {codes}; unknown codes are stored as well unless an integration lists the codes it accepts. A delivery is answered 200 only once it is on disk; a repeated delivery is acknowledged without being stored twice."
            ),
            "supportedMessage": [{
                "mode": "receiver",
                "definition": ig::MESSAGE_DEFINITION
            }]
        }]
    });
    fhir_json(StatusCode::OK, &body)
}
