//! The summary of one delivery: the fields the API lists and the CSV export needs, which parts a
//! message carried, the documents it points to, and how a newer delivery's summary is completed
//! from an earlier one and compared with it.

use serde::{Deserialize, Serialize};

use super::Change;

/// Which parts of the summary a delivery carried. When a referral is updated, a part the new
/// delivery carried replaces the earlier one whole (an Appointment without a start clears the
/// start); a part it did not carry keeps its earlier values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Carried {
    pub service_request: bool,
    pub task: bool,
    pub appointment: bool,
    pub patient: bool,
    pub referrer: bool,
    pub recipient: bool,
    /// A Communication (a message between requester and performer).
    pub communication: bool,
}

/// One part of a referral a message may carry (see [`Carried`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    ServiceRequest,
    Task,
    Appointment,
    Patient,
    Referrer,
    Recipient,
    Communication,
}

impl Part {
    pub const ALL: [Part; 7] = [
        Part::ServiceRequest,
        Part::Task,
        Part::Appointment,
        Part::Patient,
        Part::Referrer,
        Part::Recipient,
        Part::Communication,
    ];
}

impl Carried {
    /// Whether the message carried `part`.
    pub fn has(&self, part: Part) -> bool {
        match part {
            Part::ServiceRequest => self.service_request,
            Part::Task => self.task,
            Part::Appointment => self.appointment,
            Part::Patient => self.patient,
            Part::Referrer => self.referrer,
            Part::Recipient => self.recipient,
            Part::Communication => self.communication,
        }
    }
}

/// A document a message points to: a `DocumentReference`'s first attachment (the referral
/// letter PDF, or an attachment added later).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DocumentLink {
    /// `DocumentReference.id`, else the id of a RESTful `fullUrl`, else its first identifier.
    pub id: Option<String>,
    /// `attachment.title`, else `DocumentReference.description`.
    pub title: Option<String>,
    /// `attachment.contentType` (a MIME type, e.g. `application/pdf`).
    pub content_type: Option<String>,
    /// `attachment.url`, where Ocean serves the bytes (absolute, or relative to Ocean's base).
    pub url: Option<String>,
    /// True when the bytes came inline (`attachment.data`), so the stored message holds them.
    pub inline: bool,
}

impl DocumentLink {
    /// What tells two links apart: the id, else the url, else the title.
    fn key(&self) -> Option<&str> {
        self.id
            .as_deref()
            .or(self.url.as_deref())
            .or(self.title.as_deref())
    }
}

/// What one delivery says about its referral: the fields the API lists and the CSV export needs.
///
/// Every field is optional because Ocean's messages vary (an update may carry only a Task);
/// when a referral is updated, fields a newer delivery leaves out keep their earlier value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Which parts this summary's source carried (for a referral: any of its versions).
    #[serde(default)]
    pub carried: Carried,
    pub service_request_status: Option<String>,
    pub task_status: Option<String>,
    pub task_status_reason: Option<String>,
    pub appointment_status: Option<String>,
    pub appointment_start: Option<String>,
    pub authored_on: Option<String>,
    pub patient_name: Option<String>,
    pub patient_phone: Option<String>,
    pub patient_email: Option<String>,
    pub referrer_name: Option<String>,
    pub referrer_professional_id: Option<String>,
    pub referring_site: Option<String>,
    pub recipient_listing: Option<String>,
    pub description: Option<String>,
    /// `ServiceRequest.note[].text`, as sent (Ocean sends HTML).
    #[serde(default)]
    pub notes: Vec<String>,
    /// Why the requester revoked the referral: an extension on `ServiceRequest.status` (as the
    /// pan-Canadian guide plans it), else `MessageHeader.reason.text` of a revocation.
    #[serde(default)]
    pub revocation_reason: Option<String>,
    /// The referral this one was split from (`ServiceRequest.replaces`/`basedOn` naming another
    /// referral by its `id-ereferral-reference` identifier or `ServiceRequest/{ref}`).
    #[serde(default)]
    pub split_from: Option<String>,
    /// Ocean's Task for the referral (`Task.id`): the relay's status updates name it.
    #[serde(default)]
    pub task_id: Option<String>,
    /// `Task.businessStatus` (text, else the first coding's display or code).
    #[serde(default)]
    pub task_business_status: Option<String>,
    /// The latest message between requester and performer (`Communication.payload[]
    /// .contentString`, joined by new lines), when it was sent and by whom.
    #[serde(default)]
    pub message_text: Option<String>,
    #[serde(default)]
    pub message_sent: Option<String>,
    #[serde(default)]
    pub message_sender: Option<String>,
    /// What the latest message was about; `None` for summaries stored by earlier builds.
    #[serde(default)]
    pub latest_change: Option<Change>,
    /// Every document the referral's messages pointed to, in the order first seen.
    #[serde(default)]
    pub documents: Vec<DocumentLink>,
}

