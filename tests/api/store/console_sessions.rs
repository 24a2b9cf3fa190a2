//! The console's sessions in the store, on both backends (`ConsoleStore` through
//! `auth::session::Sessions`, as the console uses it): idle and absolute limits, sign-out and an
//! account's sessions ended, a touch that cannot bring back an ended session, visits kept; on sled across a reopening, on PostgreSQL across two stores on one
//! schema (two replicas).

use std::sync::Arc;
use std::time::Duration;

use referral_relay::auth::session::{NewSession, Sessions};
use referral_relay::store::{SledStore, Store};
use time::OffsetDateTime;

use crate::support::postgres::Schema;

fn who(account: &str) -> NewSession {
    NewSession {
        account: account.to_owned(),
        name: format!("{account} name"),
        role: "staff",
        service_ids: vec!["CARDIO-RAPID-01".into()],
        issuer: None,
    }
}

/// What both backends must do; `other` is a second handle on the same data (another replica,
/// or the store reopened), `reopen` gives it.
async fn the_contract(one: Arc<dyn Store>, other: Arc<dyn Store>) {
    let long = Duration::from_secs(3600);
    let sessions = Sessions::new(Arc::clone(&one), long, long);
    let elsewhere = Sessions::new(Arc::clone(&other), long, long);

    // A session started on one is found on the other, with what it was started with.
    let id = sessions.start(who("sam")).await.unwrap();
    let found = elsewhere.find(&id).await.unwrap().expect("found elsewhere");
    assert_eq!(found.account, "sam");
    assert_eq!(found.name, "sam name");
    assert_eq!(found.service_ids, ["CARDIO-RAPID-01"]);
    assert!(Sessions::csrf_matches(&found, &found.csrf));
    assert!(elsewhere.find("not a session id").await.unwrap().is_none());
    // Only the digest of the id is kept.
    let kept = one.console_sessions().await.unwrap();
    assert_eq!(kept.len(), 1);
    assert_ne!(kept[0].id_digest, id);

    // Signing out on the other ends it here; a late touch does not bring it back.
    assert_eq!(elsewhere.end(&id).await.unwrap().unwrap().account, "sam");
    one.touch_console_session(&kept[0].id_digest, OffsetDateTime::now_utc())
        .await
        .unwrap();
    assert!(sessions.find(&id).await.unwrap().is_none());

    // Ending an account's sessions ends all of them and no one else's.
    let laptop = sessions.start(who("sam")).await.unwrap();
    let phone = elsewhere.start(who("sam")).await.unwrap();
    let ada = sessions.start(who("ada")).await.unwrap();
    assert_eq!(elsewhere.end_all("sam").await.unwrap(), 2);
    assert!(sessions.find(&laptop).await.unwrap().is_none());
    assert!(sessions.find(&phone).await.unwrap().is_none());
    assert!(sessions.find(&ada).await.unwrap().is_some());
    assert_eq!(sessions.live().await.unwrap().len(), 1);

    // The list visit is kept for the account's next session.
    let seen = OffsetDateTime::now_utc() - Duration::from_secs(60);
    sessions.looked_at_list("ada", seen).await.unwrap();
    let next = elsewhere.start(who("ada")).await.unwrap();
    let since = sessions.find(&next).await.unwrap().unwrap().changes_since;
    assert_eq!(
        since.map(|t| t.unix_timestamp()),
        Some(seen.unix_timestamp())
    );
}

/// Idle and absolute limits, with the store's clock as the sessions see it.
async fn the_limits(store: Arc<dyn Store>) {
    let idle = Sessions::new(
        Arc::clone(&store),
        Duration::from_millis(400),
        Duration::from_secs(60),
    );
    let id = idle.start(who("idle")).await.unwrap();
    assert!(idle.find(&id).await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(idle.find(&id).await.unwrap().is_none(), "idle too long");

    let absolute = Sessions::new(
        Arc::clone(&store),
        Duration::from_secs(60),
        Duration::from_millis(500),
    );
    let id = absolute.start(who("busy")).await.unwrap();
    for _ in 0..3 {
        assert!(absolute.find(&id).await.unwrap().is_some());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        absolute.find(&id).await.unwrap().is_none(),
        "past the limit"
    );
    // Expired sessions are removed when the next one starts.
    absolute.start(who("next")).await.unwrap();
    let left: Vec<String> = store
        .console_sessions()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.account)
        .collect();
    assert_eq!(left, ["next"]);
}

#[tokio::test]
async fn sessions_hold_on_sled_across_a_reopening() {
    let dir = tempfile::TempDir::new().unwrap();
    let open = || -> Arc<dyn Store> { Arc::new(SledStore::open(dir.path()).unwrap()) };
    let store = open();
    let long = Duration::from_secs(3600);
    let id = Sessions::new(Arc::clone(&store), long, long)
        .start(who("kept"))
        .await
        .unwrap();
    drop(store);
    let store = open();
    let sessions = Sessions::new(Arc::clone(&store), long, long);
    assert_eq!(sessions.find(&id).await.unwrap().unwrap().account, "kept");
    sessions.end(&id).await.unwrap();
    // One process owns the embedded store: the "other replica" is the same handle.
    the_contract(Arc::clone(&store), Arc::clone(&store)).await;
    the_limits(store).await;
}

#[tokio::test]
async fn sessions_are_shared_by_replicas_on_postgres() {
    let schema = Schema::new();
    let one: Arc<dyn Store> = schema.store().await;
    let other: Arc<dyn Store> = schema.store().await;
    the_contract(Arc::clone(&one), other).await;
    the_limits(one).await;
    schema.drop_now().await;
}
