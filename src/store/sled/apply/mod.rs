//! The transactional writes the [`writer`](super::writer) applies: a batch of deliveries, and an
//! entry appended to the audit chain (alone, or as part of a delivery).

pub(super) mod documents;
pub(super) mod queue;

use serde::{Deserialize, Serialize};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionalTree};
use time::OffsetDateTime;

use super::keys::{modified_key, modified_key_of, referral_seq_key};
use super::trees::{AUDIT_HEAD, EVENT_SEQ, LAST_RECEIVED, Trees, abort, tx_error};
use crate::domain::{IntegrationName, ReferralRef};
use crate::store::audit::{AUDIT_GENESIS, AuditEntry};
use crate::store::deliveries::{NewDelivery, PutOutcome, ReferralRecord, VersionRecord};
use crate::store::error::StoreError;
use crate::store::feed::EventRecord;
use crate::store::record::{Codec, compress, decode, encode, read_u64};
use crate::store::record::{PAYLOADS, REFERRALS, VERSIONS};
use crate::store::record::{from_micros, micros};

/// What the dedup tree remembers about a delivery.
#[derive(Serialize, Deserialize)]
pub(in crate::store) struct DeliveryRef {
    pub(in crate::store) referral: ReferralRef,
    pub(in crate::store) version: u64,
}

/// The trees a delivery writes, inside one transaction.
struct DeliveryTrees<'t> {
    referrals: &'t TransactionalTree,
    versions: &'t TransactionalTree,
    payloads: &'t TransactionalTree,
    deliveries: &'t TransactionalTree,
    events: &'t TransactionalTree,
    by_modified: &'t TransactionalTree,
    meta: &'t TransactionalTree,
    audit: &'t TransactionalTree,
    documents: &'t TransactionalTree,
    due_documents: &'t TransactionalTree,
    queue: &'t TransactionalTree,
    queue_index: &'t TransactionalTree,
}

/// Stores `batch` in one transaction, in order (so a delivery repeated within the batch is a
/// duplicate of its first copy, and sequence numbers and audit entries follow the batch), and
/// returns each delivery's outcome. Not yet durable: the writer flushes after.
pub(super) fn apply_deliveries(
    trees: &Trees,
    codec: &Codec,
    batch: &[&NewDelivery],
) -> Result<Vec<PutOutcome>, StoreError> {
    // Compressed outside the transaction, which sled may run more than once.
    let payloads: Vec<Vec<u8>> = batch.iter().map(|d| compress(&d.raw)).collect();
    let t = trees;
    (
        &t.referrals,
        &t.versions,
        &t.payloads,
        &t.deliveries,
        &t.events,
        &t.by_modified,
        &t.meta,
        &t.audit,
        &t.documents,
        &t.due_documents,
        &t.queue,
        &t.queue_index,
    )
        .transaction(
            |(
                referrals,
                versions,
                payloads_tree,
                deliveries,
                events,
                by_modified,
                meta,
                audit,
                documents,
                due_documents,
                queue,
                queue_index,
            )| {
                let tx = DeliveryTrees {
                    referrals,
                    versions,
                    payloads: payloads_tree,
                    deliveries,
                    events,
                    by_modified,
                    meta,
                    audit,
                    documents,
                    due_documents,
                    queue,
                    queue_index,
                };
                batch
                    .iter()
                    .zip(&payloads)
                    .map(|(d, payload)| apply_delivery(&tx, codec, d, payload))
                    .collect()
            },
        )
        .map_err(tx_error)
}

/// The integration a referral belongs to: the one that first delivered it (`d`'s, for a new
/// referral; for a record written before owners were kept, its first version's).
fn owner(
    t: &DeliveryTrees<'_>,
    codec: &Codec,
    d: &NewDelivery,
    previous: Option<&ReferralRecord>,
) -> Result<IntegrationName, ConflictableTransactionError<StoreError>> {
    let Some(p) = previous else {
        return Ok(d.integration.clone());
    };
    if let Some(owner) = &p.owner {
        return Ok(owner.clone());
    }
    let first = referral_seq_key(&d.referral, 1);
    Ok(t.versions
        .get(&first)?
        .map(|v| codec.decode::<VersionRecord>(VERSIONS, &first, &v))
        .transpose()
        .map_err(abort)?
        .map_or_else(|| p.integration.clone(), |v| v.integration))
}

