//! `destinations backfill`: steers a configured destination through the running service's API.

use clap::Subcommand;

use super::shared::post_api;

/// Steer a destination through the running service's API (needs an API client key not
/// limited to some service ids).
#[derive(Debug, clap::Args)]
pub(super) struct Cmd {
    #[command(subcommand)]
    action: Action,
    /// Where the service listens.
    #[arg(long, default_value = "http://127.0.0.1:8080", global = true)]
    url: String,
    /// An API client key.
    #[arg(long, env = "RELAY_API_KEY", hide_env_values = true, global = true)]
    key: Option<String>,
}

/// What to ask of the destination.
#[derive(Debug, Subcommand)]
enum Action {
    /// Queue for destination NAME every stored version received since a time that it takes
    /// (a destination added later gets the past only this way).
    Backfill {
        /// The destination's name in [destinations.NAME].
        name: String,
        /// A date (YYYY-MM-DD, from its start) or an RFC 3339 date-time.
        #[arg(long)]
        since: String,
    },
}

impl Cmd {
    /// Sends the action to the service and prints its answer.
    pub(super) fn run(self) -> anyhow::Result<()> {
        let key = self
            .key
            .ok_or_else(|| anyhow::anyhow!("--key (or RELAY_API_KEY) is required"))?;
        match self.action {
            Action::Backfill { name, since } => {
                let url = format!(
                    "{}/api/v1/destinations/{}/backfill",
                    self.url.trim_end_matches('/'),
                    crate::domain::path_segment(&name)
                );
                let body = serde_json::json!({ "since": since });
                let answer = post_api(&url, &key, Some(&body), "backfill")?;
                let queued = serde_json::from_str::<serde_json::Value>(&answer)
                    .ok()
                    .and_then(|v| v["queued"].as_u64())
                    .unwrap_or_default();
                println!("{queued} versions queued for destination {name}");
                Ok(())
            }
        }
    }
}
