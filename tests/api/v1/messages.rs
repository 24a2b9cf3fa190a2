//! Every message Ocean sends, reflected in the referral: revocations with their reason, Task and
//! Appointment process-request updates, data corrections, messages from the requester, added
//! attachments and splits; what each version changed; and status updates naming Ocean's Task.

use serde_json::{Value, json};

use crate::support::app::{Answer, TestApp, answer, spawn_app_with};
use crate::support::fixtures::fixture;
use crate::support::flow::{self, REF, assert_message, resource, until_state};

const KEY: &str = "emr-key-0123456789";
const CARDIO_KEY: &str = "cardio-key-0123456789";

const CONFIG: &str = r#"
[api.clients.emr]
key = "emr-key-0123456789"

[api.clients.cardio]
key = "cardio-key-0123456789"
service_ids = ["ELSEWHERE-01"]
"#;

async fn api(app: &TestApp, path: &str) -> Answer {
    api_as(app, path, KEY).await
}

async fn api_as(app: &TestApp, path: &str, key: &str) -> Answer {
    let request = app
        .client
        .get(app.url(path))
        .header("authorization", format!("Bearer {key}"));
    answer(request.send().await.unwrap()).await
}

async fn deliver(app: &TestApp, name: &str) {
    let reply = app.deliver("default", fixture(name)).await;
    assert_eq!(reply.status, 200, "{name}: {}", reply.body);
}

