//! Referrals for the watch-list's tests: the synthetic fixtures under another reference and
//! External Service ID, with the dates a test needs on each side of a threshold (the message's
//! own time, the referral's `authoredOn`, the Appointment's start, the Task's status).

use serde_json::Value;

use super::app::TestApp;
use super::fixtures::fixture;

/// The fixtures' own referral reference and External Service ID.
const FIXTURE_REF: &str = "TST-0011-AAAA";
const FIXTURE_SERVICE: &str = "CARDIO-RAPID-01";

pub const CARDIO: &str = "CARDIO-RAPID-01";
pub const PHYSIO: &str = "PHYSIO-EAST-02";

/// One of the v0.11 fixtures (`v0.11-add-service-request.json`, `update-task-accepted.json`,
/// `update-appointment-booked.json`, `revoke-with-reason.json`) for `referral` under `service`,
/// with `changes` applied: `(resource type or "Bundle", field, value)`, each setting the field
/// on every such resource.
pub fn message(
    name: &str,
    referral: &str,
    service: &str,
    changes: &[(&str, &str, &str)],
) -> Vec<u8> {
    let text = String::from_utf8(fixture(name))
        .unwrap()
        .replace(FIXTURE_REF, referral)
        .replace(FIXTURE_SERVICE, service);
    let mut bundle: Value = serde_json::from_str(&text).unwrap();
    // A Bundle id of its own, so no two deliveries of a test are taken for one.
    bundle["id"] = Value::from(uuid::Uuid::new_v4().to_string());
    for (kind, field, value) in changes {
        if *kind == "Bundle" {
            bundle[*field] = Value::from(*value);
            continue;
        }
        let mut found = false;
        for entry in bundle["entry"].as_array_mut().unwrap() {
            if entry["resource"]["resourceType"] == *kind {
                entry["resource"][*field] = Value::from(*value);
                found = true;
            }
        }
        assert!(found, "{name} has no {kind}");
    }
    // An update's ServiceRequest leaves out `authoredOn`, so the referral keeps the one it was
    // sent with (the fixtures' updates repeat the fixture's own).
    if name != "v0.11-add-service-request.json" {
        for entry in bundle["entry"].as_array_mut().unwrap() {
            if entry["resource"]["resourceType"] == "ServiceRequest" {
                entry["resource"]
                    .as_object_mut()
                    .unwrap()
                    .remove("authoredOn");
            }
        }
    }
    serde_json::to_vec(&bundle).unwrap()
}

/// Delivers `body` to the `default` integration; it must be stored.
pub async fn deliver(app: &TestApp, body: Vec<u8>) {
    let answer = app.deliver("default", body).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
}

/// A new referral, sent (`authoredOn`) at `authored`.
pub async fn new_referral(app: &TestApp, referral: &str, service: &str, authored: &str) {
    deliver(
        app,
        message(
            "v0.11-add-service-request.json",
            referral,
            service,
            &[("ServiceRequest", "authoredOn", authored)],
        ),
    )
    .await;
}

/// Ocean's Task for `referral` now `status`, in a message made at `at`.
pub async fn ocean_task(app: &TestApp, referral: &str, service: &str, status: &str, at: &str) {
    deliver(
        app,
        message(
            "update-task-accepted.json",
            referral,
            service,
            &[("Task", "status", status), ("Bundle", "timestamp", at)],
        ),
    )
    .await;
}

/// Ocean's Appointment for `referral` booked from `start` (half an hour), in a message made at
/// `at`.
pub async fn ocean_appointment(
    app: &TestApp,
    referral: &str,
    service: &str,
    start: &str,
    at: &str,
) {
    let start_at =
        time::OffsetDateTime::parse(start, &time::format_description::well_known::Rfc3339).unwrap();
    let end = (start_at + time::Duration::minutes(30))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    deliver(
        app,
        message(
            "update-appointment-booked.json",
            referral,
            service,
            &[
                ("Appointment", "start", start),
                ("Appointment", "end", &end),
                ("Bundle", "timestamp", at),
            ],
        ),
    )
    .await;
}

/// The requester revokes `referral`, in a message made at `at`.
pub async fn revoke(app: &TestApp, referral: &str, service: &str, at: &str) {
    deliver(
        app,
        message(
            "revoke-with-reason.json",
            referral,
            service,
            &[("Bundle", "timestamp", at)],
        ),
    )
    .await;
}
