//! `migrate` and `migrate-schema`: copy a stopped embedded store into PostgreSQL, and bring a
//! PostgreSQL schema up to the migrations this build knows.

use std::path::PathBuf;

use super::shared::load_with_data_dir;
use crate::config::{Config, Overrides};
use crate::store::StoreError;
use crate::telemetry;

/// Copy a stopped embedded store (the data dir) into PostgreSQL: referrals with every
/// version's bytes, the feed, the outbox, export marks, the audit chain and the token
/// signing key; sealed records stay sealed (no key needed). Safe to run again after an
/// interruption. Prints the rows on both sides.
#[derive(Debug, clap::Args)]
pub(super) struct Migrate {
    /// The database: a libpq connection string or postgres:// URL.
    #[arg(long, env = "RELAY_MIGRATE_TO", hide_env_values = true)]
    to: String,
    /// The schema to fill (default: storage.schema of the config, else public).
    #[arg(long)]
    schema: Option<String>,
    #[arg(long, env = "RELAY_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (overrides server.data_dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

impl Migrate {
    /// Copies the data dir into the database and compares the rows on both sides.
    pub(super) fn run(self) -> anyhow::Result<()> {
        let config = load_with_data_dir(self.config.as_deref(), self.data_dir)?;
        telemetry::init(&config.log.level, config.log.format);
        let options = crate::store::PgOptions {
            schema: Some(self.schema.unwrap_or_else(|| config.storage.schema.clone())),
            ..crate::store::PgOptions::new(self.to)
        };
        let dir = &config.server.data_dir;
        let counts = tokio::runtime::Runtime::new()?
            .block_on(crate::store::sled_to_postgres(&options, dir))
            .map_err(|e| match e {
                StoreError::InUse { .. } => {
                    anyhow::anyhow!("{e}: stop the service before migrating its data dir")
                }
                e => anyhow::anyhow!("{}", e.chain()),
            })?;
        println!("{:<12} {:>12} {:>12}", "rows", "embedded", "postgresql");
        for c in &counts {
            println!("{:<12} {:>12} {:>12}", c.table, c.source, c.target);
        }
        if let Some(c) = counts.iter().find(|c| c.source != c.target) {
            anyhow::bail!(
                "{} differs: {} in the data dir, {} in the database (did the database hold rows of its own?)",
                c.table,
                c.source,
                c.target
            );
        }
        println!(
            "copied {} into PostgreSQL; set storage.backend = \"postgres\" and start the service",
            dir.display()
        );
        Ok(())
    }
}

/// Apply the PostgreSQL schema migrations this build knows (as `serve` does at start), then
/// list them. Needs storage.backend = postgres.
#[derive(Debug, clap::Args)]
pub(super) struct MigrateSchema {
    #[arg(long, env = "RELAY_CONFIG")]
    config: Option<PathBuf>,
}

impl MigrateSchema {
    /// Applies the migrations not yet applied and lists every one with its state.
    pub(super) fn run(self) -> anyhow::Result<()> {
        let config = Config::load(self.config.as_deref(), &Overrides::default())?;
        telemetry::init(&config.log.level, config.log.format);
        if config.storage.backend != crate::config::Backend::Postgres {
            anyhow::bail!(
                "storage.backend is not postgres: the embedded store has no schema to migrate"
            );
        }
        let options = crate::app::pg_options(&config.storage)?;
        let migrations = tokio::runtime::Runtime::new()?
            .block_on(crate::store::PgStore::migrate_schema(&options))
            .map_err(|e| anyhow::anyhow!("{}", e.chain()))?;
        for (version, name, now) in migrations {
            let state = if now {
                "applied now"
            } else {
                "already applied"
            };
            println!("{version:04} {name}: {state}");
        }
        Ok(())
    }
}
