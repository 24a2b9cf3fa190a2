//! A store that cannot write makes the webhook answer 503, never 2xx.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use referral_relay::domain::ReferralRef;
use referral_relay::store::{
    AuditEntry, AuditStore, ChangedReferrals, ConsoleCutoffs, ConsoleSessionRecord, ConsoleStore,
    DeliveryStore, DocumentRecord, DocumentStore, EventRecord, FeedStore, MaintenanceStore,
    MessageState, ModifiedBatch, NewDelivery, OutboxStore, PutOutcome, QueueStats, QueueStore,
    QueuedMessage, ReferralRecord, ReplicaStore, ScreeningStore, ScreeningTally, StoreError,
    TaskState, UpdateRecord, VersionRecord,
};
use time::OffsetDateTime;

use crate::support::app::{FHIR_JSON, config, spawn_with_store};
use crate::support::fixtures::fixture;

/// Every write fails as a full disk would; reads find nothing. With `outbox_panics`, the
/// store passes the readiness write instead, and reading the outbox's queue panics, as a bug in
/// the worker's path would.
#[derive(Default)]
struct DiskFull {
    outbox_panics: bool,
}

fn disk_full() -> StoreError {
    StoreError::unavailable("cannot write").caused_by("No space left on device (os error 28)")
}

#[async_trait]
impl DeliveryStore for DiskFull {
    async fn put_delivery(&self, _: NewDelivery) -> Result<PutOutcome, StoreError> {
        Err(disk_full())
    }
    async fn referral(&self, _: &ReferralRef) -> Result<Option<ReferralRecord>, StoreError> {
        Ok(None)
    }
    async fn versions(&self, _: &ReferralRef) -> Result<Vec<VersionRecord>, StoreError> {
        Ok(Vec::new())
    }
    async fn payload(&self, _: &ReferralRef, _: u64) -> Result<Option<Bytes>, StoreError> {
        Ok(None)
    }
}

#[async_trait]
impl FeedStore for DiskFull {
    async fn events_after(&self, _: u64, _: usize) -> Result<Vec<EventRecord>, StoreError> {
        Ok(Vec::new())
    }
    fn durable_seq(&self) -> u64 {
        0
    }
    async fn wait_for_events_after(&self, _: u64) {
        std::future::pending::<()>().await;
    }
    async fn seq_before(&self, _: OffsetDateTime) -> Result<u64, StoreError> {
        Ok(0)
    }
    async fn referrals_changed(
        &self,
        _: u64,
        until: u64,
        _: usize,
    ) -> Result<ChangedReferrals, StoreError> {
        Ok(ChangedReferrals {
            referrals: Vec::new(),
            scanned_to: until,
        })
    }
}

#[async_trait]
impl OutboxStore for DiskFull {
    async fn enqueue_update(
        &self,
        _: UpdateRecord,
        _: TaskState,
        _: Option<&TaskState>,
    ) -> Result<Option<UpdateRecord>, StoreError> {
        Err(disk_full())
    }
    async fn discard_update(
        &self,
        _: &UpdateRecord,
        _: TaskState,
        _: Option<&TaskState>,
    ) -> Result<bool, StoreError> {
        Err(disk_full())
    }
    async fn task_state(&self, _: &ReferralRef) -> Result<TaskState, StoreError> {
        Ok(TaskState::default())
    }
}

#[async_trait]
impl DocumentStore for DiskFull {
    async fn due_documents(
        &self,
        _: OffsetDateTime,
        _: std::time::Duration,
        _: usize,
        _: &[referral_relay::store::DocumentKey],
    ) -> Result<Vec<DocumentRecord>, StoreError> {
        Ok(Vec::new())
    }
    async fn save_document(&self, _: &DocumentRecord, _: Option<Bytes>) -> Result<(), StoreError> {
        Err(disk_full())
    }
    async fn documents(&self, _: &ReferralRef) -> Result<Vec<DocumentRecord>, StoreError> {
        Ok(Vec::new())
    }
    async fn document_bytes(
        &self,
        _: &ReferralRef,
        _: u64,
        _: u32,
    ) -> Result<Option<Bytes>, StoreError> {
        Ok(None)
    }
}

