//! `[console]`: the web console's users and sessions.

use std::collections::BTreeMap;

use anyhow::bail;
use serde::{Deserialize, Serialize};

use super::oidc::OidcConfig;
use crate::domain::ServiceId;
use crate::secret::Secret;

/// The web console at `/console`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// Users by name (the name is what they type and what the audit trail shows). None
    /// configured: the console shows one page saying how to add one.
    pub users: BTreeMap<String, ConsoleUserConfig>,
    /// Mark the session cookie `Secure` even when a request did not arrive over TLS (set it when
    /// a TLS-terminating proxy in front forwards plain HTTP).
    pub secure_cookies: bool,
    /// A session unused this long ends (seconds).
    pub session_idle_secs: u64,
    /// A session ends this long after its login, used or not (seconds).
    pub session_max_secs: u64,
    /// Whether the users of `users` may sign in with their passwords (the break-glass accounts
    /// when `oidc` is set); `false` switches them off.
    pub local_users: bool,
    /// Sign-in through the organisation's OpenID Connect provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oidc: Option<OidcConfig>,
}

/// One person who may sign in to the console.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleUserConfig {
    /// The password's argon2id hash in PHC string format (`$argon2id$v=19$...`), as printed by
    /// `referral-relay hash-password`. Never the password itself; redacted by `check-config`.
    pub password_hash: Secret,
    /// What the user may do.
    pub role: ConsoleRole,
    /// External Service IDs whose referrals the user may see; empty sees all (as for API clients).
    #[serde(default)]
    pub service_ids: Vec<ServiceId>,
}

/// `staff` read referrals, act on them and export; `admin` also see the outbox, the audit trail
/// and the settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConsoleRole {
    Staff,
    Admin,
}

impl ConsoleRole {
    pub fn as_str(self) -> &'static str {
        match self {
            ConsoleRole::Staff => "staff",
            ConsoleRole::Admin => "admin",
        }
    }
}

impl ConsoleConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        for (name, user) in &self.users {
            if name.is_empty()
                || name.len() > 64
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c))
            {
                bail!(
                    "console.users: '{name}' is not a usable user name (1 to 64 letters, digits, '.', '_', '-', '@')"
                );
            }
            let hash = argon2::PasswordHash::new(user.password_hash.expose()).map_err(|e| {
                anyhow::anyhow!(
                    "console.users.{name}.password_hash is not a PHC hash string ({e}); make one with `referral-relay hash-password`"
                )
            })?;
            if hash.algorithm.as_str() != "argon2id" {
                bail!(
                    "console.users.{name}.password_hash uses {}; only argon2id hashes are accepted (`referral-relay hash-password` makes one)",
                    hash.algorithm
                );
            }
        }
        if let Some(oidc) = &self.oidc {
            oidc.validate()?;
        } else if !self.local_users {
            bail!(
                "console.local_users = false leaves no way to sign in: configure [console.oidc] first"
            );
        }
        if self.session_idle_secs == 0 || self.session_max_secs < self.session_idle_secs {
            bail!(
                "console.session_idle_secs must be at least 1, and console.session_max_secs at least as long"
            );
        }
        Ok(())
    }
}

/// The argon2id hash (PHC string, default parameters of the `argon2` crate: 19 MiB, 2 passes)
/// of `password`, with a fresh random salt.
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let mut random = [0u8; 16];
    aws_lc_rs::rand::fill(&mut random).map_err(|_| anyhow::anyhow!("no randomness for a salt"))?;
    let salt =
        SaltString::encode_b64(&random).map_err(|e| anyhow::anyhow!("encoding a salt: {e}"))?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("hashing the password: {e}"))
}

/// Whether `password` matches the PHC hash string `hash` (constant time in the password).
pub fn verify_password(hash: &str, password: &str) -> bool {
    use argon2::password_hash::PasswordVerifier;
    argon2::PasswordHash::new(hash).is_ok_and(|parsed| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_its_password_only() {
        let hash = hash_password("correct horse battery staple").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password(&hash, "correct horse battery staple"));
        assert!(!verify_password(&hash, "correct horse battery stapler"));
        assert!(!verify_password("not a hash", "anything"));
    }
}
