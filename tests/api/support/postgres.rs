//! PostgreSQL for tests: `RELAY_TEST_POSTGRES_URL`, by default this project's machines'
//! `host=127.0.0.1 port=5432 user=postgres dbname=test`. Each test works in a schema of its own,
//! dropped at the end. Tests fail, never skip, when the server is not there.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use referral_relay::store::{Keyring, PgOptions, PgStore};

/// Which store `spawn_app*` runs the service on: `RELAY_TEST_BACKEND=postgres`, else sled.
pub fn postgres_backend() -> bool {
    std::env::var("RELAY_TEST_BACKEND").is_ok_and(|b| b == "postgres")
}

pub fn server_url() -> String {
    std::env::var("RELAY_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres dbname=test".into())
}

/// A schema of its own for one test, dropped by [`Schema::drop_now`].
pub struct Schema {
    pub name: String,
}

impl Schema {
    pub fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let mut name = format!(
            "relay_test_{}_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            uuid::Uuid::new_v4().simple()
        );
        // At most 50 characters (storage.schema's limit), all ASCII.
        name.truncate(50);
        Self { name }
    }

    pub fn options(&self) -> PgOptions {
        PgOptions {
            schema: Some(self.name.clone()),
            ..PgOptions::new(server_url())
        }
    }

    pub async fn store(&self) -> Arc<PgStore> {
        self.store_with(None).await
    }

    /// A store on the schema sealing with `keys`.
    pub async fn store_with(&self, keys: Option<Arc<Keyring>>) -> Arc<PgStore> {
        drop_stale_schemas().await;
        PgStore::connect(&PgOptions {
            keys,
            ..self.options()
        })
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {} is needed: {}", server_url(), e.chain()))
    }

    /// A plain client in the schema.
    pub async fn client(&self) -> tokio_postgres::Client {
        let mut config: tokio_postgres::Config = server_url().parse().unwrap();
        config.options(format!("-c search_path={}", self.name));
        let (client, connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        client
    }

    pub async fn drop_now(self) {
        self.client()
            .await
            .batch_execute(&format!("DROP SCHEMA {} CASCADE", self.name))
            .await
            .unwrap();
    }
}

/// Drops its schema when the test's app goes, from a thread of its own that is not waited for:
/// the store's tasks may hold locks on the schema until the test's runtime ends. What a test
/// process leaves behind the next one drops ([`drop_stale_schemas`]).
pub struct SchemaGuard(pub Option<Schema>);

impl Drop for SchemaGuard {
    fn drop(&mut self) {
        if let Some(schema) = self.0.take() {
            std::thread::spawn(move || {
                if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    runtime.block_on(async {
                        let client = schema.client().await;
                        let _ = client
                            .batch_execute(&format!("DROP SCHEMA {} CASCADE", schema.name))
                            .await;
                    });
                }
            });
        }
    }
}

/// Drops the schemas of test processes that have ended (their pid is in the name), once per
/// process.
async fn drop_stale_schemas() {
    static DONE: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    DONE.get_or_init(|| async {
        let config: tokio_postgres::Config = server_url().parse().unwrap();
        let Ok((client, connection)) = config.connect(tokio_postgres::NoTls).await else {
            return;
        };
        tokio::spawn(connection);
        let Ok(rows) = client
            .query(
                "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'relay\\_test\\_%'",
                &[],
            )
            .await
        else {
            return;
        };
        for row in rows {
            let name: String = row.get(0);
            let pid = name.split('_').nth(2).unwrap_or_default();
            if !std::path::Path::new("/proc").join(pid).exists() {
                let _ = client
                    .batch_execute(&format!("DROP SCHEMA {name} CASCADE"))
                    .await;
            }
        }
    })
    .await;
}

/// A new delivery of `referral` whose body (and Bundle.id) is `body`, unassigned.
pub fn delivery(referral: &str, body: &str) -> referral_relay::store::NewDelivery {
    let integration = referral_relay::domain::IntegrationName::parse("default").unwrap();
    let raw = bytes::Bytes::from(body.to_owned());
    let sha256 = referral_relay::store::sha256_hex(&raw);
    referral_relay::store::NewDelivery {
        dedup_key: referral_relay::store::delivery_key(&integration, Some(body), &sha256),
        integration,
        shares_with: Vec::new(),
        referral: referral_relay::domain::ReferralRef::parse(referral).unwrap(),
        service: referral_relay::store::ServiceAssignment::Unassigned,
        event: referral_relay::domain::EventCode::parse("add-service-request").unwrap(),
        message_header_id: None,
        bundle_id: Some(body.to_owned()),
        bundle_timestamp: None,
        sent_at: None,
        raw,
        sha256,
        summary: referral_relay::domain::Summary::default(),
        problems: Vec::new(),
        received_at: time::OffsetDateTime::now_utc(),
        fetch_documents: false,
        routes: Default::default(),
    }
}

