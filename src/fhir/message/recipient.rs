//! Where the referral was sent: the target directory listing (a PractitionerRole), the External
//! Service ID that names it, and the listing's name as the message gives it.

use fhir_check::Kind;

use super::header::Header;
use super::request::ServiceRequest;
use crate::domain::ServiceId;
use crate::fhir::bundle::{Bundle, conform};
use crate::fhir::resources::{first_named, role_view};

/// What the message says of the listing the referral was sent to.
pub(super) struct Recipient {
    /// The External Service ID the message names, if it names a valid one.
    pub(super) service_id: Option<ServiceId>,
    /// The listing's name: the destination's, else the receiver's display, else the name of the
    /// target's first named location.
    pub(super) listing: Option<String>,
}

pub(super) fn read_recipient<'a>(
    bundle: &Bundle<'a>,
    header: &Header<'_, 'a>,
    service_request: &ServiceRequest<'_, 'a>,
    problems: &mut Vec<String>,
) -> Recipient {
    // The directory listing the referral was sent to: a destination's receiver, else the
    // ServiceRequest's performer.
    let target_entry = header
        .view
        .receivers
        .iter()
        .filter_map(|r| bundle.resolve(r, Some(header.entry)))
        .chain(
            service_request
                .view
                .performer
                .iter()
                .filter_map(|r| bundle.resolve(r, service_request.entry.as_deref())),
        )
        .find(|e| e.kind == "PractitionerRole");
    if let Some(entry) = &target_entry {
        conform(Kind::PractitionerRole, entry, problems);
    }
    let target = target_entry.as_ref().map(|e| role_view(&e.resource));
    // The External Service ID: the target's identifier, then any destination receiver's; an
    // invalid candidate (blank, control characters) falls through to the next.
    let service_id = target
        .iter()
        .filter_map(|t| t.service_id.as_deref())
        .chain(header.view.receiver_service_ids.iter().map(String::as_str))
        .filter(|s| !s.contains(char::REPLACEMENT_CHARACTER))
        .find_map(|s| ServiceId::parse(s).ok());
    let listing = header
        .view
        .destination_name
        .clone()
        .or_else(|| header.view.receiver_display.clone())
        .or_else(|| {
            let (entry, role) = (target_entry.as_ref()?, target.as_ref()?);
            first_named(bundle, &role.locations, entry)
        });
    Recipient {
        service_id,
        listing,
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{accepted, bundle, header};
    use serde_json::{Value, json};

    /// Every form a reference to the target PractitionerRole can take under R4's Bundle rules
    /// finds it, and with it the External Service ID.
    #[test]
    fn versioned_relative_absolute_and_contained_references_resolve() {
        let with_receiver = |reference: &str, role_full_url: &str, role: Value| {
            bundle(json!([
                {"fullUrl": "https://h/fhir/MessageHeader/mh1", "resource": header(json!({
                    "extension": [{"url": "x/ext-id-message-header", "valueString": "R-5"}],
                    "destination": [{"endpoint": "e", "receiver": {"reference": reference}}],
                    "contained": [{"resourceType": "PractitionerRole", "id": "inner",
                        "identifier": [{"system": "x/id-referral-target-external-service", "value": "SVC-C"}]}]
                }))},
                {"fullUrl": role_full_url, "resource": role}
            ]))
        };
        let role = |version: &str, service: &str| {
            json!({"resourceType": "PractitionerRole", "id": "pr1", "meta": {"versionId": version},
                   "identifier": [{"system": "x/id-referral-target-external-service", "value": service}]})
        };
        let service = |body: Vec<u8>| accepted(&body).unwrap().service_id.map(|s| s.to_string());
        for reference in [
            "PractitionerRole/pr1",
            "PractitionerRole/pr1/_history/1",
            "https://h/fhir/PractitionerRole/pr1",
            "https://h/fhir/PractitionerRole/pr1/_history/1",
        ] {
            let body = with_receiver(
                reference,
                "https://h/fhir/PractitionerRole/pr1",
                role("1", "SVC-V"),
            );
            assert_eq!(service(body).as_deref(), Some("SVC-V"), "{reference}");
        }
        // A versioned reference picks the entry of that version when the Bundle holds two.
        let two = bundle(json!([
            {"fullUrl": "urn:uuid:h", "resource": header(json!({
                "extension": [{"url": "x/ext-id-message-header", "valueString": "R-6"}],
                "destination": [{"endpoint": "e", "receiver": {"reference": "PractitionerRole/pr1/_history/2"}}]
            }))},
            {"fullUrl": "https://h/fhir/PractitionerRole/pr1", "resource": role("1", "SVC-OLD")},
            {"fullUrl": "https://h/fhir/PractitionerRole/pr1", "resource": role("2", "SVC-NEW")}
        ]));
        assert_eq!(service(two).as_deref(), Some("SVC-NEW"));
        // A fragment names a resource contained in the referring one.
        let contained = with_receiver("#inner", "urn:uuid:other", json!({"resourceType": "Basic"}));
        assert_eq!(service(contained).as_deref(), Some("SVC-C"));
    }

    /// Many `#id` references against many contained resources: each lookup is one probe of an
    /// index built once, not a re-read of the contained list (which would take hours here).
    #[test]
    fn many_fragment_references_resolve_through_one_index() {
        let contained: Vec<Value> = (0..20_000)
            .map(|n| json!({"resourceType": "Basic", "id": format!("c{n}")}))
            .collect();
        let performers: Vec<Value> = (0..20_000)
            .map(|n| json!({"reference": format!("#c{n}")}))
            .collect();
        let body = bundle(json!([
            {"fullUrl": "urn:uuid:h", "resource": header(json!({
                "extension": [{"url": "x/ext-id-message-header", "valueString": "R-8"}],
                "focus": [{"reference": "urn:uuid:sr"}]
            }))},
            {"fullUrl": "urn:uuid:sr", "resource": {"resourceType": "ServiceRequest",
                "status": "active", "intent": "order", "subject": {"reference": "#nobody"},
                "contained": contained, "performer": performers}}
        ]));
        let m = accepted(&body).unwrap();
        assert_eq!(m.referral.as_str(), "R-8");
        assert_eq!(m.service_id, None);
    }

    #[test]
    fn an_invalid_service_id_candidate_falls_through_to_the_next() {
        let body = bundle(json!([
            {"fullUrl": "urn:uuid:a", "resource": header(json!({
                "extension": [{"url": "x/ext-id-message-header", "valueString": "R-3"}],
                "destination": [
                    {"endpoint": "e1", "receiver": {"reference": "urn:uuid:pr"}},
                    {"endpoint": "e2", "receiver": {"identifier": {
                        "system": "https://h/NamingSystem/id-referral-target-external-service",
                        "value": "SVC-2"}}}
                ]
            }))},
            {"fullUrl": "urn:uuid:pr", "resource": {"resourceType": "PractitionerRole",
                "identifier": [{"system": "https://h/NamingSystem/id-referral-target-external-service", "value": "   "}]}}
        ]));
        assert_eq!(
            accepted(&body).unwrap().service_id.unwrap().as_str(),
            "SVC-2"
        );
    }
}
