//! The embedded store: sled 0.34, one tree per record kind, one transaction per delivery, and a
//! group-commit flusher so every acknowledged write is fsync'd without one fsync per request.
//!
//! Trees (keys are ordered so scans are range reads; `\0` separates key parts, which
//! identifiers cannot contain):
//! - `referrals`:   referral ref → [`ReferralRecord`]
//! - `by_service`:  service id (empty = unassigned) `\0` referral ref → ()
//! - `versions`:    referral ref `\0` version (u64 BE) → [`VersionRecord`]
//! - `payloads`:    same key → the bytes as received, LZ4-compressed behind a format tag
//!   (kept apart from `versions` so listings do not read them)
//! - `deliveries`:  dedup key → (referral ref, version)
//! - `events`:      seq (u64 BE) → [`EventRecord`]
//! - `by_modified`: modified-at (µs, u64 BE) `\0` referral ref → ()
//! - `meta`:        counters and the readiness marker
//! - `updates`:     update id (u64 BE) → [`UpdateRecord`] (the outbox to Ocean)
//! - `open_updates`: update id → () while not delivered
//! - `task_states`: referral ref → [`TaskState`]

use std::borrow::Cow;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use time::OffsetDateTime;
use tokio::sync::watch;

use super::seal::{KeyId, Keyring, SEALED, hex, sealed_key_id, unknown_key};
use super::{
    AUDIT_GENESIS, AuditEntry, ChangedReferrals, EventRecord, ModifiedBatch, NewDelivery,
    PutOutcome, ReferralRecord, ServiceAssignment, Store, StoreError, TaskState, UpdateRecord,
    UpdateState, VersionRecord,
};
use crate::domain::{ReferralRef, ServiceId};

const EVENT_SEQ: &[u8] = b"event_seq";
const READY_MARKER: &[u8] = b"ready_marker";
const LAST_RECEIVED: &[u8] = b"last_received_micros";
const UPDATE_SEQ: &[u8] = b"update_seq";
const AUDIT_HEAD: &[u8] = b"audit_head";

/// Format tags of stored payloads. LZ4 cuts the bytes sled writes (and rewrites when it
/// consolidates pages) about fourfold for FHIR JSON, which more than doubles write throughput;
/// decompression gives back the exact bytes received.
const PAYLOAD_RAW: u8 = 0;
const PAYLOAD_LZ4: u8 = 1;

/// The live store under the data dir, and the two directories of a `rekey` swap.
const LIVE_DIR: &str = "sled";
const REKEY_DIR: &str = "sled.rekey";
const OLD_DIR: &str = "sled.old";
const LOCK_FILE: &str = "lock";
/// `meta` key: the ids of every key that has sealed records in this store (8 bytes each).
const SEAL_KEYS: &[u8] = b"seal_key_ids";

/// Finishes or undoes a `rekey` swap that a crash interrupted. `sled.old` exists only once the
/// copy in `sled.rekey` was complete, so: with `sled.old` and no `sled`, the copy goes live;
/// with `sled` and `sled.rekey` (no `sled.old`), the copy was unfinished and is removed; with
/// `sled` and `sled.old`, only the removal of the old store was left.
fn recover_swap(dir: &Path) -> Result<(), StoreError> {
    let (live, fresh, old) = (dir.join(LIVE_DIR), dir.join(REKEY_DIR), dir.join(OLD_DIR));
    if old.exists() {
        if !live.exists() {
            if fresh.exists() {
                std::fs::rename(&fresh, &live).map_err(io_unavailable)?;
                tracing::warn!(
                    "finished a rekey that was interrupted: the re-sealed store is live"
                );
            } else {
                // Should not happen under the lock; never lose the only copy.
                std::fs::rename(&old, &live).map_err(io_unavailable)?;
                tracing::warn!("a rekey left no copy behind: the store before it is live again");
            }
            sync_dir(dir)?;
        }
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(io_unavailable)?;
        }
    } else if fresh.exists() {
        tracing::warn!("removing the copy left by an interrupted rekey; run rekey again");
        std::fs::remove_dir_all(&fresh).map_err(io_unavailable)?;
    }
    Ok(())
}

/// Takes an exclusive lock on `<dir>/lock` for as long as the returned file is held, so no two
/// processes open, repair or swap the same data dir (sled's own lock covers only its
/// directory, not the `rekey` swap around it).
fn lock_dir(dir: &Path) -> Result<Arc<std::fs::File>, StoreError> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(LOCK_FILE))
        .map_err(io_unavailable)?;
    match file.try_lock() {
        Ok(()) => Ok(Arc::new(file)),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Unavailable(format!(
            "data dir {} is in use by another process (its lock file is held)",
            dir.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(io_unavailable(e)),
    }
}

/// Makes renames in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_unavailable)
}

