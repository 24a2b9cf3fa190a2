//! `check-config`: prints the effective configuration with its secrets redacted, and the HTTPS
//! certificate it would serve.

use std::path::PathBuf;

use crate::config::{Config, Overrides};

/// Print the effective configuration, secrets redacted, and exit; with HTTPS on, also the
/// certificate's subject, names and expiry (a pair that does not load is an error).
#[derive(Debug, clap::Args)]
pub(super) struct Cmd {
    #[arg(long, env = "RELAY_CONFIG")]
    config: Option<PathBuf>,
}

impl Cmd {
    /// Loads the configuration (and the certificate, when HTTPS is on) and prints it.
    pub(super) fn run(self) -> anyhow::Result<()> {
        let config = Config::load(self.config.as_deref(), &Overrides::default())?;
        // What `serve` builds at start beyond the checks of the types: the alert channels (the
        // e-mail addresses parsed whole, `ca_file` read).
        let destinations = crate::destinations::Destinations::from_config(&config)?;
        crate::alerts::Alerts::from_config(&config, &destinations)?;
        print!("{}", config.to_redacted_toml()?);
        if let Some(tls) = crate::server::tls::Tls::from_config(&config)? {
            let serving = tls.certificate.status().serving;
            let days = (serving.not_after - time::OffsetDateTime::now_utc()).whole_days();
            println!(
                "\n# server.tls certificate: subject {}; names {}; valid until {} ({days} days from now)",
                serving.subject,
                serving.names.join(", "),
                crate::server::tls::certificate::rfc3339(serving.not_after),
            );
        }
        Ok(())
    }
}
