//! Every fixture is stored, filed under the right referral, event and External Service ID, with
//! the fields the API and the CSV export need.

use referral_relay::domain::{ReferralRef, ServiceId};
use serde_json::Value;

use crate::support::app::{FHIR_JSON, TestApp, metric_series, spawn_app, spawn_app_with};
use crate::support::fixtures::{V011_REFERRAL, fixture};

fn referral(r: &str) -> ReferralRef {
    ReferralRef::parse(r).unwrap()
}

/// Posts a fixture and asserts the acknowledgement: 200, a response message Bundle whose
/// MessageHeader answers the request's MessageHeader with `ok`.
async fn deliver_ok(app: &TestApp, name: &str, request_header_id: &str) {
    let answer = app.deliver("default", fixture(name)).await;
    assert_eq!(answer.status, 200, "{name}: {}", answer.body);
    assert_eq!(answer.content_type, FHIR_JSON);
    let header = answer.response_header();
    assert_eq!(header["response"]["code"], "ok", "{name}");
    assert_eq!(
        header["response"]["identifier"], request_header_id,
        "{name}"
    );
}

#[tokio::test]
async fn every_fixture_is_stored_under_its_referral_event_and_service_id() {
    let app = spawn_app().await;
    // (fixture, request MessageHeader id, referral, event, External Service ID)
    let cases = [
        (
            "v0.11-add-service-request.json",
            "4c9a1f7e-0000-4000-8000-000000000011",
            "TST-0011-AAAA",
            "add-service-request",
            "CARDIO-RAPID-01",
        ),
        (
            "v0.10-add-service-request.json",
            "mh-0010-1",
            "TST-0010-BBBB",
            "add-service-request",
            "PHYSIO-EAST-02",
        ),
        (
            "update-task-accepted.json",
            "",
            "TST-0011-AAAA",
            "notify-update-service-request",
            "CARDIO-RAPID-01",
        ),
        (
            "update-appointment-proposed.json",
            "mh-upd-0003",
            "TST-0011-AAAA",
            "notify-update-service-request",
            "CARDIO-RAPID-01",
        ),
        (
            "update-appointment-booked.json",
            "",
            "TST-0011-AAAA",
            "notify-update-service-request",
            "CARDIO-RAPID-01",
        ),
        (
            "revoke-service-request.json",
            "mh-0010-6",
            "TST-0010-BBBB",
            "revoke-service-request",
            "PHYSIO-EAST-02",
        ),
        (
            "unknown-event-code.json",
            "",
            "TST-0011-AAAA",
            "notify-future-capability",
            "CARDIO-RAPID-01",
        ),
        (
            "unknown-servicerequest-status.json",
            "",
            "TST-0012-CCCC",
            "add-service-request",
            "CARDIO-RAPID-01",
        ),
    ];
    for (name, header_id, r, event, service) in cases {
        let body = fixture(name);
        let expected_header_id = if header_id.is_empty() {
            // No id on the MessageHeader: its fullUrl's UUID answers for it.
            let v: Value = serde_json::from_slice(&body).unwrap();
            let header = v["entry"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["resource"]["resourceType"] == "MessageHeader")
                .unwrap();
            header["resource"]["id"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| {
                    header["fullUrl"]
                        .as_str()
                        .unwrap()
                        .trim_start_matches("urn:uuid:")
                        .to_owned()
                })
        } else {
            header_id.to_owned()
        };
        deliver_ok(&app, name, &expected_header_id).await;

        let versions = app.store.versions(&referral(r)).await.unwrap();
        let latest = versions.last().expect("a stored version");
        assert_eq!(latest.event.as_str(), event, "{name}");
        assert_eq!(
            latest.service_id.as_ref().map(ServiceId::as_str),
            Some(service),
            "{name}"
        );
        let raw = app
            .store
            .payload(&referral(r), latest.version)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(raw.as_ref(), body.as_slice(), "{name}: raw bytes differ");
    }
    assert_eq!(
        app.store
            .versions(&referral("TST-0011-AAAA"))
            .await
            .unwrap()
            .len(),
        5
    );
    assert_eq!(
        app.store
            .versions(&referral("TST-0010-BBBB"))
            .await
            .unwrap()
            .len(),
        2
    );
    assert_eq!(app.store.events_after(0, 100).await.unwrap().len(), 8);

    let cardio = ServiceId::parse("CARDIO-RAPID-01").unwrap();
    assert_eq!(
        filed_under(&app, Some(&cardio)).await,
        ["TST-0011-AAAA", "TST-0012-CCCC"]
    );
}