fn io_unavailable(e: std::io::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// Trees whose records hold patient data: sealed when a key is configured. Their names are
/// part of each record's associated data.
const REFERRALS: &str = "referrals";
const VERSIONS: &str = "versions";
const PAYLOADS: &str = "payloads";
const UPDATES: &str = "updates";
/// Task states hold appointment times.
const TASK_STATES: &str = "task_states";
const SEALED_TREES: [&str; 5] = [REFERRALS, VERSIONS, PAYLOADS, UPDATES, TASK_STATES];

/// Reads and writes the records of [`SEALED_TREES`]: sealed with the current key when one is
/// configured, plain otherwise. Records written before encryption was enabled are still read
/// (they start with `{` or a payload format tag, never with [`SEALED`]).
#[derive(Clone, Default)]
struct Codec(Option<Arc<Keyring>>);

impl Codec {
    fn seal(&self, tree: &str, key: &[u8], plain: &[u8]) -> Result<Vec<u8>, StoreError> {
        match &self.0 {
            Some(keys) => keys.seal(&context(tree, key), plain),
            None => Ok(plain.to_vec()),
        }
    }

    fn open<'a>(
        &self,
        tree: &str,
        key: &[u8],
        stored: &'a [u8],
    ) -> Result<Cow<'a, [u8]>, StoreError> {
        if stored.first() != Some(&SEALED) {
            return Ok(Cow::Borrowed(stored));
        }
        match &self.0 {
            Some(keys) => keys.open(&context(tree, key), stored).map(Cow::Owned),
            None => Err(StoreError::Corrupt(
                "the record is encrypted and storage.encryption_key is not set".into(),
            )),
        }
    }

    fn encode<T: Serialize>(
        &self,
        tree: &str,
        key: &[u8],
        value: &T,
    ) -> Result<Vec<u8>, StoreError> {
        self.seal(tree, key, &encode(value)?)
    }

    fn decode<T: for<'de> Deserialize<'de>>(
        &self,
        tree: &str,
        key: &[u8],
        stored: &[u8],
    ) -> Result<T, StoreError> {
        decode(&self.open(tree, key, stored)?)
    }

    /// Refuses to run on a store holding records this keyring cannot open: better a clear
    /// error at start than failing reads later. The store lists every key id that ever sealed
    /// a record in it (`meta`), so the check is complete without reading the records; the
    /// first and last record of each sealed tree are looked at as well. Then records the
    /// current key (when there is one) in that list, before it seals anything.
    fn admit_keys(&self, trees: &Trees) -> Result<(), StoreError> {
        let listed = trees.meta.get(SEAL_KEYS).map_err(unavailable)?;
        let mut ids: Vec<KeyId> = listed
            .as_deref()
            .unwrap_or_default()
            .chunks_exact(8)
            .filter_map(|c| c.try_into().ok())
            .collect();
        let mut plain = false;
        for tree in [
            &trees.referrals,
            &trees.versions,
            &trees.payloads,
            &trees.updates,
            &trees.task_states,
        ] {
            for end in [tree.first(), tree.last()] {
                let Some((_, value)) = end.map_err(unavailable)? else {
                    continue;
                };
                match sealed_key_id(&value) {
                    Some(id) if !ids.contains(&id) => ids.push(id),
                    Some(_) => {}
                    None => plain = true,
                }
            }
        }
        for id in &ids {
            match &self.0 {
                None => {
                    return Err(StoreError::Unavailable(format!(
                        "the store holds records encrypted with key {}; set storage.encryption_key",
                        hex(id)
                    )));
                }
                Some(keys) if !keys.knows(id) => return Err(unknown_key(id)),
                Some(_) => {}
            }
        }
        if let Some(keys) = &self.0 {
            if plain {
                tracing::warn!(
                    "records written before encryption was enabled are stored unencrypted; run `referral-relay rekey` to seal them"
                );
            }
            let current = keys.current_id();
            if !ids.contains(&current) {
                ids.push(current);
                trees
                    .meta
                    .insert(SEAL_KEYS, ids.concat())
                    .map_err(unavailable)?;
            }
        }
        Ok(())
    }
}

/// The associated data of a sealed record: its tree and key.
fn context(tree: &str, key: &[u8]) -> Vec<u8> {
    let mut context = Vec::with_capacity(tree.len() + 1 + key.len());
    context.extend_from_slice(tree.as_bytes());
    context.push(0);
    context.extend_from_slice(key);
    context
}

/// The sled-backed [`Store`].
pub struct SledStore {
    db: sled::Db,
    trees: Trees,
    flusher: Flusher,
    codec: Codec,
    /// Held while the store is open (see [`lock_dir`]).
    _lock: Arc<std::fs::File>,
}

#[derive(Clone)]
struct Trees {
    referrals: sled::Tree,
    by_service: sled::Tree,
    versions: sled::Tree,
    payloads: sled::Tree,
    deliveries: sled::Tree,
    events: sled::Tree,
    by_modified: sled::Tree,
    meta: sled::Tree,
    /// id (u64 BE) → [`UpdateRecord`]
    updates: sled::Tree,
    /// id (u64 BE) → () for updates not yet delivered
    open_updates: sled::Tree,
    /// referral ref → [`TaskState`]
    task_states: sled::Tree,
    /// seq (u64 BE) → [`AuditEntry`]
    audit: sled::Tree,
}

/// What the dedup tree remembers about a delivery.
#[derive(Serialize, Deserialize)]
struct DeliveryRef {
    referral: ReferralRef,
    version: u64,
}

