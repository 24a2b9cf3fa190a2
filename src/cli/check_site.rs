//! `check-site`: proves one configured Ocean site's credentials against Ocean itself.

use std::path::PathBuf;

use crate::config::{Config, Overrides};

/// Prove an Ocean site's credentials work: fetch a token, then read its site number.
#[derive(Debug, clap::Args)]
pub(super) struct Cmd {
    /// The site's name in [sites.NAME].
    name: String,
    #[arg(long, env = "RELAY_CONFIG")]
    config: Option<PathBuf>,
}

impl Cmd {
    /// Fetches a token for the site and reads its site number with it.
    pub(super) fn run(self) -> anyhow::Result<()> {
        let name = self.name;
        let config = Config::load(self.config.as_deref(), &Overrides::default())?;
        let site = config
            .sites
            .get(&name)
            .ok_or_else(|| anyhow::anyhow!("no site named '{name}' in [sites]"))?;
        let timeout = std::time::Duration::from_secs(config.outbox.request_timeout_secs);
        let client = crate::ocean::client::OceanClient::new(site, timeout)?;
        let status = tokio::runtime::Runtime::new()?.block_on(client.check())?;
        println!(
            "site '{name}': token fetched, site number read (HTTP {status}); the credentials work"
        );
        Ok(())
    }
}
