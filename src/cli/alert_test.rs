//! `alert-test`: sends a test alert by every configured channel, as `check-site` proves a site.

use std::path::PathBuf;

use time::OffsetDateTime;

use crate::alerts::Alerts;
use crate::config::{Config, Overrides};
use crate::destinations::Destinations;
use crate::store::{AlertPhase, AlertRecord};

/// Send a test alert by every channel of [alerts] (e-mail, webhook destinations), now, and say
/// how each went. Needs only the configuration: the service may be running.
#[derive(Debug, clap::Args)]
pub(super) struct Cmd {
    #[arg(long, env = "RELAY_CONFIG")]
    config: Option<PathBuf>,
}

impl Cmd {
    /// Sends the test alert by each channel in turn; fails when there is no channel or any
    /// channel did not take it.
    pub(super) fn run(self) -> anyhow::Result<()> {
        let config = Config::load(self.config.as_deref(), &Overrides::default())?;
        let destinations = Destinations::from_config(&config)?;
        let alerts = Alerts::from_config(&config, &destinations)?;
        if !alerts.has_channels() {
            anyhow::bail!(
                "no alert channel is configured: set alerts.email_to (with [alerts.smtp]) or alerts.destinations"
            );
        }
        let now = OffsetDateTime::now_utc();
        let alert = AlertRecord::new(
            "test",
            "test",
            AlertPhase::Event,
            "test alert from referral-relay alert-test".into(),
            "This is a test of the alert channels (referral-relay alert-test). Nothing needs attention.".into(),
            now,
        );
        let runtime = tokio::runtime::Runtime::new()?;
        let mut failed = Vec::new();
        for channel in alerts.channels() {
            match runtime.block_on(channel.send(&alert.id, &alert)) {
                Ok(()) => println!("{}: the test alert was taken", channel.name),
                Err(e) => {
                    println!("{}: FAILED: {e}", channel.name);
                    failed.push(channel.name.clone());
                }
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            anyhow::bail!("the test alert did not go out by: {}", failed.join(", "))
        }
    }
}
