//! Outbound to Ocean: the per-site client and the outbox worker.

pub mod client;
pub mod transitions;
pub mod worker;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::domain::ServiceId;
use client::OceanClient;

/// One client per configured site.
pub fn clients(config: &Config) -> anyhow::Result<HashMap<String, Arc<OceanClient>>> {
    let timeout = Duration::from_secs(config.outbox.request_timeout_secs);
    config
        .sites
        .iter()
        .map(|(name, site)| Ok((name.clone(), Arc::new(OceanClient::new(site, timeout)?))))
        .collect()
}

/// The site that answers for referrals filed under `service`: the first (by name) listing it,
/// else the first that lists no service ids.
pub fn site_for(config: &Config, service: Option<&ServiceId>) -> Option<String> {
    let listed = config
        .sites
        .iter()
        .find(|(_, s)| service.is_some_and(|id| s.service_ids.contains(id)));
    let open = || config.sites.iter().find(|(_, s)| s.service_ids.is_empty());
    listed.or_else(open).map(|(name, _)| name.clone())
}
