//! `audit verify` and `audit list`: read the audit log straight from the store and check its
//! hash chain or print its entries.

use std::path::PathBuf;

use clap::Subcommand;

use super::shared::{load_with_data_dir, open_store};

/// Read or check the audit log (the embedded store: stop the service first; PostgreSQL:
/// while replicas run).
#[derive(Debug, clap::Args)]
pub(super) struct Cmd {
    #[command(subcommand)]
    action: Action,
    #[arg(long, env = "RELAY_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Data directory (overrides server.data_dir).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
}

/// What to do with the audit log.
#[derive(Debug, Subcommand)]
enum Action {
    /// Check the hash chain; names the first broken entry.
    Verify,
    /// Print the entries as JSON lines.
    List {
        /// Only entries after this sequence number.
        #[arg(long, default_value_t = 0)]
        after: u64,
    },
}

impl Cmd {
    /// Reads every entry (after `--after`, for `list`) and verifies or prints them.
    pub(super) fn run(self) -> anyhow::Result<()> {
        let action = self.action;
        let config = load_with_data_dir(self.config.as_deref(), self.data_dir)?;
        let runtime = tokio::runtime::Runtime::new()?;
        let store = open_store(&config, &runtime)?;
        runtime.block_on(async {
            let mut entries = Vec::new();
            let mut after = match &action {
                Action::List { after } => *after,
                Action::Verify => 0,
            };
            loop {
                let batch = store.audit_entries(after, 1000).await?;
                let Some(last) = batch.last() else { break };
                after = last.seq;
                entries.extend(batch);
            }
            match action {
                Action::List { .. } => {
                    for entry in &entries {
                        println!("{}", serde_json::to_string(entry)?);
                    }
                }
                Action::Verify => {
                    let count = crate::store::verify_chain(entries)?;
                    println!("audit log intact: {count} entries");
                }
            }
            anyhow::Ok(())
        })
    }
}
