//! Delivery to Ocean: tokens (form and Basic, refreshed on 401), retries with backoff and
//! `Retry-After`, per-referral order, an update surviving kill -9, and the CLI's check-site and
//! replay.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::app::answer;
use crate::support::binary::run;
use crate::support::fixtures::fixture;
use crate::support::flow::*;
use crate::support::ocean::{Answer, CLIENT_ID, CLIENT_SECRET, MockOcean};
use crate::support::poll::eventually;

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

/// Servers that send `expires_in` as a string of digits (or something unreadable) still gave a
/// good token: it is kept (for the life said, or the default), not fetched again per update.
#[tokio::test]
async fn a_token_answer_with_expires_in_as_a_string_is_kept() {
    for expires_in in [json!("3600"), json!("soon")] {
        let (app, ocean) = setup("form").await;
        ocean.token_expires_in(expires_in.clone());
        until_state(&app, status(&app, "accepted").await, "delivered").await;
        until_state(&app, status(&app, "in-progress").await, "delivered").await;
        assert_eq!(ocean.token_requests().len(), 1, "expires_in {expires_in}");
    }
}

/// An error answer is read only as far as an OperationOutcome goes: a body that never ends is
/// left unread (it took the process to 1.4 GB with a 768 MiB 404), and the update is refused
/// with the status.
#[tokio::test]
async fn an_endless_error_body_is_not_read() {
    let (app, ocean) = setup("form").await;
    ocean.script([Answer::Endless(404)]);
    let dead = until_state(&app, status(&app, "accepted").await, "dead").await;
    assert!(
        dead["last_error"].as_str().unwrap().contains("404"),
        "{dead}"
    );
    let streamed = ocean.streamed();
    assert!(
        streamed < 16 << 20,
        "{streamed} bytes of the body were taken"
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
    // One 401, then one send with a fresh token. (The letter fetcher shares the site's token
    // and may meet the expiry too, so the number of token requests is not the update's alone.)
    let received = ocean.received();
    let answered: Vec<u16> = received.iter().map(|r| r.answered).collect();
    assert_eq!(answered, [401, 200]);
    assert_eq!(received[0].authorization, "Bearer ocean-token-1");
    assert_ne!(received[1].authorization, "Bearer ocean-token-1");
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
    eventually("the first attempt recorded", async || {
        let update = answer(
            client
                .get(format!("{base}/api/v1/updates/{id}"))
                .bearer_auth(KEY)
                .send()
                .await
                .unwrap(),
        )
        .await;
        update.body["attempts"] == 1 && update.body["state"] == "pending"
    })
    .await;
    assert_eq!(ocean.received().len(), 1);
    // Let the flush that records the attempt finish (reads can run ahead of the disk).
    tokio::time::sleep(Duration::from_millis(300)).await;
    relay.child.kill().unwrap();
    relay.child.wait().unwrap();

    let mut relay = crate::support::binary::start_relay_with(&data, Some(&config_file));
    eventually("delivery after the restart", async || {
        ocean.delivered().len() == 1
    })
    .await;
    let mut state = Value::Null;
    eventually("the update recorded delivered", async || {
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
        state["state"] == "delivered"
    })
    .await;
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
    eventually("the new update", async || ocean.delivered().len() == 2).await;
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
