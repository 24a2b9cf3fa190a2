//! What both sides say of one referral's progress: Ocean's messages (its merged record) and
//! the clinic's updates sent through the relay, read into [`Facts`] (sent, revoked, terminal,
//! booked, ...). The watch-list's rules and the outbox's check of a `completed` status read the
//! same facts, so they never disagree about whether a referral is booked or closed.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::domain::{Part, Summary};
use crate::store::{ReferralRecord, UpdateKind, UpdateRecord, UpdateState};

/// A terminal state, and when the referral reached it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Terminal {
    /// `completed`, `closed by Ocean` (completed in Ocean without the clinic completing it
    /// through the relay), `cancelled by the requester`, `declined` or `externally managed`.
    pub state: &'static str,
    pub at: OffsetDateTime,
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

/// `ServiceRequest.authoredOn` as an instant: an RFC 3339 date-time, or a date (midnight UTC).
fn authored(summary: &Summary) -> Option<OffsetDateTime> {
    summary.authored_on.as_deref().and_then(instant)
}

pub(crate) fn instant(text: &str) -> Option<OffsetDateTime> {
    if let Ok(at) = OffsetDateTime::parse(text, &Rfc3339) {
        return Some(at);
    }
    let date = time::Date::parse(
        text,
        time::macros::format_description!("[year]-[month]-[day]"),
    );
    Some(date.ok()?.midnight().assume_utc())
}
