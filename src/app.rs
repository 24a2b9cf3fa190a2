//! Builds the application state, binds the listener, serves, and shuts down gracefully.
//!
//! The application binds its own listener and reports the address it got, so tests run the
//! production code path on `127.0.0.1:0`.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use tokio::net::TcpListener;
use tracing::Instrument;

use crate::auth::Inbound;
use crate::auth::api::ApiClients;
use crate::auth::limiter::LoginLimiter;
use crate::auth::refusals::Refusals;
use crate::auth::token::TokenIssuer;
use crate::config::{AuthConfig, Config};
use crate::domain::{EventCode, IntegrationName, ServiceId};
use crate::ocean::client::OceanClient;
use crate::ocean::transitions::Transitions;
use crate::ocean::worker::{Worker, WorkerHealth};
use crate::routes;
use crate::routes::webhook::budget::Budget;
use crate::secret::Secret;
use crate::store::{Keyring, SledStore, Store};
use crate::telemetry::Metrics;
use tokio::sync::Notify;

/// Window of the token endpoint's failed-login limiter.
const LOGIN_WINDOW: Duration = Duration::from_secs(60);

/// One configured integration, ready for requests.
pub struct Integration {
    pub name: IntegrationName,
    /// How its callers are authenticated (shared with checks on the blocking pool).
    pub inbound: Arc<Inbound>,
    /// Accepted event codes; empty accepts all.
    pub events: Vec<EventCode>,
    pub default_service: Option<ServiceId>,
    /// Integrations whose referrals it may deliver for, besides its own (sharing is mutual:
    /// listed by either side).
    pub shares_with: Vec<IntegrationName>,
}

/// Counts of what the webhook did with deliveries, since start.
#[derive(Debug, Default)]
pub struct Counters {
    pub stored: AtomicU64,
    pub duplicates: AtomicU64,
    pub ignored: AtomicU64,
    pub rejected: AtomicU64,
    pub auth_failures: AtomicU64,
}

/// A client of the token endpoint and what it may do.
pub struct OAuthClientEntry {
    pub integration: IntegrationName,
    /// Accepted secrets (more than one while a secret is rotated).
    pub secrets: Vec<Secret>,
    pub ttl_secs: u64,
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    integrations: Arc<BTreeMap<String, Integration>>,
    /// Issues and checks the relay's own OAuth2 tokens (only when an integration uses them).
    pub tokens: Option<Arc<TokenIssuer>>,
    oauth_clients: Arc<HashMap<String, OAuthClientEntry>>,
    pub login_limiter: Arc<LoginLimiter>,
    /// Clients of the point-of-service API.
    pub api_clients: Arc<ApiClients>,
    config: Arc<Config>,
    /// One client per Ocean site.
    pub ocean: Arc<HashMap<String, Arc<OceanClient>>>,
    /// Allowed Task status changes.
    pub transitions: Arc<Transitions>,
    /// Serialises acceptance of updates, so each transition is checked against the last.
    pub outbox_lock: Arc<tokio::sync::Mutex<()>>,
    /// Wakes the outbox worker when an update is accepted or replayed.
    pub outbox_wake: Arc<Notify>,
    /// Turns true when shutdown begins: long-polls answer at once, the worker stops.
    pub stopping: Arc<tokio::sync::watch::Sender<bool>>,
    pub max_body_bytes: usize,
    pub body_timeout: Duration,
    pub counters: Arc<Counters>,
    pub metrics: Metrics,
    /// Liveness of the outbox worker, for `/readyz`.
    pub worker_health: Arc<WorkerHealth>,
    /// Refused authentication, reported once per interval.
    pub refusals: Arc<Refusals>,
    /// Bytes of request bodies held before their sender is authenticated.
    pub unauthenticated: Arc<Budget>,
}

