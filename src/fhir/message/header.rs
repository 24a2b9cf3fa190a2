//! The message's envelope: the MessageHeader (its event code and id), when the message says it
//! was made, and the referral reference it is filed under. Refusals for a missing header, event
//! code or referral reference are made here.

use fhir_check::Kind;

use super::ParseError;
use crate::domain::{EventCode, ReferralRef};
use crate::fhir::bundle::{Bundle, Entry, conform, id_of_full_url};
use crate::fhir::resources::{HeaderView, ServiceRequestView, header_view};

/// The MessageHeader entry and what was read from it.
pub(super) struct Header<'b, 'a> {
    pub(super) entry: &'b Entry<'a>,
    pub(super) view: HeaderView,
    pub(super) event: EventCode,
    /// `MessageHeader.id`, or the id in its `fullUrl` when the resource has none.
    pub(super) id: Option<String>,
}

/// Reads the Bundle's first MessageHeader; a message without one, or without a valid event
/// code, cannot be filed.
pub(super) fn read_header<'b, 'a>(
    bundle: &'b Bundle<'a>,
    problems: &mut Vec<String>,
) -> Result<Header<'b, 'a>, ParseError> {
    let entry = bundle
        .first("MessageHeader")
        .ok_or_else(|| ParseError::Unusable("the Bundle has no MessageHeader entry".into()))?;
    conform(Kind::MessageHeader, entry, problems);
    let view = header_view(&entry.resource);
    let event = view
        .event
        .as_deref()
        .ok_or_else(|| ParseError::Unusable("MessageHeader has no eventCoding.code".into()))
        .and_then(|code| {
            EventCode::parse(code)
                .map_err(|e| ParseError::Unusable(format!("MessageHeader.eventCoding.code: {e}")))
        })?;
    let id = view
        .id
        .clone()
        .or_else(|| entry.full_url.as_deref().and_then(id_of_full_url));
    Ok(Header {
        entry,
        view,
        event,
        id,
    })
}

/// When the message was made, by its own word: `Bundle.timestamp`, else the MessageHeader's
/// `meta.lastUpdated`, else the ServiceRequest's (unreadable ones are skipped). A
/// `Bundle.timestamp` that is not an RFC 3339 date-time is recorded as a problem.
pub(super) fn sent_at(
    bundle: &Bundle<'_>,
    header: &Header<'_, '_>,
    service_request: Option<&Entry<'_>>,
    problems: &mut Vec<String>,
) -> Option<time::OffsetDateTime> {
    let timestamp = bundle.root.text("timestamp");
    if timestamp.as_deref().is_some_and(|t| {
        time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).is_err()
    }) {
        problems.push(
            "Bundle.timestamp is not an RFC 3339 date-time with a zone; the message's time is taken from meta.lastUpdated, else it counts as the newest".into(),
        );
    }
    [
        timestamp,
        header.entry.resource.path_text(&["meta", "lastUpdated"]),
        service_request.and_then(|e| e.resource.path_text(&["meta", "lastUpdated"])),
    ]
    .into_iter()
    .flatten()
    .find_map(|t| {
        time::OffsetDateTime::parse(&t, &time::format_description::well_known::Rfc3339).ok()
    })
}

/// The referral reference the message is filed under: the MessageHeader's extension, else the
/// ServiceRequest's identifier. Without a valid one the message cannot be filed.
pub(super) fn referral(
    header: &HeaderView,
    service_request: &ServiceRequestView,
) -> Result<ReferralRef, ParseError> {
    header
        .referral
        .as_deref()
        .or(service_request.referral.as_deref())
        .ok_or_else(|| {
            ParseError::Unusable(match header.unreadable_referral {
                Some(value) => format!(
                    "no referral reference: the MessageHeader's referral extension has no {value} string"
                ),
                None => "no referral reference: expected MessageHeader extension \
                         ext-referral-identifier or ext-id-message-header, or a ServiceRequest \
                         identifier whose system ends in /id-ereferral-reference"
                    .into(),
            })
        })
        .and_then(|r| {
            // Two references that differ only where their text does not decode would read
            // alike: such a reference cannot file a referral.
            if r.contains(char::REPLACEMENT_CHARACTER) {
                return Err(ParseError::Unusable(
                    "referral reference: it holds bytes that are not UTF-8 or an escape that is not Unicode".into(),
                ));
            }
            ReferralRef::parse(r)
                .map_err(|e| ParseError::Unusable(format!("referral reference: {e}")))
        })
}

#[cfg(test)]
mod tests {
    use super::super::tests::{bundle, header};
    use super::super::{Parsed, parse_message};
    use crate::domain::EventCode;
    use serde_json::json;

    #[test]
    fn an_ignored_event_needs_no_referral_reference() {
        let body = bundle(
            json!([{"fullUrl": "https://h/MessageHeader/mh-9", "resource": header(json!({}))}]),
        );
        let parsed = parse_message(&body, |e| e.as_str() != "add-service-request").unwrap();
        assert_eq!(
            parsed,
            Parsed::Ignored {
                event: EventCode::parse("add-service-request").unwrap(),
                // A RESTful fullUrl stands for the id at its end.
                message_header_id: Some("mh-9".into()),
            }
        );
    }
}
