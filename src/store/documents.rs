//! Documents kept with a referral: the referral letter PDF Ocean renders
//! (`ServiceRequest/{ref}/$letter`) and the attachments its messages point to, fetched from
//! Ocean after the delivery that named them was stored.
//!
//! A delivery's documents are queued in the same atomic write as the delivery itself (see
//! [`NewDelivery::documents`]); the [fetcher](crate::ocean::documents) then works through the
//! pending ones, saving each one's bytes and its new state in one write.

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::deliveries::NewDelivery;
use super::error::StoreError;
use crate::domain::ReferralRef;

/// What a document is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DocumentKind {
    /// The referral letter Ocean renders, with the referral's attachments consolidated
    /// (`GET {base}/svc/fhir/v1/ServiceRequest/{ref}/$letter?attachments=true`).
    Letter,
    /// A `DocumentReference`'s attachment, from its `attachment.url`.
    Attachment,
}

impl DocumentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Letter => "letter",
            Self::Attachment => "attachment",
        }
    }
}

/// Where a document's fetch stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DocumentState {
    /// Not fetched yet; tried again at `next_attempt_at`.
    Pending,
    /// Its bytes are stored.
    Fetched,
    /// Given up; `last_error` says why.
    Failed,
}

impl DocumentState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Fetched => "fetched",
            Self::Failed => "failed",
        }
    }
}

/// One document of one referral version, keyed by (referral, version, index).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocumentRecord {
    pub referral: ReferralRef,
    /// The version whose delivery named it.
    pub version: u64,
    /// 0 for the letter, then the message's DocumentReferences in order, from 1.
    pub index: u32,
    pub kind: DocumentKind,
    /// `attachment.url` as sent (absolute, or relative to the site's FHIR base); `None` for the
    /// letter, whose address is built from the site's base URL.
    pub source: Option<String>,
    /// `DocumentReference.id` (or its first identifier).
    pub document_id: Option<String>,
    pub title: Option<String>,
    pub state: DocumentState,
    pub attempts: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub next_attempt_at: OffsetDateTime,
    pub last_error: Option<String>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub fetched_at: Option<OffsetDateTime>,
    /// The media type Ocean answered with (else the one the message gave).
    pub content_type: Option<String>,
    /// Size of the stored bytes.
    pub size: u64,
    /// SHA-256 of the stored bytes, lowercase hex.
    pub sha256: Option<String>,
    /// True once retention purged its bytes (with its version's payload).
    #[serde(default)]
    pub purged: bool,
}

impl DocumentRecord {
    /// What retention leaves of it with its version's payload: the record, marked purged (a
    /// document still pending is given up, so it is not fetched afterwards).
    pub fn purge(&mut self) {
        self.purged = true;
        self.title = None;
        if self.state == DocumentState::Pending {
            self.state = DocumentState::Failed;
            self.last_error = Some("purged by retention before it was fetched".into());
        }
    }

    /// The file name it is offered under: `{stem}-v{version}-letter.pdf`,
    /// `{stem}-v{version}-{index}.{ext}`, with the ref's [`file_stem`](ReferralRef::file_stem).
    pub fn file_name(&self) -> String {
        let referral = self.referral.file_stem();
        let media = self
            .content_type
            .as_deref()
            .map(|c| media_type(c).to_ascii_lowercase());
        let extension = match media.as_deref() {
            Some("application/pdf") | None => "pdf",
            Some("image/png") => "png",
            Some("image/jpeg") => "jpg",
            Some("text/plain") => "txt",
            Some(_) => "bin",
        };
        match self.kind {
            DocumentKind::Letter => format!("{referral}-v{}-letter.{extension}", self.version),
            DocumentKind::Attachment => {
                format!("{referral}-v{}-{}.{extension}", self.version, self.index)
            }
        }
    }
}

/// A media type without its parameters (`application/pdf`).
fn media_type(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or_default().trim()
}

