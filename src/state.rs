//! What every request handler shares: the store, the configured integrations with their
//! authentication, the clients of the API and of Ocean, limits and metrics. Built once at start
//! from the configuration.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::FromRef;

use crate::auth::Inbound;
use crate::auth::api::ApiClients;
use crate::auth::budget::Budget;
use crate::auth::limiter::LoginLimiter;
use crate::auth::refusals::{RefusalKind, Refusals};
use crate::auth::session::Sessions;
use crate::auth::source::TrustedProxies;
use crate::auth::token::TokenIssuer;
use crate::config::{AuthConfig, Config};
use crate::domain::{EventCode, IntegrationName, ServiceId};
use crate::intake::Intake;
use crate::ocean::outbox::Outbox;
use crate::ocean::sites::Sites;
use crate::ocean::worker::{Worker, WorkerHealth};
use crate::secret::Secret;
use crate::store::Store;
use crate::telemetry::Metrics;

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
    /// The Ocean sites and their clients.
    pub sites: Arc<Sites>,
    /// Updates to Ocean: accepted, replayed and discarded here, delivered by the worker.
    pub outbox: Arc<Outbox>,
    /// The clinic's systems stored versions are pushed to.
    pub destinations: crate::destinations::Destinations,
    /// Files deliveries the webhook received.
    pub intake: Arc<Intake>,
    /// Turns true when shutdown begins: long-polls answer at once, the worker stops.
    pub stopping: Arc<tokio::sync::watch::Sender<bool>>,
    pub max_body_bytes: usize,
    pub body_timeout: Duration,
    pub metrics: Metrics,
    /// Liveness of the outbox worker, for `/readyz`.
    pub worker_health: Arc<WorkerHealth>,
    /// Refused authentication, reported once per interval.
    pub refusals: Arc<Refusals>,
    /// What this process saw lately, for alerts.
    pub signals: Arc<crate::signals::Signals>,
    /// Alerts: their channels, and the conditions holding now.
    pub alerts: crate::alerts::Alerts,
    /// Bytes of request bodies held before their sender is authenticated.
    pub unauthenticated: Arc<Budget>,
    trusted_proxies: Arc<Vec<ipnet::IpNet>>,
    /// One permit: backups of the whole store are taken one at a time.
    pub backups: Arc<tokio::sync::Semaphore>,
    /// Signed-in users of the web console.
    pub console_sessions: Arc<Sessions>,
    /// The console's OpenID Connect relying party (used when `[console.oidc]` is set).
    pub oidc: Arc<crate::auth::oidc::OidcRelyingParty>,
    /// The certificate the listener serves, when it speaks HTTPS (for `/readyz`).
    pub tls_certificate: Option<Arc<crate::server::tls::ServedCertificate>>,
    /// Wakes the patient forms' fetcher when a notification was recorded.
    pub patient_forms_wake: Arc<tokio::sync::Notify>,
    /// The listings' screening services (CDS Hooks) and their counts.
    pub screening: Arc<crate::screening::Screening>,
    /// How CDS Hooks callers are authenticated.
    pub cds_auth: Arc<crate::auth::cds_client::CdsClientAuth>,
}