impl SledStore {
    /// Opens (or creates) the store in `dir`, unencrypted, and starts its flusher thread.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(dir, None)
    }

    /// Opens the store with `keys` sealing records that hold patient data (see `seal`). Refuses
    /// a store whose records were sealed with a key `keys` does not hold.
    pub fn open_with(dir: &Path, keys: Option<Keyring>) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Unavailable(format!("cannot create data dir {}: {e}", dir.display()))
        })?;
        Self::open_locked(dir, keys, lock_dir(dir)?)
    }

    /// Opens the store under a lock already taken on `dir`.
    fn open_locked(
        dir: &Path,
        keys: Option<Keyring>,
        lock: Arc<std::fs::File>,
    ) -> Result<Self, StoreError> {
        recover_swap(dir)?;
        let db = sled::Config::new()
            .path(dir.join(LIVE_DIR))
            .open()
            .map_err(|e| match e {
                sled::Error::Io(io) if io.to_string().contains("lock") => {
                    StoreError::Unavailable(format!(
                        "data dir {} is in use by another process ({io})",
                        dir.display()
                    ))
                }
                other => StoreError::Unavailable(format!(
                    "cannot open the store in {}: {other}",
                    dir.display()
                )),
            })?;
        let tree = |name: &str| db.open_tree(name).map_err(unavailable);
        let trees = Trees {
            referrals: tree("referrals")?,
            by_service: tree("by_service")?,
            versions: tree("versions")?,
            payloads: tree("payloads")?,
            deliveries: tree("deliveries")?,
            events: tree("events")?,
            by_modified: tree("by_modified")?,
            meta: tree("meta")?,
            updates: tree("updates")?,
            open_updates: tree("open_updates")?,
            task_states: tree("task_states")?,
            audit: tree("audit")?,
        };
        // Before the flusher starts: it holds the database (and its lock) until stopped.
        let codec = Codec(keys.map(Arc::new));
        codec.admit_keys(&trees)?;
        // Each flush reports the feed sequence it made durable: the counter as read before
        // the flush, since every write it covers was committed before that read.
        let meta = trees.meta.clone();
        let read_seq = move || -> Result<u64, String> {
            let seq = meta.get(EVENT_SEQ).map_err(|e| e.to_string())?;
            seq.map(|v| read_u64(&v).map_err(|e| e.to_string()))
                .transpose()
                .map(Option::unwrap_or_default)
        };
        let on_disk = read_seq().map_err(StoreError::Unavailable)?;
        let flushed = db.clone();
        let flusher = Flusher::start(on_disk, move || {
            let seq = read_seq()?;
            flushed.flush().map_err(|e| e.to_string())?;
            Ok(seq)
        })?;
        Ok(Self {
            db,
            trees,
            flusher,
            codec,
            _lock: lock,
        })
    }

    /// Re-seals every record that holds patient data with the current key of `keys` (records
    /// written before encryption was enabled, and records sealed with a previous key) by
    /// copying the whole store into a fresh one and swapping it in. A copy rather than
    /// rewriting in place: sled keeps superseded bytes in its log files, so only a new store
    /// leaves no plaintext or old-key records behind. The service must be stopped. Returns how
    /// many records were sealed.
    ///
    /// Crash-safe: the copy is complete and flushed before `sled` is renamed to `sled.old` and
    /// `sled.rekey` to `sled`; [`recover_swap`] finishes or undoes a swap a crash interrupted.
    pub fn rekey(dir: &Path, keys: Keyring) -> Result<u64, StoreError> {
        // The lock outlives the store opened here: no one may open the data dir mid-swap.
        let lock = lock_dir(dir)?;
        let store = Self::open_locked(dir, Some(keys), Arc::clone(&lock))?;
        let fresh_dir = dir.join(REKEY_DIR);
        if fresh_dir.exists() {
            std::fs::remove_dir_all(&fresh_dir).map_err(io_unavailable)?;
        }
        let fresh = sled::Config::new()
            .path(&fresh_dir)
            .open()
            .map_err(unavailable)?;
        let codec = &store.codec;
        let mut sealed = 0;
        for name in store.db.tree_names() {
            let from = store.db.open_tree(&name).map_err(unavailable)?;
            let to = fresh.open_tree(&name).map_err(unavailable)?;
            let tree = SEALED_TREES
                .into_iter()
                .find(|t| t.as_bytes() == name.as_ref());
            let mut batch = sled::Batch::default();
            let mut batched = 0;
            for item in from.iter() {
                let (key, value) = item.map_err(unavailable)?;
                match tree {
                    Some(tree) => {
                        let plain = codec.open(tree, &key, &value)?;
                        batch.insert(&*key, codec.seal(tree, &key, &plain)?);
                        sealed += 1;
                    }
                    None => batch.insert(key, value),
                }
                batched += 1;
                if batched == 1000 {
                    to.apply_batch(std::mem::take(&mut batch))
                        .map_err(unavailable)?;
                    batched = 0;
                }
            }
            to.apply_batch(batch).map_err(unavailable)?;
        }
        // Everything is sealed with the current key now; earlier keys are no longer needed.
        let current = store.codec.0.as_ref().map(|k| k.current_id().to_vec());
        fresh
            .open_tree("meta")
            .and_then(|meta| meta.insert(SEAL_KEYS, current.unwrap_or_default()))
            .map_err(unavailable)?;
        fresh.flush().map_err(unavailable)?;
        drop(fresh);
        drop(store);
        let (live, old) = (dir.join(LIVE_DIR), dir.join(OLD_DIR));
        std::fs::rename(&live, &old).map_err(io_unavailable)?;
        sync_dir(dir)?;
        std::fs::rename(&fresh_dir, &live).map_err(io_unavailable)?;
        sync_dir(dir)?;
        std::fs::remove_dir_all(&old).map_err(io_unavailable)?;
        drop(lock);
        Ok(sealed)
    }

    /// The referral stored under `key` (its ref), opened and decoded.
    fn referral_record(&self, key: &[u8]) -> Result<Option<ReferralRecord>, StoreError> {
        self.trees
            .referrals
            .get(key)
            .map_err(unavailable)?
            .map(|v| self.codec.decode(REFERRALS, key, &v))
            .transpose()
    }

    fn write_delivery(&self, d: &NewDelivery) -> Result<PutOutcome, StoreError> {
        let t = &self.trees;
        let referral_key = d.referral.as_str().as_bytes();
        let size = d.raw.len() as u64;
        let codec = &self.codec;
        let payload = compress(&d.raw);

        let result = (
            &t.referrals,
            &t.by_service,
            &t.versions,
            &t.payloads,
            &t.deliveries,
            &t.events,
            &t.by_modified,
            &t.meta,
            &t.audit,
        )
            .transaction(
                |(
                    referrals,
                    by_service,
                    versions,
                    payloads,
                    deliveries,
                    events,
                    by_modified,
                    meta,
                    audit,
                )| {
                    if let Some(existing) = deliveries.get(d.dedup_key.as_bytes())? {
                        let existing: DeliveryRef = decode(&existing).map_err(abort)?;
                        return Ok(PutOutcome::Duplicate {
                            version: existing.version,
                        });
                    }
                    let previous: Option<ReferralRecord> = referrals
                        .get(referral_key)?
                        .map(|v| codec.decode(REFERRALS, referral_key, &v))
                        .transpose()
                        .map_err(abort)?;
                    // A referral belongs to the integration that first delivered it.
                    let owner = match &previous {
                        None => d.integration.clone(),
                        Some(p) => match &p.owner {
                            Some(owner) => owner.clone(),
                            None => {
                                let first = version_key(&d.referral, 1);
                                versions
                                    .get(&first)?
                                    .map(|v| codec.decode::<VersionRecord>(VERSIONS, &first, &v))
                                    .transpose()
                                    .map_err(abort)?
                                    .map_or_else(|| p.integration.clone(), |v| v.integration)
                            }
                        },
                    };
                    if owner != d.integration && !d.shares_with.contains(&owner) {
                        return Ok(PutOutcome::OwnedElsewhere { owner });
                    }

                    // A message that names its External Service ID files (or moves) the
                    // referral there; otherwise an existing referral stays where it is.
                    let service_id = match (&d.service, &previous) {
                        (ServiceAssignment::Named(s), _) => Some(s.clone()),
                        (_, Some(p)) => p.service_id.clone(),
                        (ServiceAssignment::Default(s), None) => Some(s.clone()),
                        (ServiceAssignment::Unassigned, None) => None,
                    };
                    // Receive times never go backwards along the feed, so a time maps to a
                    // position in it (see `first_seq_since`).
                    let last_micros = meta
                        .get(LAST_RECEIVED)?
                        .map(|v| read_u64(&v))
                        .transpose()
                        .map_err(abort)?
                        .unwrap_or(0);
                    let received_at = d.received_at.max(from_micros(last_micros));
                    let version = previous.as_ref().map_or(1, |p| p.version + 1);
                    let mut summary = d.summary.clone();
                    if let Some(p) = &previous {
                        summary.fill_from(&p.summary);
                        by_service.remove(service_key(p.service_id.as_ref(), &d.referral))?;
                        by_modified.remove(modified_key_of(p))?;
                    }
                    let record = ReferralRecord {
                        referral: d.referral.clone(),
                        service_id: service_id.clone(),
                        integration: d.integration.clone(),
                        owner: Some(owner.clone()),
                        latest_event: d.event.clone(),
                        version,
                        created_at: previous.as_ref().map_or(received_at, |p| p.created_at),
                        modified_at: received_at,
                        exported_at: previous.as_ref().and_then(|p| p.exported_at),
                        summary,
                    };
                    let seq = meta
                        .get(EVENT_SEQ)?
                        .map(|v| read_u64(&v))
                        .transpose()
                        .map_err(abort)?
                        .unwrap_or(0)
                        + 1;
                    let version_record = VersionRecord {
                        referral: d.referral.clone(),
                        version,
                        event: d.event.clone(),
                        integration: d.integration.clone(),
                        service_id: service_id.clone(),
                        message_header_id: d.message_header_id.clone(),
                        bundle_id: d.bundle_id.clone(),
                        bundle_timestamp: d.bundle_timestamp.clone(),
                        received_at,
                        summary: d.summary.clone(),
                        problems: d.problems.clone(),
                        size,
                        sha256: d.sha256.clone(),
                        seq,
                        purged: false,
                    };
                    let event = EventRecord {
                        seq,
                        referral: d.referral.clone(),
                        version,
                        event: d.event.clone(),
                        service_id: service_id.clone(),
                        received_at,
                    };
                    let version_key = version_key(&d.referral, version);

                    // The audit entry is part of the same write: stored, then audited, or neither.
                    append_audit(
                        meta,
                        audit,
                        received_at,
                        "DELIVERY_STORED",
                        d.integration.as_str(),
                        serde_json::json!({
                            "referral": d.referral.as_str(),
                            "version": version,
                            "event": d.event.as_str(),
                            "seq": seq,
                        }),
                    )?;
                    meta.insert(EVENT_SEQ, &seq.to_be_bytes())?;
                    meta.insert(LAST_RECEIVED, &micros(received_at).to_be_bytes())?;
                    referrals.insert(
                        referral_key,
                        codec
                            .encode(REFERRALS, referral_key, &record)
                            .map_err(abort)?,
                    )?;
                    by_service.insert(service_key(service_id.as_ref(), &d.referral), &[])?;
                    by_modified.insert(modified_key(received_at, &d.referral), &[])?;
                    versions.insert(
                        version_key.as_slice(),
                        codec
                            .encode(VERSIONS, &version_key, &version_record)
                            .map_err(abort)?,
                    )?;
                    payloads.insert(
                        version_key.as_slice(),
                        codec
                            .seal(PAYLOADS, &version_key, &payload)
                            .map_err(abort)?,
                    )?;
                    events.insert(&seq.to_be_bytes(), encode(&event).map_err(abort)?)?;
                    deliveries.insert(
                        d.dedup_key.as_bytes(),
                        encode(&DeliveryRef {
                            referral: d.referral.clone(),
                            version,
                        })
                        .map_err(abort)?,
                    )?;
                    Ok(PutOutcome::Stored { version })
                },
            );
        result.map_err(tx_error)
    }
}

