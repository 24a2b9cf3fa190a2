//! The referral as the API shows it and destinations are sent it: JSON views of the store's
//! records (their schemas are in the OpenAPI document), and what one version changed.

use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa::ToSchema;

use crate::domain::{Change, DocumentLink, ReferralRef, Summary};
use crate::fhir::changes::{ResourceChange, Resources, resource_changes};
use crate::store::{PartTimes, ReferralRecord, Store, StoreError, VersionRecord, merge};

/// RFC 3339, as every time the API answers with.
pub fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap_or_default()
}

/// A referral's current state.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReferralView {
    /// Ocean's referral reference.
    referral: String,
    /// External Service ID it is filed under; null when unassigned.
    service_id: Option<String>,
    integration: String,
    latest_event: String,
    /// Workflow status: `revoked` once the requester revoked the referral, else the Task status
    /// once a Task was seen, else the ServiceRequest status.
    status: Option<String>,
    service_request_status: Option<String>,
    task_status: Option<String>,
    task_status_reason: Option<String>,
    appointment_status: Option<String>,
    appointment_start: Option<String>,
    authored_on: Option<String>,
    patient_name: Option<String>,
    patient_phone: Option<String>,
    patient_email: Option<String>,
    referrer_name: Option<String>,
    referrer_professional_id: Option<String>,
    referring_site: Option<String>,
    recipient_listing: Option<String>,
    description: Option<String>,
    /// `ServiceRequest.note` texts as sent (HTML).
    notes: Vec<String>,
    /// Why the requester revoked the referral, where Ocean said.
    revocation_reason: Option<String>,
    /// The referral this one was split from, where Ocean said.
    split_from: Option<String>,
    /// Ocean's Task for this referral (`Task.id`), once a message carried one: status updates
    /// sent through this API name it.
    task_id: Option<String>,
    /// `Task.businessStatus`: the workflow's sub-state, where Ocean sends one.
    task_business_status: Option<String>,
    /// The latest message between requester and performer that Ocean sent.
    latest_message: Option<MessageView>,
    /// What Ocean's latest message about the referral was about.
    latest_change: Option<Change>,
    /// The documents the referral's messages pointed to (letter, attachments), in the order
    /// first seen.
    documents: Vec<DocumentLinkView>,
    created_at: String,
    modified_at: String,
    /// Number of stored versions (the latest version's number).
    version_count: u64,
}

impl ReferralView {
    pub(crate) fn new(r: ReferralRecord) -> Self {
        let status = r.summary.status().map(str::to_owned);
        let latest_message = MessageView::of(&r.summary);
        let Summary {
            service_request_status,
            task_status,
            task_status_reason,
            appointment_status,
            appointment_start,
            authored_on,
            patient_name,
            patient_phone,
            patient_email,
            referrer_name,
            referrer_professional_id,
            referring_site,
            recipient_listing,
            description,
            notes,
            revocation_reason,
            split_from,
            task_id,
            task_business_status,
            latest_change,
            documents,
            message_text: _,
            message_sent: _,
            message_sender: _,
            carried: _,
        } = r.summary;
        Self {
            status,
            referral: r.referral.to_string(),
            service_id: r.service_id.map(|s| s.to_string()),
            integration: r.integration.to_string(),
            latest_event: r.latest_event.to_string(),
            service_request_status,
            task_status,
            task_status_reason,
            appointment_status,
            appointment_start,
            authored_on,
            patient_name,
            patient_phone,
            patient_email,
            referrer_name,
            referrer_professional_id,
            referring_site,
            recipient_listing,
            description,
            notes,
            revocation_reason,
            split_from,
            task_id,
            task_business_status,
            latest_message,
            latest_change,
            documents: documents.into_iter().map(DocumentLinkView::from).collect(),
            created_at: rfc3339(r.created_at),
            modified_at: rfc3339(r.modified_at),
            version_count: r.version,
        }
    }
}

/// Where a referral stands as Ocean last described it, as the feed shows it beside each event.
#[derive(Debug, Serialize, ToSchema)]
pub struct CurrentView {
    /// Workflow status: `revoked` once the requester revoked the referral, else the Task status
    /// once a Task was seen, else the ServiceRequest status.
    status: Option<String>,
    task_business_status: Option<String>,
    appointment_status: Option<String>,
    appointment_start: Option<String>,
    /// What Ocean's latest message about the referral was about.
    latest_change: Option<Change>,
    revocation_reason: Option<String>,
    /// The latest message between requester and performer.
    latest_message: Option<MessageView>,
    /// The referral's latest version.
    version: u64,
}