/// The referrals filed under `service` (`None`: unassigned), sorted.
async fn filed_under(app: &TestApp, service: Option<&ServiceId>) -> Vec<String> {
    let all = app
        .store
        .referrals_modified(None, None, None, 10_000)
        .await
        .unwrap();
    let mut filed: Vec<String> = all
        .referrals
        .into_iter()
        .filter(|r| r.service_id.as_ref() == service)
        .map(|r| r.referral.to_string())
        .collect();
    filed.sort();
    filed
}

#[tokio::test]
async fn the_v011_fixture_yields_every_summary_field() {
    let app = spawn_app().await;
    deliver_ok(
        &app,
        "v0.11-add-service-request.json",
        "4c9a1f7e-0000-4000-8000-000000000011",
    )
    .await;

    let record = app
        .store
        .referral(&referral(V011_REFERRAL))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.version, 1);
    assert_eq!(record.latest_event.as_str(), "add-service-request");
    assert_eq!(record.integration.as_str(), "default");
    let s = &record.summary;
    assert_eq!(s.service_request_status.as_deref(), Some("active"));
    assert_eq!(s.patient_name.as_deref(), Some("Testpatient, Avery Jordan"));
    assert_eq!(s.patient_phone.as_deref(), Some("555-010-0142"));
    assert_eq!(
        s.patient_email.as_deref(),
        Some("avery.testpatient@example.test")
    );
    assert_eq!(s.referrer_name.as_deref(), Some("Dr. Morgan Fictional"));
    assert_eq!(s.referrer_professional_id.as_deref(), Some("77001"));
    assert_eq!(
        s.referring_site.as_deref(),
        Some("Synthetic Family Health Team")
    );
    assert_eq!(
        s.recipient_listing.as_deref(),
        Some("Synthetic Cardiology Rapid Access")
    );
    assert_eq!(
        s.description.as_deref(),
        Some("Rapid access chest pain assessment")
    );
    assert_eq!(s.authored_on.as_deref(), Some("2026-11-02T09:14:03-05:00"));
    assert_eq!(s.notes.len(), 1);
    assert!(s.notes[0].starts_with("<b>Reason for Referral:</b> Exertional chest pain"));
    assert_eq!(s.task_status, None);
    assert_eq!(s.appointment_start, None);

    let versions = app.store.versions(&referral(V011_REFERRAL)).await.unwrap();
    let v = &versions[0];
    assert_eq!(
        v.message_header_id.as_deref(),
        Some("4c9a1f7e-0000-4000-8000-000000000011")
    );
    assert_eq!(
        v.bundle_id.as_deref(),
        Some("b0110000-0000-4000-8000-000000000001")
    );
    assert_eq!(
        v.bundle_timestamp.as_deref(),
        Some("2026-11-02T09:15:27.123-05:00")
    );
    assert!(v.problems.is_empty(), "{:?}", v.problems);
    assert_eq!(
        v.size,
        fixture("v0.11-add-service-request.json").len() as u64
    );
}

