//! Test harness: the real server on 127.0.0.1:0 with a temp data dir, and typed helpers.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use referral_relay::app::Application;
use referral_relay::config::{Config, Overrides};
use referral_relay::store::{SledStore, Store};
use serde_json::Value;
use tempfile::TempDir;

pub const FHIR_JSON: &str = "application/fhir+json";

/// Every top-level fixture (the bad/ ones aside), in the order the tests deliver them.
pub const FIXTURES: [&str; 8] = [
    "v0.11-add-service-request.json",
    "v0.10-add-service-request.json",
    "update-task-accepted.json",
    "update-appointment-proposed.json",
    "update-appointment-booked.json",
    "revoke-service-request.json",
    "unknown-event-code.json",
    "unknown-servicerequest-status.json",
];

/// A running service and what the test needs to talk to it.
pub struct TestApp {
    pub addr: SocketAddr,
    pub store: Arc<dyn Store>,
    pub client: reqwest::Client,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
    _dir: Option<TempDir>,
    /// Dropped after the server (fields drop in order): the PostgreSQL schema, if any.
    _schema: super::postgres::SchemaGuard,
}

/// The HTTP answer, read whole.
pub struct Answer {
    pub status: u16,
    pub content_type: String,
    /// The `WWW-Authenticate` header, empty when absent.
    pub challenge: String,
    pub body: Value,
}

/// Logs stay silent unless `TEST_LOG` is set.
fn init_logs() {
    if std::env::var_os("TEST_LOG").is_some() {
        referral_relay::telemetry::init("debug", referral_relay::config::LogFormat::Text);
    }
}

/// Loads `toml` as the config file, listening on 127.0.0.1:0 with `data_dir`.
pub fn config(toml: &str, data_dir: &Path) -> Config {
    config_on(toml, data_dir, "127.0.0.1:0".parse().unwrap())
}

/// As [`config`], listening on `listen` (a loopback address a test reserved, for a peer that
/// must know the relay's address before it starts).
pub fn config_on(toml: &str, data_dir: &Path, listen: std::net::SocketAddr) -> Config {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), toml).unwrap();
    let overrides = Overrides {
        listen: Some(listen),
        data_dir: Some(data_dir.to_path_buf()),
        ..Overrides::default()
    };
    Config::load_with_env(Some(file.path()), &overrides, std::iter::empty()).unwrap()
}

/// The service on the built-in defaults (integration `default`, auth none).
pub async fn spawn_app() -> TestApp {
    spawn_app_with("").await
}

/// The service with `toml` layered over the defaults, on the real sled store, or on a schema of
/// its own in PostgreSQL when `RELAY_TEST_BACKEND=postgres` (see [`super::postgres`]).
pub async fn spawn_app_with(toml: &str) -> TestApp {
    spawn_app_on(toml, "127.0.0.1:0".parse().unwrap()).await
}

/// As [`spawn_app_with`], listening on `listen`.
pub async fn spawn_app_on(toml: &str, listen: std::net::SocketAddr) -> TestApp {
    let dir = TempDir::new().unwrap();
    let config = config_on(toml, dir.path(), listen);
    if super::postgres::postgres_backend() {
        let schema = super::postgres::Schema::new();
        let keys = referral_relay::app::keyring(&config.storage).unwrap();
        let store: Arc<dyn Store> = schema.store_with(keys.map(Arc::new)).await;
        let mut app = spawn_with_store(&config, store).await;
        app._dir = Some(dir);
        app._schema = super::postgres::SchemaGuard(Some(schema));
        return app;
    }
    sled_app(config, dir).await
}

/// The service with `toml` layered over the defaults, on the sled store whatever the backend
/// under test (for what only the embedded store has, such as its write queue).
pub async fn spawn_sled_app_with(toml: &str) -> TestApp {
    let dir = TempDir::new().unwrap();
    let config = config(toml, dir.path());
    sled_app(config, dir).await
}

async fn sled_app(config: Config, dir: TempDir) -> TestApp {
    let options = referral_relay::app::sled_options(&config.storage).unwrap();
    let store: Arc<dyn Store> = Arc::new(SledStore::open_opts(dir.path(), options).unwrap());
    let mut app = spawn_with_store(&config, store).await;
    app._dir = Some(dir);
    app
}

/// The service with `toml` on the sled store in `data_dir`, which outlives it (restart tests).
pub async fn spawn_app_in(data_dir: &Path, toml: &str) -> TestApp {
    spawn_app_in_on(data_dir, toml, "127.0.0.1:0".parse().unwrap()).await
}

