//! `[destinations.NAME]`: the clinic's systems each stored referral version is pushed to, with
//! the outbox's guarantees (see [`crate::destinations`]).

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use crate::domain::{Change, IntegrationName, ServiceId};
use crate::secret::Secret;

/// Longest destination name: it is part of URLs, metrics labels and store keys.
const MAX_NAME: usize = 64;

/// One destination.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationConfig {
    pub kind: DestinationKind,
    /// Where versions are sent (`http` or `https`).
    pub url: String,
    /// The Standard Webhooks signing secret (`whsec_` and base64 of 24 to 64 random bytes).
    pub secret: Secret,
    /// Secrets that also sign, during a rotation: each request carries one signature per secret.
    #[serde(default)]
    pub previous_secrets: Vec<Secret>,
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
    /// What the request body is.
    #[serde(default)]
    pub body: BodyMode,
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
    /// A FHIR R4 server's base: not yet available (refused by validation).
    Fhir,
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
        match self.kind {
            DestinationKind::Webhook => {}
            DestinationKind::Fhir => bail!(
                "{}: kind = \"fhir\" is not available yet; use kind = \"webhook\"",
                context()
            ),
        }
        let url = reqwest::Url::parse(&self.url)
            .with_context(|| format!("{}.url is not a URL", context()))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            bail!("{}.url must be an http or https URL", context());
        }
        // The URL is shown (check-config, the console): it must hold no secret of its own.
        if !url.username().is_empty() || url.password().is_some() {
            bail!(
                "{}.url must not hold a user name or password: the receiver checks the signature",
                context()
            );
        }
        for secret in std::iter::once(&self.secret).chain(&self.previous_secrets) {
            signing_key(secret).with_context(context)?;
        }
        if self.concurrency == 0 || self.concurrency > 256 {
            bail!("{}.concurrency must be from 1 to 256", context());
        }
        if self.request_timeout_secs == 0 {
            bail!("{}.request_timeout_secs must be positive", context());
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

    fn destination(extra: &str) -> DestinationConfig {
        toml::from_str(&format!(
            "kind = \"webhook\"\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n{extra}"
        ))
        .unwrap()
    }

    #[test]
    fn a_destination_is_refused_for_what_would_leak_or_cannot_work() {
        assert!(
            destination("url = \"https://emr.test/hook\"")
                .validate("emr")
                .is_ok()
        );
        for (extra, name, words) in [
            (
                "url = \"https://user:pw@emr.test/hook\"",
                "emr",
                "user name or password",
            ),
            ("url = \"file:///etc/passwd\"", "emr", "http or https"),
            ("url = \"https://emr.test/hook\"", "EMR", "a-z, 0-9"),
            (
                "url = \"https://emr.test/hook\"\nkind = \"fhir\"",
                "emr",
                "not available yet",
            ),
            (
                "url = \"https://emr.test/hook\"\nconcurrency = 0",
                "emr",
                "concurrency",
            ),
        ] {
            let config: Result<DestinationConfig, _> = toml::from_str(&format!(
                "secret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n{extra}{}",
                if extra.contains("kind") {
                    ""
                } else {
                    "\nkind = \"webhook\""
                }
            ));
            let error = config.unwrap().validate(name).unwrap_err().to_string();
            assert!(error.contains(words), "{extra}: {error}");
        }
        let short: DestinationConfig = toml::from_str(
            "kind = \"webhook\"\nurl = \"https://emr.test/\"\nsecret = \"whsec_c2hvcnQ=\"",
        )
        .unwrap();
        assert!(format!("{:#}", short.validate("emr").unwrap_err()).contains("24 to 64 bytes"));
    }
}
