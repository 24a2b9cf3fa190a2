//! `/referrals/{referral}/documents`: the letter and attachments kept with each version, and
//! their bytes.

use axum::Json;
use axum::extract::State;
use axum::response::Response;
use serde::Serialize;
use utoipa::ToSchema;

use super::extract::{Caller, Path, ProblemDoc, rfc3339, visible};
use crate::error::{AppError, Problem};
use crate::routes::request::whole_number;
use crate::state::AppState;
use crate::store::{DocumentRecord, DocumentState};

/// One document kept with a referral version.
#[derive(Debug, Serialize, ToSchema)]
pub struct DocumentView {
    /// The version whose delivery named it.
    version: u64,
    /// 0 for the letter, then the message's DocumentReferences from 1.
    index: u32,
    /// `letter` or `attachment`.
    kind: &'static str,
    /// `pending`, `fetched` or `failed`.
    state: &'static str,
    title: Option<String>,
    /// `DocumentReference.id` of an attachment.
    document_id: Option<String>,
    /// The attachment's `url` as the message gave it (null for the letter).
    source: Option<String>,
    /// Media type Ocean served it as.
    content_type: Option<String>,
    /// Size in bytes, once fetched.
    size: u64,
    sha256: Option<String>,
    attempts: u32,
    /// Why the last attempt failed (for a failed document, why it was given up).
    last_error: Option<String>,
    /// When a pending document is tried next.
    next_attempt_at: Option<String>,
    fetched_at: Option<String>,
    /// True once retention purged its bytes.
    purged: bool,
    /// Where to download it (relative to the API base), once fetched.
    download: Option<String>,
    /// The name it is offered under.
    file_name: String,
}

impl From<DocumentRecord> for DocumentView {
    fn from(d: DocumentRecord) -> Self {
        let fetched = d.state == DocumentState::Fetched && !d.purged;
        Self {
            download: fetched.then(|| {
                format!(
                    "referrals/{}/documents/{}/{}",
                    d.referral.path_segment(),
                    d.version,
                    d.index
                )
            }),
            file_name: d.file_name(),
            version: d.version,
            index: d.index,
            kind: d.kind.as_str(),
            state: d.state.as_str(),
            title: d.title,
            document_id: d.document_id,
            source: d.source,
            content_type: d.content_type,
            size: d.size,
            sha256: d.sha256,
            attempts: d.attempts,
            last_error: d.last_error,
            next_attempt_at: (d.state == DocumentState::Pending)
                .then(|| rfc3339(d.next_attempt_at)),
            fetched_at: d.fetched_at.map(rfc3339),
            purged: d.purged,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DocumentList {
    referral: String,
    /// Every version's documents, by version then index.
    documents: Vec<DocumentView>,
}

/// The documents kept with a referral: each version's letter and attachments, fetched from
/// Ocean after the delivery was stored, with where each fetch stands.
#[utoipa::path(
    get,
    path = "/referrals/{referral}/documents",
    params(("referral" = String, Path, description = "Ocean's referral reference")),
    responses(
        (status = 200, description = "The referral's documents", body = DocumentList),
        (status = 401, description = "No or an unknown API key", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Outside the client's service ids", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such referral", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
pub async fn list_documents(
    State(state): State<AppState>,
    Caller(client): Caller,
    Path(referral): Path<String>,
) -> Result<Json<DocumentList>, Problem> {
    let (reference, _) = visible(&state, &client, &referral).await?;
    let documents = state.store.documents(&reference).await?;
    Ok(Json(DocumentList {
        referral: reference.to_string(),
        documents: documents.into_iter().map(DocumentView::from).collect(),
    }))
}

/// A document's bytes, in the OpenAPI document (a `string` of format `binary`).
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code)]
struct DocumentBytes(Vec<u8>);

/// One document's bytes, as Ocean served them.
#[utoipa::path(
    get,
    path = "/referrals/{referral}/documents/{version}/{index}",
    params(
        ("referral" = String, Path, description = "Ocean's referral reference"),
        ("version" = u64, Path, description = "Version number, from 1"),
        ("index" = u32, Path, description = "0 for the letter, then attachments from 1"),
    ),
    responses(
        (status = 200, description = "The document's bytes under the media type Ocean served it with: usually application/pdf, sometimes an image or another type; application/octet-stream when Ocean gave none", content(
            (inline(DocumentBytes) = "application/pdf"),
            (inline(DocumentBytes) = "*/*"),
        )),
        (status = 400, description = "version or index is not a whole number", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 401, description = "No or an unknown API key", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Outside the client's service ids", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, description = "No such referral or document, or not fetched (yet), or purged", body = ProblemDoc, content_type = "application/problem+json"),
    )
)]
pub async fn get_document(
    State(state): State<AppState>,
    Caller(client): Caller,
    Path((referral, version, index)): Path<(String, String, String)>,
) -> Result<Response, Problem> {
    let version = whole_number(&version)
        .ok_or_else(|| AppError::BadRequest("version must be a whole number".into()))?;
    let index = whole_number(&index)
        .ok_or_else(|| AppError::BadRequest("index must be a whole number".into()))?;
    let (reference, _) = visible(&state, &client, &referral).await?;
    Ok(crate::routes::download::document(&state, &reference, version, index).await?)
}
