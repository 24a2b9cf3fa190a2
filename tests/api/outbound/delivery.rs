//! Delivery to Ocean: tokens (form and Basic, refreshed on 401), retries with backoff and
//! `Retry-After`, and per-referral order.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::flow::*;
use crate::support::ocean::{Answer, CLIENT_ID, CLIENT_SECRET};

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
