//! Typed configuration: the embedded `config/default.toml`, then a file, then `RELAY__*`
//! environment variables (with `_FILE` variants), then command-line flags. Validated once at
//! start; every error names the key it is about.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Deserializer, Serialize};

use crate::domain::{EventCode, IntegrationName, ServiceId, redact_quoted};

/// The documented defaults, built into the binary as the base layer.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// Prefix of environment variables; `__` separates nesting levels.
const ENV_PREFIX: &str = "RELAY__";

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub log: LogConfig,
    /// Ocean sites that issued OAuth credentials, by name; status updates go out through them.
    #[serde(default)]
    pub sites: BTreeMap<String, SiteConfig>,
    /// How updates to Ocean are retried.
    #[serde(default)]
    pub outbox: OutboxConfig,
    /// How long old versions are kept.
    #[serde(default)]
    pub retention: RetentionConfig,
    /// Encryption of patient data at rest.
    #[serde(default)]
    pub storage: StorageConfig,
    /// The point-of-service API and its clients.
    #[serde(default)]
    pub api: ApiConfig,
    /// The OAuth2 token endpoint the relay serves (used by `oauth2` integrations).
    #[serde(default)]
    pub oauth2: OAuth2Config,
    /// Ocean integrations by name; the name is part of the webhook URL.
    #[serde(default)]
    pub integrations: BTreeMap<IntegrationName, IntegrationConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address the HTTP server binds.
    pub listen: SocketAddr,
    /// Directory of the embedded store.
    pub data_dir: PathBuf,
    /// Largest accepted request body in bytes; larger ones get 413.
    pub max_body_bytes: usize,
    /// Bound on receiving one request body; slower uploads get 408.
    pub body_timeout_secs: u64,
    /// Bound on draining in-flight requests at shutdown.
    pub shutdown_timeout_secs: u64,
    /// When set, `/metrics` answers only `Authorization: Bearer <this>`; empty leaves it open.
    #[serde(default)]
    pub metrics_token: Secret,
    /// A request head must arrive whole within this many seconds of its first byte (for a new
    /// connection, of its opening); otherwise the connection is dropped.
    pub header_read_timeout_secs: u64,
    /// A connection idle between requests for longer than this is closed. Keep it above the
    /// idle timeout of any load balancer in front (often 60 s).
    pub keep_alive_timeout_secs: u64,
    /// A response the client does not read for this long ends its connection.
    pub send_timeout_secs: u64,
    /// Open connections at most; a connection beyond is answered 503 with `Retry-After` and
    /// closed. Lowered at start when the descriptor limit cannot hold it.
    pub max_connections: usize,
    /// Open connections one client (an IPv4 address, or an IPv6 /64) may hold; more are
    /// answered 503. Peers in `trusted_proxies` are not held to it.
    pub max_connections_per_client: usize,
    /// Bytes of request bodies held, all requests together, before their sender is
    /// authenticated (`hmac` integrations verify a signature over the body), counting the
    /// decoding of a compressed one. Past it such uploads are answered 503 with `Retry-After`.
    /// One client (an IPv4 address, an IPv6 /64) may hold at most twice `max_body_bytes` of it.
    /// At least twice `max_body_bytes`; 0 (the default) is four times `max_body_bytes`.
    pub max_unauthenticated_body_bytes: usize,
    /// Networks of reverse proxies and load balancers whose `X-Forwarded-For` names the client
    /// (CIDR, e.g. `10.0.0.0/8`). Empty: the peer address is the client.
    #[serde(default)]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Authentication failures are written to the audit log and the log once per this many
    /// seconds, one entry per integration, scheme and reason with the sources and counts.
    pub auth_failure_report_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// EnvFilter directive (`RUST_LOG` wins when set).
    pub level: String,
    /// `text` (readable on a terminal) or `json` (one object per line, for log shippers).
    #[serde(default)]
    pub format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntegrationConfig {
    /// How callers of this integration's webhook authenticate.
    pub auth: AuthConfig,
    /// Event codes accepted; empty accepts all.
    #[serde(default)]
    pub events: Vec<EventCode>,
    /// External Service ID for messages that carry none; empty for none.
    #[serde(default, deserialize_with = "string_or_number")]
    pub default_service_id: String,
    /// Other integrations whose referrals this one may deliver updates for (and they for its
    /// own: sharing goes both ways). A referral belongs to the integration that first delivered
    /// it; a delivery for it on any other integration is refused with 403.
    #[serde(default)]
    pub share_referrals_with: Vec<IntegrationName>,
}

