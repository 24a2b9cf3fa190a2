//! What the destination tests share: the service on either backend in a directory of its
//! own, deliveries of fresh referrals, and the API as the client that steers destinations.

use serde_json::Value;
use tempfile::TempDir;

use super::app::{Answer, TestApp, answer, config, spawn_app_in, spawn_with_store};
use super::fixtures::{V011_BUNDLE_ID, V011_REFERRAL, fixture};
use super::postgres::Schema;

/// The API key of client `ops`, which the destination tests configure.
pub const KEY: &str = "destinations-key-0123456789";

/// The service on sled in a directory of its own, or on a PostgreSQL schema of its own.
pub async fn app_on(postgres: bool, toml: &str) -> (TestApp, TempDir) {
    let dir = TempDir::new().unwrap();
    let config = config(toml, dir.path());
    if postgres {
        let schema = Schema::new();
        let store = schema.store().await;
        let mut app = spawn_with_store(&config, store).await;
        app.keep_schema(schema);
        return (app, dir);
    }
    (spawn_app_in(dir.path(), toml).await, dir)
}

/// Fixture `name` as a new delivery of `referral` (a fresh Bundle id).
pub fn delivery(name: &str, referral: &str) -> Vec<u8> {
    let text = String::from_utf8(fixture(name)).unwrap();
    let bundle_id = uuid::Uuid::new_v4().to_string();
    let original_id = serde_json::from_str::<Value>(&text).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    text.replace(V011_REFERRAL, referral)
        .replace(&original_id, &bundle_id)
        .replace(V011_BUNDLE_ID, &bundle_id)
        .into_bytes()
}

/// `method` on `path` as the API client holding [`KEY`].
pub async fn api(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> Answer {
    let mut request = app
        .client
        .request(method, app.url(path))
        .header("authorization", format!("Bearer {KEY}"));
    if let Some(body) = body {
        request = request.json(&body);
    }
    answer(request.send().await.unwrap()).await
}

/// What `/api/v1/destinations` says of destination `name`.
pub async fn destination(app: &TestApp, name: &str) -> Value {
    let list = api(app, reqwest::Method::GET, "/api/v1/destinations", None).await;
    assert_eq!(list.status, 200, "{}", list.body);
    list.body["destinations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == name)
        .cloned()
        .unwrap()
}

/// 32 bytes, base64: the secret a rotation moves to, and the one it moves from.
pub const NEW_SECRET: &str = "whsec_bmV3LXNlY3JldC1uZXctc2VjcmV0LW5ldy1zZWNyZXQhIQ==";
pub const OLD_SECRET: &str = "whsec_b2xkLXNlY3JldC1vbGQtc2VjcmV0LW9sZC1zZWNyZXQhIQ==";

/// A config with the API client and quick retries, plus `destinations` (TOML).
pub fn toml(destinations: &str) -> String {
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

/// The app on the embedded store in `dir`.
pub async fn sled_in(dir: &std::path::Path, toml: &str) -> TestApp {
    crate::support::app::spawn_app_in(dir, toml).await
}

/// New referral, Task accepted, appointment booked: versions 1 to 3 of `referral`.
pub const STEPS: [&str; 3] = [
    "v0.11-add-service-request.json",
    "update-task-accepted.json",
    "update-appointment-booked.json",
];

/// Delivers fixture `name` as `referral`; it must be stored.
pub async fn deliver(app: &TestApp, name: &str, referral: &str) {
    let answer = app.deliver("default", delivery(name, referral)).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
}

/// The versions of `referral` in the order they arrived.
pub fn versions_of(received: &[Value], referral: &str) -> Vec<u64> {
    received
        .iter()
        .filter(|m| m["referral"] == referral)
        .map(|m| m["version"].as_u64().unwrap())
        .collect()
}
