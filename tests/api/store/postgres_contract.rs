//! What the PostgreSQL store adds to the store contract, against a real server (see
//! `support::postgres`): two stores on one schema stand for two replicas: a delivery stored
//! once, versions in turn, a feed that never skips a late commit, long-polls woken across
//! replicas, one audit chain, the outbox's queue shared by leases, and Task states changed
//! under a replica's feet. The rest of the contract is the service tests run again with
//! `RELAY_TEST_BACKEND=postgres`: the folders of `ON_EITHER_BACKEND` (see `main.rs`).

use std::sync::Arc;
use std::time::Duration;

use referral_relay::domain::{IntegrationName, ReferralRef};
use referral_relay::store::{
    AuditStore, DeliveryStore, FeedStore, NewDelivery, PgOptions, PgStore, PutOutcome, verify_chain,
};

use crate::support::postgres::{Schema, delivery};

#[tokio::test]
async fn a_delivery_is_stored_versioned_fed_and_audited() {
    let schema = Schema::new();
    let store = schema.store().await;
    let first = delivery("PG-1", "{\"resourceType\": \"Bundle\", \"n\": 1}");
    assert_eq!(
        store.put_delivery(first.clone()).await.unwrap(),
        PutOutcome::Stored { version: 1 }
    );
    assert_eq!(
        store.put_delivery(first).await.unwrap(),
        PutOutcome::Duplicate { version: 1 }
    );
    let second = delivery("PG-1", "{\"resourceType\": \"Bundle\", \"n\": 2}");
    assert_eq!(
        store.put_delivery(second).await.unwrap(),
        PutOutcome::Stored { version: 2 }
    );
    // Another integration's delivery of the same referral is refused, and writes nothing.
    let mut other = delivery("PG-1", "{\"other\": true}");
    other.integration = IntegrationName::parse("other").unwrap();
    assert_eq!(
        store.put_delivery(other).await.unwrap(),
        PutOutcome::OwnedElsewhere {
            owner: IntegrationName::parse("default").unwrap()
        }
    );

    let referral = ReferralRef::parse("PG-1").unwrap();
    let record = store.referral(&referral).await.unwrap().unwrap();
    assert_eq!(record.version, 2);
    // A delivery stamped earlier (a slower replica, a clock behind) does not move the
    // referral's modification time back.
    let mut late = delivery("PG-1", "{\"resourceType\": \"Bundle\", \"n\": 3}");
    late.received_at = record.modified_at - time::Duration::hours(1);
    store.put_delivery(late).await.unwrap();
    let after = store.referral(&referral).await.unwrap().unwrap();
    assert!(after.modified_at >= record.modified_at, "{after:?}");
    // A sender's id may hold NUL, which text columns cannot: the delivery is still stored.
    let nul = delivery("PG-NUL", "{\"id\": \"a\\u0000b\"}");
    let nul = NewDelivery {
        dedup_key: format!("{}\u{0}", nul.dedup_key),
        ..nul
    };
    assert_eq!(
        store.put_delivery(nul).await.unwrap(),
        PutOutcome::Stored { version: 1 }
    );
    let versions = store.versions(&referral).await.unwrap();
    assert_eq!(
        versions
            .iter()
            .map(|v| (v.version, v.seq))
            .collect::<Vec<_>>(),
        vec![(1, 1), (2, 2), (3, 3)]
    );
    assert_eq!(
        store.payload(&referral, 2).await.unwrap().unwrap().as_ref(),
        b"{\"resourceType\": \"Bundle\", \"n\": 2}"
    );
    assert_eq!(store.payload(&referral, 4).await.unwrap(), None);
    assert_eq!(
        store
            .referral(&ReferralRef::parse("PG-NONE").unwrap())
            .await
            .unwrap(),
        None
    );
    let events = store.events_after(0, 10).await.unwrap();
    assert_eq!(
        events
            .iter()
            .map(|e| (e.seq, e.version))
            .collect::<Vec<_>>(),
        vec![(1, 1), (2, 2), (3, 3), (4, 1)]
    );
    assert_eq!(store.durable_seq(), 4);
    let audit = store.audit_entries(0, 100).await.unwrap();
    assert_eq!(audit.len(), 4);
    assert_eq!(verify_chain(audit), Ok(4));
    drop(store);
    schema.drop_now().await;
}

