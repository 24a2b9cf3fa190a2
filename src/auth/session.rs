//! Sessions of the web console: an opaque random id in a cookie, the user it belongs to, and the
//! token every form of that session must carry (CSRF).
//!
//! Ids are 32 random bytes (base64url); only their SHA-256 is kept, so a memory dump does not
//! hand out live sessions. A session ends when unused for the idle limit, at the absolute limit
//! after its login, at logout, or when the process restarts (sessions are held in memory: behind
//! a load balancer, pin console users to one replica).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use time::OffsetDateTime;

use crate::secret::same_secret;

/// The name of the session cookie.
pub const COOKIE: &str = "relay_console";

/// Sessions at most; past this the oldest is ended to make room.
const MAX_SESSIONS: usize = 10_000;

/// One signed-in user's session, as the handlers see it.
#[derive(Debug, Clone)]
pub struct Session {
    /// The console user's name (config key).
    pub user: String,
    /// The token forms of this session carry.
    pub csrf: String,
    /// When the user last looked at the referral list before this session began: what changed
    /// after it is new to them for the whole session. `None` on a first session.
    pub changes_since: Option<OffsetDateTime>,
}

struct Held {
    session: Session,
    created: Instant,
    last_used: Instant,
}

/// Every live session of this process.
pub struct Sessions {
    idle: Duration,
    absolute: Duration,
    held: Mutex<HashMap<String, Held>>,
    /// Per user: when they last looked at the referral list (survives their logout, not a
    /// restart).
    visits: Mutex<HashMap<String, OffsetDateTime>>,
}

impl Sessions {
    pub fn new(idle: Duration, absolute: Duration) -> Self {
        Self {
            idle,
            absolute,
            held: Mutex::new(HashMap::new()),
            visits: Mutex::new(HashMap::new()),
        }
    }

    /// Starts a session for `user`; returns the id for the cookie.
    pub fn start(&self, user: &str) -> String {
        let id = random_token();
        let now = Instant::now();
        let changes_since = self
            .visits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(user)
            .copied();
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.retain(|_, h| self.alive(h, now));
        if held.len() >= MAX_SESSIONS
            && let Some(oldest) = held
                .iter()
                .min_by_key(|(_, h)| h.created)
                .map(|(k, _)| k.clone())
        {
            held.remove(&oldest);
        }
        held.insert(
            digest(&id),
            Held {
                session: Session {
                    user: user.to_owned(),
                    csrf: random_token(),
                    changes_since,
                },
                created: now,
                last_used: now,
            },
        );
        id
    }

    /// The live session with this cookie id, marked used now; `None` when unknown or expired
    /// (an expired one is removed).
    pub fn find(&self, id: &str) -> Option<Session> {
        let key = digest(id);
        let now = Instant::now();
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let alive = held.get(&key).is_some_and(|h| self.alive(h, now));
        if !alive {
            held.remove(&key);
            return None;
        }
        let h = held.get_mut(&key)?;
        h.last_used = now;
        Some(h.session.clone())
    }

    /// Ends the session with this cookie id (logout). Returns its user, if it was live.
    pub fn end(&self, id: &str) -> Option<String> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.remove(&digest(id)).map(|h| h.session.user)
    }

    /// Whether `presented` is the session's form token (constant time).
    pub fn csrf_matches(session: &Session, presented: &str) -> bool {
        same_secret(presented.as_bytes(), session.csrf.as_bytes())
    }

    /// Records that `user` looks at the referral list now (their next session marks what
    /// changes after this).
    pub fn looked_at_list(&self, user: &str, now: OffsetDateTime) {
        let mut visits = self.visits.lock().unwrap_or_else(|p| p.into_inner());
        visits.insert(user.to_owned(), now);
    }

    fn alive(&self, h: &Held, now: Instant) -> bool {
        now.duration_since(h.last_used) < self.idle && now.duration_since(h.created) < self.absolute
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
    fn a_session_ends_at_logout_and_when_idle() {
        let sessions = Sessions::new(Duration::from_millis(500), Duration::from_secs(60));
        let id = sessions.start("alice");
        let session = sessions.find(&id).unwrap();
        assert_eq!(session.user, "alice");
        assert!(Sessions::csrf_matches(&session, &session.csrf));
        assert!(!Sessions::csrf_matches(&session, "forged"));
        assert!(sessions.find("another id").is_none());
        std::thread::sleep(Duration::from_millis(700));
        assert!(sessions.find(&id).is_none(), "idle too long");
        let id = sessions.start("alice");
        assert_eq!(sessions.end(&id).as_deref(), Some("alice"));
        assert!(sessions.find(&id).is_none());
    }

    #[test]
    fn a_session_ends_at_its_absolute_limit_even_when_used() {
        let sessions = Sessions::new(Duration::from_secs(60), Duration::from_millis(400));
        let id = sessions.start("bob");
        for _ in 0..3 {
            assert!(sessions.find(&id).is_some());
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(400));
        assert!(sessions.find(&id).is_none());
    }
}
