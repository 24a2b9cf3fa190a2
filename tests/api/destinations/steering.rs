//! Steering destinations: pausing one keeps its queue, a new one gets the past only by
//! backfill, an admin steers them in the console, and migrate waits until nothing is queued.

use serde_json::Value;
use tempfile::TempDir;

use crate::support::destinations::{
    KEY, NEW_SECRET, STEPS, api, app_on, deliver, destination, sled_in, toml, versions_of,
};
use crate::support::peers::WebhookReceiver;
use crate::support::postgres::Schema;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_destination_keeps_its_queue_and_a_new_one_gets_the_past_only_by_backfill() {
    let receiver = WebhookReceiver::start(&[NEW_SECRET]);
    let dir = TempDir::new().unwrap();
    // Two versions of each arrive before the destination exists.
    let before = sled_in(dir.path(), &toml("")).await;
    for referral in ["DST-PAST", "DST-MIX"] {
        deliver(&before, STEPS[0], referral).await;
        deliver(&before, STEPS[1], referral).await;
    }
    before.stop().await;
    let destinations = format!(
        r#"
[destinations.emr]
kind = "webhook"
url = "{}"
secret = "{NEW_SECRET}"
"#,
        receiver.url
    );
    let app = sled_in(dir.path(), &toml(&destinations)).await;
    let paused = api(
        &app,
        reqwest::Method::POST,
        "/api/v1/destinations/emr/pause",
        None,
    )
    .await;
    assert_eq!(paused.status, 204, "{}", paused.body);
    deliver(&app, STEPS[0], "DST-NOW").await;
    deliver(&app, STEPS[2], "DST-MIX").await;
    let view = destination(&app, "emr").await;
    assert_eq!(view["state"], "paused");
    // Only what arrived while it was configured is queued: the past is not sent by accident.
    assert_eq!(view["pending"], 2, "{view}");
    let resumed = api(
        &app,
        reqwest::Method::POST,
        "/api/v1/destinations/emr/resume",
        None,
    )
    .await;
    assert_eq!(resumed.status, 204);
    let received = receiver.wait_for(2).await;
    assert_eq!(versions_of(&received, "DST-NOW"), [1]);
    assert_eq!(versions_of(&received, "DST-MIX"), [3]);
    // Through the command line, as an operator would, and at the same time through the API
    // (a second click): each version is queued once.
    let url = format!("http://{}", app.addr);
    let twice = api(
        &app,
        reqwest::Method::POST,
        "/api/v1/destinations/emr/backfill",
        Some(serde_json::json!({"since": "2000-01-01"})),
    );
    let backfilled = tokio::task::spawn_blocking(move || {
        crate::support::binary::run(
            &[
                "destinations",
                "backfill",
                "emr",
                "--since",
                "2000-01-01",
                "--url",
                &url,
            ],
            &[("RELAY_API_KEY", KEY)],
        )
    });
    let (twice, backfilled) = tokio::join!(twice, backfilled);
    let backfilled = backfilled.unwrap();
    assert_eq!(twice.status, 202, "{}", twice.body);
    let printed = String::from_utf8_lossy(&backfilled.stdout);
    assert!(
        backfilled.status.success(),
        "{}",
        String::from_utf8_lossy(&backfilled.stderr)
    );
    // The two past versions of DST-PAST, once between both backfills; none already queued,
    // and none of DST-MIX older than its version 3 already sent (it would arrive out of order).
    let by_cli: u64 = printed.split_whitespace().next().unwrap().parse().unwrap();
    assert_eq!(
        by_cli + twice.body["queued"].as_u64().unwrap(),
        2,
        "{printed} {}",
        twice.body
    );
    let received = receiver.wait_for(4).await;
    assert_eq!(versions_of(&received, "DST-PAST"), [1, 2]);
    assert_eq!(versions_of(&received, "DST-NOW"), [1]);
    assert_eq!(versions_of(&received, "DST-MIX"), [3]);
    let started = std::time::Instant::now();
    while destination(&app, "emr").await["pending"] != 0 {
        assert!(started.elapsed() < std::time::Duration::from_secs(20));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(destination(&app, "emr").await["delivered"], 4);
    assert_eq!(
        receiver.received().await["received"]
            .as_array()
            .unwrap()
            .len(),
        4
    );
    let past: Vec<&Value> = received
        .iter()
        .filter(|m| m["referral"] == "DST-PAST")
        .collect();
    assert!(past.iter().all(|m| m["body"]["data"]["backfill"] == true));
    let since = Some(serde_json::json!({"since": "not a date"}));
    let refused = api(
        &app,
        reqwest::Method::POST,
        "/api/v1/destinations/emr/backfill",
        since,
    )
    .await;
    assert_eq!(refused.status, 400, "{}", refused.body);
    for (path, status) in [
        ("/api/v1/destinations/nope/pause", 404),
        ("/api/v1/destinations/emr/messages/999999/replay", 404),
    ] {
        let answer = api(&app, reqwest::Method::POST, path, None).await;
        assert_eq!(answer.status, status, "{path}: {}", answer.body);
    }
    app.stop().await;
}

/// The console: an admin sees each destination's queue and its dead letters, replays one with
/// the form token (not without), pauses and resumes; a referral's page says where its versions
/// went; staff get 403.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_steers_destinations_in_the_console_and_a_referral_page_shows_its_pushes() {
    use crate::support::console::{ALICE_PASSWORD, BOB_PASSWORD, Visitor, users_config};

    let receiver = WebhookReceiver::start(&[NEW_SECRET]);
    receiver.fail("DST-CONSOLE", 422, 1).await;
    let destinations = format!(
        "[destinations.emr]\nkind = \"webhook\"\nurl = \"{}\"\nsecret = \"{NEW_SECRET}\"\n",
        receiver.url
    );
    let (app, _dir) = app_on(false, &users_config(&toml(&destinations))).await;
    deliver(&app, STEPS[0], "DST-CONSOLE").await;
    let mut alice = Visitor::new(&app);
    alice.sign_in("alice", ALICE_PASSWORD).await;
    let started = std::time::Instant::now();
    let page = loop {
        let page = alice.get("/console/destinations").await;
        assert_eq!(page.status, 200);
        if page.html.contains("class=\"state-dead\"") {
            break page;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "{}",
            page.html
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(page.html.contains("answered 422"), "{}", page.html);
    let at = page
        .html
        .find("/console/destinations/emr/messages/")
        .unwrap()
        + 35;
    let id = page.html[at..].split('/').next().unwrap().to_owned();
    let replay = format!("/console/destinations/emr/messages/{id}/replay");
    assert_eq!(alice.post(&replay, &[]).await.status, 403);
    let replayed = alice.post(&replay, &[("csrf", page.csrf().as_str())]).await;
    assert_eq!(
        (replayed.status, replayed.location()),
        (303, "/console/destinations")
    );
    let received = receiver.wait_for(1).await;
    assert_eq!(versions_of(&received, "DST-CONSOLE"), [1]);

    let csrf = alice.get("/console/destinations").await.csrf();
    let paused = alice
        .post(
            "/console/destinations/emr/pause",
            &[("csrf", csrf.as_str())],
        )
        .await;
    assert_eq!(paused.status, 303);
    let page = alice.get("/console/destinations").await;
    assert!(page.html.contains("emr (paused)"), "{}", page.html);
    assert!(page.html.contains("Resume sending"));
    alice
        .post(
            "/console/destinations/emr/resume",
            &[("csrf", page.csrf().as_str())],
        )
        .await;
    assert!(
        !alice
            .get("/console/destinations")
            .await
            .html
            .contains("(paused)")
    );

    let referral = alice.get("/console/referrals/DST-CONSOLE").await;
    assert!(
        referral.html.contains("Pushed to the clinic"),
        "{}",
        referral.html
    );
    assert!(
        referral
            .html
            .contains("<td>emr</td><td>1</td><td>delivered</td>"),
        "{}",
        referral.html
    );

    let mut bob = Visitor::new(&app);
    bob.sign_in("bob", BOB_PASSWORD).await;
    assert_eq!(bob.get("/console/destinations").await.status, 403);
    assert!(
        !bob.get("/console/referrals")
            .await
            .html
            .contains("/console/destinations")
    );
    app.stop().await;
}

/// `migrate` copies no queued message (they are sealed to ids PostgreSQL gives anew): while
/// any is still to be sent it refuses, saying so, rather than lose it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_waits_until_nothing_is_queued_for_a_destination() {
    let dir = TempDir::new().unwrap();
    // Nobody listens there: the version stays pending.
    let destinations = format!(
        "[destinations.emr]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:9/hook\"\nsecret = \"{NEW_SECRET}\"\n"
    );
    let app = sled_in(dir.path(), &toml(&destinations)).await;
    deliver(&app, STEPS[0], "DST-MIGRATE").await;
    app.stop().await;
    let schema = Schema::new();
    let data_dir = dir.path().to_str().unwrap().to_owned();
    let name = schema.name.clone();
    let output = tokio::task::spawn_blocking(move || {
        crate::support::binary::run(
            &["migrate", "--schema", &name, "--data-dir", &data_dir],
            &[("RELAY_MIGRATE_TO", &crate::support::postgres::server_url())],
        )
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("1 versions are still queued for destinations"),
        "{stderr}"
    );
}
