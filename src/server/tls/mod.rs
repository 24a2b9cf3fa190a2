//! HTTPS on the listener (`[server.tls]`): rustls with TLS 1.2 and 1.3 only and HTTP/1.1 by
//! ALPN (RFC 7301), the certificate reloaded from its files without a restart
//! ([`certificate`]), and client certificates for API clients that use mutual TLS
//! ([`clients`]). The handshake itself runs in `server::serve_connection`, bounded like a
//! request head.

pub mod certificate;
pub mod clients;

use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

pub use certificate::{CertificateInfo, CertificateStatus, Reload, ServedCertificate};
pub use clients::{ClientCertificates, ClientIdentity};

use crate::config::Config;
use crate::telemetry::Metrics;

/// The listener's TLS: what accepts handshakes, the certificate it serves, and the API clients
/// known by certificate.
#[derive(Clone)]
pub struct Tls {
    acceptor: TlsAcceptor,
    pub certificate: Arc<ServedCertificate>,
    pub clients: Arc<ClientCertificates>,
    reload_every: Duration,
}

impl Tls {
    /// The TLS `config` asks for, or `None` for plain HTTP.
    ///
    /// # Errors
    /// The certificate pair does not load (what is wrong, which file), or a client CA file.
    pub fn from_config(config: &Config) -> anyhow::Result<Option<Self>> {
        let tls = &config.server.tls;
        if !tls.enabled() {
            return Ok(None);
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let certificate = Arc::new(
            ServedCertificate::load(&tls.cert_file, &tls.key_file, Arc::clone(&provider))
                .map_err(|e| anyhow::anyhow!("server.tls: {e}"))?,
        );
        let clients = Arc::new(ClientCertificates::from_config(
            &config.api,
            Arc::clone(&provider),
        )?);
        let mut server = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_client_cert_verifier(Arc::clone(&clients) as _)
            .with_cert_resolver(Arc::clone(&certificate) as _);
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        // No session resumption: a resumed handshake presents no certificate, so a client
        // resuming a session made before a renewal (even one whose handshake was under way as
        // the files were swapped) would go on under the old certificate for the session's
        // life. Every connection makes a full handshake; a TLS 1.3 one is one round trip
        // anyway, and keep-alive connections make few.
        server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        server.send_tls13_tickets = 0;
        Ok(Some(Self {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            certificate,
            clients,
            reload_every: Duration::from_secs(tls.reload_secs),
        }))
    }

    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// Reloads the certificate every `reload_secs` and on SIGHUP until `stopping`, logging what
    /// changed (a refusal once per reason, not at every check) and warning as the served
    /// certificate nears its expiry; keeps the metric of that expiry.
    async fn watch(
        self,
        mut hangup: Option<Hangup>,
        metrics: Metrics,
        mut stopping: tokio::sync::watch::Receiver<bool>,
    ) {
        metrics.tls_certificate_expiry(self.certificate.status().serving.not_after);
        let mut every = tokio::time::interval(self.reload_every);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut refused: Option<String> = None;
        let mut expiry = ExpiryWarnings::default();
        loop {
            let asked = tokio::select! {
                _ = every.tick() => false,
                Some(()) = recv(&mut hangup) => true,
                _ = stopping.wait_for(|s| *s) => return,
            };
            let certificate = Arc::clone(&self.certificate);
            let outcome = tokio::task::spawn_blocking(move || certificate.reload())
                .await
                .unwrap_or_else(|e| Reload::Refused(format!("the reload panicked: {e}")));
            match outcome {
                Reload::Swapped => {
                    refused = None;
                    expiry = ExpiryWarnings::default();
                    let serving = self.certificate.status().serving;
                    metrics.tls_certificate_expiry(serving.not_after);
                    tracing::info!(
                        subject = %serving.subject,
                        not_after = %certificate::rfc3339(serving.not_after),
                        "TLS certificate reloaded: new connections get the new one"
                    );
                }
                Reload::Refused(reason) if refused.as_ref() != Some(&reason) => {
                    metrics.tls_reload_failure();
                    tracing::warn!(reason = %reason, "TLS certificate files not taken; still serving the previous certificate");
                    refused = Some(reason);
                }
                Reload::Refused(_) => {}
                Reload::Unchanged => {
                    refused = None;
                    if asked {
                        tracing::info!("SIGHUP: the TLS certificate files are unchanged");
                    }
                }
            }
            expiry.check(&self.certificate.status());
        }
    }
}

/// Warnings as the served certificate nears its expiry: one as it passes each mark.
#[derive(Default)]
struct ExpiryWarnings {
    /// The smallest mark (days left) already warned about.
    warned_at: Option<i64>,
}

impl ExpiryWarnings {
    const MARKS_DAYS: [i64; 5] = [14, 7, 3, 1, 0];

    fn check(&mut self, status: &CertificateStatus) {
        let days_left = status.expires_in_secs.div_euclid(86_400);
        let Some(mark) = Self::MARKS_DAYS
            .iter()
            .copied()
            .filter(|mark| days_left < *mark || (*mark == 0 && status.expires_in_secs <= 0))
            .min()
        else {
            return;
        };
        if self.warned_at.is_some_and(|warned| warned <= mark) {
            return;
        }
        self.warned_at = Some(mark);
        let not_after = certificate::rfc3339(status.serving.not_after);
        if status.expires_in_secs <= 0 {
            tracing::error!(%not_after, "the TLS certificate served has expired: clients refuse it; renew the files");
        } else {
            tracing::warn!(%not_after, days_left, "the TLS certificate served expires soon; renew the files");
        }
    }
}

/// SIGHUP, installed at start (before the listener reports its address) so that it never ends
/// the process: with HTTPS on it reloads the certificate; without, it is logged and ignored.
pub struct Hangup(tokio::signal::unix::Signal);

impl Hangup {
    /// Listens for SIGHUP from now on (`None`, with a warning, when the signal cannot be had).
    pub fn install() -> Option<Self> {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .inspect_err(|e| tracing::warn!(error = %e, "cannot listen for SIGHUP"))
            .ok()
            .map(Self)
    }
}

/// Serves what SIGHUP and the reload interval ask for until `stopping`: the certificate's
/// reloads with HTTPS on ([`Tls::watch`]), else a log line per SIGHUP.
pub async fn watch(
    tls: Option<Tls>,
    mut hangup: Option<Hangup>,
    metrics: Metrics,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) {
    if let Some(tls) = tls {
        return tls.watch(hangup, metrics, stopping).await;
    }
    loop {
        tokio::select! {
            Some(()) = recv(&mut hangup) => {
                tracing::info!("SIGHUP: nothing to reload (the listener speaks plain HTTP)");
            }
            _ = stopping.wait_for(|s| *s) => return,
        }
    }
}

async fn recv(signal: &mut Option<Hangup>) -> Option<()> {
    match signal {
        Some(Hangup(signal)) => signal.recv().await,
        None => std::future::pending().await,
    }
}
