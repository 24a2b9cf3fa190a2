//! The watch-list's rules: what one referral's record and the clinic's updates make of it at a
//! moment (see the module above for what each side is read from).

use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};

use super::{WatchEntry, WatchKind};
use crate::config::WatchListConfig;
use crate::domain::{Part, Summary};
use crate::store::{ReferralRecord, UpdateKind, UpdateRecord, UpdateState};

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

/// A terminal state, and when the referral reached it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Terminal {
    /// `completed`, `closed by Ocean` (completed in Ocean without the clinic completing it
    /// through the relay), `cancelled by the requester`, `declined` or `externally managed`.
    pub state: &'static str,
    pub at: OffsetDateTime,
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

/// What the rules read of one referral, from both sides.
#[derive(Debug, Clone)]
pub struct Facts {
    /// When the referral arrived (its first version).
    pub arrived: OffsetDateTime,
    /// When it was sent: the ServiceRequest's `authoredOn`, or its arrival if earlier.
    pub sent: OffsetDateTime,
    /// When the requester revoked it.
    pub revoked: Option<OffsetDateTime>,
    /// Its terminal state, if it is in one.
    pub terminal: Option<Terminal>,
    /// When Ocean's Task or ServiceRequest became `completed` (the later), if the clinic never
    /// sent `completed` itself.
    pub closed_by_ocean: Option<OffsetDateTime>,
    /// The clinic acted in Ocean itself: Ocean's Task is past `requested`/`received`, or
    /// Ocean sent an Appointment.
    pub acted_in_ocean: bool,
    /// When Ocean last set the Task.
    pub ocean_task_at: Option<OffsetDateTime>,
    /// When the clinic's updates (statuses, appointments, cancellations; not messages) were
    /// accepted, oldest first.
    pub clinic_statuses: Vec<OffsetDateTime>,
    /// When each update of any kind was accepted (messages included).
    pub clinic_updates: Vec<OffsetDateTime>,
    /// The start of the appointment booked last and not cancelled since, whichever side set
    /// it later, and when it was set.
    pub booked: Option<(OffsetDateTime, OffsetDateTime)>,
    /// The latest start of every appointment ever booked, by either side.
    pub last_appointment: Option<OffsetDateTime>,
}

/// Task statuses that say the clinic has not acted yet (Ocean's "New" folder).
const NOT_ACTED: [&str; 3] = ["draft", "requested", "received"];

