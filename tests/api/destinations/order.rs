//! What a destination does with its queue: every version it takes pushed, signed as Standard
//! Webhooks and checked by the reference library on the receiving side, in order per referral;
//! retries and dead letters that hold back only their referral; a rate limit; a version
//! waiting for its documents.

use serde_json::Value;

use crate::support::destinations::{
    NEW_SECRET, OLD_SECRET, STEPS, api, app_on, deliver, destination, toml, versions_of,
};
use crate::support::fixtures::{V011_REFERRAL, fixture};
use crate::support::peers::WebhookReceiver;

async fn pushed_signed_filtered_and_in_order(postgres: bool) {
    let emr = WebhookReceiver::start(&[OLD_SECRET]);
    let booking = WebhookReceiver::start(&[NEW_SECRET]);
    // `emr` is between secrets (its receiver knows only the old one); `booking` takes only
    // appointment changes of one service.
    let destinations = format!(
        r#"
[destinations.emr]
kind = "webhook"
url = "{}"
secret = "{NEW_SECRET}"
previous_secrets = ["{OLD_SECRET}"]

[destinations.booking]
kind = "webhook"
url = "{}"
secret = "{NEW_SECRET}"
events = ["appointment-updated"]
service_ids = ["CARDIO-RAPID-01"]
"#,
        emr.url, booking.url
    );
    let (app, _dir) = app_on(postgres, &toml(&destinations)).await;
    for referral in ["DST-0001", "DST-0002"] {
        for step in STEPS {
            deliver(&app, step, referral).await;
        }
    }
    let received = emr.wait_for(6).await;
    for referral in ["DST-0001", "DST-0002"] {
        assert_eq!(versions_of(&received, referral), [1, 2, 3]);
    }
    let first = &received[0]["body"];
    assert_eq!(first["type"], "referral.version_stored");
    let data = &first["data"];
    assert_eq!(data["latest_change"], "new-referral");
    assert_eq!(data["service_id"], "CARDIO-RAPID-01");
    assert_eq!(data["integration"], "default");
    assert_eq!(data["summary"]["referral"], data["referral"]);
    assert_eq!(data["changes"]["version"], data["version"]);
    assert_eq!(data["bundle"]["resourceType"], "Bundle");
    let raw = app
        .store
        .payload(
            &referral_relay::domain::ReferralRef::parse(data["referral"].as_str().unwrap())
                .unwrap(),
            1,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        data["bundle"],
        serde_json::from_slice::<Value>(&raw).unwrap(),
        "the Bundle is sent as received"
    );
    let appointments = booking.wait_for(2).await;
    for message in &appointments {
        assert_eq!(message["version"], 3);
        assert_eq!(
            message["body"]["data"]["latest_change"],
            "appointment-updated"
        );
    }
    for receiver in [&emr, &booking] {
        let counts = receiver.received().await;
        assert_eq!(counts["bad_signatures"], 0, "{counts}");
    }
    let view = destination(&app, "emr").await;
    assert_eq!(view["delivered"], 6, "{view}");
    assert_eq!(view["pending"], 0, "{view}");
    assert_eq!(view["state"], "running");
    assert_eq!(destination(&app, "booking").await["delivered"], 2);
    let metrics = app.get("/metrics").await;
    assert_eq!(metrics.status, 200);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_are_pushed_signed_filtered_and_in_order() {
    pushed_signed_filtered_and_in_order(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_are_pushed_signed_filtered_and_in_order_from_postgres() {
    pushed_signed_filtered_and_in_order(true).await;
}

async fn failures_hold_back_only_their_referral(postgres: bool) {
    let receiver = WebhookReceiver::start(&[NEW_SECRET]);
    let destinations = format!(
        r#"
[destinations.emr]
kind = "webhook"
url = "{}"
secret = "{NEW_SECRET}"
"#,
        receiver.url
    );
    let (app, _dir) = app_on(postgres, &toml(&destinations)).await;
    // DST-RETRY is answered 503 twice, then taken; DST-DEAD and DST-GONE are refused once.
    receiver.fail("DST-RETRY", 503, 2).await;
    receiver.fail("DST-DEAD", 422, 1).await;
    receiver.fail("DST-GONE", 422, 1).await;
    for referral in ["DST-RETRY", "DST-DEAD", "DST-GONE"] {
        deliver(&app, STEPS[0], referral).await;
        deliver(&app, STEPS[1], referral).await;
    }
    deliver(&app, STEPS[0], "DST-FINE").await;
    let received = receiver.wait_for(3).await;
    assert_eq!(versions_of(&received, "DST-RETRY"), [1, 2]);
    assert_eq!(versions_of(&received, "DST-FINE"), [1]);
    assert!(versions_of(&received, "DST-DEAD").is_empty());

    let dead = api(
        &app,
        reqwest::Method::GET,
        "/api/v1/destinations/emr/messages?state=dead",
        None,
    )
    .await;
    assert_eq!(dead.status, 200, "{}", dead.body);
    let dead = dead.body["messages"].as_array().unwrap().clone();
    assert_eq!(dead.len(), 2, "{dead:?}");
    for message in &dead {
        assert_eq!(message["version"], 1);
        assert!(
            message["last_error"].as_str().unwrap().contains("422"),
            "{message}"
        );
    }
    let view = destination(&app, "emr").await;
    assert_eq!(
        (view["dead"].as_u64(), view["pending"].as_u64()),
        (Some(2), Some(2)),
        "{view}"
    );
    let id_of = |referral: &str| {
        dead.iter().find(|m| m["referral"] == referral).unwrap()["id"]
            .as_u64()
            .unwrap()
    };
    // Replayed (twice at once, as a double click: one wins, the other is told it is no longer
    // dead): the dead letter goes, then the version it held back.
    let replay = format!(
        "/api/v1/destinations/emr/messages/{}/replay",
        id_of("DST-DEAD")
    );
    let (a, b) = tokio::join!(
        api(&app, reqwest::Method::POST, &replay, None),
        api(&app, reqwest::Method::POST, &replay, None)
    );
    let mut statuses = [a.status, b.status];
    statuses.sort_unstable();
    assert_eq!(statuses, [202, 409], "{} {}", a.body, b.body);
    // Discarded (twice at once too): it never goes, the version it held back does.
    let discard = format!(
        "/api/v1/destinations/emr/messages/{}/discard",
        id_of("DST-GONE")
    );
    let (a, b) = tokio::join!(
        api(&app, reqwest::Method::POST, &discard, None),
        api(&app, reqwest::Method::POST, &discard, None)
    );
    let mut statuses = [a.status, b.status];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 409], "{} {}", a.body, b.body);
    let again = api(
        &app,
        reqwest::Method::POST,
        &format!(
            "/api/v1/destinations/emr/messages/{}/replay",
            id_of("DST-GONE")
        ),
        None,
    )
    .await;
    assert_eq!(again.status, 409, "{}", again.body);
    let received = receiver.wait_for(6).await;
    assert_eq!(versions_of(&received, "DST-DEAD"), [1, 2]);
    assert_eq!(versions_of(&received, "DST-GONE"), [2]);
    let counts = receiver.received().await;
    assert_eq!(counts["bad_signatures"], 0);
    // Two 503s and two 422s, and the 6 versions that landed (the discarded one never did).
    assert_eq!(counts["attempts"], 10, "attempts");
    assert_eq!(counts["duplicates"], 0, "duplicates");
    let audit = api(&app, reqwest::Method::GET, "/api/v1/audit?limit=500", None).await;
    let actions: Vec<&str> = audit.body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for action in [
        "DESTINATION_DEAD_LETTERED",
        "DESTINATION_REPLAYED",
        "DESTINATION_DISCARDED",
    ] {
        assert!(actions.contains(&action), "{action} in {actions:?}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_referral_waits_and_a_refused_one_holds_back_only_itself() {
    failures_hold_back_only_their_referral(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_referral_waits_and_a_refused_one_holds_back_only_itself_in_postgres() {
    failures_hold_back_only_their_referral(true).await;
}

/// `rate_per_sec` spaces the sends out: 12 versions at 4 per second cannot all arrive within
/// two seconds (without the limit they land together).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_spaces_the_sends_out() {
    let receiver = WebhookReceiver::start(&[NEW_SECRET]);
    let destinations = format!(
        "[destinations.emr]\nkind = \"webhook\"\nurl = \"{}\"\nsecret = \"{NEW_SECRET}\"\nrate_per_sec = 4\n",
        receiver.url
    );
    let (app, _dir) = app_on(false, &toml(&destinations)).await;
    app.store.set_queue_paused("emr", true).await.unwrap();
    for n in 0..12 {
        deliver(&app, STEPS[0], &format!("DST-RATE-{n}")).await;
    }
    // Released all at once: only the limit spaces them.
    let resumed = api(
        &app,
        reqwest::Method::POST,
        "/api/v1/destinations/emr/resume",
        None,
    )
    .await;
    assert_eq!(resumed.status, 204);
    let received = receiver.wait_for(12).await;
    let times: Vec<f64> = received.iter().map(|m| m["at"].as_f64().unwrap()).collect();
    let span = times.iter().copied().fold(f64::MIN, f64::max)
        - times.iter().copied().fold(f64::MAX, f64::min);
    assert!(span >= 2.0, "12 sends at 4/s arrived within {span:.2} s");
    app.stop().await;
}

/// `documents = "wait"`: a version waits until its letter and attachments are fetched or given
/// up, then goes with them (inline, base64), a slow letter and a failing attachment included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_waits_for_its_documents_and_carries_them() {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;

    use crate::support::ocean::{MockOcean, Serve};

    const LETTER: &str = "/svc/fhir/v1/ServiceRequest/TST-0011-AAAA/$letter";
    const ECHO: &str = "/svc/fhir/v1/DocumentReference/doc-0011-echo/$binary";
    let ocean = MockOcean::start().await;
    let (first, second) = (
        b"%PDF-1.7\n% the first letter, served slowly\n".to_vec(),
        b"%PDF-1.7\n% the second letter\n".to_vec(),
    );
    ocean.serve(
        LETTER,
        [
            Serve::SlowPdf(first.clone(), std::time::Duration::from_millis(300)),
            Serve::Pdf(second.clone()),
        ],
    );
    ocean.serve(ECHO, [Serve::Status(404)]);
    let receiver = WebhookReceiver::start(&[NEW_SECRET]);
    let toml = format!(
        "{}\n[documents]\ninitial_backoff_secs = 1\nmax_backoff_secs = 1\n\n[destinations.emr]\nkind = \"webhook\"\nurl = \"{}\"\nsecret = \"{NEW_SECRET}\"\ndocuments = \"wait\"\n",
        crate::support::flow::config(&ocean, "form"),
        receiver.url
    );
    let (app, _dir) = app_on(false, &toml).await;
    let first_version = app
        .deliver("default", fixture("v0.11-add-service-request.json"))
        .await;
    assert_eq!(first_version.status, 200);
    // The first version's letter is asked for (and served slowly) before the second version
    // arrives: Ocean's stand-in serves the letter's answers in the order asked, so a second
    // fetch that overtook the first would take the first version's answer (it did, under load).
    crate::support::poll::eventually("the first version's letter asked for", async || {
        !ocean.document_requests().is_empty()
    })
    .await;
    let attachment = String::from_utf8(fixture("attachment-added.json"))
        .unwrap()
        .replace("https://test.cognisantmd.com", &ocean.base_url());
    assert_eq!(
        app.deliver("default", attachment.into_bytes()).await.status,
        200
    );
    let received = receiver.wait_for(2).await;
    assert_eq!(versions_of(&received, V011_REFERRAL), [1, 2]);
    let documents = |n: usize| {
        received[n]["body"]["data"]["documents"]
            .as_array()
            .unwrap()
            .clone()
    };
    let one = documents(0);
    assert_eq!(one.len(), 1, "{one:?}");
    assert_eq!(one[0]["state"], "fetched");
    assert_eq!(
        STANDARD.decode(one[0]["data"].as_str().unwrap()).unwrap(),
        first
    );
    let two = documents(1);
    let states: Vec<&str> = two.iter().map(|d| d["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["fetched", "failed"]);
    assert_eq!(
        STANDARD.decode(two[0]["data"].as_str().unwrap()).unwrap(),
        second
    );
    assert!(two[1].get("data").is_none());
    app.stop().await;
}
