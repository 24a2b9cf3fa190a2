//! `[patient_engagement.NAME]`: an endpoint Ocean notifies when a patient completes an eForm
//! (the Request URL `/ocean/NAME/patient-engagement`), and what fetching the submission from
//! Ocean's Open API needs: the site, its number, the Open API credentials and the Shared
//! Encryption Key.

use std::collections::BTreeMap;

use anyhow::bail;
use serde::{Deserialize, Serialize};

use super::SiteConfig;
use crate::secret::Secret;

/// Fewest characters of an endpoint's own secret: it is all that stands between anyone who
/// knows the URL and the endpoint.
pub const MIN_SECRET_LEN: usize = 24;

/// One Patient Engagement endpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatientEngagementConfig {
    /// The `[sites.X]` it fetches from (its `base_url`, and its credentials by default).
    pub site: String,
    /// The Ocean site number: sent as the `siteNum` header, and the only `siteNum` a
    /// notification may name.
    #[serde(deserialize_with = "crate::secret::string_or_number")]
    pub site_num: String,
    /// The Open API `siteKey` header; empty: the site's `client_id` (see [`open_api_credentials`]).
    #[serde(default)]
    pub site_key: Secret,
    /// The Open API `siteCredential` header; empty: the site's `client_secret`.
    #[serde(default)]
    pub site_credential: Secret,
    /// The site's Shared Encryption Key (at most 32 bytes), which decrypts what Ocean serves.
    pub shared_encryption_key: Secret,
    /// The endpoint's own secret: Ocean's calls carry it as `?k=` in the Request URL (or the
    /// `x-ocean-webhook-key` header). At least [`MIN_SECRET_LEN`] visible ASCII characters.
    pub secret: Secret,
}

/// The Open API `siteKey` and `siteCredential` of an endpoint on `site`. INFERRED: they are the
/// site's Manage Credentials client id and secret (public integration code sends those), so an
/// endpoint that names none uses its site's `client_id` and `client_secret`.
pub fn open_api_credentials(
    endpoint: &PatientEngagementConfig,
    site: &SiteConfig,
) -> (Secret, Secret) {
    let key = if endpoint.site_key.is_empty() {
        Secret::new(site.client_id.clone())
    } else {
        endpoint.site_key.clone()
    };
    let credential = if endpoint.site_credential.is_empty() {
        site.client_secret.clone()
    } else {
        endpoint.site_credential.clone()
    };
    (key, credential)
}

