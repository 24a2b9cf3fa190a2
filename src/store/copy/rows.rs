//! Each kind of record, from its tree into its table: what the columns need comes from the
//! embedded store's indexes ([`Indexes`]), never from a sealed record.

use std::collections::HashMap;

use time::OffsetDateTime;

use super::{Copier, bad, document_key, sled_error, text, version_key};
use crate::store::audit::AuditEntry;
use crate::store::error::StoreError;
use crate::store::feed::EventRecord;
use crate::store::postgres::for_copy as pg;
use crate::store::queue::QueuedMessage;
use crate::store::record::from_micros;
use crate::store::seal::sealed_key_id;
use crate::store::sled::for_copy::{self as embedded, DeliveryRef, Trees};
use crate::store::update::OCEAN_QUEUE;

/// What the columns need, read from the indexes: each referral's modification time and latest
/// version, each version's feed event, each Ocean update's referral.
pub(super) struct Indexes {
    modified: HashMap<String, OffsetDateTime>,
    latest: HashMap<String, u64>,
    event_of: HashMap<(String, u64), i64>,
    referral_of_update: HashMap<u64, String>,
}

impl Indexes {
    pub(super) fn read(t: &Trees) -> Result<Self, StoreError> {
        let mut modified: HashMap<String, OffsetDateTime> = HashMap::new();
        for item in t.by_modified.iter() {
            let (key, _) = item.map_err(sled_error)?;
            let (micros, referral) = key
                .split_first_chunk::<8>()
                .and_then(|(m, rest)| Some((m, rest.strip_prefix(&[0])?)))
                .ok_or_else(|| bad("modification index key"))?;
            let at = from_micros(u64::from_be_bytes(*micros));
            let referral = text(referral, "modification index key")?;
            let latest = modified.entry(referral).or_insert(at);
            *latest = (*latest).max(at);
        }
        let mut latest: HashMap<String, u64> = HashMap::new();
        for item in t.versions.iter() {
            let (key, _) = item.map_err(sled_error)?;
            let (referral, version) = version_key(&key)?;
            let v = latest.entry(referral).or_default();
            *v = (*v).max(version);
        }
        let mut event_of: HashMap<(String, u64), i64> = HashMap::new();
        for item in t.events.iter() {
            let (_, value) = item.map_err(sled_error)?;
            let event: EventRecord =
                serde_json::from_slice(&value).map_err(|_| bad("feed event"))?;
            event_of.insert(
                (event.referral.as_str().to_owned(), event.version),
                pg::to_i64(event.seq),
            );
        }
        let referral_of_update: HashMap<u64, String> =
            embedded::queue_referrals(&t.queue_index, OCEAN_QUEUE)?
                .into_iter()
                .collect();

        Ok(Self {
            modified,
            latest,
            event_of,
            referral_of_update,
        })
    }
}

/// `referrals`, with the latest version and modification time from the indexes.
pub(super) async fn referrals(
    copy: &mut Copier<'_>,
    t: &Trees,
    i: &Indexes,
) -> Result<u64, StoreError> {
    copy.tree(
        &t.referrals,
        "INSERT INTO referrals (referral, version, modified_at, record) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (referral) DO NOTHING",
        |key, value| {
            let referral = text(key, "referral key")?;
            let version = *i
                .latest
                .get(&referral)
                .ok_or_else(|| bad("referral without versions"))?;
            let at = *i
                .modified
                .get(&referral)
                .ok_or_else(|| bad("referral without a modification time"))?;
            Ok(Some(vec![
                Box::new(referral),
                Box::new(pg::to_i64(version)),
                Box::new(at),
                Box::new(value.to_vec()),
            ]))
        },
    )
    .await
}

