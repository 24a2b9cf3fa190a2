//! Typed configuration: the embedded `config/default.toml`, then a file, then `RELAY__*`
//! environment variables (with `_FILE` variants), then command-line flags. Validated once at
//! start, each section by its own `validate`; every error names the key it is about. The
//! defaults live in `config/default.toml` alone (the base layer); only keys of entries an
//! operator names (an integration, a site, a client) have defaults in the types.
//!
//! Keys are decoded here, into bytes: a webhook secret or an encryption key that is malformed
//! stops the service at start, and the modules that use them take bytes.

mod alerts;
mod api;
mod console;
mod destinations;
mod integrations;
mod oidc;
mod outbound;
mod patient_engagement;
mod screening;
mod server;
mod storage;
mod watch_list;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

pub use alerts::{AlertsConfig, SmtpConfig, SmtpTls};
pub use api::{ApiClientConfig, ApiConfig, OAuth2Config};
pub use console::{ConsoleConfig, ConsoleRole, ConsoleUserConfig, hash_password, verify_password};
pub use destinations::{BodyMode, DestinationConfig, DestinationKind, DocumentsMode, signing_key};
pub use integrations::{AuthConfig, IntegrationConfig, OAuthClient, WebhookSecret};
pub use oidc::{CALLBACK_PATH as OIDC_CALLBACK_PATH, Granted, OidcConfig};
pub use outbound::{DocumentsConfig, OutboxConfig, SiteConfig, TokenAuth};
pub use patient_engagement::{PatientEngagementConfig, open_api_credentials};
pub use screening::{
    CdsAuth, CdsHooksConfig, Indicator, RequiredItem, ScreeningRule, ScreeningRules,
};
pub use server::{LogConfig, LogFormat, ServerConfig, TlsConfig};
pub use storage::{Backend, EncryptionKey, RetentionConfig, StorageConfig};
pub use watch_list::WatchListConfig;

use crate::domain::{IntegrationName, redact_quoted};

/// The documented defaults, built into the binary as the base layer.
pub const DEFAULT_TOML: &str = include_str!("../../config/default.toml");

/// Prefix of environment variables; `__` separates nesting levels.
const ENV_PREFIX: &str = "RELAY__";

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub log: LogConfig,
    /// Ocean sites that issued OAuth credentials, by name; status updates go out through them.
    pub sites: BTreeMap<String, SiteConfig>,
    /// How updates to Ocean are retried.
    pub outbox: OutboxConfig,
    /// Fetching referral letters and attachments from Ocean.
    pub documents: DocumentsConfig,
    /// How long old versions are kept.
    pub retention: RetentionConfig,
    /// Encryption of patient data at rest.
    pub storage: StorageConfig,
    /// The point-of-service API and its clients.
    pub api: ApiConfig,
    /// The OAuth2 token endpoint the relay serves (used by `oauth2` integrations).
    pub oauth2: OAuth2Config,
    /// The web console and its users.
    pub console: ConsoleConfig,
    /// Ocean integrations by name; the name is part of the webhook URL.
    #[serde(default)]
    pub integrations: BTreeMap<IntegrationName, IntegrationConfig>,
    /// The clinic's systems stored versions are pushed to, by name.
    #[serde(default)]
    pub destinations: BTreeMap<String, DestinationConfig>,
    /// When a referral needs a person's attention (the watch-list).
    pub watch_list: WatchListConfig,
    /// Alerts to a person, and the channels they go by.
    pub alerts: AlertsConfig,
    /// Endpoints Ocean notifies when a patient completes an eForm, by name (part of the URL).
    #[serde(default)]
    pub patient_engagement: BTreeMap<String, PatientEngagementConfig>,
    /// Acceptance rules by External Service ID, answered to Ocean's `order-sign` CDS Hooks calls.
    #[serde(default)]
    pub screening: BTreeMap<crate::domain::ServiceId, ScreeningRules>,
    /// The CDS Hooks endpoints: authentication and answer time.
    pub cds_hooks: CdsHooksConfig,
}