/// The referral's summary as the API shows it, after `name` was delivered.
async fn after(app: &TestApp, name: &str) -> Value {
    deliver(app, name).await;
    let reply = api(app, &format!("/api/v1/referrals/{REF}")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body["referral"].clone()
}

#[tokio::test]
async fn each_message_ocean_sends_is_reflected_in_the_summary() {
    let app = spawn_app_with(CONFIG).await;
    let r = after(&app, "v0.11-add-service-request.json").await;
    assert_eq!(r["latest_change"], "new-referral");
    assert_eq!(r["status"], "active");
    assert_eq!(r["task_id"], Value::Null);
    assert_eq!(r["documents"].as_array().unwrap().len(), 1);
    assert_eq!(r["documents"][0]["title"], "Referral letter");
    assert_eq!(r["documents"][0]["inline"], true);

    // CA:eReC's process-request update carrying Ocean's own Task.
    let r = after(&app, "process-request-task.json").await;
    assert_eq!(r["latest_change"], "task-updated");
    assert_eq!(r["task_id"], "ocean-task-0011");
    assert_eq!(r["status"], "in-progress");
    assert_eq!(r["task_business_status"], "Pending booking");

    // The same event carrying an Appointment, as CA:eReC 1.1.0 moved appointment updates.
    let r = after(&app, "process-request-appointment.json").await;
    assert_eq!(r["latest_change"], "appointment-updated");
    assert_eq!(r["appointment_status"], "booked");
    assert_eq!(r["appointment_start"], "2026-12-10T09:30:00-05:00");
    assert_eq!(
        r["status"], "in-progress",
        "an Appointment keeps the Task status"
    );
    assert_eq!(r["task_id"], "ocean-task-0011", "the Task is remembered");

    let r = after(&app, "data-correction.json").await;
    assert_eq!(r["latest_change"], "data-corrected");
    assert_eq!(r["patient_phone"], "555-010-0177");

    let r = after(&app, "communication-from-requester.json").await;
    assert_eq!(r["latest_change"], "message-from-requester");
    assert_eq!(
        r["latest_message"],
        json!({
            "text": "Echo results attached; please advise on urgency.",
            "sent": "2026-11-05T12:00:00-05:00",
            "sender": "Dr. Quinn Sampleton"
        })
    );

    // An update that brings a DocumentReference the referral did not have.
    let r = after(&app, "attachment-added.json").await;
    assert_eq!(r["latest_change"], "attachment-added");
    let documents = r["documents"].as_array().unwrap();
    assert_eq!(documents.len(), 2, "{documents:?}");
    assert_eq!(documents[1]["id"], "doc-0011-echo");
    assert_eq!(documents[1]["content_type"], "application/pdf");
    assert!(
        documents[1]["url"]
            .as_str()
            .unwrap()
            .ends_with("/DocumentReference/doc-0011-echo/$binary")
    );
    // The message stays the latest one until another comes.
    assert_eq!(r["latest_message"]["sender"], "Dr. Quinn Sampleton");

    let r = after(&app, "revoke-with-reason.json").await;
    assert_eq!(r["latest_change"], "revoked");
    assert_eq!(
        r["status"], "revoked",
        "revocation ends the Task's workflow"
    );
    assert_eq!(r["service_request_status"], "revoked");
    assert_eq!(
        r["revocation_reason"],
        "Patient no longer wishes to be seen"
    );

    // A referral split off this one names it.
    deliver(&app, "referral-split.json").await;
    let split = api(&app, "/api/v1/referrals/TST-0011-AAAB").await;
    assert_eq!(split.body["referral"]["latest_change"], "referral-split");
    assert_eq!(split.body["referral"]["split_from"], REF);

    // The listing shows the same current state.
    let list = api(&app, "/api/v1/referrals?limit=10").await;
    let listed = list.body["referrals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["referral"] == REF)
        .unwrap()
        .clone();
    assert_eq!(listed["status"], "revoked");
    assert_eq!(
        listed["latest_message"]["sent"],
        "2026-11-05T12:00:00-05:00"
    );
    assert_eq!(listed["appointment_start"], "2026-12-10T09:30:00-05:00");
}

#[tokio::test]
async fn feed_events_name_what_changed_and_where_the_referral_stands() {
    let app = spawn_app_with(CONFIG).await;
    for name in [
        "v0.11-add-service-request.json",
        "process-request-task.json",
        "communication-from-requester.json",
        "data-correction.json",
    ] {
        deliver(&app, name).await;
    }
    // The same message again changes nothing, and is one version.
    deliver(&app, "data-correction.json").await;
    let feed = api(&app, "/api/v1/events?after=0").await;
    assert_eq!(feed.status, 200, "{}", feed.body);
    let events = feed.body["events"].as_array().unwrap();
    assert_eq!(events.len(), 4);
    let changes = |n: usize| -> Vec<&str> {
        events[n]["changes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect()
    };
    assert!(changes(0).contains(&"patient_name"), "{:?}", changes(0));
    for field in ["task_id", "task_status", "task_business_status"] {
        assert!(changes(1).contains(&field), "{field}: {:?}", changes(1));
    }
    assert!(!changes(1).contains(&"patient_name"));
    assert_eq!(
        changes(2),
        ["message_sender", "message_sent", "message_text"]
    );
    assert_eq!(changes(3), ["patient_phone"]);
    // No values in the feed entry: it is not sealed at rest.
    assert!(!events[3].to_string().contains("555-010-0177"));
    // Each event shows where the referral stands now, as Ocean last described it.
    for event in events {
        let current = &event["current"];
        assert_eq!(current["status"], "in-progress");
        assert_eq!(current["latest_change"], "data-corrected");
        assert_eq!(current["latest_message"]["sender"], "Dr. Quinn Sampleton");
        assert_eq!(current["version"], 4);
    }
}

#[tokio::test]
async fn a_version_lists_the_fields_and_resources_it_changed() {
    let app = spawn_app_with(CONFIG).await;
    for name in [
        "v0.11-add-service-request.json",
        "process-request-task.json",
        "data-correction.json",
    ] {
        deliver(&app, name).await;
    }
    let changes = api(&app, &format!("/api/v1/referrals/{REF}/versions/2/changes")).await;
    assert_eq!(changes.status, 200, "{}", changes.body);
    let body = &changes.body;
    assert_eq!(body["version"], 2);
    assert_eq!(body["previous_version"], 1);
    assert_eq!(body["event"], "notify-update-process-request");
    assert_eq!(body["latest_change"], "task-updated");
    let field = |name: &str| {
        body["fields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["field"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} in {body}"))
    };
    assert_eq!(
        field("task_status"),
        json!({"field": "task_status", "before": null, "after": "in-progress"})
    );
    assert_eq!(field("task_id")["after"], "ocean-task-0011");
    let resources = body["resources"].as_array().unwrap();
    assert!(
        resources.contains(&json!({"change": "added", "resource_type": "Task",
            "name": "Task/ocean-task-0011", "elements": []})),
        "{resources:?}"
    );
    // The new referral's eForm is not repeated in the update: not carried, listed as removed.
    assert!(
        resources
            .iter()
            .any(|r| r["change"] == "removed" && r["resource_type"] == "QuestionnaireResponse")
    );

    // A correction: one field, and the Patient changed in exactly one element.
    let changes = api(&app, &format!("/api/v1/referrals/{REF}/versions/3/changes")).await;
    assert_eq!(
        changes.body["fields"],
        json!([{"field": "patient_phone", "before": "555-010-0142", "after": "555-010-0177"}])
    );
    let patient = changes.body["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["resource_type"] == "Patient")
        .unwrap()
        .clone();
    assert_eq!(patient["change"], "changed");
    assert_eq!(patient["elements"], json!(["telecom"]));

    // The first version lists what it set, against nothing.
    let first = api(&app, &format!("/api/v1/referrals/{REF}/versions/1/changes")).await;
    assert_eq!(first.body["previous_version"], Value::Null);
    assert!(
        first.body["resources"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["change"] == "added")
    );

    for (path, status) in [
        (format!("/api/v1/referrals/{REF}/versions/9/changes"), 404),
        (format!("/api/v1/referrals/{REF}/versions/x/changes"), 400),
        ("/api/v1/referrals/NOPE/versions/1/changes".to_owned(), 404),
    ] {
        let reply = api(&app, &path).await;
        assert_eq!(reply.status, status, "{path}: {}", reply.body);
        assert_eq!(reply.content_type, "application/problem+json");
    }
    let outside = api_as(
        &app,
        &format!("/api/v1/referrals/{REF}/versions/2/changes"),
        CARDIO_KEY,
    )
    .await;
    assert_eq!(outside.status, 403, "{}", outside.body);
}

/// Ocean's messages carried its Task: the relay's status update names it, as an update, and the
/// stand-in Ocean (which refuses any other Task id, or a second Task) takes it.
#[tokio::test]
async fn status_updates_name_oceans_task() {
    let (app, ocean) = flow::setup("form").await;
    ocean.has_task(REF, "ocean-task-0011");
    deliver(&app, "process-request-task.json").await;
    let id = flow::accepted(
        &app,
        &format!("/api/v1/referrals/{REF}/status"),
        json!({"status": "on-hold", "reason": "Awaiting echo"}),
    )
    .await;
    until_state(&app, id, "delivered").await;
    let sent = ocean.delivered();
    assert_eq!(sent.len(), 1);
    assert_message(&sent[0], "notify-update-process-request", "Task");
    let task = resource(&sent[0], "Task");
    assert_eq!(task["id"], "ocean-task-0011");
    assert_eq!(task["status"], "on-hold");
    // Not a UUID, so its full URL is its address on Ocean's FHIR base.
    let full_url = sent[0]["entry"][1]["fullUrl"].as_str().unwrap();
    assert!(
        full_url.starts_with(&ocean.base_url())
            && full_url.ends_with("/svc/fhir/v1/Task/ocean-task-0011"),
        "{full_url}"
    );
}

/// Only the requester can cancel a referral: once revoked, it takes no new status or booking
/// (409, nothing sent), while a message can still go.
#[tokio::test]
async fn a_revoked_referral_takes_no_new_status_or_booking() {
    let (app, ocean) = flow::setup("form").await;
    deliver(&app, "revoke-with-reason.json").await;
    let path = |tail: &str| format!("/api/v1/referrals/{REF}/{tail}");
    let refused = flow::post(&app, &path("status"), json!({"status": "accepted"})).await;
    assert_eq!(refused.status, 409, "{}", refused.body);
    assert!(refused.body["detail"].as_str().unwrap().contains("revoked"));
    let booking = flow::post(
        &app,
        &path("appointments"),
        json!({"start": "2026-12-10T09:30:00-05:00", "confirmed": true}),
    )
    .await;
    assert_eq!(booking.status, 409, "{}", booking.body);
    let message = flow::accepted(
        &app,
        &path("messages"),
        json!({"text": "Noted, thank you."}),
    )
    .await;
    until_state(&app, message, "delivered").await;
    let sent = ocean.delivered();
    assert_eq!(sent.len(), 1, "only the message went out");
    assert_message(
        &sent[0],
        "send-communication-from-provider",
        "Communication",
    );
}

/// Without a Task from Ocean the relay adds its own, and Ocean's rule holds the other way: a
/// Task id Ocean does not know is refused (the stand-in is not lenient).
#[tokio::test]
async fn the_stand_in_ocean_refuses_a_task_it_does_not_know() {
    let (app, ocean) = flow::setup("form").await;
    let first = flow::status(&app, "accepted").await;
    until_state(&app, first, "delivered").await;
    let task = resource(&ocean.delivered()[0], "Task")["id"].clone();
    assert_message(&ocean.delivered()[0], "notify-add-process-request", "Task");
    // Ocean then holds its own Task for the referral, under another id.
    ocean.has_task(REF, "ocean-task-other");
    let second = flow::status(&app, "in-progress").await;
    let dead = until_state(&app, second, "dead").await;
    assert!(
        dead["last_error"].as_str().unwrap().contains("422"),
        "{dead}"
    );
    assert_ne!(task, "ocean-task-other");
}
