//! What this process saw lately that an alert may be about: sends to Ocean sites and
//! destinations failing or landing, refused logins, deliveries, documents given up. Reported
//! where they happen, read by [`crate::alerts`]' monitor. Identifiers, counts and the relay's
//! own words only: never a payload, a header value or a receiver's answer.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use time::OffsetDateTime;

/// Refused logins kept per integration, at most (older ones fall out first).
const MAX_REFUSALS: usize = 100_000;
/// Documents given up, kept until the monitor takes them, at most.
const MAX_GIVEN_UP: usize = 10_000;

/// Something the relay sends to: an Ocean site or a destination.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    Site(String),
    Destination(String),
}

impl Target {
    /// `site NAME` or `destination NAME`.
    pub fn describe(&self) -> String {
        match self {
            Self::Site(name) => format!("Ocean site '{name}'"),
            Self::Destination(name) => format!("destination '{name}'"),
        }
    }

    /// `site:NAME` or `destination:NAME`: part of an alert's key.
    pub fn key(&self) -> String {
        match self {
            Self::Site(name) => format!("site:{name}"),
            Self::Destination(name) => format!("destination:{name}"),
        }
    }
}

/// Since when a target's sends have failed, and the latest reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failing {
    pub since: OffsetDateTime,
    pub attempts: u64,
    /// The relay's words for the last failure ([`own_words`]).
    pub reason: String,
}

/// A document the fetcher gave up on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GivenUp {
    pub referral: String,
    pub version: u64,
    pub index: u32,
    pub at: OffsetDateTime,
}

#[derive(Default)]
struct Seen {
    failing: BTreeMap<Target, Failing>,
    /// Targets a send landed at, in this process.
    landed: std::collections::BTreeSet<Target>,
    refused: BTreeMap<String, VecDeque<OffsetDateTime>>,
    delivered: BTreeMap<String, OffsetDateTime>,
    given_up: Vec<GivenUp>,
}

/// The signals of one process. Shared as `Arc<Signals>`.
pub struct Signals {
    started: OffsetDateTime,
    seen: Mutex<Seen>,
}

impl Default for Signals {
    fn default() -> Self {
        Self::new()
    }
}

