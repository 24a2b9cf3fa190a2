//! Bad input of every kind gets the right 4xx with an OperationOutcome, and nothing is stored.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::fixtures::fixture;
use crate::helpers::{Answer, FHIR_JSON, TestApp, spawn_app, spawn_app_with};

async fn assert_nothing_stored(app: &TestApp) {
    assert!(app.store.events_after(0, 10).await.unwrap().is_empty());
}

fn assert_outcome(answer: &Answer, status: u16, what: &str) {
    assert_eq!(answer.status, status, "{what}: {}", answer.body);
    assert_eq!(answer.content_type, FHIR_JSON, "{what}");
    assert_eq!(answer.body["issue"][0]["severity"], "error", "{what}");
    assert!(!answer.diagnostics().is_empty(), "{what}");
}

#[tokio::test]
async fn every_bad_fixture_gets_its_4xx_with_a_diagnosis() {
    let app = spawn_app().await;
    // (file, status, words the diagnostics must contain)
    let cases = [
        ("bad/not-json.json", 400, "not valid JSON"),
        ("bad/empty.json", 400, "empty"),
        ("bad/deeply-nested.json", 400, "recursion limit"),
        ("bad/invalid-utf8.json", 400, "not valid JSON"),
        (
            "bad/json-array.json",
            422,
            "a JSON array, not a FHIR Bundle",
        ),
        (
            "bad/wrong-resource-type.json",
            422,
            "expected resourceType Bundle, got 'Patient'",
        ),
        (
            "bad/bundle-not-message.json",
            422,
            "Bundle.type is 'transaction'",
        ),
        ("bad/no-message-header.json", 422, "no MessageHeader"),
        ("bad/no-event-code.json", 422, "eventCoding.code"),
        ("bad/no-referral-ref.json", 422, "no referral reference"),
    ];
    for (name, status, words) in cases {
        let answer = app.deliver("default", fixture(name)).await;
        assert_outcome(&answer, status, name);
        assert!(
            answer.diagnostics().contains(words),
            "{name}: {}",
            answer.diagnostics()
        );
    }
    assert_nothing_stored(&app).await;
    let health = app.get("/healthz").await;
    assert_eq!(health.body["deliveries"]["rejected"], cases.len());
}

#[tokio::test]
async fn a_body_over_the_limit_gets_413() {
    let app = spawn_app_with("[server]\nmax_body_bytes = 4096\n").await;
    let big = fixture("v0.11-add-service-request.json");
    assert!(big.len() > 4096);
    let answer = app.deliver("default", big).await;
    assert_outcome(&answer, 413, "oversized");
    assert!(answer.diagnostics().contains("4096"));

    // Without a Content-Length (chunked), the limit holds as the body streams in.
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let chunk = " ".repeat(3000);
    let request = format!(
        "POST /fhir/default/$process-message HTTP/1.1\r\nHost: relay\r\n\
         Content-Type: application/fhir+json\r\nTransfer-Encoding: chunked\r\n\
         Connection: close\r\n\r\n{len:x}\r\n{chunk}\r\n{len:x}\r\n{chunk}\r\n0\r\n\r\n",
        len = chunk.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(response.contains("OperationOutcome"));
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn the_content_type_must_be_fhir_json_or_json() {
    let app = spawn_app().await;
    let body = fixture("v0.11-add-service-request.json");
    let answer = app
        .post(
            "/fhir/default/$process-message",
            Some("text/plain"),
            body.clone(),
        )
        .await;
    assert_outcome(&answer, 400, "text/plain");
    assert!(answer.diagnostics().contains("Content-Type"));
    let answer = app.post("/fhir/default/$process-message", None, body).await;
    assert_outcome(&answer, 400, "no content type");
    assert!(answer.diagnostics().contains("Content-Type is missing"));
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn an_unknown_integration_gets_404() {
    let app = spawn_app().await;
    let answer = app
        .deliver("nobody", fixture("v0.11-add-service-request.json"))
        .await;
    assert_outcome(&answer, 404, "unknown integration");
    assert!(answer.diagnostics().contains("'nobody'"));
    assert_eq!(answer.body["issue"][0]["code"], "not-found");
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn unknown_paths_and_methods_answer_with_an_outcome() {
    let app = spawn_app().await;
    let answer = app.get("/nowhere").await;
    assert_outcome(&answer, 404, "unknown path");
    assert!(answer.diagnostics().contains("/nowhere"));
    let answer = app.get("/fhir/default/$process-message").await;
    assert_outcome(&answer, 405, "GET on the webhook");
}

#[tokio::test]
async fn a_stalled_body_gets_408_instead_of_holding_the_request() {
    let app = spawn_app_with("[server]\nbody_timeout_secs = 1\n").await;
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let head = "POST /fhir/default/$process-message HTTP/1.1\r\nHost: relay\r\n\
                Content-Type: application/fhir+json\r\nContent-Length: 5000\r\n\r\n{\"res";
    stream.write_all(head.as_bytes()).await.unwrap();
    // Send nothing more: the relay gives up after the body timeout and says so.
    let mut response = vec![0; 4096];
    let n = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        stream.read(&mut response),
    )
    .await
    .expect("the relay answered a stalled body")
    .unwrap();
    let response = String::from_utf8_lossy(&response[..n]);
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(response.contains("did not arrive within 1 s"));
    assert_nothing_stored(&app).await;
}

/// The v0.11 fixture with `levels` extensions nested inside one more MessageHeader extension.
fn nested_extensions(levels: usize) -> Vec<u8> {
    let mut v: serde_json::Value =
        serde_json::from_slice(&fixture("v0.11-add-service-request.json")).unwrap();
    let mut nested =
        serde_json::json!({"url": "https://relay.example.test/leaf", "valueString": "x"});
    for _ in 0..levels {
        nested =
            serde_json::json!({"url": "https://relay.example.test/level", "extension": [nested]});
    }
    let header = &mut v["entry"][0]["resource"];
    header["extension"].as_array_mut().unwrap().push(nested);
    serde_json::to_vec(&v).unwrap()
}

#[tokio::test]
async fn nesting_within_the_limit_is_read_and_beyond_it_refused() {
    let app = spawn_app().await;
    // 28 levels put the innermost extension at a depth of 63: read through fhir-sdk's types
    // on a server worker thread without exhausting its stack.
    let answer = app.deliver("default", nested_extensions(28)).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let answer = app.deliver("default", nested_extensions(40)).await;
    assert_outcome(&answer, 400, "nested 40 levels");
    assert!(answer.diagnostics().contains("deeper than 64 levels"));
}
