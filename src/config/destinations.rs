//! `[destinations.NAME]`: the clinic's systems each stored referral version is pushed to, with
//! the outbox's guarantees (see [`crate::destinations`]).

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use super::TokenAuth;
use crate::domain::{Change, IntegrationName, ServiceId};
use crate::secret::Secret;

/// Longest destination name: it is part of URLs, metrics labels and store keys.
const MAX_NAME: usize = 64;

/// One destination.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationConfig {
    pub kind: DestinationKind,
    /// Where versions are sent (`http` or `https`): the webhook's URL, or the FHIR server's
    /// base (the transaction is posted to it).
    pub url: String,
    /// Webhook: the Standard Webhooks signing secret (`whsec_` and base64 of 24 to 64 random
    /// bytes).
    #[serde(default)]
    pub secret: Option<Secret>,
    /// Webhook: secrets that also sign, during a rotation (one signature per secret).
    #[serde(default)]
    pub previous_secrets: Vec<Secret>,
    /// FHIR: a static bearer token sent as `Authorization: Bearer`.
    #[serde(default)]
    pub bearer_token: Option<Secret>,
    /// FHIR: an OAuth 2.0 token endpoint (client credentials grant, RFC 6749 §4.4); with
    /// `client_id` and `client_secret`.
    #[serde(default)]
    pub token_url: Option<String>,
    #[serde(default, deserialize_with = "crate::secret::optional_string_or_number")]
    pub client_id: Option<String>,
    #[serde(default)]
    pub client_secret: Option<Secret>,
    /// FHIR: how the client credentials are sent to `token_url`.
    #[serde(default)]
    pub token_auth: TokenAuth,
    /// FHIR: the `scope` asked of `token_url`, if any (e.g. `system/*.write`).
    #[serde(default)]
    pub scope: Option<String>,
    /// Which changes to send (`latest_change` kinds: `new-referral`, `revoked`, ...); empty: all.
    #[serde(default)]
    pub events: Vec<Change>,
    /// External Service IDs; empty: all (and unassigned referrals).
    #[serde(default)]
    pub service_ids: Vec<ServiceId>,
    /// Integrations that delivered the version; empty: all.
    #[serde(default)]
    pub integrations: Vec<IntegrationName>,
    /// Whether documents are named in what is sent.
    #[serde(default)]
    pub documents: DocumentsMode,
    /// With `documents = "wait"`: how long a version waits for its documents to be fetched (or
    /// given up) before it is sent without them, in seconds (from when it was queued).
    #[serde(default = "default_documents_wait")]
    pub documents_wait_secs: u64,
    /// With `documents = "wait"`: fetched documents up to this size go inline (base64), larger
    /// ones as download links, in bytes.
    #[serde(default = "default_inline_max")]
    pub inline_max_bytes: u64,
    /// Webhook: what the request body is (default: the envelope).
    #[serde(default)]
    pub body: Option<BodyMode>,
    /// Requests in flight at once (each for a different referral).
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Most requests started per second; 0: no limit.
    #[serde(default)]
    pub rate_per_sec: u32,
    /// Bound on one request, in seconds.
    #[serde(default = "default_timeout")]
    pub request_timeout_secs: u64,
}

fn default_concurrency() -> usize {
    4
}

fn default_timeout() -> u64 {
    30
}

fn default_documents_wait() -> u64 {
    900
}

fn default_inline_max() -> u64 {
    1 << 20
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DestinationKind {
    /// A `POST` signed as Standard Webhooks.
    Webhook,
    /// A FHIR R4 server's base: a `transaction` Bundle per version.
    Fhir,
}

impl DestinationKind {
    /// Its name in the configuration and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Webhook => "webhook",
            Self::Fhir => "fhir",
        }
    }
}

/// What a destination is told of a version's documents.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DocumentsMode {
    /// Nothing.
    #[default]
    None,
    /// Each document with the API path it is downloaded from (with an API key), sent at once
    /// (documents still being fetched say so).
    Links,
    /// The version waits (up to `documents_wait_secs`) until its letter and attachments are
    /// fetched or given up, then goes with them: inline up to `inline_max_bytes`, else as
    /// download links.
    Wait,
}

/// What a webhook destination's request body is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BodyMode {
    /// JSON: `type`, `timestamp` and `data` (the referral, version, summary, changes, and the
    /// Bundle as received).
    #[default]
    Envelope,
    /// The FHIR Bundle alone, as received, as `application/fhir+json`.
    Bundle,
}

