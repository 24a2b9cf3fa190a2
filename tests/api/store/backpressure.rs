//! The store's write queue is the webhook's backpressure: a delivery that finds it full is
//! answered 503 with `Retry-After`, and nothing of it is stored.

use std::sync::Arc;

use referral_relay::domain::ReferralRef;

use crate::support::app::{FHIR_JSON, spawn_sled_app_with};
use crate::support::fixtures::{fixture, unique_v011};

/// With one place in the queue, a flood of concurrent deliveries finds it full while the writer
/// flushes. Each is either acknowledged and stored, or refused with 503, `Retry-After` and an
/// OperationOutcome and not stored at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_write_queue_answers_503_and_stores_only_what_it_acknowledged() {
    let app = Arc::new(spawn_sled_app_with(
        "[storage]\nwrite_queue = 1\n[server]\n# All 64 connections come from one address.\nmax_connections_per_client = 128\n",
    ).await);
    let template = String::from_utf8(fixture("v0.11-add-service-request.json")).unwrap();
    let (mut stored, mut refused) = (0, 0);
    // Rounds until the queue has been found full (almost always the first).
    for round in 0..20 {
        let mut posts = Vec::new();
        for i in 0..64 {
            let name = format!("FLOOD-{round}-{i}");
            let body = unique_v011(&template, &name, &name);
            let app = Arc::clone(&app);
            posts.push(tokio::spawn(async move {
                let response = app
                    .client
                    .post(app.url("/fhir/default/$process-message"))
                    .header("content-type", FHIR_JSON)
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                let status = response.status().as_u16();
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap().to_owned());
                let body: serde_json::Value = response.json().await.unwrap();
                (name, status, retry_after, body)
            }));
        }
        for post in posts {
            let (name, status, retry_after, body) = post.await.unwrap();
            let referral = app
                .store
                .referral(&ReferralRef::parse(&name).unwrap())
                .await
                .unwrap();
            match status {
                200 => {
                    assert!(referral.is_some(), "{name} acknowledged but not stored");
                    stored += 1;
                }
                503 => {
                    assert!(referral.is_none(), "{name} refused but stored");
                    assert_eq!(retry_after.as_deref(), Some("5"));
                    assert_eq!(body["resourceType"], "OperationOutcome");
                    assert_eq!(body["issue"][0]["code"], "transient");
                    refused += 1;
                }
                other => panic!("{name}: unexpected status {other}: {body}"),
            }
        }
        if refused > 0 {
            break;
        }
    }
    assert!(refused > 0, "the queue was never full");
    assert!(stored > 0, "nothing was stored");
    // What was stored is exactly what the feed holds.
    let events = app.store.events_after(0, 10_000).await.unwrap();
    assert_eq!(events.len(), stored);
}
