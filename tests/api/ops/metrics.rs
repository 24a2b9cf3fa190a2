//! Operations: metrics by outcome, request ids, and what `/metrics` shows after real traffic.

use base64::Engine;

use crate::support::app::{FHIR_JSON, metric, spawn_app_with};
use crate::support::fixtures::fixture;

const KEY: &str = "emr-key-0123456789";

#[tokio::test]
async fn metrics_count_deliveries_auth_failures_requests_and_export_rows() {
    let app = spawn_app_with(&format!(
        r#"
[api.clients.emr]
key = "{KEY}"

[integrations.clinic]
auth = {{ scheme = "basic", username = "ocean", password = "correct horse" }}
"#
    ))
    .await;
    // Configured integrations' series exist at zero before anything happens.
    let page = app.metrics().await;
    let zero = |labels: &[(&str, &str)]| metric(&page, "relay_deliveries_total", labels);
    assert_eq!(
        zero(&[("integration", "clinic"), ("outcome", "stored")]),
        Some(0.0)
    );
    assert_eq!(
        metric(&page, "relay_auth_failures_total", &[("scheme", "basic")]),
        Some(0.0)
    );
    assert_eq!(metric(&page, "relay_export_rows_total", &[]), Some(0.0));

    let sent = [
        ("v0.11-add-service-request.json", "correct horse", 200),
        ("v0.10-add-service-request.json", "correct horse", 200),
        ("v0.10-add-service-request.json", "correct horse", 200),
        ("bad/not-json.json", "correct horse", 400),
        ("bad/no-event-code.json", "correct horse", 422),
        ("v0.11-add-service-request.json", "wrong horse", 401),
    ];
    for (name, password, expected) in sent {
        let pair = base64::engine::general_purpose::STANDARD.encode(format!("ocean:{password}"));
        let response = app
            .client
            .post(app.url("/fhir/clinic/$process-message"))
            .header("content-type", FHIR_JSON)
            .header("authorization", format!("Basic {pair}"))
            .body(fixture(name))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), expected, "{name}");
    }
    assert_eq!(
        app.deliver("nowhere", fixture("v0.11-add-service-request.json"))
            .await
            .status,
        404
    );
    let csv = app
        .client
        .get(app.url("/api/v1/export.csv"))
        .header("authorization", format!("Bearer {KEY}"))
        .send()
        .await
        .unwrap();
    assert_eq!(csv.status(), 200);
    csv.text().await.unwrap();

    let brew = reqwest::Method::from_bytes(b"BREW").unwrap();
    let teapot = app
        .client
        .request(brew, app.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(teapot.status(), 405);

    let page = app.metrics().await;
    // A method the caller invents is counted, not turned into a label.
    assert!(!page.contains("BREW"), "{page}");
    assert_eq!(
        metric(
            &page,
            "relay_http_requests_total",
            &[("method", "other"), ("status", "405")]
        ),
        Some(1.0)
    );
    let deliveries = |labels: &[(&str, &str)]| metric(&page, "relay_deliveries_total", labels);
    let clinic = ("integration", "clinic");
    assert_eq!(deliveries(&[clinic, ("outcome", "stored")]), Some(2.0));
    assert_eq!(deliveries(&[clinic, ("outcome", "duplicate")]), Some(1.0));
    assert_eq!(
        deliveries(&[clinic, ("outcome", "rejected"), ("reason", "bad_request")]),
        Some(1.0)
    );
    assert_eq!(
        deliveries(&[clinic, ("outcome", "rejected"), ("reason", "unprocessable")]),
        Some(1.0)
    );
    // The caller's path segment never becomes a label.
    assert_eq!(
        deliveries(&[
            ("integration", "unknown"),
            ("reason", "unknown_integration")
        ]),
        Some(1.0)
    );
    assert!(!page.contains("nowhere"), "{page}");
    assert_eq!(
        metric(
            &page,
            "relay_auth_failures_total",
            &[clinic, ("scheme", "basic")]
        ),
        Some(1.0)
    );
    // Every webhook request is timed, refused ones too.
    assert_eq!(
        metric(&page, "relay_ingest_duration_seconds_count", &[clinic]),
        Some(6.0)
    );
    assert_eq!(
        metric(
            &page,
            "relay_ingest_duration_seconds_bucket",
            &[clinic, ("le", "+Inf")]
        ),
        Some(6.0)
    );
    assert_eq!(
        metric(
            &page,
            "relay_http_requests_total",
            &[
                ("method", "POST"),
                ("route", "/fhir/{integration}/$process-message"),
                ("status", "200")
            ]
        ),
        Some(3.0)
    );
    assert_eq!(
        metric(
            &page,
            "relay_http_requests_total",
            &[("route", "/api/v1/export.csv"), ("status", "200")]
        ),
        Some(1.0)
    );
    // One row per referral: the two stored.
    assert_eq!(metric(&page, "relay_export_rows_total", &[]), Some(2.0));
    assert_eq!(metric(&page, "relay_outbox_pending", &[]), Some(0.0));
    assert_eq!(metric(&page, "relay_outbox_dead_letters", &[]), Some(0.0));
    assert!(
        page.contains("# TYPE relay_ingest_duration_seconds histogram"),
        "{page}"
    );
    app.stop().await;
}

