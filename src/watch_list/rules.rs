//! The watch-list's rules: what one referral's record and the clinic's updates make of it at a
//! moment (see the module above for what each side is read from).

use time::{Duration, OffsetDateTime};

use super::{WatchEntry, WatchKind};
use crate::config::WatchListConfig;
use crate::progress::{Facts, Terminal};
use crate::store::{ReferralRecord, UpdateRecord};

/// Ocean archives a referral no sooner than this long after it was sent.
const ARCHIVED_AFTER_SENDING: Duration = Duration::days(365);
/// ... nor sooner than this long after its terminal status, or its last appointment.
const ARCHIVED_AFTER_TERMINAL: Duration = Duration::days(30);
const ARCHIVED_AFTER_APPOINTMENT: Duration = Duration::days(30);

/// What one referral's record and its clinic updates make of it at `now`: its watch-list
/// entries (none, one, or more than one of different kinds).
pub fn assess(
    record: &ReferralRecord,
    updates: &[UpdateRecord],
    config: &WatchListConfig,
    now: OffsetDateTime,
) -> Vec<WatchEntry> {
    let facts = Facts::read(record, updates);
    let entry = |kind, since, archival_at, reason| WatchEntry {
        referral: record.referral.clone(),
        service_id: record.service_id.clone(),
        kind,
        since,
        archival_at,
        reason,
    };
    let mut entries = Vec::new();
    if let Some((since, reason)) = overdue(record, &facts, config, now) {
        entries.push(entry(WatchKind::Overdue, since, None, reason));
    }
    if let Some((since, reason)) = appointment_passed(&facts, now) {
        entries.push(entry(WatchKind::AppointmentPassed, since, None, reason));
    }
    if let Some((since, reason)) = revoked_after_action(&facts) {
        entries.push(entry(WatchKind::RevokedAfterAction, since, None, reason));
    }
    if let Some((since, reason)) = closed_by_ocean(&facts, config, now) {
        entries.push(entry(WatchKind::ClosedByOcean, since, None, reason));
    }
    if let Some((terminal, archival)) = archival_date(&facts) {
        let warning = Duration::days(i64::from(config.archival_warning_days));
        if archival.at >= now && archival.at <= now + warning {
            let reason = format!(
                "Ocean archives it on {} ({}); it became {} on {}",
                day(archival.at),
                archival.rule,
                terminal.state,
                day(terminal.at),
            );
            entries.push(entry(
                WatchKind::NearingArchival,
                terminal.at,
                Some(archival.at),
                reason,
            ));
        }
    }
    entries
}

/// When Ocean archives a referral, and the rule that decides it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archival {
    pub at: OffsetDateTime,
    /// Which of Ocean's rules is the latest, with its date (`30 days after its last
    /// appointment, 2026-12-03`).
    pub rule: String,
}

/// Ocean's archival of a referral in a terminal state: the latest of 365 days after it was
/// sent, 30 days after its terminal status, and 30 days after its last appointment ever
/// booked (the latest start of every appointment the clinic booked through the relay, cancelled
/// ones included, and of Ocean's Appointment unless it was only proposed). A referral that is
/// not in a terminal state stays in Ocean: `None`.
///
/// Ocean's fourth rule, the listing's largest anticipated wait + 60 days (a year from
/// assessment for rapid-access listings), needs listing data the relay does not receive: a
/// referral to such a listing may stay in Ocean longer than this says.
pub fn archival_date(facts: &Facts) -> Option<(Terminal, Archival)> {
    let terminal = facts.terminal?;
    let sent = facts.sent;
    let mut rules = vec![
        (
            sent + ARCHIVED_AFTER_SENDING,
            "365 days after it was sent",
            sent,
        ),
        (
            terminal.at + ARCHIVED_AFTER_TERMINAL,
            "30 days after its terminal status",
            terminal.at,
        ),
    ];
    if let Some(last) = facts.last_appointment {
        rules.push((
            last + ARCHIVED_AFTER_APPOINTMENT,
            "30 days after its last appointment",
            last,
        ));
    }
    let (at, rule, from) = rules.into_iter().max_by_key(|(at, _, _)| *at)?;
    Some((
        terminal,
        Archival {
            at,
            rule: format!("{rule}, {}", day(from)),
        },
    ))
}

fn overdue(
    record: &ReferralRecord,
    facts: &Facts,
    config: &WatchListConfig,
    now: OffsetDateTime,
) -> Option<(OffsetDateTime, String)> {
    if facts.terminal.is_some() || facts.acted_in_ocean || !facts.clinic_statuses.is_empty() {
        return None;
    }
    let days = config.overdue_days(record.service_id.as_ref());
    let due = facts.arrived + Duration::days(i64::from(days));
    (now >= due).then(|| {
        let service = record
            .service_id
            .as_ref()
            .map_or_else(|| "unassigned".to_owned(), |s| format!("service {s}"));
        (
            due,
            format!(
                "no status from the clinic since it arrived on {}; {service} allows {days} days",
                day(facts.arrived)
            ),
        )
    })
}

fn appointment_passed(facts: &Facts, now: OffsetDateTime) -> Option<(OffsetDateTime, String)> {
    let (start, booked_at) = facts.booked?;
    // A status after the start, and after the booking itself (the clinic may record an
    // appointment once it has taken place).
    let after = start.max(booked_at);
    let status_since = facts.clinic_statuses.iter().any(|at| *at > after)
        || facts.ocean_task_at.is_some_and(|at| at > after);
    (facts.terminal.is_none() && start <= now && !status_since).then(|| {
        (
            start,
            format!(
                "the appointment booked for {} has passed with no status since",
                minute(start)
            ),
        )
    })
}

fn revoked_after_action(facts: &Facts) -> Option<(OffsetDateTime, String)> {
    let revoked = facts.revoked?;
    let acted = facts
        .clinic_statuses
        .iter()
        .filter(|at| **at <= revoked)
        .max()?;
    let answered = facts.clinic_updates.iter().any(|at| *at > revoked);
    (!answered).then(|| {
        (
            revoked,
            format!(
                "the requester revoked it on {} after the clinic's update of {}",
                day(revoked),
                day(*acted)
            ),
        )
    })
}

fn closed_by_ocean(
    facts: &Facts,
    config: &WatchListConfig,
    now: OffsetDateTime,
) -> Option<(OffsetDateTime, String)> {
    let closed = facts.closed_by_ocean?;
    let window = Duration::days(i64::from(config.closed_by_ocean_days));
    let answered = facts.clinic_updates.iter().any(|at| *at > closed);
    // Still the referral's terminal state (not reopened, revoked or declined since).
    let current = facts.terminal.is_some_and(|t| t.state == "closed by Ocean");
    (current && !answered && closed <= now && now - closed < window).then(|| {
        let appointment = facts
            .last_appointment
            .map(|at| format!("; its last appointment was on {}", day(at)))
            .unwrap_or_default();
        (
            closed,
            format!(
                "Ocean closed it as completed on {} without the clinic completing it through the relay (Ocean's automatic closing of booked referrals, or someone in Ocean's screens){appointment}",
                day(closed)
            ),
        )
    })
}

/// `2026-12-03` (UTC).
fn day(at: OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    at.format(time::macros::format_description!("[year]-[month]-[day]"))
        .unwrap_or_default()
}

/// `2026-12-03 19:30 UTC`.
fn minute(at: OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    at.format(time::macros::format_description!(
        "[year]-[month]-[day] [hour]:[minute] UTC"
    ))
    .unwrap_or_default()
}
