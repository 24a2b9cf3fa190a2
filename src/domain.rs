//! The shared vocabulary: validated identifiers and the summary of one delivery.
//!
//! Each identifier is a newtype with a fallible constructor and a private field, so a value that
//! reaches the store or a key has already been checked once (parse, don't validate).

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a string was refused as an identifier.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvalidId {
    #[error("{kind} is empty")]
    Empty { kind: &'static str },
    #[error("{kind} is longer than {max} characters")]
    TooLong { kind: &'static str, max: usize },
    #[error("{kind} contains a control character")]
    ControlCharacter { kind: &'static str },
    #[error("{kind} may only contain letters, digits, '-' and '_'")]
    BadCharacter { kind: &'static str },
}

/// True for short tokens made of ASCII letters, digits, `-`, `_` and `.`: the shape of a FHIR
/// code or a configured name. Only such tokens from a request are echoed in error messages.
pub fn is_code_like(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= 64
        && token
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// An error message (serde's, figment's) with the values it quotes removed: `"..."` strings become
/// `"…"`, and `` `...` `` spans survive only when they look like a code (an unknown status is
/// worth seeing; a name, a date or a secret is not).
pub fn redact_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(start) = rest.find(['"', '`']) {
        let quote = rest[start..].chars().next().unwrap_or('"');
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let Some(len) = after.find(quote) else {
            out.push(quote);
            out.push('…');
            return out;
        };
        let inner = &after[..len];
        out.push(quote);
        out.push_str(if quote == '`' && is_code_like(inner) {
            inner
        } else {
            "…"
        });
        out.push(quote);
        rest = &after[len + 1..];
    }
    out.push_str(rest);
    out
}

/// Checks the rules every identifier shares: trimmed, non-empty, bounded, no control characters
/// (which also keeps the NUL byte that separates key parts out of every key).
fn check_text(kind: &'static str, value: &str, max: usize) -> Result<String, InvalidId> {
    let value = value.trim();
    if value.is_empty() {
        return Err(InvalidId::Empty { kind });
    }
    if value.chars().count() > max {
        return Err(InvalidId::TooLong { kind, max });
    }
    if value.chars().any(char::is_control) {
        return Err(InvalidId::ControlCharacter { kind });
    }
    Ok(value.to_owned())
}

macro_rules! text_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $max:literal) => {
        text_id!($(#[$doc])* $name, $kind, $max, |_: &str| true);
    };
    ($(#[$doc:meta])* $name:ident, $kind:literal, $max:literal, $allowed:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Checks `value` and wraps it; surrounding white space is dropped.
            pub fn parse(value: &str) -> Result<Self, InvalidId> {
                let value = check_text($kind, value, $max)?;
                if !($allowed)(value.as_str()) {
                    return Err(InvalidId::BadCharacter { kind: $kind });
                }
                Ok(Self(value))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(d)?;
                Self::parse(&raw).map_err(serde::de::Error::custom)
            }
        }
    };
}

text_id!(
    /// Ocean's reference for a referral (`id-ereferral-reference`), e.g. `TST-0011-AAAA`.
    ReferralRef,
    "referral reference",
    256
);
/// `text` as one URL path segment (RFC 3986): every byte but the unreserved characters
/// percent-encoded, and `.` too when `text` is only dots (a dot-segment, which every URL parser
/// would remove).
pub fn path_segment(text: &str) -> String {
    use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
    const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'~')
        .remove(b'.');
    const UNRESERVED_BUT_DOTS: &AsciiSet = &UNRESERVED.add(b'.');
    let dots_only = text.bytes().all(|b| b == b'.');
    let set = if dots_only {
        UNRESERVED_BUT_DOTS
    } else {
        UNRESERVED
    };
    utf8_percent_encode(text, set).to_string()
}

/// The longest file-name stem made from a ref, in bytes, before its hash is added.
const MAX_STEM: usize = 64;

impl ReferralRef {
    /// The ref as one URL path segment: see [`path_segment`]. Every link and redirect made
    /// from a ref uses this.
    pub fn path_segment(&self) -> String {
        path_segment(&self.0)
    }

    /// The ref as the start of a file, folder or ZIP entry name, and inside a quoted
    /// `Content-Disposition` parameter (RFC 6266): the ref itself when it is made of ASCII
    /// letters, digits, `-`, `_` and `.`, is at most 64 bytes, does not start or end with `.`,
    /// and is not a name Windows reserves (`CON`, `PRN`, `AUX`, `NUL`, `COM1`..`COM9`,
    /// `LPT1`..`LPT9`, with or without an extension); otherwise those characters (others as
    /// `_`, at most 64 bytes) then `-` and the first 12 hex digits of the ref's SHA-256, so refs
    /// that read alike once made safe still get names of their own. Every name made from a ref
    /// uses this.
    pub fn file_stem(&self) -> String {
        let safe: String = self
            .0
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let base = safe
            .split('.')
            .next()
            .unwrap_or_default()
            .to_ascii_uppercase();
        let reserved = matches!(base.as_str(), "CON" | "PRN" | "AUX" | "NUL")
            || (base.len() == 4
                && (base.starts_with("COM") || base.starts_with("LPT"))
                && matches!(base.as_bytes()[3], b'1'..=b'9'));
        // A ref that reads like a hashed stem (`-` and 12 hex digits at its end) is hashed
        // itself, so it never names the same file as the ref whose stem it looks like.
        let looks_hashed = safe.len() > 13
            && safe.as_bytes()[safe.len() - 13] == b'-'
            && safe[safe.len() - 12..]
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if safe == self.0
            && !looks_hashed
            && safe.len() <= MAX_STEM
            && !safe.starts_with('.')
            && !safe.ends_with('.')
            && !reserved
        {
            return safe;
        }
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, self.0.as_bytes());
        let hash = hex::encode(&digest.as_ref()[..6]);
        let start = safe.trim_start_matches('.');
        format!("{}-{hash}", &start[..start.len().min(MAX_STEM)])
    }
}

text_id!(
    /// The External Service ID an admin typed on a directory listing: the key deliveries are
    /// filed under.
    ServiceId,
    "External Service ID",
    256
);
text_id!(
    /// A message event code such as `add-service-request`. Unknown codes are valid: they are
    /// stored, not rejected.
    EventCode,
    "event code",
    128
);

text_id!(
    /// The name of a configured integration; it appears in the webhook URL, so it is restricted
    /// to URL-safe characters.
    IntegrationName,
    "integration name",
    64,
    |v: &str| v.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
);

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

/// What Ocean's latest message about a referral was about, read from its event code and what it
/// carried (Ocean's update messages do not say what changed). Serialised as the kebab-case code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Change {
    /// `add-service-request`: a new referral.
    NewReferral,
    /// `revoke-service-request`, or an update whose ServiceRequest is `revoked`: the sender
    /// cancelled the referral.
    Revoked,
    /// A Task came (`notify-add-process-request`, `notify-update-process-request`), or a generic
    /// update changed the Task's status, business status or id.
    TaskUpdated,
    /// An Appointment came (`notify-add-appointment`, `notify-update-appointment`, or a
    /// process-request event carrying an Appointment, as CA:eReC 1.1.0 sends it), or a generic
    /// update changed the Appointment's status or start.
    AppointmentUpdated,
    /// `notify-data-correction` or `update-patient-data`: earlier data was corrected.
    DataCorrected,
    /// `send-communication-from-requester` (or `send-communication-to-provider`).
    MessageFromRequester,
    /// `send-communication-from-provider`: a message from the receiving side (Ocean echoes
    /// the clinic's own messages too).
    MessageFromProvider,
    /// A generic update carrying a DocumentReference the referral did not have before, or
    /// saying so in `MessageHeader.reason`.
    AttachmentAdded,
    /// The referral was split: a new referral whose ServiceRequest `replaces` (or is `basedOn`)
    /// another, a generic update that first names such a referral, or `MessageHeader.reason`
    /// says so.
    ReferralSplit,
    /// A generic update (`notify-update-service-request`, `notify-update-status`) that changed
    /// none of the above.
    Updated,
    /// An event code the relay does not know (stored all the same).
    Other,
}

impl Change {
    /// The code as serialised (`attachment-added`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NewReferral => "new-referral",
            Self::Revoked => "revoked",
            Self::TaskUpdated => "task-updated",
            Self::AppointmentUpdated => "appointment-updated",
            Self::DataCorrected => "data-corrected",
            Self::MessageFromRequester => "message-from-requester",
            Self::MessageFromProvider => "message-from-provider",
            Self::AttachmentAdded => "attachment-added",
            Self::ReferralSplit => "referral-split",
            Self::Updated => "updated",
            Self::Other => "other",
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
    fn refined_change(&self, earlier: &Summary) -> Change {
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
    fn identifiers_are_trimmed_and_checked() {
        assert_eq!(ReferralRef::parse("  TST-1 ").unwrap().as_str(), "TST-1");
        let r = |s: &str| ReferralRef::parse(s).unwrap();
        assert_eq!(r("TST-0011.A_b~").path_segment(), "TST-0011.A_b~");
        assert_eq!(r("a/b c?#%\\").path_segment(), "a%2Fb%20c%3F%23%25%5C");
        assert_eq!(r("..").path_segment(), "%2E%2E");
        assert_eq!(r("...").path_segment(), "%2E%2E%2E");
        assert_eq!(r("a..b").path_segment(), "a..b");
        assert_eq!(r("TST-0011-AAAA").file_stem(), "TST-0011-AAAA");
        for unsafe_ref in [
            "evil.html\"; x=\"",
            "a/../b",
            "CON",
            "aux.pdf",
            "Com7",
            "lpt1",
            "name.",
            ".hidden",
            "..",
            &"x".repeat(250),
        ] {
            let stem = r(unsafe_ref).file_stem();
            assert_ne!(stem, unsafe_ref);
            assert!(stem.len() <= 64 + 13, "{stem}");
            assert!(
                stem.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')),
                "{stem}"
            );
            assert!(!stem.starts_with('.') && !stem.ends_with('.'), "{stem}");
        }
        assert_ne!(r("a/b").file_stem(), r("a_b").file_stem());
        let hashed = r("X/Y").file_stem();
        assert_ne!(r(&hashed).file_stem(), hashed);
        assert_ne!(r("a/b").file_stem(), r("a?b").file_stem());
        assert_eq!(r("COM0").file_stem(), "COM0");
        assert!(matches!(
            ReferralRef::parse(" "),
            Err(InvalidId::Empty { .. })
        ));
        assert!(matches!(
            ServiceId::parse("a\0b"),
            Err(InvalidId::ControlCharacter { .. })
        ));
        assert!(matches!(
            EventCode::parse(&"x".repeat(129)),
            Err(InvalidId::TooLong { .. })
        ));
        assert!(IntegrationName::parse("ocean-main_2").is_ok());
        assert!(matches!(
            IntegrationName::parse("a/b"),
            Err(InvalidId::BadCharacter { .. })
        ));
    }

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

    #[test]
    fn code_like_tokens() {
        assert!(is_code_like("add-service-request"));
        assert!(is_code_like("Patient"));
        assert!(!is_code_like(""));
        assert!(!is_code_like("<script>"));
        assert!(!is_code_like("Avery Testpatient"));
        assert!(!is_code_like(&"a".repeat(65)));
    }
    #[test]
    fn problems_keep_codes_and_drop_payload_values() {
        assert_eq!(
            redact_quoted("unknown variant `pending-review`, expected one of `active`"),
            "unknown variant `pending-review`, expected one of `active`"
        );
        assert_eq!(
            redact_quoted("invalid type: string \"Avery Testpatient\", expected u32"),
            "invalid type: string \"…\", expected u32"
        );
        assert_eq!(redact_quoted("bad `Jane Doe` here"), "bad `…` here");
        assert_eq!(redact_quoted("open \"quote"), "open \"…");
    }
}
