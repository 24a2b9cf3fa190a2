//! `[integrations.NAME]`: what each webhook accepts and how its callers authenticate.

use std::collections::BTreeMap;

use anyhow::bail;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Deserializer, Serialize};

use crate::domain::{EventCode, IntegrationName, ServiceId};
use crate::secret::{Secret, SecretBytes};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntegrationConfig {
    /// How callers of this integration's webhook authenticate.
    pub auth: AuthConfig,
    /// Event codes accepted; empty accepts all.
    #[serde(default)]
    pub events: Vec<EventCode>,
    /// External Service ID for messages that carry none; empty for none.
    #[serde(default, deserialize_with = "crate::secret::string_or_number")]
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
        secrets: Vec<WebhookSecret>,
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
    #[serde(deserialize_with = "crate::secret::string_or_number")]
    pub client_id: String,
    pub client_secret: Secret,
}

/// A Standard Webhooks secret, `whsec_` and the base64 of at least 16 bytes: read as its key
/// bytes, so a malformed one is refused when the configuration loads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct WebhookSecret(SecretBytes);

impl WebhookSecret {
    /// Reads `whsec_<base64>`; the error says what is wrong, never the value.
    pub fn parse(secret: &str) -> Result<Self, &'static str> {
        let encoded = secret
            .strip_prefix("whsec_")
            .ok_or("a Standard Webhooks secret starts with whsec_")?;
        let key = STANDARD
            .decode(encoded)
            .map_err(|_| "the part after whsec_ is not valid base64")?;
        if key.len() < 16 {
            return Err("the key after whsec_ must be at least 16 bytes");
        }
        Ok(Self(SecretBytes::new(key)))
    }

    /// The HMAC key.
    pub fn key(&self) -> &[u8] {
        self.0.expose()
    }
}

impl<'de> Deserialize<'de> for WebhookSecret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = Secret::deserialize(d)?;
        Self::parse(text.expose()).map_err(serde::de::Error::custom)
    }
}

/// Checks every integration: its scheme's settings, that a token client belongs to one
/// integration only, and that integrations it shares referrals with exist.
pub fn validate(integrations: &BTreeMap<IntegrationName, IntegrationConfig>) -> anyhow::Result<()> {
    if integrations.is_empty() {
        bail!("integrations: at least one integration must be configured");
    }
    let mut client_owner: BTreeMap<&str, &IntegrationName> = BTreeMap::new();
    for (name, integration) in integrations {
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
                if *tolerance_secs == 0 {
                    bail!("{key}.tolerance_secs must be at least 1");
                }
            }
        }
        for other in &integration.share_referrals_with {
            if !integrations.contains_key(other) || other == name {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_secrets_must_be_whsec_base64_of_16_bytes() {
        assert_eq!(
            WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
                .unwrap()
                .key()
                .len(),
            24
        );
        assert!(WebhookSecret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(WebhookSecret::parse("whsec_***").is_err());
        assert!(WebhookSecret::parse("whsec_AAAA").is_err());
    }
}
