//! `[api]` and `[oauth2]`: the point-of-service API's clients, and the token endpoint the relay
//! serves to Ocean.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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
    /// The client's API key (`key_FILE` reads it from a file). At least 16 characters; empty
    /// when the client is known by its certificate alone.
    #[serde(default)]
    pub key: Secret,
    /// External Service IDs whose referrals it may see; empty sees all.
    #[serde(default)]
    pub service_ids: Vec<ServiceId>,
    /// Mutual TLS: a PEM file of the CA(s) whose certificates identify this client.
    #[serde(default, skip_serializing_if = "is_empty_path")]
    pub client_ca_file: PathBuf,
    /// Mutual TLS: the SHA-256 fingerprint of the one certificate that identifies this client
    /// (64 hex digits, colons and case ignored).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub client_cert_sha256: String,
    /// Mutual TLS with `client_ca_file`: only certificates naming one of these (a DNS name,
    /// an e-mail address or the common name, case ignored) identify this client; empty: any
    /// certificate the CA issued for client authentication.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub client_cert_names: Vec<String>,
}

fn is_empty_path(path: &Path) -> bool {
    path.as_os_str().is_empty()
}

impl ApiClientConfig {
    /// Whether the client may be known by a certificate.
    pub fn uses_certificates(&self) -> bool {
        !is_empty_path(&self.client_ca_file) || !self.client_cert_sha256.is_empty()
    }

    /// The pinned fingerprint as 32 bytes, if one is configured.
    ///
    /// # Errors
    /// The text is not 64 hex digits (colons and spaces aside).
    pub fn pinned_sha256(&self) -> anyhow::Result<Option<[u8; 32]>> {
        if self.client_cert_sha256.is_empty() {
            return Ok(None);
        }
        let digits: String = self
            .client_cert_sha256
            .chars()
            .filter(|c| !matches!(c, ':' | ' '))
            .collect();
        let mut pin = [0u8; 32];
        hex::decode_to_slice(&digits, &mut pin)
            .map_err(|_| anyhow::anyhow!("must be 64 hex digits"))?;
        Ok(Some(pin))
    }
}

impl ApiConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        for (name, client) in &self.clients {
            let key = client.key.expose();
            if key.is_empty() && !client.uses_certificates() {
                bail!(
                    "api.clients.{name} needs a key (or, with HTTPS, client_ca_file or client_cert_sha256)"
                );
            }
            if !key.is_empty() && key.len() < 16 {
                bail!("api.clients.{name}.key must be at least 16 characters");
            }
            client
                .pinned_sha256()
                .map_err(|e| anyhow::anyhow!("api.clients.{name}.client_cert_sha256 {e}"))?;
            if !client.client_cert_names.is_empty() && is_empty_path(&client.client_ca_file) {
                bail!(
                    "api.clients.{name}.client_cert_names narrows client_ca_file, which is not set"
                );
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
