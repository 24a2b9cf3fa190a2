//! `rekey`: re-seals the stopped embedded store's patient data with the current encryption key,
//! and records that in the audit trail.

use std::path::PathBuf;

use super::shared::{cli_actor, load_with_data_dir, open_stopped};
use crate::store::AuditStore;

/// Re-seal stored patient data with storage.encryption_key: records written before
/// encryption was enabled and records sealed with one of storage.previous_keys. Stop the
/// service first.
#[derive(Debug, clap::Args)]
pub(super) struct Cmd {
    #[arg(long, env = "RELAY_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (overrides server.data_dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

impl Cmd {
    /// Re-seals every record that needs it and audits how many were.
    pub(super) fn run(self) -> anyhow::Result<()> {
        let config = load_with_data_dir(self.config.as_deref(), self.data_dir)?;
        let keys = crate::app::keyring(&config.storage)?.ok_or_else(|| {
            anyhow::anyhow!("storage.encryption_key is not set: there is no key to seal with")
        })?;
        // Through open_stopped first, for its error when the service still holds the store.
        drop(open_stopped(&config)?);
        let rewritten = crate::store::SledStore::rekey(&config.server.data_dir, keys)?;
        let store = open_stopped(&config)?;
        tokio::runtime::Runtime::new()?.block_on(store.audit(
            "STORE_REKEYED",
            &cli_actor(),
            serde_json::json!({"records_resealed": rewritten}),
        ))?;
        println!("{rewritten} records re-sealed with the current storage.encryption_key");
        Ok(())
    }
}