/// Stores one delivery inside the batch's transaction.
fn apply_delivery(
    t: &DeliveryTrees<'_>,
    codec: &Codec,
    d: &NewDelivery,
    payload: &[u8],
) -> Result<PutOutcome, ConflictableTransactionError<StoreError>> {
    let referral_key = d.referral.as_str().as_bytes();
    if let Some(existing) = t.deliveries.get(d.dedup_key.as_bytes())? {
        let existing: DeliveryRef = decode(&existing).map_err(abort)?;
        return Ok(PutOutcome::Duplicate {
            version: existing.version,
        });
    }
    let previous: Option<ReferralRecord> = t
        .referrals
        .get(referral_key)?
        .map(|v| codec.decode(REFERRALS, referral_key, &v))
        .transpose()
        .map_err(abort)?;
    let owner = owner(t, codec, d, previous.as_ref())?;
    // Receive times never go backwards along the feed, so a time maps to a position in it
    // (see `first_seq_since`).
    let last_micros = read_counter(t.meta, LAST_RECEIVED)?;
    let received_at = d.received_at.max(from_micros(last_micros));
    let seq = read_counter(t.meta, EVENT_SEQ)? + 1;
    let (record, version_record) = match d.next_version(previous.as_ref(), owner, received_at, seq)
    {
        Ok(made) => made,
        Err(owner) => return Ok(PutOutcome::OwnedElsewhere { owner }),
    };
    if let Some(p) = &previous {
        t.by_modified.remove(modified_key_of(p))?;
    }
    let (version, service_id) = (record.version, record.service_id.clone());
    let event = EventRecord {
        seq,
        referral: d.referral.clone(),
        version,
        event: d.event.clone(),
        service_id,
        received_at,
        changes: version_record.changes.clone(),
    };
    let version_key = referral_seq_key(&d.referral, version);

    // The audit entry is part of the same write: stored, then audited, or neither.
    append_audit(
        t.meta,
        t.audit,
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
    t.meta.insert(EVENT_SEQ, &seq.to_be_bytes())?;
    t.meta
        .insert(LAST_RECEIVED, &micros(received_at).to_be_bytes())?;
    t.referrals.insert(
        referral_key,
        codec
            .encode(REFERRALS, referral_key, &record)
            .map_err(abort)?,
    )?;
    t.by_modified
        .insert(modified_key(received_at, &d.referral), &[])?;
    t.versions.insert(
        version_key.as_slice(),
        codec
            .encode(VERSIONS, &version_key, &version_record)
            .map_err(abort)?,
    )?;
    t.payloads.insert(
        version_key.as_slice(),
        codec.seal(PAYLOADS, &version_key, payload).map_err(abort)?,
    )?;
    t.events
        .insert(&seq.to_be_bytes(), encode(&event).map_err(abort)?)?;
    t.deliveries.insert(
        d.dedup_key.as_bytes(),
        encode(&DeliveryRef {
            referral: d.referral.clone(),
            version,
        })
        .map_err(abort)?,
    )?;
    queue_work(t, codec, d, &record, received_at)?;
    Ok(PutOutcome::Stored { version })
}

/// What a stored version queues, in the same transaction: its documents to fetch and its
/// messages to the destinations that take it.
fn queue_work(
    t: &DeliveryTrees<'_>,
    codec: &Codec,
    d: &NewDelivery,
    record: &ReferralRecord,
    received_at: OffsetDateTime,
) -> Result<(), ConflictableTransactionError<StoreError>> {
    for document in d.documents(record.version, received_at) {
        documents::put_document(t.documents, t.due_documents, codec, &document)?;
    }
    let queue = queue::QueueTx {
        queue: t.queue,
        index: t.queue_index,
        meta: t.meta,
        codec,
    };
    for mut message in d.queued(record, received_at) {
        queue.enqueue(&mut message)?;
    }
    Ok(())
}

/// A `meta` counter inside a transaction; 0 when unset.
fn read_counter(
    meta: &TransactionalTree,
    key: &[u8],
) -> Result<u64, ConflictableTransactionError<StoreError>> {
    meta.get(key)?
        .map(|v| read_u64(&v))
        .transpose()
        .map_err(abort)
        .map(Option::unwrap_or_default)
}

/// Appends an entry chained to the current head, inside the caller's transaction.
pub(super) fn append_audit(
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
