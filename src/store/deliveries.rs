//! Deliveries: each one stored as a new version of its referral, in one atomic, durable write,
//! and the referrals and versions read back.

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::error::StoreError;
use super::queue::{QueueRoute, QueuedMessage};
use crate::domain::{EventCode, IntegrationName, Part, ReferralRef, ServiceId, Summary};

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
    /// When the message says it was made ([`ParsedMessage::sent_at`](crate::fhir::ParsedMessage)).
    pub sent_at: Option<OffsetDateTime>,
    /// Queue the referral letter and the message's attachments for fetching from Ocean (an
    /// Ocean site with credentials serves the referral); see [`NewDelivery::documents`].
    pub fetch_documents: bool,
    /// The destinations' routes: the version is queued, in the same write, for each that takes
    /// it (see [`NewDelivery::queued`]).
    pub routes: std::sync::Arc<[QueueRoute]>,
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

pub use crate::digest::sha256_hex;

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
    /// The latest time a message about the referral says it was made: one made earlier
    /// arrived late.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub sent_at: Option<OffsetDateTime>,
    /// When the message that last set each part of the summary says it was made: a message made
    /// earlier does not replace that part.
    #[serde(default)]
    pub part_times: PartTimes,
}

/// When each part of a referral's summary was last set, by the message's own time (`None`:
/// never set, or by a message without a time).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PartTimes {
    #[serde(with = "time::serde::rfc3339::option")]
    pub service_request: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub task: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub appointment: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub patient: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub referrer: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub recipient: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub communication: Option<OffsetDateTime>,
}

impl PartTimes {
    fn slot(&mut self, part: Part) -> &mut Option<OffsetDateTime> {
        match part {
            Part::ServiceRequest => &mut self.service_request,
            Part::Task => &mut self.task,
            Part::Appointment => &mut self.appointment,
            Part::Patient => &mut self.patient,
            Part::Referrer => &mut self.referrer,
            Part::Recipient => &mut self.recipient,
            Part::Communication => &mut self.communication,
        }
    }

    /// When `part` was last set.
    pub fn get(mut self, part: Part) -> Option<OffsetDateTime> {
        *self.slot(part)
    }

    /// `part` was set by a message made at `at`.
    pub fn set(&mut self, part: Part, at: Option<OffsetDateTime>) {
        *self.slot(part) = at;
    }
}

/// What one message makes of a referral ([`merge`]).
#[derive(Debug, Clone)]
pub struct Merged {
    /// The referral's summary once the message is taken in.
    pub summary: Summary,
    pub part_times: PartTimes,
    /// The latest time a message about the referral says it was made.
    pub sent_at: Option<OffsetDateTime>,
    /// Nothing the message carried was newer than what the referral had.
    pub unchanged: bool,
    /// The message says it was made before one that arrived earlier.
    pub late: bool,
}

/// What a message saying `summary`, made at `sent_at` and received at `received_at`, makes of a
/// referral `previous` describes (its summary, part times and latest message time; `None`: a
/// new referral). The one merge: storing a delivery and replaying a referral's versions
/// ([`crate::views::VersionWalk`]) both use it.
///
/// Messages can cross (Ocean retries for 96 hours): each part of the referral (Task,
/// Appointment, patient, ...) is what the message made last (by its own time) said of it,
/// whatever order they arrived in. A message without a time counts as the newest, and one that
/// says it was made after it arrived counts as made on arrival (a fast clock or a mistyped year
/// cannot freeze a part against every later message).
pub fn merge(
    previous: Option<(&Summary, PartTimes, Option<OffsetDateTime>)>,
    summary: &Summary,
    sent_at: Option<OffsetDateTime>,
    received_at: OffsetDateTime,
) -> Merged {
    let carried: Vec<Part> = Part::ALL
        .into_iter()
        .filter(|part| summary.carried.has(*part))
        .collect();
    let mut part_times = previous.map(|(_, times, _)| times).unwrap_or_default();
    let sent_at = sent_at.map(|at| at.min(received_at));
    let older = |set: Option<OffsetDateTime>| matches!((set, sent_at), (Some(set), Some(this)) if this < set);
    let kept: Vec<Part> = carried
        .iter()
        .copied()
        .filter(|part| older(part_times.get(*part)))
        .collect();
    for part in carried.iter().filter(|part| !kept.contains(part)) {
        part_times.set(*part, sent_at);
    }
    let unchanged = previous.is_some() && !kept.is_empty() && kept.len() == carried.len();
    let late = older(previous.and_then(|(_, _, at)| at));
    let mut merged = summary.clone();
    if let Some((earlier, _, _)) = previous {
        merged.fill_from(earlier);
        for part in &kept {
            merged.take_part(*part, earlier);
        }
        if unchanged {
            merged.latest_change.clone_from(&earlier.latest_change);
        }
    }
    Merged {
        summary: merged,
        part_times,
        sent_at: match (previous.and_then(|(_, _, at)| at), sent_at) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => b.or(a),
        },
        unchanged,
        late,
    }
}

