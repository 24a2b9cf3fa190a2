//! What a destination is sent for one queued version: the Standard Webhooks payload shape
//! (`type`, `timestamp`, `data`), with the referral as that version left it, what the version
//! changed, its documents and the FHIR Bundle as received.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Serialize;
use serde_json::value::RawValue;
use time::OffsetDateTime;

use crate::config::DocumentsMode;
use crate::domain::path_segment;
use crate::store::{DocumentState, QueuedMessage, Store, StoreError};
use crate::views::{ReferralView, VersionChanges, rfc3339, version_view};

/// The event type of every envelope.
pub const VERSION_STORED: &str = "referral.version_stored";

/// A version, ready to send.
pub struct Envelope {
    /// The Bundle exactly as Ocean sent it.
    pub bundle: bytes::Bytes,
    /// The JSON envelope around it.
    pub json: Vec<u8>,
}

#[derive(Serialize)]
struct Body<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    /// When this attempt was made (RFC 3339).
    timestamp: String,
    data: Data<'a>,
}

#[derive(Serialize)]
struct Data<'a> {
    /// The queued message's id in the relay (its `webhook-id` header names it for receivers).
    message: u64,
    referral: &'a str,
    version: u64,
    event: String,
    latest_change: Option<crate::domain::Change>,
    service_id: Option<String>,
    integration: String,
    received_at: String,
    /// Queued by a backfill, not as the version arrived.
    backfill: bool,
    /// The referral as this version left it (the API's referral view).
    summary: ReferralView,
    /// What this version changed (the API's `/versions/{n}/changes`).
    changes: VersionChanges,
    /// With `documents = "links"` or `"wait"`: each document's fetch state and API download
    /// path, and with `"wait"` its bytes inline when small enough.
    #[serde(skip_serializing_if = "Option::is_none")]
    documents: Option<Vec<DocumentEntry>>,
    /// The FHIR Bundle as received; null when it is not JSON (it is then in `bundle_base64`).
    bundle: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bundle_base64: Option<String>,
}

#[derive(Serialize)]
struct DocumentEntry {
    index: u32,
    kind: &'static str,
    title: Option<String>,
    content_type: Option<String>,
    /// `pending`, `fetched` or `failed`.
    state: &'static str,
    /// Bytes, once fetched.
    size: u64,
    /// SHA-256 of the bytes (lowercase hex), once fetched.
    sha256: Option<String>,
    /// `GET` with an API key, once fetched.
    download: String,
    /// The bytes, base64 (RFC 4648), with `documents = "wait"` up to `inline_max_bytes`.
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<String>,
}

/// The envelope of `message`, read from the store; `None` when its version is gone (purged by
/// retention, or never stored).
///
/// # Errors
/// The store's.
pub async fn build_envelope(
    store: &dyn Store,
    message: &QueuedMessage,
    documents: DocumentsMode,
    inline_max_bytes: u64,
    now: OffsetDateTime,
) -> Result<Option<Envelope>, StoreError> {
    let referral = &message.referral;
    let Some(mut record) = store.referral(referral).await? else {
        return Ok(None);
    };
    let Some((summary, changes, version)) = version_view(store, referral, message.version).await?
    else {
        return Ok(None);
    };
    let Some(bundle) = store.payload(referral, message.version).await? else {
        return Ok(None);
    };
    if version.purged {
        return Ok(None);
    }
    record.summary = summary;
    record.version = version.version;
    record.modified_at = version.received_at;
    record.latest_event = version.event.clone();
    record.service_id.clone_from(&version.service_id);
    let documents = match documents {
        DocumentsMode::None => None,
        DocumentsMode::Links | DocumentsMode::Wait => {
            let inline_max = match documents {
                DocumentsMode::Wait => inline_max_bytes,
                _ => 0,
            };
            let mut entries = Vec::new();
            for d in store.documents(referral).await? {
                if d.version != message.version {
                    continue;
                }
                let data = if d.state == DocumentState::Fetched && !d.purged && d.size <= inline_max
                {
                    store
                        .document_bytes(referral, d.version, d.index)
                        .await?
                        .map(|bytes| STANDARD.encode(&bytes))
                } else {
                    None
                };
                entries.push(DocumentEntry {
                    download: format!(
                        "/api/v1/referrals/{}/documents/{}/{}",
                        path_segment(referral.as_str()),
                        d.version,
                        d.index
                    ),
                    index: d.index,
                    kind: d.kind.as_str(),
                    title: d.title,
                    content_type: d.content_type,
                    state: d.state.as_str(),
                    size: d.size,
                    sha256: d.sha256,
                    data,
                });
            }
            Some(entries)
        }
    };
    let text = std::str::from_utf8(&bundle)
        .ok()
        .map(|t| t.trim_start_matches('\u{feff}'));
    let raw = text.and_then(|t| serde_json::from_str::<&RawValue>(t).ok());
    let body = Body {
        kind: VERSION_STORED,
        timestamp: rfc3339(now),
        data: Data {
            message: message.id,
            referral: referral.as_str(),
            version: version.version,
            event: version.event.to_string(),
            latest_change: record.summary.latest_change,
            service_id: version.service_id.as_ref().map(ToString::to_string),
            integration: version.integration.to_string(),
            received_at: rfc3339(version.received_at),
            backfill: message.backfill,
            summary: ReferralView::new(record),
            changes,
            documents,
            bundle: raw,
            bundle_base64: raw.is_none().then(|| STANDARD.encode(&bundle)),
        },
    };
    let json = serde_json::to_vec(&body)
        .map_err(|e| StoreError::failed("cannot encode a destination's message").caused_by(e))?;
    Ok(Some(Envelope { bundle, json }))
}
