//! What a clinic may send: Task statuses Ocean acts on and the transition table, appointments
//! booked and cancelled, and a status changed in Ocean's own screens.

use serde_json::json;

use crate::support::fixtures::fixture;

use super::flow::*;

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
