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
//! A Task `completed` from Ocean that the clinic never sent through the relay is labelled
//! Ocean's (`closed by Ocean`): Ocean closes booked referrals itself, and such an update
//! reaches the relay although the clinic did not cause it.
//!
//! Ocean's terminal states are Completed (Task or ServiceRequest `completed`), Cancelled (the
//! requester revoked the ServiceRequest), Declined (Task `rejected` or `cancelled`) and
//! Externally Managed (read from the Task's business status: Ocean does not document how it
//! sends it, so this is inferred).

mod rules;

use serde::Serialize;
use time::OffsetDateTime;

use crate::auth::scope::Scope;
use crate::config::WatchListConfig;
use crate::domain::{ReferralRef, ServiceId};
pub use crate::progress::{Facts, Terminal};
pub use rules::{Archival, archival_date, assess};

use crate::store::{Store, StoreError, referral_updates};

/// Referrals read from the store at a time: the scan holds one batch and the entries found.
const BATCH: usize = 500;

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
    /// Ocean closed the referral as completed within the last `closed_by_ocean_days` although
    /// the clinic never completed it through the relay (Ocean's nightly closing of booked
    /// referrals, or someone in Ocean's own screens), and the clinic has sent nothing since:
    /// someone should check the patient was seen.
    ClosedByOcean,
}

impl WatchKind {
    pub const ALL: [WatchKind; 5] = [
        WatchKind::Overdue,
        WatchKind::AppointmentPassed,
        WatchKind::RevokedAfterAction,
        WatchKind::NearingArchival,
        WatchKind::ClosedByOcean,
    ];

    /// The name as serialised and as `?kind=` takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Overdue => "overdue",
            Self::AppointmentPassed => "appointment_passed",
            Self::RevokedAfterAction => "revoked_after_action",
            Self::NearingArchival => "nearing_archival",
            Self::ClosedByOcean => "closed_by_ocean",
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
    pub closed_by_ocean: usize,
}

impl WatchCounts {
    /// The count of `kind`.
    pub fn get(&self, kind: WatchKind) -> usize {
        match kind {
            WatchKind::Overdue => self.overdue,
            WatchKind::AppointmentPassed => self.appointment_passed,
            WatchKind::RevokedAfterAction => self.revoked_after_action,
            WatchKind::NearingArchival => self.nearing_archival,
            WatchKind::ClosedByOcean => self.closed_by_ocean,
        }
    }

    fn slot(&mut self, kind: WatchKind) -> &mut usize {
        match kind {
            WatchKind::Overdue => &mut self.overdue,
            WatchKind::AppointmentPassed => &mut self.appointment_passed,
            WatchKind::RevokedAfterAction => &mut self.revoked_after_action,
            WatchKind::NearingArchival => &mut self.nearing_archival,
            WatchKind::ClosedByOcean => &mut self.closed_by_ocean,
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