#[async_trait]
impl referral_relay::store::PatientFormStore for DiskFull {
    async fn record_patient_form(
        &self,
        _: &referral_relay::store::NewPatientForm,
    ) -> Result<referral_relay::store::Recorded, StoreError> {
        Err(disk_full())
    }
    async fn due_patient_forms(
        &self,
        _: OffsetDateTime,
        _: std::time::Duration,
        _: usize,
        _: &[u64],
    ) -> Result<Vec<referral_relay::store::PatientFormRecord>, StoreError> {
        Ok(Vec::new())
    }
    async fn save_patient_form(
        &self,
        _: &referral_relay::store::PatientFormRecord,
        _: Option<Bytes>,
    ) -> Result<(), StoreError> {
        Err(disk_full())
    }
    async fn patient_forms(
        &self,
        _: u64,
        _: usize,
    ) -> Result<Vec<referral_relay::store::PatientFormRecord>, StoreError> {
        Ok(Vec::new())
    }
    async fn patient_form(
        &self,
        _: u64,
    ) -> Result<Option<referral_relay::store::PatientFormRecord>, StoreError> {
        Ok(None)
    }
    async fn patient_form_content(&self, _: u64) -> Result<Option<Bytes>, StoreError> {
        Ok(None)
    }
    async fn purge_patient_forms_before(&self, _: OffsetDateTime) -> Result<u64, StoreError> {
        Err(disk_full())
    }
}

#[async_trait]
impl AuditStore for DiskFull {
    async fn audit(
        &self,
        _: &str,
        _: &str,
        _: serde_json::Value,
    ) -> Result<AuditEntry, StoreError> {
        Err(disk_full())
    }
    async fn audit_entries(&self, _: u64, _: usize) -> Result<Vec<AuditEntry>, StoreError> {
        Ok(Vec::new())
    }
}

/// Shares nothing, like the embedded store.
impl ReplicaStore for DiskFull {}

#[async_trait]
impl ConsoleStore for DiskFull {
    async fn save_console_session(&self, _: &ConsoleSessionRecord) -> Result<(), StoreError> {
        Err(disk_full())
    }
    async fn console_session(&self, _: &str) -> Result<Option<ConsoleSessionRecord>, StoreError> {
        Ok(None)
    }
    async fn touch_console_session(&self, _: &str, _: OffsetDateTime) -> Result<(), StoreError> {
        Err(disk_full())
    }
    async fn end_console_session(
        &self,
        _: &str,
    ) -> Result<Option<ConsoleSessionRecord>, StoreError> {
        Err(disk_full())
    }
    async fn end_console_sessions_of(&self, _: &str) -> Result<u64, StoreError> {
        Err(disk_full())
    }
    async fn console_sessions(&self) -> Result<Vec<ConsoleSessionRecord>, StoreError> {
        Ok(Vec::new())
    }
    async fn console_visit(&self, _: &str) -> Result<Option<OffsetDateTime>, StoreError> {
        Ok(None)
    }
    async fn save_console_visit(&self, _: &str, _: OffsetDateTime) -> Result<(), StoreError> {
        Err(disk_full())
    }
    async fn purge_console(&self, _: ConsoleCutoffs) -> Result<u64, StoreError> {
        Err(disk_full())
    }
}

#[async_trait]
impl ScreeningStore for DiskFull {
    async fn add_screening_tallies(&self, _: &[ScreeningTally]) -> Result<(), StoreError> {
        Err(disk_full())
    }
    async fn screening_tallies(&self, _: time::Date) -> Result<Vec<ScreeningTally>, StoreError> {
        Ok(Vec::new())
    }
}

