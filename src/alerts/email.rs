//! Alerts by e-mail: one plain-text message per alert to every address of `alerts.email_to`,
//! through the SMTP server of `[alerts.smtp]`, and what the server answered sorted as the
//! outgoing queues sort answers: a 5xx reply is a refusal, anything else is worth a retry.
//!
//! Security choices: with `tls = "starttls"` STARTTLS is required, never opportunistic (a server
//! that does not offer it, or a man in the middle stripping it, gets nothing, the credentials
//! least of all); the server's certificate is checked by the system's verifier, with
//! `ca_file`'s certificates trusted besides; AUTH is only sent over TLS (the configuration
//! refuses a user name with `tls = "none"`). A reason names the server and quotes its reply,
//! never the message.

use std::time::Duration;

use anyhow::{Context, bail};
use lettre::message::header::ContentType;
use lettre::message::{Mailbox, Message};
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::config::{AlertsConfig, SmtpTls};
use crate::outgoing::SendError;

/// The domain of every alert's `Message-ID`.
const MESSAGE_ID_DOMAIN: &str = "referral-relay";

/// Sends alerts by e-mail: the SMTP transport, the sender and the recipients, built once from
/// `[alerts]`. Each send opens its own connection (alerts are rare; nothing is kept open).
pub struct EmailSender {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    to: Vec<Mailbox>,
    /// `host:port`, for reasons.
    server: String,
    /// Bound on one whole conversation (lettre bounds only the connect).
    timeout: Duration,
}