#[async_trait]
impl Store for SledStore {
    async fn put_delivery(&self, delivery: NewDelivery) -> Result<PutOutcome, StoreError> {
        let outcome = self.write_delivery(&delivery)?;
        // A duplicate waits too: the first copy may still be on its way to disk.
        self.flusher.durable().await?;
        Ok(outcome)
    }

    async fn referral(&self, referral: &ReferralRef) -> Result<Option<ReferralRecord>, StoreError> {
        self.referral_record(referral.as_str().as_bytes())
    }

    async fn referrals_for_service(
        &self,
        service: Option<&ServiceId>,
    ) -> Result<Vec<ReferralRecord>, StoreError> {
        let mut prefix = service
            .map(|s| s.as_str().as_bytes().to_vec())
            .unwrap_or_default();
        prefix.push(0);
        let mut records = Vec::new();
        for item in self.trees.by_service.scan_prefix(&prefix) {
            let (key, _) = item.map_err(unavailable)?;
            if let Some(record) = self.referral_record(&key[prefix.len()..])? {
                records.push(record);
            }
        }
        Ok(records)
    }

    async fn versions(&self, referral: &ReferralRef) -> Result<Vec<VersionRecord>, StoreError> {
        let mut prefix = referral.as_str().as_bytes().to_vec();
        prefix.push(0);
        self.trees
            .versions
            .scan_prefix(&prefix)
            .map(|item| {
                let (key, value) = item.map_err(unavailable)?;
                self.codec.decode(VERSIONS, &key, &value)
            })
            .collect()
    }