impl DestinationConfig {
    pub fn validate(&self, name: &str) -> anyhow::Result<()> {
        check_name(name)?;
        let context = || format!("destinations.{name}");
        let url = reqwest::Url::parse(&self.url)
            .with_context(|| format!("{}.url is not a URL", context()))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            bail!("{}.url must be an http or https URL", context());
        }
        // The URL is shown (check-config, the console): it must hold no secret of its own.
        if !url.username().is_empty() || url.password().is_some() {
            bail!(
                "{}.url must not hold a user name or password (it is shown); a webhook is \
                 authenticated by its signature, a FHIR server by bearer_token or client_secret",
                context()
            );
        }
        match self.kind {
            DestinationKind::Webhook => self.validate_webhook().with_context(context)?,
            DestinationKind::Fhir => self.validate_fhir().with_context(context)?,
        }
        if self.concurrency == 0 || self.concurrency > 256 {
            bail!("{}.concurrency must be from 1 to 256", context());
        }
        if self.request_timeout_secs == 0 {
            bail!("{}.request_timeout_secs must be positive", context());
        }
        Ok(())
    }

    fn validate_webhook(&self) -> anyhow::Result<()> {
        let Some(secret) = &self.secret else {
            bail!("a webhook destination needs secret (whsec_..., Standard Webhooks)");
        };
        for secret in std::iter::once(secret).chain(&self.previous_secrets) {
            signing_key(secret)?;
        }
        let fhir_only = [
            ("bearer_token", self.bearer_token.is_some()),
            ("token_url", self.token_url.is_some()),
            ("client_id", self.client_id.is_some()),
            ("client_secret", self.client_secret.is_some()),
            ("scope", self.scope.is_some()),
        ];
        if let Some((key, _)) = fhir_only.iter().find(|(_, set)| *set) {
            bail!("{key} is for kind = \"fhir\"; a webhook is authenticated by its signature");
        }
        Ok(())
    }

    fn validate_fhir(&self) -> anyhow::Result<()> {
        if self.secret.is_some() || !self.previous_secrets.is_empty() {
            bail!(
                "secret signs webhooks; a FHIR destination authenticates with bearer_token, or \
                 token_url, client_id and client_secret"
            );
        }
        if self.body.is_some() {
            bail!("body is for webhooks; a FHIR destination is sent a transaction Bundle");
        }
        if self.documents == DocumentsMode::Links {
            bail!(
                "documents = \"links\" names the relay's API, which a FHIR server cannot read; \
                 use \"wait\" (a DocumentReference per document, with its data) or \"none\""
            );
        }
        let empty = [
            (
                "bearer_token",
                self.bearer_token.as_ref().map(Secret::expose),
            ),
            ("client_id", self.client_id.as_deref()),
            (
                "client_secret",
                self.client_secret.as_ref().map(Secret::expose),
            ),
            ("token_url", self.token_url.as_deref()),
        ];
        if let Some((key, _)) = empty
            .iter()
            .find(|(_, v)| v.is_some_and(|v| v.trim().is_empty()))
        {
            bail!("{key} is empty");
        }
        if let Some(token) = &self.bearer_token
            && !crate::secret::is_bearer_token(token.expose())
        {
            bail!("bearer_token must be visible ASCII, without spaces (RFC 6750)");
        }
        if self.scope.is_some() && self.token_url.is_none() {
            bail!("scope is asked of token_url, which is not set");
        }
        let oauth = [
            self.token_url.is_some(),
            self.client_id.is_some(),
            self.client_secret.is_some(),
        ];
        if oauth.contains(&true) {
            if oauth.contains(&false) {
                bail!(
                    "token_url, client_id and client_secret go together (OAuth2 client credentials)"
                );
            }
            if self.bearer_token.is_some() {
                bail!("bearer_token or token_url: one way to authenticate, not both");
            }
            let url = self.token_url.as_deref().unwrap_or_default();
            let parsed =
                reqwest::Url::parse(url).with_context(|| "token_url is not a URL".to_owned())?;
            if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
                bail!("token_url must be an http or https URL");
            }
            if !parsed.username().is_empty() || parsed.password().is_some() {
                bail!(
                    "token_url must not hold a user name or password (it is shown); use client_id and client_secret"
                );
            }
        }
        Ok(())
    }
}

