//! `serve`: runs the HTTP service in the foreground until it is told to stop.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::app::{Application, shutdown_signal};
use crate::config::{Config, LogFormat, Overrides};
use crate::telemetry;

/// Run the HTTP service.
#[derive(Debug, clap::Args)]
pub(super) struct Cmd {
    /// TOML config file layered over the built-in defaults.
    #[arg(long, env = "RELAY_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on (overrides server.listen).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Data directory (overrides server.data_dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Log format: text or json (overrides log.format).
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
}

impl Cmd {
    /// Loads the configuration with the flags over it and serves until a shutdown signal.
    pub(super) fn run(self) -> anyhow::Result<()> {
        let overrides = Overrides {
            listen: self.listen,
            data_dir: self.data_dir,
            log_format: self.log_format,
        };
        let config = Config::load(self.config.as_deref(), &overrides)?;
        telemetry::init(&config.log.level, config.log.format);
        let runtime = tokio::runtime::Runtime::new()?;
        runtime.block_on(async {
            let app = Application::build(&config).await?;
            tracing::info!(addr = %app.local_addr()?, data_dir = %config.server.data_dir.display(), "listening");
            app.run_until(shutdown_signal()).await
        })?;
        // Ends every task still holding the store, which closes it (the store logs that).
        drop(runtime);
        tracing::info!("stopped");
        Ok(())
    }
}