impl CurrentView {
    pub(crate) fn new(r: &ReferralRecord) -> Self {
        let s = &r.summary;
        Self {
            status: s.status().map(str::to_owned),
            task_business_status: s.task_business_status.clone(),
            appointment_status: s.appointment_status.clone(),
            appointment_start: s.appointment_start.clone(),
            latest_change: s.latest_change,
            revocation_reason: s.revocation_reason.clone(),
            latest_message: MessageView::of(s),
            version: r.version,
        }
    }
}

/// A message between requester and performer (`Communication`), as Ocean sent it.
#[derive(Debug, Serialize, ToSchema)]
pub struct MessageView {
    /// `payload[].contentString`, joined by new lines.
    text: Option<String>,
    /// `Communication.sent` as sent (an R4 dateTime).
    sent: Option<String>,
    /// The sender's name: `sender.display`, else the referenced practitioner's.
    sender: Option<String>,
}

/// A document a referral's message pointed to: a `DocumentReference`'s first attachment.
#[derive(Debug, Serialize, ToSchema)]
pub struct DocumentLinkView {
    /// `DocumentReference.id` (or its first identifier).
    id: Option<String>,
    title: Option<String>,
    /// MIME type, e.g. `application/pdf`.
    content_type: Option<String>,
    /// Where Ocean serves it.
    url: Option<String>,
    /// True when the message carried the bytes inline (`attachment.data`).
    inline: bool,
}

impl MessageView {
    /// The summary's latest message, if it has one.
    fn of(s: &Summary) -> Option<Self> {
        (s.message_text.is_some() || s.message_sent.is_some()).then(|| Self {
            text: s.message_text.clone(),
            sent: s.message_sent.clone(),
            sender: s.message_sender.clone(),
        })
    }
}

impl From<DocumentLink> for DocumentLinkView {
    fn from(d: DocumentLink) -> Self {
        Self {
            id: d.id,
            title: d.title,
            content_type: d.content_type,
            url: d.url,
            inline: d.inline,
        }
    }
}

/// One stored delivery of a referral.
#[derive(Debug, Serialize, ToSchema)]
pub struct VersionView {
    version: u64,
    event: String,
    received_at: String,
    /// When the message says it was made (`Bundle.timestamp`, else `meta.lastUpdated`), RFC 3339.
    sent_at: Option<String>,
    /// The message says it was made before the version that was current when it arrived: it
    /// is kept, but did not replace what was current (it only added what the referral lacked).
    late: bool,
    integration: String,
    /// Position of this version in the event feed.
    seq: u64,
    bundle_id: Option<String>,
    message_header_id: Option<String>,
    /// Size in bytes of the delivery as received.
    size: u64,
    sha256: String,
    /// Resources that did not conform to FHIR R4 and were read leniently.
    problems: Vec<String>,
    /// True when retention has purged this version's payload and summary.
    purged: bool,
}

impl From<VersionRecord> for VersionView {
    fn from(v: VersionRecord) -> Self {
        Self {
            version: v.version,
            event: v.event.to_string(),
            received_at: rfc3339(v.received_at),
            sent_at: v.sent_at.map(rfc3339),
            late: v.late,
            integration: v.integration.to_string(),
            seq: v.seq,
            bundle_id: v.bundle_id,
            message_header_id: v.message_header_id,
            size: v.size,
            sha256: v.sha256,
            problems: v.problems,
            purged: v.purged,
        }
    }
}

/// What one version changed from the version before.
#[derive(Debug, Serialize, ToSchema)]
pub struct VersionChanges {
    referral: String,
    version: u64,
    /// The version compared with; null for the first version (everything it set is listed).
    previous_version: Option<u64>,
    /// This version's event code.
    event: String,
    /// What Ocean's message was about.
    latest_change: Option<Change>,
    /// The referral's summary fields (as in the referral's JSON) that differ from what the
    /// versions up to the one before made of it, with both values.
    fields: Vec<FieldChangeView>,
    /// The message's resources added, removed (not carried this time) or changed compared with
    /// the previous version's message; null when retention purged either message.
    resources: Option<Vec<ResourceChange>>,
}

/// One summary field that changed.
#[derive(Debug, Serialize, ToSchema)]
pub struct FieldChangeView {
    /// The field's name in the referral's JSON (`task_status`, `appointment_start`, ...).
    field: String,
    /// Its value before (null when it had none): a string, a list of strings (`notes`) or of
    /// objects (`documents`), as in the referral's JSON.
    before: serde_json::Value,
    /// Its value after (null when this version cleared it).
    after: serde_json::Value,
}

