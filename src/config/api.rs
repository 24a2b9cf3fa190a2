//! `[api]` and `[oauth2]`: the point-of-service API's clients, and the token endpoint the relay
//! serves to Ocean.

use std::collections::BTreeMap;

use anyhow::bail;
use serde::{Deserialize, Serialize};

use crate::domain::ServiceId;
use crate::secret::Secret;

/// The point-of-service API (`/api/v1`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Clients by name; each sends its key as `Authorization: Bearer <key>`. None configured:
    /// the API answers 401 to everyone.
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

impl ApiConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        for (name, client) in &self.clients {
            if client.key.expose().len() < 16 {
                bail!("api.clients.{name}.key must be at least 16 characters");
            }
        }
        Ok(())
    }
}

/// The token endpoint the relay serves to Ocean.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuth2Config {
    /// Key that signs issued tokens (HS256), at least 32 bytes. Empty: a random key is made
    /// once and kept in `<data_dir>/oauth2-signing.key`, so tokens survive restarts.
    pub signing_key: Secret,
    /// Earlier signing keys whose tokens are still accepted while a rotation is under way.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub previous_signing_keys: Vec<Secret>,
}

impl OAuth2Config {
    pub fn validate(&self) -> anyhow::Result<()> {
        for (i, key) in std::iter::once(&self.signing_key)
            .chain(&self.previous_signing_keys)
            .enumerate()
        {
            if (i == 0 && key.is_empty()) || key.expose().len() >= 32 {
                continue;
            }
            bail!("oauth2 signing keys must be at least 32 bytes long");
        }
        Ok(())
    }
}
