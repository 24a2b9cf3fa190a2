//! What replicas on one PostgreSQL share beyond referrals: Ocean fetches its token from one
//! replica and posts the webhook to another (the load balancer chooses), and a guesser spreading
//! tries over replicas is limited as if there were one.

use std::sync::Arc;

use serde_json::Value;

use crate::support::app::{FHIR_JSON, TestApp, config, spawn_with_store};
use crate::support::fixtures::fixture;
use crate::support::postgres::Schema;

/// An `oauth2` integration with no configured signing key: each replica would generate its own.
const OAUTH2: &str = r#"
[integrations.oauth]
auth = { scheme = "oauth2", clients = [{ client_id = "ocean-client", client_secret = "client-secret" }] }
"#;

/// Two replicas of the service on one schema, each with its own data dir.
async fn two_replicas(schema: &Schema) -> (TestApp, TestApp, [tempfile::TempDir; 2]) {
    let dirs = [
        tempfile::TempDir::new().unwrap(),
        tempfile::TempDir::new().unwrap(),
    ];
    let a = spawn_with_store(&config(OAUTH2, dirs[0].path()), schema.store().await).await;
    let b = spawn_with_store(&config(OAUTH2, dirs[1].path()), schema.store().await).await;
    (a, b, dirs)
}

async fn token_request(app: &TestApp, secret: &str) -> (u16, Value) {
    let response = app
        .client
        .post(app.url("/oauth2/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "grant_type=client_credentials&client_id=ocean-client&client_secret={secret}"
        ))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

async fn post_with(app: &TestApp, token: &str) -> u16 {
    app.client
        .post(app.url("/fhir/oauth/$process-message"))
        .header("content-type", FHIR_JSON)
        .bearer_auth(token)
        .body(fixture("v0.11-add-service-request.json"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// A token issued by one replica opens the other's webhook, both ways: the replicas sign with
/// the key the first kept in the database (sealed like patient data), not one each.
#[tokio::test]
async fn a_token_from_one_replica_opens_the_webhook_of_another() {
    let schema = Schema::new();
    let (a, b, dirs) = two_replicas(&schema).await;
    for (issuer, receiver) in [(&a, &b), (&b, &a)] {
        let (status, token) = token_request(issuer, "client-secret").await;
        assert_eq!(status, 200, "{token}");
        let token = token["access_token"].as_str().unwrap();
        assert_eq!(post_with(receiver, token).await, 200);
    }
    // A token signed with any other key is still refused.
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({"iss": "referral-relay", "aud": "oauth", "sub": "ocean-client",
            "iat": 0, "exp": 4_000_000_000_i64, "jti": "x"}),
        &jsonwebtoken::EncodingKey::from_secret(b"not the shared key"),
    )
    .unwrap();
    assert_eq!(post_with(&b, &forged).await, 401);
    // The key is in one row, and neither data dir holds a key file of its own.
    let kept: i64 = schema
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM relay_settings WHERE name = 'oauth2_signing_key'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept, 1);
    for dir in &dirs {
        assert!(!dir.path().join("oauth2-signing.key").exists());
    }
    a.stop().await;
    b.stop().await;
    schema.drop_now().await;
}

/// Failed token requests count across replicas: the fifth wrong secret locks this address out
/// of the client on both, though neither saw five; another address is not locked out.
#[tokio::test]
async fn failed_logins_on_one_replica_count_on_the_others() {
    let schema = Schema::new();
    let (a, b, _dirs) = two_replicas(&schema).await;
    for n in 0..5 {
        let replica = if n % 2 == 0 { &a } else { &b };
        let (status, body) = token_request(replica, "wrong").await;
        assert_eq!(status, 401, "try {n}: {body}");
    }
    for replica in [&a, &b] {
        // Even the right secret waits for the window from this address.
        let (status, body) = token_request(replica, "client-secret").await;
        assert_eq!(status, 429, "{body}");
    }
    // The counts are per address: another address's bucket is empty.
    let store: Arc<dyn referral_relay::store::Store> = schema.store().await;
    let other = store
        .login_failures(
            &["account 192.0.2.1 ocean-client".to_owned()],
            std::time::Duration::from_secs(60),
        )
        .await
        .unwrap();
    assert_eq!(other[0].failures, 0);
    let ours = store
        .login_failures(
            &["account 127.0.0.1 ocean-client".to_owned()],
            std::time::Duration::from_secs(60),
        )
        .await
        .unwrap();
    assert_eq!(ours[0].failures, 5);
    assert!((1..=60).contains(&ours[0].window_left_secs), "{ours:?}");
    a.stop().await;
    b.stop().await;
    schema.drop_now().await;
}

/// Where the test reaches each replica process (a restarted one listens on a new port).
type Addresses = Arc<std::sync::Mutex<[std::net::SocketAddr; 2]>>;

fn replica_config(schema: &Schema, ocean: &crate::support::ocean::MockOcean) -> String {
    use crate::support::ocean::{CLIENT_ID, CLIENT_SECRET};
    format!(
        "[storage]\nbackend = \"postgres\"\nurl = \"{}\"\nschema = \"{}\"\nmax_connections = 8\n\n\
         [api.clients.emr]\nkey = \"{API_KEY}\"\n\n\
         [sites.main]\nbase_url = \"{}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret = \"{CLIENT_SECRET}\"\ntoken_auth = \"form\"\n\n\
         [outbox]\ninitial_backoff_secs = 1\nmax_backoff_secs = 1\nrequest_timeout_secs = 5\n",
        crate::support::postgres::server_url(),
        schema.name,
        ocean.base_url()
    )
}

const API_KEY: &str = "emr-key-0123456789";

/// POSTs `body` to replica `first`, then to the other, until one acknowledges it (as Ocean
/// retries a delivery that was not acknowledged).
async fn deliver_until_acknowledged(
    client: &reqwest::Client,
    addresses: &Addresses,
    first: usize,
    body: &[u8],
) {
    for attempt in 0..200 {
        let addr = addresses.lock().unwrap()[(first + attempt) % 2];
        let sent = client
            .post(format!("http://{addr}/fhir/default/$process-message"))
            .header("content-type", FHIR_JSON)
            .body(body.to_vec())
            .send()
            .await;
        if sent.is_ok_and(|r| r.status() == 200) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("no replica acknowledged a delivery");
}

/// Two `referral-relay serve` processes on one database: writers post to both, one is killed
/// with SIGKILL mid-stream and restarted, a consumer follows the feed from either, updates are
/// accepted on either and sent by whichever holds the outbox. Every acknowledged delivery is
/// stored exactly once, the consumer sees the whole feed once and in order, and every update
/// reaches the stand-in Ocean: once, or, for the one in flight at the kill, resent with the
/// same Bundle id (which FHIR messaging has a receiver process once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replica_processes_lose_nothing_when_one_is_killed() {
    use crate::support::binary::{Relay, launch};
    use crate::support::fixtures::unique_v011;
    use crate::support::ocean::MockOcean;
    use std::sync::atomic::{AtomicBool, Ordering};

    const WRITERS: usize = 4;
    const PER_WRITER: usize = 40;

    let schema = Schema::new();
    drop(schema.store().await); // creates the schema (and drops stale ones)
    let ocean = MockOcean::start().await;
    let files = tempfile::TempDir::new().unwrap();
    let config = files.path().join("relay.toml");
    std::fs::write(&config, replica_config(&schema, &ocean)).unwrap();
    let start = |name: &str| -> Relay {
        let dir = files.path().join(name);
        launch(&dir, Some(&config), &[], &[("RUST_LOG", "info")])
    };
    let mut a = tokio::task::block_in_place(|| start("a"));
    let b = tokio::task::block_in_place(|| start("b"));
    let addresses: Addresses = Arc::new(std::sync::Mutex::new([a.addr, b.addr]));
    let client = reqwest::Client::new();
    let done = Arc::new(AtomicBool::new(false));

    // The consumer, from either replica, switching on every page and on errors.
    let consumer = {
        let (addresses, client, done) = (Arc::clone(&addresses), client.clone(), Arc::clone(&done));
        tokio::spawn(async move {
            let mut seen: Vec<(u64, String)> = Vec::new();
            let (mut after, mut turn, mut quiet) = (0_u64, 0_usize, 0);
            loop {
                let addr = addresses.lock().unwrap()[turn % 2];
                turn += 1;
                let page = client
                    .get(format!("http://{addr}/api/v1/events?after={after}&wait=1"))
                    .bearer_auth(API_KEY)
                    .send()
                    .await;
                let Ok(page) = page else { continue };
                assert_eq!(page.status(), 200, "{:?}", page.text().await);
                let page: Value = page.json().await.unwrap();
                let events = page["events"].as_array().unwrap();
                for event in events {
                    seen.push((
                        event["seq"].as_u64().unwrap(),
                        event["referral"].as_str().unwrap().to_owned(),
                    ));
                }
                after = page["next"].as_u64().unwrap();
                quiet = if events.is_empty() { quiet + 1 } else { 0 };
                if done.load(Ordering::Relaxed) && quiet >= 2 {
                    return seen;
                }
            }
        })
    };

    // Writers, each posting its own referrals to both replicas in turn; every tenth referral
    // also gets a message to Ocean, accepted on one replica or the other.
    let template = String::from_utf8(fixture("v0.11-add-service-request.json")).unwrap();
    let accepted = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let written = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (addresses, client, template, accepted, written) = (
            Arc::clone(&addresses),
            client.clone(),
            template.clone(),
            Arc::clone(&accepted),
            Arc::clone(&written),
        );
        writers.push(tokio::spawn(async move {
            for i in 0..PER_WRITER {
                let n = w * PER_WRITER + i;
                let referral = format!("TST-REP-{n:05}");
                let body = unique_v011(
                    &template,
                    &referral,
                    &format!("b0110000-0000-4000-8000-{n:012}"),
                );
                deliver_until_acknowledged(&client, &addresses, n, &body).await;
                written.fetch_add(1, Ordering::Relaxed);
                if n.is_multiple_of(10) {
                    let marker = format!("relay-replica-test-{n:05}");
                    // Replicas in turn; a refused connection (the replica is down) never
                    // reached it, so the other is asked.
                    for attempt in 0..200 {
                        let addr = addresses.lock().unwrap()[(n / 10 + attempt) % 2];
                        let reply = client
                            .post(format!(
                                "http://{addr}/api/v1/referrals/{referral}/messages"
                            ))
                            .bearer_auth(API_KEY)
                            .json(&serde_json::json!({ "text": marker }))
                            .send()
                            .await;
                        match reply {
                            Ok(reply) => {
                                assert_eq!(reply.status(), 202, "{:?}", reply.text().await);
                                accepted.lock().unwrap().push(marker);
                                break;
                            }
                            Err(e) if e.is_connect() => {
                                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                            }
                            // Cut off mid-request by the kill: it may or may not be accepted.
                            Err(_) => break,
                        }
                    }
                }
            }
        }));
    }

    // Replica A dies mid-stream, and comes back.
    while written.load(Ordering::Relaxed) < WRITERS * PER_WRITER / 3 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    a.child.kill().unwrap(); // SIGKILL
    a.child.wait().unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    a = tokio::task::block_in_place(|| start("a"));
    addresses.lock().unwrap()[0] = a.addr;

    for writer in writers {
        writer.await.unwrap();
    }
    done.store(true, Ordering::Relaxed);
    let seen = consumer.await.unwrap();

    // Every acknowledged delivery is stored exactly once.
    let db = schema.client().await;
    let stored: Vec<(String, i64)> = db
        .query(
            "SELECT referral, count(*) FROM versions WHERE referral LIKE 'TST-REP-%' GROUP BY referral",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert_eq!(stored.len(), WRITERS * PER_WRITER);
    assert!(stored.iter().all(|(_, n)| *n == 1), "{stored:?}");

    // The consumer saw the whole feed, once, in order.
    let end: i64 = db
        .query_one("SELECT coalesce(max(seq), 0) FROM events", &[])
        .await
        .unwrap()
        .get(0);
    let seqs: Vec<u64> = seen.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(seqs, (1..=u64::try_from(end).unwrap()).collect::<Vec<_>>());
    let mut referrals: Vec<&str> = seen.iter().map(|(_, r)| r.as_str()).collect();
    referrals.sort_unstable();
    referrals.dedup();
    assert_eq!(referrals.len(), seen.len(), "a referral was fed twice");

    // Every accepted update reaches Ocean; a resend carries the same Bundle id.
    let accepted = accepted.lock().unwrap().clone();
    assert!(
        accepted.len() >= WRITERS * PER_WRITER / 10 - 1,
        "{accepted:?}"
    );
    let mut arrivals: std::collections::HashMap<String, Vec<String>> = Default::default();
    for _ in 0..600 {
        arrivals.clear();
        for body in ocean.delivered() {
            let text = body.to_string();
            if let Some(marker) = accepted.iter().find(|m| text.contains(m.as_str())) {
                let id = body["id"].as_str().unwrap_or_default().to_owned();
                arrivals.entry(marker.clone()).or_default().push(id);
            }
        }
        if arrivals.len() == accepted.len() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let missing: Vec<&String> = accepted
        .iter()
        .filter(|m| !arrivals.contains_key(*m))
        .collect();
    assert!(missing.is_empty(), "never reached Ocean: {missing:?}");
    let resent: Vec<_> = arrivals.iter().filter(|(_, ids)| ids.len() > 1).collect();
    assert!(resent.len() <= 1, "resent: {resent:?}");
    for (_, ids) in &resent {
        assert!(
            ids.iter().all(|id| id == &ids[0] && !id.is_empty()),
            "{ids:?}"
        );
    }

    for mut relay in [a, b] {
        relay.child.kill().unwrap();
        relay.child.wait().unwrap();
    }
    drop(db);
    schema.drop_now().await;
}
