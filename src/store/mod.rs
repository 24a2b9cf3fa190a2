//! Durable storage behind one trait, so the embedded sled store can later be joined by
//! PostgreSQL for several replicas. The store knows the relay's records, not FHIR.

mod seal;
mod sled;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::domain::{EventCode, IntegrationName, ReferralRef, ServiceId, Summary};
use crate::ig::OutboundEvent;

pub use self::sled::SledStore;
pub use seal::Keyring;

/// Errors at the storage boundary.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot read or write now (closed, being reopened, shutting down). Callers
    /// answer 503 and the sender retries.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// Reading or writing the disk failed (disk full, an I/O error). The store recovers by itself
    /// once the disk takes writes again (see [`Store::health`]); callers answer 503 meanwhile.
    #[error("storage I/O failed: {0}")]
    Io(String),
    /// Reading or writing the disk failed in a way waiting will not cure (a read-only or
    /// vanished filesystem, no permission, corruption); callers answer 503, and the store's
    /// health says it needs an operator.
    #[error("storage failed: {0}")]
    Failed(String),
    /// A stored record could not be decoded.
    #[error("stored record is corrupt: {0}")]
    Corrupt(String),
}

/// Which External Service ID a delivery is filed under, and how sure we are of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceAssignment {
    /// The message itself names the External Service ID.
    Named(ServiceId),
    /// The message names none; this is the integration's configured default.
    Default(ServiceId),
    /// Neither: filed explicitly as unassigned.
    Unassigned,
}

/// One inbound delivery, ready to store.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub integration: IntegrationName,
    /// Integrations whose referrals this delivery may add versions to, besides its own.
    pub shares_with: Vec<IntegrationName>,
    /// Identifies the delivery for deduplication; see [`delivery_key`].
    pub dedup_key: String,
    pub referral: ReferralRef,
    pub service: ServiceAssignment,
    pub event: EventCode,
    pub message_header_id: Option<String>,
    pub bundle_id: Option<String>,
    /// `Bundle.timestamp` as sent.
    pub bundle_timestamp: Option<String>,
    /// The body exactly as received.
    pub raw: Bytes,
    /// [`sha256_hex`] of `raw`.
    pub sha256: String,
    pub summary: Summary,
    pub problems: Vec<String>,
    pub received_at: OffsetDateTime,
}

/// The deduplication key of a delivery: the integration, the sender's delivery id (Bundle.id,
/// or a webhook id), and the SHA-256 of the body (from [`sha256_hex`]).
///
/// The body hash is part of the key even when there is an id: a retry of the same delivery has
/// the same bytes and is recognised, while a sender that reuses an id for different content
/// gets a new version instead of having it silently dropped.
pub fn delivery_key(
    integration: &IntegrationName,
    delivery_id: Option<&str>,
    sha256: &str,
) -> String {
    format!(
        "{integration}\u{1f}{}\u{1f}{sha256}",
        delivery_id.unwrap_or("")
    )
}

/// The SHA-256 of `bytes` in lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The result of storing a delivery. What is stored is on disk when this is returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutOutcome {
    /// Stored as this version of its referral.
    Stored { version: u64 },
    /// The same delivery had been stored before, as this version; nothing new was written.
    Duplicate { version: u64 },
    /// The referral belongs to another integration, which does not share referrals with the
    /// delivering one; nothing was written.
    OwnedElsewhere { owner: IntegrationName },
}

/// The current state of a referral.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReferralRecord {
    pub referral: ReferralRef,
    /// `None` = unassigned: no External Service ID in any delivery and no default configured.
    pub service_id: Option<ServiceId>,
    /// The integration of the latest delivery.
    pub integration: IntegrationName,
    /// The integration that first delivered the referral, which it belongs to. Records written
    /// before ownership was kept have none; their first version's integration is the owner.
    #[serde(default)]
    pub owner: Option<IntegrationName>,
    pub latest_event: EventCode,
    /// Number of the latest version (versions count from 1).
    pub version: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub modified_at: OffsetDateTime,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub exported_at: Option<OffsetDateTime>,
    /// The latest values of the summary fields over all versions.
    pub summary: Summary,
}

