//! A relay talking to Ocean, for the outbound tests and every other that needs a site: its
//! config pointed at a stand-in Ocean, the relay with one referral stored, the API calls that
//! make updates, and checks of the messages Ocean received.

use serde_json::{Value, json};

use crate::support::app::{Answer as Reply, TestApp, answer, spawn_app_with};
use crate::support::fixtures::fixture;
use crate::support::ocean::{CLIENT_ID, CLIENT_SECRET, MockOcean};
use crate::support::poll::eventually;

pub const KEY: &str = "emr-key-0123456789";
pub const REF: &str = "TST-0011-AAAA";

pub fn config(ocean: &MockOcean, token_auth: &str) -> String {
    format!(
        r#"
[api.clients.emr]
key = "{KEY}"

[sites.main]
base_url = "{}"
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"
token_auth = "{token_auth}"

[outbox]
initial_backoff_secs = 1
max_backoff_secs = 1
request_timeout_secs = 1
"#,
        ocean.base_url()
    )
}

/// The relay with the v0.11 referral stored, pointed at a fresh stand-in Ocean.
pub async fn setup(token_auth: &str) -> (TestApp, MockOcean) {
    let ocean = MockOcean::start().await;
    let app = spawn_app_with(&config(&ocean, token_auth)).await;
    assert_eq!(
        app.deliver("default", fixture("v0.11-add-service-request.json"))
            .await
            .status,
        200
    );
    (app, ocean)
}

pub async fn call(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> Reply {
    let mut request = app
        .client
        .request(method, app.url(path))
        .header("authorization", format!("Bearer {KEY}"));
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    answer(request.send().await.unwrap()).await
}

/// `GET path` as the API client holding [`KEY`]; it must answer 200. Its JSON.
pub async fn get_ok(app: &TestApp, path: &str) -> Value {
    let reply = call(app, reqwest::Method::GET, path, None).await;
    assert_eq!(reply.status, 200, "{path}: {}", reply.body);
    reply.body
}

pub async fn post(app: &TestApp, path: &str, body: Value) -> Reply {
    call(app, reqwest::Method::POST, path, Some(body)).await
}

/// Accepts an update and returns its id.
pub async fn accepted(app: &TestApp, path: &str, body: Value) -> u64 {
    let reply = post(app, path, body).await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    reply.body["update_id"].as_u64().unwrap()
}

pub async fn status(app: &TestApp, status: &str) -> u64 {
    accepted(
        app,
        &format!("/api/v1/referrals/{REF}/status"),
        json!({"status": status, "reason": "Triaged"}),
    )
    .await
}

/// Waits (bounded) until the update reaches `state`, and returns it.
pub async fn until_state(app: &TestApp, id: u64, state: &str) -> Value {
    let mut update = Value::Null;
    eventually(&format!("update {id} becoming {state}"), async || {
        update = call(
            app,
            reqwest::Method::GET,
            &format!("/api/v1/updates/{id}"),
            None,
        )
        .await
        .body;
        update["state"] == state
    })
    .await;
    update
}

pub fn resource<'a>(bundle: &'a Value, kind: &str) -> &'a Value {
    bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["resource"])
        .find(|r| r["resourceType"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in {bundle}"))
}

/// The checks every message must pass: valid R4 (fhir-sdk reads it back), a MessageHeader as
/// Ocean expects, and a focus that resolves to the entry of `kind`.
pub fn assert_message(bundle: &Value, event: &str, kind: &str) {
    if let Err(e) = fhir_check::check_any(&bundle.to_string()) {
        panic!("not a valid R4 Bundle ({e}): {bundle}");
    }
    assert_eq!(bundle["type"], "message");
    let header = resource(bundle, "MessageHeader");
    assert_eq!(
        bundle["entry"][0]["resource"]["resourceType"],
        "MessageHeader"
    );
    assert_eq!(header["eventCoding"]["code"], event);
    assert_eq!(
        header["eventCoding"]["system"],
        "https://ehealthontario.ca/fhir/CodeSystem/message-event-code"
    );
    assert_eq!(
        header["meta"]["profile"][0],
        "http://ehealthontario.ca/fhir/StructureDefinition/ca-on-eReferral-profile-MessageHeader|1.0.1"
    );
    assert_eq!(
        header["extension"][0]["url"],
        "http://ehealthontario.ca/fhir/StructureDefinition/ext-id-message-header"
    );
    assert_eq!(header["extension"][0]["valueString"], REF);
    assert!(header["source"]["endpoint"].is_string());
    let focus = header["focus"][0]["reference"].as_str().unwrap();
    let entry = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["fullUrl"] == focus)
        .unwrap();
    assert_eq!(entry["resource"]["resourceType"], kind);
}