#[tokio::test]
async fn every_response_carries_its_own_request_id() {
    let app = spawn_app_with("").await;
    let mut ids = Vec::new();
    for path in ["/healthz", "/healthz", "/no/such/path"] {
        let response = app.client.get(app.url(path)).send().await.unwrap();
        let id = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(uuid_like(&id), "{id}");
        ids.push(id);
    }
    ids.dedup();
    assert_eq!(ids.len(), 3, "ids repeat: {ids:?}");
    app.stop().await;
}

fn uuid_like(id: &str) -> bool {
    id.len() == 36 && id.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
}

/// A request refused before its body is read keeps its connection usable: the relay reads
/// the rest of the body, instead of closing a connection the client will reuse.
#[tokio::test]
async fn a_body_refused_before_it_is_read_does_not_break_the_connection() {
    let app = spawn_app_with(
        "[integrations.clinic]\nauth = { scheme = \"basic\", username = \"ocean\", password = \"correct horse\" }\n",
    )
    .await;
    let body = fixture("v0.11-add-service-request.json");
    for (path, auth, expected) in [
        ("/fhir/nowhere/$process-message", "Basic b2NlYW46eA==", 404),
        ("/fhir/clinic/$process-message", "Basic b2NlYW46eA==", 401),
        ("/fhir/clinic/$process-message", "Basic b2NlYW46eA==", 401),
    ] {
        let answer = crate::support::app::answer(
            app.client
                .post(app.url(path))
                .header("content-type", FHIR_JSON)
                .header("authorization", auth)
                .body(body.clone())
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(answer.status, expected);
        assert_eq!(answer.body["resourceType"], "OperationOutcome");
        // The next request goes over the same pooled connection.
        let next = app.client.get(app.url("/healthz")).send().await;
        assert!(next.is_ok(), "{next:?}");
    }
    app.stop().await;
}

/// A large body refused before it is read is not invited: the answer closes the connection.
#[tokio::test]
async fn a_large_refused_body_is_not_read_and_the_connection_closes() {
    let app = spawn_app_with("").await;
    let mut large = fixture("v0.11-add-service-request.json");
    large.resize(2 * 1024 * 1024, b' ');
    for (body, closes) in [
        (large, true),
        (fixture("bad/not-json.json"), false),
        (Vec::new(), false),
    ] {
        let response = app
            .client
            .post(app.url("/fhir/nowhere/$process-message"))
            .header("content-type", FHIR_JSON)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404);
        let connection = response
            .headers()
            .get("connection")
            .map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(
            connection.as_deref() == Some("close"),
            closes,
            "{connection:?}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn with_a_metrics_token_only_its_bearer_reads_metrics() {
    let app = spawn_app_with("[server]\nmetrics_token = \"scrape-token-0123\"\n").await;
    let scrape = |auth: Option<&'static str>| {
        let mut request = app.client.get(app.url("/metrics"));
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        request.send()
    };
    for refused in [None, Some("Bearer wrong"), Some("Basic c2NyYXBl")] {
        let response = scrape(refused).await.unwrap();
        assert_eq!(response.status(), 401, "{refused:?}");
        assert!(response.headers().contains_key("www-authenticate"));
    }
    let response = scrape(Some("Bearer scrape-token-0123")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("relay_deliveries_total")
    );
    app.stop().await;
}