/// As [`spawn_app_in`], listening on `listen`.
pub async fn spawn_app_in_on(data_dir: &Path, toml: &str, listen: std::net::SocketAddr) -> TestApp {
    let config = config_on(toml, data_dir, listen);
    let options = referral_relay::app::sled_options(&config.storage).unwrap();
    let store: Arc<dyn Store> = Arc::new(SledStore::open_opts(data_dir, options).unwrap());
    spawn_with_store(&config, store).await
}

/// The service with `config` and any store (tests pass failing ones).
pub async fn spawn_with_store(config: &Config, store: Arc<dyn Store>) -> TestApp {
    init_logs();
    let app = Application::build_with_store(config, Arc::clone(&store))
        .await
        .unwrap();
    let addr = app.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        app.run_until(async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    TestApp {
        addr,
        store,
        client: reqwest::Client::new(),
        shutdown: Some(tx),
        server: Some(server),
        _dir: None,
        _schema: super::postgres::SchemaGuard(None),
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// POSTs `body` to `path` with the given Content-Type (none when `None`).
    pub async fn post(&self, path: &str, content_type: Option<&str>, body: Vec<u8>) -> Answer {
        let mut request = self.client.post(self.url(path)).body(body);
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        answer(request.send().await.unwrap()).await
    }

    /// POSTs a message Bundle to the `$process-message` endpoint of `integration`.
    pub async fn deliver(&self, integration: &str, body: Vec<u8>) -> Answer {
        self.post(
            &format!("/fhir/{integration}/$process-message"),
            Some(FHIR_JSON),
            body,
        )
        .await
    }

    pub async fn get(&self, path: &str) -> Answer {
        answer(self.client.get(self.url(path)).send().await.unwrap()).await
    }

    /// Drops `schema` after the app (an app built on a PostgreSQL store by hand).
    pub fn keep_schema(&mut self, schema: super::postgres::Schema) {
        self._schema = super::postgres::SchemaGuard(Some(schema));
    }

    /// Stops the server and waits for it to finish.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.unwrap();
        }
    }
}

pub async fn answer(response: reqwest::Response) -> Answer {
    let status = response.status().as_u16();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    let (content_type, challenge) = (header("content-type"), header("www-authenticate"));
    let bytes = response.bytes().await.unwrap();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Answer {
        status,
        content_type,
        challenge,
        body,
    }
}

impl Answer {
    /// The diagnostics of the first issue of an OperationOutcome body.
    pub fn diagnostics(&self) -> &str {
        assert_eq!(
            self.body["resourceType"], "OperationOutcome",
            "not an OperationOutcome: {}",
            self.body
        );
        self.body["issue"][0]["diagnostics"].as_str().unwrap()
    }

    /// For a response message Bundle: its MessageHeader.
    pub fn response_header(&self) -> &Value {
        assert_eq!(
            self.body["type"], "message",
            "not a message Bundle: {}",
            self.body
        );
        &self.body["entry"][0]["resource"]
    }

    /// For a response message Bundle: the diagnostics of its OperationOutcome entry, if any.
    pub fn response_note(&self) -> Option<&str> {
        self.body["entry"][1]["resource"]["issue"][0]["diagnostics"].as_str()
    }
}

impl TestApp {
    /// The sum of every series of `name` whose labels include all of `labels`, from `/metrics`.
    pub async fn metric_sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_series(&self.metrics().await, name, labels)
            .iter()
            .sum()
    }

    /// The `/metrics` page as text.
    pub async fn metrics(&self) -> String {
        let response = self.client.get(self.url("/metrics")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        response.text().await.unwrap()
    }
}

/// The value of the one series of `name` whose labels include all of `labels`, from a
/// Prometheus text page; `None` when there is no such series.
pub fn metric(page: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let values = metric_series(page, name, labels);
    assert!(
        values.len() <= 1,
        "{name} {labels:?} matches several series"
    );
    values.first().copied()
}

/// The values of every series of `name` whose labels include all of `labels`.
pub fn metric_series(page: &str, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
    let mut found = Vec::new();
    for line in page.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (series_name, series_labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if series_name != name {
            continue;
        }
        let pairs: Vec<(&str, &str)> = series_labels
            .split(',')
            .filter_map(|pair| pair.split_once('='))
            .map(|(k, v)| (k, v.trim_matches('"')))
            .collect();
        if labels.iter().all(|wanted| pairs.contains(wanted)) {
            found.push(value.parse().unwrap());
        }
    }
    found
}
