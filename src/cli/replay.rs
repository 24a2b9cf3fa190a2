//! `replay`: sends a dead-lettered update again through the running service's API.

use super::shared::post_api;

/// Send a dead-lettered update again, through the running service's API.
#[derive(Debug, clap::Args)]
pub(super) struct Cmd {
    /// The update id (see GET /api/v1/updates?state=dead).
    id: u64,
    /// Where the service listens.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// An API client key.
    #[arg(long, env = "RELAY_API_KEY", hide_env_values = true)]
    key: String,
}

impl Cmd {
    /// Asks the service to replay the update.
    pub(super) fn run(self) -> anyhow::Result<()> {
        let Cmd { id, url, key } = self;
        let url = format!("{}/api/v1/updates/{id}/replay", url.trim_end_matches('/'));
        post_api(&url, &key, None, "replay")?;
        println!("update {id} is pending again");
        Ok(())
    }
}