/// One stored delivery of a referral (its raw bytes are read with [`Store::payload`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRecord {
    pub referral: ReferralRef,
    pub version: u64,
    pub event: EventCode,
    pub integration: IntegrationName,
    pub service_id: Option<ServiceId>,
    pub message_header_id: Option<String>,
    pub bundle_id: Option<String>,
    /// `Bundle.timestamp` as sent.
    #[serde(default)]
    pub bundle_timestamp: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
    /// What this delivery alone said.
    pub summary: Summary,
    /// Resources that did not conform to FHIR R4 and were read leniently.
    pub problems: Vec<String>,
    pub size: u64,
    pub sha256: String,
    /// This version's position in the event feed.
    pub seq: u64,
    /// True once retention purged its payload and summary (the record stays, so the feed and
    /// listings keep their structure).
    #[serde(default)]
    pub purged: bool,
}

/// Where an outgoing update stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpdateState {
    /// Waiting to be sent, or between attempts.
    Pending,
    /// Ocean answered 2xx; never sent again.
    Delivered,
    /// Refused by Ocean (a 4xx other than 401/429) or out of retry time; holds back later
    /// updates of its referral until it is replayed or discarded.
    Dead,
    /// A dead letter given up on by the clinic; no longer holds anything back.
    Discarded,
}

/// What an update tells Ocean.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateKind {
    /// A Task status change.
    Status,
    /// A booked appointment.
    Appointment,
    /// The cancellation of the appointment booked last.
    CancelAppointment,
    /// A message to the referrer.
    Message,
}

impl UpdateKind {
    /// The name shown in the API and logs (`status`, `appointment`, `cancel-appointment`,
    /// `message`), the same as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Status => "status",
            Self::Appointment => "appointment",
            Self::CancelAppointment => "cancel-appointment",
            Self::Message => "message",
        }
    }
}

/// An appointment the relay booked: the id of its Appointment resource and its times.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppointmentSlot {
    pub id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub start: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub end: OffsetDateTime,
}

/// An update for Ocean, as accepted from the point-of-service API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateRecord {
    pub id: u64,
    pub referral: ReferralRef,
    /// The configured Ocean site it goes to.
    pub site: String,
    pub kind: UpdateKind,
    /// For status updates: the Task status requested.
    pub task_status: Option<String>,
    /// For status updates: the id of the Task resource sent (absent on updates stored by
    /// earlier builds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    /// For appointment updates: the appointment booked or cancelled (absent on updates stored
    /// by earlier builds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub appointment: Option<AppointmentSlot>,
    /// The message event.
    pub event: OutboundEvent,
    /// The FHIR message Bundle to post, built when the update was accepted.
    pub bundle: String,
    pub state: UpdateState,
    pub attempts: u32,
    pub last_error: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub next_attempt_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub delivered_at: Option<OffsetDateTime>,
}

impl UpdateRecord {
    /// A new update, pending from `at`; the store gives it its id.
    pub fn pending(
        referral: ReferralRef,
        site: String,
        kind: UpdateKind,
        event: OutboundEvent,
        bundle: String,
        at: OffsetDateTime,
    ) -> Self {
        Self {
            id: 0,
            referral,
            site,
            kind,
            task_status: None,
            task_id: None,
            appointment: None,
            event,
            bundle,
            state: UpdateState::Pending,
            attempts: 0,
            last_error: None,
            next_attempt_at: at,
            created_at: at,
            delivered_at: None,
        }
    }
}

/// What the relay has told Ocean about a referral's Task, as left by the updates accepted so
/// far (stored with each accepted update, so the next is checked against it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskState {
    /// The last Task status accepted for sending, and when.
    pub status: Option<String>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub status_set_at: Option<OffsetDateTime>,
    /// True once a Task update was accepted: later ones are `notify-update-process-request`.
    pub task_sent: bool,
    /// The id of the Task resource used for this referral's updates.
    pub task_id: Option<String>,
    /// The id of the current Appointment, if one was booked and not cancelled.
    pub appointment_id: Option<String>,
    /// Its start and end, repeated when it is cancelled.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub appointment_start: Option<OffsetDateTime>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub appointment_end: Option<OffsetDateTime>,
}

impl TaskState {
    /// The current appointment, if one was booked and not cancelled.
    pub fn appointment(&self) -> Option<AppointmentSlot> {
        Some(AppointmentSlot {
            id: self.appointment_id.clone()?,
            start: self.appointment_start?,
            end: self.appointment_end?,
        })
    }

    /// Records `slot` as the current appointment, or none.
    pub fn set_appointment(&mut self, slot: Option<&AppointmentSlot>) {
        self.appointment_id = slot.map(|s| s.id.clone());
        self.appointment_start = slot.map(|s| s.start);
        self.appointment_end = slot.map(|s| s.end);
    }
}