impl Facts {
    /// The facts of `record` with the clinic's `updates`.
    pub fn read(record: &ReferralRecord, updates: &[UpdateRecord]) -> Self {
        let summary = &record.summary;
        // When the message that last set `part` says it was made; a message without a time
        // (or a record from before part times were kept) counts as the latest.
        let set_at = |part| record.part_times.get(part).unwrap_or(record.modified_at);
        let live: Vec<&UpdateRecord> = updates
            .iter()
            .filter(|u| u.state != UpdateState::Discarded)
            .collect();
        let statuses: Vec<&UpdateRecord> = live
            .iter()
            .copied()
            .filter(|u| u.kind != UpdateKind::Message)
            .collect();

        let arrived = record.created_at;
        let sent = authored(summary).map_or(arrived, |at| at.min(arrived));
        let revoked = (summary.service_request_status.as_deref() == Some("revoked"))
            .then(|| set_at(Part::ServiceRequest));

        // The Task status: Ocean's or the clinic's last, whichever was set later.
        let ocean_task = summary
            .task_status
            .as_deref()
            .map(|s| (s, set_at(Part::Task)));
        let clinic_task = statuses
            .iter()
            .rev()
            .find_map(|u| Some((u.task_status.as_deref()?, u.created_at)));
        let task = match (ocean_task, clinic_task) {
            (Some(o), Some(c)) => Some(if c.1 > o.1 { c } else { o }),
            (o, c) => o.or(c),
        };

        let mut terminals = Vec::new();
        if let Some(at) = revoked {
            terminals.push(Terminal {
                state: "cancelled by the requester",
                at,
            });
        }
        // Ocean's own completion: its Task or ServiceRequest says `completed`, and the clinic
        // never sent it (a dead letter never reached Ocean).
        let clinic_completed = statuses
            .iter()
            .any(|u| u.task_status.as_deref() == Some("completed") && u.state != UpdateState::Dead);
        let mut closed_by_ocean = None;
        if summary.service_request_status.as_deref() == Some("completed") {
            let at = set_at(Part::ServiceRequest);
            if clinic_completed {
                terminals.push(Terminal {
                    state: "completed",
                    at,
                });
            } else {
                closed_by_ocean = Some(at);
                terminals.push(Terminal {
                    state: "closed by Ocean",
                    at,
                });
            }
        }
        match task {
            Some(("completed", at)) if !clinic_completed => {
                closed_by_ocean = closed_by_ocean.max(Some(at));
                terminals.push(Terminal {
                    state: "closed by Ocean",
                    at,
                });
            }
            Some(("completed", at)) => terminals.push(Terminal {
                state: "completed",
                at,
            }),
            Some(("rejected" | "cancelled", at)) => terminals.push(Terminal {
                state: "declined",
                at,
            }),
            _ => {}
        }
        if summary
            .task_business_status
            .as_deref()
            .is_some_and(|s| s.to_ascii_lowercase().contains("externally managed"))
        {
            terminals.push(Terminal {
                state: "externally managed",
                at: set_at(Part::Task),
            });
        }
        let terminal = terminals.into_iter().max_by_key(|t| t.at);

        // The current appointment: the clinic's last booking or cancellation, or Ocean's
        // Appointment, whichever was set later.
        let ocean_start = summary.appointment_start.as_deref().and_then(instant);
        let ocean_appointment = summary.appointment_status.as_deref().map(|status| {
            let at = set_at(Part::Appointment);
            let booked = (status == "booked").then_some(ocean_start).flatten();
            (booked.map(|start| (start, at)), at)
        });
        let clinic_appointment = statuses
            .iter()
            .rev()
            .find(|u| {
                matches!(
                    u.kind,
                    UpdateKind::Appointment | UpdateKind::CancelAppointment
                )
            })
            .map(|u| {
                let booked = (u.kind == UpdateKind::Appointment)
                    .then(|| {
                        u.appointment
                            .as_ref()
                            .map(|slot| (slot.start, u.created_at))
                    })
                    .flatten();
                (booked, u.created_at)
            });
        let booked = match (ocean_appointment, clinic_appointment) {
            (Some(o), Some(c)) => {
                if c.1 > o.1 {
                    c.0
                } else {
                    o.0
                }
            }
            (o, c) => o.or(c).and_then(|(booked, _)| booked),
        };
        let ocean_ever_booked = summary.appointment_status.as_deref().is_some_and(|s| {
            !matches!(s, "proposed" | "pending" | "waitlist" | "entered-in-error")
        });
        let last_appointment = statuses
            .iter()
            .filter_map(|u| u.appointment.as_ref().map(|slot| slot.start))
            .chain(ocean_start.filter(|_| ocean_ever_booked))
            .max();

        Self {
            arrived,
            sent,
            revoked,
            terminal,
            closed_by_ocean,
            acted_in_ocean: summary
                .task_status
                .as_deref()
                .is_some_and(|s| !NOT_ACTED.contains(&s))
                || summary.appointment_status.is_some(),
            ocean_task_at: summary.task_status.as_ref().map(|_| set_at(Part::Task)),
            clinic_statuses: statuses.iter().map(|u| u.created_at).collect(),
            clinic_updates: live.iter().map(|u| u.created_at).collect(),
            booked,
            last_appointment,
        }
    }
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

/// `ServiceRequest.authoredOn` as an instant: an RFC 3339 date-time, or a date (midnight UTC).
fn authored(summary: &Summary) -> Option<OffsetDateTime> {
    summary.authored_on.as_deref().and_then(instant)
}

fn instant(text: &str) -> Option<OffsetDateTime> {
    if let Ok(at) = OffsetDateTime::parse(text, &Rfc3339) {
        return Some(at);
    }
    let date = time::Date::parse(
        text,
        time::macros::format_description!("[year]-[month]-[day]"),
    );
    Some(date.ok()?.midnight().assume_utc())
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
