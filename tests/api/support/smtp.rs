//! A real SMTP server on loopback for the alert tests: `tests/peers/smtp_server.py`, which runs
//! `aiosmtpd` from PyPI (in the peers' virtual environment, [`super::peers::python`]). It can
//! offer STARTTLS or TLS with a certificate for `127.0.0.1` from a CA of its own
//! ([`SmtpServer::ca_file`]), require AUTH, and refuse chosen recipients with a given reply.
//! Every message it accepts is read back, decoded by Python's `email` package, as a [`Mail`].

use std::path::PathBuf;
use std::process::{Child, Command};

use referral_relay::config::SmtpTls;
use serde::Deserialize;
use tempfile::TempDir;

use super::at_rest::patient_details;
use super::peers::{python, spawn};
use super::pki::Ca;
use super::poll::eventually;

/// How the server is started.
#[derive(Debug, Clone)]
pub struct Options {
    tls: SmtpTls,
    auth: Option<(String, String)>,
    refuse: Vec<(String, String)>,
}

impl Options {
    /// No TLS at all (`tls = "none"`).
    pub fn plain() -> Self {
        Self::with(SmtpTls::None)
    }

    /// STARTTLS offered and required before MAIL (`tls = "starttls"`).
    pub fn starttls() -> Self {
        Self::with(SmtpTls::Starttls)
    }

    /// TLS from the first byte (`tls = "tls"`).
    pub fn tls() -> Self {
        Self::with(SmtpTls::Tls)
    }

    fn with(tls: SmtpTls) -> Self {
        Self {
            tls,
            auth: None,
            refuse: Vec::new(),
        }
    }

    /// AUTH PLAIN or LOGIN as `user` with `password` required before MAIL.
    pub fn auth(mut self, user: &str, password: &str) -> Self {
        self.auth = Some((user.to_owned(), password.to_owned()));
        self
    }

    /// `RCPT TO:<address>` answered with `reply`, e.g. `451 4.3.0 Try again later`.
    pub fn refuse(mut self, address: &str, reply: &str) -> Self {
        self.refuse.push((address.to_owned(), reply.to_owned()));
        self
    }
}

/// A message the server accepted.
#[derive(Debug, Clone, Deserialize)]
pub struct Mail {
    /// The envelope's sender (`MAIL FROM`).
    pub from: String,
    /// The envelope's recipients (`RCPT TO`), in order.
    pub to: Vec<String>,
    pub subject: String,
    pub message_id: String,
    /// The text part, transfer encoding and charset decoded, with `\n` line ends.
    pub body: String,
    /// The message as it arrived.
    pub raw: String,
    /// Whether it came over TLS (STARTTLS or from the first byte).
    pub tls: bool,
    /// Who authenticated, if anyone.
    pub user: Option<String>,
}

/// The running server. Killed when dropped.
pub struct SmtpServer {
    child: Child,
    port: u16,
    options: Options,
    /// The received messages (`mail/`) and the certificates.
    dir: TempDir,
}

impl SmtpServer {
    pub fn start(options: Options) -> Self {
        let dir = TempDir::new().unwrap();
        let mail = dir.path().join("mail");
        std::fs::create_dir(&mail).unwrap();
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers/smtp_server.py");
        let mut command = Command::new(python());
        command.arg(script).arg(&mail);
        command.args(["--tls", mode(options.tls)]);
        if options.tls != SmtpTls::None {
            let ca = Ca::new("SMTP test CA");
            std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
            let (cert, key) = ca
                .server_for(&["127.0.0.1", "localhost"])
                .write(dir.path(), "smtp");
            command.arg("--cert").arg(cert).arg("--key").arg(key);
        }
        if let Some((user, password)) = &options.auth {
            command.args(["--user", user, "--password", password]);
        }
        for (address, reply) in &options.refuse {
            command.arg("--refuse").arg(format!("{address}={reply}"));
        }
        let (child, port) = spawn(command, "the SMTP server (aiosmtpd)");
        Self {
            child,
            port,
            options,
            dir,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The PEM of the CA that issued the server's certificate (for `alerts.smtp.ca_file`).
    pub fn ca_file(&self) -> PathBuf {
        assert!(self.options.tls != SmtpTls::None, "this server has no TLS");
        self.dir.path().join("ca.pem")
    }

    /// `[alerts]` and `[alerts.smtp]` for a relay sending to this server: `email_to`, the
    /// server's address and TLS mode, its CA, its user and password if it requires AUTH, a
    /// 10 s timeout, sender `referral-relay@clinic.test`.
    pub fn alerts_toml(&self, email_to: &[&str]) -> String {
        let to: Vec<String> = email_to.iter().map(|t| format!("{t:?}")).collect();
        let tls = mode(self.options.tls);
        let mut toml = format!(
            "[alerts]\nemail_to = [{}]\n\n[alerts.smtp]\nhost = \"127.0.0.1\"\nport = {}\n\
             tls = \"{tls}\"\nfrom = \"referral-relay@clinic.test\"\ntimeout_secs = 10\n",
            to.join(", "),
            self.port,
        );
        if self.options.tls != SmtpTls::None {
            toml.push_str(&format!("ca_file = {:?}\n", self.ca_file()));
        }
        if let Some((user, password)) = &self.options.auth {
            toml.push_str(&format!("username = {user:?}\npassword = {password:?}\n"));
        }
        toml
    }

    /// Every message accepted so far, in arrival order. Each is written before the server
    /// answers DATA, so a send that returned is already here.
    pub fn messages(&self) -> Vec<Mail> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.dir.path().join("mail"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        files.sort();
        files
            .iter()
            .map(|f| serde_json::from_slice(&std::fs::read(f).unwrap()).unwrap())
            .collect()
    }
}

/// The mode as `alerts.smtp.tls` and the script name it.
fn mode(tls: SmtpTls) -> &'static str {
    match tls {
        SmtpTls::Starttls => "starttls",
        SmtpTls::Tls => "tls",
        SmtpTls::None => "none",
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Who the alerts go to.
pub const ONCALL: [&str; 2] = ["oncall@clinic.test", "lead@clinic.test"];

/// `[alerts]` mailing [`ONCALL`] through `smtp`, looking every second, no summary, and `extra`.
pub fn alerts_toml(smtp: &SmtpServer, extra: &str) -> String {
    smtp.alerts_toml(&ONCALL).replacen(
        "[alerts]\n",
        &format!("[alerts]\ncheck_secs = 1\nsummary_every_secs = 0\n{extra}\n"),
        1,
    )
}

/// Waits until a mail whose subject contains `words` arrived; returns every mail so far.
pub async fn mail_with(smtp: &SmtpServer, words: &str) -> Vec<Mail> {
    eventually(&format!("a mail about '{words}'"), async || {
        smtp.messages().iter().any(|m| m.subject.contains(words))
    })
    .await;
    smtp.messages()
}

/// The mails whose subject contains `words`.
pub fn subjects_with(smtp: &SmtpServer, words: &str) -> Vec<Mail> {
    smtp.messages()
        .into_iter()
        .filter(|m| m.subject.contains(words))
        .collect()
}

/// No mail carries a patient detail of any fixture.
pub fn assert_no_patient_detail(mails: &[Mail]) {
    let details = patient_details();
    for mail in mails {
        for detail in &details {
            assert!(
                !mail.raw.contains(detail.as_str()),
                "a patient detail ({detail}) is in the mail '{}'",
                mail.subject
            );
        }
    }
}
