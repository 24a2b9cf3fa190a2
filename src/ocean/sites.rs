//! The Ocean sites the relay talks to (`[sites.NAME]`), each with its client, and the one rule
//! for which site answers for a referral: intake asks it whether documents can be fetched, the
//! outbox where an update goes, the worker and the fetcher for the client to use.

use std::sync::Arc;
use std::time::Duration;

use super::client::OceanClient;
use crate::config::Config;
use crate::domain::{RedirectUrl, ServiceId};

/// One configured Ocean site.
pub struct Site {
    name: String,
    /// External Service IDs it answers for; empty: every referral no other site lists.
    service_ids: Vec<ServiceId>,
    client: Arc<OceanClient>,
    /// `redirect_url` of its config, when set.
    redirect_url: Option<RedirectUrl>,
}

impl Site {
    /// Its name in `[sites.NAME]`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where the referrer's browser goes after a referral's first Task update, unless the
    /// update says otherwise.
    pub fn redirect_url(&self) -> Option<&RedirectUrl> {
        self.redirect_url.as_ref()
    }

    /// Its client (OAuth2 tokens cached, requests bounded by `outbox.request_timeout_secs`).
    pub fn client(&self) -> &Arc<OceanClient> {
        &self.client
    }
}

/// Every configured site, in name order.
#[derive(Default)]
pub struct Sites(Vec<Site>);

impl Sites {
    /// A client per site of `config`.
    ///
    /// # Errors
    /// When a site's client cannot be built (its URL does not parse).
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        let timeout = Duration::from_secs(config.outbox.request_timeout_secs);
        let sites = config
            .sites
            .iter()
            .map(|(name, site)| {
                Ok(Site {
                    name: name.clone(),
                    service_ids: site.service_ids.clone(),
                    client: Arc::new(OceanClient::new(site, timeout)?),
                    // Sent as serialised (validated when the config was loaded).
                    redirect_url: Some(site.redirect_url.as_str())
                        .filter(|u| !u.is_empty())
                        .and_then(|u| RedirectUrl::parse(u).ok()),
                })
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self(sites))
    }

    /// The site that answers for referrals filed under `service` (`None`: unassigned): the
    /// first, by name, that lists it, else the first that lists no service ids; `None` when no
    /// site does.
    pub fn for_service(&self, service: Option<&ServiceId>) -> Option<&Site> {
        let listed = self
            .0
            .iter()
            .find(|s| service.is_some_and(|id| s.service_ids.contains(id)));
        listed.or_else(|| self.0.iter().find(|s| s.service_ids.is_empty()))
    }

    /// The site named `name`.
    pub fn named(&self, name: &str) -> Option<&Site> {
        self.0.iter().find(|s| s.name == name)
    }

    /// Every site, in name order.
    pub fn iter(&self) -> impl Iterator<Item = &Site> {
        self.0.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SiteConfig;

    /// Sites in name order, as `[sites]` gives them: (name, service ids).
    fn sites(list: &[(&str, &[&str])]) -> Sites {
        Sites(
            list.iter()
                .map(|(name, ids)| {
                    let config: SiteConfig = toml::from_str(
                        "base_url = \"https://ocean.example\"\nclient_id = \"c\"\nclient_secret = \"s\"",
                    )
                    .unwrap();
                    Site {
                        name: (*name).to_owned(),
                        service_ids: ids.iter().map(|id| ServiceId::parse(id).unwrap()).collect(),
                        client: Arc::new(OceanClient::new(&config, Duration::from_secs(1)).unwrap()),
                        redirect_url: None,
                    }
                })
                .collect(),
        )
    }

    #[test]
    fn a_listed_service_goes_to_its_site_and_the_rest_to_the_catch_all() {
        let sites = sites(&[
            ("a-cardio-too", &["CARDIO-1", "NEURO-1"]),
            ("b-cardio", &["CARDIO-1"]),
            ("c-all", &[]),
        ]);
        let id = |s: &str| ServiceId::parse(s).unwrap();
        let name = |service: Option<&ServiceId>| sites.for_service(service).map(Site::name);
        // The first by name that lists it.
        assert_eq!(name(Some(&id("CARDIO-1"))), Some("a-cardio-too"));
        assert_eq!(name(Some(&id("NEURO-1"))), Some("a-cardio-too"));
        // Others, and unassigned referrals, go to the site that lists none.
        assert_eq!(name(Some(&id("PHYSIO-9"))), Some("c-all"));
        assert_eq!(name(None), Some("c-all"));
        assert_eq!(sites.named("b-cardio").map(Site::name), Some("b-cardio"));
        assert!(sites.named("d").is_none());
        assert_eq!(sites.iter().count(), 3);
    }

    #[test]
    fn without_a_catch_all_an_unlisted_service_has_no_site() {
        let sites = sites(&[("cardio", &["CARDIO-1"])]);
        assert!(sites.for_service(None).is_none());
        let physio = ServiceId::parse("PHYSIO-9").unwrap();
        assert!(sites.for_service(Some(&physio)).is_none());
        assert!(Sites::default().for_service(None).is_none());
    }
}
