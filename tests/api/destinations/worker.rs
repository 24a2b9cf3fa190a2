//! Destinations: every stored version a destination takes is pushed to it, signed as Standard
//! Webhooks and checked by the reference library on the receiving side, in order per referral,
//! with retries, dead letters that hold back only their referral, pause, and backfill.

use std::sync::Arc;

use serde_json::Value;
use tempfile::TempDir;

use crate::support::app::{TestApp, config, spawn_with_store};
use crate::support::destinations::{KEY, api, app_on, delivery, destination};
use crate::support::fixtures::{V011_REFERRAL, fixture};
use crate::support::peers::WebhookReceiver;
use crate::support::postgres::Schema;

/// 32 bytes, base64: the secret a rotation moves to, and the one it moves from.
const NEW_SECRET: &str = "whsec_bmV3LXNlY3JldC1uZXctc2VjcmV0LW5ldy1zZWNyZXQhIQ==";
const OLD_SECRET: &str = "whsec_b2xkLXNlY3JldC1vbGQtc2VjcmV0LW9sZC1zZWNyZXQhIQ==";

fn toml(destinations: &str) -> String {
    format!(
        r#"
[api.clients.ops]
key = "{KEY}"

[outbox]
initial_backoff_secs = 1
max_backoff_secs = 1

{destinations}
"#
    )
}

async fn sled_in(dir: &std::path::Path, toml: &str) -> TestApp {
    crate::support::app::spawn_app_in(dir, toml).await
}

/// New referral, Task accepted, appointment booked: versions 1 to 3 of `referral`.
const STEPS: [&str; 3] = [
    "v0.11-add-service-request.json",
    "update-task-accepted.json",
    "update-appointment-booked.json",
];

async fn deliver(app: &TestApp, name: &str, referral: &str) {
    let answer = app.deliver("default", delivery(name, referral)).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
}

/// The versions of `referral` in the order they arrived.
fn versions_of(received: &[Value], referral: &str) -> Vec<u64> {
    received
        .iter()
        .filter(|m| m["referral"] == referral)
        .map(|m| m["version"].as_u64().unwrap())
        .collect()
}

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