    async fn payload(
        &self,
        referral: &ReferralRef,
        version: u64,
    ) -> Result<Option<Bytes>, StoreError> {
        let key = version_key(referral, version);
        self.trees
            .payloads
            .get(&key)
            .map_err(unavailable)?
            .map(|v| open_payload(&self.codec.open(PAYLOADS, &key, &v)?))
            .transpose()
    }

    async fn events_after(&self, after: u64, limit: usize) -> Result<Vec<EventRecord>, StoreError> {
        let durable = self.durable_seq();
        if after >= durable {
            return Ok(Vec::new());
        }
        let range = after.saturating_add(1).to_be_bytes()..=durable.to_be_bytes();
        self.trees
            .events
            .range(range)
            .take(limit)
            .map(|item| decode(&item.map_err(unavailable)?.1))
            .collect()
    }

    fn durable_seq(&self) -> u64 {
        self.flusher.marks.borrow().seq
    }

    async fn wait_for_events_after(&self, after: u64) {
        let mut marks = self.flusher.marks.clone();
        if marks.wait_for(|m| m.seq > after).await.is_err() {
            // The flusher is gone (shutting down): nothing new will arrive.
            std::future::pending::<()>().await;
        }
    }

    async fn seq_before(&self, since: OffsetDateTime) -> Result<u64, StoreError> {
        // Receive times are non-decreasing along the feed: binary search for the first
        // entry at or after `since`.
        let (mut low, mut high) = (1, self.durable_seq() + 1);
        while low < high {
            let middle = low + (high - low) / 2;
            let event: EventRecord = match self
                .trees
                .events
                .get(middle.to_be_bytes())
                .map_err(unavailable)?
            {
                Some(bytes) => decode(&bytes)?,
                None => {
                    return Err(StoreError::Corrupt(format!(
                        "feed entry {middle} is missing"
                    )));
                }
            };
            if event.received_at < since {
                low = middle + 1;
            } else {
                high = middle;
            }
        }
        Ok(low - 1)
    }

    async fn referrals_changed(
        &self,
        after: u64,
        until: u64,
        max_events: usize,
    ) -> Result<ChangedReferrals, StoreError> {
        let mut referrals = Vec::new();
        let mut scanned_to = after;
        if after >= until {
            return Ok(ChangedReferrals {
                referrals,
                scanned_to: until,
            });
        }
        let range = after.saturating_add(1).to_be_bytes()..=until.to_be_bytes();
        for item in self.trees.events.range(range).take(max_events) {
            let event: EventRecord = decode(&item.map_err(unavailable)?.1)?;
            scanned_to = event.seq;
            // Listed at its latest change up to `until`: skip this entry if the referral has
            // a later version that is still within the bound.
            let next_key = version_key(&event.referral, event.version + 1);
            let next = self
                .trees
                .versions
                .get(&next_key)
                .map_err(unavailable)?
                .map(|v| self.codec.decode::<VersionRecord>(VERSIONS, &next_key, &v))
                .transpose()?;
            if next.is_some_and(|n| n.seq <= until) {
                continue;
            }
            if let Some(record) = self.referral_record(event.referral.as_str().as_bytes())? {
                referrals.push((event.seq, record));
            }
        }
        if referrals.is_empty() && scanned_to == after {
            scanned_to = until;
        }
        Ok(ChangedReferrals {
            referrals,
            scanned_to,
        })
    }

    async fn enqueue_update(
        &self,
        mut update: UpdateRecord,
        task: TaskState,
    ) -> Result<UpdateRecord, StoreError> {
        let t = &self.trees;
        let referral_key = update.referral.as_str().as_bytes().to_vec();
        let task = self.codec.encode(TASK_STATES, &referral_key, &task)?;
        let codec = &self.codec;
        let stored = (&t.updates, &t.open_updates, &t.task_states, &t.meta)
            .transaction(|(updates, open, tasks, meta)| {
                let id = meta
                    .get(UPDATE_SEQ)?
                    .map(|v| read_u64(&v))
                    .transpose()
                    .map_err(abort)?
                    .unwrap_or(0)
                    + 1;
                let mut record = update.clone();
                record.id = id;
                meta.insert(UPDATE_SEQ, &id.to_be_bytes())?;
                let key = id.to_be_bytes();
                updates.insert(&key, codec.encode(UPDATES, &key, &record).map_err(abort)?)?;
                open.insert(&id.to_be_bytes(), &[])?;
                tasks.insert(referral_key.as_slice(), task.as_slice())?;
                Ok(record)
            })
            .map_err(tx_error)?;
        self.flusher.durable().await?;
        update.id = stored.id;
        Ok(stored)
    }