/// The feed, positions kept.
pub(super) async fn events(copy: &mut Copier<'_>, t: &Trees) -> Result<u64, StoreError> {
    copy.tree(
        &t.events,
        "INSERT INTO events (id, seq, referral, version, event, service_id, received_at, changes)
                 VALUES ($1, $1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING",
        |_, value| {
            let e: EventRecord = serde_json::from_slice(value).map_err(|_| bad("feed event"))?;
            Ok(Some(vec![
                Box::new(pg::to_i64(e.seq)),
                Box::new(e.referral.as_str().to_owned()),
                Box::new(pg::to_i64(e.version)),
                Box::new(e.event.as_str().to_owned()),
                Box::new(e.service_id.map(|s| s.as_str().to_owned())),
                Box::new(e.received_at),
                Box::new(e.changes),
            ]))
        },
    )
    .await
}

/// `versions` with their payloads (none once purged by retention) and feed events.
pub(super) async fn versions(
    copy: &mut Copier<'_>,
    t: &Trees,
    i: &Indexes,
) -> Result<u64, StoreError> {
    copy
            .tree(
                &t.versions,
                "INSERT INTO versions (referral, version, event_id, record, payload) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (referral, version) DO NOTHING",
                |key, value| {
                    let (referral, version) = version_key(key)?;
                    let event = *i.event_of
                        .get(&(referral.clone(), version))
                        .ok_or_else(|| bad("version without its feed event"))?;
                    // Purged by retention: no payload.
                    let payload = t.payloads.get(key).map_err(sled_error)?.map(|p| p.to_vec());
                    Ok(Some(vec![Box::new(referral), Box::new(pg::to_i64(version)), Box::new(event), Box::new(value.to_vec()), Box::new(payload)]))
                },
            )
            .await
}

/// The dedup keys, hashed as PostgreSQL keys them.
pub(super) async fn deliveries(copy: &mut Copier<'_>, t: &Trees) -> Result<u64, StoreError> {
    copy.tree(
        &t.deliveries,
        "INSERT INTO deliveries (dedup_key, referral, version) VALUES ($1, $2, $3)
                 ON CONFLICT (dedup_key) DO NOTHING",
        |key, value| {
            let d: DeliveryRef = serde_json::from_slice(value).map_err(|_| bad("delivery"))?;
            Ok(Some(vec![
                Box::new(crate::store::sha256_hex(key)),
                Box::new(d.referral.as_str().to_owned()),
                Box::new(pg::to_i64(d.version)),
            ]))
        },
    )
    .await
}

/// The audit chain, sequence numbers kept.
pub(super) async fn audit(copy: &mut Copier<'_>, t: &Trees) -> Result<u64, StoreError> {
    copy.tree(
        &t.audit,
        "INSERT INTO audit (id, seq, at, action, actor, details, prev, hash, at_nanos)
                 VALUES ($1, $1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (id) DO NOTHING",
        |_, value| {
            let e: AuditEntry = serde_json::from_slice(value).map_err(|_| bad("audit entry"))?;
            // timestamptz keeps microseconds; the rest is kept beside it (the hash covers it).
            let nanos = i32::try_from(e.at.nanosecond() % 1000).unwrap_or_default();
            let at = e.at - time::Duration::nanoseconds(i64::from(nanos));
            Ok(Some(vec![
                Box::new(pg::to_i64(e.seq)),
                Box::new(at),
                Box::new(e.action),
                Box::new(e.actor),
                Box::new(e.details),
                Box::new(e.prev),
                Box::new(e.hash),
                Box::new((nanos != 0).then_some(nanos)),
            ]))
        },
    )
    .await
}

/// Ocean updates, sealed to their ids as PostgreSQL seals them: copied under the same ids;
/// sealed ones get their columns at the first start with the key. Destinations' messages
/// are not copied (see [`super::sled_to_postgres`]).
pub(super) async fn ocean_updates(
    copy: &mut Copier<'_>,
    t: &Trees,
    i: &Indexes,
) -> Result<u64, StoreError> {
    let now = OffsetDateTime::now_utc();
    copy
            .tree(
                &t.queue,
                "INSERT INTO queue (id, queue, referral, version, state, next_attempt_at, created_at, delivered_at, record)
                 VALUES ($1, $2, $3, 0, $4, $5, $6, $7, $8) ON CONFLICT (id) DO NOTHING",
                |key, value| {
                    let id = u64::from_be_bytes(key.try_into().map_err(|_| bad("queue key"))?);
                    let Some(referral) = i.referral_of_update.get(&id) else {
                        // A destination's message: not copied.
                        return Ok(None);
                    };
                    let (state, next, created, delivered) = if sealed_key_id(value).is_some() {
                        (pg::MIGRATED.to_owned(), now, now, None)
                    } else {
                        let m: QueuedMessage =
                            serde_json::from_slice(value).map_err(|_| bad("queued update"))?;
                        (
                            pg::state_name(m.state).to_owned(),
                            m.next_attempt_at,
                            m.created_at,
                            m.delivered_at,
                        )
                    };
                    Ok(Some(vec![
                        Box::new(pg::to_i64(id)),
                        Box::new(OCEAN_QUEUE),
                        Box::new(referral.clone()),
                        Box::new(state),
                        Box::new(next),
                        Box::new(created),
                        Box::new(delivered),
                        Box::new(value.to_vec()),
                    ]))
                },
            )
            .await
}

/// The Task states, as stored.
pub(super) async fn task_states(copy: &mut Copier<'_>, t: &Trees) -> Result<u64, StoreError> {
    copy
            .tree(
                &t.task_states,
                "INSERT INTO task_states (referral, record) VALUES ($1, $2) ON CONFLICT (referral) DO NOTHING",
                |key, value| Ok(Some(vec![Box::new(text(key, "Task state key")?), Box::new(value.to_vec())])),
            )
            .await
}

/// Screening counts, as they are.
pub(super) async fn screening_tallies(copy: &mut Copier<'_>, t: &Trees) -> Result<u64, StoreError> {
    copy.tree(
        &t.screening_tallies,
        "INSERT INTO screening_tallies (day, service_id, rule, indicator, count)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (day, service_id, rule, indicator) DO NOTHING",
        |key, value| {
            let tally = embedded::screening_tally(key, value)?;
            Ok(Some(vec![
                Box::new(tally.day),
                Box::new(tally.service_id),
                Box::new(tally.rule),
                Box::new(tally.indicator),
                Box::new(pg::to_i64(tally.count)),
            ]))
        },
    )
    .await
}

/// Documents with their bytes. A document's state column only tells claims what is pending,
/// which `due_documents` says without opening the record; a pending one is due at once.
pub(super) async fn documents(copy: &mut Copier<'_>, t: &Trees) -> Result<u64, StoreError> {
    let now = OffsetDateTime::now_utc();
    copy
            .tree(
                &t.documents,
                "INSERT INTO documents (referral, version, idx, state, next_attempt_at, record, bytes)
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (referral, version, idx) DO NOTHING",
                |key, value| {
                    let (referral, version, index) = document_key(key)?;
                    let pending = t.due_documents.contains_key(key).map_err(sled_error)?;
                    let state = if pending { "pending" } else { pg::MIGRATED };
                    let bytes = t
                        .document_bytes
                        .get(key)
                        .map_err(sled_error)?
                        .map(|b| b.to_vec());
                    Ok(Some(vec![
                        Box::new(referral),
                        Box::new(pg::to_i64(version)),
                        Box::new(index),
                        Box::new(state),
                        Box::new(now),
                        Box::new(value.to_vec()),
                        Box::new(bytes),
                    ]))
                },
            )
            .await
}

/// Patients' completed eForms with their content, each with its dedup key (from
/// `patient_form_dedup`). Every row is copied [`MIGRATED`](pg::MIGRATED): its state, due and
/// received times are inside its sealed record, and the first replica with the key settles them.
pub(super) async fn patient_forms(copy: &mut Copier<'_>, t: &Trees) -> Result<u64, StoreError> {
    let mut dedup_of: HashMap<u64, String> = HashMap::new();
    for item in t.patient_form_dedup.iter() {
        let (key, id) = item.map_err(sled_error)?;
        let id = crate::store::record::read_u64(&id).map_err(|_| bad("patient form dedup id"))?;
        dedup_of.insert(id, text(&key, "patient form dedup key")?);
    }
    let now = OffsetDateTime::now_utc();
    copy.tree(
        &t.patient_forms,
        "INSERT INTO patient_forms (id, dedup, state, next_attempt_at, received_at, record, content)
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING",
        |key, value| {
            let id = crate::store::record::read_u64(key).map_err(|_| bad("patient form key"))?;
            // A record without a dedup key (none is written so) still gets a unique one.
            let dedup = dedup_of
                .get(&id)
                .cloned()
                .unwrap_or_else(|| format!("migrated-{id}"));
            let content = t
                .patient_form_content
                .get(key)
                .map_err(sled_error)?
                .map(|b| b.to_vec());
            Ok(Some(vec![
                Box::new(pg::to_i64(id)),
                Box::new(dedup),
                Box::new(pg::MIGRATED),
                Box::new(now),
                Box::new(now),
                Box::new(value.to_vec()),
                Box::new(content),
            ]))
        },
    )
    .await
}
