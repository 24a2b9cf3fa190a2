//! `[alerts]`: the conditions that alert a person, their thresholds, and the channels alerts
//! go out by (e-mail over SMTP, webhook destinations).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::bail;
use serde::{Deserialize, Serialize};

use crate::secret::Secret;

/// Alerts: when a condition starts and when it clears, sent by every channel.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    /// Addresses every alert is e-mailed to (RFC 5322 addresses); empty: no e-mail.
    pub email_to: Vec<String>,
    /// Webhook destinations (`[destinations.NAME]`, kind `webhook`) that also get every alert,
    /// signed as the destination's versions are (Standard Webhooks).
    pub destinations: Vec<String>,
    /// How often the conditions are looked at, in seconds.
    pub check_secs: u64,
    /// Alerts starting or clearing in one look, from this many on, go out as one digest.
    pub digest_from: usize,
    /// A dead letter in the Ocean outbox or in a destination's queue.
    pub dead_letters: bool,
    /// An Ocean site or destination whose sends have failed (refused token, connection error,
    /// 5xx) for this long, in minutes; 0: off.
    pub failing_minutes: f64,
    /// No delivery on an integration for this long, in hours; 0: off (a busy site sets it).
    pub quiet_hours: f64,
    /// `quiet_hours` for named integrations (0 turns it off for one).
    pub quiet_hours_by_integration: BTreeMap<String, f64>,
    /// Refused webhook and token-endpoint logins of one integration, at least this many within
    /// `refused_logins_minutes`; 0: off.
    pub refused_logins: u64,
    pub refused_logins_minutes: f64,
    /// The store not writable (sled: disk full, I/O errors; PostgreSQL: the database out of
    /// reach) for this long, in seconds; 0: off.
    pub store_unwritable_secs: u64,
    /// A referral's document that the fetcher gave up on.
    pub documents_failed: bool,
    /// A summary of the watch-list (counts only) this often, in seconds (a week by default);
    /// 0: off.
    pub summary_every_secs: u64,
    pub smtp: SmtpConfig,
}

/// The SMTP server alerts are e-mailed through.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    /// Empty: no authentication. With a user name, `password` (or
    /// `RELAY__ALERTS__SMTP__PASSWORD_FILE`) is sent by SMTP AUTH, only over TLS.
    pub username: String,
    pub password: Secret,
    /// The sender address (RFC 5322).
    pub from: String,
    /// PEM certificates trusted for the server besides the system's (a hospital's own CA).
    pub ca_file: PathBuf,
    /// Bound on one conversation with the server, in seconds.
    pub timeout_secs: u64,
}

/// How the SMTP connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain connection upgraded by STARTTLS (RFC 3207), required (port 587).
    Starttls,
    /// TLS from the first byte (RFC 8314, port 465).
    Tls,
    /// No TLS at all: only for a server on loopback (tests, a local relay).
    None,
}

impl AlertsConfig {
    /// Whether alerts are e-mailed.
    pub fn emails(&self) -> bool {
        !self.email_to.is_empty()
    }

    /// The quiet threshold of `integration`, in hours (0: off).
    pub fn quiet_hours_of(&self, integration: &str) -> f64 {
        self.quiet_hours_by_integration
            .get(integration)
            .copied()
            .unwrap_or(self.quiet_hours)
    }

    /// Checks the section against the configured destinations and integrations.
    pub fn validate(
        &self,
        webhook_destinations: &[&str],
        integrations: &[&str],
    ) -> anyhow::Result<()> {
        if self.check_secs == 0 {
            bail!("alerts.check_secs must be at least 1");
        }
        if self.digest_from < 2 {
            bail!("alerts.digest_from must be at least 2");
        }
        if self.refused_logins > 0 && self.refused_logins_minutes <= 0.0 {
            bail!("alerts.refused_logins_minutes must be more than 0 when refused_logins is set");
        }
        let spans = [
            ("failing_minutes", self.failing_minutes),
            ("quiet_hours", self.quiet_hours),
            ("refused_logins_minutes", self.refused_logins_minutes),
        ];
        let by_integration = self
            .quiet_hours_by_integration
            .values()
            .map(|h| ("quiet_hours_by_integration", *h));
        if let Some((key, value)) = spans
            .into_iter()
            .chain(by_integration)
            .find(|(_, v)| !v.is_finite() || *v < 0.0 || *v > 1e6)
        {
            bail!("alerts.{key} must be a number from 0 to 1000000 (it is {value})");
        }
        for (i, name) in self.destinations.iter().enumerate() {
            if self.destinations[..i].contains(name) {
                bail!("alerts.destinations names '{name}' twice");
            }
            if !webhook_destinations.contains(&name.as_str()) {
                bail!(
                    "alerts.destinations names '{name}', which is not a configured destination of kind webhook"
                );
            }
        }
        for name in self.quiet_hours_by_integration.keys() {
            if !integrations.contains(&name.as_str()) {
                bail!(
                    "alerts.quiet_hours_by_integration names '{name}', which is not a configured integration"
                );
            }
        }
        for (i, to) in self.email_to.iter().enumerate() {
            if !looks_like_address(to) {
                bail!("alerts.email_to[{i}] is not an e-mail address: {to:?}");
            }
        }
        if self.emails() {
            self.smtp.validate()?;
        }
        Ok(())
    }
}

impl SmtpConfig {
    fn validate(&self) -> anyhow::Result<()> {
        if self.host.trim().is_empty() {
            bail!("alerts.smtp.host is required when alerts.email_to names anyone");
        }
        if !looks_like_address(&self.from) {
            bail!("alerts.smtp.from must be the sender's e-mail address");
        }
        if !(1..=MAX_TIMEOUT_SECS).contains(&self.timeout_secs) {
            bail!("alerts.smtp.timeout_secs must be 1 to {MAX_TIMEOUT_SECS}");
        }
        if self.port == 0 {
            bail!("alerts.smtp.port must be 1 to 65535");
        }
        if self.tls == SmtpTls::None && !is_loopback(&self.host) {
            bail!(
                "alerts.smtp.tls = \"none\" sends alerts in clear text: only for a server on loopback (127.0.0.1, ::1, localhost), not {:?}",
                self.host
            );
        }
        if self.tls == SmtpTls::None && !self.username.is_empty() {
            bail!(
                "alerts.smtp.username is sent only over TLS: set alerts.smtp.tls to starttls or tls"
            );
        }
        Ok(())
    }
}

/// Longest SMTP conversation allowed, in seconds.
const MAX_TIMEOUT_SECS: u64 = 3600;

/// Whether `host` names this machine.
pub(super) fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A light check (`local@domain`, no spaces or angle brackets); the mail library parses it
/// fully when the sender is built.
fn looks_like_address(text: &str) -> bool {
    let Some((local, domain)) = text.rsplit_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.is_empty()
        && !text
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | ','))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_checked_lightly() {
        assert!(looks_like_address("oncall@clinic.example"));
        assert!(!looks_like_address("oncall"));
        assert!(!looks_like_address("on call@clinic.example"));
        assert!(!looks_like_address("a@b, c@d"));
        assert!(!looks_like_address("@clinic.example"));
    }

    #[test]
    fn clear_text_is_for_loopback_only() {
        assert!(is_loopback("127.0.0.1"));
        assert!(is_loopback("[::1]"));
        assert!(is_loopback("LOCALHOST"));
        assert!(!is_loopback("smtp.clinic.example"));
        assert!(!is_loopback("10.0.0.5"));
    }
}
