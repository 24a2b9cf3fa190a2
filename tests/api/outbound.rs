//! Status updates to Ocean, against a stand-in Ocean on loopback: tokens, retries, dead
//! letters, replay, ordering, and the messages themselves field by field.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::app::{Answer as Reply, TestApp, answer, metric, spawn_app_with};
use crate::support::binary::run;
use crate::support::fixtures::fixture;
use crate::support::ocean::{Answer, CLIENT_ID, CLIENT_SECRET, MockOcean};

const KEY: &str = "emr-key-0123456789";
const REF: &str = "TST-0011-AAAA";

fn config(ocean: &MockOcean, token_auth: &str) -> String {
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
async fn setup(token_auth: &str) -> (TestApp, MockOcean) {
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

async fn call(app: &TestApp, method: reqwest::Method, path: &str, body: Option<Value>) -> Reply {
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

async fn post(app: &TestApp, path: &str, body: Value) -> Reply {
    call(app, reqwest::Method::POST, path, Some(body)).await
}

/// Accepts an update and returns its id.
async fn accepted(app: &TestApp, path: &str, body: Value) -> u64 {
    let reply = post(app, path, body).await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    reply.body["update_id"].as_u64().unwrap()
}

async fn status(app: &TestApp, status: &str) -> u64 {
    accepted(
        app,
        &format!("/api/v1/referrals/{REF}/status"),
        json!({"status": status, "reason": "Triaged"}),
    )
    .await
}

/// Waits (bounded) until the update reaches `state`, and returns it.
async fn until_state(app: &TestApp, id: u64, state: &str) -> Value {
    for _ in 0..200 {
        let reply = call(
            app,
            reqwest::Method::GET,
            &format!("/api/v1/updates/{id}"),
            None,
        )
        .await;
        if reply.body["state"] == state {
            return reply.body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("update {id} never became {state}");
}

fn resource<'a>(bundle: &'a Value, kind: &str) -> &'a Value {
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
fn assert_message(bundle: &Value, event: &str, kind: &str) {
    let typed: fhir_sdk::r4b::resources::Bundle =
        serde_json::from_value(bundle.clone()).expect("valid R4 Bundle");
    assert_eq!(typed.r#type.as_ref(), "message");
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

#[tokio::test]
async fn a_status_update_reaches_ocean_with_one_token_for_many() {
    let (app, ocean) = setup("form").await;
    let first = status(&app, "accepted").await;
    until_state(&app, first, "delivered").await;
    let second = status(&app, "in-progress").await;
    let done = until_state(&app, second, "delivered").await;
    assert_eq!(done["attempts"], 1);
    assert_eq!(done["task_status"], "in-progress");

    let tokens = ocean.token_requests();
    assert_eq!(tokens.len(), 1, "one token serves many updates");
    let (form, header) = &tokens[0];
    assert_eq!(form["grant_type"], "client_credentials");
    assert_eq!(form["client_id"], CLIENT_ID);
    assert_eq!(form["client_secret"], CLIENT_SECRET);
    assert_eq!(header, &None);

    let received = ocean.received();
    assert_eq!(received.len(), 2);
    assert!(
        received
            .iter()
            .all(|r| r.authorization == "Bearer ocean-token-1")
    );
    assert!(
        received
            .iter()
            .all(|r| r.content_type == "application/fhir+json")
    );
    let (add, update) = (&received[0].body, &received[1].body);
    assert_message(add, "notify-add-process-request", "Task");
    assert_message(update, "notify-update-process-request", "Task");
    let task = resource(add, "Task");
    assert_eq!(task["status"], "accepted");
    assert_eq!(task["intent"], "order");
    assert_eq!(task["code"]["coding"][0]["code"], "process-request");
    assert_eq!(
        task["basedOn"][0]["reference"],
        format!("ServiceRequest/{REF}")
    );
    assert_eq!(task["statusReason"]["text"], "Triaged");
    assert_eq!(resource(update, "Task")["status"], "in-progress");
    assert_eq!(
        resource(update, "Task")["id"],
        task["id"],
        "one Task per referral"
    );
}

#[tokio::test]
async fn basic_token_auth_sends_the_credentials_in_a_header() {
    let (app, ocean) = setup("basic").await;
    until_state(&app, status(&app, "accepted").await, "delivered").await;
    let (form, header) = &ocean.token_requests()[0];
    assert!(!form.contains_key("client_secret"));
    assert!(header.as_deref().unwrap().starts_with("Basic "));
}

#[tokio::test]
async fn a_401_refreshes_the_token_once() {
    let (app, ocean) = setup("form").await;
    ocean.script([Answer::ExpireTokens]);
    let done = until_state(&app, status(&app, "accepted").await, "delivered").await;
    assert_eq!(
        done["attempts"], 1,
        "the refresh is part of the same attempt"
    );
    assert_eq!(ocean.token_requests().len(), 2);
    assert_eq!(
        ocean.received().last().unwrap().authorization,
        "Bearer ocean-token-2"
    );
}

#[tokio::test]
async fn server_errors_and_timeouts_are_retried_until_it_lands() {
    let (app, ocean) = setup("form").await;
    ocean.script([
        Answer::Status(500),
        Answer::Slow(Duration::from_secs(3)),
        Answer::Status(503),
    ]);
    let done = until_state(&app, status(&app, "accepted").await, "delivered").await;
    assert_eq!(done["attempts"], 4);
    assert_eq!(done["last_error"], Value::Null);
    assert_eq!(ocean.delivered().len(), 1);
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let (app, ocean) = setup("form").await;
    ocean.script([Answer::RetryAfter(429, 2)]);
    let done = until_state(&app, status(&app, "accepted").await, "delivered").await;
    assert_eq!(done["attempts"], 2);
    let received = ocean.received();
    // Backoff alone is at most 1 s here; the second attempt waited for Retry-After.
    assert!(received[1].at - received[0].at >= Duration::from_millis(1900));
}

#[tokio::test]
async fn a_refused_update_is_a_dead_letter_that_holds_back_its_referral_until_replayed() {
    let (app, ocean) = setup("form").await;
    ocean.script([Answer::Outcome(400, "Task status transition not allowed")]);
    let dead = status(&app, "accepted").await;
    let body = until_state(&app, dead, "dead").await;
    assert!(
        body["last_error"]
            .as_str()
            .unwrap()
            .contains("Task status transition not allowed")
    );
    let later = accepted(
        &app,
        &format!("/api/v1/referrals/{REF}/messages"),
        json!({"text": "Please send the ECG"}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        until_state(&app, later, "pending").await["attempts"],
        0,
        "held back behind the dead letter"
    );
    let dead_letters = call(
        &app,
        reqwest::Method::GET,
        "/api/v1/updates?state=dead",
        None,
    )
    .await;
    assert_eq!(dead_letters.body["updates"].as_array().unwrap().len(), 1);
    let page = app.metrics().await;
    assert_eq!(metric(&page, "relay_outbox_dead_letters", &[]), Some(1.0));
    assert_eq!(metric(&page, "relay_outbox_pending", &[]), Some(1.0));
    assert!(metric(&page, "relay_outbox_oldest_pending_age_seconds", &[]).unwrap() >= 0.4);
    let sends = |page: &str, result| {
        metric(
            page,
            "relay_outbox_sends_total",
            &[("site", "main"), ("result", result)],
        )
    };
    assert_eq!(sends(&page, "dead"), Some(1.0));
    let tokens = |page: &str, result| {
        metric(
            page,
            "relay_ocean_token_fetches_total",
            &[("site", "main"), ("result", result)],
        )
    };
    assert_eq!(tokens(&page, "ok"), Some(1.0));
    assert_eq!(tokens(&page, "error"), Some(0.0));

    let replay = post(&app, &format!("/api/v1/updates/{dead}/replay"), json!({})).await;
    assert_eq!(replay.status, 202, "{}", replay.body);
    until_state(&app, dead, "delivered").await;
    until_state(&app, later, "delivered").await;
    let delivered = ocean.delivered();
    assert_eq!(delivered.len(), 2);
    assert_message(&delivered[0], "notify-add-process-request", "Task");
    assert_message(
        &delivered[1],
        "send-communication-from-provider",
        "Communication",
    );
    let communication = resource(&delivered[1], "Communication");
    assert_eq!(communication["status"], "completed");
    assert_eq!(
        communication["payload"][0]["contentString"],
        "Please send the ECG"
    );
    assert_eq!(
        communication["basedOn"][0]["reference"],
        format!("ServiceRequest/{REF}")
    );
    let again = post(&app, &format!("/api/v1/updates/{dead}/replay"), json!({})).await;
    assert_eq!(again.status, 409);
    let page = app.metrics().await;
    assert_eq!(sends(&page, "delivered"), Some(2.0));
    assert_eq!(metric(&page, "relay_outbox_dead_letters", &[]), Some(0.0));
    assert_eq!(metric(&page, "relay_outbox_pending", &[]), Some(0.0));
}

#[tokio::test]
async fn updates_of_a_referral_go_out_in_the_order_accepted() {
    let (app, ocean) = setup("form").await;
    ocean.script([Answer::Status(503), Answer::Status(503)]);
    let ids = [
        status(&app, "accepted").await,
        status(&app, "in-progress").await,
        status(&app, "on-hold").await,
    ];
    for id in ids {
        until_state(&app, id, "delivered").await;
    }
    let order: Vec<Value> = ocean
        .delivered()
        .iter()
        .map(|b| resource(b, "Task")["status"].clone())
        .collect();
    assert_eq!(
        order,
        [json!("accepted"), json!("in-progress"), json!("on-hold")]
    );
}

#[tokio::test]
async fn statuses_are_checked_against_what_ocean_acts_on_and_the_state_table() {
    let (app, _ocean) = setup("form").await;
    let path = format!("/api/v1/referrals/{REF}/status");
    let reply = post(&app, &path, json!({"status": "completed"})).await;
    assert_eq!(reply.status, 422, "{}", reply.body);
    let reply = post(&app, &path, json!({"status": "in-progress"})).await;
    assert_eq!(reply.status, 409);
    assert!(
        reply.body["detail"]
            .as_str()
            .unwrap()
            .contains("from requested to in-progress")
    );
    status(&app, "rejected").await;
    // A declined referral can be reopened.
    status(&app, "accepted").await;
    let reply = post(&app, &path, json!({"status": "accepted", "colour": "blue"})).await;
    assert_eq!(reply.status, 400);
    let reply = post(
        &app,
        "/api/v1/referrals/TST-NOPE/status",
        json!({"status": "accepted"}),
    )
    .await;
    assert_eq!(reply.status, 404);
}

#[tokio::test]
async fn appointments_are_booked_and_cancelled() {
    let (app, ocean) = setup("form").await;
    let path = format!("/api/v1/referrals/{REF}/appointments");
    let cancel_path = format!("{path}/current");
    assert_eq!(
        call(&app, reqwest::Method::DELETE, &cancel_path, None)
            .await
            .status,
        404
    );
    let booked = accepted(
        &app,
        &path,
        json!({"start": "2026-12-03T14:30:00-05:00", "confirmed": true, "location": "Room 4", "notes": "Bring ECG"}),
    )
    .await;
    until_state(&app, booked, "delivered").await;
    let reply = call(&app, reqwest::Method::DELETE, &cancel_path, None).await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    until_state(&app, reply.body["update_id"].as_u64().unwrap(), "delivered").await;

    let delivered = ocean.delivered();
    assert_message(&delivered[0], "notify-add-appointment", "Appointment");
    let appointment = resource(&delivered[0], "Appointment");
    assert_eq!(appointment["status"], "booked");
    assert_eq!(appointment["start"], "2026-12-03T14:30:00-05:00");
    assert_eq!(appointment["end"], "2026-12-03T15:00:00-05:00");
    assert_eq!(appointment["participant"][0]["status"], "accepted");
    assert_eq!(
        appointment["participant"][0]["type"][0]["coding"][0]["code"],
        "PPRF"
    );
    assert_eq!(appointment["participant"][0]["actor"]["display"], "Room 4");
    assert_eq!(appointment["comment"], "Bring ECG");
    assert_message(&delivered[1], "notify-update-appointment", "Appointment");
    let cancelled = resource(&delivered[1], "Appointment");
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(cancelled["id"], appointment["id"]);

    let tentative = accepted(
        &app,
        &path,
        json!({"start": "2026-12-04T09:00:00Z", "end": "2026-12-04T09:20:00Z"}),
    )
    .await;
    until_state(&app, tentative, "delivered").await;
    let last = ocean.delivered().pop().unwrap();
    assert_eq!(
        resource(&last, "Appointment")["participant"][0]["status"],
        "tentative"
    );
    let bad = post(&app, &path, json!({"start": "tomorrow"})).await;
    assert_eq!(bad.status, 400);
}

/// Polls `check` every 50 ms for at most 20 s.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..400 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} did not happen");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_in_backoff_survives_kill_9_and_lands_exactly_once() {
    let ocean = MockOcean::start().await;
    ocean.script([Answer::RetryAfter(503, 3)]);
    let dir = tempfile::TempDir::new().unwrap();
    let config_file = dir.path().join("relay.toml");
    std::fs::write(&config_file, config(&ocean, "form")).unwrap();
    let data = dir.path().join("data");
    let client = reqwest::Client::new();

    let mut relay = crate::support::binary::start_relay_with(&data, Some(&config_file));
    let base = format!("http://{}", relay.addr);
    let stored = client
        .post(format!("{base}/fhir/default/$process-message"))
        .header("content-type", "application/fhir+json")
        .body(fixture("v0.11-add-service-request.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(stored.status().as_u16(), 200);
    let reply = answer(
        client
            .post(format!("{base}/api/v1/referrals/{REF}/status"))
            .bearer_auth(KEY)
            .header("content-type", "application/json")
            .body(json!({"status": "accepted"}).to_string())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    let id = reply.body["update_id"].as_u64().unwrap();

    // The first attempt gets 503 with Retry-After: 3. Once the relay has recorded it (so it
    // is in its backoff), kill -9.
    let mut in_backoff = false;
    for _ in 0..200 {
        let update = answer(
            client
                .get(format!("{base}/api/v1/updates/{id}"))
                .bearer_auth(KEY)
                .send()
                .await
                .unwrap(),
        )
        .await;
        if update.body["attempts"] == 1 && update.body["state"] == "pending" {
            in_backoff = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(in_backoff, "the first attempt was never recorded");
    assert_eq!(ocean.received().len(), 1);
    // Let the flush that records the attempt finish (reads can run ahead of the disk).
    tokio::time::sleep(Duration::from_millis(300)).await;
    relay.child.kill().unwrap();
    relay.child.wait().unwrap();

    let mut relay = crate::support::binary::start_relay_with(&data, Some(&config_file));
    eventually("delivery after the restart", || {
        ocean.delivered().len() == 1
    })
    .await;
    let mut state = Value::Null;
    for _ in 0..200 {
        state = answer(
            client
                .get(format!("http://{}/api/v1/updates/{id}", relay.addr))
                .bearer_auth(KEY)
                .send()
                .await
                .unwrap(),
        )
        .await
        .body;
        if state["state"] == "delivered" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(state["state"], "delivered", "{state}");
    // 2 when the first attempt was on disk before the kill (the usual case); had the kill
    // beaten that flush, the attempt would simply be unrecorded and the count 1.
    let attempts = state["attempts"].as_u64().unwrap();
    assert!((1..=2).contains(&attempts), "{attempts}");
    relay.child.kill().unwrap();
    relay.child.wait().unwrap();

    // Recorded as delivered: after another restart, a new update goes out and the old one
    // is not posted again (the worker has made a full pass by the time the new one lands).
    let mut relay = crate::support::binary::start_relay_with(&data, Some(&config_file));
    let reply = answer(
        client
            .post(format!(
                "http://{}/api/v1/referrals/{REF}/messages",
                relay.addr
            ))
            .bearer_auth(KEY)
            .header("content-type", "application/json")
            .body(json!({"text": "after the restarts"}).to_string())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    eventually("the new update", || ocean.delivered().len() == 2).await;
    let received = ocean.received();
    assert_eq!(
        received.len(),
        3,
        "one failed attempt, one delivery, the new update"
    );
    assert_message(
        &received[2].body,
        "send-communication-from-provider",
        "Communication",
    );
    relay.child.kill().unwrap();
    relay.child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_site_proves_the_credentials_and_replay_works_from_the_command_line() {
    let (app, ocean) = setup("form").await;
    let dir = tempfile::TempDir::new().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, config(&ocean, "basic")).unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        config(&ocean, "form").replace(CLIENT_SECRET, "wrong-secret"),
    )
    .unwrap();
    let (good, bad) = (
        good.to_str().unwrap().to_owned(),
        bad.to_str().unwrap().to_owned(),
    );
    let out = tokio::task::spawn_blocking(move || {
        (
            run(&["check-site", "main", "--config", &good], &[]),
            run(&["check-site", "main", "--config", &bad], &[]),
        )
    })
    .await
    .unwrap();
    assert!(
        out.0.status.success(),
        "{}",
        String::from_utf8_lossy(&out.0.stderr)
    );
    assert!(String::from_utf8_lossy(&out.0.stdout).contains("the credentials work"));
    assert!(!out.1.status.success());
    assert!(String::from_utf8_lossy(&out.1.stderr).contains("401"));

    ocean.script([Answer::Status(422)]);
    let id = status(&app, "accepted").await;
    until_state(&app, id, "dead").await;
    let url = format!("http://{}", app.addr);
    let replay = tokio::task::spawn_blocking(move || {
        run(
            &["replay", &id.to_string(), "--url", &url, "--key", KEY],
            &[],
        )
    })
    .await
    .unwrap();
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    until_state(&app, id, "delivered").await;
}

#[tokio::test]
async fn a_discarded_dead_letter_stops_holding_back_its_referral() {
    let (app, ocean) = setup("form").await;
    ocean.script([Answer::Outcome(400, "Unknown referral")]);
    let dead = status(&app, "accepted").await;
    until_state(&app, dead, "dead").await;
    let later = accepted(
        &app,
        &format!("/api/v1/referrals/{REF}/messages"),
        json!({"text": "Hello"}),
    )
    .await;
    let reply = post(&app, &format!("/api/v1/updates/{dead}/discard"), json!({})).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["state"], "discarded");
    until_state(&app, later, "delivered").await;
    let delivered = ocean.delivered();
    assert_eq!(delivered.len(), 1, "the discarded update is never sent");
    assert_message(
        &delivered[0],
        "send-communication-from-provider",
        "Communication",
    );
    assert_eq!(
        post(&app, &format!("/api/v1/updates/{dead}/discard"), json!({}))
            .await
            .status,
        409
    );
}

#[tokio::test]
async fn past_the_retry_horizon_an_update_becomes_a_dead_letter() {
    let ocean = MockOcean::start().await;
    let app = spawn_app_with(
        &config(&ocean, "form").replace("[outbox]", "[outbox]\nretry_horizon_secs = 1"),
    )
    .await;
    assert_eq!(
        app.deliver("default", fixture("v0.11-add-service-request.json"))
            .await
            .status,
        200
    );
    ocean.script(std::iter::repeat_n(Answer::Status(503), 10));
    let body = until_state(&app, status(&app, "accepted").await, "dead").await;
    let error = body["last_error"].as_str().unwrap();
    assert!(error.starts_with("gave up after"), "{error}");
    assert!(error.contains("503"), "{error}");
    assert!(ocean.delivered().is_empty());
}

#[tokio::test]
async fn an_absurd_retry_after_ends_in_a_dead_letter_not_a_stuck_worker() {
    let (app, ocean) = setup("form").await;
    ocean.script([Answer::RetryAfter(503, 999_999_999_999)]);
    let body = until_state(&app, status(&app, "accepted").await, "dead").await;
    assert!(
        body["last_error"]
            .as_str()
            .unwrap()
            .contains("retry horizon")
    );
    // The worker is alive: once the dead letter is discarded, the next update is delivered.
    let next = accepted(
        &app,
        &format!("/api/v1/referrals/{REF}/messages"),
        json!({"text": "still here"}),
    )
    .await;
    let reply = post(
        &app,
        &format!("/api/v1/updates/{}/discard", body["id"]),
        json!({}),
    )
    .await;
    assert_eq!(reply.status, 200);
    until_state(&app, next, "delivered").await;
}

#[tokio::test]
async fn discarding_an_update_forgets_what_ocean_never_received() {
    let (app, ocean) = setup("form").await;
    ocean.script([Answer::Outcome(400, "No")]);
    let dead = status(&app, "accepted").await;
    until_state(&app, dead, "dead").await;
    assert_eq!(
        post(&app, &format!("/api/v1/updates/{dead}/discard"), json!({}))
            .await
            .status,
        200
    );
    // Ocean never saw "accepted": accepting again is allowed, and it is the referral's first Task.
    let again = status(&app, "accepted").await;
    until_state(&app, again, "delivered").await;
    let delivered = ocean.delivered();
    assert_eq!(delivered.len(), 1);
    assert_message(&delivered[0], "notify-add-process-request", "Task");

    // The updates listing pages through everything, discarded letter included.
    let first = call(&app, reqwest::Method::GET, "/api/v1/updates?limit=1", None).await;
    assert_eq!(first.body["updates"][0]["state"], "discarded");
    let next = first.body["next"].as_u64().unwrap();
    let second = call(
        &app,
        reqwest::Method::GET,
        &format!("/api/v1/updates?limit=1&after={next}"),
        None,
    )
    .await;
    assert_eq!(second.body["updates"][0]["state"], "delivered");
    let discarded = call(
        &app,
        reqwest::Method::GET,
        "/api/v1/updates?state=discarded",
        None,
    )
    .await;
    assert_eq!(discarded.body["updates"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn discarding_a_booking_makes_the_one_before_it_current_again() {
    let (app, ocean) = setup("form").await;
    let path = format!("/api/v1/referrals/{REF}/appointments");
    let cancel_path = format!("{path}/current");
    let first = accepted(&app, &path, json!({"start": "2026-12-03T14:30:00Z"})).await;
    until_state(&app, first, "delivered").await;
    ocean.script([Answer::Outcome(400, "No")]);
    let second = accepted(&app, &path, json!({"start": "2026-12-05T10:00:00Z"})).await;
    until_state(&app, second, "dead").await;
    let reply = post(
        &app,
        &format!("/api/v1/updates/{second}/discard"),
        json!({}),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    // Ocean knows only the first booking: cancelling the current one cancels that.
    let cancel = || call(&app, reqwest::Method::DELETE, &cancel_path, None);
    let reply = cancel().await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    until_state(&app, reply.body["update_id"].as_u64().unwrap(), "delivered").await;
    let delivered = ocean.delivered();
    assert_eq!(delivered.len(), 2);
    let booked = resource(&delivered[0], "Appointment");
    let cancelled = resource(&delivered[1], "Appointment");
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(cancelled["id"], booked["id"]);
    assert_eq!(cancelled["start"], booked["start"]);
    // And nothing is current any more.
    let reply = cancel().await;
    assert_eq!(reply.status, 404, "{}", reply.body);
}

#[tokio::test]
async fn a_task_status_changed_in_ocean_is_the_current_one() {
    let (app, ocean) = setup("form").await;
    until_state(&app, status(&app, "rejected").await, "delivered").await;
    // Later, Ocean reports the referral accepted (reopened in Ocean's own screens).
    assert_eq!(
        app.deliver("default", fixture("update-task-accepted.json"))
            .await
            .status,
        200
    );
    // From accepted, in-progress is allowed (it would not be from rejected).
    let next = status(&app, "in-progress").await;
    until_state(&app, next, "delivered").await;
    assert_eq!(
        resource(&ocean.delivered()[1], "Task")["status"],
        "in-progress"
    );
}
