//! The command line: `serve` and `check-config`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::app::{Application, shutdown_signal};
use crate::config::{Config, Overrides};
use crate::telemetry;

#[derive(Debug, Parser)]
#[command(
    name = "referral-relay",
    version,
    about = "Receives Ocean eReferrals over FHIR R4 and stores them durably"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the HTTP service.
    Serve {
        /// TOML config file layered over the built-in defaults.
        #[arg(long, env = "RELAY_CONFIG")]
        config: Option<PathBuf>,
        /// Address to listen on (overrides server.listen).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Data directory (overrides server.data_dir).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Print the effective configuration, secrets redacted, and exit.
    CheckConfig {
        #[arg(long, env = "RELAY_CONFIG")]
        config: Option<PathBuf>,
    },
}

/// Parses the command line and runs the command; the process exit code comes from here.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve {
            config,
            listen,
            data_dir,
        } => {
            let overrides = Overrides { listen, data_dir };
            let config = Config::load(config.as_deref(), &overrides)?;
            telemetry::init(&config.log.level);
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(async {
                let app = Application::build(&config).await?;
                tracing::info!(addr = %app.local_addr()?, data_dir = %config.server.data_dir.display(), "listening");
                app.run_until(shutdown_signal()).await
            })?;
            tracing::info!("stopped");
            Ok(())
        }
        Command::CheckConfig { config } => {
            let config = Config::load(config.as_deref(), &Overrides::default())?;
            print!("{}", config.to_redacted_toml()?);
            Ok(())
        }
    }
}
