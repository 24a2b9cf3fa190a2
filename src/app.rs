//! Builds the application state, binds the listener, serves, and shuts down gracefully.
//!
//! The application binds its own listener and reports the address it got, so tests run the
//! production code path on `127.0.0.1:0`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use tokio::net::TcpListener;

use crate::auth::refusals::Refusals;
use crate::config::{AuthConfig, Config};
use crate::ocean::worker::Worker;
use crate::state::{AppState, send_bound};
use crate::store::{Keyring, SledOptions, SledStore, Store};
use crate::telemetry::Metrics;

/// A bound, ready-to-run server.
pub struct Application {
    listener: TcpListener,
    store: Arc<dyn Store>,
    retention: crate::config::RetentionConfig,
    router: Router,
    worker: Worker,
    fetcher: crate::ocean::documents::Fetcher,
    patient_forms: crate::patient_engagement::fetcher::Fetcher,
    /// One per destination; they hold the store, so they are awaited at shutdown.
    destination_workers: Vec<crate::outgoing::worker::Worker>,
    /// The alerts' monitor and one worker per alert channel.
    alert_workers: (crate::alerts::Monitor, Vec<crate::outgoing::worker::Worker>),
    metrics: Metrics,
    stopping: Arc<tokio::sync::watch::Sender<bool>>,
    shutdown_timeout: Duration,
    /// Longest one send to Ocean can take (token fetch, post, one 401 retry).
    send_bound: Duration,
    limits: crate::server::Limits,
    /// HTTPS on the listener, when configured.
    tls: Option<crate::server::tls::Tls>,
    /// SIGHUP, listened for from the start.
    hangup: Option<crate::server::tls::Hangup>,
    refusals: Arc<Refusals>,
    /// How often refused authentication is reported.
    refusals_every: Duration,
    /// The screening services, whose counts are added to the store in the background.
    screening: Arc<crate::screening::Screening>,
}

/// Descriptors kept free of client connections: the store's files, connections to Ocean,
/// shed connections being answered.
const DESCRIPTOR_RESERVE: u64 = 256;

impl Application {
    /// Opens the configured store (sled in the data dir, or PostgreSQL) and binds the listener.
    pub async fn build(config: &Config) -> anyhow::Result<Self> {
        if config.storage.backend == crate::config::Backend::Postgres {
            let store = crate::store::PgStore::connect(&pg_options(&config.storage)?)
                .await
                .map_err(|e| anyhow::anyhow!("cannot open the PostgreSQL store: {}", e.chain()))?;
            tracing::info!(schema = %config.storage.schema, "storing in PostgreSQL");
            return Self::build_with_store(config, store).await;
        }
        let options = sled_options(&config.storage)?;
        if options.keys.is_none() {
            tracing::info!("storage.encryption_key is not set: patient data is stored unencrypted");
        }
        let store = SledStore::open_opts(&config.server.data_dir, options)?;
        // Snapshots of backups a stopped service left behind.
        crate::backup::remove_leftovers(&config.server.data_dir);
        Self::build_with_store(config, Arc::new(store)).await
    }

