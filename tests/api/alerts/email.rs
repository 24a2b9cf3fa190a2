//! The e-mail channel of alerts against a real SMTP server (`aiosmtpd`, [`crate::support::smtp`]):
//! what arrives (subject, recipients, body, `Message-ID`), over required STARTTLS, TLS or none,
//! and how each refusal is sorted: 5xx is a rejection, anything else worth a retry.

use referral_relay::alerts::email::EmailSender;
use referral_relay::config::AlertsConfig;
use referral_relay::outgoing::SendError;
use tempfile::TempDir;

use crate::support::app::config;
use crate::support::smtp::{Options, SmtpServer};

const TO: [&str; 2] = ["oncall@clinic.test", "integration@clinic.test"];
const TEXT: &str = "Ocean site main: the token endpoint has refused the relay's credentials since \
                    09:00 (12 attempts).\nIt cleared at 09:40, after 40 minutes — Zürich é.\n";

/// `[alerts]` as the service would read it: `toml` over the built-in defaults.
fn alerts(toml: &str) -> AlertsConfig {
    let dir = TempDir::new().unwrap();
    config(toml, dir.path()).alerts
}

fn sender(toml: &str) -> EmailSender {
    EmailSender::new(&alerts(toml)).unwrap()
}

/// The text as sent: lettre ends DATA with `CRLF . CRLF` after the message's own last line
/// end, so a 7bit or quoted-printable body arrives with one more empty line (a mail client
/// shows nothing of it).
fn body(received: &str) -> String {
    format!("{}\n", received.trim_end_matches('\n'))
}

/// The reason of a retry, which must not quote the message.
fn retry_reason(error: SendError) -> String {
    let SendError::Retry { reason, after } = error else {
        panic!("expected a retry: {error:?}")
    };
    assert_eq!(after, None);
    assert!(!reason.contains("Zürich"), "{reason}");
    reason
}

fn rejection_reason(error: SendError) -> String {
    let SendError::Rejected(reason) = error else {
        panic!("expected a rejection: {error:?}")
    };
    assert!(!reason.contains("Zürich"), "{reason}");
    reason
}

#[tokio::test]
async fn an_alert_arrives_over_starttls_with_auth_for_every_recipient() {
    let server = SmtpServer::start(Options::starttls().auth("relay", "s3cret"));
    let sender = sender(&server.alerts_toml(&TO));

    sender
        .send("alert-17", "Site main failing", TEXT)
        .await
        .unwrap();

    let mail = server.messages();
    assert_eq!(mail.len(), 1, "one message for both recipients");
    let mail = &mail[0];
    assert_eq!(mail.from, "referral-relay@clinic.test");
    assert_eq!(mail.to, TO);
    assert_eq!(mail.subject, "Site main failing");
    assert_eq!(mail.message_id, "<alert-17@referral-relay>");
    assert_eq!(body(&mail.body), TEXT);
    assert!(mail.tls, "the message came in the clear");
    assert_eq!(mail.user.as_deref(), Some("relay"));
    let to_header = mail.raw.lines().find(|l| l.starts_with("To: ")).unwrap();
    assert!(TO.iter().all(|t| to_header.contains(t)), "{to_header}");

    // A retry of the same alert carries the same Message-ID.
    sender
        .send("alert-17", "Site main failing", TEXT)
        .await
        .unwrap();
    assert_eq!(server.messages()[1].message_id, mail.message_id);
}

#[tokio::test]
async fn a_server_certificate_not_trusted_is_retried_and_nothing_is_sent() {
    let server = SmtpServer::start(Options::starttls().auth("relay", "s3cret"));
    let ca_file = format!("ca_file = {:?}\n", server.ca_file());
    let toml = server.alerts_toml(&TO).replace(&ca_file, "");
    assert!(!toml.contains("ca_file"));

    let error = sender(&toml)
        .send("alert-1", "subject", TEXT)
        .await
        .unwrap_err();

    let reason = retry_reason(error);
    assert!(
        reason.contains(&format!("127.0.0.1:{}", server.port())),
        "{reason}"
    );
    assert!(reason.to_lowercase().contains("certificate"), "{reason}");
    assert!(server.messages().is_empty());
}

#[tokio::test]
async fn a_wrong_password_is_a_rejection() {
    let server = SmtpServer::start(Options::starttls().auth("relay", "s3cret"));
    let toml = server
        .alerts_toml(&TO)
        .replace("password = \"s3cret\"", "password = \"guess\"");

    let error = sender(&toml)
        .send("alert-1", "subject", TEXT)
        .await
        .unwrap_err();

    let reason = rejection_reason(error);
    assert!(reason.contains("535"), "{reason}");
    assert!(!reason.contains("guess"), "{reason}");
    assert!(server.messages().is_empty());
}

#[tokio::test]
async fn without_tls_an_alert_reaches_a_server_on_loopback() {
    let server = SmtpServer::start(Options::plain());
    let sender = sender(&server.alerts_toml(&TO[..1]));

    sender
        .send("alert-2", "Store recovering", TEXT)
        .await
        .unwrap();

    let mail = server.messages();
    assert_eq!(mail.len(), 1);
    assert_eq!(mail[0].to, TO[..1]);
    assert_eq!(body(&mail[0].body), TEXT);
    assert!(!mail[0].tls);
}

#[tokio::test]
async fn tls_from_the_first_byte_works_too() {
    let server = SmtpServer::start(Options::tls().auth("relay", "s3cret"));
    let sender = sender(&server.alerts_toml(&TO));

    sender.send("alert-3", "Dead letter", TEXT).await.unwrap();

    let mail = server.messages();
    assert_eq!(mail.len(), 1);
    assert!(mail[0].tls);
    assert_eq!(mail[0].user.as_deref(), Some("relay"));
}

#[tokio::test]
async fn starttls_is_required_not_opportunistic() {
    // A server (or a man in the middle) that does not offer STARTTLS gets nothing.
    let server = SmtpServer::start(Options::plain());
    let toml = server
        .alerts_toml(&TO)
        .replace("tls = \"none\"", "tls = \"starttls\"");

    let error = sender(&toml)
        .send("alert-4", "subject", TEXT)
        .await
        .unwrap_err();

    let reason = retry_reason(error);
    assert!(reason.contains("STARTTLS"), "{reason}");
    assert!(server.messages().is_empty());
}

#[tokio::test]
async fn a_recipient_refused_for_now_is_retried_and_one_refused_for_good_is_rejected() {
    let server = SmtpServer::start(
        Options::plain()
            .refuse(
                "busy@clinic.test",
                "451 4.3.0 Mailbox busy, try again later",
            )
            .refuse("gone@clinic.test", "550 5.1.1 No such user"),
    );

    let error = sender(&server.alerts_toml(&["oncall@clinic.test", "busy@clinic.test"]))
        .send("alert-5", "subject", TEXT)
        .await
        .unwrap_err();
    let reason = retry_reason(error);
    assert!(
        reason.contains("451") && reason.contains("try again later"),
        "{reason}"
    );

    let error = sender(&server.alerts_toml(&["gone@clinic.test"]))
        .send("alert-5", "subject", TEXT)
        .await
        .unwrap_err();
    let reason = rejection_reason(error);
    assert!(
        reason.contains("550") && reason.contains("No such user"),
        "{reason}"
    );

    assert!(server.messages().is_empty());
}
