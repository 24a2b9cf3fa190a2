//! The command line (clap): `serve`, and the commands ops run beside it: `healthcheck`,
//! `check-config`, `check-site`, `export`, `audit`, `rekey`, `replay`, `backup` and `restore`,
//! `migrate` (embedded store to PostgreSQL) and `migrate-schema`. Commands that open the
//! data dir need the service stopped; `export` and `replay` can go through a running one.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::app::{Application, shutdown_signal};
use crate::config::{Config, LogFormat, Overrides};
use crate::store::{AuditStore, StoreError};
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
enum DestinationsAction {
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
        /// Log format: text or json (overrides log.format).
        #[arg(long, value_enum)]
        log_format: Option<LogFormat>,
    },
    /// Exit 0 when the running service answers /healthz, 1 otherwise: for a container's
    /// HEALTHCHECK, so the image needs no curl.
    Healthcheck {
        /// The service's base URL; by default the configured listen address (on loopback when
        /// it listens on all addresses).
        #[arg(long)]
        url: Option<String>,
        /// Ask /readyz instead (the store takes a durable write): for a readiness probe or a
        /// compose health check that should keep traffic away until then.
        #[arg(long)]
        ready: bool,
        #[arg(long, env = "RELAY_CONFIG")]
        config: Option<PathBuf>,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 5)]
        timeout_secs: u64,
    },
    /// Print the effective configuration, secrets redacted, and exit; with HTTPS on, also the
    /// certificate's subject, names and expiry (a pair that does not load is an error).
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
    /// Export referrals as CSV: through a running service (--url and --key), or straight from
    /// the data dir while the service is stopped.
    Export {
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
    },
    /// Read or check the audit log (the embedded store: stop the service first; PostgreSQL:
    /// while replicas run).
    Audit {
        #[command(subcommand)]
        action: AuditAction,
        #[arg(long, env = "RELAY_CONFIG", global = true)]
        config: Option<PathBuf>,
        /// Data directory (overrides server.data_dir).
        #[arg(long, global = true)]
        data_dir: Option<PathBuf>,
    },
    /// Re-seal stored patient data with storage.encryption_key: records written before
    /// encryption was enabled and records sealed with one of storage.previous_keys. Stop the
    /// service first.
    Rekey {
        #[arg(long, env = "RELAY_CONFIG")]
        config: Option<PathBuf>,
        /// Data directory (overrides server.data_dir).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Take a backup of the embedded store through the running service (GET /api/v1/backup):
    /// a consistent snapshot, checked whole once downloaded. Needs an API client key not
    /// limited to some service ids.
    Backup {
        /// The file to write (a .tar.gz); written beside as FILE.partial until complete.
        #[arg(long)]
        out: PathBuf,
        /// Where the service listens.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// An API client key.
        #[arg(long, env = "RELAY_API_KEY", hide_env_values = true)]
        key: String,
    },
    /// Bring a backup back as the store of an empty data dir (no key needed: sealed records
    /// stay sealed). Checks the file whole first, and the restored store against it.
    Restore {
        /// The backup file.
        file: PathBuf,
        /// The data dir to restore into (must hold no store).
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Copy a stopped embedded store (the data dir) into PostgreSQL: referrals with every
    /// version's bytes, the feed, the outbox, export marks, the audit chain and the token
    /// signing key; sealed records stay sealed (no key needed). Safe to run again after an
    /// interruption. Prints the rows on both sides.
    Migrate {
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
    },
    /// Apply the PostgreSQL schema migrations this build knows (as `serve` does at start), then
    /// list them. Needs storage.backend = postgres.
    MigrateSchema {
        #[arg(long, env = "RELAY_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Print the argon2id hash of a password, for a console user's `password_hash`. Reads the
    /// password from the terminal without echoing it (twice, to catch a typo), or the first line
    /// of standard input when that is not a terminal.
    HashPassword,
    /// Steer a destination through the running service's API (needs an API client key not
    /// limited to some service ids).
    Destinations {
        #[command(subcommand)]
        action: DestinationsAction,
        /// Where the service listens.
        #[arg(long, default_value = "http://127.0.0.1:8080", global = true)]
        url: String,
        /// An API client key.
        #[arg(long, env = "RELAY_API_KEY", hide_env_values = true, global = true)]
        key: Option<String>,
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
    crate::files::restrict_new_files();
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
            log_format,
        } => {
            let overrides = Overrides {
                listen,
                data_dir,
                log_format,
            };
            let config = Config::load(config.as_deref(), &overrides)?;
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
        Command::Healthcheck {
            url,
            ready,
            config,
            timeout_secs,
        } => {
            // The address derived from the configuration is loopback, which the certificate
            // does not name; an address given is checked as any client would.
            let verify = url.is_some();
            let base = match url {
                Some(url) => url,
                None => {
                    let config = Config::load(config.as_deref(), &Overrides::default())?;
                    let scheme = if config.server.tls.enabled() {
                        "https"
                    } else {
                        "http"
                    };
                    format!("{scheme}://{}", local_address(config.server.listen))
                }
            };
            let path = if ready { "readyz" } else { "healthz" };
            let url = format!("{}/{path}", base.trim_end_matches('/'));
            let timeout = std::time::Duration::from_secs(timeout_secs);
            let status = tokio::runtime::Runtime::new()?.block_on(async {
                // Straight to the service: a proxy configured for reaching Ocean is not for this.
                // Over HTTPS on loopback the certificate names the public host, and whether
                // the process answers is all this checks: the certificate is not verified.
                let client = reqwest::Client::builder()
                    .timeout(timeout)
                    .no_proxy()
                    .tls_danger_accept_invalid_certs(!verify)
                    .build()?;
                anyhow::Ok(client.get(&url).send().await?.status())
            });
            match status {
                Ok(status) if status.is_success() => {
                    println!("healthy: {url} answered {status}");
                    Ok(())
                }
                Ok(status) => anyhow::bail!("unhealthy: {url} answered {status}"),
                Err(e) => anyhow::bail!("unhealthy: {url} did not answer: {e:#}"),
            }
        }
        Command::CheckConfig { config } => {
            let config = Config::load(config.as_deref(), &Overrides::default())?;
            print!("{}", config.to_redacted_toml()?);
            if let Some(tls) = crate::server::tls::Tls::from_config(&config)? {
                let serving = tls.certificate.status().serving;
                let days = (serving.not_after - time::OffsetDateTime::now_utc()).whole_days();
                println!(
                    "\n# server.tls certificate: subject {}; names {}; valid until {} ({days} days from now)",
                    serving.subject,
                    serving.names.join(", "),
                    crate::server::tls::certificate::rfc3339(serving.not_after),
                );
            }
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
        Command::Export {
            from,
            to,
            service_id,
            unexported_only,
            mark_exported,
            excel,
            with_documents,
            out,
            url,
            key,
            config,
            data_dir,
        } => {
            if with_documents && (out == "-" || url.is_some()) {
                anyhow::bail!(
                    "--with-documents writes a ZIP archive from the data dir: give --out FILE.zip, and no --url"
                );
            }
            // --out is written beside as FILE.partial (new, owner-only) and renamed when whole.
            let mut output = None;
            let mut sink: Box<dyn std::io::Write + Send> = if out == "-" {
                Box::new(std::io::stdout())
            } else if with_documents {
                // The archive is written below, to a file of its own.
                Box::new(std::io::sink())
            } else {
                let file = crate::files::NewFile::create(std::path::Path::new(&out))?;
                let writer = file.file().try_clone()?;
                output = Some(file);
                Box::new(writer)
            };
            let runtime = tokio::runtime::Runtime::new()?;
            if let Some(url) = url {
                let key =
                    key.ok_or_else(|| anyhow::anyhow!("--url needs --key (or RELAY_API_KEY)"))?;
                let mut query = vec![
                    ("unexported_only", unexported_only.to_string()),
                    ("mark_exported", mark_exported.to_string()),
                    ("excel", excel.to_string()),
                ];
                query.extend(from.map(|v| ("from", v)));
                query.extend(to.map(|v| ("to", v)));
                query.extend(service_id.map(|v| ("service_id", v)));
                let url = format!(
                    "{}/api/v1/export.csv?{}",
                    url.trim_end_matches('/'),
                    serde_urlencoded::to_string(&query)?
                );
                runtime.block_on(async {
                    let mut response = fetch(&url, &key, "export").await?;
                    while let Some(chunk) = response.chunk().await? {
                        sink.write_all(&chunk)?;
                    }
                    sink.flush()?;
                    anyhow::Ok(())
                })?;
                return output.map_or(Ok(()), crate::files::NewFile::commit);
            }
            let bound = |name: &str, raw: Option<String>, end: bool| {
                raw.map(|r| {
                    crate::export::parse_bound(&r, end).ok_or_else(|| {
                        anyhow::anyhow!(
                            "--{name} must be a date (YYYY-MM-DD) or an RFC 3339 date-time"
                        )
                    })
                })
                .transpose()
            };
            let filter = crate::export::ExportFilter {
                from: bound("from", from, false)?,
                to: bound("to", to, true)?,
                service: service_id
                    .map(|s| crate::domain::ServiceId::parse(&s))
                    .transpose()
                    .map_err(|e| anyhow::anyhow!("--service-id: {e}"))?,
                unexported_only,
            };
            let config = load_with_data_dir(config.as_deref(), data_dir)?;
            let store = open_store(&config, &runtime)?;
            let request = crate::export::ExportRequest {
                filter,
                mark_exported,
                excel,
                actor: cli_actor(),
            };
            if with_documents {
                // Written beside --out and renamed over it once whole: a run that fails leaves
                // whatever was at --out as it was.
                let output = crate::files::NewFile::create(std::path::Path::new(&out))?;
                let partial = output.partial().display().to_string();
                let rows = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
                let mut archive = crate::export::archive::ArchiveSink::new(
                    output.file().try_clone()?,
                    &*store,
                    rows.clone(),
                )
                .with_context(|| format!("cannot write {partial}"))?;
                let written = runtime.block_on(crate::export::export(
                    &*store,
                    &request,
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
                    "exported {written} referrals and {} documents",
                    archive.documents
                );
                return Ok(());
            }
            let progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
            let mut sink = crate::export::WriterSink::new(sink, progress);
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
        Command::HashPassword => {
            let password = read_new_password()?;
            println!("{}", crate::config::hash_password(&password)?);
            Ok(())
        }
        Command::Rekey { config, data_dir } => {
            let config = load_with_data_dir(config.as_deref(), data_dir)?;
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
        Command::Audit {
            action,
            config,
            data_dir,
        } => {
            let config = load_with_data_dir(config.as_deref(), data_dir)?;
            let runtime = tokio::runtime::Runtime::new()?;
            let store = open_store(&config, &runtime)?;
            runtime.block_on(async {
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
        Command::Backup { out, url, key } => {
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
        Command::Restore { file, data_dir } => {
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
        Command::Migrate {
            to,
            schema,
            config,
            data_dir,
        } => {
            let config = load_with_data_dir(config.as_deref(), data_dir)?;
            telemetry::init(&config.log.level, config.log.format);
            let options = crate::store::PgOptions {
                schema: Some(schema.unwrap_or_else(|| config.storage.schema.clone())),
                ..crate::store::PgOptions::new(to)
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
        Command::MigrateSchema { config } => {
            let config = Config::load(config.as_deref(), &Overrides::default())?;
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
        Command::Replay { id, url, key } => {
            let url = format!("{}/api/v1/updates/{id}/replay", url.trim_end_matches('/'));
            post_api(&url, &key, None, "replay")?;
            println!("update {id} is pending again");
            Ok(())
        }
        Command::Destinations { action, url, key } => {
            let key = key.ok_or_else(|| anyhow::anyhow!("--key (or RELAY_API_KEY) is required"))?;
            match action {
                DestinationsAction::Backfill { name, since } => {
                    let url = format!(
                        "{}/api/v1/destinations/{}/backfill",
                        url.trim_end_matches('/'),
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
}

/// POSTs to `url` of a running service with an API key (and a JSON `body`); returns the
/// answer's text, or an error naming `what` with the service's problem document.
fn post_api(
    url: &str,
    key: &str,
    body: Option<&serde_json::Value>,
    what: &str,
) -> anyhow::Result<String> {
    let (status, text) = tokio::runtime::Runtime::new()?.block_on(async {
        let mut request = reqwest::Client::new().post(url).bearer_auth(key);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await?;
        let status = response.status();
        Ok::<_, reqwest::Error>((status, response.text().await?))
    })?;
    if !status.is_success() {
        anyhow::bail!("{what} refused ({status}): {text}");
    }
    Ok(text)
}

/// The configuration of a command that takes `--config` and `--data-dir`.
fn load_with_data_dir(
    config: Option<&std::path::Path>,
    data_dir: Option<PathBuf>,
) -> anyhow::Result<Config> {
    let overrides = Overrides {
        data_dir,
        ..Overrides::default()
    };
    Config::load(config, &overrides)
}

/// GETs `url` from a running service with an API key; an answer other than 2xx is an error
/// naming `what` and quoting the service's problem document.
async fn fetch(url: &str, key: &str, what: &str) -> anyhow::Result<reqwest::Response> {
    let response = reqwest::Client::new()
        .get(url)
        .bearer_auth(key)
        .send()
        .await?;
    if !response.status().is_success() {
        let status = response.status();
        anyhow::bail!(
            "the service refused the {what} ({status}): {}",
            response.text().await?
        );
    }
    Ok(response)
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

/// Where a service listening on `listen` is reached from the same host.
fn local_address(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// Who ran a command, for the audit trail.
fn cli_actor() -> String {
    format!(
        "cli:{}",
        std::env::var("USER").unwrap_or_else(|_| "unknown".into())
    )
}

/// The configured store for a command that reads it directly: PostgreSQL (beside running
/// replicas), or the embedded store's data dir (see [`open_stopped`]).
fn open_store(
    config: &Config,
    runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<std::sync::Arc<dyn crate::store::Store>> {
    if config.storage.backend == crate::config::Backend::Postgres {
        telemetry::init(&config.log.level, config.log.format);
        let options = crate::app::pg_options(&config.storage)?;
        let store = runtime
            .block_on(crate::store::PgStore::connect(&options))
            .map_err(|e| anyhow::anyhow!("cannot open the PostgreSQL store: {}", e.chain()))?;
        return Ok(store);
    }
    Ok(std::sync::Arc::new(open_stopped(config)?))
}

/// Opens the data dir for a command that reads it directly, saying what to do when a running
/// service holds it.
fn open_stopped(config: &Config) -> anyhow::Result<crate::store::SledStore> {
    // Opening may repair an interrupted rekey or warn about unsealed records: say so.
    telemetry::init(&config.log.level, config.log.format);
    if config.storage.backend == crate::config::Backend::Postgres {
        anyhow::bail!(
            "this command works on the embedded store only; with storage.backend = postgres, use PostgreSQL's own tools"
        );
    }
    let options = crate::app::sled_options(&config.storage)?;
    crate::store::SledStore::open_opts(&config.server.data_dir, options).map_err(|e| match e {
        StoreError::InUse { .. } => anyhow::anyhow!(
            "{e}. A running referral-relay holds it: stop it, or (for export) go through it with --url and --key"
        ),
        e => e.into(),
    })
}

/// A new password: typed twice at the terminal (not echoed), or the first line of standard input.
fn read_new_password() -> anyhow::Result<String> {
    use std::io::IsTerminal;
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password: ")?;
        let again = rpassword::prompt_password("Again: ")?;
        anyhow::ensure!(first == again, "the two passwords differ; nothing printed");
        first
    } else {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        line.trim_end_matches(['\r', '\n']).to_owned()
    };
    anyhow::ensure!(
        password.chars().count() >= 12,
        "a console password must be at least 12 characters"
    );
    Ok(password)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_healthcheck_reaches_a_wildcard_listener_on_loopback() {
        let url = |listen: &str| local_address(listen.parse().unwrap()).to_string();
        assert_eq!(url("0.0.0.0:8080"), "127.0.0.1:8080");
        assert_eq!(url("[::]:8080"), "[::1]:8080");
        assert_eq!(url("10.1.2.3:9000"), "10.1.2.3:9000");
    }
}
