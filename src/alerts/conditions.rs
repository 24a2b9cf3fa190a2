//! The conditions of `[alerts]`, as one look at the store and at this process's
//! [`Signals`] finds them.

use serde::Serialize;
use time::OffsetDateTime;

use crate::config::{Backend, Config};
use crate::signals::{Signals, Target, own_words};
use crate::store::{OCEAN_QUEUE, Store};

/// A condition that holds, or an event, as one look found it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Condition {
    /// Which condition: `dead_letters:destination:emr`, `failing:site:main`, `quiet:ocean`,
    /// `refused_logins:ocean`, `store`, `document_failed:REF:VERSION:INDEX`.
    pub key: String,
    /// `dead_letters`, `failing`, `quiet`, `refused_logins`, `store_unwritable`,
    /// `database_unreachable`, `document_failed`.
    pub kind: String,
    pub subject: String,
    pub detail: String,
    /// When it began, as far as the relay knows.
    #[serde(with = "time::serde::rfc3339")]
    pub since: OffsetDateTime,
}

/// What one look found.
#[derive(Debug, Default)]
pub struct Look {
    /// Conditions holding now.
    pub holding: Vec<Condition>,
    /// Keys, or key prefixes ending in `:`, of conditions this look cannot judge (the store did not answer; since a
    /// restart, nothing seen yet that would end them): those that held stay as they were.
    pub unknown: Vec<String>,
    /// Things that happened once since the last look.
    pub events: Vec<Condition>,
}

/// The store's trouble: since when it has not taken a write, and why.
#[derive(Debug, Clone)]
pub struct StoreTrouble {
    pub since: OffsetDateTime,
    pub reason: String,
}

/// Looks at every condition `config.alerts` turns on.
pub async fn look(
    store: &dyn Store,
    config: &Config,
    signals: &Signals,
    trouble: Option<&StoreTrouble>,
    now: OffsetDateTime,
) -> Look {
    let mut look = Look::default();
    let alerts = &config.alerts;
    if alerts.dead_letters {
        if trouble.is_some() {
            // The store is in trouble: its reads would wait for their bound, for nothing.
            look.unknown.push("dead_letters:".into());
        } else {
            dead_letters(store, config, now, &mut look).await;
        }
    }
    if alerts.failing_minutes > 0.0 {
        // A failure announced before a restart ends only when a send lands.
        let targets = config.sites.keys().map(|s| Target::Site(s.clone())).chain(
            config
                .destinations
                .keys()
                .map(|d| Target::Destination(d.clone())),
        );
        for target in targets.filter(|t| !signals.landed(t)) {
            look.unknown.push(format!("failing:{}", target.key()));
        }
        for (target, failing) in signals.failing() {
            // A target with nothing left to send (its dead letters discarded, its queue empty)
            // is failing no more: nothing would ever land to say so.
            if trouble.is_none() && nothing_to_send(store, &target).await {
                signals.settled(&target);
                continue;
            }
            if now - failing.since >= minutes(alerts.failing_minutes) {
                look.holding.push(Condition {
                    key: format!("failing:{}", target.key()),
                    kind: "failing".into(),
                    subject: format!("{} is failing", target.describe()),
                    detail: format!(
                        "Every send to {} has failed since {} ({}). The last: {}.",
                        target.describe(),
                        rfc3339(failing.since),
                        plural(failing.attempts, "attempt"),
                        failing.reason
                    ),
                    since: failing.since,
                });
            }
        }
    }
    quiet(config, signals, now, &mut look);
    if alerts.refused_logins > 0 {
        let window = minutes(alerts.refused_logins_minutes);
        // Refusals before a restart are not counted: until a window has passed, a burst
        // announced then is not known to have ended.
        if now - signals.started() < window {
            look.unknown.push("refused_logins:".into());
        }
        for (integration, (count, first)) in signals.refused_since(now - window) {
            if count >= alerts.refused_logins {
                // Callers naming no configured integration (an unknown client id) are counted
                // together, under a name no integration can have.
                let (key, whom) = if config
                    .integrations
                    .keys()
                    .any(|n| n.as_str() == integration)
                {
                    (integration.clone(), format!("integration '{integration}'"))
                } else {
                    (
                        "?".to_owned(),
                        "no configured integration (unknown client ids)".to_owned(),
                    )
                };
                look.holding.push(Condition {
                    key: format!("refused_logins:{key}"),
                    kind: "refused_logins".into(),
                    subject: format!("{} for {whom}", plural(count, "refused login")),
                    detail: format!(
                        "{} to the webhook or the token endpoint for {whom} within {} min, the first at {} (alerts.refused_logins = {}): a sender has the wrong secret, or someone is guessing. The audit trail's AUTH_FAILURE entries name the sources.",
                        plural(count, "refused login"),
                        alerts.refused_logins_minutes,
                        rfc3339(first),
                        alerts.refused_logins
                    ),
                    since: first,
                });
            }
        }
    }
    if alerts.store_unwritable_secs > 0
        && let Some(trouble) = trouble
        && now - trouble.since >= time::Duration::seconds(secs(alerts.store_unwritable_secs))
    {
        let (kind, subject) = if config.storage.backend == Backend::Postgres {
            (
                "database_unreachable",
                "this replica cannot write to its PostgreSQL database",
            )
        } else {
            ("store_unwritable", "the store cannot write")
        };
        look.holding.push(Condition {
            key: "store".into(),
            kind: kind.into(),
            subject: subject.into(),
            detail: format!(
                "No write has been taken since {}: {}. Webhook deliveries are answered 503 (Ocean retries them) until it recovers.",
                rfc3339(trouble.since),
                trouble.reason
            ),
            since: trouble.since,
        });
    }
    for document in signals.take_given_up() {
        if !alerts.documents_failed {
            continue;
        }
        look.events.push(Condition {
            key: format!(
                "document_failed:{}:{}:{}",
                document.referral, document.version, document.index
            ),
            kind: "document_failed".into(),
            subject: format!("a document of referral {} was given up", document.referral),
            detail: format!(
                "Document {} of version {} of referral {} could not be fetched from Ocean and was given up; its last_error is in GET /api/v1/referrals/{{ref}}/documents.",
                document.index, document.version, document.referral
            ),
            since: document.at,
        });
    }
    look
}

