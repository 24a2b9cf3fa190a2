//! A full disk on a real small filesystem (a tmpfs mounted for the test; the test machines run
//! as root): deliveries get 503 while it is full, readiness says so, nothing acknowledged is
//! lost, and once space is freed the store takes writes again without a restart.

use std::time::Duration;

use referral_relay::domain::ReferralRef;
use referral_relay::store::StoreHealth;

use crate::support::app::spawn_app_in;
use crate::support::disk::SmallFilesystem;
use crate::support::fixtures::{fixture, unique_v011};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_deliveries_until_space_is_freed_and_loses_nothing() {
    let fs = SmallFilesystem::mount("12m");
    let data = fs.path.join("data");
    let app = spawn_app_in(&data, "").await;
    let template = String::from_utf8(fixture("v0.11-add-service-request.json")).unwrap();
    // Leave room for a few dozen deliveries.
    let filler = fs.fill(1 << 20);

    let mut acknowledged = Vec::new();
    let mut refused = 0;
    for n in 0..3000 {
        let name = format!("TST-FULL-{n}");
        let reply = app
            .deliver(
                "default",
                unique_v011(&template, &name, &format!("full-{n}")),
            )
            .await;
        match reply.status {
            200 => acknowledged.push(name),
            503 => {
                refused += 1;
                if refused == 5 {
                    break;
                }
            }
            other => panic!("delivery {n}: {other} {}", reply.body),
        }
    }
    assert!(refused == 5, "the disk never filled");
    assert!(!acknowledged.is_empty());
    // Not ready while it cannot write; healthy, since it will recover once there is room.
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(
        ready.body["store"]
            .as_str()
            .unwrap()
            .starts_with("not writable")
    );
    let health = app.get("/healthz").await;
    assert_eq!(health.status, 200, "{}", health.body);
    assert_eq!(health.body["store"], "recovering");
    assert!(matches!(app.store.health(), StoreHealth::Recovering { .. }));

    std::fs::remove_file(filler).unwrap();
    // Recovery retries with backoff; a delivery goes through again within a minute.
    let mut recovered = false;
    for n in 0..240 {
        let name = format!("TST-AFTER-{n}");
        let reply = app
            .deliver(
                "default",
                unique_v011(&template, &name, &format!("after-{n}")),
            )
            .await;
        if reply.status == 200 {
            acknowledged.push(name);
            recovered = true;
            break;
        }
        assert_eq!(reply.status, 503, "{}", reply.body);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        recovered,
        "the store did not take writes again after space was freed"
    );
    assert_eq!(app.get("/readyz").await.status, 200);
    assert_eq!(app.store.health(), StoreHealth::Writable);
    // Every delivery acknowledged before, during and after is there, byte for byte.
    for name in &acknowledged {
        let referral = ReferralRef::parse(name).unwrap();
        let payload = app.store.payload(&referral, 1).await.unwrap();
        assert!(payload.is_some(), "{name} was acknowledged and is missing");
    }
    app.stop().await;
}

/// A store whose files vanish from under it (a volume unmounted, a directory removed) cannot
/// come back by waiting: the relay reports itself unhealthy, so an orchestrator or operator
/// acts, and never quietly opens an empty store in their place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_whose_files_vanish_is_reported_failed_and_not_replaced() {
    let fs = SmallFilesystem::mount("12m");
    let data = fs.path.join("data");
    let app = spawn_app_in(&data, "").await;
    let template = String::from_utf8(fixture("v0.11-add-service-request.json")).unwrap();
    let deliver = |n: usize| {
        app.deliver(
            "default",
            unique_v011(&template, &format!("TST-GONE-{n}"), &format!("gone-{n}")),
        )
    };
    assert_eq!(deliver(0).await.status, 200);
    let _filler = fs.fill(256 * 1024);
    let mut n = 1;
    while deliver(n).await.status == 200 {
        n += 1;
        assert!(n < 3000, "the disk never filled");
    }
    std::fs::remove_dir_all(data.join("sled")).unwrap();
    let mut health = app.get("/healthz").await;
    for _ in 0..300 {
        if health.status == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        health = app.get("/healthz").await;
    }
    assert_eq!(health.status, 503, "{}", health.body);
    assert!(
        health.body["store"].as_str().unwrap().contains("gone"),
        "{}",
        health.body
    );
    assert_eq!(app.get("/readyz").await.status, 503);
    assert_eq!(deliver(n + 1).await.status, 503);
    assert!(
        !data.join("sled").exists(),
        "an empty store was created in its place"
    );
    app.stop().await;
}

/// The disk filling again and again, and staying full while recovery tries to reopen the store:
/// it reopens only once there is room (sled opened on a full disk left a torn write that the
/// next open read as "Read corrupted data": every acknowledged delivery out of reach, seen in
/// the second or third cycle), and after every cycle the store opens with each acknowledged
/// delivery in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_that_fills_again_and_again_never_corrupts_the_store() {
    let fs = SmallFilesystem::mount("30m");
    let data = fs.path.join("data");
    let app = spawn_app_in(&data, "[storage]\ncache_mib = 4\n").await;
    let template = String::from_utf8(fixture("v0.11-add-service-request.json")).unwrap();
    // A fresh referral, numbered `n`: its name and the answer's status.
    let deliver = async |n: usize| {
        let name = format!("TST-AGAIN-{n}");
        let body = unique_v011(&template, &name, &format!("again-{n}"));
        (name, app.deliver("default", body).await.status)
    };
    let mut acknowledged = Vec::new();
    let mut n = 0;
    for _cycle in 0..4 {
        let filler = fs.fill(1 << 20);
        loop {
            n += 1;
            let (name, status) = deliver(n).await;
            match status {
                200 => acknowledged.push(name),
                503 => break,
                other => panic!("delivery {n}: {other}"),
            }
            assert!(n < 20_000, "the disk never filled");
        }
        // Recovery tries while the disk is still full.
        crate::support::poll::eventually("reopen attempts on the full disk", async || {
            match app.store.health() {
                StoreHealth::Failed(reason) => panic!("the store cannot recover: {reason}"),
                StoreHealth::Recovering { attempts, .. } => attempts >= 3,
                StoreHealth::Writable => false,
            }
        })
        .await;
        std::fs::remove_file(filler).unwrap();
        let mut taken = 0;
        crate::support::poll::eventually("17 deliveries after space was freed", async || {
            n += 1;
            let (name, status) = deliver(n).await;
            if status == 200 {
                acknowledged.push(name);
                taken += 1;
            } else {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            taken >= 17
        })
        .await;
    }
    app.stop().await;
    let store = referral_relay::store::SledStore::open(&data).expect("the store opens");
    for name in &acknowledged {
        let referral = ReferralRef::parse(name).unwrap();
        let payload = referral_relay::store::DeliveryStore::payload(&store, &referral, 1)
            .await
            .unwrap();
        assert!(payload.is_some(), "{name} was acknowledged and is missing");
    }
}
