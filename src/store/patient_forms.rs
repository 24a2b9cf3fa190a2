//! eForms patients completed through Ocean's Patient Engagement: each notification Ocean sent
//! (a form completed, a note added), recorded durably before it is acknowledged, once per
//! (endpoint, type, patient ref, session), then fetched from Ocean and kept decrypted here,
//! sealed like payloads when a storage key is configured.
//!
//! A record is keyed by an increasing id (the API's feed position). Its fetch state moves
//! pending → fetched | failed, as a document's does (see [`super::documents`]); what Ocean
//! served (the patient, the note and its completed forms) is kept apart from the record, as its
//! content, so listings do not read it.

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::error::StoreError;

/// Where a submission's fetch stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PatientFormState {
    /// Not fetched yet; tried again at `next_attempt_at`.
    Pending,
    /// Its content is stored.
    Fetched,
    /// Given up; `last_error` says why.
    Failed,
}

impl PatientFormState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Fetched => "fetched",
            Self::Failed => "failed",
        }
    }
}

/// What a notification from Ocean names: enough to fetch the submission and to recognise the
/// same notification sent again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewPatientForm {
    /// The `[patient_engagement.NAME]` endpoint that received it.
    pub endpoint: String,
    /// The notification's `type` (`notify-patient-message-forms-completion`, ...).
    pub kind: String,
    /// Ocean's patient ref (`ref`).
    pub patient_ref: String,
    /// `customProperties.oceanSessionId`: which session's note to fetch.
    pub session_id: Option<String>,
    /// `customProperties.noteCompletionSource`: `PORTAL`, `PATIENT` or `TABLET`.
    pub completion_source: Option<String>,
    /// The site number the notification named (the configured one: others are refused).
    pub site_num: String,
    pub received_at: OffsetDateTime,
}

impl NewPatientForm {
    /// The key the same notification sent again is recognised by: SHA-256 over the endpoint,
    /// the type, the patient ref and the session, NUL-separated (none of them holds a NUL: they
    /// come from JSON strings checked by the endpoint), lowercase hex. A digest rather than the
    /// values themselves, so the index keeps no patient ref in the clear.
    pub fn dedup_key(&self) -> String {
        let mut input = Vec::new();
        for part in [
            self.endpoint.as_str(),
            self.kind.as_str(),
            self.patient_ref.as_str(),
            self.session_id.as_deref().unwrap_or(""),
        ] {
            input.extend_from_slice(part.as_bytes());
            input.push(0);
        }
        super::deliveries::sha256_hex(&input)
    }

    /// The record it starts as once given `id`: pending, due now.
    pub fn record(&self, id: u64) -> PatientFormRecord {
        PatientFormRecord {
            id,
            endpoint: self.endpoint.clone(),
            kind: self.kind.clone(),
            patient_ref: self.patient_ref.clone(),
            session_id: self.session_id.clone(),
            completion_source: self.completion_source.clone(),
            site_num: self.site_num.clone(),
            state: PatientFormState::Pending,
            attempts: 0,
            received_at: self.received_at,
            next_attempt_at: self.received_at,
            last_error: None,
            fetched_at: None,
            size: 0,
            purged: false,
        }
    }
}

/// One submission: the notification and where its fetch stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatientFormRecord {
    /// Increasing: the order notifications were recorded in.
    pub id: u64,
    pub endpoint: String,
    pub kind: String,
    pub patient_ref: String,
    pub session_id: Option<String>,
    pub completion_source: Option<String>,
    pub site_num: String,
    pub state: PatientFormState,
    pub attempts: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub next_attempt_at: OffsetDateTime,
    pub last_error: Option<String>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub fetched_at: Option<OffsetDateTime>,
    /// Size of the stored content (decrypted JSON).
    pub size: u64,
    /// True once retention dropped its content.
    #[serde(default)]
    pub purged: bool,
}

impl PatientFormRecord {
    /// What retention leaves of it: the record, marked purged, without its content (a
    /// submission still pending is given up, so it is not fetched afterwards).
    pub fn purge(&mut self) {
        self.purged = true;
        if self.state == PatientFormState::Pending {
            self.state = PatientFormState::Failed;
            self.last_error = Some("purged by retention before it was fetched".into());
        }
    }
}

/// What recording a notification did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// Recorded now, pending.
    New(Box<PatientFormRecord>),
    /// The same notification was recorded before, as this id: nothing new was stored.
    Duplicate(u64),
}

/// Keeping patients' completed eForms.
#[async_trait]
pub trait PatientFormStore: Send + Sync {
    /// Records a notification, pending and due now, in one durable write, unless the same one
    /// ([`NewPatientForm::dedup_key`]) was recorded before. Returns once it is on disk.
    async fn record_patient_form(&self, new: &NewPatientForm) -> Result<Recorded, StoreError>;

    /// Pending submissions due at `now`, oldest due first, at most `limit`, leaving out `busy`
    /// (being fetched by the caller). On a store shared by replicas, those returned are leased
    /// to the caller for `lease`.
    async fn due_patient_forms(
        &self,
        now: OffsetDateTime,
        lease: std::time::Duration,
        limit: usize,
        busy: &[u64],
    ) -> Result<Vec<PatientFormRecord>, StoreError>;

    /// Saves a submission's new state and, when given, its content, in one durable write.
    async fn save_patient_form(
        &self,
        record: &PatientFormRecord,
        content: Option<Bytes>,
    ) -> Result<(), StoreError>;

    /// Submissions with an id above `after`, in id order, at most `limit`.
    async fn patient_forms(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<PatientFormRecord>, StoreError>;

    /// One submission.
    async fn patient_form(&self, id: u64) -> Result<Option<PatientFormRecord>, StoreError>;

    /// What was fetched for a submission (JSON; see [`crate::patient_engagement`]).
    async fn patient_form_content(&self, id: u64) -> Result<Option<Bytes>, StoreError>;

    /// Drops the content of every submission received before `cutoff` (the records stay,
    /// marked purged); returns how many were purged. Durable.
    async fn purge_patient_forms_before(&self, cutoff: OffsetDateTime) -> Result<u64, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(session: Option<&str>) -> NewPatientForm {
        NewPatientForm {
            endpoint: "clinic".into(),
            kind: "notify-patient-message-forms-completion".into(),
            patient_ref: "690".into(),
            session_id: session.map(str::to_owned),
            completion_source: Some("PORTAL".into()),
            site_num: "1234".into(),
            received_at: OffsetDateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn the_same_notification_has_the_same_key_and_another_session_another() {
        let a = new(Some("1759442545187t415674"));
        let mut b = a.clone();
        b.completion_source = Some("TABLET".into());
        b.received_at = OffsetDateTime::now_utc();
        assert_eq!(a.dedup_key(), b.dedup_key());
        assert_ne!(a.dedup_key(), new(Some("1759442545187t415675")).dedup_key());
        assert_ne!(a.dedup_key(), new(None).dedup_key());
        assert!(!a.dedup_key().contains("690"));
        let mut purged = a.record(1);
        purged.purge();
        assert_eq!(purged.state, PatientFormState::Failed);
    }
}
