//! `[server]` and `[log]`: the listener, its limits, and how the service logs.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::bail;
use serde::{Deserialize, Serialize};

use crate::secret::Secret;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address the HTTP server binds.
    pub listen: SocketAddr,
    /// Directory of the embedded store.
    pub data_dir: PathBuf,
    /// Largest accepted request body in bytes; larger ones get 413.
    pub max_body_bytes: usize,
    /// Bound on receiving one request body; slower uploads get 408.
    pub body_timeout_secs: u64,
    /// Bound on draining in-flight requests at shutdown.
    pub shutdown_timeout_secs: u64,
    /// When set, `/metrics` answers only `Authorization: Bearer <this>`; empty leaves it open.
    pub metrics_token: Secret,
    /// A request head must arrive whole within this many seconds of its first byte (for a new
    /// connection, of its opening); otherwise the connection is dropped.
    pub header_read_timeout_secs: u64,
    /// A connection idle between requests for longer than this is closed. Keep it above the
    /// idle timeout of any load balancer in front (often 60 s).
    pub keep_alive_timeout_secs: u64,
    /// A response the client does not read for this long ends its connection.
    pub send_timeout_secs: u64,
    /// Open connections at most; a connection beyond is answered 503 with `Retry-After` and
    /// closed. Lowered at start when the descriptor limit cannot hold it.
    pub max_connections: usize,
    /// Open connections one client (an IPv4 address, or an IPv6 /64) may hold; more are
    /// answered 503. Peers in `trusted_proxies` are not held to it.
    pub max_connections_per_client: usize,
    /// Bytes of request bodies held, all requests together, before their sender is
    /// authenticated (`hmac` integrations verify a signature over the body), counting the
    /// decoding of a compressed one. Past it such uploads are answered 503 with `Retry-After`.
    /// One client (an IPv4 address, an IPv6 /64) may hold at most twice `max_body_bytes` of it.
    /// At least twice `max_body_bytes`; 0 (the default) is four times `max_body_bytes`.
    pub max_unauthenticated_body_bytes: usize,
    /// Networks of reverse proxies and load balancers whose `X-Forwarded-For` names the client
    /// (CIDR, e.g. `10.0.0.0/8`). Empty: the peer address is the client.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Authentication failures are written to the audit log and the log once per this many
    /// seconds, one entry per integration, scheme and reason with the sources and counts.
    pub auth_failure_report_secs: u64,
    /// HTTPS on the listener itself.
    pub tls: TlsConfig,
}

/// `[server.tls]`: the listener's certificate and key, reloaded when they change.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file: the certificate, then its chain. Empty (with `key_file`): plain HTTP.
    pub cert_file: PathBuf,
    /// PEM file: the private key (PKCS#8, PKCS#1 RSA or SEC1 EC).
    pub key_file: PathBuf,
    /// How often both files are read for a renewal, in seconds (SIGHUP reloads at once).
    pub reload_secs: u64,
}

impl TlsConfig {
    /// Whether the listener speaks HTTPS.
    pub fn enabled(&self) -> bool {
        !self.cert_file.as_os_str().is_empty()
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.cert_file.as_os_str().is_empty() != self.key_file.as_os_str().is_empty() {
            bail!("server.tls.cert_file and server.tls.key_file are set together, or neither");
        }
        if self.reload_secs == 0 {
            bail!("server.tls.reload_secs must be at least 1");
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// EnvFilter directive (`RUST_LOG` wins when set).
    pub level: String,
    /// `text` (readable on a terminal) or `json` (one object per line, for log shippers).
    pub format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl LogConfig {
    /// Checks `level`: a bare word must be a level, since the filter would read any other word
    /// as the name of a module to log, and the service would then log nothing at all.
    pub fn validate(&self) -> anyhow::Result<()> {
        const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
        for directive in self.level.split(',').map(str::trim) {
            let is_level = LEVELS.iter().any(|l| l.eq_ignore_ascii_case(directive));
            // `target=level`, `target[span]=level`: a directive naming what it filters.
            let is_directive = directive.contains(['=', '[']);
            if !directive.is_empty() && !is_level && !is_directive {
                bail!(
                    "log.level: {directive:?} is not a level (trace, debug, info, warn, error, off) or a target=level directive"
                );
            }
        }
        tracing_subscriber::EnvFilter::try_new(&self.level)
            .map_err(|e| anyhow::anyhow!("log.level is not a valid filter: {e}"))?;
        Ok(())
    }
}

impl ServerConfig {
    /// The budget for unauthenticated bodies, in bytes (see `max_unauthenticated_body_bytes`).
    pub fn unauthenticated_body_budget(&self) -> usize {
        match self.max_unauthenticated_body_bytes {
            0 => self.max_body_bytes.saturating_mul(4),
            set => set,
        }
    }

    /// Checks what types alone cannot.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.max_body_bytes < 1024 {
            bail!("server.max_body_bytes must be at least 1024");
        }
        for (key, value) in [
            ("header_read_timeout_secs", self.header_read_timeout_secs),
            ("keep_alive_timeout_secs", self.keep_alive_timeout_secs),
            ("send_timeout_secs", self.send_timeout_secs),
            ("auth_failure_report_secs", self.auth_failure_report_secs),
            ("max_connections", self.max_connections as u64),
            (
                "max_connections_per_client",
                self.max_connections_per_client as u64,
            ),
        ] {
            if value == 0 {
                bail!("server.{key} must be at least 1");
            }
        }
        self.tls.validate()?;
        // One unauthenticated upload at its largest, and its decoding when compressed.
        if self.max_unauthenticated_body_bytes != 0
            && self.max_unauthenticated_body_bytes < self.max_body_bytes.saturating_mul(2)
        {
            bail!(
                "server.max_unauthenticated_body_bytes must be at least twice server.max_body_bytes (0: four times)"
            );
        }
        Ok(())
    }
}
