//! The command line: `serve` and `check-config`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::app::{Application, shutdown_signal};
use crate::config::{Config, Overrides};
use crate::store::Store;
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
    /// Prove an Ocean site's credentials work: fetch a token, then read its site number.
    CheckSite {
        /// The site's name in [sites.NAME].
        name: String,
        #[arg(long, env = "RELAY_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Read or check the audit log (opens the data dir: stop the service first).
    Audit {
        #[command(subcommand)]
        action: AuditAction,
        #[arg(long, env = "RELAY_CONFIG", global = true)]
        config: Option<PathBuf>,
        /// Data directory (overrides server.data_dir).
        #[arg(long, global = true)]
        data_dir: Option<PathBuf>,
    },
    /// Send a dead-lettered update again, through the running service's API.
    Replay {
        /// The update id (see GET /api/v1/updates?state=dead).
        id: u64,
        /// Where the service listens.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// An API client key.
        #[arg(long, env = "RELAY_API_KEY", hide_env_values = true)]
        key: String,
    },
}

#[derive(Debug, Subcommand)]
enum AuditAction {
    /// Check the hash chain; names the first broken entry.
    Verify,
    /// Print the entries as JSON lines.
    List {
        /// Only entries after this sequence number.
        #[arg(long, default_value_t = 0)]
        after: u64,
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
        Command::CheckSite { name, config } => {
            let config = Config::load(config.as_deref(), &Overrides::default())?;
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
        Command::Audit {
            action,
            config,
            data_dir,
        } => {
            let overrides = Overrides {
                listen: None,
                data_dir,
            };
            let config = Config::load(config.as_deref(), &overrides)?;
            let store = crate::store::SledStore::open(&config.server.data_dir)?;
            tokio::runtime::Runtime::new()?.block_on(async {
                let mut entries = Vec::new();
                let mut after = match &action {
                    AuditAction::List { after } => *after,
                    AuditAction::Verify => 0,
                };
                loop {
                    let batch = store.audit_entries(after, 1000).await?;
                    let Some(last) = batch.last() else { break };
                    after = last.seq;
                    entries.extend(batch);
                }
                match action {
                    AuditAction::List { .. } => {
                        for entry in &entries {
                            println!("{}", serde_json::to_string(entry)?);
                        }
                    }
                    AuditAction::Verify => {
                        let count = crate::store::verify_chain(entries)?;
                        println!("audit log intact: {count} entries");
                    }
                }
                anyhow::Ok(())
            })
        }
        Command::Replay { id, url, key } => {
            let url = format!("{}/api/v1/updates/{id}/replay", url.trim_end_matches('/'));
            let (status, body) = tokio::runtime::Runtime::new()?.block_on(async {
                let response = reqwest::Client::new()
                    .post(&url)
                    .bearer_auth(&key)
                    .send()
                    .await?;
                let status = response.status();
                Ok::<_, reqwest::Error>((status, response.text().await?))
            })?;
            if !status.is_success() {
                anyhow::bail!("replay refused ({status}): {body}");
            }
            println!("update {id} is pending again");
            Ok(())
        }
    }
}