impl Signals {
    pub fn new() -> Self {
        Self {
            started: OffsetDateTime::now_utc(),
            seen: Mutex::default(),
        }
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// When the process began watching.
    pub fn started(&self) -> OffsetDateTime {
        self.started
    }

    /// One send to `target`: `delivered`, or a failed attempt (`retry`, `dead`) with the
    /// reason recorded for it (cut to the relay's own words). A target fails while its sends
    /// are retried (refused tokens, connection errors, 5xx); a refusal of one message (a 4xx
    /// dead letter) is that message's fault, not the target's, and starts nothing.
    pub fn sent(&self, target: Target, outcome: &str, reason: Option<&str>) {
        let mut seen = self.seen();
        if outcome == "delivered" {
            seen.failing.remove(&target);
            seen.landed.insert(target);
            return;
        }
        if outcome != "retry" && !seen.failing.contains_key(&target) {
            return;
        }
        let reason = own_words(reason.unwrap_or("no reason recorded"));
        let now = OffsetDateTime::now_utc();
        let failing = seen.failing.entry(target).or_insert(Failing {
            since: now,
            attempts: 0,
            reason: String::new(),
        });
        failing.attempts += 1;
        failing.reason = reason;
    }

    /// Forgets that `target` was failing: it has nothing left to send.
    pub fn settled(&self, target: &Target) {
        let mut seen = self.seen();
        seen.failing.remove(target);
        seen.landed.insert(target.clone());
    }

    /// Targets failing now, with since when.
    pub fn failing(&self) -> Vec<(Target, Failing)> {
        self.seen()
            .failing
            .iter()
            .map(|(t, f)| (t.clone(), f.clone()))
            .collect()
    }

    /// Whether a send to `target` landed in this process (so it is known not to be failing).
    pub fn landed(&self, target: &Target) -> bool {
        self.seen().landed.contains(target)
    }

    /// A refused login to `integration` (its webhook or the token endpoint).
    pub fn refused(&self, integration: &str) {
        let mut seen = self.seen();
        let times = seen.refused.entry(integration.to_owned()).or_default();
        if times.len() >= MAX_REFUSALS {
            times.pop_front();
        }
        times.push_back(OffsetDateTime::now_utc());
    }

    /// Refused logins per integration since `since` (older ones are forgotten): how many, and
    /// when the first of them was.
    pub fn refused_since(&self, since: OffsetDateTime) -> BTreeMap<String, (u64, OffsetDateTime)> {
        let mut seen = self.seen();
        seen.refused.retain(|_, times| {
            while times.front().is_some_and(|t| *t < since) {
                times.pop_front();
            }
            !times.is_empty()
        });
        seen.refused
            .iter()
            .filter_map(|(name, times)| Some((name.clone(), (times.len() as u64, *times.front()?))))
            .collect()
    }

    /// A delivery `integration` received (stored, or a duplicate: the sender is alive).
    /// On every delivery's path: no allocation once the integration has delivered.
    pub fn delivered(&self, integration: &str) {
        let now = OffsetDateTime::now_utc();
        let mut seen = self.seen();
        match seen.delivered.get_mut(integration) {
            Some(at) => *at = now,
            None => {
                seen.delivered.insert(integration.to_owned(), now);
            }
        }
    }

    /// When `integration` last delivered, as this process saw it.
    pub fn last_delivery(&self, integration: &str) -> Option<OffsetDateTime> {
        self.seen().delivered.get(integration).copied()
    }

    /// A document given up on.
    pub fn document_given_up(&self, referral: &str, version: u64, index: u32) {
        let mut seen = self.seen();
        if seen.given_up.len() < MAX_GIVEN_UP {
            seen.given_up.push(GivenUp {
                referral: referral.to_owned(),
                version,
                index,
                at: OffsetDateTime::now_utc(),
            });
        }
    }

    /// The documents given up since the last call.
    pub fn take_given_up(&self) -> Vec<GivenUp> {
        std::mem::take(&mut self.seen().given_up)
    }
}

/// A failure's reason in the relay's own words: the part before a receiver's answer is quoted
/// (`the destination answered 500 Internal Server Error: ...` keeps the status), and the
/// relay's name for a transport failure (`unreachable: connection refused`). A receiver's
/// answer may echo what was sent, so it never reaches an alert.
pub fn own_words(reason: &str) -> String {
    let mut parts = reason.splitn(3, ": ");
    let first = parts.next().unwrap_or_default();
    let kept = match parts.next() {
        Some(second) if first.ends_with("unreachable") => format!("{first}: {second}"),
        _ => first.to_owned(),
    };
    kept.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_words_drop_what_a_receiver_answered() {
        assert_eq!(
            own_words("the destination answered 500 Internal Server Error: Jane Doe not found"),
            "the destination answered 500 Internal Server Error"
        );
        assert_eq!(
            own_words("the destination is unreachable: connection refused: os error 111"),
            "the destination is unreachable: connection refused"
        );
    }

    #[test]
    fn a_delivery_ends_a_failure_and_refusals_age_out() {
        let signals = Signals::new();
        let site = Target::Site("main".into());
        let destination = Target::Destination("emr".into());
        signals.sent(destination, "dead", Some("the destination answered 400"));
        assert!(
            signals.failing().is_empty(),
            "a refusal does not make a target fail"
        );
        signals.sent(site.clone(), "retry", Some("token refused: 401"));
        signals.sent(site.clone(), "retry", Some("token refused: 401"));
        let failing = signals.failing();
        assert_eq!(failing.len(), 1);
        assert_eq!(failing[0].1.attempts, 2);
        assert_eq!(failing[0].1.reason, "token refused");
        signals.sent(site, "delivered", None);
        assert!(signals.failing().is_empty());

        signals.refused("ocean");
        let now = OffsetDateTime::now_utc();
        assert_eq!(
            signals.refused_since(now - time::Duration::minutes(1))["ocean"].0,
            1
        );
        assert!(
            signals
                .refused_since(now + time::Duration::minutes(1))
                .is_empty()
        );
    }
}