/// Values given on the command line, the last layer.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub log_format: Option<LogFormat>,
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
        // figment matches the prefix without regard to case, and so does everything here.
        let (env, others): (Vec<(String, String)>, Vec<_>) =
            env.partition(|(k, _)| starts_with_ignoring_case(k, ENV_PREFIX));
        // RELAY_STORAGE__KEY (one underscore) would be ignored without a word: refuse it.
        if let Some((name, _)) = others
            .iter()
            .find(|(k, _)| starts_with_ignoring_case(k, "RELAY_") && k.contains("__"))
        {
            anyhow::bail!(
                "{name} looks like a configuration variable, but those start with RELAY__ (two underscores)"
            );
        }
        let mut base: toml::Table =
            toml::from_str(DEFAULT_TOML).context("the built-in default config does not parse")?;

        let mut figment = Figment::new();
        // Integration names the operator's layers mention (environment keys are lower-cased).
        let mut named: Vec<String> = env
            .iter()
            .map(|(k, _)| k[ENV_PREFIX.len()..].to_ascii_lowercase())
            .filter_map(|rest| {
                let name = rest.strip_prefix("integrations__")?.split("__").next()?;
                Some(name.to_string())
            })
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
            let lower = name.to_ascii_lowercase();
            let Some(key) = lower.strip_suffix("_file") else {
                continue;
            };
            // Keys that are themselves paths (`server.tls.cert_file`) take the value as it is.
            let whole_key = lower[ENV_PREFIX.len()..].split("__").collect::<Vec<_>>();
            if names_a_path(&whole_key) {
                figment = figment.merge(Serialized::default(&whole_key.join("."), path));
                continue;
            }
            let key_path = key[ENV_PREFIX.len()..]
                .split("__")
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
            // An empty secret file (a mount that failed, a template never filled) must not
            // quietly mean "no key": an empty storage.encryption_key turns encryption off.
            if value.is_empty() {
                anyhow::bail!("{name}: the file it names ({path}) is empty");
            }
            figment = figment.merge(FileVariable {
                name: name.clone(),
                data: Serialized::default(&key_path, value),
            });
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

    /// Checks what types alone cannot, section by section.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.server.validate()?;
        self.log.validate()?;
        self.oauth2.validate()?;
        self.storage.validate()?;
        self.api.validate()?;
        if !self.server.tls.enabled()
            && let Some((name, _)) = self.api.clients.iter().find(|(_, c)| c.uses_certificates())
        {
            anyhow::bail!(
                "api.clients.{name}: client certificates are presented in the TLS handshake, so they need HTTPS on the listener (server.tls)"
            );
        }
        self.console.validate()?;
        self.outbox.validate()?;
        self.documents.validate()?;
        self.watch_list.validate()?;
        self.cds_hooks.validate()?;
        screening::validate(&self.screening)?;
        for (name, site) in &self.sites {
            site.validate(name)?;
        }
        patient_engagement::validate(&self.patient_engagement, &self.sites)?;
        for (name, destination) in &self.destinations {
            destination.validate(name)?;
            if let Some(unknown) = destination
                .integrations
                .iter()
                .find(|i| !self.integrations.contains_key(*i))
            {
                anyhow::bail!(
                    "destinations.{name}.integrations names '{unknown}', which is not configured"
                );
            }
        }
        let webhooks: Vec<&str> = self
            .destinations
            .iter()
            .filter(|(_, d)| d.kind == DestinationKind::Webhook)
            .map(|(name, _)| name.as_str())
            .collect();
        let integrations: Vec<&str> = self.integrations.keys().map(|n| n.as_str()).collect();
        self.alerts.validate(&webhooks, &integrations)?;
        integrations::validate(&self.integrations)
    }

    /// The effective configuration as TOML, for `check-config`. Secrets are redacted by their
    /// types' `Serialize`.
    pub fn to_redacted_toml(&self) -> anyhow::Result<String> {
        toml::to_string_pretty(self).context("cannot print the configuration")
    }
}

/// Loads `text` as the config file over the defaults, with no environment (for the sections'
/// tests).
#[cfg(test)]
pub(crate) fn load_text(text: &str) -> anyhow::Result<Config> {
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), text)?;
    Config::load_with_env(Some(file.path()), &Overrides::default(), std::iter::empty())
}

/// Whether the key (its path, lower case) holds a file's path, so that a variable naming it
/// (`RELAY__SERVER__TLS__CERT_FILE`) sets the path rather than reading the file.
fn names_a_path(key: &[&str]) -> bool {
    matches!(
        key,
        ["server", "tls", "cert_file" | "key_file"]
            | ["api", "clients", _, "client_ca_file"]
            | ["alerts", "smtp", "ca_file"]
    )
}

fn starts_with_ignoring_case(text: &str, prefix: &str) -> bool {
    text.get(..prefix.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(prefix))
}

/// A value read from the file a `RELAY__..._FILE` variable names: errors about it name the
/// variable (figment would otherwise name the line of code that merged it).
struct FileVariable {
    name: String,
    data: Serialized<String>,
}