/// The same delivery posted to two replicas at once, many times: stored once.
#[tokio::test]
async fn the_same_delivery_on_two_replicas_at_once_is_stored_once() {
    let schema = Schema::new();
    let (a, b) = (schema.store().await, schema.store().await);
    let same = delivery("PG-TWICE", "{\"same\": 1}");
    let mut tasks = Vec::new();
    for n in 0..24 {
        let store = if n % 2 == 0 {
            Arc::clone(&a)
        } else {
            Arc::clone(&b)
        };
        let d = same.clone();
        tasks.push(tokio::spawn(
            async move { store.put_delivery(d).await.unwrap() },
        ));
    }
    let mut stored = 0;
    for task in tasks {
        match task.await.unwrap() {
            PutOutcome::Stored { version: 1 } => stored += 1,
            PutOutcome::Duplicate { version: 1 } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(stored, 1);
    let referral = ReferralRef::parse("PG-TWICE").unwrap();
    assert_eq!(a.versions(&referral).await.unwrap().len(), 1);
    assert_eq!(b.events_after(0, 100).await.unwrap().len(), 1);
    drop((a, b));
    schema.drop_now().await;
}

/// Different deliveries of one new referral posted to two replicas at once: every one stored,
/// as versions 1..n of one referral, each on the feed once (one delivery of a referral at a time,
/// even when none of them finds the referral's row yet).
#[tokio::test]
async fn deliveries_of_one_new_referral_on_two_replicas_at_once_are_its_versions_in_turn() {
    let schema = Schema::new();
    let (a, b) = (schema.store().await, schema.store().await);
    let mut tasks = Vec::new();
    for n in 0..24 {
        let store = if n % 2 == 0 {
            Arc::clone(&a)
        } else {
            Arc::clone(&b)
        };
        let d = delivery("PG-AT-ONCE", &format!("{{\"delivery\": {n}}}"));
        tasks.push(tokio::spawn(
            async move { store.put_delivery(d).await.unwrap() },
        ));
    }
    let mut versions = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            PutOutcome::Stored { version } => versions.push(version),
            other => panic!("unexpected {other:?}"),
        }
    }
    versions.sort_unstable();
    assert_eq!(versions, (1..=24).collect::<Vec<u64>>());
    let referral = ReferralRef::parse("PG-AT-ONCE").unwrap();
    let stored = b.versions(&referral).await.unwrap();
    assert_eq!(
        stored.iter().map(|v| v.version).collect::<Vec<_>>(),
        (1..=24).collect::<Vec<u64>>()
    );
    assert_eq!(a.referral(&referral).await.unwrap().unwrap().version, 24);
    let feed = a.events_after(0, 100).await.unwrap();
    let mut fed: Vec<u64> = feed.iter().map(|e| e.version).collect();
    fed.sort_unstable();
    assert_eq!(fed, (1..=24).collect::<Vec<u64>>());
    drop((a, b));
    schema.drop_now().await;
}

/// A transaction that took its feed row first but commits last must not be skipped by a
/// consumer who has already read the rows committed meanwhile.
#[tokio::test]
async fn the_feed_never_skips_an_event_that_commits_late() {
    let schema = Schema::new();
    let store = schema.store().await;
    // A writer on another replica, mid-transaction: its feed row has the lower id.
    let mut late = schema.client().await;
    let tx = late.transaction().await.unwrap();
    tx.execute(
        "INSERT INTO events (referral, version, event, received_at)
         VALUES ('PG-LATE', 1, 'add-service-request', now())",
        &[],
    )
    .await
    .unwrap();
    // Meanwhile a delivery commits and is in the feed; a consumer reads up to it.
    store
        .put_delivery(delivery("PG-EARLY", "{\"early\": 1}"))
        .await
        .unwrap();
    let seen = store.events_after(0, 100).await.unwrap();
    assert_eq!(
        seen.iter().map(|e| e.referral.as_str()).collect::<Vec<_>>(),
        vec!["PG-EARLY"]
    );
    let cursor = seen.last().unwrap().seq;
    // The late one commits; the next delivery's sequencer run numbers it after the cursor.
    tx.commit().await.unwrap();
    store
        .put_delivery(delivery("PG-NEXT", "{\"next\": 1}"))
        .await
        .unwrap();
    let after = store.events_after(cursor, 100).await.unwrap();
    assert_eq!(
        after
            .iter()
            .map(|e| e.referral.as_str())
            .collect::<Vec<_>>(),
        vec!["PG-LATE", "PG-NEXT"]
    );
    let all: Vec<u64> = store
        .events_after(0, 100)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(all, vec![1, 2, 3]);
    drop(store);
    schema.drop_now().await;
}

