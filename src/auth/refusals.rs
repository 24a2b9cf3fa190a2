//! Refused authentication, counted and reported once per interval instead of once per refusal.
//!
//! Anyone on the internet can make the relay refuse them, so what a refusal writes must stay
//! bounded however many arrive: each is counted in memory (with the metric), and every
//! `server.auth_failure_report_secs` one audit entry and one log line are written per
//! (who was impersonated, scheme, reason) seen in that interval, naming the source addresses
//! (at most [`MAX_SOURCES`], the rest counted together). The first refusal of each kind in an
//! interval is also logged at once, so an operator watching the log sees trouble start.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::store::{Store, StoreError};

/// Source addresses named per entry; more are counted as `other_sources`.
pub const MAX_SOURCES: usize = 16;
/// Kinds kept per interval; refusals of further kinds are counted under one overflow kind.
const MAX_KINDS: usize = 64;

/// A refused request: the scheme's challenge and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// `WWW-Authenticate` value.
    pub challenge: &'static str,
    /// A fixed phrase, e.g. "wrong username or password".
    pub reason: String,
}

/// What was refused: who the caller claimed to be, the scheme, and why.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RefusalKind {
    /// e.g. `integration:ocean`, `token-endpoint`, `api`.
    pub actor: String,
    pub scheme: &'static str,
    /// A fixed phrase, never a credential or a header value.
    pub reason: String,
}

#[derive(Debug, Clone)]
struct Tally {
    count: u64,
    first: OffsetDateTime,
    last: OffsetDateTime,
    sources: BTreeMap<IpAddr, u64>,
    other_sources: u64,
}

/// Refusals counted since the last report.
#[derive(Default)]
pub struct Refusals {
    pending: Mutex<HashMap<RefusalKind, Tally>>,
}

impl Refusals {
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one refusal from `source`.
    pub fn record(&self, kind: RefusalKind, source: IpAddr) {
        let now = OffsetDateTime::now_utc();
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let kind = if pending.len() >= MAX_KINDS && !pending.contains_key(&kind) {
            RefusalKind {
                actor: "(several)".into(),
                scheme: "(several)",
                reason: "more kinds of refusal than one report holds".into(),
            }
        } else {
            kind
        };
        let tally = pending.entry(kind.clone()).or_insert_with(|| {
            tracing::warn!(
                actor = %kind.actor,
                scheme = kind.scheme,
                reason = %kind.reason,
                source = %source,
                "authentication failed (further refusals of this kind are counted and reported together)"
            );
            Tally {
                count: 0,
                first: now,
                last: now,
                sources: BTreeMap::new(),
                other_sources: 0,
            }
        });
        tally.count += 1;
        tally.last = now;
        if let Some(n) = tally.sources.get_mut(&source) {
            *n += 1;
        } else if tally.sources.len() < MAX_SOURCES {
            tally.sources.insert(source, 1);
        } else {
            tally.other_sources += 1;
        }
    }

    /// Writes one `AUTH_FAILURE` audit entry and one log line per kind counted since the last
    /// report, then starts counting afresh. Returns how many entries were written.
    pub async fn report(&self, store: &dyn Store) -> Result<usize, StoreError> {
        let pending: Vec<(RefusalKind, Tally)> = {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            let mut taken: Vec<_> = pending.drain().collect();
            taken.sort_by(|a, b| a.0.cmp(&b.0));
            taken
        };
        let written = pending.len();
        for (kind, tally) in pending {
            let time = |at: OffsetDateTime| at.format(&Rfc3339).unwrap_or_default();
            let sources: serde_json::Map<String, serde_json::Value> = tally
                .sources
                .iter()
                .map(|(ip, n)| (ip.to_string(), (*n).into()))
                .collect();
            tracing::warn!(
                actor = %kind.actor,
                scheme = kind.scheme,
                reason = %kind.reason,
                count = tally.count,
                sources = tally.sources.len() as u64 + tally.other_sources.min(1),
                "authentication failures since the last report"
            );
            let details = serde_json::json!({
                "scheme": kind.scheme,
                "reason": kind.reason,
                "count": tally.count,
                "first": time(tally.first),
                "last": time(tally.last),
                "sources": sources,
                "other_sources": tally.other_sources,
            });
            store.audit("AUTH_FAILURE", &kind.actor, details).await?;
        }
        Ok(written)
    }

    /// True when nothing has been counted since the last report.
    pub fn is_empty(&self) -> bool {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }
}
