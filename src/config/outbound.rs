//! `[sites.NAME]` and `[outbox]`: the Ocean sites updates go to, and how they are retried.

use std::collections::BTreeMap;

use anyhow::bail;
use serde::{Deserialize, Serialize};

use crate::domain::ServiceId;
use crate::secret::Secret;

/// An Ocean site the relay sends updates to.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteConfig {
    /// e.g. `https://ocean.cognisantmd.com`; tokens come from `{base_url}/svc/oauth2/token`.
    pub base_url: String,
    #[serde(deserialize_with = "crate::secret::string_or_number")]
    pub client_id: String,
    pub client_secret: Secret,
    /// How the client credentials are sent to the token endpoint.
    #[serde(default)]
    pub token_auth: TokenAuth,
    /// External Service IDs whose referrals this site answers for; empty: all.
    #[serde(default)]
    pub service_ids: Vec<ServiceId>,
    /// Where Ocean takes the referrer's browser after a referral's first Task update (an
    /// absolute http(s) URL, sent as Ocean's third-party redirect extension), unless the update
    /// names its own `redirect_url`. Empty: none.
    #[serde(default)]
    pub redirect_url: String,
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
#[serde(deny_unknown_fields)]
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

/// Fetching each referral's letter and attachments from Ocean (`[documents]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DocumentsConfig {
    /// Fetch documents for referrals an Ocean site with credentials serves.
    pub fetch: bool,
    /// Bound on one document's download (token fetch aside), in seconds.
    pub request_timeout_secs: u64,
    /// Largest document kept, in bytes; a larger one is given up with that reason.
    pub max_bytes: u64,
    /// How long a document is retried (5xx, 429, timeouts) before it is given up, in seconds.
    pub retry_horizon_secs: u64,
    /// First backoff in seconds; it doubles per attempt up to `max_backoff_secs`.
    pub initial_backoff_secs: u64,
    pub max_backoff_secs: u64,
    /// Documents fetched at once.
    pub concurrency: usize,
    /// Attachments queued from one message, at most; others are listed as a problem of the
    /// version, counted and logged, and not fetched.
    pub max_per_delivery: usize,
}

impl DocumentsConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.request_timeout_secs == 0 || self.initial_backoff_secs == 0 || self.concurrency == 0
        {
            bail!(
                "documents.request_timeout_secs, documents.initial_backoff_secs and documents.concurrency must be at least 1"
            );
        }
        if self.max_bytes == 0 {
            bail!("documents.max_bytes must be at least 1");
        }
        Ok(())
    }
}

impl SiteConfig {
    /// Checks the site called `name`.
    pub fn validate(&self, name: &str) -> anyhow::Result<()> {
        let url = self.base_url.trim_end_matches('/');
        if !(url.starts_with("https://") || url.starts_with("http://")) || url.len() < 10 {
            bail!("sites.{name}.base_url must be an http(s) URL");
        }
        if self.client_id.is_empty() || self.client_secret.is_empty() {
            bail!("sites.{name}: client_id and client_secret are required");
        }
        if !self.redirect_url.is_empty()
            && let Err(why) = crate::domain::RedirectUrl::parse(&self.redirect_url)
        {
            bail!("sites.{name}.redirect_url {why}");
        }
        Ok(())
    }
}

impl OutboxConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.initial_backoff_secs == 0 || self.request_timeout_secs == 0 {
            bail!("outbox.initial_backoff_secs and outbox.request_timeout_secs must be at least 1");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sites_redirect_must_be_an_absolute_http_url() {
        let site = |redirect: &str| -> SiteConfig {
            toml::from_str(&format!(
                "base_url = \"https://ocean.example\"\nclient_id = \"c\"\nclient_secret = \"s\"\nredirect_url = \"{redirect}\""
            ))
            .unwrap()
        };
        assert!(site("").validate("main").is_ok());
        assert!(
            site("https://clinic.example/after")
                .validate("main")
                .is_ok()
        );
        for bad in [
            "clinic.example/after",
            "ftp://clinic.example/",
            "https://u:p@clinic.example/",
        ] {
            let error = site(bad).validate("main").unwrap_err().to_string();
            assert!(
                error.starts_with("sites.main.redirect_url must"),
                "{bad}: {error}"
            );
        }
    }
}