impl IntegrationConfig {
    /// The configured default External Service ID, if any (checked by [`Config::validate`]).
    pub fn default_service(&self) -> Option<ServiceId> {
        ServiceId::parse(&self.default_service_id).ok()
    }
}

/// The inbound authentication scheme of an integration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "scheme", rename_all = "lowercase", deny_unknown_fields)]
pub enum AuthConfig {
    /// Anyone may post. Only for first connectivity tests; warned about at start.
    None,
    /// HTTP Basic: the username and password the Ocean admin enters.
    Basic {
        username: String,
        password: Secret,
        /// Passwords still accepted while a rotation is under way.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        previous_passwords: Vec<Secret>,
    },
    /// OAuth 2.0 client credentials with the relay as the authorization server: Ocean fetches
    /// a token from `POST /oauth2/token` and sends it as a bearer token.
    Oauth2 {
        /// Clients allowed to fetch tokens for this integration. A client id may appear twice
        /// with different secrets while its secret is rotated.
        clients: Vec<OAuthClient>,
        /// Lifetime of issued tokens, in seconds.
        #[serde(default = "default_token_ttl")]
        token_ttl_secs: u64,
    },
    /// Static bearer tokens, as FHIR rest-hook subscriptions send them; several for rotation.
    Bearer { tokens: Vec<Secret> },
    /// Standard Webhooks HMAC-SHA256 signatures; several `whsec_` secrets for rotation.
    Hmac {
        secrets: Vec<Secret>,
        /// Largest accepted distance between `webhook-timestamp` and now, in seconds.
        #[serde(default = "default_tolerance")]
        tolerance_secs: u64,
    },
}

impl AuthConfig {
    /// The scheme's name as configured.
    pub fn scheme(&self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Basic { .. } => "basic",
            Self::Oauth2 { .. } => "oauth2",
            Self::Bearer { .. } => "bearer",
            Self::Hmac { .. } => "hmac",
        }
    }
}

fn default_token_ttl() -> u64 {
    3600
}

fn default_tolerance() -> u64 {
    300
}

/// A client allowed to fetch tokens from the relay's token endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthClient {
    #[serde(deserialize_with = "string_or_number")]
    pub client_id: String,
    pub client_secret: Secret,
}

/// An Ocean site the relay sends updates to.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteConfig {
    /// e.g. `https://ocean.cognisantmd.com`; tokens come from `{base_url}/svc/oauth2/token`.
    pub base_url: String,
    #[serde(deserialize_with = "string_or_number")]
    pub client_id: String,
    pub client_secret: Secret,
    /// How the client credentials are sent to the token endpoint.
    #[serde(default)]
    pub token_auth: TokenAuth,
    /// External Service IDs whose referrals this site answers for; empty: all.
    #[serde(default)]
    pub service_ids: Vec<ServiceId>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenAuth {
    /// `client_id` and `client_secret` in the form body.
    #[default]
    Form,
    /// An HTTP Basic header.
    Basic,
}

/// Delivery of updates to Ocean.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxConfig {
    /// How long an update is retried before it becomes a dead letter (Ocean's own is 96 h).
    pub retry_horizon_secs: u64,
    /// First backoff; it doubles per attempt, with jitter, up to `max_backoff_secs`.
    pub initial_backoff_secs: u64,
    pub max_backoff_secs: u64,
    /// Bound on one request to Ocean.
    pub request_timeout_secs: u64,
    /// Allowed Task status changes: current status → statuses it may move to. Keys given here
    /// replace the built-in row for that status.
    pub transitions: BTreeMap<String, Vec<String>>,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            retry_horizon_secs: 96 * 3600,
            initial_backoff_secs: 2,
            max_backoff_secs: 3600,
            request_timeout_secs: 30,
            transitions: BTreeMap::new(),
        }
    }
}