/// Kill -9 the real binary while clients deliver and the destination is being sent to, twice,
/// then let it run: every acknowledged version reaches the receiver (at least once, and once
/// after its deduplication by `webhook-id`), in order per referral, and everything received is
/// a version the store holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_acknowledged_version_reaches_the_destination_across_kill_9() {
    use std::collections::{BTreeSet, HashMap};
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    use referral_relay::domain::ReferralRef;
    use referral_relay::store::{DeliveryStore, SledStore};

    use crate::support::binary::{launch, terminate};

    const CLIENTS: usize = 4;
    const ACKS_BEFORE_KILL: usize = 30;
    let receiver = WebhookReceiver::start(&[NEW_SECRET]);
    // Slow enough that sends are in flight when the process dies.
    receiver.delay(20).await;
    let dir = TempDir::new().unwrap();
    let config_file = dir.path().join("relay.toml");
    std::fs::write(
        &config_file,
        toml(&format!(
            "[destinations.emr]\nkind = \"webhook\"\nurl = \"{}\"\nsecret = \"{NEW_SECRET}\"\n",
            receiver.url
        )),
    )
    .unwrap();
    let data = dir.path().join("data");
    let client = reqwest::Client::new();
    let acked: Arc<Mutex<BTreeSet<(String, u64)>>> = Arc::default();
    for cycle in 0..3 {
        let mut relay = launch(&data, Some(&config_file), &[], &[("RUST_LOG", "info")]);
        if cycle == 2 {
            // The last run is not killed: it sends what is left.
            let wanted = acked.lock().unwrap().len();
            let started = Instant::now();
            loop {
                let received = receiver.received().await;
                let pairs: BTreeSet<(String, u64)> = received["received"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|m| {
                        (
                            m["referral"].as_str().unwrap().to_owned(),
                            m["version"].as_u64().unwrap(),
                        )
                    })
                    .collect();
                if acked.lock().unwrap().is_subset(&pairs) {
                    break;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(120),
                    "{} of {wanted} acknowledged versions arrived",
                    acked.lock().unwrap().intersection(&pairs).count()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert!(terminate(&mut relay));
            break;
        }
        let url = format!("http://{}/fhir/default/$process-message", relay.addr);
        let before = acked.lock().unwrap().len();
        let mut tasks = Vec::new();
        for c in 0..CLIENTS {
            let (client, url, acked) = (client.clone(), url.clone(), Arc::clone(&acked));
            tasks.push(tokio::spawn(async move {
                for n in 0..1000 {
                    let referral = format!("KILL-{cycle}-{c}-{n}");
                    for (version, step) in [(1, STEPS[0]), (2, STEPS[1])] {
                        let sent = client
                            .post(&url)
                            .header("content-type", "application/fhir+json")
                            .body(delivery(step, &referral))
                            .send()
                            .await;
                        match sent {
                            Ok(r) if r.status().as_u16() == 200 => {
                                acked.lock().unwrap().insert((referral.clone(), version));
                            }
                            Ok(r) => panic!("unexpected status {}", r.status()),
                            Err(_) => return,
                        }
                    }
                }
            }));
        }
        let started = Instant::now();
        while acked.lock().unwrap().len() < before + ACKS_BEFORE_KILL
            && started.elapsed() < Duration::from_secs(60)
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        relay.child.kill().unwrap();
        relay.child.wait().unwrap();
        for task in tasks {
            task.await.unwrap();
        }
        // Everything received so far is a version the store holds.
        let store = SledStore::open(&data).unwrap();
        let received = receiver.received().await;
        for message in received["received"].as_array().unwrap() {
            let referral = ReferralRef::parse(message["referral"].as_str().unwrap()).unwrap();
            let version = message["version"].as_u64().unwrap();
            assert!(
                store.payload(&referral, version).await.unwrap().is_some(),
                "{referral} v{version} was sent but is not stored"
            );
        }
    }
    let received = receiver.received().await;
    let messages = received["received"].as_array().unwrap();
    // One webhook-id per version: a version is queued once, whatever was retried.
    let mut ids: HashMap<(String, u64), BTreeSet<String>> = HashMap::new();
    let mut order: HashMap<String, Vec<u64>> = HashMap::new();
    for m in messages {
        let referral = m["referral"].as_str().unwrap().to_owned();
        let version = m["version"].as_u64().unwrap();
        ids.entry((referral.clone(), version))
            .or_default()
            .insert(m["id"].as_str().unwrap().to_owned());
        order.entry(referral).or_default().push(version);
    }
    assert!(
        ids.values().all(|set| set.len() == 1),
        "a version went under two ids"
    );
    let acked = acked.lock().unwrap().len();
    assert!(acked >= 2 * ACKS_BEFORE_KILL, "{acked} acknowledged");
    eprintln!(
        "kill -9 test: {acked} acknowledged, {} received, {} attempts, {} duplicates",
        ids.len(),
        received["attempts"],
        received["duplicates"]
    );
    for (referral, versions) in &order {
        assert!(versions.is_sorted(), "{referral}: {versions:?}");
    }
    assert_eq!(received["bad_signatures"], 0);
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

/// Two `referral-relay serve` processes on one PostgreSQL schema: the one holding a
/// destination's messages is killed with SIGKILL while its sends are in flight; once their
/// leases lapse the other sends them, and every version arrives (the ones in flight at the kill
/// twice, under one `webhook-id`, for the receiver to drop).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replicas_claims_move_on_to_the_other() {
    use std::time::{Duration, Instant};

    use crate::support::binary::launch;

    const REFERRALS: usize = 6;
    let receiver = WebhookReceiver::start(&[NEW_SECRET]);
    receiver.delay(1500).await;
    let schema = Schema::new();
    drop(schema.store().await);
    let files = TempDir::new().unwrap();
    let config = files.path().join("relay.toml");
    std::fs::write(
        &config,
        toml(&format!(
            "[storage]\nbackend = \"postgres\"\nurl = \"{}\"\nschema = \"{}\"\n\n\
             [destinations.emr]\nkind = \"webhook\"\nurl = \"{}\"\nsecret = \"{NEW_SECRET}\"\n\
             request_timeout_secs = 3\n",
            crate::support::postgres::server_url(),
            schema.name,
            receiver.url
        )),
    )
    .unwrap();
    let start = |name: &str| {
        let dir = files.path().join(name);
        tokio::task::block_in_place(|| launch(&dir, Some(&config), &[], &[("RUST_LOG", "info")]))
    };
    let mut a = start("a");
    let client = reqwest::Client::new();
    for n in 0..REFERRALS {
        let answer = client
            .post(format!("http://{}/fhir/default/$process-message", a.addr))
            .header("content-type", "application/fhir+json")
            .body(delivery(STEPS[0], &format!("DST-LEASE-{n}")))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
    }
    // Killed while the receiver holds its first sends.
    let started = Instant::now();
    while receiver.received().await["started"] == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "nothing was sent"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    let b = start("b");
    let received = receiver.wait_for(REFERRALS).await;
    let mut referrals: Vec<&str> = received
        .iter()
        .map(|m| m["referral"].as_str().unwrap())
        .collect();
    referrals.sort_unstable();
    let wanted: Vec<String> = (0..REFERRALS).map(|n| format!("DST-LEASE-{n}")).collect();
    assert_eq!(referrals, wanted);
    // What was in flight at the kill was sent again by the other replica, under its id.
    let started = Instant::now();
    let counts = loop {
        let counts = receiver.received().await;
        if counts["duplicates"].as_u64() >= Some(1) || started.elapsed() > Duration::from_secs(60) {
            break counts;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(counts["duplicates"].as_u64() >= Some(1), "{counts}");
    let view = loop {
        let list: Value = client
            .get(format!("http://{}/api/v1/destinations", b.addr))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let view = list["destinations"][0].clone();
        if view["pending"] == 0 || started.elapsed() > Duration::from_secs(60) {
            break view;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        (view["pending"].as_u64(), view["delivered"].as_u64()),
        (Some(0), Some(REFERRALS as u64)),
        "{view}"
    );
    let mut b = b;
    assert!(crate::support::binary::terminate(&mut b));
    schema.drop_now().await;
}

/// Two replicas on one PostgreSQL schema share a destination's queue: every version is sent
/// once (no duplicates to deduplicate), in order per referral, whichever replica stored it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_postgres_send_each_version_once_and_in_order() {
    let receiver = WebhookReceiver::start(&[NEW_SECRET]);
    let destinations = format!(
        "[destinations.emr]\nkind = \"webhook\"\nurl = \"{}\"\nsecret = \"{NEW_SECRET}\"\n",
        receiver.url
    );
    let schema = Schema::new();
    let dirs = [TempDir::new().unwrap(), TempDir::new().unwrap()];
    let mut replicas = Vec::new();
    for dir in &dirs {
        let config = config(&toml(&destinations), dir.path());
        replicas.push(spawn_with_store(&config, schema.store().await).await);
    }
    for n in 0..10 {
        let referral = format!("DST-REPLICA-{n}");
        for (step, replica) in STEPS.iter().zip([0, 1, 0]) {
            deliver(&replicas[replica], step, &referral).await;
        }
    }
    let received = receiver.wait_for(30).await;
    for n in 0..10 {
        assert_eq!(
            versions_of(&received, &format!("DST-REPLICA-{n}")),
            [1, 2, 3]
        );
    }
    let counts = receiver.received().await;
    assert_eq!(
        counts["duplicates"], 0,
        "a version was sent by both replicas"
    );
    assert_eq!(counts["attempts"], 30);
    for replica in replicas {
        replica.stop().await;
    }
    schema.drop_now().await;
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

/// Two stores (a fresh data dir, a restored backup, a new database) number their messages
/// alike; their webhook-ids never collide, so a receiver deduplicating by id drops nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_ids_differ_between_stores_that_number_messages_alike() {
    let receiver = WebhookReceiver::start(&[NEW_SECRET]);
    let destinations = format!(
        "[destinations.emr]\nkind = \"webhook\"\nurl = \"{}\"\nsecret = \"{NEW_SECRET}\"\n",
        receiver.url
    );
    for referral in ["DST-STORE-A", "DST-STORE-B"] {
        let (app, _dir) = app_on(false, &toml(&destinations)).await;
        deliver(&app, STEPS[0], referral).await;
        let messages = api(
            &app,
            reqwest::Method::GET,
            "/api/v1/destinations/emr/messages",
            None,
        )
        .await;
        assert_eq!(
            messages.body["messages"][0]["id"], 1,
            "both stores call it message 1"
        );
        receiver
            .wait_for(if referral.ends_with('A') { 1 } else { 2 })
            .await;
        app.stop().await;
    }
    let counts = receiver.received().await;
    assert_eq!(
        counts["duplicates"], 0,
        "a new message was taken for a repeat"
    );
}

/// Messages delivered (or discarded) before the cutoff are forgotten; open ones and their
/// referrals' order are untouched, and the queue goes on working.
async fn forgets_what_left_long_ago(store: &dyn referral_relay::store::Store) {
    use referral_relay::domain::ReferralRef;
    use referral_relay::store::{MessageState, QueuedMessage};
    use time::{Duration, OffsetDateTime};

    let now = OffsetDateTime::now_utc();
    let long_ago = now - Duration::days(100);
    let lease = std::time::Duration::from_secs(30);
    let referral = |r: &str| ReferralRef::parse(r).unwrap();
    let queued =
        |r: &str, version: u64| QueuedMessage::pending("emr", referral(r), version, long_ago);
    store
        .enqueue_messages(vec![
            queued("PURGE-A", 1),
            queued("PURGE-A", 2),
            queued("PURGE-A", 3),
            queued("PURGE-B", 1),
            queued("PURGE-C", 1),
        ])
        .await
        .unwrap();
    let all = store.queue_messages("emr", None, 0, 100).await.unwrap();
    let find = |r: &str, v: u64| {
        all.iter()
            .find(|m| m.referral.as_str() == r && m.version == v)
            .unwrap()
            .clone()
    };
    let settle = |mut message: QueuedMessage, state: MessageState, at: OffsetDateTime| {
        message.state = state;
        if state == MessageState::Delivered {
            message.delivered_at = Some(at);
        }
        message
    };
    let save = |message: QueuedMessage, from: MessageState| async move {
        assert!(store.save_message(&message, from).await.unwrap());
    };
    // A1 delivered long ago, A2 now; B1 dead, then discarded; C1 dead (open).
    save(
        settle(find("PURGE-A", 1), MessageState::Delivered, long_ago),
        MessageState::Pending,
    )
    .await;
    save(
        settle(find("PURGE-A", 2), MessageState::Delivered, now),
        MessageState::Pending,
    )
    .await;
    save(
        settle(find("PURGE-B", 1), MessageState::Dead, now),
        MessageState::Pending,
    )
    .await;
    save(
        settle(find("PURGE-B", 1), MessageState::Discarded, now),
        MessageState::Dead,
    )
    .await;
    save(
        settle(find("PURGE-C", 1), MessageState::Dead, now),
        MessageState::Pending,
    )
    .await;

    // An Ocean update delivered as long ago is kept: Task states are rebuilt from them.
    let update = referral_relay::store::UpdateRecord::pending(
        referral("PURGE-A"),
        "main".into(),
        referral_relay::store::UpdateKind::Message,
        referral_relay::ig::OutboundEvent::SendCommunicationFromProvider,
        "{}".into(),
        long_ago,
    );
    let update = store
        .enqueue_update(update, referral_relay::store::TaskState::default(), None)
        .await
        .unwrap()
        .unwrap();
    let sent = settle(
        update.clone().into_message(),
        MessageState::Delivered,
        long_ago,
    );
    save(sent, MessageState::Pending).await;

    let cutoff = now - Duration::days(90);
    assert_eq!(store.purge_messages_before(cutoff).await.unwrap(), 2);
    let kept = referral_relay::store::update(store, update.id)
        .await
        .unwrap();
    assert_eq!(kept.unwrap().state, MessageState::Delivered);
    assert_eq!(store.purge_messages_before(cutoff).await.unwrap(), 0);
    let left: Vec<(String, u64, MessageState)> = store
        .queue_messages("emr", None, 0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|m| (m.referral.as_str().to_owned(), m.version, m.state))
        .collect();
    assert_eq!(
        left,
        [
            ("PURGE-A".to_owned(), 2, MessageState::Delivered),
            ("PURGE-A".to_owned(), 3, MessageState::Pending),
            ("PURGE-C".to_owned(), 1, MessageState::Dead),
        ]
    );
    let stats = store.queue_stats("emr").await.unwrap();
    assert_eq!(
        (stats.pending, stats.dead, stats.delivered, stats.discarded),
        (1, 1, 1, 0)
    );
    let versions: Vec<u64> = store
        .referral_messages(&referral("PURGE-A"))
        .await
        .unwrap()
        .iter()
        .filter(|m| m.queue == "emr")
        .map(|m| m.version)
        .collect();
    assert_eq!(versions, [2, 3]);
    // The queue goes on: A3 is due, and once delivered a new A4 is queued behind nothing.
    let due = store
        .due_messages("emr", now, lease, 10, &[])
        .await
        .unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!((due[0].referral.as_str(), due[0].version), ("PURGE-A", 3));
    let delivered = settle(due[0].clone(), MessageState::Delivered, now);
    save(delivered, MessageState::Pending).await;
    store
        .enqueue_messages(vec![QueuedMessage::pending(
            "emr",
            referral("PURGE-A"),
            4,
            now,
        )])
        .await
        .unwrap();
    let later = now + Duration::seconds(1);
    let due = store
        .due_messages("emr", later, lease, 10, &[])
        .await
        .unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].version, 4);
    // Everything settled by now goes; the open ones stay.
    assert_eq!(store.purge_messages_before(later).await.unwrap(), 2);
    let stats = store.queue_stats("emr").await.unwrap();
    assert_eq!((stats.pending, stats.dead, stats.delivered), (1, 1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_messages_are_forgotten_after_the_retention_window() {
    let dir = TempDir::new().unwrap();
    let store = referral_relay::store::SledStore::open(dir.path()).unwrap();
    forgets_what_left_long_ago(&store).await;
    let schema = Schema::new();
    forgets_what_left_long_ago(schema.store().await.as_ref()).await;
    schema.drop_now().await;
}

/// A send's log lines carry its queue and message in a span (ids only), so a retry can be tied
/// to the message it belongs to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sends_log_lines_name_its_queue_and_message() {
    use crate::support::binary::{launch, terminate};

    let receiver = WebhookReceiver::start(&[NEW_SECRET]);
    receiver.fail("DST-SPAN", 503, 1).await;
    let dir = TempDir::new().unwrap();
    let config_file = dir.path().join("relay.toml");
    std::fs::write(
        &config_file,
        toml(&format!(
            "[destinations.emr]\nkind = \"webhook\"\nurl = \"{}\"\nsecret = \"{NEW_SECRET}\"\n",
            receiver.url
        )),
    )
    .unwrap();
    let mut relay = tokio::task::block_in_place(|| {
        launch(
            &dir.path().join("data"),
            Some(&config_file),
            &[],
            &[("RUST_LOG", "info")],
        )
    });
    let answer = reqwest::Client::new()
        .post(format!(
            "http://{}/fhir/default/$process-message",
            relay.addr
        ))
        .header("content-type", "application/fhir+json")
        .body(delivery(STEPS[0], "DST-SPAN"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    receiver.wait_for(1).await;
    assert!(terminate(&mut relay));
    let logs = relay.logs.lock().unwrap().clone();
    let line = |text: &str| {
        logs.iter()
            .find(|line| line.contains(text))
            .unwrap_or_else(|| panic!("no {text:?} logged: {logs:?}"))
            .clone()
    };
    // `send{queue=emr message_id=N}: ...` in the text format.
    for text in [
        "not delivered; will retry",
        "version delivered to a destination",
    ] {
        let logged = line(text);
        assert!(logged.contains("send{queue=emr message_id="), "{logged}");
    }
}