    /// Binds the listener with the given store (tests pass their own implementations).
    pub async fn build_with_store(config: &Config, store: Arc<dyn Store>) -> anyhow::Result<Self> {
        for (name, integration) in &config.integrations {
            if integration.auth == AuthConfig::None {
                tracing::warn!(integration = %name, "integration accepts unauthenticated requests (auth scheme none); use it only for connectivity tests");
            }
        }
        if !config.screening.is_empty() && config.cds_hooks.auth == crate::config::CdsAuth::None {
            tracing::warn!(
                "the screening services (/cds-services) answer anyone (cds_hooks.auth scheme none)"
            );
        }
        let tls = crate::server::tls::Tls::from_config(config)?;
        let hangup = crate::server::tls::Hangup::install();
        let listener = TcpListener::bind(config.server.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.server.listen))?;
        // Replicas on a shared store sign tokens with one key, kept there by the first to start
        // (unless one is configured): a token issued by one is accepted by every other.
        let uses_oauth2 = config
            .integrations
            .values()
            .any(|i| matches!(i.auth, AuthConfig::Oauth2 { .. }));
        // The console's sign-in cookies are signed under the same key (see auth::oidc).
        let needs_key = uses_oauth2 || config.console.oidc.is_some();
        let shared_signing_key = if needs_key && config.oauth2.signing_key.is_empty() {
            store
                .shared_signing_key(&crate::auth::token::generate_key()?)
                .await
                .map_err(|e| anyhow::anyhow!("cannot read the shared signing key: {}", e.chain()))?
        } else {
            None
        };
        let mut state = AppState::new(config, store, shared_signing_key)?;
        state.tls_certificate = tls.as_ref().map(|t| Arc::clone(&t.certificate));
        let server = &config.server;
        let (max_connections, lowered_by) =
            crate::server::fit_connection_cap(server.max_connections, DESCRIPTOR_RESERVE);
        if let Some(limit) = lowered_by {
            tracing::warn!(
                configured = server.max_connections,
                max_connections,
                descriptor_limit = limit,
                "server.max_connections does not fit the descriptor limit (ulimit -n); lowered"
            );
        }
        let limits = crate::server::Limits {
            header_read_timeout: Duration::from_secs(server.header_read_timeout_secs),
            keep_alive_timeout: Duration::from_secs(server.keep_alive_timeout_secs),
            send_timeout: Duration::from_secs(server.send_timeout_secs),
            max_connections,
            max_connections_per_client: server.max_connections_per_client,
            trusted_proxies: server.trusted_proxies.clone(),
        };
        Ok(Self {
            limits,
            tls,
            hangup,
            refusals: Arc::clone(&state.refusals),
            screening: Arc::clone(&state.screening),
            refusals_every: Duration::from_secs(server.auth_failure_report_secs),
            listener,
            store: Arc::clone(&state.store),
            retention: config.retention.clone(),
            worker: state.worker(),
            fetcher: state.fetcher(),
            patient_forms: state.patient_form_fetcher()?,
            destination_workers: state.destination_workers(),
            alert_workers: state.alert_workers(),
            metrics: state.metrics.clone(),
            stopping: Arc::clone(&state.stopping),
            send_bound: send_bound(config),
            router: crate::routes::router(state),
            shutdown_timeout: Duration::from_secs(config.server.shutdown_timeout_secs),
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// Serves until `shutdown` completes, then stops accepting connections and lets in-flight
    /// requests finish for at most the configured drain timeout.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        // Boxed, so the server's code is compiled once, here, not again in every crate that
        // calls this with its own future (the tests, the benchmarks).
        self.serve_until(Box::pin(shutdown)).await
    }

    async fn serve_until(
        self,
        shutdown: std::pin::Pin<Box<dyn Future<Output = ()> + Send>>,
    ) -> anyhow::Result<()> {
        let stopping_tx = Arc::clone(&self.stopping);
        let mut stopping = self.stopping.subscribe();
        // The outbox worker stops between attempts when shutdown begins.
        let worker = tokio::spawn(supervise(self.worker, self.stopping.subscribe()));
        tokio::spawn(metrics_upkeep(
            self.metrics.clone(),
            self.stopping.subscribe(),
        ));
        // Tasks holding the store are awaited at the end, so that when this returns the store
        // is the caller's alone (a command run next can open the data dir).
        let mut holding_store = vec![tokio::spawn(self.fetcher.run(self.stopping.subscribe()))];
        holding_store.push(tokio::spawn(
            self.patient_forms.run(self.stopping.subscribe()),
        ));
        let (monitor, alert_workers) = self.alert_workers;
        holding_store.push(tokio::spawn(monitor.run(self.stopping.subscribe())));
        for worker in self.destination_workers.into_iter().chain(alert_workers) {
            holding_store.push(tokio::spawn(worker.run(self.stopping.subscribe())));
        }
        holding_store.push(tokio::spawn(report_refusals(
            Arc::clone(&self.refusals),
            Arc::clone(&self.store),
            self.refusals_every,
            self.stopping.subscribe(),
        )));
        holding_store.push(tokio::spawn(crate::screening::record_tallies(
            Arc::clone(&self.screening),
            Arc::clone(&self.store),
            self.stopping.subscribe(),
        )));
        if self.retention.keep_days > 0 || self.retention.delivered_keep_days > 0 {
            holding_store.push(tokio::spawn(retention(
                Arc::clone(&self.store),
                self.retention.clone(),
                self.stopping.subscribe(),
            )));
        }
        tokio::spawn(crate::server::tls::watch(
            self.tls.clone(),
            self.hangup,
            self.metrics.clone(),
            self.stopping.subscribe(),
        ));
        let server = crate::server::serve(
            self.listener,
            self.router,
            self.limits.clone(),
            self.tls.clone(),
            self.metrics.clone(),
            async move {
                shutdown.await;
                tracing::info!("shutting down: no new connections, draining requests in flight");
                stopping_tx.send_replace(true);
            },
        );
        let timeout = self.shutdown_timeout;
        let deadline = async move {
            let _ = stopping.wait_for(|s| *s).await;
            tokio::time::sleep(timeout).await;
        };
        tokio::select! {
            () = server => {}
            () = deadline => tracing::warn!(timeout_secs = timeout.as_secs(), "requests still in flight after the drain timeout; exiting"),
        }
        // Refusals counted since the last report are not lost at shutdown.
        if let Err(e) = self.refusals.report(self.store.as_ref()).await {
            tracing::error!(error = %e, "cannot report authentication failures");
        }
        // And neither are screening counts.
        if let Err(e) = self.screening.tallies.record(self.store.as_ref()).await {
            tracing::error!(error = %e, "cannot record screening counts");
        }
        // A send in progress is allowed to finish: cutting it off could post it twice.
        self.stopping.send_replace(true);
        if tokio::time::timeout(timeout.max(self.send_bound), worker)
            .await
            .is_err()
        {
            tracing::warn!("the outbox worker did not stop in time");
        }
        for task in holding_store {
            if tokio::time::timeout(timeout, task).await.is_err() {
                tracing::warn!("a background task did not stop in time");
            }
        }
        Ok(())
    }
}

/// The keyring the storage section configures; `None` when no key is set.
pub fn keyring(storage: &crate::config::StorageConfig) -> anyhow::Result<Option<Keyring>> {
    let Some(current) = &storage.encryption_key else {
        return Ok(None);
    };
    let previous: Vec<[u8; 32]> = storage.previous_keys.iter().map(|k| k.bytes()).collect();
    Ok(Some(Keyring::new(&current.bytes(), &previous)?))
}

/// How `[storage]` opens the embedded store: its keys, page cache and write queue.
pub fn sled_options(storage: &crate::config::StorageConfig) -> anyhow::Result<SledOptions> {
    Ok(SledOptions {
        keys: keyring(storage)?,
        cache_bytes: storage.cache_mib.saturating_mul(1 << 20),
        write_queue: storage.write_queue,
    })
}

/// How `[storage]` reaches PostgreSQL, and the keys it seals with.
pub fn pg_options(
    storage: &crate::config::StorageConfig,
) -> anyhow::Result<crate::store::PgOptions> {
    Ok(crate::store::PgOptions {
        schema: Some(storage.schema.clone()),
        max_connections: storage.max_connections,
        keys: keyring(storage)?.map(Arc::new),
        ..crate::store::PgOptions::new(storage.url.expose())
    })
}

/// At start and daily: purges versions older than `keep_days` (except each referral's latest),
/// and forgets destination messages delivered more than `delivered_keep_days` ago (0: never).
async fn retention(
    store: Arc<dyn Store>,
    config: crate::config::RetentionConfig,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    use tracing::Instrument;
    loop {
        retention_pass(store.as_ref(), &config)
            .instrument(tracing::info_span!("retention"))
            .await;
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(24 * 3600)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// One pass of [`retention`].
async fn retention_pass(store: &dyn Store, config: &crate::config::RetentionConfig) {
    let cutoff = |days: u64| {
        let keep = time::Duration::days(i64::try_from(days).unwrap_or(i64::MAX / 86_400));
        time::OffsetDateTime::now_utc()
            .checked_sub(keep)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
    };
    let keep_days = config.keep_days;
    if keep_days > 0 {
        match store.purge_versions_before(cutoff(keep_days)).await {
            Ok(0) => {}
            Ok(purged) => {
                tracing::info!(purged, keep_days, "retention purged old versions");
                let details =
                    serde_json::json!({"keep_days": keep_days, "versions_purged": purged});
                if let Err(e) = store.audit("RETENTION_PURGE", "retention", details).await {
                    tracing::error!(error = %e, "cannot audit a retention purge");
                }
            }
            Err(e) => tracing::error!(error = %e, "retention purge failed"),
        }
        // Patients' completed eForms are kept as long as versions: their content goes, their
        // record (state, dates) stays.
        match store.purge_patient_forms_before(cutoff(keep_days)).await {
            Ok(0) => {}
            Ok(purged) => {
                tracing::info!(purged, keep_days, "retention purged old patient forms");
                let details =
                    serde_json::json!({"keep_days": keep_days, "patient_forms_purged": purged});
                if let Err(e) = store.audit("RETENTION_PURGE", "retention", details).await {
                    tracing::error!(error = %e, "cannot audit a retention purge");
                }
            }
            Err(e) => tracing::error!(error = %e, "retention purge of patient forms failed"),
        }
    }
    let days = config.delivered_keep_days;
    if days > 0 {
        match store.purge_messages_before(cutoff(days)).await {
            Ok(0) => {}
            Ok(forgotten) => {
                tracing::info!(
                    forgotten,
                    days,
                    "retention forgot delivered destination messages"
                );
            }
            Err(e) => tracing::error!(error = %e, "forgetting delivered messages failed"),
        }
    }
}

/// Writes the refused authentication counted in each interval to the audit log.
async fn report_refusals(
    refusals: Arc<Refusals>,
    store: Arc<dyn Store>,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if let Err(e) = refusals.report(store.as_ref()).await {
            tracing::error!(error = %e, "cannot report authentication failures");
        }
    }
}

/// Folds histogram samples into buckets every few seconds, so memory stays bounded however
/// rarely `/metrics` is scraped.
async fn metrics_upkeep(metrics: Metrics, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(5)) => metrics.upkeep(),
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Runs the outbox worker, restarting it should it ever panic, until shutdown.
async fn supervise(worker: Worker, stop: tokio::sync::watch::Receiver<bool>) {
    let health = Arc::clone(&worker.health);
    let worker = worker.sender();
    loop {
        match tokio::spawn(worker.clone().run(stop.clone())).await {
            Ok(()) => return,
            Err(e) if e.is_panic() => {
                health.mark_panicked();
                tracing::error!("the outbox worker panicked; restarting it");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(_) => return,
        }
    }
}

/// Completes on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