/// A TCP proxy on loopback in front of PostgreSQL that can stop forwarding, as a failover that
/// drops the old primary off the network does: the connections stay open and accept bytes, and
/// nothing comes back. Once it forwards again, new connections work; the silent ones never do.
pub struct Blackhole {
    pub port: u16,
    forwarding: Arc<std::sync::atomic::AtomicBool>,
}

impl Blackhole {
    pub async fn start(upstream: std::net::SocketAddr) -> Self {
        use std::sync::atomic::Ordering::SeqCst;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let forwarding = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let on = Arc::clone(&forwarding);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let on = Arc::clone(&on);
                tokio::spawn(async move {
                    let (mut client_read, client_write) = client.into_split();
                    if !on.load(SeqCst) {
                        // Accepted, never answered.
                        let mut sink = [0; 4096];
                        while client_read.read(&mut sink).await.is_ok_and(|n| n > 0) {}
                        drop(client_write);
                        return;
                    }
                    let server = tokio::net::TcpStream::connect(upstream).await.unwrap();
                    let (server_read, server_write) = server.into_split();
                    let pipe =
                        |mut from: tokio::net::tcp::OwnedReadHalf,
                         mut to: tokio::net::tcp::OwnedWriteHalf,
                         on: Arc<std::sync::atomic::AtomicBool>| async move {
                            let mut buffer = vec![0; 16 * 1024];
                            let mut silent = false;
                            loop {
                                let n = match from.read(&mut buffer).await {
                                    Ok(0) | Err(_) => return,
                                    Ok(n) => n,
                                };
                                // Once silent, always silent: what arrives is swallowed.
                                silent |= !on.load(SeqCst);
                                if !silent && to.write_all(&buffer[..n]).await.is_err() {
                                    return;
                                }
                            }
                        };
                    let up = tokio::spawn(pipe(client_read, server_write, Arc::clone(&on)));
                    let down = tokio::spawn(pipe(server_read, client_write, on));
                    let _ = tokio::join!(up, down);
                });
            }
        });
        Self { port, forwarding }
    }

    pub fn forward(&self, on: bool) {
        self.forwarding
            .store(on, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A PostgreSQL server of the test's own, in a fresh data directory on a free loopback port,
/// that the test can stop and start again (the shared server cannot be stopped: every other
/// test uses it). Run as the `postgres` user (`runuser`; the tests run as root), with trust
/// authentication; stopped when dropped.
pub struct PrivateServer {
    pub port: u16,
    dir: tempfile::TempDir,
}

impl PrivateServer {
    /// Creates the cluster (`initdb`) and starts it.
    pub fn start() -> Self {
        let dir = tempfile::TempDir::new().unwrap();
        as_postgres(
            &["chown", "-R", "postgres", &dir.path().display().to_string()],
            false,
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let server = Self { port, dir };
        let data = server.data();
        as_postgres(
            &[
                "initdb",
                "-D",
                &data,
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
            true,
        );
        server.resume();
        server
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    /// The connection string of its `postgres` database.
    pub fn url(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
        )
    }

    /// Starts the server (again), waiting until it takes connections.
    pub fn resume(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {}",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("log").display().to_string();
        as_postgres(
            &[
                "pg_ctl",
                "-D",
                &self.data(),
                "-o",
                &options,
                "-l",
                &log,
                "-w",
                "start",
            ],
            true,
        );
    }

    /// Stops the server as an operator does (`pg_ctl stop`, fast: sessions are ended).
    pub fn stop(&self) {
        as_postgres(
            &["pg_ctl", "-D", &self.data(), "-m", "fast", "-w", "stop"],
            true,
        );
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        let _ = std::process::Command::new("runuser")
            .args([
                "-u",
                "postgres",
                "--",
                "pg_ctl",
                "-D",
                &self.data(),
                "-m",
                "immediate",
                "stop",
            ])
            .output();
    }
}

/// Runs `args` (as the `postgres` user when `runuser` is true), which must succeed.
fn as_postgres(args: &[&str], runuser: bool) {
    let mut command = if runuser {
        let mut c = std::process::Command::new("runuser");
        c.args(["-u", "postgres", "--"]).args(args);
        c
    } else {
        let mut c = std::process::Command::new(args[0]);
        c.args(&args[1..]);
        c
    };
    let output = command.output().unwrap_or_else(|e| {
        panic!("cannot run {args:?}: {e} (PostgreSQL's binaries and runuser are needed)")
    });
    assert!(
        output.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
