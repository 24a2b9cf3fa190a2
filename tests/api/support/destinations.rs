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