#[tokio::test]
async fn the_v010_fixture_is_filed_by_the_destination_receiver_identifier() {
    let app = spawn_app().await;
    deliver_ok(&app, "v0.10-add-service-request.json", "mh-0010-1").await;
    let record = app
        .store
        .referral(&referral("TST-0010-BBBB"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.service_id.unwrap().as_str(), "PHYSIO-EAST-02");
    let s = &record.summary;
    assert_eq!(s.patient_name.as_deref(), Some("Samplefield, Riley"));
    assert_eq!(s.patient_phone.as_deref(), Some("555-010-0177"));
    assert_eq!(s.referrer_name.as_deref(), Some("Dr. Casey Placeholder"));
    assert_eq!(s.referrer_professional_id.as_deref(), Some("77002"));
    assert_eq!(
        s.referring_site.as_deref(),
        Some("Synthetic Walk-in Clinic")
    );
    assert_eq!(
        s.recipient_listing.as_deref(),
        Some("Synthetic Physiotherapy East")
    );
    assert_eq!(s.description.as_deref(), Some("Physiotherapy assessment"));

    deliver_ok(&app, "revoke-service-request.json", "mh-0010-6").await;
    let record = app
        .store
        .referral(&referral("TST-0010-BBBB"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.version, 2);
    assert_eq!(record.latest_event.as_str(), "revoke-service-request");
    assert_eq!(
        record.summary.service_request_status.as_deref(),
        Some("revoked")
    );
    // The revoke carries no Patient: the name from the first version is kept.
    assert_eq!(
        record.summary.patient_name.as_deref(),
        Some("Samplefield, Riley")
    );
}

#[tokio::test]
async fn updates_carry_task_status_and_appointments() {
    let app = spawn_app().await;
    let r = referral(V011_REFERRAL);
    deliver_ok(
        &app,
        "v0.11-add-service-request.json",
        "4c9a1f7e-0000-4000-8000-000000000011",
    )
    .await;

    app.deliver("default", fixture("update-task-accepted.json"))
        .await;
    let s = app.store.referral(&r).await.unwrap().unwrap().summary;
    assert_eq!(s.task_status.as_deref(), Some("accepted"));
    assert_eq!(s.task_status_reason.as_deref(), Some("Triaged: routine"));

    app.deliver("default", fixture("update-appointment-booked.json"))
        .await;
    let s = app.store.referral(&r).await.unwrap().unwrap().summary;
    assert_eq!(s.appointment_status.as_deref(), Some("booked"));
    assert_eq!(
        s.appointment_start.as_deref(),
        Some("2026-12-03T14:30:00-05:00")
    );

    app.deliver("default", fixture("update-appointment-proposed.json"))
        .await;
    let versions = app.store.versions(&r).await.unwrap();
    let cancelled = &versions.last().unwrap().summary;
    // Ocean reports a cancelled appointment as a proposed one with no start.
    assert_eq!(cancelled.appointment_status.as_deref(), Some("proposed"));
    assert_eq!(cancelled.appointment_start, None);
    assert_eq!(versions.len(), 4);
    // The referral's current state drops the cancelled booking's start, keeps the Task.
    let s = app.store.referral(&r).await.unwrap().unwrap().summary;
    assert_eq!(s.appointment_status.as_deref(), Some("proposed"));
    assert_eq!(s.appointment_start, None);
    assert_eq!(s.task_status.as_deref(), Some("accepted"));
    assert_eq!(s.patient_name.as_deref(), Some("Testpatient, Avery Jordan"));
    let numbers: Vec<u64> = versions.iter().map(|v| v.version).collect();
    assert_eq!(numbers, vec![1, 2, 3, 4]);
}

#[tokio::test]
async fn a_service_request_status_fhir_sdk_refuses_is_stored_with_the_problem_recorded() {
    let app = spawn_app().await;
    let answer = app
        .deliver("default", fixture("unknown-servicerequest-status.json"))
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let r = referral("TST-0012-CCCC");
    let record = app.store.referral(&r).await.unwrap().unwrap();
    assert_eq!(
        record.summary.service_request_status.as_deref(),
        Some("pending-review")
    );
    assert_eq!(
        record.summary.patient_name.as_deref(),
        Some("Mockridge, Jamie")
    );
    assert_eq!(
        record.summary.description.as_deref(),
        Some("Holter monitor")
    );
    let versions = app.store.versions(&r).await.unwrap();
    assert_eq!(versions[0].problems.len(), 1, "{:?}", versions[0].problems);
    assert!(versions[0].problems[0].starts_with("ServiceRequest "));
    assert!(versions[0].problems[0].contains("pending-review"));
}

/// The v0.11 fixture with the External Service ID removed from the target PractitionerRole.
fn without_service_id() -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(&fixture("v0.11-add-service-request.json")).unwrap();
    for entry in v["entry"].as_array_mut().unwrap() {
        if let Some(ids) = entry["resource"]["identifier"].as_array_mut() {
            ids.retain(|i| {
                !i["system"]
                    .as_str()
                    .unwrap_or("")
                    .ends_with("/id-referral-target-external-service")
            });
        }
    }
    serde_json::to_vec(&v).unwrap()
}

#[tokio::test]
async fn without_an_external_service_id_the_integration_default_applies() {
    let app = spawn_app_with("[integrations.default]\nauth = { scheme = \"none\" }\ndefault_service_id = \"INTAKE-MAIN\"\n").await;
    assert_eq!(
        app.deliver("default", without_service_id()).await.status,
        200
    );
    let record = app
        .store
        .referral(&referral(V011_REFERRAL))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.service_id.unwrap().as_str(), "INTAKE-MAIN");
}

