//! The outbox's durable records with the real binary: an update in backoff surviving kill -9
//! and landing exactly once, and the command line's check-site and replay on a stopped data
//! dir. Here, not in `outbound/`, because they start the binary on the embedded store: run
//! again for PostgreSQL they would add nothing but load.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::app::answer;
use crate::support::binary::run;
use crate::support::fixtures::fixture;
use crate::support::flow::*;
use crate::support::ocean::{Answer, CLIENT_SECRET, MockOcean};
use crate::support::poll::eventually;

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
