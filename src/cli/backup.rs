//! `backup` and `restore`: take a backup of the embedded store through the running service, and
//! bring one back into an empty data dir, each checked against the backup's manifest.

use std::path::PathBuf;

use anyhow::Context;

use super::shared::fetch;

/// Take a backup of the embedded store through the running service (GET /api/v1/backup):
/// a consistent snapshot, checked whole once downloaded. Needs an API client key not
/// limited to some service ids.
#[derive(Debug, clap::Args)]
pub(super) struct Backup {
    /// The file to write (a .tar.gz); written beside as FILE.partial until complete.
    #[arg(long)]
    out: PathBuf,
    /// Where the service listens.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// An API client key.
    #[arg(long, env = "RELAY_API_KEY", hide_env_values = true)]
    key: String,
}

impl Backup {
    /// Downloads the backup beside `--out`, reads it whole, then renames it to `--out`.
    pub(super) fn run(self) -> anyhow::Result<()> {
        let Backup { out, url, key } = self;
        let url = format!("{}/api/v1/backup", url.trim_end_matches('/'));
        if out.exists() {
            anyhow::bail!("{} exists; choose another file", out.display());
        }
        let output = crate::files::NewFile::create(&out)?;
        tokio::runtime::Runtime::new()?.block_on(async {
            let mut response = fetch(&url, &key, "backup").await?;
            let mut file = output.file();
            while let Some(chunk) = response.chunk().await.context("the backup was cut off")? {
                std::io::Write::write_all(&mut file, &chunk)?;
            }
            file.sync_all()?;
            anyhow::Ok(())
        })?;
        let manifest = std::fs::File::open(output.partial())
            .map_err(anyhow::Error::from)
            .and_then(|f| crate::backup::read(std::io::BufReader::new(f), None))
            .context("the downloaded backup is not whole")?;
        output
            .commit()
            .with_context(|| format!("cannot keep the backup as {}", out.display()))?;
        print_manifest(&manifest);
        println!("backup written to {} and checked", out.display());
        Ok(())
    }
}

/// Bring a backup back as the store of an empty data dir (no key needed: sealed records
/// stay sealed). Checks the file whole first, and the restored store against it.
#[derive(Debug, clap::Args)]
pub(super) struct Restore {
    /// The backup file.
    file: PathBuf,
    /// The data dir to restore into (must hold no store).
    #[arg(long)]
    data_dir: PathBuf,
}

impl Restore {
    /// Restores the backup file into the data dir and prints what it held.
    pub(super) fn run(self) -> anyhow::Result<()> {
        let Restore { file, data_dir } = self;
        let archive = std::fs::File::open(&file)
            .with_context(|| format!("cannot open {}", file.display()))?;
        let manifest = crate::backup::restore(std::io::BufReader::new(archive), &data_dir)?;
        print_manifest(&manifest);
        println!(
            "restored into {}; every tree matches the backup's manifest",
            data_dir.display()
        );
        Ok(())
    }
}

/// The counts of a backup, one tree per line.
fn print_manifest(manifest: &crate::backup::Manifest) {
    println!(
        "backup taken {}, feed position {}",
        manifest
            .taken_at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        manifest.feed_seq
    );
    for (tree, items) in &manifest.trees {
        println!("{tree:<20} {items:>12}");
    }
}
