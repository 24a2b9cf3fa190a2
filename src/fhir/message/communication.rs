//! The Communication a message may carry: the text sent between requester and provider, when it
//! was sent, and by whom.

use fhir_check::Kind;

use crate::fhir::bundle::{Bundle, conform};
use crate::fhir::resources::{communication_view, referrer};

/// What was read from the Bundle's first Communication (all empty when it carries none).
pub(super) struct Communication {
    pub(super) carried: bool,
    pub(super) text: Option<String>,
    pub(super) sent: Option<String>,
    /// The sender's display, else the name of the clinician the sender reference resolves to.
    pub(super) sender: Option<String>,
}

pub(super) fn read_communication(bundle: &Bundle<'_>, problems: &mut Vec<String>) -> Communication {
    let entry = bundle.first("Communication");
    if let Some(entry) = entry {
        conform(Kind::Communication, entry, problems);
    }
    let view = entry
        .map(|e| communication_view(&e.resource))
        .unwrap_or_default();
    let sender = view.sender_display.clone().or_else(|| {
        let entry = entry?;
        let sender = bundle.resolve(view.sender.as_deref()?, Some(entry))?;
        referrer(bundle, &sender, problems).name
    });
    Communication {
        carried: entry.is_some(),
        text: view.text,
        sent: view.sent,
        sender,
    }
}
