//! The endpoint Ocean notifies: its validation challenge, its secret (in the URL or a header),
//! the site number, replays, and what it refuses.

use serde_json::json;

use super::{PATH, notification, notify};
use crate::support::app::spawn_app_with;
use crate::support::flow::get_ok;
use crate::support::patient_ocean::{self, PatientOcean, SECRET};
use crate::support::poll::eventually;

#[tokio::test]
async fn the_validation_challenge_is_echoed_once_the_secret_is_right() {
    let ocean = PatientOcean::start().await;
    let app = spawn_app_with(&patient_ocean::config(&ocean, "")).await;
    let reply = notify(&app, &json!({"challenge": "c-8f2e1"})).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, json!({"challenge": "c-8f2e1"}));
    // By header, too.
    let response = app
        .client
        .post(app.url(PATH))
        .header("x-ocean-webhook-key", SECRET)
        .body(json!({"challenge": 42}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.json::<serde_json::Value>().await.unwrap(),
        json!({"challenge": 42})
    );
}

#[tokio::test]
async fn a_missing_or_wrong_secret_is_refused_by_url_and_by_header() {
    let ocean = PatientOcean::start().await;
    let app = spawn_app_with(&patient_ocean::config(
        &ocean,
        "[server]\nauth_failure_report_secs = 1\n",
    ))
    .await;
    let body = notification("690", "1759442545187t415674").to_string();
    let wrong = format!("{}x", &SECRET[..SECRET.len() - 1]);
    for (url, header) in [
        (PATH.to_owned(), None),
        (format!("{PATH}?k={wrong}"), None),
        (format!("{PATH}?k="), None),
        (PATH.to_owned(), Some(wrong.as_str())),
        (PATH.to_owned(), Some("")),
    ] {
        let mut request = app.client.post(app.url(&url)).body(body.clone());
        if let Some(value) = header {
            request = request.header("x-ocean-webhook-key", value);
        }
        let reply = crate::support::app::answer(request.send().await.unwrap()).await;
        assert_eq!(reply.status, 401, "{url} {header:?}");
        assert_eq!(reply.content_type, "application/fhir+json");
        assert!(reply.diagnostics().contains("secret"), "{}", reply.body);
    }
    // The challenge is not answered without the secret either.
    let reply = app
        .post(
            PATH,
            None,
            json!({"challenge": "c"}).to_string().into_bytes(),
        )
        .await;
    assert_eq!(reply.status, 401);
    // Another endpoint name: not found.
    let reply = app
        .post(
            &format!("/ocean/other/patient-engagement?k={SECRET}"),
            None,
            body.clone().into_bytes(),
        )
        .await;
    assert_eq!(reply.status, 404);
    assert_eq!(
        get_ok(&app, "/api/v1/patient-forms").await["patient_forms"],
        json!([])
    );
    assert!(ocean.seen().is_empty());
    // Refused callers are reported as every refused caller is: audited (here each second),
    // counted, never with the secret they sent.
    let mut audit = serde_json::Value::Null;
    eventually("the six refusals audited", async || {
        audit = get_ok(&app, "/api/v1/audit?limit=500").await;
        let refused: u64 = audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["action"] == "AUTH_FAILURE" && e["actor"] == "patient_engagement:clinic")
            .map(|e| e["details"]["count"].as_u64().unwrap())
            .sum();
        refused == 6
    })
    .await;
    assert!(!audit.to_string().contains(&wrong));
}

#[tokio::test]
async fn another_site_number_and_malformed_notifications_are_refused_and_not_stored() {
    let ocean = PatientOcean::start().await;
    let app = spawn_app_with(&patient_ocean::config(&ocean, "")).await;
    let mut other_site = notification("690", "s1");
    other_site["siteNum"] = json!(9999);
    let reply = notify(&app, &other_site).await;
    assert_eq!(reply.status, 403);
    assert!(reply.diagnostics().contains("siteNum"));
    let mut no_site = notification("690", "s1");
    no_site.as_object_mut().unwrap().remove("siteNum");
    assert_eq!(notify(&app, &no_site).await.status, 403);

    let reply = app
        .post(&format!("{PATH}?k={SECRET}"), None, b"{not json".to_vec())
        .await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.body["resourceType"], "OperationOutcome");
    for bad_ref in [json!("../admin"), json!(null), json!("a b")] {
        let mut bad = notification("690", "s1");
        bad["ref"] = bad_ref.clone();
        assert_eq!(notify(&app, &bad).await.status, 422, "{bad_ref}");
    }
    let mut bad_session = notification("690", "s1");
    bad_session["customProperties"]["oceanSessionId"] = json!("x&y=1");
    assert_eq!(notify(&app, &bad_session).await.status, 422);
    let huge = format!("{{\"pad\": \"{}\"}}", "x".repeat(100 * 1024));
    let reply = app
        .post(&format!("{PATH}?k={SECRET}"), None, huge.into_bytes())
        .await;
    assert_eq!(reply.status, 413);
    // Another type: acknowledged, not stored.
    let mut other_type = notification("690", "s1");
    other_type["type"] = json!("notify-something-else");
    let reply = notify(&app, &other_type).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body["status"], "ignored");
    assert_eq!(
        get_ok(&app, "/api/v1/patient-forms").await["patient_forms"],
        json!([])
    );
}

#[tokio::test]
async fn the_same_notification_twice_is_stored_once() {
    let ocean = PatientOcean::start().await;
    // Ocean down: the submission stays pending, only its recording counts here.
    ocean.down(Some(503));
    let app = spawn_app_with(&patient_ocean::config(&ocean, "")).await;
    let first = notify(&app, &notification("690", "1759442545187t415674")).await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.body["status"], "recorded");
    // Again, with the number as a string and another completion source: the same one.
    let mut again = notification("690", "1759442545187t415674");
    again["siteNum"] = json!(patient_ocean::SITE_NUM);
    again["customProperties"]["noteCompletionSource"] = json!("TABLET");
    let second = notify(&app, &again).await;
    assert_eq!(second.status, 200);
    assert_eq!(second.body["status"], "duplicate");
    assert_eq!(second.body["id"], first.body["id"]);
    // Another session is another submission.
    let third = notify(&app, &notification("690", "1759442545187t415675")).await;
    assert_eq!(third.body["status"], "recorded");
    let page = get_ok(&app, "/api/v1/patient-forms").await;
    let ids: Vec<u64> = page["patient_forms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(ids[0] < ids[1]);
    assert_eq!(page["next"], ids[1]);
    assert_eq!(page["patient_forms"][0]["completion_source"], "PORTAL");
    let audit = get_ok(&app, "/api/v1/audit?limit=500").await;
    let received = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "PATIENT_FORM_RECEIVED")
        .count();
    assert_eq!(received, 2, "{audit}");
    // Read on from the last: nothing more.
    let rest = get_ok(&app, &format!("/api/v1/patient-forms?after={}", ids[1])).await;
    assert_eq!(rest["patient_forms"], json!([]));
}
