//! The embedded store: sled 0.34, one tree per record kind, and one [`writer`] thread that
//! applies queued writes in batches (a batch of deliveries is one transaction) and fsyncs once
//! per batch, so every acknowledged write is on disk without one fsync per request.
//!
//! Trees (keys are ordered so scans are range reads; `\0` separates key parts, which
//! identifiers cannot contain):
//! - `referrals`:   referral ref → `ReferralRecord`
//! - `versions`:    referral ref `\0` version (u64 BE) → `VersionRecord`
//! - `payloads`:    same key → the bytes as received, LZ4-compressed behind a format tag
//!   (kept apart from `versions` so listings do not read them)
//! - `deliveries`:  dedup key → (referral ref, version)
//! - `events`:      seq (u64 BE) → `EventRecord`
//! - `by_modified`: modified-at (µs, u64 BE) `\0` referral ref → ()
//! - `meta`:        counters and the readiness marker
//! - `queue`:       message id (u64 BE) → `QueuedMessage`: the outgoing queues, Ocean updates
//!   (queue `ocean:`) and destinations' versions; `queue_index` holds their due times, chains,
//!   states, referrals and counts (see `queue/`)
//! - `updates`, `open_updates`, `referral_updates`: the outbox of earlier builds, moved into
//!   the queue when the store is opened (see `outbox.rs`), empty after
//! - `task_states`: referral ref → `TaskState`
//! - `audit`:       seq (u64 BE) → `AuditEntry`
//! - `documents`:   referral ref `\0` version (u64 BE) index (u32 BE) → `DocumentRecord`
//! - `document_bytes`: same key → the document's bytes as fetched
//! - `due_documents`: same key → () while the document is pending
//! - `patient_forms`: id (u64 BE) → `PatientFormRecord`; `patient_form_content`: same key →
//!   what was fetched (sealed); `patient_form_dedup`: dedup key → id; `due_patient_forms`: id →
//!   () while pending
//! - `console_sessions`: session id digest → `ConsoleSessionRecord`; `console_visits`: console
//!   account → µs (u64 BE)
//! - `screening_tallies`: `YYYY-MM-DD \0 service \0 rule \0 indicator` → count (u64 BE)
//!
//! **Recovering from write failures.** Once sled fails to write (a full disk, an I/O error) it
//! refuses every later operation, for good. So the open database lives behind `Open`, and the
//! first I/O failure any operation meets marks the store broken and wakes a recovery thread:
//! it lets the operations in progress fail, closes the database, and opens it again (sled
//! replays its log, so everything acknowledged is there) until a test write reaches the disk,
//! backing off from 1 s to 30 s between attempts. Meanwhile every operation answers
//! `StoreError::Unavailable` (the webhook answers 503 and Ocean retries) and
//! `StoreHealth` says why. A failure that waiting cannot cure (the filesystem turned
//! read-only, vanished or corrupt) is reported failed, which `/healthz` turns into a 503 for
//! the orchestrator; attempts go on, so an operator's repair is picked up.
//!
//! Layers, each using only those below it: the record format ([`crate::store::record`]) and
//! this store's keys and trees; `apply`, every write made inside the writer's transactions;
//! the writer; one open database; recovery; the handle; then one file per concern of the
//! [`Store`](crate::store::Store). `layout` in the tests keeps it so.

mod apply;
mod audit;
mod console;
mod deliveries;
mod dir;
mod documents;
mod feed;
mod handle;
mod keys;
mod maintenance;
mod open;
mod options;
mod outbox;
mod patient_forms;
mod queue;
mod recovery;
mod rekey;
mod screening;
mod snapshot;
mod stopped;
mod trees;
mod writer;

pub use dir::LOCK_FILE;

/// What [`crate::store::copy`] reads: a stopped store's trees, its `meta` keys and the indexes
/// that are not sealed.
pub(in crate::store) mod for_copy {
    pub(in crate::store) use super::apply::DeliveryRef;
    pub(in crate::store) use super::queue::{open_messages, queue_referrals};
    pub(in crate::store) use super::screening::decode as screening_tally;
    pub(in crate::store) use super::stopped::Stopped;
    pub(in crate::store) use super::trees::{AUDIT_HEAD, EVENT_SEQ, QUEUE_SEQ, SEAL_KEYS, Trees};
}
pub use handle::SledStore;
pub use options::SledOptions;
