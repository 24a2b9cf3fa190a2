//! The same delivery twice is one stored version; a changed Bundle is a new one.

use referral_relay::domain::ReferralRef;
use serde_json::Value;

use crate::support::app::{metric_series, spawn_app};
use crate::support::fixtures::{V011_REFERRAL, fixture};

fn v011() -> ReferralRef {
    ReferralRef::parse(V011_REFERRAL).unwrap()
}

#[tokio::test]
async fn the_same_delivery_twice_stores_one_version() {
    let app = spawn_app().await;
    let body = fixture("v0.11-add-service-request.json");
    let first = app.deliver("default", body.clone()).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.response_note(), None);
    let second = app.deliver("default", body).await;
    assert_eq!(second.status, 200);
    assert_eq!(second.response_header()["response"]["code"], "ok");
    assert!(
        second
            .response_note()
            .unwrap()
            .contains("already stored as version 1")
    );
    assert_eq!(app.store.versions(&v011()).await.unwrap().len(), 1);
    assert_eq!(app.store.events_after(0, 10).await.unwrap().len(), 1);
}

#[tokio::test]
async fn identical_deliveries_in_flight_at_once_store_one_version() {
    let app = spawn_app().await;
    let body = fixture("v0.11-add-service-request.json");
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let client = app.client.clone();
        let url = app.url("/fhir/default/$process-message");
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            let r = client
                .post(url)
                .header("content-type", "application/fhir+json")
                .body(body)
                .send()
                .await
                .unwrap();
            r.status().as_u16()
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), 200);
    }
    assert_eq!(app.store.versions(&v011()).await.unwrap().len(), 1);
    assert_eq!(app.store.events_after(0, 100).await.unwrap().len(), 1);
    let page = app.metrics().await;
    let delivered = |outcome| {
        metric_series(&page, "relay_deliveries_total", &[("outcome", outcome)])
            .iter()
            .sum::<f64>()
    };
    assert_eq!(delivered("stored"), 1.0);
    assert_eq!(delivered("duplicate"), 15.0);
}

#[tokio::test]
async fn a_changed_bundle_for_the_same_referral_is_a_new_version() {
    let app = spawn_app().await;
    let original: Value =
        serde_json::from_slice(&fixture("v0.11-add-service-request.json")).unwrap();
    app.deliver("default", serde_json::to_vec(&original).unwrap())
        .await;

    let mut changed = original.clone();
    changed["id"] = "b0110000-0000-4000-8000-0000000000ff".into();
    changed["timestamp"] = "2026-11-02T10:00:00-05:00".into();
    assert_eq!(
        app.deliver("default", serde_json::to_vec(&changed).unwrap())
            .await
            .status,
        200
    );

    // A sender reusing a Bundle.id for different content is not silently dropped either.
    let mut same_id = original.clone();
    same_id["timestamp"] = "2026-11-02T11:00:00-05:00".into();
    assert_eq!(
        app.deliver("default", serde_json::to_vec(&same_id).unwrap())
            .await
            .status,
        200
    );

    let versions = app.store.versions(&v011()).await.unwrap();
    assert_eq!(versions.len(), 3);
    assert_eq!(
        versions[1].bundle_id.as_deref(),
        Some("b0110000-0000-4000-8000-0000000000ff")
    );
}
