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