#[tokio::test]
async fn without_any_service_id_the_referral_is_filed_as_unassigned() {
    let app = spawn_app().await;
    assert_eq!(
        app.deliver("default", without_service_id()).await.status,
        200
    );
    let record = app
        .store
        .referral(&referral(V011_REFERRAL))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.service_id, None);
    assert_eq!(filed_under(&app, None).await, [V011_REFERRAL]);
}

#[tokio::test]
async fn an_update_without_a_service_id_stays_where_the_referral_is_filed() {
    let app = spawn_app_with("[integrations.default]\nauth = { scheme = \"none\" }\ndefault_service_id = \"INTAKE-MAIN\"\n").await;
    app.deliver("default", fixture("v0.11-add-service-request.json"))
        .await;
    let mut update: Value = serde_json::from_slice(&without_service_id()).unwrap();
    update["id"] = "another-bundle".into();
    let answer = app
        .deliver("default", serde_json::to_vec(&update).unwrap())
        .await;
    assert_eq!(answer.status, 200);
    let record = app
        .store
        .referral(&referral(V011_REFERRAL))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.version, 2);
    assert_eq!(record.service_id.unwrap().as_str(), "CARDIO-RAPID-01");
    let intake = ServiceId::parse("INTAKE-MAIN").unwrap();
    assert!(filed_under(&app, Some(&intake)).await.is_empty());
}

#[tokio::test]
async fn the_alternative_webhook_paths_and_media_types_are_accepted() {
    let app = spawn_app().await;
    for (path, ct, bundle) in [
        ("/fhir/default", "application/json", "b-1"),
        (
            "/fhir/default/Bundle",
            "application/fhir+json; charset=utf-8",
            "b-2",
        ),
        (
            "/fhir/default/$process-message",
            "Application/JSON;charset=UTF-8",
            "b-3",
        ),
        // The `$` percent-encoded, as some clients send it.
        (
            "/fhir/default/%24process-message",
            "application/fhir+json",
            "b-4",
        ),
    ] {
        let mut v: Value =
            serde_json::from_slice(&fixture("v0.11-add-service-request.json")).unwrap();
        v["id"] = bundle.into();
        let answer = app
            .post(path, Some(ct), serde_json::to_vec(&v).unwrap())
            .await;
        assert_eq!(answer.status, 200, "{path} {ct}: {}", answer.body);
    }
    assert_eq!(
        app.store
            .versions(&referral(V011_REFERRAL))
            .await
            .unwrap()
            .len(),
        4
    );
}