impl AppState {
    pub fn new(config: &Config, store: Arc<dyn Store>) -> anyhow::Result<Self> {
        let uses_oauth2 = config
            .integrations
            .values()
            .any(|i| matches!(i.auth, AuthConfig::Oauth2 { .. }));
        let tokens = if uses_oauth2 {
            Some(Arc::new(TokenIssuer::load(
                &config.oauth2,
                &config.server.data_dir,
            )?))
        } else {
            None
        };
        let mut integrations = BTreeMap::new();
        let mut oauth_clients: HashMap<String, OAuthClientEntry> = HashMap::new();
        for (name, c) in &config.integrations {
            if let AuthConfig::Oauth2 {
                clients,
                token_ttl_secs,
            } = &c.auth
            {
                for client in clients {
                    oauth_clients
                        .entry(client.client_id.clone())
                        .or_insert_with(|| OAuthClientEntry {
                            integration: name.clone(),
                            secrets: Vec::new(),
                            ttl_secs: *token_ttl_secs,
                        })
                        .secrets
                        .push(client.client_secret.clone());
                }
            }
            let shares_with = config
                .integrations
                .iter()
                .filter(|(other, o)| {
                    *other != name
                        && (c.share_referrals_with.contains(other)
                            || o.share_referrals_with.contains(name))
                })
                .map(|(other, _)| other.clone())
                .collect();
            let integration = Integration {
                name: name.clone(),
                inbound: Arc::new(
                    Inbound::from_config(&c.auth, tokens.as_ref())
                        .with_context(|| format!("integrations.{name}.auth"))?,
                ),
                events: c.events.clone(),
                default_service: c.default_service(),
                shares_with,
            };
            integrations.insert(name.to_string(), integration);
        }
        let metrics = Metrics::new();
        for integration in integrations.values() {
            metrics.register_integration(integration.name.as_str(), integration.inbound.scheme());
        }
        Ok(Self {
            store,
            integrations: Arc::new(integrations),
            tokens,
            oauth_clients: Arc::new(oauth_clients),
            login_limiter: Arc::new(LoginLimiter::new(LOGIN_WINDOW)),
            api_clients: Arc::new(ApiClients::from_config(&config.api)),
            config: Arc::new(config.clone()),
            ocean: Arc::new(crate::ocean::clients(config)?),
            transitions: Arc::new(Transitions::new(&config.outbox.transitions)),
            outbox_lock: Arc::default(),
            outbox_wake: Arc::default(),
            stopping: Arc::new(tokio::sync::watch::channel(false).0),
            max_body_bytes: config.server.max_body_bytes,
            body_timeout: Duration::from_secs(config.server.body_timeout_secs),
            counters: Arc::default(),
            metrics,
            worker_health: Arc::new(WorkerHealth::new(send_bound(config))),
            refusals: Arc::new(Refusals::new()),
            unauthenticated: Budget::new(
                config.server.unauthenticated_body_budget(),
                config.server.max_body_bytes.saturating_mul(2),
            ),
        })
    }

    /// The Ocean site that answers for referrals filed under `service`.
    pub fn site_for(&self, service: Option<&ServiceId>) -> Option<String> {
        crate::ocean::site_for(&self.config, service)
    }

    /// Where messages for `site` are posted.
    pub fn ocean_messages_url(&self, site: &str) -> Option<String> {
        self.ocean.get(site).map(|c| c.messages_url())
    }

    /// The outbox worker over this state's store and sites.
    pub fn worker(&self) -> Worker {
        Worker {
            store: Arc::clone(&self.store),
            sites: (*self.ocean).clone(),
            config: self.config.outbox.clone(),
            wake: Arc::clone(&self.outbox_wake),
            metrics: self.metrics.clone(),
            health: Arc::clone(&self.worker_health),
        }
    }

    /// The configuration the state was built from.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Names of the configured integrations.
    pub fn integration_names(&self) -> impl Iterator<Item = &str> {
        self.integrations.keys().map(String::as_str)
    }

    /// The token endpoint's client with this id.
    pub fn oauth_client(&self, client_id: &str) -> Option<&OAuthClientEntry> {
        self.oauth_clients.get(client_id)
    }

    pub fn integration(&self, name: &str) -> Option<&Integration> {
        self.integrations.get(name)
    }
}

