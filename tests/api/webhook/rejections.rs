//! Bad input of every kind gets the right 4xx with an OperationOutcome, and nothing is stored.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::app::{Answer, FHIR_JSON, TestApp, spawn_app, spawn_app_with};
use crate::support::fixtures::fixture;

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
        (
            "bad/deeply-nested.json",
            422,
            "referral extension has no valueString string",
        ),
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
    let rejected = app
        .metric_sum("relay_deliveries_total", &[("outcome", "rejected")])
        .await;
    assert_eq!(rejected, cases.len() as f64);
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
async fn a_media_type_the_relay_does_not_take_is_415() {
    let app = spawn_app().await;
    let body = fixture("v0.11-add-service-request.json");
    for media_type in [
        "text/plain",
        "application/fhir+xml",
        "application/x-www-form-urlencoded",
        "application/fhir+json; charset=iso-8859-1",
        "application/fhir+json; fhirVersion=3.0",
    ] {
        let answer = app
            .post(
                "/fhir/default/$process-message",
                Some(media_type),
                body.clone(),
            )
            .await;
        assert_outcome(&answer, 415, media_type);
        assert_eq!(answer.body["issue"][0]["code"], "not-supported");
    }
    assert_nothing_stored(&app).await;
    // The JSON media types FHIR servers have used across versions, and none at all (the body
    // is examined, RFC 9110 §8.3), are taken.
    for (n, media_type) in [
        Some("application/json+fhir"),
        Some("application/fhir+json; fhirVersion=4.0; charset=utf-8"),
        Some("text/json"),
        None,
    ]
    .into_iter()
    .enumerate()
    {
        let body = crate::support::fixtures::unique_v011(
            &String::from_utf8(body.clone()).unwrap(),
            &format!("TST-MEDIA-{n}"),
            &format!("media-{n}"),
        );
        let answer = app
            .post("/fhir/default/$process-message", media_type, body)
            .await;
        assert_eq!(answer.status, 200, "{media_type:?}: {}", answer.body);
    }
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
    // serde_json's own writer recurses; it copes with these depths on a test thread.
    serde_json::to_vec(&v).unwrap()
}

/// RFC 8259 sets no depth limit, so none is imposed on what is stored. Resources nested beyond
/// what fhir-sdk's types are given to check are stored with a problem saying so.
#[tokio::test]
async fn nesting_of_any_depth_is_stored_and_deep_resources_are_not_type_checked() {
    let app = spawn_app().await;
    let shallow = nested_extensions(28);
    let answer = app.deliver("default", shallow).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let referral = referral_relay::domain::ReferralRef::parse("TST-0011-AAAA").unwrap();
    let versions = app.store.versions(&referral).await.unwrap();
    assert!(
        versions[0].problems.is_empty(),
        "{:?}",
        versions[0].problems
    );

    let deep = std::thread::Builder::new()
        .stack_size(64 << 20)
        .spawn(|| nested_extensions(2000))
        .unwrap()
        .join()
        .unwrap();
    let answer = app.deliver("default", deep.clone()).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let versions = app.store.versions(&referral).await.unwrap();
    assert_eq!(versions.len(), 2);
    assert!(
        versions[1].problems[0].contains("nests 4004 levels deep, beyond the 64 checked"),
        "{:?}",
        versions[1].problems
    );
    let stored = app.store.payload(&referral, 2).await.unwrap().unwrap();
    assert_eq!(stored.as_ref(), deep.as_slice());
}