impl EmailSender {
    /// Built from `[alerts]`: `alerts.smtp` and `alerts.email_to`. Fails on an address that
    /// does not parse, on no recipient at all, and on a `ca_file` that cannot be read or holds
    /// no PEM certificate.
    pub fn new(config: &AlertsConfig) -> anyhow::Result<Self> {
        let smtp = &config.smtp;
        let from: Mailbox = smtp.from.parse().with_context(|| {
            format!("alerts.smtp.from is not an e-mail address: {:?}", smtp.from)
        })?;
        let to = config
            .email_to
            .iter()
            .enumerate()
            .map(|(i, to)| {
                to.parse::<Mailbox>().with_context(|| {
                    format!("alerts.email_to[{i}] is not an e-mail address: {to:?}")
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        if to.is_empty() {
            bail!("alerts.email_to is empty: there is nobody to e-mail");
        }
        let timeout = Duration::from_secs(smtp.timeout_secs.max(1));
        let tls = match smtp.tls {
            SmtpTls::Starttls => Tls::Required(tls_parameters(&smtp.host, &smtp.ca_file)?),
            SmtpTls::Tls => Tls::Wrapper(tls_parameters(&smtp.host, &smtp.ca_file)?),
            SmtpTls::None => Tls::None,
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&smtp.host)
            .port(smtp.port)
            .tls(tls)
            .timeout(Some(timeout));
        if !smtp.username.is_empty() {
            builder = builder
                .credentials(Credentials::new(
                    smtp.username.clone(),
                    smtp.password.expose().to_owned(),
                ))
                .authentication(vec![Mechanism::Plain, Mechanism::Login]);
        }
        Ok(Self {
            transport: builder.build(),
            from,
            to,
            server: format!("{}:{}", smtp.host, smtp.port),
            timeout,
        })
    }

    /// Sends one plain-text (UTF-8) mail to every address of `email_to` (one message, all of
    /// them in `To`), with `subject` and a `Message-ID` derived from `id`, the same on every
    /// retry of one alert so that a mail client shows a mail delivered twice once.
    pub async fn send(&self, id: &str, subject: &str, text: &str) -> Result<(), SendError> {
        let message = self.message(id, subject, text).map_err(|e| {
            SendError::Rejected(format!("the e-mail of alert {id} cannot be built: {e}"))
        })?;
        match tokio::time::timeout(self.timeout, self.transport.send(message)).await {
            Ok(Ok(_)) => {
                tracing::debug!(alert = id, recipients = self.to.len(), "alert e-mailed");
                Ok(())
            }
            Ok(Err(error)) => Err(classify(&self.server, &error)),
            Err(_) => Err(SendError::Retry {
                reason: format!(
                    "SMTP server {}: no answer within {} s",
                    self.server,
                    self.timeout.as_secs()
                ),
                after: None,
            }),
        }
    }

    fn message(
        &self,
        id: &str,
        subject: &str,
        text: &str,
    ) -> Result<Message, lettre::error::Error> {
        let mut builder = Message::builder()
            .from(self.from.clone())
            .subject(subject)
            .message_id(Some(message_id(id)))
            .header(ContentType::TEXT_PLAIN);
        for to in &self.to {
            builder = builder.to(to.clone());
        }
        // lettre picks the transfer encoding (7bit, quoted-printable or base64) and adds `Date`.
        builder.body(text.to_owned())
    }
}

/// TLS towards `host` (its certificate must name it), with the system's roots and `ca_file`'s.
fn tls_parameters(host: &str, ca_file: &std::path::Path) -> anyhow::Result<TlsParameters> {
    let mut builder = TlsParameters::builder(host.to_owned());
    if !ca_file.as_os_str().is_empty() {
        let pem = std::fs::read(ca_file)
            .with_context(|| format!("cannot read alerts.smtp.ca_file {}", ca_file.display()))?;
        let certificates = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("alerts.smtp.ca_file {} is not PEM", ca_file.display()))?;
        if certificates.is_empty() {
            bail!(
                "alerts.smtp.ca_file {} holds no PEM certificate",
                ca_file.display()
            );
        }
        for certificate in certificates {
            let certificate = Certificate::from_der(certificate.to_vec())
                .context("a certificate of alerts.smtp.ca_file")?;
            builder = builder.add_root_certificate(certificate);
        }
    }
    builder
        .build_rustls()
        .context("cannot set up TLS for alerts.smtp")
}

/// A 5xx reply (RFC 5321 §4.2.1: permanent negative, e.g. recipient unknown, authentication
/// refused, message refused) cannot succeed by retrying; anything else can: a 4xx reply,
/// a connection refused or reset, a TLS failure (a certificate renewed wrongly gets fixed), a
/// server not offering STARTTLS or the configured AUTH mechanisms (its configuration may change).
fn classify(server: &str, error: &lettre::transport::smtp::Error) -> SendError {
    let reason = format!("SMTP server {server}: {}", chain(error));
    if error.is_permanent() {
        SendError::Rejected(reason)
    } else {
        SendError::Retry {
            reason,
            after: None,
        }
    }
}

/// `error` and its causes, each once: lettre's own message already quotes its first cause,
/// and a connection error wraps another ("Connection error: Connection error: …").
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let said = cause.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = cause.source();
    }
    let mut parts: Vec<&str> = text.split(": ").collect();
    parts.dedup();
    parts.join(": ")
}

/// `<id@referral-relay>`, with whatever in `id` is not allowed in a `Message-ID`'s left part
/// (RFC 5322 §3.6.4, `dot-atom-text`) written as `=XX`: distinct ids stay distinct.
fn message_id(id: &str) -> String {
    let mut left = String::with_capacity(id.len());
    for byte in id.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_".contains(&byte) {
            left.push(char::from(byte));
        } else {
            left.push_str(&format!("={byte:02X}"));
        }
    }
    if left.is_empty() {
        left.push_str("alert");
    }
    format!("<{left}@{MESSAGE_ID_DOMAIN}>")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SmtpConfig;
    use crate::secret::Secret;

    fn config(port: u16, tls: SmtpTls, to: &[&str]) -> AlertsConfig {
        AlertsConfig {
            email_to: to.iter().map(|t| (*t).to_owned()).collect(),
            destinations: Vec::new(),
            check_secs: 15,
            digest_from: 3,
            dead_letters: true,
            failing_minutes: 15.0,
            quiet_hours: 0.0,
            quiet_hours_by_integration: Default::default(),
            refused_logins: 0,
            refused_logins_minutes: 10.0,
            store_unwritable_secs: 60,
            documents_failed: true,
            summary_every_secs: 0,
            smtp: SmtpConfig {
                host: "127.0.0.1".to_owned(),
                port,
                tls,
                username: String::new(),
                password: Secret::default(),
                from: "relay@clinic.example".to_owned(),
                ca_file: Default::default(),
                timeout_secs: 1,
            },
        }
    }

    #[test]
    fn message_ids_are_stable_and_keep_ids_apart() {
        assert_eq!(message_id("alert-42"), "<alert-42@referral-relay>");
        assert_eq!(message_id("alert-42"), message_id("alert-42"));
        assert_eq!(message_id("a b@c>"), "<a=20b=40c=3E@referral-relay>");
        assert_ne!(message_id("a b"), message_id("a=20b"));
        assert_eq!(message_id(""), "<alert@referral-relay>");
    }

    #[test]
    fn a_reason_says_each_cause_once() {
        let io = std::io::Error::other("Connection error: invalid peer certificate: UnknownIssuer");
        assert_eq!(
            chain(&std::io::Error::other(format!("Connection error: {io}"))),
            "Connection error: invalid peer certificate: UnknownIssuer"
        );
    }

    #[test]
    fn one_message_goes_to_every_recipient() {
        let config = config(25, SmtpTls::None, &["a@clinic.example", "b@clinic.example"]);
        let sender = EmailSender::new(&config).unwrap();
        let text = "Ocean site main: token refused since 09:00 (3 attempts) — é\n";
        let message = sender.message("alert-7", "Site failing", text).unwrap();
        let envelope = message.envelope();
        let to: Vec<String> = envelope.to().iter().map(ToString::to_string).collect();
        assert_eq!(to, ["a@clinic.example", "b@clinic.example"]);
        assert_eq!(
            envelope.from().map(ToString::to_string).as_deref(),
            Some("relay@clinic.example")
        );
        let raw = String::from_utf8(message.formatted()).unwrap();
        assert!(raw.contains("Subject: Site failing\r\n"), "{raw}");
        assert!(
            raw.contains("Message-ID: <alert-7@referral-relay>\r\n"),
            "{raw}"
        );
        assert!(raw.contains("text/plain; charset=utf-8"), "{raw}");
        assert!(raw.contains("Date: "), "{raw}");
        let to_header = raw.lines().find(|l| l.starts_with("To: ")).unwrap();
        assert!(to_header.contains("a@clinic.example") && to_header.contains("b@clinic.example"));
    }

    #[test]
    fn addresses_and_the_ca_file_are_checked_at_start() {
        let mut bad = config(25, SmtpTls::None, &["a@clinic.example"]);
        bad.smtp.from = "not an address".to_owned();
        assert!(EmailSender::new(&bad).is_err());
        assert!(EmailSender::new(&config(25, SmtpTls::None, &[])).is_err());
        let mut no_ca = config(465, SmtpTls::Tls, &["a@clinic.example"]);
        no_ca.smtp.ca_file = "/nonexistent/ca.pem".into();
        let error = EmailSender::new(&no_ca).err().unwrap();
        assert!(format!("{error:#}").contains("ca_file"), "{error:#}");
        let empty = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(empty.path(), "no certificate here\n").unwrap();
        no_ca.smtp.ca_file = empty.path().to_path_buf();
        let error = EmailSender::new(&no_ca).err().unwrap();
        assert!(
            format!("{error:#}").contains("no PEM certificate"),
            "{error:#}"
        );
    }

    #[tokio::test]
    async fn a_refused_connection_is_worth_a_retry() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let sender = EmailSender::new(&config(port, SmtpTls::None, &["a@clinic.example"])).unwrap();
        let error = sender
            .send("alert-1", "subject", "the body")
            .await
            .unwrap_err();
        let SendError::Retry { reason, after } = error else {
            panic!("{error:?}")
        };
        assert!(reason.contains(&format!("127.0.0.1:{port}")), "{reason}");
        assert!(!reason.contains("the body"), "{reason}");
        assert_eq!(after, None);
    }

    #[tokio::test]
    async fn a_server_that_never_answers_is_given_up_on_within_the_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        // Accepts, and never says a word.
        let silent = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(socket);
        });
        let sender = EmailSender::new(&config(port, SmtpTls::None, &["a@clinic.example"])).unwrap();
        let started = std::time::Instant::now();
        let error = sender
            .send("alert-1", "subject", "the body")
            .await
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        let SendError::Retry { reason, .. } = error else {
            panic!("{error:?}")
        };
        assert!(reason.contains("no answer within 1 s"), "{reason}");
        silent.abort();
    }
}
