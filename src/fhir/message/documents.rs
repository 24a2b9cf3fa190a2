//! The documents a message points to: each DocumentReference it carries, read as a link to its
//! first attachment.

use crate::domain::DocumentLink;
use crate::fhir::bundle::Bundle;
use crate::fhir::resources::document_link;

/// A link to each DocumentReference in the Bundle, in the Bundle's order.
pub(super) fn document_links(bundle: &Bundle<'_>) -> Vec<DocumentLink> {
    bundle
        .entries
        .iter()
        .filter(|e| e.kind == "DocumentReference")
        .map(document_link)
        .collect()
}
