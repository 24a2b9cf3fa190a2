//! `export`: writes referrals as CSV (or, with their documents, as a ZIP archive), either
//! streamed from a running service's API or read straight from the store.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use tokio::runtime::Runtime;

use super::shared::{cli_actor, fetch, load_with_data_dir, open_store};
use crate::export::archive::ArchiveSink;
use crate::export::{ExportFilter, ExportRequest, WriterSink};
use crate::files::NewFile;
use crate::store::Store;

/// Export referrals as CSV: through a running service (--url and --key), or straight from
/// the data dir while the service is stopped.
#[derive(Debug, clap::Args)]
pub(super) struct Cmd {
    /// Modified at or after this date (YYYY-MM-DD) or RFC 3339 date-time.
    #[arg(long)]
    from: Option<String>,
    /// Modified at or before this date (the whole day) or date-time.
    #[arg(long)]
    to: Option<String>,
    #[arg(long)]
    service_id: Option<String>,
    /// Only referrals never exported, or modified since.
    #[arg(long)]
    unexported_only: bool,
    /// Mark the rows written as exported once the file is complete.
    #[arg(long)]
    mark_exported: bool,
    /// Start the file with a UTF-8 byte order mark for Excel.
    #[arg(long)]
    excel: bool,
    /// Write a ZIP archive (to --out, a file) holding referrals.csv and each exported
    /// referral's latest letter and attachments under a folder named by its referral ref.
    /// Reads the data dir (not --url).
    #[arg(long)]
    with_documents: bool,
    /// Output file, or - for standard output.
    #[arg(long, default_value = "-")]
    out: String,
    /// A running service, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    url: Option<String>,
    /// An API client key (with --url).
    #[arg(long, env = "RELAY_API_KEY", hide_env_values = true)]
    key: Option<String>,
    #[arg(long, env = "RELAY_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (overrides server.data_dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

impl Cmd {
    /// Writes the export to `--out`, through the service when `--url` is given, else from the
    /// store; a file is complete at `--out` only once the whole export succeeded.
    pub(super) fn run(self) -> anyhow::Result<()> {
        if self.with_documents && (self.out == "-" || self.url.is_some()) {
            anyhow::bail!(
                "--with-documents writes a ZIP archive from the data dir: give --out FILE.zip, and no --url"
            );
        }
        // --out is written beside as FILE.partial (new, owner-only) and renamed when whole.
        let mut output = None;
        let sink: Box<dyn Write + Send> = if self.out == "-" {
            Box::new(std::io::stdout())
        } else if self.with_documents {
            // The archive is written below, to a file of its own.
            Box::new(std::io::sink())
        } else {
            let file = NewFile::create(Path::new(&self.out))?;
            let writer = file.file().try_clone()?;
            output = Some(file);
            Box::new(writer)
        };
        let runtime = Runtime::new()?;
        if let Some(url) = &self.url {
            self.through_service(&runtime, url, sink)?;
            return output.map_or(Ok(()), NewFile::commit);
        }
        let filter = self.filter()?;
        let config = load_with_data_dir(self.config.as_deref(), self.data_dir)?;
        let store = open_store(&config, &runtime)?;
        let request = ExportRequest {
            filter,
            mark_exported: self.mark_exported,
            excel: self.excel,
            actor: cli_actor(),
        };
        if self.with_documents {
            return write_archive(&runtime, &*store, &request, Path::new(&self.out));
        }
        let progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let mut sink = WriterSink::new(sink, progress);
        let rows = runtime.block_on(crate::export::export(
            &*store,
            &request,
            |_| true,
            &mut sink,
        ))?;
        drop(sink);
        if let Some(output) = output {
            output.commit()?;
        }
        eprintln!("exported {rows} referrals");
        Ok(())
    }

    /// Streams the CSV from the service at `url` (its export API, with `--key`) into `sink`.
    fn through_service(
        &self,
        runtime: &Runtime,
        url: &str,
        mut sink: Box<dyn Write + Send>,
    ) -> anyhow::Result<()> {
        let key = self
            .key
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("--url needs --key (or RELAY_API_KEY)"))?;
        let mut query = vec![
            ("unexported_only", self.unexported_only.to_string()),
            ("mark_exported", self.mark_exported.to_string()),
            ("excel", self.excel.to_string()),
        ];
        query.extend(self.from.clone().map(|v| ("from", v)));
        query.extend(self.to.clone().map(|v| ("to", v)));
        query.extend(self.service_id.clone().map(|v| ("service_id", v)));
        let url = format!(
            "{}/api/v1/export.csv?{}",
            url.trim_end_matches('/'),
            serde_urlencoded::to_string(&query)?
        );
        runtime.block_on(async {
            let mut response = fetch(&url, key, "export").await?;
            while let Some(chunk) = response.chunk().await? {
                sink.write_all(&chunk)?;
            }
            sink.flush()?;
            anyhow::Ok(())
        })
    }

    /// Which referrals `--from`, `--to`, `--service-id` and `--unexported-only` ask for.
    fn filter(&self) -> anyhow::Result<ExportFilter> {
        let bound = |name: &str, raw: Option<&str>, end: bool| {
            raw.map(|r| {
                crate::export::parse_bound(r, end).ok_or_else(|| {
                    anyhow::anyhow!("--{name} must be a date (YYYY-MM-DD) or an RFC 3339 date-time")
                })
            })
            .transpose()
        };
        Ok(ExportFilter {
            from: bound("from", self.from.as_deref(), false)?,
            to: bound("to", self.to.as_deref(), true)?,
            service: self
                .service_id
                .as_deref()
                .map(crate::domain::ServiceId::parse)
                .transpose()
                .map_err(|e| anyhow::anyhow!("--service-id: {e}"))?,
            unexported_only: self.unexported_only,
        })
    }
}

/// Writes the `--with-documents` ZIP archive to `out`: referrals.csv, then each exported
/// referral's latest letter and attachments.
fn write_archive(
    runtime: &Runtime,
    store: &dyn Store,
    request: &ExportRequest,
    out: &Path,
) -> anyhow::Result<()> {
    // Written beside --out and renamed over it once whole: a run that fails leaves
    // whatever was at --out as it was.
    let output = NewFile::create(out)?;
    let partial = output.partial().display().to_string();
    let rows = Arc::new(Mutex::new(Vec::new()));
    let mut archive = ArchiveSink::new(output.file().try_clone()?, store, rows.clone())
        .with_context(|| format!("cannot write {partial}"))?;
    let written = runtime.block_on(crate::export::export(
        store,
        request,
        |r| {
            if let Ok(mut rows) = rows.lock() {
                rows.push(r.referral.clone());
            }
            true
        },
        &mut archive,
    ));
    let written = written?;
    output.commit()?;
    eprintln!(
        "exported {written} referrals and {} documents, {} patient forms",
        archive.documents, archive.patient_forms
    );
    Ok(())
}
