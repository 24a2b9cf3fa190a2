//! `[console.oidc]`: console sign-in through the organisation's OpenID Connect provider (Entra
//! ID, Okta, Keycloak, Google), and how its claims map to the console's roles and service
//! scopes.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use super::ConsoleRole;
use crate::domain::ServiceId;
use crate::secret::Secret;

/// The path of the console's callback, which `redirect_uri` must end with.
pub const CALLBACK_PATH: &str = "/console/oidc/callback";

/// The identity provider and the mapping of its claims.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// The issuer (`iss` of its ID tokens): its `/.well-known/openid-configuration` is read
    /// for the endpoints and keys (OpenID Connect Discovery 1.0). `https`, or `http` on
    /// loopback only.
    pub issuer: String,
    /// The relay's client id at the provider (`aud` of the ID tokens).
    pub client_id: String,
    /// The client secret (`client_secret_basic`, or `client_secret_post` when the provider only
    /// takes that). `RELAY__CONSOLE__OIDC__CLIENT_SECRET_FILE` reads it from a file, and so does
    /// the key `client_secret_FILE`.
    #[serde(default)]
    pub client_secret: Secret,
    /// A file holding the client secret (read at each sign-in, so a rotated file is used
    /// without a restart). Not with `client_secret`.
    #[serde(
        default,
        rename = "client_secret_FILE",
        skip_serializing_if = "Option::is_none"
    )]
    pub client_secret_file: Option<PathBuf>,
    /// The console's callback as the provider knows it (registered there exactly):
    /// `https://<relay host>/console/oidc/callback`.
    pub redirect_uri: String,
    /// Scopes asked for; must include `openid`.
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// The ID token claim that roles (and service scopes) come from: a string or an array of
    /// strings (`groups` for Entra ID and Okta, `roles` for app roles, a mapper's name in
    /// Keycloak).
    #[serde(default = "default_role_claim")]
    pub role_claim: String,
    /// Claim values that make the person an admin.
    #[serde(default)]
    pub admin_values: Vec<String>,
    /// Claim values that make the person staff (when none of theirs is an admin value).
    #[serde(default)]
    pub staff_values: Vec<String>,
    /// Claim value → External Service IDs a person holding it may see. A person holding none of
    /// these values sees every service, as a local user with no `service_ids` does.
    #[serde(default)]
    pub service_ids: BTreeMap<String, Vec<ServiceId>>,
    /// The sign-in button's text.
    #[serde(default = "default_label")]
    pub label: String,
}

fn default_scopes() -> Vec<String> {
    ["openid", "profile", "email"].map(String::from).to_vec()
}

fn default_role_claim() -> String {
    "groups".into()
}

fn default_label() -> String {
    "Sign in with your organisation's account".into()
}

/// What a person's claims give them in the console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Granted {
    pub role: ConsoleRole,
    /// Empty: every service.
    pub service_ids: Vec<ServiceId>,
}

impl OidcConfig {
    /// # Errors
    /// A message naming the key that is wrong.
    pub fn validate(&self) -> anyhow::Result<()> {
        let issuer = reqwest::Url::parse(&self.issuer)
            .with_context(|| format!("console.oidc.issuer {:?} is not a URL", self.issuer))?;
        if !secure_or_loopback(&issuer) {
            bail!(
                "console.oidc.issuer must be an https URL (http only on loopback, for tests), not {:?}",
                self.issuer
            );
        }
        if self.client_id.trim().is_empty() {
            bail!("console.oidc.client_id is empty");
        }
        match (&self.client_secret_file, self.client_secret.is_empty()) {
            (Some(_), false) => {
                bail!("console.oidc: give client_secret or client_secret_FILE, not both")
            }
            (None, true) => bail!(
                "console.oidc.client_secret is empty (or set RELAY__CONSOLE__OIDC__CLIENT_SECRET_FILE)"
            ),
            _ => {}
        }
        self.client_secret()?;
        let redirect = reqwest::Url::parse(&self.redirect_uri).with_context(|| {
            format!(
                "console.oidc.redirect_uri {:?} is not a URL",
                self.redirect_uri
            )
        })?;
        if !secure_or_loopback(&redirect) || !redirect.path().ends_with(CALLBACK_PATH) {
            bail!(
                "console.oidc.redirect_uri must be the console's callback, https://<relay host>{CALLBACK_PATH} (http only on loopback), not {:?}",
                self.redirect_uri
            );
        }
        if !self.scopes.iter().any(|s| s == "openid") {
            bail!("console.oidc.scopes must include \"openid\"");
        }
        if self.role_claim.trim().is_empty() {
            bail!("console.oidc.role_claim is empty");
        }
        if self.admin_values.is_empty() && self.staff_values.is_empty() {
            bail!(
                "console.oidc: neither admin_values nor staff_values is set, so nobody could sign in; list the {} values that give each role",
                self.role_claim
            );
        }
        Ok(())
    }

