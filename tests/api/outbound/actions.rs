//! What a clinic sends beyond a status change, as Ocean's own clients do: a referral closed as
//! completed, booking instructions, a forward to another listing, a correction of its service
//! or category, and where Ocean takes the referrer next. Each message is checked by Medplum's
//! R4 validator and taken by the stand-in Ocean, which refuses what Ocean would.

use serde_json::{Value, json};

use crate::support::app::spawn_app_with;
use crate::support::fixtures::{fixture, unique_v011};
use crate::support::flow::*;
use crate::support::ocean::MockOcean;
use crate::support::peers::assert_valid_r4;
use crate::support::watch_list::{CARDIO, message};

/// Ocean's own message `fixture` about the referral, made now with `changes` (see
/// [`message`]).
async fn from_ocean(
    app: &crate::support::app::TestApp,
    fixture: &str,
    changes: &[(&str, &str, &str)],
) {
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let mut changes = changes.to_vec();
    changes.push(("Bundle", "timestamp", &now));
    let answer = app
        .deliver("default", message(fixture, REF, CARDIO, &changes))
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
}

/// Ocean's third-party redirect extension on a Task.
const REDIRECT: &str = "https://ocean.cognisantmd.com/ext-ocean-third-party-redirect-url";

/// The full URL named by `reference` in `bundle`, resolved to its resource.
fn entry<'a>(bundle: &'a Value, reference: &str) -> &'a Value {
    bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["fullUrl"] == reference)
        .map(|e| &e["resource"])
        .unwrap_or_else(|| panic!("{reference} is not in {bundle}"))
}

/// Accepts the update at `path` and waits until Ocean took it; the message Ocean received.
async fn sent(
    app: &crate::support::app::TestApp,
    ocean: &MockOcean,
    path: &str,
    body: Value,
) -> Value {
    let id = accepted(app, &format!("/api/v1/referrals/{REF}/{path}"), body).await;
    let update = until_state(app, id, "delivered").await;
    assert_eq!(update["attempts"], 1, "{update}");
    ocean.delivered().last().cloned().unwrap()
}

#[tokio::test]
async fn a_referral_is_completed_once_started_and_booked_or_in_progress_never_while_new() {
    let (app, ocean) = setup("form").await;
    let path = format!("/api/v1/referrals/{REF}/status");
    // A new referral is not completed: Ocean's Completed folder follows work done.
    let reply = post(&app, &path, json!({"status": "completed"})).await;
    assert_eq!(reply.status, 409, "{}", reply.body);
    assert!(
        reply.body["detail"]
            .as_str()
            .unwrap()
            .contains("from requested to completed")
    );
    status(&app, "accepted").await;
    let reply = post(&app, &path, json!({"status": "completed"})).await;
    assert_eq!(reply.status, 409, "accepted and not booked: {}", reply.body);

    // Booked through the relay, then cancelled in Ocean (a proposed Appointment, set later):
    // not booked any more.
    accepted(
        &app,
        &format!("/api/v1/referrals/{REF}/appointments"),
        json!({"start": "2026-12-02T14:30:00-05:00"}),
    )
    .await;
    from_ocean(&app, "update-appointment-proposed.json", &[]).await;
    let reply = post(&app, &path, json!({"status": "completed"})).await;
    assert_eq!(reply.status, 409, "cancelled in Ocean: {}", reply.body);

    // Booked, it may be closed as completed, as Ocean itself closes booked referrals.
    accepted(
        &app,
        &format!("/api/v1/referrals/{REF}/appointments"),
        json!({"start": "2026-12-03T14:30:00-05:00", "confirmed": true}),
    )
    .await;
    let message = sent(
        &app,
        &ocean,
        "status",
        json!({"status": "completed", "reason": "Seen"}),
    )
    .await;
    assert_message(&message, "notify-update-process-request", "Task");
    let task = resource(&message, "Task");
    assert_eq!(task["status"], "completed");
    assert_eq!(task["statusReason"]["text"], "Seen");
    // Completed is the end: nothing follows it.
    let reply = post(&app, &path, json!({"status": "in-progress"})).await;
    assert_eq!(reply.status, 409, "{}", reply.body);
    // A status Ocean does not act on is refused as such.
    let reply = post(&app, &path, json!({"status": "failed"})).await;
    assert_eq!(reply.status, 422, "{}", reply.body);
    assert_valid_r4(&ocean.delivered());
}

