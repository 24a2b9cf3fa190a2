//! The watch-list: the referrals that need a person's attention, computed from what is stored
//! (each referral's record and the updates the clinic sent through the outbox; no table of its
//! own). `/api/v1/watch-list`, the console's watch-list page and the weekly summary alert all
//! read it through [`watch_list`].
//!
//! What the store knows, and what each rule reads of it:
//!
//! - **Ocean's side** is the referral's [`ReferralRecord`]: its merged [`Summary`]
//!   (ServiceRequest status, Task status and business status, the Appointment's status and
//!   start) and, for each part, when the message that last set it says it was made
//!   ([`PartTimes`](crate::store::PartTimes); the referral's modification time where a message
//!   carried no time). The referral *arrived* at `created_at` (its first version) and was
//!   *sent* at `authored_on` (the ServiceRequest's, when it reads as a date) or on arrival,
//!   whichever is earlier.
//! - **The clinic's side** is the referral's updates for Ocean ([`referral_updates`]): each
//!   with its kind (status, appointment, cancellation, message), the Task status or appointment
//!   it carried, and when it was accepted. A discarded update (a dead letter an operator gave
//!   up on) told Ocean nothing and counts for nothing; a message to the referrer is not a
//!   status.
//! - Where both sides set the same thing (the Task status, the current appointment), the one
//!   set later is taken.
//!
//! Ocean's terminal states are Completed (Task or ServiceRequest `completed`), Cancelled (the
//! requester revoked the ServiceRequest), Declined (Task `rejected` or `cancelled`) and
//! Externally Managed (read from the Task's business status: Ocean does not document how it
//! sends it, so this is inferred).

use std::collections::BTreeMap;

use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};

use crate::auth::scope::Scope;
use crate::config::WatchListConfig;
use crate::domain::{Part, ReferralRef, ServiceId, Summary};
use crate::store::{
    ReferralRecord, Store, StoreError, UpdateKind, UpdateRecord, UpdateState, referral_updates,
};

/// Referrals read from the store at a time: the scan holds one batch and the entries found.
const BATCH: usize = 500;

/// Ocean archives a referral no sooner than this long after it was sent.
const ARCHIVED_AFTER_SENDING: Duration = Duration::days(365);
/// ... nor sooner than this long after its terminal status, or its last appointment.
const ARCHIVED_AFTER_TERMINAL: Duration = Duration::days(30);
const ARCHIVED_AFTER_APPOINTMENT: Duration = Duration::days(30);

/// Why a referral is on the watch-list. Serialised as the snake_case name (`nearing_archival`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WatchKind {
    /// No status from the clinic `overdue_days` (per service) after the referral arrived: no
    /// update sent through the relay, and nothing from Ocean showing the clinic acted there
    /// (a Task past `requested`/`received`, or an Appointment). Referrals in a terminal state
    /// are never overdue.
    Overdue,
    /// The appointment booked last (by the clinic through the relay, or an Appointment
    /// `booked` from Ocean, whichever was set later) has started, and neither side has set a
    /// status since: no update from the clinic, no Task from Ocean after its start.
    AppointmentPassed,
    /// The requester revoked the referral after the clinic had sent it a status (an update
    /// accepted before the revocation), and the clinic has sent nothing since (a message to
    /// the referrer or a cancelled appointment takes it off the list).
    RevokedAfterAction,
    /// Ocean will archive the referral within `archival_warning_days`: see
    /// [`archival_date`].
    NearingArchival,
}

impl WatchKind {
    pub const ALL: [WatchKind; 4] = [
        WatchKind::Overdue,
        WatchKind::AppointmentPassed,
        WatchKind::RevokedAfterAction,
        WatchKind::NearingArchival,
    ];

    /// The name as serialised and as `?kind=` takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Overdue => "overdue",
            Self::AppointmentPassed => "appointment_passed",
            Self::RevokedAfterAction => "revoked_after_action",
            Self::NearingArchival => "nearing_archival",
        }
    }

    /// The kind named `name`, if one is.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

impl std::fmt::Display for WatchKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One referral that needs attention, and why. Identifiers, statuses and dates only: never a
/// patient field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEntry {
    pub referral: ReferralRef,
    /// `None`: unassigned.
    pub service_id: Option<ServiceId>,
    pub kind: WatchKind,
    /// When the condition began: the day the referral became overdue, the appointment's
    /// start, the revocation, or (nearing archival) when it reached its terminal state.
    pub since: OffsetDateTime,
    /// Nearing archival: the day Ocean will archive it.
    pub archival_at: Option<OffsetDateTime>,
    /// The reason in words, with the dates and identifiers it rests on.
    pub reason: String,
}