    /// The client secret, from the config or the file named.
    ///
    /// # Errors
    /// The file cannot be read, or holds nothing.
    pub fn client_secret(&self) -> anyhow::Result<Secret> {
        let Some(path) = &self.client_secret_file else {
            return Ok(self.client_secret.clone());
        };
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "console.oidc.client_secret_FILE: cannot read {}",
                path.display()
            )
        })?;
        let secret = text.trim();
        if secret.is_empty() {
            bail!(
                "console.oidc.client_secret_FILE: {} is empty",
                path.display()
            );
        }
        Ok(Secret::new(secret))
    }

    /// What `values` (the role claim's values) give: admin when one is an admin value, else
    /// staff when one is a staff value, else nothing (`None`: refused). The service ids are those
    /// of every value listed in `service_ids`, in order, without repeats.
    pub fn grant(&self, values: &[String]) -> Option<Granted> {
        let has = |listed: &[String]| values.iter().any(|v| listed.contains(v));
        let role = if has(&self.admin_values) {
            ConsoleRole::Admin
        } else if has(&self.staff_values) {
            ConsoleRole::Staff
        } else {
            return None;
        };
        let mut service_ids: Vec<ServiceId> = Vec::new();
        for id in values
            .iter()
            .filter_map(|v| self.service_ids.get(v))
            .flatten()
        {
            if !service_ids.contains(id) {
                service_ids.push(id.clone());
            }
        }
        Some(Granted { role, service_ids })
    }
}