/// Retention of old versions.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Versions received more than this many days ago are purged (their payload and summary),
    /// except each referral's latest. 0 keeps everything forever.
    #[serde(default)]
    pub keep_days: u64,
}

/// Encryption at rest: with a key, raw payloads, referral and version summaries and outgoing
/// updates are sealed with AES-256-GCM before they reach the disk.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// 32 random bytes, base64. Empty: records are stored unencrypted.
    #[serde(default)]
    pub encryption_key: Secret,
    /// Earlier keys, still used to read records sealed with them; `referral-relay rekey`
    /// re-seals those with the current key, after which they can be removed. A list, or one
    /// string of keys separated by commas or whitespace (so `_FILE` and environment variables
    /// can carry them).
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "list_or_separated"
    )]
    pub previous_keys: Vec<Secret>,
}

/// The point-of-service API (`/api/v1`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Clients by name; each sends its key as `Authorization: Bearer <key>`. None configured:
    /// the API answers 401 to everyone.
    #[serde(default)]
    pub clients: BTreeMap<String, ApiClientConfig>,
}

/// One consumer of the API, such as the clinic's EMR.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiClientConfig {
    /// The client's API key (`key_FILE` reads it from a file). At least 16 characters.
    pub key: Secret,
    /// External Service IDs whose referrals it may see; empty sees all.
    #[serde(default)]
    pub service_ids: Vec<ServiceId>,
}

/// The token endpoint the relay serves to Ocean.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuth2Config {
    /// Key that signs issued tokens (HS256), at least 32 bytes. Empty: a random key is made
    /// once and kept in `<data_dir>/oauth2-signing.key`, so tokens survive restarts.
    #[serde(default)]
    pub signing_key: Secret,
    /// Earlier signing keys whose tokens are still accepted while a rotation is under way.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub previous_signing_keys: Vec<Secret>,
}

/// A configuration value that must never be printed: `Debug` and `Serialize` show
/// `[redacted]`; only [`Secret::expose`] gives the value.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(if self.0.is_empty() { "" } else { "[redacted]" })
    }
}

/// A list of secrets, or one string of them separated by commas or whitespace.
fn list_or_separated<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Secret>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrString {
        List(Vec<Secret>),
        Separated(String),
    }
    Ok(match ListOrString::deserialize(d)? {
        ListOrString::List(list) => list,
        ListOrString::Separated(text) => text
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|k| !k.is_empty())
            .map(Secret::new)
            .collect(),
    })
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        string_or_number(d).map(Self)
    }
}

/// Values given on the command line, the last layer.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub log_format: Option<LogFormat>,
}

impl ServerConfig {
    /// The budget for unauthenticated bodies, in bytes (see `max_unauthenticated_body_bytes`).
    pub fn unauthenticated_body_budget(&self) -> usize {
        match self.max_unauthenticated_body_bytes {
            0 => self.max_body_bytes.saturating_mul(4),
            set => set,
        }
    }
}

