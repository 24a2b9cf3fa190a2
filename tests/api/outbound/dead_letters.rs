//! Dead letters: a refused or expired update holds back its referral until it is replayed or
//! discarded; discarding forgets what Ocean never received.

use std::time::Duration;

use serde_json::json;

use crate::support::app::{metric, spawn_app_with};
use crate::support::fixtures::fixture;
use crate::support::flow::*;
use crate::support::ocean::{Answer, MockOcean};
use crate::support::poll::eventually;

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
    // The worker counts a send after saving its state, so the count may trail the state.
    eventually("both sends counted as delivered", async || {
        sends(&app.metrics().await, "delivered") == Some(2.0)
    })
    .await;
    let page = app.metrics().await;
    assert_eq!(metric(&page, "relay_outbox_dead_letters", &[]), Some(0.0));
    assert_eq!(metric(&page, "relay_outbox_pending", &[]), Some(0.0));
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
