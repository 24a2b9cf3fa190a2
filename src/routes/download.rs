//! What both UIs serve as files: a document kept with a referral, and a version's message
//! exactly as received.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::domain::ReferralRef;
use crate::error::{AppError, FHIR_JSON};
use crate::state::AppState;
use crate::store::DocumentState;

/// Version `version` of `reference`'s message as received (`application/fhir+json`); as a
/// download named by referral and version when `attachment`.
///
/// # Errors
/// [`AppError::NotFound`] when there is no such version or retention purged it, or the
/// store's error.
pub async fn version(
    state: &AppState,
    reference: &ReferralRef,
    version: u64,
    attachment: bool,
) -> Result<Response, AppError> {
    let raw = state
        .store
        .payload(reference, version)
        .await?
        .ok_or_else(|| {
            AppError::NotFound(format!("referral {reference} has no version {version}"))
        })?;
    let mut response = (StatusCode::OK, raw).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    let name = format!(
        "attachment; filename=\"{}-v{version}.json\"",
        reference.file_stem()
    );
    if attachment && let Ok(value) = HeaderValue::from_str(&name) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    Ok(response)
}

/// One document's bytes as a download, for the API and the console alike: 404 with the reason
/// when it is not kept (not fetched yet, given up, purged, or no such document).
///
/// # Errors
/// [`AppError::NotFound`], or the store's error.
pub async fn document(
    state: &AppState,
    reference: &ReferralRef,
    version: u64,
    index: u64,
) -> Result<Response, AppError> {
    let documents = state.store.documents(reference).await?;
    let document = documents
        .into_iter()
        .find(|d| d.version == version && u64::from(d.index) == index)
        .ok_or_else(|| {
            AppError::NotFound(format!(
                "referral {reference} has no document {index} in version {version}"
            ))
        })?;
    let not_kept =
        |why: String| AppError::NotFound(format!("document {index} of version {version}: {why}"));
    match (document.state, document.purged) {
        (_, true) => return Err(not_kept("purged by retention".into())),
        (DocumentState::Pending, _) => return Err(not_kept("not fetched yet".into())),
        (DocumentState::Failed, _) => {
            return Err(not_kept(format!(
                "not kept: {}",
                document.last_error.as_deref().unwrap_or("the fetch failed")
            )));
        }
        (DocumentState::Fetched, _) => {}
    }
    let bytes = state
        .store
        .document_bytes(reference, version, document.index)
        .await?
        .ok_or_else(|| not_kept("its bytes are missing".into()))?;
    let mut response = (StatusCode::OK, bytes).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(served_type(document.content_type.as_deref())),
    );
    // Never sniffed into something a browser would run, and never run if it were.
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox; default-src 'none'"),
    );
    if let Ok(value) = HeaderValue::from_str(&format!(
        "attachment; filename=\"{}\"",
        document.file_name()
    )) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    Ok(response)
}

/// The media type a document is served under: the one Ocean gave when it is a PDF, an image a
/// browser shows inertly (PNG, JPEG, GIF, WebP, TIFF) or plain text; anything else (markup, XML,
/// types with several values) as `application/octet-stream`, which a browser only saves.
fn served_type(given: Option<&str>) -> &'static str {
    let media_type = given
        .and_then(|c| c.split(';').next())
        .map(|m| m.trim().to_ascii_lowercase());
    match media_type.as_deref() {
        Some("application/pdf") => "application/pdf",
        Some("image/png") => "image/png",
        Some("image/jpeg") => "image/jpeg",
        Some("image/gif") => "image/gif",
        Some("image/webp") => "image/webp",
        Some("image/tiff") => "image/tiff",
        Some("text/plain") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::served_type;

    #[test]
    fn only_inert_types_are_served_as_given() {
        assert_eq!(served_type(Some("application/PDF; x=1")), "application/pdf");
        assert_eq!(served_type(Some("image/png")), "image/png");
        for active in [
            "text/html",
            "text/plain, text/html",
            "image/svg+xml",
            "text/xml",
            "application/xhtml+xml",
            "text/xsl",
            "multipart/x-mixed-replace; boundary=x",
        ] {
            assert_eq!(
                served_type(Some(active)),
                "application/octet-stream",
                "{active}"
            );
        }
        assert_eq!(served_type(None), "application/octet-stream");
    }
}
