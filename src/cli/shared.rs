//! What several commands share: loading the configuration with a `--data-dir`, opening the
//! store directly (the service stopped, or PostgreSQL), calling a running service's API with an
//! API key, and naming the person who ran a command in the audit trail.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::{Backend, Config, Overrides};
use crate::store::{SledStore, Store, StoreError};
use crate::telemetry;

/// POSTs to `url` of a running service with an API key (and a JSON `body`); returns the
/// answer's text, or an error naming `what` with the service's problem document.
pub(super) fn post_api(
    url: &str,
    key: &str,
    body: Option<&serde_json::Value>,
    what: &str,
) -> anyhow::Result<String> {
    let (status, text) = tokio::runtime::Runtime::new()?.block_on(async {
        let mut request = reqwest::Client::new().post(url).bearer_auth(key);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await?;
        let status = response.status();
        Ok::<_, reqwest::Error>((status, response.text().await?))
    })?;
    if !status.is_success() {
        anyhow::bail!("{what} refused ({status}): {text}");
    }
    Ok(text)
}

/// GETs `url` from a running service with an API key; an answer other than 2xx is an error
/// naming `what` and quoting the service's problem document.
pub(super) async fn fetch(url: &str, key: &str, what: &str) -> anyhow::Result<reqwest::Response> {
    let response = reqwest::Client::new()
        .get(url)
        .bearer_auth(key)
        .send()
        .await?;
    if !response.status().is_success() {
        let status = response.status();
        anyhow::bail!(
            "the service refused the {what} ({status}): {}",
            response.text().await?
        );
    }
    Ok(response)
}

/// The configuration of a command that takes `--config` and `--data-dir`.
pub(super) fn load_with_data_dir(
    config: Option<&Path>,
    data_dir: Option<PathBuf>,
) -> anyhow::Result<Config> {
    let overrides = Overrides {
        data_dir,
        ..Overrides::default()
    };
    Config::load(config, &overrides)
}

/// Who ran a command, for the audit trail.
pub(super) fn cli_actor() -> String {
    format!(
        "cli:{}",
        std::env::var("USER").unwrap_or_else(|_| "unknown".into())
    )
}

/// The configured store for a command that reads it directly: PostgreSQL (beside running
/// replicas), or the embedded store's data dir (see [`open_stopped`]).
pub(super) fn open_store(
    config: &Config,
    runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<Arc<dyn Store>> {
    if config.storage.backend == Backend::Postgres {
        telemetry::init(&config.log.level, config.log.format);
        let options = crate::app::pg_options(&config.storage)?;
        let store = runtime
            .block_on(crate::store::PgStore::connect(&options))
            .map_err(|e| anyhow::anyhow!("cannot open the PostgreSQL store: {}", e.chain()))?;
        return Ok(store);
    }
    Ok(Arc::new(open_stopped(config)?))
}

/// Opens the data dir for a command that reads it directly, saying what to do when a running
/// service holds it.
pub(super) fn open_stopped(config: &Config) -> anyhow::Result<SledStore> {
    // Opening may repair an interrupted rekey or warn about unsealed records: say so.
    telemetry::init(&config.log.level, config.log.format);
    if config.storage.backend == Backend::Postgres {
        anyhow::bail!(
            "this command works on the embedded store only; with storage.backend = postgres, use PostgreSQL's own tools"
        );
    }
    let options = crate::app::sled_options(&config.storage)?;
    SledStore::open_opts(&config.server.data_dir, options).map_err(|e| match e {
        StoreError::InUse { .. } => anyhow::anyhow!(
            "{e}. A running referral-relay holds it: stop it, or (for export) go through it with --url and --key"
        ),
        e => e.into(),
    })
}
