//! The referral's Task as the outbox sees it: its current status (what a status change is
//! checked against) and the state a referral's updates leave.

use crate::store::{ReferralRecord, TaskState, UpdateKind, UpdateRecord};

/// `ServiceRequest.status` of a referral the requester cancelled.
pub(super) const REVOKED: &str = "revoked";
/// `ServiceRequest.status` (and Task status) of a referral whose work is done.
const COMPLETED: &str = "completed";

/// The referral's current Task status: `revoked` once the requester revoked the referral (the
/// transition table has no way out of it), `completed` once Ocean's ServiceRequest is, else the newer of what the relay last sent and what
/// Ocean last said (a referral can also be declined or reopened in Ocean's own screens);
/// `requested` when neither said anything.
pub(super) fn current_status(task: &TaskState, referral: &ReferralRecord) -> String {
    if referral.summary.service_request_status.as_deref() == Some(REVOKED) {
        return REVOKED.into();
    }
    // Ocean closed the ServiceRequest itself: the referral's work is over, as for a Task.
    if referral.summary.service_request_status.as_deref() == Some(COMPLETED) {
        return COMPLETED.into();
    }
    let ours_is_newer = task
        .status_set_at
        .is_some_and(|at| at >= referral.modified_at);
    let current = if ours_is_newer {
        task.status.clone()
    } else {
        referral.summary.task_status.clone().or(task.status.clone())
    };
    current.unwrap_or_else(|| "requested".into())
}

/// The Task state a referral's `updates` (in the order they were accepted) leave, for a Task
/// with id `task_id` (the one already chosen, if any).
///
/// Updates stored by builds that did not record the appointment of an appointment update leave
/// no current appointment.
pub fn task_state<'a>(
    task_id: Option<String>,
    updates: impl IntoIterator<Item = &'a UpdateRecord>,
) -> TaskState {
    let mut task = TaskState {
        task_id,
        ..TaskState::default()
    };
    for update in updates {
        match update.kind {
            UpdateKind::Status | UpdateKind::Forward => {
                task.status.clone_from(&update.task_status);
                task.status_set_at = Some(update.created_at);
                task.task_sent = true;
                if update.task_id.is_some() {
                    task.task_id.clone_from(&update.task_id);
                }
            }
            UpdateKind::Appointment => task.set_appointment(update.appointment.as_ref()),
            UpdateKind::CancelAppointment => task.set_appointment(None),
            UpdateKind::Message | UpdateKind::BookingInstructions | UpdateKind::Correction => {}
        }
    }
    task
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::OffsetDateTime;

    use crate::domain::ReferralRef;
    use crate::ig::OutboundEvent;
    use crate::store::{AppointmentSlot, UpdateState};

    fn update(id: u64, kind: UpdateKind) -> UpdateRecord {
        let at = OffsetDateTime::from_unix_timestamp(1_700_000_000 + i64::try_from(id).unwrap())
            .unwrap();
        let referral = ReferralRef::parse("ref-1").unwrap();
        let event = OutboundEvent::NotifyUpdateProcessRequest;
        UpdateRecord {
            id,
            state: UpdateState::Delivered,
            ..UpdateRecord::pending(referral, "main".into(), kind, event, "{}".into(), at)
        }
    }

    fn status(id: u64, status: &str) -> UpdateRecord {
        UpdateRecord {
            task_status: Some(status.into()),
            task_id: Some("task-1".into()),
            ..update(id, UpdateKind::Status)
        }
    }

    fn booking(id: u64, slot: &str) -> UpdateRecord {
        let start = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        UpdateRecord {
            appointment: Some(AppointmentSlot {
                id: slot.into(),
                start,
                end: start + time::Duration::minutes(30),
            }),
            ..update(id, UpdateKind::Appointment)
        }
    }

    #[test]
    fn the_task_state_follows_the_updates_in_order() {
        let updates = [
            status(1, "accepted"),
            booking(2, "a1"),
            update(3, UpdateKind::Message),
            booking(4, "a2"),
            status(5, "in-progress"),
        ];
        let task = task_state(None, &updates);
        assert_eq!(task.status.as_deref(), Some("in-progress"));
        assert_eq!(task.status_set_at, Some(updates[4].created_at));
        assert!(task.task_sent);
        assert_eq!(task.task_id.as_deref(), Some("task-1"));
        assert_eq!(task.appointment(), updates[3].appointment);
    }

    #[test]
    fn a_cancellation_leaves_no_appointment_and_nothing_leaves_the_default() {
        let updates = [booking(1, "a1"), update(2, UpdateKind::CancelAppointment)];
        let task = task_state(Some("task-0".into()), &updates);
        assert_eq!(task.appointment(), None);
        assert!(!task.task_sent);
        assert_eq!(task.task_id.as_deref(), Some("task-0"));
        assert_eq!(task_state(None, &[]), TaskState::default());
    }
}