impl NewDelivery {
    /// The documents this delivery queues once stored as `version`: the referral letter, then
    /// each DocumentReference of the message with an `attachment.url` (inline attachments are
    /// in the stored message already). None unless [`NewDelivery::fetch_documents`].
    pub fn documents(&self, version: u64, now: OffsetDateTime) -> Vec<DocumentRecord> {
        if !self.fetch_documents {
            return Vec::new();
        }
        let record = |index: u32, kind, source, document_id, title, content_type| DocumentRecord {
            referral: self.referral.clone(),
            version,
            index,
            kind,
            source,
            document_id,
            title,
            state: DocumentState::Pending,
            attempts: 0,
            created_at: now,
            next_attempt_at: now,
            last_error: None,
            fetched_at: None,
            content_type,
            size: 0,
            sha256: None,
            purged: false,
        };
        let mut documents = vec![record(
            0,
            DocumentKind::Letter,
            None,
            None,
            Some("Referral letter".to_owned()),
            Some("application/pdf".to_owned()),
        )];
        let attachments = self
            .summary
            .documents
            .iter()
            .filter(|d| !d.inline && d.url.is_some());
        for (n, link) in attachments.enumerate() {
            documents.push(record(
                u32::try_from(n + 1).unwrap_or(u32::MAX),
                DocumentKind::Attachment,
                link.url.clone(),
                link.id.clone(),
                link.title.clone(),
                link.content_type.clone(),
            ));
        }
        documents
    }
}

/// (referral, version, index): which document.
pub type DocumentKey = (ReferralRef, u64, u32);

/// Keeping the documents of referrals.
#[async_trait]
pub trait DocumentStore: Send + Sync {
    /// Pending documents due at `now`, oldest first, at most `limit`, leaving out `busy` (those
    /// the caller is fetching already). On a store shared by replicas, the documents returned
    /// are leased to the caller for `lease` (no other replica gets them meanwhile, and a leased
    /// one is not due), so a caller should start every one it is given.
    async fn due_documents(
        &self,
        now: OffsetDateTime,
        lease: std::time::Duration,
        limit: usize,
        busy: &[DocumentKey],
    ) -> Result<Vec<DocumentRecord>, StoreError>;

    /// Saves a document's new state and, when given, its bytes, in one durable write.
    async fn save_document(
        &self,
        record: &DocumentRecord,
        bytes: Option<Bytes>,
    ) -> Result<(), StoreError>;

    /// Every document of a referral, by version then index.
    async fn documents(&self, referral: &ReferralRef) -> Result<Vec<DocumentRecord>, StoreError>;

    /// The stored bytes of one document.
    async fn document_bytes(
        &self,
        referral: &ReferralRef,
        version: u64,
        index: u32,
    ) -> Result<Option<Bytes>, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_safe_and_say_what_the_document_is() {
        let mut d = DocumentRecord {
            referral: ReferralRef::parse("TST/1 \"x\"").unwrap(),
            version: 3,
            index: 0,
            kind: DocumentKind::Letter,
            source: None,
            document_id: None,
            title: None,
            state: DocumentState::Fetched,
            attempts: 1,
            created_at: OffsetDateTime::UNIX_EPOCH,
            next_attempt_at: OffsetDateTime::UNIX_EPOCH,
            last_error: None,
            fetched_at: None,
            content_type: Some("application/pdf; charset=binary".into()),
            size: 0,
            sha256: None,
            purged: false,
        };
        let stem = d.referral.file_stem();
        assert!(stem.starts_with("TST_1__x_-"), "{stem}");
        assert_eq!(d.file_name(), format!("{stem}-v3-letter.pdf"));
        d.kind = DocumentKind::Attachment;
        d.index = 2;
        d.content_type = Some("image/png".into());
        assert_eq!(d.file_name(), format!("{stem}-v3-2.png"));
    }
}