/// How many entries of each kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct WatchCounts {
    pub overdue: usize,
    pub appointment_passed: usize,
    pub revoked_after_action: usize,
    pub nearing_archival: usize,
}

impl WatchCounts {
    /// The count of `kind`.
    pub fn get(&self, kind: WatchKind) -> usize {
        match kind {
            WatchKind::Overdue => self.overdue,
            WatchKind::AppointmentPassed => self.appointment_passed,
            WatchKind::RevokedAfterAction => self.revoked_after_action,
            WatchKind::NearingArchival => self.nearing_archival,
        }
    }

    fn slot(&mut self, kind: WatchKind) -> &mut usize {
        match kind {
            WatchKind::Overdue => &mut self.overdue,
            WatchKind::AppointmentPassed => &mut self.appointment_passed,
            WatchKind::RevokedAfterAction => &mut self.revoked_after_action,
            WatchKind::NearingArchival => &mut self.nearing_archival,
        }
    }

    pub fn total(&self) -> usize {
        WatchKind::ALL.into_iter().map(|k| self.get(k)).sum()
    }
}

/// The watch-list at one moment: its entries, by kind (in [`WatchKind::ALL`]'s order), then by
/// `since`, then by referral.
#[derive(Debug, Clone)]
pub struct WatchList {
    pub entries: Vec<WatchEntry>,
    /// The moment it was computed for.
    pub at: OffsetDateTime,
    /// Referrals looked at (those the filter's scope and service let through).
    pub scanned: u64,
}

impl WatchList {
    /// How many entries of each kind.
    pub fn counts(&self) -> WatchCounts {
        let mut counts = WatchCounts::default();
        for entry in &self.entries {
            *counts.slot(entry.kind) += 1;
        }
        counts
    }
}

/// Which entries to list; the default lists every entry of every referral.
#[derive(Debug, Clone, Default)]
pub struct WatchFilter {
    /// Only this kind.
    pub kind: Option<WatchKind>,
    /// Only referrals filed under this External Service ID.
    pub service_id: Option<ServiceId>,
    /// Only referrals this caller may see (an API client's or console user's scope).
    pub scope: Option<Scope>,
}

/// The watch-list at `now`: every stored referral `filter` lets through, read a batch at a time
/// (memory holds one batch and the entries), with the clinic's updates of each.
///
/// # Errors
/// The store's.
pub async fn watch_list(
    store: &dyn Store,
    config: &WatchListConfig,
    now: OffsetDateTime,
    filter: &WatchFilter,
) -> Result<WatchList, StoreError> {
    let mut list = WatchList {
        entries: Vec::new(),
        at: now,
        scanned: 0,
    };
    let mut after = None;
    loop {
        let batch = store.referrals_modified(None, None, after, BATCH).await?;
        for record in &batch.referrals {
            let visible = filter.scope.as_ref().is_none_or(|s| s.sees(record))
                && filter
                    .service_id
                    .as_ref()
                    .is_none_or(|s| record.service_id.as_ref() == Some(s));
            if !visible {
                continue;
            }
            list.scanned += 1;
            let updates = referral_updates(store, &record.referral).await?;
            list.entries.extend(
                assess(record, &updates, config, now)
                    .into_iter()
                    .filter(|e| filter.kind.is_none_or(|k| e.kind == k)),
            );
        }
        match batch.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    list.entries.sort_by(|a, b| {
        (a.kind, a.since, a.referral.as_str()).cmp(&(b.kind, b.since, b.referral.as_str()))
    });
    Ok(list)
}

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
    /// `completed`, `cancelled by the requester`, `declined` or `externally managed`.
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
        if summary.service_request_status.as_deref() == Some("completed") {
            terminals.push(Terminal {
                state: "completed",
                at: set_at(Part::ServiceRequest),
            });
        }
        match task {
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

/// The counts by kind as a map of names, for messages that list them (the weekly summary).
pub fn counts_by_name(counts: &WatchCounts) -> BTreeMap<&'static str, usize> {
    WatchKind::ALL
        .into_iter()
        .map(|k| (k.as_str(), counts.get(k)))
        .collect()
}