/// One entry of the append-only audit log. Each holds the SHA-256 of the previous entry, so
/// changing or removing one breaks the chain from there on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// e.g. `DELIVERY_STORED`, `EXPORTED_REFERRALS`.
    pub action: String,
    /// Who: an integration, an API client, the OS user of a command.
    pub actor: String,
    pub details: serde_json::Value,
    /// Hash of the previous entry (64 zeros for the first).
    pub prev: String,
    /// SHA-256 over `prev` and this entry's other fields.
    pub hash: String,
}

impl AuditEntry {
    /// The hash this entry must carry.
    pub fn expected_hash(&self) -> String {
        let content = serde_json::json!([
            self.seq,
            self.at.unix_timestamp_nanos().to_string(),
            self.action,
            self.actor,
            self.details,
            self.prev
        ]);
        sha256_hex(content.to_string().as_bytes())
    }
}

/// Where and why an audit chain breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit entry {seq} is broken: {reason}")]
pub struct AuditBreak {
    pub seq: u64,
    pub reason: &'static str,
}

/// Checks a whole chain, in order; returns how many entries it holds.
pub fn verify_chain(entries: impl IntoIterator<Item = AuditEntry>) -> Result<u64, AuditBreak> {
    let mut prev = AUDIT_GENESIS.to_owned();
    let mut expected_seq = 1;
    for entry in entries {
        let seq = entry.seq;
        if seq != expected_seq {
            return Err(AuditBreak {
                seq: expected_seq,
                reason: "the entry is missing",
            });
        }
        if entry.prev != prev {
            return Err(AuditBreak {
                seq,
                reason: "it does not follow the entry before it",
            });
        }
        if entry.hash != entry.expected_hash() {
            return Err(AuditBreak {
                seq,
                reason: "its content does not match its hash",
            });
        }
        prev = entry.hash;
        expected_seq += 1;
    }
    Ok(expected_seq - 1)
}

/// Hash of "no previous entry".
pub const AUDIT_GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// A batch of [`Store::referrals_modified`].
#[derive(Debug, Clone, Default)]
pub struct ModifiedBatch {
    pub referrals: Vec<ReferralRecord>,
    /// Where the next batch starts; `None` when the range is exhausted.
    pub next: Option<Vec<u8>>,
}

/// A slice of [`Store::referrals_changed`].
#[derive(Debug, Clone)]
pub struct ChangedReferrals {
    /// `(seq of the latest change up to the bound, current record)`, in feed order.
    pub referrals: Vec<(u64, ReferralRecord)>,
    /// The last feed sequence read; the next slice starts after it.
    pub scanned_to: u64,
}

/// One entry of the ordered feed of stored deliveries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    pub seq: u64,
    pub referral: ReferralRef,
    pub version: u64,
    pub event: EventCode,
    pub service_id: Option<ServiceId>,
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
}

/// Whether the store can write, as `/readyz` and `/healthz` report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreHealth {
    /// Writes reach the disk.
    Writable,
    /// Writes failed and the store is trying to recover; it will once the disk takes writes.
    Recovering {
        for_secs: u64,
        attempts: u32,
        reason: String,
    },
    /// The store cannot recover by itself (corrupt): the process should be restarted and an
    /// operator look at it.
    Failed(String),
}

