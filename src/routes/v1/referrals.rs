//! `/referrals`: referrals by their latest change, one referral with its versions, and each
//! version exactly as received.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::extract::{
    Caller, Path, ProblemDoc, Query, instant, limit, rfc3339, service_param, visible, whole_number,
};
use crate::domain::{Change, DocumentLink, ReferralRef, Summary};
use crate::error::{AppError, FHIR_JSON, Problem};
use crate::fhir::changes::{ResourceChange, Resources, resource_changes};
use crate::state::AppState;
use crate::store::{ReferralRecord, Store, StoreError, VersionRecord};

/// Feed entries one listing request reads at most before answering with a cursor.
const MAX_SCAN: usize = 20_000;

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
    pub(super) fn new(r: &ReferralRecord) -> Self {
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

#[derive(Debug, Serialize, ToSchema)]
pub struct ReferralPage {
    referrals: Vec<ReferralView>,
    /// Pass as `cursor` for the next page; null when the listing is complete.
    next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReferralDetail {
    referral: ReferralView,
    versions: Vec<VersionView>,
}

/// What a listing cursor looks like: two feed sequence numbers, `after.until`.
pub const CURSOR_PATTERN: &str = "^(0|[1-9][0-9]{0,18})\\.(0|[1-9][0-9]{0,18})$";

/// The listing's position: after `after`, in the snapshot bounded by `until`.
fn encode_cursor(after: u64, until: u64) -> String {
    format!("{after}.{until}")
}

/// A cursor as [`encode_cursor`] makes it (or base64url of the same, as earlier versions
/// issued). A cursor past its own bound reads as a finished listing.
fn decode_cursor(cursor: &str) -> Result<(u64, u64), AppError> {
    let bad = || AppError::BadRequest("cursor is not one this API issued".into());
    let text = if cursor.contains('.') {
        cursor.to_owned()
    } else {
        URL_SAFE_NO_PAD
            .decode(cursor)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(bad)?
    };
    let (after, until) = text.split_once('.').ok_or_else(bad)?;
    let (after, until): (u64, u64) = (
        after.parse().map_err(|_| bad())?,
        until.parse().map_err(|_| bad())?,
    );
    Ok((after.min(until), until))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only referrals filed under this External Service ID.
    service_id: Option<String>,
    /// Only referrals with this workflow status (Task status, else ServiceRequest status).
    status: Option<String>,
    /// Only referrals whose latest event has this code.
    event: Option<String>,
    /// Only referrals modified at or after this date or date-time.
    modified_since: Option<String>,
    /// Page size (default 100; more than 500 is capped at 500).
    limit: Option<String>,
    /// From the previous page's `next_cursor`.
    cursor: Option<String>,
}

/// List referrals, ordered by their latest modification.
///
/// A listing is a snapshot taken by its first page: later pages neither skip nor repeat a
/// referral while deliveries keep arriving. Changes after the snapshot show up in the next
/// listing (use `modified_since`) and at once in the event feed.
#[utoipa::path(
    get,
    path = "/referrals",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of referrals", body = ReferralPage),
        (status = 400, description = "A query parameter is invalid", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "No or an unknown API key", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "service_id outside the client's service ids", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
pub async fn list_referrals(
    State(state): State<AppState>,
    Caller(client): Caller,
    Query(q): Query<ListQuery>,
) -> Result<Json<ReferralPage>, Problem> {
    let limit = limit(q.limit.as_deref())?;
    let service = service_param(&client, q.service_id.as_deref())?;
    let since = q
        .modified_since
        .as_deref()
        .map(|s| instant("modified_since", s, false))
        .transpose()?;
    let store = &state.store;
    let (mut after, until) = match q.cursor.as_deref() {
        Some(cursor) => decode_cursor(cursor)?,
        None => {
            let start = match since {
                Some(since) => store.seq_before(since).await?,
                None => 0,
            };
            (start, store.feed_end().await?)
        }
    };

    let mut referrals = Vec::new();
    let mut scanned = 0;
    while after < until && referrals.len() < limit && scanned < MAX_SCAN {
        let slice = store.referrals_changed(after, until, 1000).await?;
        scanned += 1000;
        let mut stopped_early = false;
        for (seq, record) in slice.referrals {
            let keep = client.may_see(record.service_id.as_ref())
                && service
                    .as_ref()
                    .is_none_or(|s| record.service_id.as_ref() == Some(s))
                && q.event
                    .as_deref()
                    .is_none_or(|e| record.latest_event.as_str() == e)
                && q.status
                    .as_deref()
                    .is_none_or(|s| record.summary.status() == Some(s))
                && since.is_none_or(|t| record.modified_at >= t);
            if keep {
                referrals.push(ReferralView::new(record));
            }
            if referrals.len() == limit {
                after = seq;
                stopped_early = true;
                break;
            }
        }
        if !stopped_early {
            after = slice.scanned_to;
        }
    }
    let next_cursor = (after < until).then(|| encode_cursor(after, until));
    Ok(Json(ReferralPage {
        referrals,
        next_cursor,
    }))
}

/// One referral and its versions.
#[utoipa::path(
    get,
    path = "/referrals/{referral}",
    params(("referral" = String, Path, description = "Ocean's referral reference")),
    responses(
        (status = 200, description = "The referral and its versions", body = ReferralDetail),
        (status = 401, description = "No or an unknown API key", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Outside the client's service ids", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such referral", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
pub async fn get_referral(
    State(state): State<AppState>,
    Caller(client): Caller,
    Path(referral): Path<String>,
) -> Result<Json<ReferralDetail>, Problem> {
    let (reference, record) = visible(&state, &client, &referral).await?;
    let versions = state.store.versions(&reference).await?;
    Ok(Json(ReferralDetail {
        referral: ReferralView::new(record),
        versions: versions.into_iter().map(VersionView::from).collect(),
    }))
}

/// One version exactly as it was received, byte for byte.
#[utoipa::path(
    get,
    path = "/referrals/{referral}/versions/{version}",
    params(
        ("referral" = String, Path, description = "Ocean's referral reference"),
        ("version" = u64, Path, description = "Version number, from 1"),
    ),
    responses(
        (status = 200, description = "The FHIR message Bundle as received", content_type = "application/fhir+json"),
        (status = 401, description = "No or an unknown API key", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Outside the client's service ids", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such referral or version", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
pub async fn get_version(
    State(state): State<AppState>,
    Caller(client): Caller,
    Path((referral, version)): Path<(String, String)>,
) -> Result<Response, Problem> {
    let version = whole_number(&version)
        .ok_or_else(|| AppError::BadRequest("version must be a whole number".into()))?;
    let (reference, _) = visible(&state, &client, &referral).await?;
    let raw = state
        .store
        .payload(&reference, version)
        .await?
        .ok_or_else(|| {
            AppError::NotFound(format!("referral {reference} has no version {version}"))
        })?;
    let mut response = (StatusCode::OK, raw).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    Ok(response)
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

/// What one version changed: the referral's summary fields, and the resources its message
/// added, removed or changed, compared with version n-1.
///
/// Ocean's update messages do not say what changed; its playbook asks receiving systems to show
/// their users. Summary fields compare the referral as versions 1..n-1 left it with what
/// version n made of it (so a message that repeats a value changes nothing). Resources are
/// compared under lasting names (`Type/id`, else `Type` and its first identifier, else `Type
/// #n`), ignoring the `urn:uuid:` names that change with every message.
#[utoipa::path(
    get,
    path = "/referrals/{referral}/versions/{version}/changes",
    params(
        ("referral" = String, Path, description = "Ocean's referral reference"),
        ("version" = u64, Path, description = "Version number, from 1"),
    ),
    responses(
        (status = 200, description = "What the version changed", body = VersionChanges),
        (status = 400, description = "version is not a whole number", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "No or an unknown API key", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Outside the client's service ids", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such referral or version", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
pub async fn get_version_changes(
    State(state): State<AppState>,
    Caller(client): Caller,
    Path((referral, version)): Path<(String, String)>,
) -> Result<Json<VersionChanges>, Problem> {
    let version = whole_number(&version)
        .ok_or_else(|| AppError::BadRequest("version must be a whole number".into()))?;
    let (reference, _) = visible(&state, &client, &referral).await?;
    let (_, changes, _) = version_view(state.store.as_ref(), &reference, version)
        .await?
        .ok_or_else(|| {
            AppError::NotFound(format!("referral {reference} has no version {version}"))
        })?;
    Ok(Json(changes))
}

/// `version` of `reference` as it stands: the referral's summary as that version left it,
/// what the version changed (as `/versions/{n}/changes` shows it) and its record; `None`
/// when the referral has no such version.
pub async fn version_view(
    store: &dyn Store,
    reference: &ReferralRef,
    version: u64,
) -> Result<Option<(Summary, VersionChanges, VersionRecord)>, StoreError> {
    let versions = store.versions(reference).await?;
    let Some(at) = versions.iter().position(|v| v.version == version) else {
        return Ok(None);
    };
    // The referral as the versions before this one left it, then as this one made it.
    let mut before: Option<Summary> = None;
    for v in &versions[..at] {
        let mut summary = v.summary.clone();
        if let Some(earlier) = &before {
            summary.fill_from(earlier);
        }
        before = Some(summary);
    }
    let this = &versions[at];
    let mut after = this.summary.clone();
    if let Some(earlier) = &before {
        after.fill_from(earlier);
    }
    let fields = after
        .differences(before.as_ref())
        .into_iter()
        .map(|c| FieldChangeView {
            field: c.field,
            before: c.before,
            after: c.after,
        })
        .collect();
    let previous = at.checked_sub(1).map(|p| &versions[p]);
    let resources_of = async |v: &VersionRecord| -> Result<Option<Resources>, StoreError> {
        if v.purged {
            return Ok(None);
        }
        let raw = store.payload(reference, v.version).await?;
        Ok(raw.and_then(|raw| Resources::of_message(&raw)))
    };
    let now = resources_of(this).await?;
    let resources = match previous {
        None => now.map(|now| resource_changes(&Resources::default(), &now)),
        Some(p) => match (resources_of(p).await?, now) {
            (Some(old), Some(now)) => Some(resource_changes(&old, &now)),
            _ => None,
        },
    };
    let changes = VersionChanges {
        referral: reference.to_string(),
        version,
        previous_version: previous.map(|p| p.version),
        event: this.event.to_string(),
        latest_change: after.latest_change,
        fields,
        resources,
    };
    Ok(Some((after, changes, this.clone())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_forgeries() {
        assert_eq!(decode_cursor(&encode_cursor(5, 9)).unwrap(), (5, 9));
        assert_eq!(
            decode_cursor(&URL_SAFE_NO_PAD.encode("5.9")).unwrap(),
            (5, 9)
        );
        assert_eq!(decode_cursor("9.5").unwrap(), (5, 5));
        assert!(decode_cursor("!!").is_err());
        assert!(decode_cursor(&URL_SAFE_NO_PAD.encode("x.5")).is_err());
        assert!(decode_cursor("1.99999999999999999999").is_err());
    }
}
