//! A FHIR destination: each stored version is written into a FHIR server as a `transaction`,
//! by conditional updates keyed by identifiers, so a referral's later versions update what its
//! first one wrote. The server is a stand-in that validates every resource with Medplum's R4
//! validator (see `tests/peers/fhir_server.mjs`) and applies the conditional operations.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use crate::support::destinations::{KEY, api, app_on, delivery, destination};
use crate::support::fixtures::V011_REFERRAL;
use crate::support::ocean::{MockOcean, Serve};
use crate::support::peers::FhirServer;

const LETTER: &str = "/svc/fhir/v1/ServiceRequest/TST-0011-AAAA/$letter";
const ECHO: &str = "/svc/fhir/v1/DocumentReference/doc-0011-echo/$binary";
const HCN: &str = "https://fhir.infoway-inforoute.ca/NamingSystem/ca-on-patient-hcn";

/// The versions of the v0.11 referral, in order: new, an attachment added, Task accepted,
/// appointment booked.
const STEPS: [&str; 4] = [
    "v0.11-add-service-request.json",
    "attachment-added.json",
    "update-task-accepted.json",
    "update-appointment-booked.json",
];

fn has_identifier(resource: &Value, system: &str, value: &str) -> bool {
    resource["identifier"].as_array().is_some_and(|ids| {
        ids.iter()
            .any(|i| i["system"] == system && i["value"] == value)
    })
}

async fn messages(app: &crate::support::app::TestApp, state: &str) -> Vec<Value> {
    let path = format!("/api/v1/destinations/chart/messages?state={state}");
    let answer = api(app, reqwest::Method::GET, &path, None).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.body["messages"].as_array().unwrap().clone()
}

