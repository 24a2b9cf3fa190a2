//! Sessions of the web console: an opaque random id in a cookie, the account it belongs to, and
//! the token every form of that session must carry (CSRF). Kept in the store
//! ([`ConsoleStore`](crate::store::ConsoleStore)), so any replica serves any request, a restart
//! signs nobody out, and signing out ends the session everywhere.
//!
//! Ids are 32 random bytes (base64url); only their SHA-256 is kept, so the store (or a dump of
//! it) does not hand out live sessions, and ids never reach a log. A session ends when unused
//! for the idle limit, at the absolute limit after its sign-in, at sign-out, or when an admin
//! ends its account's sessions. Its last use is written at most every [`touch_every`] (a
//! minute, less for short idle limits), so the idle limit holds to within that.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use time::OffsetDateTime;

use crate::secret::same_secret;
use crate::store::{ConsoleCutoffs, ConsoleSessionRecord, Store, StoreError};

/// The name of the session cookie.
pub const COOKIE: &str = "relay_console";

/// The start of the account of a person signed in through the identity provider, followed by
/// their subject (`sub`). Local user names cannot hold a `:`, so the two never meet.
pub const OIDC_ACCOUNT: &str = "oidc:";

/// One signed-in session, as the handlers see it.
#[derive(Debug, Clone)]
pub struct Session {
    /// Whose session: a local user's name, or `oidc:<subject>`.
    pub account: String,
    /// The name pages and the audit trail show.
    pub name: String,
    /// `staff` or `admin`, as decided at sign-in.
    pub role: String,
    /// External Service IDs the session may see (empty: all), as decided at sign-in.
    pub service_ids: Vec<String>,
    /// The identity provider a person signed in through; `None` for a local user.
    pub issuer: Option<String>,
    /// The token forms of this session carry.
    pub csrf: String,
    /// When the account last looked at the referral list before this session began: what
    /// changed after it is new to them for the whole session. `None` on a first session.
    pub changes_since: Option<OffsetDateTime>,
    pub created_at: OffsetDateTime,
    pub last_used_at: OffsetDateTime,
}

/// Who a new session is for.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub account: String,
    pub name: String,
    pub role: &'static str,
    pub service_ids: Vec<String>,
    /// The identity provider (`iss`) they signed in through; `None` for a local user.
    pub issuer: Option<String>,
}

impl From<ConsoleSessionRecord> for Session {
    fn from(r: ConsoleSessionRecord) -> Self {
        Self {
            account: r.account,
            name: r.name,
            role: r.role,
            service_ids: r.service_ids,
            issuer: r.issuer,
            csrf: r.csrf,
            changes_since: r.changes_since,
            created_at: r.created_at,
            last_used_at: r.last_used_at,
        }
    }
}

/// The console's sessions, in the store.
pub struct Sessions {
    store: Arc<dyn Store>,
    idle: Duration,
    absolute: Duration,
}

/// How stale a session's recorded last use may get before it is written again: a minute, or
/// a quarter of the idle limit when that is shorter.
pub fn touch_every(idle: Duration) -> Duration {
    (idle / 4).min(Duration::from_secs(60))
}

impl Sessions {
    /// Sessions ending when unused for `idle` or `absolute` after their start.
    pub fn new(store: Arc<dyn Store>, idle: Duration, absolute: Duration) -> Self {
        Self {
            store,
            idle,
            absolute,
        }
    }

    fn cutoffs(&self, now: OffsetDateTime) -> ConsoleCutoffs {
        ConsoleCutoffs {
            idle_before: now - self.idle,
            started_before: now - self.absolute,
        }
    }

    /// Starts a session for `who`; returns the id for the cookie. Expired sessions and
    /// abandoned sign-ins are removed first.
    ///
    /// # Errors
    /// The store's, when it cannot keep the session.
    pub async fn start(&self, who: NewSession) -> Result<String, StoreError> {
        let now = OffsetDateTime::now_utc();
        self.store.purge_console(self.cutoffs(now)).await?;
        let changes_since = self.store.console_visit(&who.account).await?;
        let id = random_token();
        self.store
            .save_console_session(&ConsoleSessionRecord {
                id_digest: digest(&id),
                account: who.account,
                name: who.name,
                role: who.role.to_owned(),
                service_ids: who.service_ids,
                issuer: who.issuer,
                csrf: random_token(),
                created_at: now,
                last_used_at: now,
                changes_since,
            })
            .await?;
        Ok(id)
    }

    /// The live session with this cookie id, marked used now; `None` when unknown, ended or
    /// expired (an expired one is removed).
    ///
    /// # Errors
    /// The store's.
    pub async fn find(&self, id: &str) -> Result<Option<Session>, StoreError> {
        let key = digest(id);
        let Some(record) = self.store.console_session(&key).await? else {
            return Ok(None);
        };
        let now = OffsetDateTime::now_utc();
        if record.expired(&self.cutoffs(now)) {
            self.store.end_console_session(&key).await?;
            return Ok(None);
        }
        if now - record.last_used_at >= touch_every(self.idle) {
            self.store.touch_console_session(&key, now).await?;
        }
        Ok(Some(record.into()))
    }

    /// Ends the session with this cookie id (sign-out), on every replica. Returns it, if it was
    /// live.
    ///
    /// # Errors
    /// The store's.
    pub async fn end(&self, id: &str) -> Result<Option<Session>, StoreError> {
        Ok(self
            .store
            .end_console_session(&digest(id))
            .await?
            .map(Session::from))
    }

    /// Ends every session of `account`; returns how many were live or kept.
    ///
    /// # Errors
    /// The store's.
    pub async fn end_all(&self, account: &str) -> Result<u64, StoreError> {
        self.store.end_console_sessions_of(account).await
    }

    /// Every live session, oldest first.
    ///
    /// # Errors
    /// The store's.
    pub async fn live(&self) -> Result<Vec<Session>, StoreError> {
        let cutoffs = self.cutoffs(OffsetDateTime::now_utc());
        Ok(self
            .store
            .console_sessions()
            .await?
            .into_iter()
            .filter(|s| !s.expired(&cutoffs))
            .map(Session::from)
            .collect())
    }

    /// Whether `presented` is the session's form token (constant time).
    pub fn csrf_matches(session: &Session, presented: &str) -> bool {
        same_secret(presented.as_bytes(), session.csrf.as_bytes())
    }

    /// Records that `account` looks at the referral list now (their next session marks what
    /// changes after this).
    ///
    /// # Errors
    /// The store's.
    pub async fn looked_at_list(
        &self,
        account: &str,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        self.store.save_console_visit(account, now).await
    }
}

/// 32 random bytes, base64url without padding: session ids and form tokens.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    // aws-lc's generator fails only when the OS gives no randomness, where nothing is safe.
    aws_lc_rs::rand::fill(&mut bytes).expect("the operating system provides randomness");
    URL_SAFE_NO_PAD.encode(bytes)
}

fn digest(id: &str) -> String {
    crate::store::sha256_hex(id.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_use_is_written_at_most_every_minute_and_often_enough_for_short_limits() {
        assert_eq!(
            touch_every(Duration::from_secs(3600)),
            Duration::from_secs(60)
        );
        assert_eq!(
            touch_every(Duration::from_secs(2)),
            Duration::from_millis(500)
        );
    }
}