    async fn save_update(&self, update: &UpdateRecord) -> Result<(), StoreError> {
        let t = &self.trees;
        let key = update.id.to_be_bytes();
        let value = self.codec.encode(UPDATES, &key, update)?;
        (&t.updates, &t.open_updates)
            .transaction(|(updates, open)| {
                updates.insert(&key, value.as_slice())?;
                if matches!(
                    update.state,
                    UpdateState::Delivered | UpdateState::Discarded
                ) {
                    open.remove(&key)?;
                } else {
                    open.insert(&key, &[])?;
                }
                Ok::<_, ConflictableTransactionError<StoreError>>(())
            })
            .map_err(tx_error)?;
        self.flusher.durable().await
    }

    async fn update(&self, id: u64) -> Result<Option<UpdateRecord>, StoreError> {
        let key = id.to_be_bytes();
        self.trees
            .updates
            .get(key)
            .map_err(unavailable)?
            .map(|v| self.codec.decode(UPDATES, &key, &v))
            .transpose()
    }

    async fn updates(
        &self,
        state: Option<UpdateState>,
        after: u64,
        limit: usize,
    ) -> Result<Vec<UpdateRecord>, StoreError> {
        let mut found = Vec::new();
        for item in self
            .trees
            .updates
            .range(after.saturating_add(1).to_be_bytes()..)
        {
            let (key, value) = item.map_err(unavailable)?;
            let record: UpdateRecord = self.codec.decode(UPDATES, &key, &value)?;
            if state.is_none_or(|s| s == record.state) {
                found.push(record);
                if found.len() == limit {
                    break;
                }
            }
        }
        Ok(found)
    }

    async fn open_updates(&self) -> Result<Vec<UpdateRecord>, StoreError> {
        let mut found = Vec::new();
        for item in self.trees.open_updates.iter() {
            let (key, _) = item.map_err(unavailable)?;
            if let Some(v) = self.trees.updates.get(&key).map_err(unavailable)? {
                found.push(self.codec.decode(UPDATES, &key, &v)?);
            }
        }
        Ok(found)
    }

    async fn discard_update(
        &self,
        update: &UpdateRecord,
        task: TaskState,
    ) -> Result<(), StoreError> {
        let t = &self.trees;
        let key = update.id.to_be_bytes();
        let value = self.codec.encode(UPDATES, &key, update)?;
        let referral = update.referral.as_str().as_bytes();
        let task = self.codec.encode(TASK_STATES, referral, &task)?;
        (&t.updates, &t.open_updates, &t.task_states)
            .transaction(|(updates, open, tasks)| {
                updates.insert(&key, value.as_slice())?;
                open.remove(&key)?;
                tasks.insert(referral, task.as_slice())?;
                Ok::<_, ConflictableTransactionError<StoreError>>(())
            })
            .map_err(tx_error)?;
        self.flusher.durable().await
    }

    async fn referrals_modified(
        &self,
        from: Option<OffsetDateTime>,
        to: Option<OffsetDateTime>,
        after: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<ModifiedBatch, StoreError> {
        use std::ops::Bound;
        let start = match after {
            Some(key) => Bound::Excluded(key),
            None => Bound::Included(from.map_or(0, micros).to_be_bytes().to_vec()),
        };
        // Keys are (micros, 0, ref): everything at `to`'s microsecond sorts below micros + 1.
        let end = match to {
            Some(to) => Bound::Excluded(micros(to).saturating_add(1).to_be_bytes().to_vec()),
            None => Bound::Unbounded,
        };
        let mut batch = ModifiedBatch::default();
        for item in self.trees.by_modified.range::<Vec<u8>, _>((start, end)) {
            let (key, _) = item.map_err(unavailable)?;
            if let Some(record) = self.referral_record(&key[9..])? {
                batch.referrals.push(record);
            }
            if batch.referrals.len() == limit {
                batch.next = Some(key.to_vec());
                break;
            }
        }
        Ok(batch)
    }

    async fn mark_exported(
        &self,
        written: &[(ReferralRef, OffsetDateTime)],
        at: OffsetDateTime,
    ) -> Result<usize, StoreError> {
        let mut marked = 0;
        for chunk in written.chunks(500) {
            // A transaction, so a delivery committing meanwhile is never overwritten: the
            // record is read and rewritten atomically, and one modified since it was written
            // to the export keeps `exported_at` unset.
            let codec = &self.codec;
            marked += self
                .trees
                .referrals
                .transaction(|tx| {
                    let mut marked = 0;
                    for (referral, modified_at) in chunk {
                        let key = referral.as_str().as_bytes();
                        let Some(bytes) = tx.get(key)? else {
                            continue;
                        };
                        let mut record: ReferralRecord =
                            codec.decode(REFERRALS, key, &bytes).map_err(abort)?;
                        if record.modified_at != *modified_at {
                            continue;
                        }
                        record.exported_at = Some(at);
                        tx.insert(key, codec.encode(REFERRALS, key, &record).map_err(abort)?)?;
                        marked += 1;
                    }
                    Ok(marked)
                })
                .map_err(tx_error)?;
        }
        self.flusher.durable().await?;
        Ok(marked)
    }

    async fn purge_versions_before(&self, cutoff: OffsetDateTime) -> Result<u64, StoreError> {
        let mut purged = 0;
        for item in self.trees.versions.iter() {
            let (key, value) = item.map_err(unavailable)?;
            let mut version: VersionRecord = self.codec.decode(VERSIONS, &key, &value)?;
            if version.purged || version.received_at >= cutoff {
                continue;
            }
            let latest = self
                .referral_record(version.referral.as_str().as_bytes())?
                .map_or(version.version, |r| r.version);
            if version.version >= latest {
                continue;
            }
            version.purged = true;
            version.summary = crate::domain::Summary::default();
            version.problems.clear();
            let value = self.codec.encode(VERSIONS, &key, &version)?;
            (&self.trees.versions, &self.trees.payloads)
                .transaction(|(versions, payloads)| {
                    versions.insert(&*key, value.as_slice())?;
                    payloads.remove(&*key)?;
                    Ok::<_, ConflictableTransactionError<StoreError>>(())
                })
                .map_err(tx_error)?;
            purged += 1;
        }
        self.flusher.durable().await?;
        Ok(purged)
    }

    async fn audit(
        &self,
        action: &str,
        actor: &str,
        details: serde_json::Value,
    ) -> Result<AuditEntry, StoreError> {
        let t = &self.trees;
        let entry = (&t.meta, &t.audit)
            .transaction(|(meta, audit)| {
                append_audit(
                    meta,
                    audit,
                    OffsetDateTime::now_utc(),
                    action,
                    actor,
                    details.clone(),
                )
            })
            .map_err(tx_error)?;
        self.flusher.durable().await?;
        Ok(entry)
    }

    async fn audit_entries(&self, after: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        self.trees
            .audit
            .range(after.saturating_add(1).to_be_bytes()..)
            .take(limit)
            .map(|item| decode(&item.map_err(unavailable)?.1))
            .collect()
    }

    async fn task_state(&self, referral: &ReferralRef) -> Result<TaskState, StoreError> {
        let key = referral.as_str().as_bytes();
        Ok(self
            .trees
            .task_states
            .get(key)
            .map_err(unavailable)?
            .map(|v| self.codec.decode(TASK_STATES, key, &v))
            .transpose()?
            .unwrap_or_default())
    }

    async fn check_writable(&self) -> Result<(), StoreError> {
        let now = OffsetDateTime::now_utc().unix_timestamp().to_be_bytes();
        self.trees
            .meta
            .insert(READY_MARKER, &now)
            .map_err(unavailable)?;
        self.flusher.durable().await
    }
}

impl Drop for SledStore {
    fn drop(&mut self) {
        self.flusher.stop();
        match self.db.flush() {
            Ok(_) => tracing::info!("store flushed and closed"),
            Err(e) => tracing::error!(error = %e, "final flush of the store failed"),
        }
    }
}

/// Group commit. Writers bump `requested` after their write is in sled's log; one thread calls
/// the blocking `Db::flush` (fsync) for everything requested so far and publishes how far it
/// got. Every writer whose number that flush covered is woken at once, so concurrent deliveries
/// share fsyncs. sled's `flush_async` is never used: it deadlocks when called concurrently
/// (sled issue 1308).
struct Flusher {
    queue: Arc<(Mutex<Queue>, Condvar)>,
    marks: watch::Receiver<Marks>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Default)]