/// `https`, or `http` to this machine.
pub(super) fn secure_or_loopback(url: &reqwest::Url) -> bool {
    match url.scheme() {
        "https" => true,
        "http" => url.host_str().is_some_and(super::alerts::is_loopback),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> OidcConfig {
        toml::from_str(
            r#"
            issuer = "https://login.example/tenant/v2.0"
            client_id = "relay"
            client_secret = "s3cret"
            redirect_uri = "https://relay.example/console/oidc/callback"
            admin_values = ["relay-admins"]
            staff_values = ["relay-staff"]
            [service_ids]
            "cardio-team" = ["CARDIO-RAPID-01"]
            "ortho-team" = ["ORTHO-01", "CARDIO-RAPID-01"]
            "#,
        )
        .unwrap()
    }

    #[test]
    fn claims_map_to_the_highest_role_and_their_services() {
        let config = config();
        config.validate().unwrap();
        let values = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let granted = config
            .grant(&values(&["relay-staff", "cardio-team", "ortho-team"]))
            .unwrap();
        assert_eq!(granted.role, ConsoleRole::Staff);
        let ids: Vec<&str> = granted.service_ids.iter().map(|s| s.as_str()).collect();
        assert_eq!(ids, ["CARDIO-RAPID-01", "ORTHO-01"]);
        let admin = config
            .grant(&values(&["relay-staff", "relay-admins"]))
            .unwrap();
        assert_eq!(admin.role, ConsoleRole::Admin);
        assert!(admin.service_ids.is_empty());
        assert_eq!(config.grant(&values(&["cardio-team"])), None);
        assert_eq!(config.grant(&[]), None);
    }

    #[test]
    fn unusable_settings_are_refused_with_the_key() {
        let refused = |edit: &dyn Fn(&mut OidcConfig)| {
            let mut c = config();
            edit(&mut c);
            c.validate().unwrap_err().to_string()
        };
        assert!(refused(&|c| c.issuer = "http://login.example".into()).contains("issuer"));
        assert!(
            refused(&|c| c.redirect_uri = "https://relay.example/elsewhere".into())
                .contains("redirect_uri")
        );
        assert!(refused(&|c| c.scopes = vec!["profile".into()]).contains("openid"));
        assert!(refused(&|c| c.client_secret = Secret::default()).contains("client_secret"));
        assert!(
            refused(&|c| {
                c.admin_values.clear();
                c.staff_values.clear();
            })
            .contains("nobody could sign in")
        );
        let mut loopback = config();
        loopback.issuer = "http://127.0.0.1:4000".into();
        loopback.redirect_uri = "http://127.0.0.1:8080/console/oidc/callback".into();
        loopback.validate().unwrap();
    }

    /// The issue's example, as an operator writes it, loads through the whole config; the
    /// secret may come from a `_FILE` variable instead.
    #[test]
    fn the_documented_keys_load_as_written() {
        let toml = r#"
[console]
local_users = false

[console.oidc]
issuer = "https://login.microsoftonline.com/0b5e4c1a-tenant/v2.0"
client_id = "relay-console"
client_secret = "s3cret-from-the-portal"
redirect_uri = "https://relay.example/console/oidc/callback"
scopes = ["openid", "profile", "email"]
role_claim = "groups"
admin_values = ["relay-admins"]
staff_values = ["relay-staff"]
[console.oidc.service_ids]
"cardio-team" = ["CARDIO-RAPID-01"]
"#;
        let load = |text: &str, env: Vec<(String, String)>| {
            let file = tempfile::NamedTempFile::new().unwrap();
            std::fs::write(file.path(), text).unwrap();
            crate::config::Config::load_with_env(
                Some(file.path()),
                &crate::config::Overrides::default(),
                env.into_iter(),
            )
        };
        let config = load(toml, Vec::new()).unwrap();
        assert!(!config.console.local_users);
        let oidc = config.console.oidc.as_ref().unwrap();
        assert_eq!(
            oidc.client_secret().unwrap().expose(),
            "s3cret-from-the-portal"
        );
        let granted = oidc
            .grant(&["relay-staff".into(), "cardio-team".into()])
            .unwrap();
        assert_eq!(granted.service_ids[0].as_str(), "CARDIO-RAPID-01");
        // The secret from a file a variable names.
        let secret = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(secret.path(), "from-the-mounted-secret\n").unwrap();
        let without = toml.replace("client_secret = \"s3cret-from-the-portal\"\n", "");
        let env = vec![(
            "RELAY__CONSOLE__OIDC__CLIENT_SECRET_FILE".to_owned(),
            secret.path().to_str().unwrap().to_owned(),
        )];
        let config = load(&without, env).unwrap();
        let oidc = config.console.oidc.unwrap();
        assert_eq!(
            oidc.client_secret().unwrap().expose(),
            "from-the-mounted-secret"
        );
        // No provider and no password accounts: nobody could sign in.
        let refused = load("[console]\nlocal_users = false\n", Vec::new()).unwrap_err();
        assert!(
            format!("{refused:#}").contains("local_users"),
            "{refused:#}"
        );
    }

    #[test]
    fn the_secret_may_come_from_a_file() {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), "from-a-file\n").unwrap();
        let mut c = config();
        c.client_secret = Secret::default();
        c.client_secret_file = Some(file.path().to_owned());
        c.validate().unwrap();
        assert_eq!(c.client_secret().unwrap().expose(), "from-a-file");
        c.client_secret = Secret::new("both");
        assert!(c.validate().unwrap_err().to_string().contains("not both"));
    }
}