/// A long-poll on replica A wakes when a delivery lands on replica B, through NOTIFY alone (the
/// sweep that would also find it is slowed to an hour here).
#[tokio::test]
async fn a_long_poll_on_one_replica_wakes_for_a_delivery_on_another() {
    let schema = Schema::new();
    let quiet = PgOptions {
        sweep_interval: Duration::from_secs(3600),
        ..schema.options()
    };
    let a = PgStore::connect(&quiet).await.unwrap();
    let b = PgStore::connect(&quiet).await.unwrap();
    // A's LISTEN connection may take a moment to start: B delivers until A wakes.
    let mut waiting = {
        let a = Arc::clone(&a);
        tokio::spawn(async move { a.wait_for_events_after(0).await })
    };
    let mut woke = false;
    for n in 0..40 {
        b.put_delivery(delivery(
            &format!("PG-WAKE-{n}"),
            &format!("{{\"n\": {n}}}"),
        ))
        .await
        .unwrap();
        if tokio::time::timeout(Duration::from_millis(250), &mut waiting)
            .await
            .is_ok()
        {
            woke = true;
            break;
        }
    }
    assert!(woke, "replica A never heard of replica B's deliveries");
    assert!(a.durable_seq() >= 1);
    drop((a, b));
    schema.drop_now().await;
}

/// Audit entries appended on two replicas at once form one chain that verifies.
#[tokio::test]
async fn audit_entries_from_two_replicas_form_one_chain() {
    let schema = Schema::new();
    let (a, b) = (schema.store().await, schema.store().await);
    let mut tasks = Vec::new();
    for n in 0..20 {
        let store = if n % 2 == 0 {
            Arc::clone(&a)
        } else {
            Arc::clone(&b)
        };
        tasks.push(tokio::spawn(async move {
            store
                .audit(
                    "TEST",
                    "tester",
                    serde_json::json!({"n": n, "nested": {"z": 1, "a": [1, 2]}}),
                )
                .await
                .unwrap()
        }));
    }
    for task in tasks {
        let entry = task.await.unwrap();
        assert!(entry.seq >= 1 && entry.seq <= 20);
        assert_eq!(entry.hash, entry.expected_hash());
    }
    let entries = a.audit_entries(0, 100).await.unwrap();
    assert_eq!(entries.len(), 20);
    assert_eq!(verify_chain(entries.clone()), Ok(20));
    // A changed entry breaks the chain from there.
    schema
        .client()
        .await
        .execute("UPDATE audit SET actor = 'someone else' WHERE seq = 7", &[])
        .await
        .unwrap();
    let changed = b.audit_entries(0, 100).await.unwrap();
    assert_eq!(verify_chain(changed).unwrap_err().seq, 7);
    drop((a, b));
    schema.drop_now().await;
}

