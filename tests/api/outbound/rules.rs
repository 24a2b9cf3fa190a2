//! What a clinic may send: Task statuses Ocean acts on and the transition table, appointments
//! booked and cancelled, and a status changed in Ocean's own screens.

use serde_json::json;

use crate::support::fixtures::fixture;
use crate::support::flow::*;

#[tokio::test]
async fn statuses_are_checked_against_what_ocean_acts_on_and_the_state_table() {
    let (app, _ocean) = setup("form").await;
    let path = format!("/api/v1/referrals/{REF}/status");
    let reply = post(&app, &path, json!({"status": "failed"})).await;
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

/// Ocean retries for 96 hours, so its messages can cross: an update made at 10:00 that arrives
/// after one made at 11:00 is kept and marked late, but the referral stays as the 11:00 one left
/// it (it was rolled back from accepted to received, and the clinic's next step got 409).
#[tokio::test]
async fn an_update_made_earlier_that_arrives_later_does_not_roll_the_status_back() {
    let (app, _ocean) = setup("form").await;
    let message = |status: &str, id: &str, at: &str| {
        let mut bundle: serde_json::Value =
            serde_json::from_slice(&fixture("update-task-accepted.json")).unwrap();
        bundle["id"] = id.into();
        bundle["timestamp"] = at.into();
        for entry in bundle["entry"].as_array_mut().unwrap() {
            if entry["resource"]["resourceType"] == "Task" {
                entry["resource"]["status"] = status.into();
            }
        }
        serde_json::to_vec(&bundle).unwrap()
    };
    let path = format!("/api/v1/referrals/{REF}");
    let newer = message("accepted", "crossed-1100", "2026-11-06T11:00:00-05:00");
    let older = message("received", "crossed-1000", "2026-11-06T10:00:00-05:00");
    assert_eq!(app.deliver("default", newer).await.status, 200);
    assert_eq!(app.deliver("default", older).await.status, 200);

    let referral = call(&app, reqwest::Method::GET, &path, None).await;
    assert_eq!(
        referral.body["referral"]["status"], "accepted",
        "{}",
        referral.body
    );
    let versions = referral.body["versions"].as_array().unwrap();
    let last = versions.last().unwrap();
    assert_eq!(last["late"], true, "{last}");
    assert_eq!(last["sent_at"], "2026-11-06T10:00:00-05:00");
    assert_eq!(versions[versions.len() - 2]["late"], false);
    // What a version changed has one definition: each version's changes page names the fields
    // the feed recorded when it was stored, and the late message changed none.
    let feed = call(&app, reqwest::Method::GET, "/api/v1/events?limit=500", None).await;
    let names = |list: &serde_json::Value| -> Vec<String> {
        list.as_array()
            .unwrap()
            .iter()
            .map(|f| f.get("field").unwrap_or(f).as_str().unwrap().to_owned())
            .collect()
    };
    let mut compared = 0;
    for event in feed.body["events"].as_array().unwrap() {
        if event["referral"] != REF {
            continue;
        }
        let n = &event["version"];
        let changes = call(
            &app,
            reqwest::Method::GET,
            &format!("{path}/versions/{n}/changes"),
            None,
        )
        .await;
        let fields = names(&changes.body["fields"]);
        assert_eq!(fields, names(&event["changes"]), "version {n}");
        if last["version"] == *n {
            assert!(fields.is_empty(), "the late version changed {fields:?}");
        }
        compared += 1;
    }
    assert_eq!(compared, versions.len());
    // The clinic's next step from accepted is taken.
    status(&app, "in-progress").await;

    // A message made later than the current one is current again.
    let latest = message("on-hold", "crossed-1200", "2026-11-06T12:00:00-05:00");
    assert_eq!(app.deliver("default", latest).await.status, 200);
    let referral = call(&app, reqwest::Method::GET, &path, None).await;
    assert_eq!(
        referral.body["referral"]["task_status"], "on-hold",
        "{}",
        referral.body
    );

    // A time ahead of the arrival counts as the arrival: a mistyped year cannot freeze the Task
    // against every later message.
    let ahead = message("accepted", "crossed-3000", "3000-01-01T00:00:00Z");
    assert_eq!(app.deliver("default", ahead).await.status, 200);
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let current = message("in-progress", "crossed-now", &now);
    assert_eq!(app.deliver("default", current).await.status, 200);
    let referral = call(&app, reqwest::Method::GET, &path, None).await;
    assert_eq!(
        referral.body["referral"]["task_status"], "in-progress",
        "{}",
        referral.body
    );
    let versions = referral.body["versions"].as_array().unwrap();
    let ahead = &versions[versions.len() - 2];
    assert!(
        ahead["problems"]
            .to_string()
            .contains("made after it arrived"),
        "{ahead}"
    );
}