impl Config {
    /// Loads every layer from the process environment and `file`.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> anyhow::Result<Self> {
        Self::load_with_env(file, overrides, std::env::vars())
    }

    /// Like [`Config::load`], with the `*_FILE` indirections resolved from `env`
    /// (the plain variables are still read from the process environment by figment).
    pub fn load_with_env(
        file: Option<&Path>,
        overrides: &Overrides,
        env: impl Iterator<Item = (String, String)>,
    ) -> anyhow::Result<Self> {
        let env: Vec<(String, String)> = env.filter(|(k, _)| k.starts_with(ENV_PREFIX)).collect();
        let mut base: toml::Table =
            toml::from_str(DEFAULT_TOML).context("the built-in default config does not parse")?;

        let mut figment = Figment::new();
        // Integration names the operator's layers mention (environment keys are lower-cased).
        let mut named: Vec<String> = env
            .iter()
            .filter_map(|(k, _)| k.strip_prefix("RELAY__INTEGRATIONS__"))
            .filter_map(|rest| rest.split("__").next())
            .map(str::to_ascii_lowercase)
            .collect();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read config file {}", path.display()))?;
            let table: toml::Table = toml::from_str(&text)
                .with_context(|| format!("config file {} is not valid TOML", path.display()))?;
            if let Some(toml::Value::Table(integrations)) = table.get("integrations") {
                named.extend(integrations.keys().cloned());
            }
            figment = figment.merge(Toml::string(&text));
        }
        if named.iter().any(|n| n != "default") {
            // The built-in `default` integration (auth none) must not survive next to the
            // integrations an operator configured.
            base.remove("integrations");
        }
        figment = Figment::from(Serialized::defaults(base))
            .merge(figment)
            .merge(
                Env::prefixed(ENV_PREFIX)
                    .split("__")
                    // Resolved below. `Uncased` keeps the variable's own case: compare without it.
                    .filter(|k| !k.as_str().to_ascii_lowercase().ends_with("_file")),
            );
        for (name, path) in &env {
            let Some(key) = name.strip_suffix("_FILE") else {
                continue;
            };
            let key_path = key[ENV_PREFIX.len()..]
                .split("__")
                .map(str::to_ascii_lowercase)
                .collect::<Vec<_>>()
                .join(".");
            let mut value = std::fs::read_to_string(path)
                .with_context(|| format!("{name}: cannot read the file it names"))?;
            if value.ends_with('\n') {
                value.pop();
                if value.ends_with('\r') {
                    value.pop();
                }
            }
            figment = figment.merge(Serialized::default(&key_path, value));
        }
        if let Some(listen) = overrides.listen {
            figment = figment.merge(Serialized::default("server.listen", listen));
        }
        if let Some(dir) = &overrides.data_dir {
            figment = figment.merge(Serialized::default("server.data_dir", dir));
        }
        if let Some(format) = overrides.log_format {
            figment = figment.merge(Serialized::default("log.format", format));
        }

        let config: Config = figment
            .extract()
            .map_err(|e| anyhow::anyhow!("invalid configuration: {}", describe(&e)))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what types alone cannot.
    pub fn validate(&self) -> anyhow::Result<()> {
        crate::store::Keyring::from_config(&self.storage)?;
        for (i, key) in std::iter::once(&self.oauth2.signing_key)
            .chain(&self.oauth2.previous_signing_keys)
            .enumerate()
        {
            if (i == 0 && key.is_empty()) || key.expose().len() >= 32 {
                continue;
            }
            bail!("oauth2 signing keys must be at least 32 bytes long");
        }
        let server = &self.server;
        if server.max_body_bytes < 1024 {
            bail!("server.max_body_bytes must be at least 1024");
        }
        for (key, value) in [
            ("header_read_timeout_secs", server.header_read_timeout_secs),
            ("keep_alive_timeout_secs", server.keep_alive_timeout_secs),
            ("send_timeout_secs", server.send_timeout_secs),
            ("auth_failure_report_secs", server.auth_failure_report_secs),
            ("max_connections", server.max_connections as u64),
            (
                "max_connections_per_client",
                server.max_connections_per_client as u64,
            ),
        ] {
            if value == 0 {
                bail!("server.{key} must be at least 1");
            }
        }
        // One unauthenticated upload at its largest, and its decoding when compressed.
        if server.max_unauthenticated_body_bytes != 0
            && server.max_unauthenticated_body_bytes < server.max_body_bytes.saturating_mul(2)
        {
            bail!(
                "server.max_unauthenticated_body_bytes must be at least twice server.max_body_bytes (0: four times)"
            );
        }
        if self.integrations.is_empty() {
            bail!("integrations: at least one integration must be configured");
        }
        for (name, site) in &self.sites {
            let url = site.base_url.trim_end_matches('/');
            if !(url.starts_with("https://") || url.starts_with("http://")) || url.len() < 10 {
                bail!("sites.{name}.base_url must be an http(s) URL");
            }
            if site.client_id.is_empty() || site.client_secret.is_empty() {
                bail!("sites.{name}: client_id and client_secret are required");
            }
        }
        if self.outbox.initial_backoff_secs == 0 || self.outbox.request_timeout_secs == 0 {
            bail!("outbox.initial_backoff_secs and outbox.request_timeout_secs must be at least 1");
        }
        for (name, client) in &self.api.clients {
            if client.key.expose().len() < 16 {
                bail!("api.clients.{name}.key must be at least 16 characters");
            }
        }
        let mut client_owner: BTreeMap<&str, &IntegrationName> = BTreeMap::new();
        for (name, integration) in &self.integrations {
            let key = format!("integrations.{name}.auth");
            match &integration.auth {
                AuthConfig::None => {}
                AuthConfig::Basic {
                    username,
                    password,
                    previous_passwords,
                } => {
                    if username.is_empty() || username.contains(':') {
                        bail!("{key}.username must be non-empty and contain no ':'");
                    }
                    if password.is_empty() || previous_passwords.iter().any(Secret::is_empty) {
                        bail!("{key}.password must not be empty");
                    }
                }
                AuthConfig::Oauth2 {
                    clients,
                    token_ttl_secs,
                } => {
                    if clients.is_empty() {
                        bail!("{key}.clients must list at least one client");
                    }
                    for client in clients {
                        if client.client_id.is_empty() || client.client_secret.is_empty() {
                            bail!("{key}.clients: client_id and client_secret must not be empty");
                        }
                        let owner = client_owner.entry(&client.client_id).or_insert(name);
                        if *owner != name {
                            bail!(
                                "{key}.clients: client_id '{}' is also used by integration '{owner}'; a client belongs to one integration",
                                client.client_id
                            );
                        }
                    }
                    if !(60..=86_400).contains(token_ttl_secs) {
                        bail!("{key}.token_ttl_secs must be between 60 and 86400");
                    }
                }
                AuthConfig::Bearer { tokens } => {
                    if tokens.is_empty() || tokens.iter().any(Secret::is_empty) {
                        bail!("{key}.tokens must list at least one non-empty token");
                    }
                }
                AuthConfig::Hmac {
                    secrets,
                    tolerance_secs,
                } => {
                    if secrets.is_empty() {
                        bail!("{key}.secrets must list at least one whsec_ secret");
                    }
                    for secret in secrets {
                        crate::auth::hmac::decode_secret(secret.expose())
                            .map_err(|e| anyhow::anyhow!("{key}.secrets: {e}"))?;
                    }
                    if *tolerance_secs == 0 {
                        bail!("{key}.tolerance_secs must be at least 1");
                    }
                }
            }
            for other in &integration.share_referrals_with {
                if !self.integrations.contains_key(other) || other == name {
                    bail!(
                        "integrations.{name}.share_referrals_with: '{other}' is not another configured integration"
                    );
                }
            }
            if !integration.default_service_id.trim().is_empty() {
                ServiceId::parse(&integration.default_service_id)
                    .map_err(|e| anyhow::anyhow!("integrations.{name}.default_service_id: {e}"))?;
            }
        }
        Ok(())
    }

    /// The effective configuration as TOML, for `check-config`. Secrets are redacted by their
    /// types' `Serialize`.
    pub fn to_redacted_toml(&self) -> anyhow::Result<String> {
        toml::to_string_pretty(self).context("cannot print the configuration")
    }
}