struct Queue {
    requested: u64,
    stop: bool,
}

/// How far flushing has got: writes numbered up to `ok` are on disk; writes numbered up to
/// `failed` were covered by a flush that failed, so they must not be acknowledged. `seq` is
/// the highest feed sequence on disk: the event feed shows nothing beyond it.
#[derive(Debug, Clone, Copy, Default)]
struct Marks {
    ok: u64,
    failed: u64,
    seq: u64,
}

impl Flusher {
    /// Starts the flusher thread; `flush` makes everything written so far durable and returns
    /// the feed sequence that is now on disk (`on_disk` is where it starts).
    fn start(
        on_disk: u64,
        flush: impl FnMut() -> Result<u64, String> + Send + 'static,
    ) -> Result<Self, StoreError> {
        let queue = Arc::new((Mutex::new(Queue::default()), Condvar::new()));
        let (tx, marks) = watch::channel(Marks {
            seq: on_disk,
            ..Marks::default()
        });
        let thread_queue = Arc::clone(&queue);
        let thread = std::thread::Builder::new()
            .name("store-flusher".into())
            .spawn(move || flush_loop(flush, &thread_queue, &tx))
            .map_err(|e| StoreError::Unavailable(format!("cannot start flusher thread: {e}")))?;
        Ok(Self {
            queue,
            marks,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Waits until everything written before this call is on disk.
    async fn durable(&self) -> Result<(), StoreError> {
        let ticket = {
            let (lock, wake) = &*self.queue;
            let mut q = lock.lock().unwrap_or_else(PoisonError::into_inner);
            if q.stop {
                return Err(StoreError::Unavailable("the store is shutting down".into()));
            }
            q.requested += 1;
            wake.notify_one();
            q.requested
        };
        let mut marks = self.marks.clone();
        let reached = marks
            .wait_for(|m| m.ok >= ticket || m.failed >= ticket)
            .await
            .map_err(|_| StoreError::Unavailable("the store flusher stopped".into()))?;
        if reached.failed >= ticket {
            return Err(StoreError::Unavailable("flushing to disk failed".into()));
        }
        Ok(())
    }

    fn stop(&self) {
        let (lock, wake) = &*self.queue;
        lock.lock().unwrap_or_else(PoisonError::into_inner).stop = true;
        wake.notify_all();
        let handle = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }
}

fn flush_loop(
    mut flush: impl FnMut() -> Result<u64, String>,
    queue: &(Mutex<Queue>, Condvar),
    marks: &watch::Sender<Marks>,
) {
    let (lock, wake) = queue;
    let mut done = 0;
    loop {
        let target = {
            let mut q = lock.lock().unwrap_or_else(PoisonError::into_inner);
            while q.requested == done && !q.stop {
                q = wake.wait(q).unwrap_or_else(PoisonError::into_inner);
            }
            if q.requested == done {
                return;
            }
            q.requested
        };
        match flush() {
            Ok(seq) => marks.send_modify(|m| {
                m.ok = target;
                m.seq = m.seq.max(seq);
            }),
            Err(e) => {
                tracing::error!(error = %e, "flushing the store to disk failed");
                marks.send_modify(|m| m.failed = target);
            }
        }
        done = target;
    }
}

/// Appends an entry chained to the current head, inside the caller's transaction.
fn append_audit(
    meta: &sled::transaction::TransactionalTree,
    audit: &sled::transaction::TransactionalTree,
    at: OffsetDateTime,
    action: &str,
    actor: &str,
    details: serde_json::Value,
) -> Result<AuditEntry, ConflictableTransactionError<StoreError>> {
    let (seq, prev) = match meta.get(AUDIT_HEAD)? {
        Some(head) => {
            let (seq, prev): (u64, String) = decode(&head).map_err(abort)?;
            (seq + 1, prev)
        }
        None => (1, AUDIT_GENESIS.to_owned()),
    };
    let mut entry = AuditEntry {
        seq,
        at,
        action: action.to_owned(),
        actor: actor.to_owned(),
        details,
        prev,
        hash: String::new(),
    };
    entry.hash = entry.expected_hash();
    audit.insert(&seq.to_be_bytes(), encode(&entry).map_err(abort)?)?;
    meta.insert(AUDIT_HEAD, encode(&(seq, &entry.hash)).map_err(abort)?)?;
    Ok(entry)
}

/// A failed transaction as a store error: our own abort, or sled's I/O failure.
fn tx_error(e: TransactionError<StoreError>) -> StoreError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => unavailable(e),
    }
}

fn unavailable(e: sled::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn abort(e: StoreError) -> ConflictableTransactionError<StoreError> {
    ConflictableTransactionError::Abort(e)
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn read_u64(bytes: &[u8]) -> Result<u64, StoreError> {
    let array: [u8; 8] = bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt("counter is not 8 bytes".into()))?;
    Ok(u64::from_be_bytes(array))
}

fn compress(raw: &[u8]) -> Vec<u8> {
    let mut sealed = vec![PAYLOAD_LZ4];
    sealed.extend_from_slice(&lz4_flex::compress_prepend_size(raw));
    sealed
}

fn open_payload(stored: &[u8]) -> Result<Bytes, StoreError> {
    match stored.split_first() {
        Some((&PAYLOAD_LZ4, compressed)) => lz4_flex::decompress_size_prepended(compressed)
            .map(Bytes::from)
            .map_err(|e| StoreError::Corrupt(format!("payload does not decompress: {e}"))),
        Some((&PAYLOAD_RAW, raw)) => Ok(Bytes::copy_from_slice(raw)),
        _ => Err(StoreError::Corrupt(
            "payload has an unknown format tag".into(),
        )),
    }
}

fn version_key(referral: &ReferralRef, version: u64) -> Vec<u8> {
    let mut key = referral.as_str().as_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(&version.to_be_bytes());
    key
}

fn service_key(service: Option<&ServiceId>, referral: &ReferralRef) -> Vec<u8> {
    let mut key = service
        .map(|s| s.as_str().as_bytes().to_vec())
        .unwrap_or_default();
    key.push(0);
    key.extend_from_slice(referral.as_str().as_bytes());
    key
}

fn micros(at: OffsetDateTime) -> u64 {
    u64::try_from(at.unix_timestamp_nanos() / 1000).unwrap_or(0)
}

fn from_micros(micros: u64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn modified_key(at: OffsetDateTime, referral: &ReferralRef) -> Vec<u8> {
    let mut key = micros(at).to_be_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(referral.as_str().as_bytes());
    key
}

fn modified_key_of(record: &ReferralRecord) -> Vec<u8> {
    modified_key(record.modified_at, &record.referral)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A flush that fails must fail every write it covered; a later good flush serves the
    /// writes after it. Concurrent waiters share flushes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_flush_fails_the_writes_it_covered() {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let failing = Arc::new(AtomicBool::new(false));
        let flushes = Arc::new(AtomicUsize::new(0));
        let (f, n) = (Arc::clone(&failing), Arc::clone(&flushes));
        let flusher = Arc::new(
            Flusher::start(0, move || {
                n.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(std::time::Duration::from_millis(20));
                if f.load(Ordering::SeqCst) {
                    Err("injected I/O error".into())
                } else {
                    Ok(0)
                }
            })
            .unwrap(),
        );
        flusher.durable().await.unwrap();

        failing.store(true, Ordering::SeqCst);
        assert!(matches!(
            flusher.durable().await,
            Err(StoreError::Unavailable(m)) if m.contains("flushing to disk failed")
        ));

        failing.store(false, Ordering::SeqCst);
        let before = flushes.load(Ordering::SeqCst);
        let waiters: Vec<_> = (0..32)
            .map(|_| {
                let flusher = Arc::clone(&flusher);
                tokio::spawn(async move { flusher.durable().await })
            })
            .collect();
        for waiter in waiters {
            waiter.await.unwrap().unwrap();
        }
        // 32 writers, far fewer fsyncs: they waited on shared flushes.
        assert!(flushes.load(Ordering::SeqCst) - before < 32);
        flusher.stop();
        assert!(matches!(
            flusher.durable().await,
            Err(StoreError::Unavailable(_))
        ));
    }

    #[test]
    fn payloads_come_back_byte_for_byte() {
        for raw in [
            &b""[..],
            b"{}",
            "{\"name\": \"\u{e9}\"}".as_bytes(),
            &[0xff, 0x00, 0x7f][..],
        ] {
            let sealed = compress(raw);
            assert_eq!(sealed[0], PAYLOAD_LZ4);
            assert_eq!(open_payload(&sealed).unwrap().as_ref(), raw);
        }
        assert_eq!(open_payload(&[PAYLOAD_RAW, b'x']).unwrap().as_ref(), b"x");
        assert!(matches!(open_payload(&[9, 1]), Err(StoreError::Corrupt(_))));
        assert!(matches!(
            open_payload(&[PAYLOAD_LZ4, 10, 0, 0, 0, 0xf0]),
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(open_payload(&[]), Err(StoreError::Corrupt(_))));
    }
}
