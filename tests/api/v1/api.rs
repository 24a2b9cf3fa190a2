//! The point-of-service API: referrals, versions, the event feed, scoping, errors, OpenAPI.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::Value;

use crate::support::app::{Answer, FIXTURES, TestApp, answer, spawn_app_with};
use crate::support::fixtures::{fixture, unique_v011};

const EMR_KEY: &str = "emr-key-0123456789";
const CARDIO_KEY: &str = "cardio-key-0123456789";

const CONFIG: &str = r#"
[api.clients.emr]
key = "emr-key-0123456789"

[api.clients.cardio]
key = "cardio-key-0123456789"
service_ids = ["CARDIO-RAPID-01"]
"#;

async fn with_fixtures() -> TestApp {
    let app = spawn_app_with(CONFIG).await;
    for name in FIXTURES {
        assert_eq!(
            app.deliver("default", fixture(name)).await.status,
            200,
            "{name}"
        );
    }
    app
}

async fn api(app: &TestApp, path: &str, key: Option<&str>) -> Answer {
    let mut request = app.client.get(app.url(path));
    if let Some(key) = key {
        request = request.header("authorization", format!("Bearer {key}"));
    }
    answer(request.send().await.unwrap()).await
}

fn assert_problem(answer: &Answer, status: u16, words: &str) {
    assert_eq!(answer.status, status, "{}", answer.body);
    assert_eq!(answer.content_type, "application/problem+json");
    assert_eq!(answer.body["status"], status);
    let detail = answer.body["detail"].as_str().unwrap();
    assert!(detail.contains(words), "{detail}");
}