/// Whether `name` can be an endpoint's name: it is a path segment of the Request URL.
fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Checks every endpoint against the configured sites.
pub fn validate(
    endpoints: &BTreeMap<String, PatientEngagementConfig>,
    sites: &BTreeMap<String, SiteConfig>,
) -> anyhow::Result<()> {
    for (name, endpoint) in endpoints {
        let key = format!("patient_engagement.{name}");
        if !valid_name(name) {
            bail!("{key}: the name is part of the Request URL: 1 to 64 of a-z, 0-9, '-' and '_'");
        }
        if !sites.contains_key(&endpoint.site) {
            bail!(
                "{key}.site names '{}', which is not a configured [sites.X]",
                endpoint.site
            );
        }
        let site_num = endpoint.site_num.trim();
        if site_num.is_empty() || site_num.len() > 64 {
            bail!("{key}.site_num is required");
        }
        let sek = endpoint.shared_encryption_key.expose();
        if sek.is_empty() {
            bail!("{key}.shared_encryption_key is required");
        }
        if crate::patient_engagement::crypto::sek_key_len(sek.len()).is_none() {
            bail!("{key}.shared_encryption_key is longer than 32 bytes");
        }
        let secret = endpoint.secret.expose();
        if secret.len() < MIN_SECRET_LEN || !secret.bytes().all(|b| b.is_ascii_graphic()) {
            bail!(
                "{key}.secret must be at least {MIN_SECRET_LEN} visible ASCII characters (e.g. `openssl rand -hex 24`)"
            );
        }
        for (field, value) in [
            ("site_key", &endpoint.site_key),
            ("site_credential", &endpoint.site_credential),
        ] {
            // Sent as a header: no line breaks or other controls.
            if value.expose().bytes().any(|b| b.is_ascii_control()) {
                bail!("{key}.{field} holds a control character");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site() -> SiteConfig {
        toml::from_str(
            "base_url = \"https://ocean.example\"\nclient_id = \"cid\"\nclient_secret = \"cs\"",
        )
        .unwrap()
    }

    fn endpoint(extra: &str) -> PatientEngagementConfig {
        toml::from_str(&format!(
            "site = \"main\"\nsite_num = 1234\nshared_encryption_key = \"sek\"\nsecret = \"{}\"\n{extra}",
            "s".repeat(MIN_SECRET_LEN)
        ))
        .unwrap()
    }

    /// Every secret from a `_FILE` variable, none of them printed by `check-config`.
    #[test]
    fn secrets_come_from_files_and_are_never_printed() {
        let file = |text: &str| {
            let f = tempfile::NamedTempFile::new().unwrap();
            std::fs::write(f.path(), format!("{text}\n")).unwrap();
            f
        };
        let (secret, sek, credential) = (
            file("endpoint-secret-from-a-file-0123"),
            file("Sek-From-File"),
            file("credential-from-a-file"),
        );
        let toml = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            toml.path(),
            "[sites.main]\nbase_url = \"https://ocean.example\"\nclient_id = \"cid\"\nclient_secret = \"site-secret-value\"\n[patient_engagement.clinic]\nsite = \"main\"\nsite_num = 1234\n",
        )
        .unwrap();
        let path = |f: &tempfile::NamedTempFile| f.path().to_str().unwrap().to_owned();
        let env = vec![
            (
                "RELAY__PATIENT_ENGAGEMENT__CLINIC__SECRET_FILE".to_owned(),
                path(&secret),
            ),
            (
                "RELAY__PATIENT_ENGAGEMENT__CLINIC__SHARED_ENCRYPTION_KEY_FILE".to_owned(),
                path(&sek),
            ),
            (
                "RELAY__PATIENT_ENGAGEMENT__CLINIC__SITE_CREDENTIAL_FILE".to_owned(),
                path(&credential),
            ),
        ];
        let config = super::super::Config::load_with_env(
            Some(toml.path()),
            &super::super::Overrides::default(),
            env.into_iter(),
        )
        .unwrap();
        let endpoint = &config.patient_engagement["clinic"];
        assert_eq!(endpoint.secret.expose(), "endpoint-secret-from-a-file-0123");
        assert_eq!(endpoint.shared_encryption_key.expose(), "Sek-From-File");
        assert_eq!(endpoint.site_credential.expose(), "credential-from-a-file");
        let printed = config.to_redacted_toml().unwrap();
        for secret in ["endpoint-secret", "Sek-From-File", "credential-from"] {
            assert!(!printed.contains(secret), "{secret} printed");
        }
        assert!(printed.contains("[patient_engagement.clinic]"), "{printed}");
    }

    #[test]
    fn credentials_default_to_the_sites_and_checks_name_their_key() {
        let sites = BTreeMap::from([("main".to_owned(), site())]);
        let (key, credential) = open_api_credentials(&endpoint(""), &sites["main"]);
        assert_eq!((key.expose(), credential.expose()), ("cid", "cs"));
        let own = endpoint("site_key = \"k\"\nsite_credential = \"c\"");
        let (key, credential) = open_api_credentials(&own, &sites["main"]);
        assert_eq!((key.expose(), credential.expose()), ("k", "c"));
        assert_eq!(endpoint("").site_num, "1234");
        let ok = BTreeMap::from([("clinic".to_owned(), endpoint(""))]);
        validate(&ok, &sites).unwrap();
        let mut bad = endpoint("");
        bad.site = "other".into();
        let e = validate(&BTreeMap::from([("clinic".to_owned(), bad)]), &sites).unwrap_err();
        assert!(
            e.to_string().contains("patient_engagement.clinic.site"),
            "{e}"
        );
        let mut short = endpoint("");
        short.secret = Secret::new("short");
        let e = validate(&BTreeMap::from([("clinic".to_owned(), short)]), &sites).unwrap_err();
        assert!(
            e.to_string().contains("patient_engagement.clinic.secret"),
            "{e}"
        );
        let mut long = endpoint("");
        long.shared_encryption_key = Secret::new("x".repeat(33));
        let e = validate(&BTreeMap::from([("clinic".to_owned(), long)]), &sites).unwrap_err();
        assert!(e.to_string().contains("shared_encryption_key"), "{e}");
        let e = validate(
            &BTreeMap::from([("Bad/Name".to_owned(), endpoint(""))]),
            &sites,
        )
        .unwrap_err();
        assert!(e.to_string().contains("Request URL"), "{e}");
    }
}