#[async_trait]
impl QueueStore for DiskFull {
    async fn due_messages(
        &self,
        queue: &str,
        _: OffsetDateTime,
        _: std::time::Duration,
        _: usize,
        _: &[u64],
    ) -> Result<Vec<QueuedMessage>, StoreError> {
        let outbox = queue == referral_relay::store::OCEAN_QUEUE;
        assert!(!(self.outbox_panics && outbox), "the outbox cannot be read");
        Ok(Vec::new())
    }
    async fn next_due(&self, _: &str, _: &[u64]) -> Result<Option<OffsetDateTime>, StoreError> {
        Ok(None)
    }
    async fn save_message(&self, _: &QueuedMessage, _: MessageState) -> Result<bool, StoreError> {
        Err(disk_full())
    }
    async fn message(&self, _: u64) -> Result<Option<QueuedMessage>, StoreError> {
        Ok(None)
    }
    async fn queue_messages(
        &self,
        _: &str,
        _: Option<MessageState>,
        _: u64,
        _: usize,
    ) -> Result<Vec<QueuedMessage>, StoreError> {
        Ok(Vec::new())
    }
    async fn referral_messages(&self, _: &ReferralRef) -> Result<Vec<QueuedMessage>, StoreError> {
        Ok(Vec::new())
    }
    async fn queue_stats(&self, _: &str) -> Result<QueueStats, StoreError> {
        Ok(QueueStats::default())
    }
    async fn set_queue_paused(&self, _: &str, _: bool) -> Result<(), StoreError> {
        Err(disk_full())
    }
    async fn purge_messages_before(&self, _: OffsetDateTime) -> Result<u64, StoreError> {
        Err(disk_full())
    }
    async fn enqueue_messages(&self, _: Vec<QueuedMessage>) -> Result<(), StoreError> {
        Err(disk_full())
    }
}

#[async_trait]
impl MaintenanceStore for DiskFull {
    async fn referrals_modified(
        &self,
        _: Option<OffsetDateTime>,
        _: Option<OffsetDateTime>,
        _: Option<Vec<u8>>,
        _: usize,
    ) -> Result<ModifiedBatch, StoreError> {
        Err(disk_full())
    }
    async fn mark_exported(
        &self,
        _: &[(ReferralRef, OffsetDateTime)],
        _: OffsetDateTime,
    ) -> Result<usize, StoreError> {
        Err(disk_full())
    }
    async fn purge_versions_before(&self, _: OffsetDateTime) -> Result<u64, StoreError> {
        Err(disk_full())
    }
    async fn check_writable(&self) -> Result<(), StoreError> {
        if self.outbox_panics {
            Ok(())
        } else {
            Err(disk_full())
        }
    }
}

#[tokio::test]
async fn a_store_that_cannot_write_gets_503_with_an_outcome() {
    let dir = tempfile::TempDir::new().unwrap();
    let app = spawn_with_store(&config("", dir.path()), Arc::new(DiskFull::default())).await;

    let answer = app
        .deliver("default", fixture("v0.11-add-service-request.json"))
        .await;
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert_eq!(answer.content_type, FHIR_JSON);
    assert_eq!(answer.body["issue"][0]["code"], "transient");
    assert!(answer.diagnostics().contains("retry later"));
    // The cause stays in the logs: the caller is not told about our disk.
    assert!(!answer.diagnostics().contains("os error"));

    let ready = app.get("/readyz").await;
    assert_eq!(ready.status, 503);
    assert_eq!(app.get("/healthz").await.status, 200);
}

#[tokio::test]
async fn readiness_fails_while_the_outbox_worker_keeps_panicking() {
    let dir = tempfile::TempDir::new().unwrap();
    let store = DiskFull {
        outbox_panics: true,
    };
    let app = spawn_with_store(&config("", dir.path()), Arc::new(store)).await;
    // The worker's first pass panics at start; the supervisor restarts it and it panics again.
    let mut ready = app.get("/readyz").await;
    for _ in 0..100 {
        if ready.body["worker"] != "alive" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        ready = app.get("/readyz").await;
    }
    assert_eq!(ready.status, 503);
    assert_eq!(ready.body["store"], "writable", "{}", ready.body);
    assert!(
        ready.body["worker"].as_str().unwrap().contains("panicked"),
        "{}",
        ready.body
    );
    // Liveness is about the process, which is still serving.
    assert_eq!(app.get("/healthz").await.status, 200);
}