#[tokio::test]
async fn a_referral_shows_every_summary_field_and_its_versions() {
    let app = with_fixtures().await;
    let answer = api(&app, "/api/v1/referrals/TST-0011-AAAA", Some(EMR_KEY)).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let r = &answer.body["referral"];
    assert_eq!(r["referral"], "TST-0011-AAAA");
    assert_eq!(r["service_id"], "CARDIO-RAPID-01");
    assert_eq!(r["integration"], "default");
    assert_eq!(r["latest_event"], "notify-future-capability");
    assert_eq!(r["status"], "accepted");
    assert_eq!(r["service_request_status"], "active");
    assert_eq!(r["task_status"], "accepted");
    assert_eq!(r["task_status_reason"], "Triaged: routine");
    // The booking (made 2026-11-05 09:05) arrived after the cancellation made at 16:40 (a
    // proposed Appointment with no start): by the messages' own times, it stays cancelled.
    assert_eq!(r["appointment_status"], "proposed");
    assert_eq!(r["appointment_start"], serde_json::Value::Null);
    assert_eq!(r["patient_name"], "Testpatient, Avery Jordan");
    assert_eq!(r["patient_phone"], "555-010-0142");
    assert_eq!(r["patient_email"], "avery.testpatient@example.test");
    assert_eq!(r["referrer_name"], "Dr. Morgan Fictional");
    assert_eq!(r["referrer_professional_id"], "77001");
    assert_eq!(r["referring_site"], "Synthetic Family Health Team");
    assert_eq!(r["recipient_listing"], "Synthetic Cardiology Rapid Access");
    assert_eq!(r["description"], "Rapid access chest pain assessment");
    assert_eq!(r["version_count"], 5);
    assert!(r["created_at"].as_str().unwrap() <= r["modified_at"].as_str().unwrap());
    let versions = answer.body["versions"].as_array().unwrap();
    let events: Vec<&str> = versions
        .iter()
        .map(|v| v["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        events,
        [
            "add-service-request",
            "notify-update-service-request",
            "notify-update-service-request",
            "notify-update-service-request",
            "notify-future-capability"
        ]
    );
    assert_eq!(versions[0]["version"], 1);
    assert_eq!(
        versions[0]["bundle_id"],
        "b0110000-0000-4000-8000-000000000001"
    );
    assert!(versions[0]["received_at"].is_string());

    let odd = api(&app, "/api/v1/referrals/TST-0012-CCCC", Some(EMR_KEY)).await;
    assert_eq!(
        odd.body["referral"]["service_request_status"],
        "pending-review"
    );
    let problems = odd.body["versions"][0]["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1);
}

#[tokio::test]
async fn a_raw_version_is_the_posted_bytes() {
    let app = with_fixtures().await;
    for (version, name) in [
        (1, "v0.11-add-service-request.json"),
        (2, "update-task-accepted.json"),
    ] {
        let response = app
            .client
            .get(app.url(&format!(
                "/api/v1/referrals/TST-0011-AAAA/versions/{version}"
            )))
            .header("authorization", format!("Bearer {EMR_KEY}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        assert_eq!(response.headers()["content-type"], "application/fhir+json");
        assert_eq!(
            response.bytes().await.unwrap().as_ref(),
            fixture(name).as_slice()
        );
    }
    let missing = api(
        &app,
        "/api/v1/referrals/TST-0011-AAAA/versions/99",
        Some(EMR_KEY),
    )
    .await;
    assert_problem(&missing, 404, "no version 99");
    let bad = api(
        &app,
        "/api/v1/referrals/TST-0011-AAAA/versions/first",
        Some(EMR_KEY),
    )
    .await;
    assert_problem(&bad, 400, "version");
}

fn refs(page: &Answer) -> Vec<String> {
    page.body["referrals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["referral"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn listings_filter_and_order_by_modification() {
    let app = with_fixtures().await;
    let all = api(&app, "/api/v1/referrals", Some(EMR_KEY)).await;
    assert_eq!(all.status, 200, "{}", all.body);
    // Ordered by latest change: BBBB was revoked (6th), AAAA last changed 7th, CCCC 8th.
    assert_eq!(
        refs(&all),
        ["TST-0010-BBBB", "TST-0011-AAAA", "TST-0012-CCCC"]
    );
    assert_eq!(all.body["next_cursor"], Value::Null);

    let q = |query: &str| format!("/api/v1/referrals?{query}");
    let cardio = api(&app, &q("service_id=CARDIO-RAPID-01"), Some(EMR_KEY)).await;
    assert_eq!(refs(&cardio), ["TST-0011-AAAA", "TST-0012-CCCC"]);
    let revoked = api(&app, &q("status=revoked"), Some(EMR_KEY)).await;
    assert_eq!(refs(&revoked), ["TST-0010-BBBB"]);
    let added = api(&app, &q("event=add-service-request"), Some(EMR_KEY)).await;
    assert_eq!(refs(&added), ["TST-0012-CCCC"]);
    let future = api(&app, &q("modified_since=2999-01-01"), Some(EMR_KEY)).await;
    assert!(refs(&future).is_empty());
    let past = api(
        &app,
        &q("modified_since=2000-01-01T00:00:00Z"),
        Some(EMR_KEY),
    )
    .await;
    assert_eq!(refs(&past).len(), 3);

    // One at a time, following the cursor.
    let mut seen = Vec::new();
    let mut path = q("limit=1");
    loop {
        let page = api(&app, &path, Some(EMR_KEY)).await;
        seen.extend(refs(&page));
        match page.body["next_cursor"].as_str() {
            Some(cursor) => path = q(&format!("limit=1&cursor={cursor}")),
            None => break,
        }
    }
    assert_eq!(seen, ["TST-0010-BBBB", "TST-0011-AAAA", "TST-0012-CCCC"]);

    let capped = api(&app, &q("limit=100000"), Some(EMR_KEY)).await;
    assert_eq!(capped.status, 200, "a large limit is capped, not refused");
    for (query, words) in [
        ("limit=0", "limit"),
        ("limit=many", "limit"),
        ("modified_since=yesterday", "modified_since"),
        ("cursor=forged", "cursor"),
        ("colour=blue", "colour"),
    ] {
        assert_problem(&api(&app, &q(query), Some(EMR_KEY)).await, 400, words);
    }
}

#[tokio::test]
async fn pagination_neither_skips_nor_repeats_while_deliveries_arrive() {
    let app = spawn_app_with(CONFIG).await;
    let template = String::from_utf8(fixture("v0.11-add-service-request.json")).unwrap();
    let deliver = |name: String, bundle: String| {
        let body = unique_v011(&template, &name, &bundle);
        let app = &app;
        async move { assert_eq!(app.deliver("default", body).await.status, 200) }
    };
    let before: Vec<String> = (0..30).map(|n| format!("PAGE-OLD-{n:02}")).collect();
    for name in &before {
        deliver(name.clone(), name.clone()).await;
    }
    // Between pages, deliveries keep arriving: an update to a referral already listed, one to
    // a referral not listed yet, and a new referral.
    let mut seen: Vec<String> = Vec::new();
    let mut path = "/api/v1/referrals?limit=4".to_owned();
    for round in 0.. {
        let page = api(&app, &path, Some(EMR_KEY)).await;
        assert_eq!(page.status, 200, "{}", page.body);
        seen.extend(refs(&page));
        let Some(cursor) = page.body["next_cursor"].as_str() else {
            break;
        };
        path = format!("/api/v1/referrals?limit=4&cursor={cursor}");
        let listed = seen.last().unwrap().clone();
        let unlisted = before.iter().find(|b| !seen.contains(b)).cloned();
        deliver(listed, format!("again-{round}")).await;
        if let Some(unlisted) = unlisted {
            deliver(unlisted, format!("later-{round}")).await;
        }
        deliver(format!("PAGE-NEW-{round}"), format!("new-{round}")).await;
    }
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(
        unique.len(),
        seen.len(),
        "a referral was listed twice: {seen:?}"
    );
    for name in &before {
        assert!(
            unique.contains(name),
            "{name} existed before the listing and was skipped"
        );
    }
    assert_eq!(
        seen.len(),
        before.len(),
        "the listing is the snapshot its first page took"
    );

    // The next listing sees everything, each referral once.
    let next = api(&app, "/api/v1/referrals?limit=500", Some(EMR_KEY)).await;
    let all = refs(&next);
    let unique: HashSet<&String> = all.iter().collect();
    assert_eq!(unique.len(), all.len());
    assert!(all.len() > before.len() && all.iter().any(|r| r.starts_with("PAGE-NEW-")));
}

#[tokio::test]
async fn a_scoped_client_sees_only_its_service_ids() {
    let app = with_fixtures().await;
    let list = api(&app, "/api/v1/referrals", Some(CARDIO_KEY)).await;
    assert_eq!(refs(&list), ["TST-0011-AAAA", "TST-0012-CCCC"]);
    assert_problem(
        &api(&app, "/api/v1/referrals/TST-0010-BBBB", Some(CARDIO_KEY)).await,
        403,
        "may not read",
    );
    assert_problem(
        &api(
            &app,
            "/api/v1/referrals/TST-0010-BBBB/versions/1",
            Some(CARDIO_KEY),
        )
        .await,
        403,
        "may not read",
    );
    assert_problem(
        &api(
            &app,
            "/api/v1/referrals?service_id=PHYSIO-EAST-02",
            Some(CARDIO_KEY),
        )
        .await,
        403,
        "PHYSIO-EAST-02",
    );
    let feed = api(&app, "/api/v1/events", Some(CARDIO_KEY)).await;
    let services: HashSet<&str> = feed.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["service_id"].as_str().unwrap())
        .collect();
    assert_eq!(services, HashSet::from(["CARDIO-RAPID-01"]));
    assert_eq!(
        feed.body["next"], 8,
        "the cursor passes the entries it filtered out"
    );
}

#[tokio::test]
async fn errors_are_problem_documents() {
    let app = with_fixtures().await;
    let none = api(&app, "/api/v1/referrals", None).await;
    assert_problem(&none, 401, "Authorization header is missing");
    assert!(none.challenge.starts_with("Bearer"));
    assert_problem(
        &api(&app, "/api/v1/referrals", Some("not-a-key-at-all")).await,
        401,
        "not recognised",
    );
    assert_problem(
        &api(&app, "/api/v1/referrals/TST-9999-ZZZZ", Some(EMR_KEY)).await,
        404,
        "no referral TST-9999-ZZZZ",
    );
    assert_problem(
        &api(&app, "/api/v1/events?after=minus-one", Some(EMR_KEY)).await,
        400,
        "after",
    );
    assert_problem(
        &api(&app, "/api/v1/events?wait=soon", Some(EMR_KEY)).await,
        400,
        "wait",
    );
    // Identifiers are taken as the OpenAPI document describes them: a control character
    // anywhere, even one trimming would drop, or more than 256 characters as sent, is a 400.
    assert_problem(
        &api(
            &app,
            "/api/v1/export.csv?service_id=%0CCARDIO-RAPID-01",
            Some(EMR_KEY),
        )
        .await,
        400,
        "service_id contains a control character",
    );
    assert_problem(
        &api(&app, "/api/v1/referrals/%09TST-0011-AAAA", Some(EMR_KEY)).await,
        400,
        "referral contains a control character",
    );
    let padded = format!(
        "/api/v1/referrals?service_id={}CARDIO-RAPID-01",
        "%20".repeat(250)
    );
    assert_problem(
        &api(&app, &padded, Some(EMR_KEY)).await,
        400,
        "service_id is longer than 256 characters",
    );
    // A cursor from another (reset or restored) store is refused, not silently skipped ahead.
    assert_problem(
        &api(&app, "/api/v1/events?after=999", Some(EMR_KEY)).await,
        409,
        "beyond the end of the feed",
    );
}

#[tokio::test]
async fn the_event_feed_is_ordered_and_resumable() {
    let app = with_fixtures().await;
    let feed = api(&app, "/api/v1/events?limit=5", Some(EMR_KEY)).await;
    let events = feed.body["events"].as_array().unwrap();
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    assert_eq!(events[0]["referral"], "TST-0011-AAAA");
    assert_eq!(events[0]["event"], "add-service-request");
    assert_eq!(events[0]["version"], 1);
    assert_eq!(events[0]["service_id"], "CARDIO-RAPID-01");
    assert_eq!(feed.body["next"], 5);
    let rest = api(&app, "/api/v1/events?after=5", Some(EMR_KEY)).await;
    let seqs: Vec<u64> = rest.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [6, 7, 8]);
    let empty = api(&app, "/api/v1/events?after=8", Some(EMR_KEY)).await;
    assert!(empty.body["events"].as_array().unwrap().is_empty());
    assert_eq!(empty.body["next"], 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_wakes_for_a_new_delivery_and_otherwise_ends_empty() {
    let app = with_fixtures().await;
    // Nothing new: the wait ends with an empty page.
    let quiet = api(&app, "/api/v1/events?after=8&wait=1", Some(EMR_KEY)).await;
    assert!(quiet.body["events"].as_array().unwrap().is_empty());
    assert_eq!(quiet.body["next"], 8);

    // A delivery during a 60 s wait is returned by that same request, long before the wait
    // ends (were the wake-up broken, the request would sit out the whole minute).
    let started = std::time::Instant::now();
    let poll = {
        let request = app
            .client
            .get(app.url("/api/v1/events?after=8&wait=60"))
            .header("authorization", format!("Bearer {EMR_KEY}"));
        tokio::spawn(async move { answer(request.send().await.unwrap()).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let template = String::from_utf8(fixture("v0.11-add-service-request.json")).unwrap();
    let body = unique_v011(&template, "TST-LONG-POLL", "long-poll");
    assert_eq!(app.deliver("default", body).await.status, 200);
    let woke = poll.await.unwrap();
    let events = woke.body["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{}", woke.body);
    assert_eq!(events[0]["referral"], "TST-LONG-POLL");
    assert_eq!(events[0]["seq"], 9);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the long-poll was not woken"
    );
}

#[tokio::test]
async fn the_openapi_document_and_the_capability_statement_are_served() {
    let app = spawn_app_with(CONFIG).await;
    let doc = api(&app, "/api/v1/openapi.json", None).await;
    assert_eq!(doc.status, 200);
    assert!(doc.body["openapi"].as_str().unwrap().starts_with("3.1"));
    for path in [
        "/api/v1/referrals",
        "/api/v1/referrals/{referral}",
        "/api/v1/events",
    ] {
        assert!(doc.body["paths"].get(path).is_some(), "{path}");
    }
    // A document comes as Ocean served it (mostly PDF), as bytes, not as a JSON array.
    let download = &doc.body["paths"]["/api/v1/referrals/{referral}/documents/{version}/{index}"]["get"]
        ["responses"]["200"]["content"];
    for media_type in ["application/pdf", "*/*"] {
        assert_eq!(
            download[media_type]["schema"]["format"], "binary",
            "{download}"
        );
    }
    assert!(
        download.get("application/octet-stream").is_none(),
        "{download}"
    );
    // The rule the schema cannot state (end after start) is said where its 400 is.
    let booking = &doc.body["paths"]["/api/v1/referrals/{referral}/appointments"]["post"]["responses"]
        ["400"]["description"];
    assert!(
        booking
            .as_str()
            .unwrap()
            .contains("`end` is not after `start`"),
        "{booking}"
    );

    let metadata = app.get("/fhir/metadata").await;
    assert_eq!(metadata.status, 200);
    assert_eq!(metadata.content_type, "application/fhir+json");
    let statement = metadata.body.to_string();
    fhir_check::check(fhir_check::Kind::CapabilityStatement, &statement)
        .expect("a valid CapabilityStatement");
    assert_eq!(metadata.body["messaging"].as_array().unwrap().len(), 1);
    assert_eq!(
        metadata.body["messaging"][0]["endpoint"][0]["address"],
        "/fhir/default/$process-message"
    );
}