/// A dead letter in the Ocean outbox or in any destination's queue.
async fn dead_letters(store: &dyn Store, config: &Config, now: OffsetDateTime, look: &mut Look) {
    let queues = std::iter::once((
        OCEAN_QUEUE.to_owned(),
        "ocean".to_owned(),
        "the Ocean outbox".to_owned(),
    ))
    .chain(config.destinations.keys().map(|name| {
        (
            name.clone(),
            format!("destination:{name}"),
            format!("destination '{name}'"),
        )
    }));
    for (queue, key, what) in queues {
        let stats = match store.queue_stats(&queue).await {
            Ok(stats) => stats,
            Err(_) => {
                look.unknown.push("dead_letters:".into());
                return;
            }
        };
        if stats.dead == 0 {
            continue;
        }
        let reason = stats
            .last_error
            .as_deref()
            .map(own_words)
            .unwrap_or_else(|| "no reason recorded".into());
        look.holding.push(Condition {
            key: format!("dead_letters:{key}"),
            kind: "dead_letters".into(),
            subject: format!("{} in {what}", plural(stats.dead, "dead letter")),
            detail: format!(
                "{} in {what} refused or out of retry time hold back the later messages of their referrals until replayed or discarded (the API's dead letters, or the console). The oldest's reason: {reason}.",
                plural(stats.dead, "message")
            ),
            since: now,
        });
    }
}

/// No delivery on an integration for its `quiet_hours`.
fn quiet(config: &Config, signals: &Signals, now: OffsetDateTime, look: &mut Look) {
    for name in config.integrations.keys() {
        let hours = config.alerts.quiet_hours_of(name.as_str());
        if hours <= 0.0 {
            continue;
        }
        let last = signals.last_delivery(name.as_str());
        if last.is_none() {
            // A quiet spell announced before a restart ends with a delivery.
            look.unknown.push(format!("quiet:{name}"));
        }
        let since = last.unwrap_or_else(|| signals.started());
        if now - since < minutes(hours * 60.0) {
            continue;
        }
        let seen = match last {
            Some(at) => format!("the last was at {}", rfc3339(at)),
            None => format!("none since this process started at {}", rfc3339(since)),
        };
        look.holding.push(Condition {
            key: format!("quiet:{name}"),
            kind: "quiet".into(),
            subject: format!("no delivery on integration '{name}' for {hours} h"),
            detail: format!(
                "Integration '{name}' has received no delivery for {hours} h ({seen}). Is Ocean sending? Check the integration's URL and credentials in Ocean."
            ),
            since,
        });
    }
}

/// Whether `target`'s queue holds nothing waiting to be sent (an Ocean site: the outbox's;
/// when the store cannot tell, it may).
async fn nothing_to_send(store: &dyn Store, target: &Target) -> bool {
    let queue = match target {
        Target::Site(_) => OCEAN_QUEUE,
        Target::Destination(name) => name.as_str(),
    };
    store
        .queue_stats(queue)
        .await
        .is_ok_and(|stats| stats.pending == 0)
}

/// `1 dead letter`, `2 dead letters`.
pub(super) fn plural(count: u64, noun: &str) -> String {
    if count == 1 {
        format!("1 {noun}")
    } else {
        format!("{count} {noun}s")
    }
}

fn minutes(value: f64) -> time::Duration {
    time::Duration::seconds_f64(value * 60.0)
}

fn secs(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

pub(super) fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