/// One stored delivery of a referral (its raw bytes are read with [`DeliveryStore::payload`]).
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
    /// When the message says it was made, when it says.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub sent_at: Option<OffsetDateTime>,
    /// The message says it was made before another that arrived earlier (Ocean retries for 96
    /// hours, so messages can cross): it is kept, and what it carried replaced only the parts no
    /// newer message had set.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub late: bool,
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
    /// The referral's summary fields (JSON names) this version changed: see
    /// [`Summary::differences`]. Empty for versions stored by earlier builds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<String>,
}

impl NewDelivery {
    /// What storing this delivery on top of `previous` (the referral's record, if any) makes,
    /// the same in every backend: the referral's new record and the new version's (its `seq`
    /// given by the caller), or the owner that refuses it. `owner` is the integration the referral
    /// belongs to (the first to deliver it); `received_at` the time to record, which the backend
    /// may have moved forward so times never go back along its feed or the referral.
    ///
    /// # Errors
    /// The owner, when it is neither this delivery's integration nor shares with it.
    pub fn next_version(
        &self,
        previous: Option<&ReferralRecord>,
        owner: IntegrationName,
        received_at: OffsetDateTime,
        seq: u64,
    ) -> Result<(ReferralRecord, VersionRecord), IntegrationName> {
        if owner != self.integration && !self.shares_with.contains(&owner) {
            return Err(owner);
        }
        // A message that names its External Service ID files (or moves) the referral there;
        // otherwise an existing referral stays where it is.
        let service_id = match (&self.service, previous) {
            (ServiceAssignment::Named(s), _) => Some(s.clone()),
            (_, Some(p)) => p.service_id.clone(),
            (ServiceAssignment::Default(s), None) => Some(s.clone()),
            (ServiceAssignment::Unassigned, None) => None,
        };
        let version = previous.map_or(1, |p| p.version + 1);
        let merged = merge(
            previous.map(|p| (&p.summary, p.part_times, p.sent_at)),
            &self.summary,
            self.sent_at,
            received_at,
        );
        let (summary, part_times, late) = (merged.summary, merged.part_times, merged.late);
        let unchanged = previous.filter(|_| merged.unchanged);
        let changes = summary
            .differences(previous.map(|p| &p.summary))
            .into_iter()
            .map(|c| c.field)
            .collect();
        let record = ReferralRecord {
            referral: self.referral.clone(),
            service_id: service_id.clone(),
            integration: self.integration.clone(),
            owner: Some(owner),
            latest_event: match unchanged {
                Some(p) => p.latest_event.clone(),
                None => self.event.clone(),
            },
            version,
            created_at: previous.map_or(received_at, |p| p.created_at),
            modified_at: received_at,
            exported_at: previous.and_then(|p| p.exported_at),
            summary,
            sent_at: merged.sent_at,
            part_times,
        };
        let version_record = VersionRecord {
            referral: self.referral.clone(),
            version,
            event: self.event.clone(),
            integration: self.integration.clone(),
            service_id,
            message_header_id: self.message_header_id.clone(),
            bundle_id: self.bundle_id.clone(),
            bundle_timestamp: self.bundle_timestamp.clone(),
            received_at,
            sent_at: self.sent_at,
            late,
            summary: self.summary.clone(),
            problems: {
                let mut problems = self.problems.clone();
                if self
                    .sent_at
                    .is_some_and(|at| at > received_at + time::Duration::minutes(5))
                {
                    problems.push(
                        "the message says it was made after it arrived; it counts as made on arrival".into(),
                    );
                }
                problems
            },
            size: self.raw.len() as u64,
            sha256: self.sha256.clone(),
            seq,
            purged: false,
            changes,
        };
        Ok((record, version_record))
    }
}

impl NewDelivery {
    /// The messages this delivery queues once stored as `record`'s latest version: one for
    /// each route that takes it, in route order, due at `now`.
    pub fn queued(&self, record: &ReferralRecord, now: OffsetDateTime) -> Vec<QueuedMessage> {
        self.routes
            .iter()
            .filter(|route| {
                route.takes(
                    &self.integration,
                    record.service_id.as_ref(),
                    record.summary.latest_change,
                )
            })
            .map(|route| {
                QueuedMessage::pending(&route.queue, self.referral.clone(), record.version, now)
            })
            .collect()
    }
}

/// Storing deliveries and reading referrals and their versions.
#[async_trait]
pub trait DeliveryStore: Send + Sync {
    /// Stores a delivery in one atomic write (raw bytes, version, referral summary, feed entry,
    /// dedup entry) and returns once it is on disk. A delivery already stored is recognised by
    /// its `dedup_key` and stores nothing new.
    async fn put_delivery(&self, delivery: NewDelivery) -> Result<PutOutcome, StoreError>;

    /// The current state of one referral.
    async fn referral(&self, referral: &ReferralRef) -> Result<Option<ReferralRecord>, StoreError>;

    /// All versions of a referral, oldest first.
    async fn versions(&self, referral: &ReferralRef) -> Result<Vec<VersionRecord>, StoreError>;

    /// The raw bytes of one version, exactly as received.
    async fn payload(
        &self,
        referral: &ReferralRef,
        version: u64,
    ) -> Result<Option<Bytes>, StoreError>;
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