impl Summary {
    /// The referral's status as shown to users: `revoked` once the requester revoked it (only
    /// the sender can cancel a referral, and that ends its workflow), else the Task's status
    /// once there is a Task, else the ServiceRequest's.
    pub fn status(&self) -> Option<&str> {
        if self.service_request_status.as_deref() == Some("revoked") {
            return Some("revoked");
        }
        self.task_status
            .as_deref()
            .or(self.service_request_status.as_deref())
    }

    /// Whether this summary already lists `document` (by id, else url, else title).
    fn knows(&self, document: &DocumentLink) -> bool {
        self.documents
            .iter()
            .any(|d| d.key().is_some() && d.key() == document.key())
    }

    /// What a generic update (`notify-update-service-request`, `notify-update-status`: read as
    /// [`Change::Updated`]) changed in the referral `earlier` describes, in this order: a
    /// document it did not have, a split it did not know, the Task (status, business status or
    /// id), the Appointment (status or start); else nothing this summary tracks.
    pub fn refined_change(&self, earlier: &Summary) -> Change {
        let task_moved = self.task_status != earlier.task_status
            || self.task_business_status != earlier.task_business_status
            || (self.task_id.is_some() && self.task_id != earlier.task_id);
        let appointment_moved = self.appointment_status != earlier.appointment_status
            || self.appointment_start != earlier.appointment_start;
        if self.documents.iter().any(|d| !earlier.knows(d)) {
            Change::AttachmentAdded
        } else if self.split_from.is_some() && self.split_from != earlier.split_from {
            Change::ReferralSplit
        } else if self.carried.task && task_moved {
            Change::TaskUpdated
        } else if self.carried.appointment && appointment_moved {
            Change::AppointmentUpdated
        } else {
            Change::Updated
        }
    }

    /// Sets `part`'s fields to `from`'s.
    pub fn take_part(&mut self, part: Part, from: &Summary) {
        match part {
            Part::ServiceRequest => {
                self.service_request_status
                    .clone_from(&from.service_request_status);
                self.revocation_reason.clone_from(&from.revocation_reason);
            }
            Part::Task => {
                self.task_status.clone_from(&from.task_status);
                self.task_status_reason.clone_from(&from.task_status_reason);
                self.task_business_status
                    .clone_from(&from.task_business_status);
            }
            Part::Appointment => {
                self.appointment_status.clone_from(&from.appointment_status);
                self.appointment_start.clone_from(&from.appointment_start);
            }
            Part::Patient => {
                self.patient_name.clone_from(&from.patient_name);
                self.patient_phone.clone_from(&from.patient_phone);
                self.patient_email.clone_from(&from.patient_email);
            }
            Part::Referrer => {
                self.referrer_name.clone_from(&from.referrer_name);
                self.referrer_professional_id
                    .clone_from(&from.referrer_professional_id);
                self.referring_site.clone_from(&from.referring_site);
            }
            Part::Recipient => self.recipient_listing.clone_from(&from.recipient_listing),
            Part::Communication => {
                self.message_text.clone_from(&from.message_text);
                self.message_sent.clone_from(&from.message_sent);
                self.message_sender.clone_from(&from.message_sender);
            }
        }
    }

    /// Completes a newer delivery's summary with what `earlier` knew, part by part: a part the
    /// newer one did not carry is taken from `earlier` whole; the referral's own text is kept
    /// field by field. A generic update's [`Change`] is refined by what it changed.
    pub fn fill_from(&mut self, earlier: &Summary) {
        let (new, old) = (self.carried, earlier.carried);
        if self.latest_change == Some(Change::Updated) {
            self.latest_change = Some(self.refined_change(earlier));
        }
        for part in Part::ALL {
            if !new.has(part) {
                self.take_part(part, earlier);
            }
        }
        if self.split_from.is_none() {
            self.split_from.clone_from(&earlier.split_from);
        }
        // Documents accumulate: an update names the attachment it adds, not the letter again.
        let added: Vec<DocumentLink> = self
            .documents
            .drain(..)
            .filter(|d| !earlier.knows(d))
            .collect();
        self.documents = earlier.documents.clone();
        self.documents.extend(added);
        // The referral's own text (its date, description and note) is kept when a later
        // ServiceRequest leaves it out: update messages often carry a trimmed ServiceRequest,
        // and the backup must not lose the referral note.
        if self.authored_on.is_none() {
            self.authored_on.clone_from(&earlier.authored_on);
        }
        if self.description.is_none() {
            self.description.clone_from(&earlier.description);
        }
        if self.notes.is_empty() {
            self.notes.clone_from(&earlier.notes);
        }
        // Ocean's Task keeps its id; a Task without one does not forget it.
        if self.task_id.is_none() {
            self.task_id.clone_from(&earlier.task_id);
        }
        self.carried = Carried {
            service_request: new.service_request || old.service_request,
            task: new.task || old.task,
            appointment: new.appointment || old.appointment,
            patient: new.patient || old.patient,
            referrer: new.referrer || old.referrer,
            recipient: new.recipient || old.recipient,
            communication: new.communication || old.communication,
        };
    }
}