impl figment::Provider for FileVariable {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named(format!("the file {} names", self.name))
    }

    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        self.data.data()
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
    fn variables_naming_path_keys_set_the_path() {
        let c = load(
            None,
            &[
                ("RELAY__SERVER__TLS__CERT_FILE", "/run/tls/fullchain.pem"),
                ("RELAY__SERVER__TLS__KEY_FILE", "/run/tls/privkey.pem"),
                ("RELAY__API__CLIENTS__EMR__CLIENT_CA_FILE", "/run/ca.pem"),
            ],
        )
        .unwrap();
        assert_eq!(
            c.server.tls.cert_file,
            PathBuf::from("/run/tls/fullchain.pem")
        );
        assert_eq!(c.server.tls.key_file, PathBuf::from("/run/tls/privkey.pem"));
        assert_eq!(
            c.api.clients["emr"].client_ca_file,
            PathBuf::from("/run/ca.pem")
        );
        // A secret's _FILE still reads the file: the API key of that same client.
        let key = tempfile::NamedTempFile::new().unwrap();
        key.as_file()
            .write_all(b"emr-key-from-a-file-0123\n")
            .unwrap();
        let c = load(
            None,
            &[(
                "RELAY__API__CLIENTS__EMR__KEY_FILE",
                key.path().to_str().unwrap(),
            )],
        )
        .unwrap();
        assert_eq!(
            c.api.clients["emr"].key.expose(),
            "emr-key-from-a-file-0123"
        );
    }

    /// `[alerts.smtp]`'s password from a file, its `ca_file` as a path; the section's checks
    /// name their keys.
    #[test]
    fn alerts_take_their_password_from_a_file_and_name_bad_keys() {
        let password = tempfile::NamedTempFile::new().unwrap();
        password.as_file().write_all(b"smtp-secret\n").unwrap();
        let file = "[alerts]\nemail_to = [\"oncall@clinic.example\"]\n[alerts.smtp]\nhost = \"smtp.clinic.example\"\nusername = \"relay\"\nfrom = \"relay@clinic.example\"\n";
        let c = load(
            Some(file),
            &[
                (
                    "RELAY__ALERTS__SMTP__PASSWORD_FILE",
                    password.path().to_str().unwrap(),
                ),
                ("RELAY__ALERTS__SMTP__CA_FILE", "/run/hospital-ca.pem"),
            ],
        )
        .unwrap();
        assert_eq!(c.alerts.smtp.password.expose(), "smtp-secret");
        assert_eq!(c.alerts.smtp.ca_file, PathBuf::from("/run/hospital-ca.pem"));
        assert_eq!(c.alerts.smtp.tls, SmtpTls::Starttls);
        for (bad, key) in [
            ("[alerts]\nemail_to = [\"oncall\"]\n", "alerts.email_to[0]"),
            (
                "[alerts]\nemail_to = [\"a@b.example\"]\n",
                "alerts.smtp.host",
            ),
            (
                "[alerts]\ndestinations = [\"pager\"]\n",
                "alerts.destinations",
            ),
            (
                "[alerts]\nfailing_minutes = -1.0\n",
                "alerts.failing_minutes",
            ),
            ("[alerts]\nquiet_hours = nan\n", "alerts.quiet_hours"),
            ("[alerts]\ncheck_secs = 0\n", "alerts.check_secs"),
            (
                "[alerts]\nemail_to = [\"a@b.example\"]\n[alerts.smtp]\nhost = \"smtp.b.example\"\ntls = \"none\"\nfrom = \"r@b.example\"\n",
                "alerts.smtp.tls",
            ),
            (
                "[alerts]\nemail_to = [\"a@b.example\"]\n[alerts.smtp]\nhost = \"smtp.b.example\"\ntimeout_secs = 9223372036854775807\nfrom = \"r@b.example\"\n",
                "alerts.smtp.timeout_secs",
            ),
            (
                "[alerts.quiet_hours_by_integration]\nnone = 1.0\n",
                "alerts.quiet_hours_by_integration",
            ),
        ] {
            let e = load(Some(bad), &[]).unwrap_err().to_string();
            assert!(e.contains(key), "{bad}: {e}");
        }
    }

    #[test]
    fn client_certificates_need_https_and_a_well_formed_pin() {
        let e = load(
            Some("[api.clients.lab]\nclient_cert_sha256 = \"ab\"\n"),
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains("client_cert_sha256"), "{e}");
        let pin = "AB:".repeat(31) + "AB";
        let e = load(
            Some(&format!(
                "[api.clients.lab]\nclient_cert_sha256 = \"{pin}\"\n"
            )),
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains("server.tls"), "{e}");
        let e = load(Some("[api.clients.nobody]\nservice_ids = []\n"), &[]).unwrap_err();
        assert!(e.to_string().contains("needs a key"), "{e}");
        let e = load(Some("[server.tls]\ncert_file = \"/x.pem\"\n"), &[]).unwrap_err();
        assert!(e.to_string().contains("key_file"), "{e}");
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