/// The outbox's queue is shared by replicas: an update accepted on one is claimed by one at a
/// time (leased), and when the claimer goes its lease lapses and another sends it.
#[tokio::test]
async fn replicas_share_the_outboxs_queue_by_leases() {
    use referral_relay::ig::OutboundEvent;
    use referral_relay::store::{
        OCEAN_QUEUE, OutboxStore, QueueStore, TaskState, UpdateKind, UpdateRecord,
    };

    let schema = Schema::new();
    let (a, b) = (schema.store().await, schema.store().await);
    let update = UpdateRecord::pending(
        ReferralRef::parse("PG-OUT").unwrap(),
        "main".into(),
        UpdateKind::Message,
        OutboundEvent::SendCommunicationFromProvider,
        "{}".into(),
        time::OffsetDateTime::now_utc(),
    );
    let stored = b
        .enqueue_update(update, TaskState::default(), None)
        .await
        .unwrap()
        .unwrap();
    let lease = Duration::from_secs(2);
    let now = time::OffsetDateTime::now_utc();
    let claimed = a
        .due_messages(OCEAN_QUEUE, now, lease, 10, &[])
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(
        UpdateRecord::from_message(claimed[0].clone()).unwrap().id,
        stored.id
    );
    assert!(
        b.due_messages(OCEAN_QUEUE, now, lease, 10, &[])
            .await
            .unwrap()
            .is_empty(),
        "leased to replica A"
    );
    // Replica A goes without sending it: once the lease lapses, B takes it.
    drop(a);
    tokio::time::sleep(lease + Duration::from_millis(200)).await;
    let now = time::OffsetDateTime::now_utc();
    let taken = b
        .due_messages(OCEAN_QUEUE, now, lease, 10, &[])
        .await
        .unwrap();
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].id, stored.id);
    drop(b);
    schema.drop_now().await;
}

/// Two replicas accepting updates of one referral at once: the second decided from a Task state
/// the first has since changed, so it stores nothing and is told to decide again.
#[tokio::test]
async fn an_update_decided_from_a_task_state_another_replica_changed_is_not_stored() {
    use referral_relay::ig::OutboundEvent;
    use referral_relay::store::{
        OutboxStore, QueueStore, TaskState, UpdateKind, UpdateRecord, UpdateState,
    };

    let schema = Schema::new();
    let (a, b) = (schema.store().await, schema.store().await);
    a.put_delivery(delivery("PG-RACE", "race-1")).await.unwrap();
    let referral = ReferralRef::parse("PG-RACE").unwrap();
    let update = |text: &str| {
        UpdateRecord::pending(
            referral.clone(),
            "main".into(),
            UpdateKind::Status,
            OutboundEvent::SendCommunicationFromProvider,
            text.into(),
            time::OffsetDateTime::now_utc(),
        )
    };
    let read = b.task_state(&referral).await.unwrap();
    assert_eq!(read, TaskState::default());
    let accepted = TaskState {
        status: Some("accepted".into()),
        task_sent: true,
        ..TaskState::default()
    };
    let first = a
        .enqueue_update(update("{}"), accepted.clone(), Some(&read))
        .await
        .unwrap();
    assert!(first.is_some());
    let declined = TaskState {
        status: Some("rejected".into()),
        task_sent: true,
        ..TaskState::default()
    };
    // B decided from the state before A's update: refused, nothing stored.
    assert_eq!(
        b.enqueue_update(update("{}"), declined.clone(), Some(&read))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        referral_relay::store::referral_updates(b.as_ref(), &referral)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(b.task_state(&referral).await.unwrap(), accepted);
    // Decided again from what A wrote: stored.
    let read = b.task_state(&referral).await.unwrap();
    assert!(
        b.enqueue_update(update("{}"), declined.clone(), Some(&read))
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(b.task_state(&referral).await.unwrap(), declined);
    // A discard (of a dead letter) rebuilt from a Task state since changed is refused the
    // same way.
    let mut gone = first.unwrap();
    gone.state = UpdateState::Dead;
    let dead = gone.clone().into_message();
    assert!(a.save_message(&dead, UpdateState::Pending).await.unwrap());
    assert!(
        !a.discard_update(&gone, TaskState::default(), Some(&accepted))
            .await
            .unwrap()
    );
    assert_eq!(
        referral_relay::store::update(a.as_ref(), gone.id)
            .await
            .unwrap()
            .unwrap()
            .state,
        UpdateState::Dead
    );
    assert!(
        a.discard_update(&gone, declined.clone(), Some(&declined))
            .await
            .unwrap()
    );
    assert_eq!(
        referral_relay::store::update(a.as_ref(), gone.id)
            .await
            .unwrap()
            .unwrap()
            .state,
        UpdateState::Discarded
    );
    drop((a, b));
    schema.drop_now().await;
}
