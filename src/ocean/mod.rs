//! Outbound to Ocean: the per-site client, the outbox (what may be sent) and its worker.

pub mod client;
pub mod documents;
pub mod outbox;
pub mod transitions;
pub mod worker;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
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