/// One summary field that differs between two summaries: its JSON name and both values (`null`
/// where a side has none).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldChange {
    pub field: String,
    pub before: serde_json::Value,
    pub after: serde_json::Value,
}

impl Summary {
    /// The fields (by their JSON names, in alphabetical order) whose values differ from
    /// `before`'s; with no `before`, every field this summary sets. `carried` and
    /// `latest_change` describe the message rather than the referral and are left out; an empty
    /// list reads as no value.
    pub fn differences(&self, before: Option<&Summary>) -> Vec<FieldChange> {
        use serde_json::Value;
        let fields = |s: Option<&Summary>| -> serde_json::Map<String, Value> {
            match s.map(serde_json::to_value) {
                Some(Ok(Value::Object(map))) => map,
                _ => serde_json::Map::new(),
            }
        };
        let absent = |v: &Value| v.is_null() || v.as_array().is_some_and(Vec::is_empty);
        let (now, then) = (fields(Some(self)), fields(before));
        now.into_iter()
            .filter(|(field, _)| field != "carried" && field != "latest_change")
            .filter_map(|(field, after)| {
                let before = then.get(&field).cloned().unwrap_or(Value::Null);
                let same = before == after || (absent(&before) && absent(&after));
                (!same).then_some(FieldChange {
                    field,
                    before,
                    after,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_update_replaces_the_parts_it_carries_and_keeps_the_others() {
        let earlier = Summary {
            carried: Carried {
                patient: true,
                task: true,
                appointment: true,
                ..Carried::default()
            },
            patient_name: Some("A".into()),
            task_status: Some("requested".into()),
            task_status_reason: Some("triage".into()),
            appointment_status: Some("booked".into()),
            appointment_start: Some("2026-12-03T14:30:00-05:00".into()),
            ..Summary::default()
        };
        let mut newer = Summary {
            carried: Carried {
                task: true,
                appointment: true,
                ..Carried::default()
            },
            task_status: Some("accepted".into()),
            appointment_status: Some("proposed".into()),
            ..Summary::default()
        };
        newer.fill_from(&earlier);
        assert_eq!(newer.patient_name.as_deref(), Some("A"));
        assert_eq!(newer.task_status.as_deref(), Some("accepted"));
        // Carried parts are replaced whole: no stale reason, no start of a cancelled booking.
        assert_eq!(newer.task_status_reason, None);
        assert_eq!(newer.appointment_status.as_deref(), Some("proposed"));
        assert_eq!(newer.appointment_start, None);
        assert!(newer.carried.patient && newer.carried.task && !newer.carried.referrer);

        // A trimmed ServiceRequest in an update keeps the referral note and description.
        let with_note = Summary {
            carried: Carried {
                service_request: true,
                ..Carried::default()
            },
            notes: vec!["the note".into()],
            description: Some("Cardiology".into()),
            ..Summary::default()
        };
        let mut trimmed = Summary {
            carried: Carried {
                service_request: true,
                ..Carried::default()
            },
            service_request_status: Some("revoked".into()),
            ..Summary::default()
        };
        trimmed.fill_from(&with_note);
        assert_eq!(trimmed.notes, vec!["the note".to_string()]);
        assert_eq!(trimmed.description.as_deref(), Some("Cardiology"));
        assert_eq!(trimmed.service_request_status.as_deref(), Some("revoked"));
    }

    #[test]
    fn a_generic_update_is_named_by_what_it_changed() {
        let task = |status: &str| Summary {
            carried: Carried {
                task: true,
                ..Carried::default()
            },
            task_status: Some(status.into()),
            latest_change: Some(Change::Updated),
            ..Summary::default()
        };
        let earlier = task("accepted");
        let cases = [
            (task("accepted"), Change::Updated),
            (task("in-progress"), Change::TaskUpdated),
            (
                Summary {
                    documents: vec![DocumentLink {
                        id: Some("d2".into()),
                        ..DocumentLink::default()
                    }],
                    ..task("in-progress")
                },
                Change::AttachmentAdded,
            ),
            (
                Summary {
                    split_from: Some("R-0".into()),
                    ..task("accepted")
                },
                Change::ReferralSplit,
            ),
            (
                Summary {
                    carried: Carried {
                        appointment: true,
                        ..Carried::default()
                    },
                    appointment_status: Some("booked".into()),
                    latest_change: Some(Change::Updated),
                    ..Summary::default()
                },
                Change::AppointmentUpdated,
            ),
            // A change named by its event is kept.
            (
                Summary {
                    latest_change: Some(Change::DataCorrected),
                    ..task("in-progress")
                },
                Change::DataCorrected,
            ),
        ];
        for (mut newer, expected) in cases {
            newer.fill_from(&earlier);
            assert_eq!(newer.latest_change, Some(expected), "{newer:?}");
        }
    }
}
