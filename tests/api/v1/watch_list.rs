//! The watch-list (`src/watch_list.rs`, `GET /api/v1/watch-list`): each rule with referrals
//! dated to fall on each side of its threshold, read through the library at chosen moments
//! (deliveries are stored as received now), and the API over HTTP: its scope, its filters and
//! its refusal of an unknown kind.

use referral_relay::config::WatchListConfig;
use referral_relay::domain::{ReferralRef, ServiceId};
use referral_relay::store::referral_updates;
use referral_relay::watch_list::{WatchEntry, WatchFilter, WatchKind, watch_list};
use serde_json::json;
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};

use crate::support::app::{TestApp, spawn_app_with};
use crate::support::at_rest::patient_details;
use crate::support::flow::{self, accepted};
use crate::support::ocean::MockOcean;
use crate::support::watch_list::{
    CARDIO, PHYSIO, new_referral, ocean_appointment, ocean_task, revoke,
};

/// A recent sending date: no referral sent then nears Ocean's archival in these tests unless
/// a test makes it.
const RECENT: &str = "2026-11-30T10:00:00Z";
/// Long enough ago that Ocean's 365 days have passed.
const LONG_AGO: &str = "2025-10-01T00:00:00Z";

fn at(text: &str) -> OffsetDateTime {
    OffsetDateTime::parse(text, &Rfc3339).unwrap()
}

fn text(at: OffsetDateTime) -> String {
    at.replace_nanosecond(0).unwrap().format(&Rfc3339).unwrap()
}

fn config(overdue_days: u32, by_service: &[(&str, u32)]) -> WatchListConfig {
    WatchListConfig {
        overdue_days,
        overdue_days_by_service: by_service
            .iter()
            .map(|(s, d)| (ServiceId::parse(s).unwrap(), *d))
            .collect(),
        archival_warning_days: 30,
        closed_by_ocean_days: 14,
    }
}

/// The relay with an API client and an Ocean site (a stand-in), so the clinic can send updates.
async fn with_site() -> (TestApp, MockOcean) {
    let ocean = MockOcean::start().await;
    let app = spawn_app_with(&flow::config(&ocean, "form")).await;
    (app, ocean)
}

/// Every entry at `now`.
async fn entries(app: &TestApp, config: &WatchListConfig, now: OffsetDateTime) -> Vec<WatchEntry> {
    watch_list(app.store.as_ref(), config, now, &WatchFilter::default())
        .await
        .unwrap()
        .entries
}

/// The entry of `kind` for `referral`, if listed.
fn find<'a>(list: &'a [WatchEntry], referral: &str, kind: WatchKind) -> Option<&'a WatchEntry> {
    list.iter()
        .find(|e| e.referral.as_str() == referral && e.kind == kind)
}

/// When `referral` arrived (its first version was received).
async fn arrived(app: &TestApp, referral: &str) -> OffsetDateTime {
    app.store
        .referral(&ReferralRef::parse(referral).unwrap())
        .await
        .unwrap()
        .unwrap()
        .created_at
}

async fn clinic_status(app: &TestApp, referral: &str, status: &str) {
    accepted(
        app,
        &format!("/api/v1/referrals/{referral}/status"),
        json!({"status": status, "reason": "Triaged"}),
    )
    .await;
}

async fn clinic_books(app: &TestApp, referral: &str, start: OffsetDateTime) {
    accepted(
        app,
        &format!("/api/v1/referrals/{referral}/appointments"),
        json!({"start": text(start), "confirmed": true}),
    )
    .await;
}