#[tokio::test]
async fn event_codes_outside_the_integration_list_are_acknowledged_and_not_stored() {
    let app = spawn_app_with(
        "[integrations.default]\nauth = { scheme = \"none\" }\nevents = [\"add-service-request\"]\n",
    )
    .await;
    let answer = app
        .deliver("default", fixture("unknown-event-code.json"))
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.response_header()["response"]["code"], "ok");
    assert_eq!(
        answer.body["entry"][1]["resource"]["issue"][0]["severity"],
        "information"
    );
    assert!(
        answer
            .response_note()
            .unwrap()
            .contains("not among those integration 'default' accepts")
    );
    assert!(app.store.events_after(0, 10).await.unwrap().is_empty());

    let page = app.metrics().await;
    let delivered = |outcome| {
        metric_series(&page, "relay_deliveries_total", &[("outcome", outcome)])
            .iter()
            .sum::<f64>()
    };
    assert_eq!(delivered("ignored"), 1.0);
    assert_eq!(delivered("stored"), 0.0);

    assert_eq!(
        app.deliver("default", fixture("v0.11-add-service-request.json"))
            .await
            .status,
        200
    );
    assert_eq!(app.store.events_after(0, 10).await.unwrap().len(), 1);
}

#[tokio::test]
async fn health_and_readiness_answer() {
    let app = spawn_app().await;
    let health = app.get("/healthz").await;
    assert_eq!(health.status, 200);
    assert_eq!(health.body["status"], "ok");
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.body["store"], "writable");
    assert_eq!(ready.body["worker"], "alive");
    app.stop().await;
}

#[tokio::test]
async fn ignored_events_are_acknowledged_even_without_a_referral_reference() {
    let app = spawn_app_with(
        "[integrations.default]\nauth = { scheme = \"none\" }\nevents = [\"notify-update-service-request\"]\n",
    )
    .await;
    let answer = app
        .deliver("default", fixture("bad/no-referral-ref.json"))
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(
        answer
            .response_note()
            .unwrap()
            .contains("acknowledged and not stored")
    );
    assert!(app.store.events_after(0, 10).await.unwrap().is_empty());
    // An unreadable event code is still refused: there is nothing to decide on.
    let answer = app
        .deliver("default", fixture("bad/no-event-code.json"))
        .await;
    assert_eq!(answer.status, 422);
}

#[tokio::test]
async fn retention_purges_old_versions_but_never_a_referrals_latest() {
    let app = spawn_app().await;
    for name in [
        "v0.11-add-service-request.json",
        "update-task-accepted.json",
        "v0.10-add-service-request.json",
    ] {
        assert_eq!(app.deliver("default", fixture(name)).await.status, 200);
    }
    // Everything so far is "old" against a cutoff in the future.
    let cutoff = time::OffsetDateTime::now_utc() + time::Duration::days(1);
    assert_eq!(app.store.purge_versions_before(cutoff).await.unwrap(), 1);
    let aaaa = referral(V011_REFERRAL);
    let versions = app.store.versions(&aaaa).await.unwrap();
    assert!(versions[0].purged && versions[0].summary == Default::default());
    assert!(app.store.payload(&aaaa, 1).await.unwrap().is_none());
    assert!(!versions[1].purged);
    assert!(app.store.payload(&aaaa, 2).await.unwrap().is_some());
    // A referral with a single version keeps it.
    assert!(
        app.store
            .payload(&referral("TST-0010-BBBB"), 1)
            .await
            .unwrap()
            .is_some()
    );
    // The referral's current summary is untouched.
    let record = app.store.referral(&aaaa).await.unwrap().unwrap();
    assert_eq!(
        record.summary.patient_name.as_deref(),
        Some("Testpatient, Avery Jordan")
    );
    assert_eq!(
        app.store.purge_versions_before(cutoff).await.unwrap(),
        0,
        "purging twice does nothing"
    );
}