async fn upserted_and_validated(postgres: bool) {
    let ocean = MockOcean::start().await;
    // The letters go inline; the attachment is larger than inline_max_bytes (a Binary).
    let first = b"%PDF-1.7\n% the first\n".to_vec();
    let second = b"%PDF-1.7\n% the second\n".to_vec();
    let echo = b"%PDF-1.7\n% an attachment larger than the inline limit\n".to_vec();
    ocean.serve(
        LETTER,
        [Serve::Pdf(first.clone()), Serve::Pdf(second.clone())],
    );
    ocean.serve(ECHO, [Serve::Pdf(echo.clone())]);
    let server = FhirServer::start("oauth:relay-client:relay-secret-1");
    let toml = format!(
        r#"{}
[api.clients.ops]
key = "{KEY}"

[documents]
initial_backoff_secs = 1
max_backoff_secs = 1

[destinations.chart]
kind = "fhir"
url = "{}"
token_url = "{}"
client_id = "relay-client"
client_secret = "relay-secret-1"
token_auth = "basic"
documents = "wait"
inline_max_bytes = 40

[destinations.wrongkey]
kind = "fhir"
url = "{}"
bearer_token = "not-a-token-this-server-issued"
events = ["new-referral"]
"#,
        crate::support::flow::config(&ocean, "form"),
        server.base(),
        server.token_url(),
        server.base(),
    );
    let (app, _dir) = app_on(postgres, &toml).await;
    for (n, step) in STEPS.iter().enumerate() {
        let text = String::from_utf8(delivery(step, V011_REFERRAL))
            .unwrap()
            .replace(
                "https://test.cognisantmd.com/svc/fhir/v1/DocumentReference",
                &format!("{}/svc/fhir/v1/DocumentReference", ocean.base_url()),
            );
        let answer = app.deliver("default", text.into_bytes()).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        // One at a time, so each transaction is the version's own.
        server.wait_for(n as u64 + 1).await;
    }
    let state = server.state().await;
    assert_eq!(
        state["refused"],
        json!([]),
        "Medplum's validator refused: {state}"
    );
    assert_eq!(state["tokens_issued"], 1, "the token is cached: {state}");

    // One of each, updated by every later version rather than duplicated; the Patient is
    // created once (a conditional create) and then only referred to, never overwritten.
    let patients = server.resources("Patient").await;
    assert_eq!(patients.len(), 1, "{patients:?}");
    assert!(has_identifier(&patients[0], HCN, "9999999999"));
    assert_eq!(patients[0]["meta"]["versionId"], "1");
    let requests = server.resources("ServiceRequest").await;
    assert_eq!(requests.len(), 1, "{requests:?}");
    let request = &requests[0];
    assert_eq!(request["meta"]["versionId"], "4");
    assert_eq!(
        request["subject"]["reference"],
        format!("Patient/{}", patients[0]["id"].as_str().unwrap())
    );
    let system = "https://test.cognisantmd.com/svc/fhir/v1/NamingSystem/id-ereferral-reference";
    assert!(has_identifier(request, system, V011_REFERRAL), "{request}");
    let tasks = server.resources("Task").await;
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0]["status"], "accepted");
    assert!(has_identifier(&tasks[0], system, V011_REFERRAL));
    let appointments = server.resources("Appointment").await;
    assert_eq!(appointments.len(), 1);
    assert_eq!(appointments[0]["status"], "booked");

    // The letter once, replaced by the second version's; the attachment in a Binary.
    let documents = server.resources("DocumentReference").await;
    let data: Vec<Vec<u8>> = documents
        .iter()
        .filter_map(|d| d["content"][0]["attachment"]["data"].as_str())
        .map(|d| STANDARD.decode(d).unwrap())
        .collect();
    assert_eq!(documents.len(), 2, "{documents:?}");
    assert_eq!(data, std::slice::from_ref(&second));
    let binaries = server.resources("Binary").await;
    assert_eq!(binaries.len(), 1);
    assert_eq!(
        STANDARD
            .decode(binaries[0]["data"].as_str().unwrap())
            .unwrap(),
        echo
    );
    assert_ne!(first, second);
    let linked = documents
        .iter()
        .find(|d| d["content"][0]["attachment"]["url"].is_string())
        .unwrap();
    assert_eq!(
        linked["content"][0]["attachment"]["url"],
        format!("Binary/{}", binaries[0]["id"].as_str().unwrap())
    );

    // A token the server stops honouring is fetched anew once, and the version lands.
    server.control(json!({"revoke_tokens": true})).await;
    let proposed = delivery("update-appointment-proposed.json", V011_REFERRAL);
    assert_eq!(app.deliver("default", proposed).await.status, 200);
    let state = server.wait_for(5).await;
    assert_eq!(state["tokens_issued"], 2, "{state}");

    // A refusal with an OperationOutcome is a dead letter carrying its text; replayed, it lands.
    let refusal = "ServiceRequest.performer: this server knows no such listing";
    server
        .control(json!({"fail": [{"status": 422, "text": refusal}]}))
        .await;
    let correction = delivery("data-correction.json", V011_REFERRAL);
    assert_eq!(app.deliver("default", correction).await.status, 200);
    let mut dead = Vec::new();
    for _ in 0..300 {
        dead = messages(&app, "dead").await;
        if !dead.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(dead.len(), 1, "{dead:?}");
    let error = dead[0]["last_error"].as_str().unwrap();
    assert!(error.contains("422") && error.contains(refusal), "{error}");
    let replay = format!(
        "/api/v1/destinations/chart/messages/{}/replay",
        dead[0]["id"]
    );
    let replayed = api(&app, reqwest::Method::POST, &replay, None).await;
    assert_eq!(replayed.status, 202, "{}", replayed.body);
    server.wait_for(6).await;
    // The relay marks a message delivered once the server's answer is read: just after the
    // server has it.
    crate::support::poll::eventually("six messages delivered", async || {
        messages(&app, "delivered").await.len() == 6
    })
    .await;

    // The destination whose token the server never issued keeps its version pending
    // (credentials are an operator's to fix), saying why.
    let wrongkey = destination(&app, "wrongkey").await;
    assert_eq!(wrongkey["kind"], "fhir");
    assert_eq!(wrongkey["pending"], 1, "{wrongkey}");
    assert_eq!(wrongkey["dead"], 0, "{wrongkey}");
    assert!(
        wrongkey["last_error"].as_str().unwrap().contains("401"),
        "{wrongkey}"
    );
    assert!(server.state().await["unauthorized"].as_u64() >= Some(2));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_version_is_upserted_into_a_fhir_server_that_validates_it() {
    upserted_and_validated(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_version_is_upserted_into_a_fhir_server_that_validates_it_from_postgres() {
    upserted_and_validated(true).await;
}

/// The stand-in judges: a resource Medplum finds invalid, or a reference to nothing, refuses
/// the whole transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fhir_server_stand_in_refuses_what_is_not_valid_fhir() {
    let server = FhirServer::start("bearer:t");
    let bundle = |resource: Value| {
        json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": "urn:uuid:1", "resource": resource, "request": {"method": "POST", "url": "Task"}}
        ]})
    };
    let (status, _) = server
        .post(
            &bundle(json!({"resourceType": "Task", "status": "requested", "intent": "order"})),
            None,
        )
        .await;
    assert_eq!(status, 401);
    let (status, outcome) = server
        .post(
            &bundle(json!({"resourceType": "Task", "intent": "order"})),
            Some("t"),
        )
        .await;
    assert_eq!(status, 400);
    assert!(outcome.to_string().contains("Task.status"), "{outcome}");
    let task = json!({"resourceType": "Task", "status": "requested", "intent": "order"});
    let twice = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": task, "request": {"method": "PUT", "url": "Task?identifier=s|1"}},
        {"resource": task, "request": {"method": "PUT", "url": "Task?identifier=s|1"}}
    ]});
    let (status, outcome) = server.post(&twice, Some("t")).await;
    assert_eq!(status, 400);
    assert!(
        outcome.to_string().contains("resolved by two entries"),
        "{outcome}"
    );
    let dangling = json!({"resourceType": "Task", "status": "requested", "intent": "order", "focus": {"reference": "ServiceRequest/none"}});
    let (status, outcome) = server.post(&bundle(dangling), Some("t")).await;
    assert_eq!(status, 400);
    assert!(outcome.to_string().contains("does not exist"), "{outcome}");
    let (status, _) = server
        .post(
            &bundle(json!({"resourceType": "Task", "status": "requested", "intent": "order"})),
            Some("t"),
        )
        .await;
    assert_eq!(status, 200);
}
