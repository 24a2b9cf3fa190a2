//! What destinations' queues survive and forget: kill -9, a killed replica's claims, replicas
//! sending each version once, webhook ids unique across stores, retention of what was
//! delivered, and the log lines of a send.

use std::sync::Arc;

use serde_json::Value;
use tempfile::TempDir;

use crate::support::app::{config, spawn_with_store};
use crate::support::destinations::{
    KEY, NEW_SECRET, STEPS, api, app_on, deliver, delivery, toml, versions_of,
};
use crate::support::peers::WebhookReceiver;
use crate::support::postgres::Schema;

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