impl VersionChanges {
    /// The summary fields that differ from what the versions before made of the referral.
    pub fn fields(&self) -> &[FieldChangeView] {
        &self.fields
    }

    /// The message's resources added, removed or changed; `None` when either message could
    /// not be read (purged, or not read at all).
    pub fn resources(&self) -> Option<&[ResourceChange]> {
        self.resources.as_deref()
    }

    /// What Ocean's message was about.
    pub fn latest_change(&self) -> Option<Change> {
        self.latest_change
    }
}

impl FieldChangeView {
    /// The field's name in the referral's JSON.
    pub fn field(&self) -> &str {
        &self.field
    }

    /// Its value before and after, as in the referral's JSON (null: none).
    pub fn values(&self) -> (&serde_json::Value, &serde_json::Value) {
        (&self.before, &self.after)
    }
}

/// What each version of a referral changed, taken oldest first: the one definition of "what a
/// version changed" that `/versions/{n}/changes`, destinations' envelopes, the console's
/// timeline and the feed's `changes` all show. A version's fields are compared with the
/// referral as the versions before it left it, replayed with the same [`merge`] that stored
/// them (so a late message changes only what no newer one had set); its message's resources
/// with the message of the version before (the first version's are all added).
#[derive(Default)]
pub struct VersionWalk {
    /// The referral as the versions taken so far left it: its summary, part times and latest
    /// message time.
    before: Option<(Summary, PartTimes, Option<OffsetDateTime>)>,
    /// The version taken last, and its message's resources when they were read.
    previous: Option<(u64, Option<Resources>)>,
}

impl VersionWalk {
    /// Takes the next version `v` of `reference`, with its message's resources (`None`: not
    /// read, or purged): the referral's summary as `v` left it, and what `v` changed.
    pub fn step(
        &mut self,
        reference: &ReferralRef,
        v: &VersionRecord,
        resources: Option<Resources>,
    ) -> (Summary, VersionChanges) {
        let merged = merge(
            self.before.as_ref().map(|(s, times, at)| (s, *times, *at)),
            &v.summary,
            v.sent_at,
            v.received_at,
        );
        let after = merged.summary;
        // What this version's own message was about, a late message's too (the merged summary
        // keeps a newer message's when nothing this one carried was newer).
        let latest_change = match (v.summary.latest_change, &self.before) {
            (Some(Change::Updated), Some((earlier, _, _))) => {
                Some(v.summary.refined_change(earlier))
            }
            (change, _) => change,
        };
        let fields = after
            .differences(self.before.as_ref().map(|(s, _, _)| s))
            .into_iter()
            .map(|c| FieldChangeView {
                field: c.field,
                before: c.before,
                after: c.after,
            })
            .collect();
        let compared = match (&self.previous, &resources) {
            (None, Some(now)) => Some(resource_changes(&Resources::default(), now)),
            (Some((_, Some(old))), Some(now)) => Some(resource_changes(old, now)),
            _ => None,
        };
        let changes = VersionChanges {
            referral: reference.to_string(),
            version: v.version,
            previous_version: self.previous.as_ref().map(|(n, _)| *n),
            event: v.event.to_string(),
            latest_change,
            fields,
            resources: compared,
        };
        self.before = Some((after.clone(), merged.part_times, merged.sent_at));
        self.previous = Some((v.version, resources));
        (after, changes)
    }
}

/// `version` of `reference` as it stands: the referral's summary as that version left it,
/// what the version changed (see [`VersionWalk`]) and its record; `None` when the referral has
/// no such version. Only the messages of that version and the one before are read.
pub async fn version_view(
    store: &dyn Store,
    reference: &ReferralRef,
    version: u64,
) -> Result<Option<(Summary, VersionChanges, VersionRecord)>, StoreError> {
    let versions = store.versions(reference).await?;
    let Some(at) = versions.iter().position(|v| v.version == version) else {
        return Ok(None);
    };
    let mut walk = VersionWalk::default();
    for (n, v) in versions[..=at].iter().enumerate() {
        let resources = if n + 1 >= at && !v.purged {
            store
                .payload(reference, v.version)
                .await?
                .and_then(|raw| Resources::of_message(&raw))
        } else {
            None
        };
        let (summary, changes) = walk.step(reference, v, resources);
        if n == at {
            return Ok(Some((summary, changes, v.clone())));
        }
    }
    Ok(None)
}