/// Durable storage for deliveries and referrals.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Stores a delivery in one atomic write (raw bytes, version, referral summary, feed entry,
    /// dedup entry) and returns once it is on disk. A delivery already stored is recognised by
    /// its `dedup_key` and stores nothing new.
    async fn put_delivery(&self, delivery: NewDelivery) -> Result<PutOutcome, StoreError>;

    /// The current state of one referral.
    async fn referral(&self, referral: &ReferralRef) -> Result<Option<ReferralRecord>, StoreError>;

    /// Referrals filed under one External Service ID (`None`: the unassigned ones).
    async fn referrals_for_service(
        &self,
        service: Option<&ServiceId>,
    ) -> Result<Vec<ReferralRecord>, StoreError>;

    /// All versions of a referral, oldest first.
    async fn versions(&self, referral: &ReferralRef) -> Result<Vec<VersionRecord>, StoreError>;

    /// The raw bytes of one version, exactly as received.
    async fn payload(
        &self,
        referral: &ReferralRef,
        version: u64,
    ) -> Result<Option<Bytes>, StoreError>;

    /// Feed entries with a sequence number greater than `after`, in order. Only entries that
    /// are on disk are shown, so a consumer never sees an event a crash could take back.
    async fn events_after(&self, after: u64, limit: usize) -> Result<Vec<EventRecord>, StoreError>;

    /// The highest feed sequence on disk.
    fn durable_seq(&self) -> u64;

    /// Completes once the durable feed sequence is greater than `after` (callers bound the
    /// wait with a timeout).
    async fn wait_for_events_after(&self, after: u64);

    /// The feed sequence just before the first delivery received at or after `since`.
    async fn seq_before(&self, since: OffsetDateTime) -> Result<u64, StoreError>;

    /// Referrals as they stood at feed sequence `until`, in the order of their latest change up
    /// to `until`, for those whose latest change lies in `(after, until]`. Reads at most
    /// `max_events` feed entries; `scanned_to` says where to go on from.
    async fn referrals_changed(
        &self,
        after: u64,
        until: u64,
        max_events: usize,
    ) -> Result<ChangedReferrals, StoreError>;

    /// Stores a new outgoing update (its `id` is assigned here) together with the referral's
    /// new [`TaskState`], durably, and returns it.
    async fn enqueue_update(
        &self,
        update: UpdateRecord,
        task: TaskState,
    ) -> Result<UpdateRecord, StoreError>;

    /// Records a new state of an update, durably.
    async fn save_update(&self, update: &UpdateRecord) -> Result<(), StoreError>;

    async fn update(&self, id: u64) -> Result<Option<UpdateRecord>, StoreError>;

    /// Updates with an id greater than `after`, in id order, optionally only those in `state`.
    async fn updates(
        &self,
        state: Option<UpdateState>,
        after: u64,
        limit: usize,
    ) -> Result<Vec<UpdateRecord>, StoreError>;

    /// Updates not yet delivered (pending and dead), in the order they were accepted.
    async fn open_updates(&self) -> Result<Vec<UpdateRecord>, StoreError>;

    /// Every update of `referral`, in the order they were accepted (read from an index, not a
    /// scan of the outbox).
    async fn referral_updates(
        &self,
        referral: &ReferralRef,
    ) -> Result<Vec<UpdateRecord>, StoreError>;

    /// What the updates accepted so far for `referral` told Ocean (default when none).
    async fn task_state(&self, referral: &ReferralRef) -> Result<TaskState, StoreError>;

    /// Referrals modified within `[from, to]` (either side open), in order of modification,
    /// at most `limit`, starting after `after` (a key from the previous batch).
    async fn referrals_modified(
        &self,
        from: Option<OffsetDateTime>,
        to: Option<OffsetDateTime>,
        after: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<ModifiedBatch, StoreError>;

    /// Sets `exported_at = at` on each referral whose modification time is still the one
    /// given (a referral modified since it was written is left unexported). Durable.
    async fn mark_exported(
        &self,
        written: &[(ReferralRef, OffsetDateTime)],
        at: OffsetDateTime,
    ) -> Result<usize, StoreError>;

    /// Purges the payload and summary of every version received before `cutoff` that is not
    /// its referral's latest; returns how many were purged. Durable.
    async fn purge_versions_before(&self, cutoff: OffsetDateTime) -> Result<u64, StoreError>;

    /// Appends an audit entry, durably.
    async fn audit(
        &self,
        action: &str,
        actor: &str,
        details: serde_json::Value,
    ) -> Result<AuditEntry, StoreError>;

    /// Audit entries after `after`, in order.
    async fn audit_entries(&self, after: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError>;

    /// Marks an update discarded and sets the referral's [`TaskState`] in one durable write.
    async fn discard_update(
        &self,
        update: &UpdateRecord,
        task: TaskState,
    ) -> Result<(), StoreError>;

    /// Writes and syncs a marker record: proves the store can take deliveries now.
    async fn check_writable(&self) -> Result<(), StoreError>;

    /// Whether the store can write, is recovering from a write failure, or cannot recover.
    fn health(&self) -> StoreHealth {
        StoreHealth::Writable
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_keys_separate_integrations_ids_and_bodies() {
        let a = IntegrationName::parse("a").unwrap();
        let b = IntegrationName::parse("b").unwrap();
        let (x, y) = (sha256_hex(b"x"), sha256_hex(b"y"));
        let k = delivery_key(&a, Some("id"), &x);
        assert_eq!(k, delivery_key(&a, Some("id"), &x));
        assert_ne!(k, delivery_key(&b, Some("id"), &x));
        assert_ne!(k, delivery_key(&a, Some("id2"), &x));
        assert_ne!(k, delivery_key(&a, Some("id"), &y));
        assert_ne!(k, delivery_key(&a, None, &x));
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
