//! Durable storage, split by concern into traits ([`DeliveryStore`], [`FeedStore`],
//! [`OutboxStore`], [`PatientFormStore`], [`QueueStore`], [`AuditStore`], [`MaintenanceStore`], [`ReplicaStore`], [`ConsoleStore`], [`ScreeningStore`]) that [`Store`] gathers, so a backend
//! can be written one concern at a time. [`SledStore`] is the embedded backend. The store knows
//! the relay's records, not FHIR.

mod alert;
mod audit;
mod console;
mod copy;
mod deliveries;
mod documents;
mod error;
mod feed;
mod maintenance;
mod outbox;
mod patient_forms;
mod postgres;
mod queue;
mod record;
mod replicas;
mod screening;
mod seal;
mod sled;
mod update;

pub use self::copy::{TableCount, sled_to_postgres};
pub use self::postgres::{MIGRATIONS as POSTGRES_MIGRATIONS, PgOptions, PgStore};
pub use self::sled::{LOCK_FILE, SledOptions, SledStore};
pub use alert::{ALERTS_QUEUE, AlertPhase, AlertRecord, is_alert_queue};
pub use audit::{AUDIT_GENESIS, AuditBreak, AuditEntry, AuditStore, ChainCheck, verify_chain};
pub use console::{ConsoleCutoffs, ConsoleSessionRecord, ConsoleStore};
pub use deliveries::{
    DeliveryStore, Merged, NewDelivery, PartTimes, PutOutcome, ReferralRecord, ServiceAssignment,
    VersionRecord, delivery_key, merge, sha256_hex,
};
pub use documents::{DocumentKey, DocumentKind, DocumentRecord, DocumentState, DocumentStore};
pub use error::{Cause, StoreError};
pub use feed::{ChangedReferrals, EventRecord, FeedStore};
pub use maintenance::{MaintenanceStore, ModifiedBatch, SnapshotInfo, StoreHealth};
pub use outbox::{
    OutboxStore, TaskState, UpdateRecord, UpdateState, open_updates, referral_updates, update,
    updates,
};
pub use patient_forms::{
    NewPatientForm, PatientFormRecord, PatientFormState, PatientFormStore, Recorded,
};
pub use queue::{MessageState, QueueRoute, QueueStats, QueueStore, QueuedMessage};
pub use replicas::{LoginFailures, ReplicaStore};
pub use screening::{LATE, NO_CARD, SCREENED, ScreeningStore, ScreeningTally};
pub use seal::Keyring;
pub use update::{AppointmentSlot, OCEAN_QUEUE, OceanUpdate, UpdateKind};

/// A whole store: every concern. Implemented by every type that implements them all, and used
/// as `Arc<dyn Store>`.
pub trait Store:
    DeliveryStore
    + FeedStore
    + OutboxStore
    + DocumentStore
    + PatientFormStore
    + QueueStore
    + AuditStore
    + MaintenanceStore
    + ReplicaStore
    + ConsoleStore
    + ScreeningStore
    + 'static
{
}

impl<T> Store for T where
    T: DeliveryStore
        + FeedStore
        + OutboxStore
        + DocumentStore
        + PatientFormStore
        + QueueStore
        + AuditStore
        + MaintenanceStore
        + ReplicaStore
        + ConsoleStore
        + ScreeningStore
        + 'static
{
}