#[tokio::test]
async fn overdue_counts_the_days_since_arrival_per_service_until_the_clinic_gives_a_status() {
    let (app, _ocean) = with_site().await;
    new_referral(&app, "WL-OVD-CARDIO", CARDIO, RECENT).await;
    new_referral(&app, "WL-OVD-PHYSIO", PHYSIO, RECENT).await;
    // The clinic said something through the relay; or acted in Ocean, which says so.
    new_referral(&app, "WL-OVD-ANSWERED", PHYSIO, RECENT).await;
    clinic_status(&app, "WL-OVD-ANSWERED", "received").await;
    new_referral(&app, "WL-OVD-IN-OCEAN", PHYSIO, RECENT).await;
    ocean_task(
        &app,
        "WL-OVD-IN-OCEAN",
        PHYSIO,
        "accepted",
        "2026-11-30T12:00:00Z",
    )
    .await;
    let config = config(14, &[(CARDIO, 7)]);

    // CARDIO allows 7 days.
    let cardio = arrived(&app, "WL-OVD-CARDIO").await;
    let list = entries(&app, &config, cardio + Duration::days(6)).await;
    assert!(
        find(&list, "WL-OVD-CARDIO", WatchKind::Overdue).is_none(),
        "{list:?}"
    );
    let list = entries(&app, &config, cardio + Duration::days(8)).await;
    let entry = find(&list, "WL-OVD-CARDIO", WatchKind::Overdue).expect("overdue after 8 days");
    assert_eq!(entry.since, cardio + Duration::days(7));
    assert_eq!(entry.service_id.as_ref().map(|s| s.as_str()), Some(CARDIO));
    assert!(
        entry
            .reason
            .contains("service CARDIO-RAPID-01 allows 7 days"),
        "{}",
        entry.reason
    );
    assert!(
        find(&list, "WL-OVD-PHYSIO", WatchKind::Overdue).is_none(),
        "{list:?}"
    );

    // Every other service, 14.
    let physio = arrived(&app, "WL-OVD-PHYSIO").await;
    let list = entries(&app, &config, physio + Duration::days(13)).await;
    assert!(
        find(&list, "WL-OVD-PHYSIO", WatchKind::Overdue).is_none(),
        "{list:?}"
    );
    let list = entries(&app, &config, physio + Duration::days(15)).await;
    let entry = find(&list, "WL-OVD-PHYSIO", WatchKind::Overdue).expect("overdue after 15 days");
    assert_eq!(entry.since, physio + Duration::days(14));
    for answered in ["WL-OVD-ANSWERED", "WL-OVD-IN-OCEAN"] {
        assert!(
            find(&list, answered, WatchKind::Overdue).is_none(),
            "{answered}: {list:?}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn a_passed_appointment_is_listed_until_a_status_follows_it() {
    let (app, _ocean) = with_site().await;
    let config = config(14, &[]);
    // Booked in Ocean for 2026-12-03 19:30 UTC.
    let start = at("2026-12-03T14:30:00-05:00");
    new_referral(&app, "WL-APT-OCEAN", CARDIO, RECENT).await;
    ocean_appointment(
        &app,
        "WL-APT-OCEAN",
        CARDIO,
        &text(start),
        "2026-11-30T12:00:00Z",
    )
    .await;
    let list = entries(&app, &config, start - Duration::hours(1)).await;
    assert!(
        find(&list, "WL-APT-OCEAN", WatchKind::AppointmentPassed).is_none(),
        "{list:?}"
    );
    let list = entries(&app, &config, start + Duration::hours(1)).await;
    let entry = find(&list, "WL-APT-OCEAN", WatchKind::AppointmentPassed).expect("passed");
    assert_eq!(entry.since, start);
    assert!(
        entry.reason.contains("2026-12-03 19:30 UTC"),
        "{}",
        entry.reason
    );

    // Ocean's Task moved after the appointment: a status followed it.
    new_referral(&app, "WL-APT-OCEAN-THEN-TASK", CARDIO, RECENT).await;
    ocean_appointment(
        &app,
        "WL-APT-OCEAN-THEN-TASK",
        CARDIO,
        &text(start),
        "2026-11-30T12:00:00Z",
    )
    .await;
    ocean_task(
        &app,
        "WL-APT-OCEAN-THEN-TASK",
        CARDIO,
        "in-progress",
        "2026-12-05T12:00:00Z",
    )
    .await;

    // Booked by the clinic: two days ahead, and two days ago (then a status, or none).
    let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
    new_referral(&app, "WL-APT-AHEAD", PHYSIO, RECENT).await;
    clinic_books(&app, "WL-APT-AHEAD", now + Duration::days(2)).await;
    new_referral(&app, "WL-APT-PAST", PHYSIO, RECENT).await;
    clinic_books(&app, "WL-APT-PAST", now - Duration::days(2)).await;
    new_referral(&app, "WL-APT-PAST-THEN-STATUS", PHYSIO, RECENT).await;
    clinic_books(&app, "WL-APT-PAST-THEN-STATUS", now - Duration::days(2)).await;
    clinic_status(&app, "WL-APT-PAST-THEN-STATUS", "accepted").await;

    let list = entries(&app, &config, now + Duration::days(1)).await;
    let listed: Vec<&str> = list
        .iter()
        .filter(|e| e.kind == WatchKind::AppointmentPassed)
        .map(|e| e.referral.as_str())
        .collect();
    assert_eq!(listed, ["WL-APT-OCEAN", "WL-APT-PAST"], "{list:?}");
    assert_eq!(
        find(&list, "WL-APT-PAST", WatchKind::AppointmentPassed)
            .unwrap()
            .since,
        now - Duration::days(2)
    );
    let list = entries(&app, &config, now + Duration::days(3)).await;
    let entry = find(&list, "WL-APT-AHEAD", WatchKind::AppointmentPassed).expect("passed");
    assert_eq!(entry.since, now + Duration::days(2));
    app.stop().await;
}

#[tokio::test]
async fn a_revocation_after_the_clinic_acted_is_listed_and_one_before_is_not() {
    let (app, _ocean) = with_site().await;
    let config = config(14, &[]);
    // Revocations made "in the future" count as made on arrival: after the clinic's status.
    let later = "2099-01-01T00:00:00Z";
    new_referral(&app, "WL-REV-ACTED", CARDIO, RECENT).await;
    clinic_status(&app, "WL-REV-ACTED", "accepted").await;
    revoke(&app, "WL-REV-ACTED", CARDIO, later).await;
    new_referral(&app, "WL-REV-UNTOUCHED", CARDIO, RECENT).await;
    revoke(&app, "WL-REV-UNTOUCHED", CARDIO, later).await;
    // The clinic answered the revocation (a message to the referrer).
    new_referral(&app, "WL-REV-ANSWERED", CARDIO, RECENT).await;
    clinic_status(&app, "WL-REV-ANSWERED", "accepted").await;
    revoke(&app, "WL-REV-ANSWERED", CARDIO, later).await;
    accepted(
        &app,
        "/api/v1/referrals/WL-REV-ANSWERED/messages",
        json!({"text": "Noted: closing our file."}),
    )
    .await;

    let list = entries(&app, &config, OffsetDateTime::now_utc()).await;
    let revoked: Vec<&WatchEntry> = list
        .iter()
        .filter(|e| e.kind == WatchKind::RevokedAfterAction)
        .collect();
    assert_eq!(revoked.len(), 1, "{list:?}");
    assert_eq!(revoked[0].referral.as_str(), "WL-REV-ACTED");
    let status = referral_updates(app.store.as_ref(), &revoked[0].referral)
        .await
        .unwrap()[0]
        .created_at;
    assert!(revoked[0].since >= status, "{:?}", revoked[0]);
    assert!(
        revoked[0].reason.contains("after the clinic's update"),
        "{}",
        revoked[0].reason
    );
    // Revoked referrals are not overdue: nothing is left to do but this.
    let list = entries(
        &app,
        &config,
        OffsetDateTime::now_utc() + Duration::days(30),
    )
    .await;
    assert!(
        list.iter().all(|e| e.kind != WatchKind::Overdue),
        "{list:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn nearing_archival_follows_the_latest_of_oceans_three_rules() {
    let (app, _ocean) = with_site().await;
    let config = config(14, &[]);
    // 365 days after sending decides: sent 2025-12-20 12:00, completed 2026-11-10.
    new_referral(&app, "WL-ARC-SENT", CARDIO, "2025-12-20T12:00:00Z").await;
    ocean_task(
        &app,
        "WL-ARC-SENT",
        CARDIO,
        "completed",
        "2026-11-10T12:00:00Z",
    )
    .await;
    // 30 days after the terminal status decides: completed 2026-11-20.
    new_referral(&app, "WL-ARC-TERMINAL", CARDIO, LONG_AGO).await;
    ocean_task(
        &app,
        "WL-ARC-TERMINAL",
        CARDIO,
        "completed",
        "2026-11-20T00:00:00Z",
    )
    .await;
    // 30 days after the last appointment decides: booked for 2026-12-03 19:30 UTC.
    new_referral(&app, "WL-ARC-APPOINTMENT", CARDIO, LONG_AGO).await;
    ocean_appointment(
        &app,
        "WL-ARC-APPOINTMENT",
        CARDIO,
        "2026-12-03T19:30:00Z",
        "2026-11-05T00:00:00Z",
    )
    .await;
    ocean_task(
        &app,
        "WL-ARC-APPOINTMENT",
        CARDIO,
        "completed",
        "2026-11-10T00:00:00Z",
    )
    .await;
    // Declined by the clinic through the relay: 30 days after its update.
    new_referral(&app, "WL-ARC-DECLINED", PHYSIO, LONG_AGO).await;
    clinic_status(&app, "WL-ARC-DECLINED", "rejected").await;
    let declined = referral_updates(
        app.store.as_ref(),
        &ReferralRef::parse("WL-ARC-DECLINED").unwrap(),
    )
    .await
    .unwrap()[0]
        .created_at;
    // Not in a terminal state: Ocean keeps it, however old.
    new_referral(&app, "WL-ARC-OPEN", CARDIO, LONG_AGO).await;
    ocean_task(
        &app,
        "WL-ARC-OPEN",
        CARDIO,
        "accepted",
        "2026-11-10T00:00:00Z",
    )
    .await;

    let cases = [
        (
            "WL-ARC-SENT",
            at("2026-12-20T12:00:00Z"),
            "365 days after it was sent, 2025-12-20",
        ),
        (
            "WL-ARC-TERMINAL",
            at("2026-12-20T00:00:00Z"),
            "30 days after its terminal status, 2026-11-20",
        ),
        (
            "WL-ARC-APPOINTMENT",
            at("2027-01-02T19:30:00Z"),
            "30 days after its last appointment, 2026-12-03",
        ),
        (
            "WL-ARC-DECLINED",
            declined + Duration::days(30),
            "30 days after its terminal status",
        ),
    ];
    for (referral, archival, rule) in cases {
        // Inside the 30-day warning window.
        let list = entries(&app, &config, archival - Duration::days(29)).await;
        let entry = find(&list, referral, WatchKind::NearingArchival)
            .unwrap_or_else(|| panic!("{referral} nearing archival: {list:?}"));
        assert_eq!(entry.archival_at, Some(archival), "{referral}");
        assert!(entry.reason.contains(rule), "{referral}: {}", entry.reason);
        assert!(find(&list, "WL-ARC-OPEN", WatchKind::NearingArchival).is_none());
        // Outside it, and once Ocean has archived it.
        for now in [archival - Duration::days(31), archival + Duration::hours(1)] {
            let list = entries(&app, &config, now).await;
            assert!(
                find(&list, referral, WatchKind::NearingArchival).is_none(),
                "{referral} at {now}: {list:?}"
            );
            assert!(find(&list, "WL-ARC-OPEN", WatchKind::NearingArchival).is_none());
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn a_referral_ocean_closed_itself_is_labelled_as_oceans_and_listed_until_the_clinic_answers()
{
    let (app, _ocean) = with_site().await;
    let config = config(14, &[]);
    let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
    let closed = now - Duration::days(2);
    // Booked in Ocean, then closed by Ocean's nightly job: the clinic never completed it.
    new_referral(&app, "WL-CLO-OCEAN", CARDIO, RECENT).await;
    let appointment = now - Duration::days(9);
    ocean_appointment(
        &app,
        "WL-CLO-OCEAN",
        CARDIO,
        &text(appointment),
        &text(now - Duration::days(20)),
    )
    .await;
    ocean_task(&app, "WL-CLO-OCEAN", CARDIO, "completed", &text(closed)).await;
    // Completed by the clinic through the relay; Ocean's echo of it is not Ocean's closing.
    new_referral(&app, "WL-CLO-CLINIC", CARDIO, RECENT).await;
    for status in ["accepted", "in-progress", "completed"] {
        clinic_status(&app, "WL-CLO-CLINIC", status).await;
    }
    ocean_task(&app, "WL-CLO-CLINIC", CARDIO, "completed", &text(now)).await;
    // Closed by Ocean, then answered by the clinic (a message to the referrer).
    new_referral(&app, "WL-CLO-ANSWERED", PHYSIO, RECENT).await;
    ocean_task(&app, "WL-CLO-ANSWERED", PHYSIO, "completed", &text(closed)).await;
    accepted(
        &app,
        "/api/v1/referrals/WL-CLO-ANSWERED/messages",
        json!({"text": "Seen on the 3rd; closing on our side too."}),
    )
    .await;

    let list = entries(&app, &config, now + Duration::hours(1)).await;
    let entry = find(&list, "WL-CLO-OCEAN", WatchKind::ClosedByOcean)
        .unwrap_or_else(|| panic!("closed by Ocean: {list:?}"));
    assert_eq!(entry.since, closed);
    assert!(
        entry
            .reason
            .contains("without the clinic completing it through the relay")
            && entry.reason.contains(&text(appointment)[..10]),
        "{}",
        entry.reason
    );
    assert!(
        find(&list, "WL-CLO-CLINIC", WatchKind::ClosedByOcean).is_none(),
        "{list:?}"
    );
    assert!(
        find(&list, "WL-CLO-ANSWERED", WatchKind::ClosedByOcean).is_none(),
        "{list:?}"
    );
    // Its terminal state is labelled as Ocean's; the clinic's own completion is not.
    let facts = |referral: &'static str| {
        let app = &app;
        async move {
            let reference = ReferralRef::parse(referral).unwrap();
            let record = app.store.referral(&reference).await.unwrap().unwrap();
            let updates = referral_updates(app.store.as_ref(), &reference)
                .await
                .unwrap();
            referral_relay::watch_list::Facts::read(&record, &updates)
        }
    };
    assert_eq!(
        facts("WL-CLO-OCEAN").await.terminal.unwrap().state,
        "closed by Ocean"
    );
    assert_eq!(
        facts("WL-CLO-CLINIC").await.terminal.unwrap().state,
        "completed"
    );
    // Listed for closed_by_ocean_days, then no longer; and never with the window at 0.
    let later = entries(&app, &config, closed + Duration::days(14)).await;
    assert!(find(&later, "WL-CLO-OCEAN", WatchKind::ClosedByOcean).is_none());
    let off = WatchListConfig {
        closed_by_ocean_days: 0,
        ..config.clone()
    };
    let list = entries(&app, &off, now + Duration::hours(1)).await;
    assert!(find(&list, "WL-CLO-OCEAN", WatchKind::ClosedByOcean).is_none());
    app.stop().await;
}

const EMR_KEY: &str = "emr-watch-key-0123456789";
const PHYSIO_KEY: &str = "physio-watch-key-0123456789";

async fn get(app: &TestApp, key: Option<&str>, query: &str) -> crate::support::app::Answer {
    let mut request = app
        .client
        .get(app.url(&format!("/api/v1/watch-list{query}")));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    crate::support::app::answer(request.send().await.unwrap()).await
}

fn referrals(body: &serde_json::Value) -> Vec<String> {
    body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["referral"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn the_api_lists_what_a_client_may_see_filters_by_kind_and_service_and_refuses_an_unknown_kind()
 {
    let app = spawn_app_with(&format!(
        r#"
[api.clients.emr]
key = "{EMR_KEY}"

[api.clients.physio]
key = "{PHYSIO_KEY}"
service_ids = ["{PHYSIO}"]
"#
    ))
    .await;
    let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
    let passed = now - Duration::days(3);
    for (referral, service) in [("WL-API-CARDIO", CARDIO), ("WL-API-PHYSIO", PHYSIO)] {
        new_referral(&app, referral, service, RECENT).await;
        ocean_appointment(
            &app,
            referral,
            service,
            &text(passed),
            &text(now - Duration::days(5)),
        )
        .await;
    }
    // Sent 345 days ago, completed 20 days ago (by Ocean, longer ago than closed_by_ocean_days):
    // Ocean archives it in 20 days.
    new_referral(
        &app,
        "WL-API-ARCHIVE",
        PHYSIO,
        &text(now - Duration::days(345)),
    )
    .await;
    ocean_task(
        &app,
        "WL-API-ARCHIVE",
        PHYSIO,
        "completed",
        &text(now - Duration::days(20)),
    )
    .await;

    let all = get(&app, Some(EMR_KEY), "").await;
    assert_eq!(all.status, 200, "{}", all.body);
    assert_eq!(
        referrals(&all.body),
        ["WL-API-CARDIO", "WL-API-PHYSIO", "WL-API-ARCHIVE"]
    );
    assert_eq!(
        all.body["counts"],
        json!({"overdue": 0, "appointment_passed": 2, "revoked_after_action": 0, "nearing_archival": 1, "closed_by_ocean": 0})
    );
    let entry = &all.body["entries"][0];
    assert_eq!(entry["kind"], "appointment_passed");
    assert_eq!(entry["service_id"], CARDIO);
    assert_eq!(entry["since"], text(passed));
    assert_eq!(entry["archival_at"], serde_json::Value::Null);
    let archive = &all.body["entries"][2];
    assert_eq!(archive["kind"], "nearing_archival");
    assert_eq!(archive["archival_at"], text(now + Duration::days(20)));
    // Identifiers, statuses and dates: never a patient detail.
    let body = all.body.to_string();
    for detail in patient_details() {
        assert!(!body.contains(&detail), "{detail} in {body}");
    }

    let kind = get(&app, Some(EMR_KEY), "?kind=nearing_archival").await;
    assert_eq!(referrals(&kind.body), ["WL-API-ARCHIVE"]);
    let service = get(&app, Some(EMR_KEY), &format!("?service_id={PHYSIO}")).await;
    assert_eq!(
        referrals(&service.body),
        ["WL-API-PHYSIO", "WL-API-ARCHIVE"]
    );

    // A client limited to PHYSIO sees only its own, and may not ask for CARDIO.
    let physio = get(&app, Some(PHYSIO_KEY), "").await;
    assert_eq!(physio.status, 200);
    assert_eq!(referrals(&physio.body), ["WL-API-PHYSIO", "WL-API-ARCHIVE"]);
    assert_eq!(physio.body["counts"]["appointment_passed"], 1);
    let refused = get(&app, Some(PHYSIO_KEY), &format!("?service_id={CARDIO}")).await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert_eq!(refused.content_type, "application/problem+json");

    let unknown = get(&app, Some(EMR_KEY), "?kind=forgotten").await;
    assert_eq!(unknown.status, 400, "{}", unknown.body);
    assert_eq!(unknown.content_type, "application/problem+json");
    assert!(
        unknown.body["detail"]
            .as_str()
            .unwrap()
            .contains("kind must be")
    );
    assert_eq!(get(&app, None, "").await.status, 401);

    // The OpenAPI document names the kinds.
    let document = app
        .client
        .get(app.url("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    let parameters = document["paths"]["/api/v1/watch-list"]["get"]["parameters"]
        .as_array()
        .unwrap();
    let kind = parameters.iter().find(|p| p["name"] == "kind").unwrap();
    assert_eq!(
        kind["schema"]["enum"],
        json!([
            "overdue",
            "appointment_passed",
            "revoked_after_action",
            "nearing_archival",
            "closed_by_ocean"
        ]),
        "{kind}"
    );
    app.stop().await;
}