impl AppState {
    /// `shared_signing_key`: the token signing key replicas share through the store, when it
    /// holds one (see [`TokenIssuer::load`]).
    pub fn new(
        config: &Config,
        store: Arc<dyn Store>,
        shared_signing_key: Option<Vec<u8>>,
    ) -> anyhow::Result<Self> {
        let uses_oauth2 = config
            .integrations
            .values()
            .any(|i| matches!(i.auth, AuthConfig::Oauth2 { .. }));
        // The console's sign-in cookies need the key only when sign-in through a provider is on
        // (else a random one, never used, so no key file is made for it).
        let sign_in_key = if config.console.oidc.is_some() {
            crate::auth::token::signing_key(
                &config.oauth2,
                shared_signing_key.clone(),
                &config.server.data_dir,
            )?
        } else {
            crate::auth::token::generate_key()?
        };
        let tokens = if uses_oauth2 {
            Some(Arc::new(TokenIssuer::load(
                &config.oauth2,
                shared_signing_key,
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
        let sites = Arc::new(Sites::from_config(config)?);
        let console_sessions = Arc::new(Sessions::new(
            Arc::clone(&store),
            Duration::from_secs(config.console.session_idle_secs),
            Duration::from_secs(config.console.session_max_secs),
        ));
        let outbox = Arc::new(Outbox::new(config, Arc::clone(&sites), Arc::clone(&store)));
        let metrics = Metrics::new();
        let destinations = crate::destinations::Destinations::from_config(config)?;
        let intake = Arc::new(Intake::new(
            config,
            Arc::clone(&store),
            Arc::clone(&sites),
            destinations.clone(),
            metrics.clone(),
        ));
        let login_limiter =
            Arc::new(LoginLimiter::new(LOGIN_WINDOW).shared_through(Arc::clone(&store)));
        for integration in integrations.values() {
            metrics.register_integration(integration.name.as_str(), integration.inbound.scheme());
        }
        Ok(Self {
            store,
            integrations: Arc::new(integrations),
            tokens,
            oauth_clients: Arc::new(oauth_clients),
            login_limiter,
            api_clients: Arc::new(ApiClients::from_config(&config.api)),
            config: Arc::new(config.clone()),
            outbox,
            alerts: crate::alerts::Alerts::from_config(config, &destinations)?,
            destinations: destinations.clone(),
            intake,
            sites,
            stopping: Arc::new(tokio::sync::watch::channel(false).0),
            max_body_bytes: config.server.max_body_bytes,
            body_timeout: Duration::from_secs(config.server.body_timeout_secs),
            metrics,
            worker_health: Arc::new(WorkerHealth::new(send_bound(config))),
            refusals: Arc::new(Refusals::new()),
            signals: Arc::default(),
            unauthenticated: Budget::new(
                config.server.unauthenticated_body_budget(),
                config.server.max_body_bytes.saturating_mul(2),
            ),
            trusted_proxies: Arc::new(config.server.trusted_proxies.clone()),
            backups: Arc::new(tokio::sync::Semaphore::new(1)),
            console_sessions,
            oidc: Arc::new(crate::auth::oidc::OidcRelyingParty::new(&sign_in_key)),
            tls_certificate: None,
            patient_forms_wake: Arc::default(),
            screening: Arc::new(crate::screening::Screening::new(config)),
            cds_auth: Arc::new(crate::auth::cds_client::CdsClientAuth::new(
                &config.cds_hooks.auth,
                Duration::from_millis(config.cds_hooks.answer_within_ms),
            )),
        })
    }

    /// The outbox worker over this state's store and sites.
    pub fn worker(&self) -> Worker {
        Worker {
            store: Arc::clone(&self.store),
            sites: Arc::clone(&self.sites),
            config: self.config.outbox.clone(),
            wake: self.outbox.wake(),
            metrics: self.metrics.clone(),
            health: Arc::clone(&self.worker_health),
            signals: Arc::clone(&self.signals),
        }
    }

    /// One worker per destination, over this state's store.
    pub fn destination_workers(&self) -> Vec<crate::outgoing::worker::Worker> {
        self.destinations
            .iter()
            .map(|destination| crate::outgoing::worker::Worker {
                store: Arc::clone(&self.store),
                channel: Arc::new(crate::destinations::worker::DestinationChannel {
                    destination: Arc::clone(destination),
                    metrics: self.metrics.clone(),
                    signals: Arc::clone(&self.signals),
                }),
                policy: crate::outgoing::RetryPolicy::from_config(&self.config.outbox),
            })
            .collect()
    }

    /// One worker per alert channel, and the monitor that files alerts for them.
    pub fn alert_workers(&self) -> (crate::alerts::Monitor, Vec<crate::outgoing::worker::Worker>) {
        let workers = self
            .alerts
            .channels()
            .map(|channel| crate::outgoing::worker::Worker {
                store: Arc::clone(&self.store),
                channel: Arc::new(crate::alerts::AlertWorkerChannel {
                    channel: Arc::clone(channel),
                    request_timeout: Duration::from_secs(
                        self.config.alerts.smtp.timeout_secs.max(
                            self.config
                                .destinations
                                .values()
                                .map(|d| d.request_timeout_secs)
                                .max()
                                .unwrap_or(0),
                        ),
                    ),
                }),
                policy: crate::outgoing::RetryPolicy::from_config(&self.config.outbox),
            })
            .collect();
        let monitor = crate::alerts::Monitor {
            store: Arc::clone(&self.store),
            alerts: self.alerts.clone(),
            config: Arc::clone(&self.config),
            signals: Arc::clone(&self.signals),
            spool: Some(self.config.server.data_dir.join(crate::alerts::SPOOL)),
        };
        (monitor, workers)
    }

    /// The document fetcher over this state's store and sites.
    pub fn fetcher(&self) -> crate::ocean::documents::Fetcher {
        crate::ocean::documents::Fetcher {
            store: Arc::clone(&self.store),
            sites: Arc::clone(&self.sites),
            config: self.config.documents.clone(),
            wake: self.intake.documents_wake(),
            signals: Arc::clone(&self.signals),
        }
    }

    /// The fetcher of patients' completed eForms over this state's store.
    pub fn patient_form_fetcher(
        &self,
    ) -> anyhow::Result<crate::patient_engagement::fetcher::Fetcher> {
        crate::patient_engagement::fetcher::Fetcher::new(
            Arc::clone(&self.store),
            Arc::clone(&self.config),
            Arc::clone(&self.patient_forms_wake),
            self.destinations.clone(),
        )
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

    /// Records a refused caller, the one place every refusal goes through: the interval's
    /// report, which logs and audits it, and, for callers of the webhook and the token endpoint,
    /// `relay_auth_failures_total` labelled `metric` (a configured integration, or `unknown`).
    pub fn refused(
        &self,
        metric: Option<&str>,
        actor: String,
        scheme: &'static str,
        reason: &str,
        source: IpAddr,
    ) {
        if let Some(label) = metric {
            self.metrics.auth_failure(label, scheme);
            self.signals.refused(label);
        }
        self.refusals.record(
            RefusalKind {
                actor,
                scheme,
                reason: reason.to_owned(),
            },
            source,
        );
    }
}

/// The networks whose `X-Forwarded-For` is believed, for [`ClientAddr`](crate::auth::source::ClientAddr).
impl FromRef<AppState> for TrustedProxies {
    fn from_ref(state: &AppState) -> Self {
        Self(Arc::clone(&state.trusted_proxies))
    }
}

/// Longest one send to Ocean can take: token fetch, post, and one retry after a 401.
pub fn send_bound(config: &Config) -> Duration {
    Duration::from_secs(config.outbox.request_timeout_secs.saturating_mul(4))
}
