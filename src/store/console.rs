//! The web console's sessions, kept in the store so that every replica serves every request
//! and a restart signs nobody out: each signed-in session (by the SHA-256 of its id, never the
//! id), and when each user last looked at the referral list.
//!
//! The store keeps what it is given; when a session has expired is the console's rule
//! ([`crate::auth::session`]), applied on reading and by [`ConsoleStore::purge_console`].

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::error::StoreError;

/// One signed-in session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleSessionRecord {
    /// SHA-256 (lowercase hex) of the session id the cookie carries: the key.
    pub id_digest: String,
    /// Whose session: a local user's name, or `oidc:<subject>` for a person signed in through
    /// the identity provider. Ending "a user's sessions" ends every session of one account.
    pub account: String,
    /// The name pages and the audit trail show.
    pub name: String,
    /// `staff` or `admin`, as decided at sign-in (a local user's is read from the config on
    /// every request instead).
    pub role: String,
    /// The identity provider (`iss`) a person signed in through; `None` for a local user. A
    /// session from another issuer than the configured one is over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// External Service IDs the session may see; empty sees all.
    pub service_ids: Vec<String>,
    /// The token every form of the session carries (CSRF).
    pub csrf: String,
    pub created_at: OffsetDateTime,
    /// When it was last used, to the console's precision (it is not rewritten on every
    /// request).
    pub last_used_at: OffsetDateTime,
    /// When the account last looked at the referral list before this session began.
    pub changes_since: Option<OffsetDateTime>,
}

/// What [`ConsoleStore::purge_console`] removes: sessions unused since `idle_before` or begun
/// before `started_before`.
#[derive(Debug, Clone, Copy)]
pub struct ConsoleCutoffs {
    pub idle_before: OffsetDateTime,
    pub started_before: OffsetDateTime,
}

/// Console sessions, shared by every process that opens the store.
#[async_trait]
pub trait ConsoleStore: Send + Sync {
    /// Keeps a new session (replacing one with the same digest, which random ids never give).
    async fn save_console_session(&self, record: &ConsoleSessionRecord) -> Result<(), StoreError>;

    /// The session whose id has this digest, if it was not ended or purged.
    async fn console_session(
        &self,
        id_digest: &str,
    ) -> Result<Option<ConsoleSessionRecord>, StoreError>;

    /// Marks the session used at `at`; does nothing when it has been ended meanwhile (so an
    /// ended session never comes back).
    async fn touch_console_session(
        &self,
        id_digest: &str,
        at: OffsetDateTime,
    ) -> Result<(), StoreError>;

    /// Ends one session (sign-out); returns it, if it was there.
    async fn end_console_session(
        &self,
        id_digest: &str,
    ) -> Result<Option<ConsoleSessionRecord>, StoreError>;

    /// Ends every session of `account`; returns how many there were.
    async fn end_console_sessions_of(&self, account: &str) -> Result<u64, StoreError>;

    /// Every session kept, oldest first.
    async fn console_sessions(&self) -> Result<Vec<ConsoleSessionRecord>, StoreError>;

    /// When `account` last looked at the referral list.
    async fn console_visit(&self, account: &str) -> Result<Option<OffsetDateTime>, StoreError>;

    /// Records that `account` looked at the referral list at `at`.
    async fn save_console_visit(&self, account: &str, at: OffsetDateTime)
    -> Result<(), StoreError>;

    /// Removes expired sessions (see [`ConsoleCutoffs`]); returns how many were removed.
    async fn purge_console(&self, cutoffs: ConsoleCutoffs) -> Result<u64, StoreError>;
}

impl ConsoleSessionRecord {
    /// Whether `cutoffs` have expired it.
    pub fn expired(&self, cutoffs: &ConsoleCutoffs) -> bool {
        self.last_used_at < cutoffs.idle_before || self.created_at < cutoffs.started_before
    }
}