#[tokio::test]
async fn an_in_progress_referral_is_completed_without_a_booking() {
    let (app, ocean) = setup("form").await;
    status(&app, "accepted").await;
    status(&app, "in-progress").await;
    let message = sent(&app, &ocean, "status", json!({"status": "completed"})).await;
    assert_eq!(resource(&message, "Task")["status"], "completed");
    let tasks: Vec<String> = ocean
        .delivered()
        .iter()
        .map(|m| resource(m, "Task")["status"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(tasks, ["accepted", "in-progress", "completed"]);
}

#[tokio::test]
async fn booking_instructions_reach_ocean_as_a_proposed_appointment_for_the_patient() {
    let (app, ocean) = setup("form").await;
    let text = "Call 555-0100 to choose a time; bring your latest ECG.";
    let message = sent(&app, &ocean, "booking-instructions", json!({"text": text})).await;
    assert_message(&message, "notify-add-appointment", "Appointment");
    let appointment = resource(&message, "Appointment");
    assert_eq!(appointment["status"], "proposed");
    assert_eq!(appointment["patientInstruction"], text);
    assert_eq!(appointment["description"], text);
    assert!(appointment.get("start").is_none() && appointment.get("end").is_none());
    assert_eq!(
        appointment["basedOn"][0]["reference"],
        format!("ServiceRequest/{REF}")
    );
    // Instructions are not a booking: there is no appointment to cancel.
    let cancel = call(
        &app,
        reqwest::Method::DELETE,
        &format!("/api/v1/referrals/{REF}/appointments/current"),
        None,
    )
    .await;
    assert_eq!(cancel.status, 404, "{}", cancel.body);
    let path = format!("/api/v1/referrals/{REF}/booking-instructions");
    for bad in ["  ", "\u{0}\u{1}", "Call us\u{7}"] {
        let reply = post(&app, &path, json!({"text": bad})).await;
        assert_eq!(reply.status, 400, "{bad:?}: {}", reply.body);
    }
    // Once an appointment is booked, instructions would contradict it.
    accepted(
        &app,
        &format!("/api/v1/referrals/{REF}/appointments"),
        json!({"start": "2026-12-20T10:00:00Z", "confirmed": true}),
    )
    .await;
    let reply = post(&app, &path, json!({"text": "Call us"})).await;
    assert_eq!(reply.status, 409, "{}", reply.body);
    assert!(
        reply.body["detail"]
            .as_str()
            .unwrap()
            .contains("booked appointment")
    );
    assert_valid_r4(&ocean.delivered());
}

#[tokio::test]
async fn a_forward_names_the_listing_on_a_new_service_request_that_replaces_the_referrals() {
    let (app, ocean) = setup("form").await;
    let path = format!("/api/v1/referrals/{REF}/forward");
    // The fixture's category is text only: Ocean needs SNOMED CT, so the clinic must give one.
    let reply = post(&app, &path, json!({"listing_ref": "LISTING-77"})).await;
    assert_eq!(reply.status, 409, "{}", reply.body);
    let detail = reply.body["detail"].as_str().unwrap();
    assert!(
        detail.contains("SNOMED CT") && detail.contains("`category`"),
        "{detail}"
    );
    let reply = post(
        &app,
        &path,
        json!({"listing_ref": "two words", "category": "394579002"}),
    )
    .await;
    assert_eq!(reply.status, 400, "{}", reply.body);

    let message = sent(
        &app,
        &ocean,
        "forward",
        json!({"listing_ref": "LISTING-77", "category": "394579002", "reason": "Better served by the rapid clinic"}),
    )
    .await;
    // The referral had no Task yet: the forward's Task is its first.
    assert_message(&message, "notify-add-process-request", "Task");
    let task = resource(&message, "Task");
    assert_eq!(task["status"], "requested");
    assert_eq!(
        task["statusReason"]["text"],
        "Better served by the rapid clinic"
    );
    let request = entry(&message, task["basedOn"][0]["reference"].as_str().unwrap());
    assert_eq!(request["resourceType"], "ServiceRequest");
    assert_eq!(
        request["replaces"][0]["reference"],
        format!("ServiceRequest/{REF}")
    );
    assert_eq!(
        request["category"][0]["coding"][0],
        json!({"system": "http://snomed.info/sct", "code": "394579002"})
    );
    // The patient, by health card number: the original's urn:uuid holds only in its message.
    assert_eq!(request["subject"]["identifier"]["value"], "9999999999");
    let listing = entry(
        &message,
        request["performer"][0]["reference"].as_str().unwrap(),
    );
    assert_eq!(listing["resourceType"], "PractitionerRole");
    assert_eq!(
        listing["identifier"][0],
        json!({
            "system": format!("{}/svc/fhir/v1/NamingSystem/id-referral-target-reference", ocean.base_url()),
            "value": "LISTING-77"
        })
    );
    assert_eq!(
        task["owner"]["reference"],
        request["performer"][0]["reference"]
    );

    // The referral's Task is `requested` again: its next status starts from there.
    let update = post(
        &app,
        &format!("/api/v1/referrals/{REF}/status"),
        json!({"status": "in-progress"}),
    )
    .await;
    assert_eq!(update.status, 409, "{}", update.body);
    assert!(
        update.body["detail"]
            .as_str()
            .unwrap()
            .contains("from requested")
    );
    assert_valid_r4(&ocean.delivered());
}

#[tokio::test]
async fn a_forward_takes_the_referrals_own_snomed_category_and_is_refused_once_completed() {
    let ocean = MockOcean::start().await;
    let app = spawn_app_with(&config(&ocean, "form")).await;
    // The referral as Ocean sends it when its listing's category is coded.
    let mut coded: Value =
        serde_json::from_slice(&fixture("v0.11-add-service-request.json")).unwrap();
    let request = coded["entry"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|e| e["resource"]["resourceType"] == "ServiceRequest")
        .unwrap();
    request["resource"]["category"] = json!([{"coding": [{"system": "http://snomed.info/sct", "code": "394579002", "display": "Cardiology"}], "text": "Cardiology"}]);
    let coded = coded.to_string();
    let body = unique_v011(&coded, REF, "b0110000-0000-4000-8000-0000000000c1");
    assert_eq!(app.deliver("default", body).await.status, 200);

    let message = sent(
        &app,
        &ocean,
        "forward",
        json!({"listing_ref": "LISTING-12"}),
    )
    .await;
    let task = resource(&message, "Task");
    let request = entry(&message, task["basedOn"][0]["reference"].as_str().unwrap());
    assert_eq!(
        request["category"][0]["coding"][0],
        json!({"system": "http://snomed.info/sct", "code": "394579002", "display": "Cardiology"})
    );
    assert_valid_r4(&ocean.delivered());

    status(&app, "accepted").await;
    status(&app, "in-progress").await;
    status(&app, "completed").await;
    let reply = post(
        &app,
        &format!("/api/v1/referrals/{REF}/forward"),
        json!({"listing_ref": "LISTING-13"}),
    )
    .await;
    assert_eq!(reply.status, 409, "{}", reply.body);
    assert!(
        reply.body["detail"]
            .as_str()
            .unwrap()
            .contains("from completed to forwarded")
    );
}

#[tokio::test]
async fn a_correction_sends_the_referrals_service_request_with_its_new_service_or_category() {
    let (app, ocean) = setup("form").await;
    let message = sent(
        &app,
        &ocean,
        "correction",
        json!({"service": {"code": "183519002", "display": "Referral to cardiology service"}}),
    )
    .await;
    assert_message(&message, "notify-data-correction", "ServiceRequest");
    let request = resource(&message, "ServiceRequest");
    assert_eq!(request["id"], REF);
    assert_eq!(
        request["code"]["coding"][0],
        json!({"system": "http://snomed.info/sct", "code": "183519002", "display": "Referral to cardiology service"})
    );
    // What was not corrected is kept as Ocean sent it.
    assert_eq!(request["category"], json!([{"text": "Cardiology"}]));
    assert_eq!(request["status"], "active");
    assert_eq!(request["identifier"][0]["value"], REF);
    assert_eq!(request["subject"]["identifier"]["value"], "9999999999");
    assert_eq!(
        resource(&message, "MessageHeader")["focus"][0]["reference"],
        format!("{}/svc/fhir/v1/ServiceRequest/{REF}", ocean.base_url())
    );

    let message = sent(
        &app,
        &ocean,
        "correction",
        json!({"category": {"code": "394579002", "display": "Cardiology"}}),
    )
    .await;
    let request = resource(&message, "ServiceRequest");
    assert_eq!(request["category"][0]["coding"][0]["code"], "394579002");
    assert_eq!(
        request["code"],
        json!({"text": "Rapid access chest pain assessment"})
    );

    let path = format!("/api/v1/referrals/{REF}/correction");
    assert_eq!(post(&app, &path, json!({})).await.status, 400);
    let reply = post(
        &app,
        &path,
        json!({"service": {"system": "not a uri", "code": "1"}}),
    )
    .await;
    assert_eq!(reply.status, 400, "{}", reply.body);

    // A referral whose ServiceRequest status R4 does not know (`pending-review`, read
    // leniently when it came): its correction carries `active`, not the unknown code
    // (schemathesis found the 422 this gave).
    assert_eq!(
        app.deliver("default", fixture("unknown-servicerequest-status.json"))
            .await
            .status,
        200
    );
    let id = accepted(
        &app,
        "/api/v1/referrals/TST-0012-CCCC/correction",
        json!({"service": {"code": "183519002"}}),
    )
    .await;
    until_state(&app, id, "delivered").await;
    let message = ocean.delivered().last().cloned().unwrap();
    assert_eq!(resource(&message, "ServiceRequest")["status"], "active");
    assert_valid_r4(&ocean.delivered());
}

#[tokio::test]
async fn a_redirect_goes_on_its_task_and_the_sites_default_on_the_first_task_the_relay_sends() {
    let ocean = MockOcean::start().await;
    // A space in the site's page: sent percent-encoded, a valid FHIR uri.
    let toml = config(&ocean, "form").replace(
        "token_auth = \"form\"",
        "token_auth = \"form\"\nredirect_url = \"https://clinic.example/after referral\"",
    );
    let app = spawn_app_with(&toml).await;
    for fixture_name in [
        "v0.11-add-service-request.json",
        "process-request-task.json",
    ] {
        assert_eq!(
            app.deliver("default", fixture(fixture_name)).await.status,
            200
        );
    }
    // Ocean's messages carried its Task: the relay's first Task message updates it, and still
    // carries the site's page.
    ocean.has_task(REF, "ocean-task-0011");
    let redirect = |message: &Value| {
        resource(message, "Task")["extension"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["url"] == REDIRECT)
            .map(|e| e["valueUri"].as_str().unwrap().to_owned())
    };
    let first = sent(&app, &ocean, "status", json!({"status": "on-hold"})).await;
    assert_message(&first, "notify-update-process-request", "Task");
    assert_eq!(
        redirect(&first).as_deref(),
        Some("https://clinic.example/after%20referral")
    );
    let own = sent(
        &app,
        &ocean,
        "status",
        json!({"status": "in-progress", "redirect_url": "https://clinic.example/next step?why=área"}),
    )
    .await;
    assert_eq!(
        redirect(&own).as_deref(),
        Some("https://clinic.example/next%20step?why=%C3%A1rea")
    );
    let later = sent(&app, &ocean, "status", json!({"status": "on-hold"})).await;
    assert_eq!(redirect(&later), None);

    let path = format!("/api/v1/referrals/{REF}/status");
    let long = format!("https://clinic.example/{}", "é".repeat(1000));
    for bad in [
        "/relative/page",
        "ftp://clinic.example/x",
        "https://user:pw@clinic.example/",
        long.as_str(),
    ] {
        let reply = post(
            &app,
            &path,
            json!({"status": "in-progress", "redirect_url": bad}),
        )
        .await;
        assert_eq!(reply.status, 400, "{bad}: {}", reply.body);
        assert!(
            reply.body["detail"]
                .as_str()
                .unwrap()
                .contains("redirect_url")
        );
    }
    assert_valid_r4(&ocean.delivered());
}
