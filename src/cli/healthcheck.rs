//! `healthcheck`: asks a running service's /healthz (or /readyz) and turns the answer into the
//! exit code, for a container's HEALTHCHECK or a readiness probe.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::config::{Config, Overrides};

/// Exit 0 when the running service answers /healthz, 1 otherwise: for a container's
/// HEALTHCHECK, so the image needs no curl.
#[derive(Debug, clap::Args)]
pub(super) struct Cmd {
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
}

impl Cmd {
    /// Asks the service once; an answer other than 2xx, or none in time, is an error.
    pub(super) fn run(self) -> anyhow::Result<()> {
        // The address derived from the configuration is loopback, which the certificate
        // does not name; an address given is checked as any client would.
        let verify = self.url.is_some();
        let base = match self.url {
            Some(url) => url,
            None => {
                let config = Config::load(self.config.as_deref(), &Overrides::default())?;
                let scheme = if config.server.tls.enabled() {
                    "https"
                } else {
                    "http"
                };
                format!("{scheme}://{}", local_address(config.server.listen))
            }
        };
        let path = if self.ready { "readyz" } else { "healthz" };
        let url = format!("{}/{path}", base.trim_end_matches('/'));
        let timeout = std::time::Duration::from_secs(self.timeout_secs);
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