/// The HMAC key of a Standard Webhooks secret: `whsec_` then base64 of 24 to 64 bytes.
pub fn signing_key(secret: &Secret) -> anyhow::Result<Vec<u8>> {
    let text = secret.expose();
    let Some(encoded) = text.strip_prefix("whsec_") else {
        bail!("the signing secret must start with whsec_ (Standard Webhooks)");
    };
    let key = STANDARD
        .decode(encoded)
        .map_err(|_| anyhow::anyhow!("the signing secret after whsec_ is not base64"))?;
    if !(24..=64).contains(&key.len()) {
        bail!("the signing secret must hold 24 to 64 bytes");
    }
    Ok(key)
}

/// Destination names: 1 to 64 of `a-z`, `0-9`, `-` and `_`.
fn check_name(name: &str) -> anyhow::Result<()> {
    if name.is_empty()
        || name.len() > MAX_NAME
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    {
        bail!("destinations.{name}: a destination's name is 1 to {MAX_NAME} of a-z, 0-9, - and _");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_destination_is_refused_for_what_would_leak_or_cannot_work() {
        const SECRET: &str = "secret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"";
        const FHIR: &str = "kind = \"fhir\"\nurl = \"https://fhir.test/r4\"";
        let webhook = |extra: &str| {
            format!("kind = \"webhook\"\nurl = \"https://emr.test/hook\"\n{SECRET}\n{extra}")
        };
        let error = |name: &str, text: &str| {
            let config: DestinationConfig = toml::from_str(text).unwrap();
            format!("{:#}", config.validate(name).unwrap_err())
        };
        for ok in [
            webhook(""),
            FHIR.to_owned(),
            format!("{FHIR}\nbearer_token = \"t\"\ndocuments = \"wait\""),
            format!(
                "{FHIR}\ntoken_url = \"https://idp.test/token\"\nclient_id = 7\nclient_secret = \"s\""
            ),
        ] {
            let config: DestinationConfig = toml::from_str(&ok).unwrap();
            assert!(config.validate("emr").is_ok(), "{ok}");
        }
        let webhook_url = |url: &str| webhook("").replace("https://emr.test/hook", url);
        for (name, text, words) in [
            (
                "emr",
                webhook_url("https://user:pw@emr.test/hook"),
                "user name or password",
            ),
            ("emr", webhook_url("file:///etc/passwd"), "http or https"),
            ("EMR", webhook(""), "a-z, 0-9"),
            ("emr", webhook("concurrency = 0"), "concurrency"),
            (
                "emr",
                webhook("").replace(SECRET, ""),
                "needs secret (whsec_",
            ),
            (
                "emr",
                webhook("bearer_token = \"t\""),
                "bearer_token is for kind = \"fhir\"",
            ),
            ("emr", format!("{FHIR}\n{SECRET}"), "secret signs webhooks"),
            (
                "emr",
                format!("{FHIR}\nbody = \"bundle\""),
                "body is for webhooks",
            ),
            (
                "emr",
                format!("{FHIR}\ndocuments = \"links\""),
                "names the relay's API",
            ),
            (
                "emr",
                format!("{FHIR}\ntoken_url = \"https://idp.test/token\"\nclient_id = \"c\""),
                "go together",
            ),
            (
                "emr",
                format!("{FHIR}\nbearer_token = \" \""),
                "bearer_token is empty",
            ),
            (
                "emr",
                format!("{FHIR}\nbearer_token = \"a\\nb\""),
                "visible ASCII",
            ),
            (
                "emr",
                format!(
                    "{FHIR}\ntoken_url = \"https://u:p@idp.test/token\"\nclient_id = \"c\"\nclient_secret = \"s\""
                ),
                "token_url must not hold",
            ),
            (
                "emr",
                format!("{FHIR}\nscope = \"system/*.write\""),
                "token_url, which is not set",
            ),
            (
                "emr",
                format!(
                    "{FHIR}\nbearer_token = \"t\"\ntoken_url = \"https://idp.test/token\"\nclient_id = \"c\"\nclient_secret = \"s\""
                ),
                "not both",
            ),
        ] {
            let error = error(name, &text);
            assert!(error.contains(words), "{text}: {error}");
        }
        let short = webhook("").replace("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "c2hvcnQ=");
        assert!(error("emr", &short).contains("24 to 64 bytes"));
    }
}