/// The router with its layers. Each request gets an id, returned as `x-request-id` and carried
/// by the `request` span on every log line written while it is handled; the span holds the
/// matched route, never the body or a header value. A handler that panics despite everything
/// answers 500 instead of dropping the connection.
pub fn router(state: AppState) -> Router {
    let metrics = state.metrics.clone();
    routes::router(state)
        .layer(tower_http::catch_panic::CatchPanicLayer::new())
        .layer(axum::middleware::from_fn_with_state(metrics, observe))
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Wraps each request in its span, counts it by route and status, and logs its end.
async fn observe(State(metrics): State<Metrics>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let method = request.method().clone();
    let request_id = uuid::Uuid::new_v4().to_string();
    let span =
        tracing::info_span!("request", request_id = %request_id, method = %method, route = %route);
    let started = Instant::now();
    let mut response = next.run(request).instrument(span.clone()).await;
    let status = response.status();
    metrics.http_request(&method, &route, status.as_u16());
    span.in_scope(|| {
        tracing::debug!(
            status = status.as_u16(),
            latency_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            "request finished"
        );
    });
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}

/// A bound, ready-to-run server.
pub struct Application {
    listener: TcpListener,
    store: Arc<dyn Store>,
    keep_days: u64,
    router: Router,
    worker: Worker,
    metrics: Metrics,
    stopping: Arc<tokio::sync::watch::Sender<bool>>,
    shutdown_timeout: Duration,
    /// Longest one send to Ocean can take (token fetch, post, one 401 retry).
    send_bound: Duration,
    limits: crate::server::Limits,
    refusals: Arc<Refusals>,
    /// How often refused authentication is reported.
    refusals_every: Duration,
}

/// Descriptors kept free of client connections: the store's files, connections to Ocean,
/// shed connections being answered.
const DESCRIPTOR_RESERVE: u64 = 256;

impl Application {
    /// Opens the sled store in the configured data dir and binds the listener.
    pub async fn build(config: &Config) -> anyhow::Result<Self> {
        let keys = keyring(&config.storage)?;
        if keys.is_none() {
            tracing::info!("storage.encryption_key is not set: patient data is stored unencrypted");
        }
        let store = SledStore::open_with(&config.server.data_dir, keys)?;
        Self::build_with_store(config, Arc::new(store)).await
    }

    /// Binds the listener with the given store (tests pass their own implementations).
    pub async fn build_with_store(config: &Config, store: Arc<dyn Store>) -> anyhow::Result<Self> {
        for (name, integration) in &config.integrations {
            if integration.auth == AuthConfig::None {
                tracing::warn!(integration = %name, "integration accepts unauthenticated requests (auth scheme none); use it only for connectivity tests");
            }
        }
        let listener = TcpListener::bind(config.server.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.server.listen))?;
        let state = AppState::new(config, store)?;
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
            refusals: Arc::clone(&state.refusals),
            refusals_every: Duration::from_secs(server.auth_failure_report_secs),
            listener,
            store: Arc::clone(&state.store),
            keep_days: config.retention.keep_days,
            worker: state.worker(),
            metrics: state.metrics.clone(),
            stopping: Arc::clone(&state.stopping),
            send_bound: send_bound(config),
            router: router(state),
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
        let stopping_tx = Arc::clone(&self.stopping);
        let mut stopping = self.stopping.subscribe();
        // The outbox worker stops between attempts when shutdown begins.
        let worker = tokio::spawn(supervise(self.worker, self.stopping.subscribe()));
        tokio::spawn(metrics_upkeep(
            self.metrics.clone(),
            self.stopping.subscribe(),
        ));
        tokio::spawn(report_refusals(
            Arc::clone(&self.refusals),
            Arc::clone(&self.store),
            self.refusals_every,
            self.stopping.subscribe(),
        ));
        if self.keep_days > 0 {
            tokio::spawn(retention(
                Arc::clone(&self.store),
                self.keep_days,
                self.stopping.subscribe(),
            ));
        }
        let server = crate::server::serve(
            self.listener,
            self.router,
            self.limits.clone(),
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
        // A send in progress is allowed to finish: cutting it off could post it twice.
        self.stopping.send_replace(true);
        if tokio::time::timeout(timeout.max(self.send_bound), worker)
            .await
            .is_err()
        {
            tracing::warn!("the outbox worker did not stop in time");
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

/// Longest one send to Ocean can take: token fetch, post, and one retry after a 401.
fn send_bound(config: &Config) -> Duration {
    Duration::from_secs(config.outbox.request_timeout_secs.saturating_mul(4))
}

/// Purges versions older than `keep_days` (except each referral's latest) at start and daily.
async fn retention(
    store: Arc<dyn Store>,
    keep_days: u64,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let keep = time::Duration::days(i64::try_from(keep_days).unwrap_or(i64::MAX / 86_400));
        let cutoff = time::OffsetDateTime::now_utc()
            .checked_sub(keep)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        match store.purge_versions_before(cutoff).await {
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
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(24 * 3600)) => {}
            _ = stop.wait_for(|s| *s) => return,
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
    loop {
        match tokio::spawn(worker.clone().run(stop.clone())).await {
            Ok(()) => return,
            Err(e) if e.is_panic() => {
                worker.health.mark_panicked();
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
