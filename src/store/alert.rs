//! Alerts as the store keeps them: each alert is a message of [`ALERTS_QUEUE`] (its record,
//! filed when it starts, clears or happens), and each channel it goes out by has a queue of
//! its own (`alerts:email`, `alerts:webhook:NAME`) sent under the outbox's rules.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// The queue of alert records. Never sent; kept whatever the retention, so the state of each
/// condition survives restarts.
pub const ALERTS_QUEUE: &str = "alerts:";

/// Whether `queue` holds alerts (records or a channel's messages), not referral versions.
pub fn is_alert_queue(queue: &str) -> bool {
    queue.starts_with(ALERTS_QUEUE)
}

/// What an alert says about its condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertPhase {
    /// The condition began.
    Started,
    /// The condition ended (`started_at` says when it began).
    Cleared,
    /// Something that happened once (a document given up, a summary, a test).
    Event,
    /// Several alerts of one look, sent together (`items`).
    Digest,
}

impl AlertPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Started => "started",
            Self::Cleared => "cleared",
            Self::Event => "event",
            Self::Digest => "digest",
        }
    }
}

/// One alert: identifiers, counts and reasons, never patient data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertRecord {
    /// `alert_` and a random UUID: the same in the record and in every channel's message (the
    /// e-mail's Message-ID, the webhook's `webhook-id`).
    pub id: String,
    /// The condition's kind (`dead_letters`, `failing`, `quiet`, `refused_logins`,
    /// `store_unwritable`, `database_unreachable`, `document_failed`, `summary`, `test`,
    /// `digest`).
    pub kind: String,
    /// The condition it is about (`dead_letters:destination:emr`); one key holds at most one
    /// started alert at a time.
    pub key: String,
    pub phase: AlertPhase,
    /// One line, e.g. the mail's subject.
    pub subject: String,
    /// What it is about, in a few lines.
    pub detail: String,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// A digest's alerts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<AlertRecord>,
    /// Channels that had it straight from memory, while the store could not write.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sent_from_memory: Vec<String>,
}

impl AlertRecord {
    /// A new alert, with an id of its own.
    pub fn new(
        kind: &str,
        key: &str,
        phase: AlertPhase,
        subject: String,
        detail: String,
        started_at: OffsetDateTime,
    ) -> Self {
        Self {
            id: format!("alert_{}", uuid::Uuid::new_v4().simple()),
            kind: kind.to_owned(),
            key: key.to_owned(),
            phase,
            subject,
            detail,
            started_at,
            at: OffsetDateTime::now_utc(),
            items: Vec::new(),
            sent_from_memory: Vec::new(),
        }
    }
}