/// A figment error without the value it quotes (it may be a secret), with the key shown as
/// operators write it (figment prefixes its profile name, `default.`).
fn describe(error: &figment::Error) -> String {
    let text = error.to_string();
    let Some(start) = text.find("for key \"") else {
        return redact_quoted(&text);
    };
    let key_start = start + "for key \"".len();
    let Some(key_len) = text[key_start..].find('"') else {
        return redact_quoted(&text);
    };
    let key = &text[key_start..key_start + key_len];
    let key = key
        .strip_prefix("default.")
        .unwrap_or(key)
        .to_ascii_lowercase();
    format!(
        "{}for key {key}{}",
        redact_quoted(&text[..start]),
        redact_quoted(&text[key_start + key_len + 1..])
    )
}

/// External Service IDs are often numeric; an environment variable `12345` arrives as a number.
fn string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        Int(i64),
        Float(f64),
    }
    Ok(match Raw::deserialize(d)? {
        Raw::Text(s) => s,
        Raw::Int(i) => i.to_string(),
        Raw::Float(f) => f.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn load(file: Option<&str>, env: &[(&str, &str)]) -> anyhow::Result<Config> {
        let tmp = tempfile::NamedTempFile::new().unwrap();
        if let Some(text) = file {
            tmp.as_file().write_all(text.as_bytes()).unwrap();
        }
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Config::load_with_env(
            file.map(|_| tmp.path()),
            &Overrides::default(),
            env.collect::<Vec<_>>().into_iter(),
        )
    }

    #[test]
    fn with_nothing_configured_the_defaults_run() {
        let c = load(None, &[]).unwrap();
        assert_eq!(c.server.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(c.server.data_dir, PathBuf::from("./data"));
        assert_eq!(c.server.max_body_bytes, 16 * 1024 * 1024);
        let default = IntegrationName::parse("default").unwrap();
        assert_eq!(c.integrations[&default].auth, AuthConfig::None);
    }

    #[test]
    fn a_configured_integration_replaces_the_built_in_default() {
        let c = load(
            Some("[integrations.ocean]\nauth = { scheme = \"none\" }\ndefault_service_id = 42\n"),
            &[],
        )
        .unwrap();
        let names: Vec<_> = c.integrations.keys().map(|k| k.to_string()).collect();
        assert_eq!(names, vec!["ocean"]);
        assert_eq!(
            c.integrations.values().next().unwrap().default_service_id,
            "42"
        );
    }

    #[test]
    fn errors_name_the_offending_key() {
        let e = load(Some("[server]\nmax_body_bytes = \"lots\"\n"), &[]).unwrap_err();
        assert!(
            e.to_string().contains("for key server.max_body_bytes"),
            "{e}"
        );
        // The offending value is not repeated: for a secret key it would be the secret.
        assert!(!e.to_string().contains("lots"), "{e}");
        let e = load(Some("[server]\nlisten = \"nowhere\"\n"), &[]).unwrap_err();
        assert!(e.to_string().contains("server.listen"), "{e}");
        let e = load(
            Some("[integrations.\"a/b\"]\nauth = { scheme = \"none\" }\n"),
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains("integration name"), "{e}");
        let e = load(Some("[server]\nmax_body_bytes = 10\n"), &[]).unwrap_err();
        assert!(e.to_string().contains("server.max_body_bytes"), "{e}");
        let e = load(Some("[sever]\nlisten = \"0.0.0.0:1\"\n"), &[]).unwrap_err();
        assert!(e.to_string().contains("sever"), "{e}");
    }

    #[test]
    fn environment_and_file_indirection_override_the_file() {
        let secret = tempfile::NamedTempFile::new().unwrap();
        secret.as_file().write_all(b"SVC-FROM-FILE\n").unwrap();
        let path = secret.path().to_str().unwrap().to_owned();
        let c = load(
            Some("[integrations.default]\ndefault_service_id = \"FROM-TOML\"\n"),
            &[(
                "RELAY__INTEGRATIONS__DEFAULT__DEFAULT_SERVICE_ID_FILE",
                &path,
            )],
        )
        .unwrap();
        let default = IntegrationName::parse("default").unwrap();
        // Tweaking the built-in integration keeps its other keys.
        assert_eq!(c.integrations[&default].auth, AuthConfig::None);
        assert_eq!(c.integrations[&default].default_service_id, "SVC-FROM-FILE");

        let e = load(
            None,
            &[("RELAY__INTEGRATIONS__X__EVENTS_FILE", "/nonexistent/x")],
        );
        assert!(
            e.unwrap_err()
                .to_string()
                .contains("RELAY__INTEGRATIONS__X__EVENTS_FILE")
        );
    }
}
