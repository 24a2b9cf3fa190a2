//! The referral's own ServiceRequest as a stored message carried it, read back for the
//! messages that restate it: a forward (its category) and a data correction (the request
//! with its service or category changed).

use serde_json::{Value, json};

use super::header::read_header;
use super::request::read_service_request;
use crate::fhir::bundle::Bundle;
use crate::fhir::transaction::health_card;
use crate::fhir::{is_fhir_code, is_fhir_string, is_fhir_uri};
use crate::ig::SNOMED_CT;

/// The ServiceRequest of a stored message, with what a message of the relay's needs from it.
#[derive(Debug, Clone, PartialEq)]
pub struct OriginalRequest {
    /// The resource as sent.
    pub resource: Value,
    /// `subject` as a Reference that holds outside the original message: `Patient/{id}` when
    /// the Patient has an id, else a logical reference by its first identifier (a health card
    /// number before others); `None` when the message names no patient usably.
    pub subject: Option<Value>,
    /// The first `category` coding in SNOMED CT with a valid code, as
    /// `{system, code, display?}` (a display that is not a valid FHIR string is left out).
    pub snomed_category: Option<Value>,
}

/// The ServiceRequest of the message Bundle `raw` (JSON text), if it carries one: the one its
/// MessageHeader's `focus` names, else the Bundle's first, as the message is read when stored.
pub fn service_request_of(raw: &str) -> Option<OriginalRequest> {
    let bundle = Bundle::parse(raw).ok()?;
    let mut problems = Vec::new();
    let header = read_header(&bundle, &mut problems).ok()?;
    let entry = read_service_request(&bundle, &header, &mut problems).entry?;
    let resource: Value = serde_json::from_str(&entry.resource.to_json()).ok()?;
    let subject = resource["subject"]["reference"]
        .as_str()
        .and_then(|reference| {
            let patient = bundle.resolve(reference, Some(&entry))?;
            (patient.kind == "Patient").then(|| {
                serde_json::from_str::<Value>(&patient.resource.to_json()).unwrap_or_default()
            })
        })
        .and_then(|patient| portable_subject(&patient))
        .or_else(|| {
            // A literal `Patient/{id}` holds wherever it is read.
            let reference = resource["subject"]["reference"].as_str()?;
            let id = reference.strip_prefix("Patient/")?;
            (!id.is_empty() && !id.contains('/')).then(|| json!({ "reference": reference }))
        })
        .or_else(|| {
            let identifier = resource["subject"].get("identifier")?;
            Some(json!({ "type": "Patient", "identifier": identifier }))
        });
    let snomed_category = resource["category"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["coding"].as_array().into_iter().flatten())
        .find(|coding| {
            coding["system"] == SNOMED_CT && coding["code"].as_str().is_some_and(is_fhir_code)
        })
        .map(|coding| {
            let mut kept = json!({ "system": SNOMED_CT, "code": coding["code"] });
            if let Some(display) = coding["display"].as_str().filter(|d| is_fhir_string(d)) {
                kept["display"] = Value::from(display);
            }
            kept
        });
    Some(OriginalRequest {
        resource,
        subject,
        snomed_category,
    })
}

/// A reference to `patient` that needs no Bundle to resolve: `Patient/{id}`, else its health
/// card number, else its first identifier with a system and value.
fn portable_subject(patient: &Value) -> Option<Value> {
    if let Some(id) = patient["id"]
        .as_str()
        .filter(|id| crate::fhir::is_fhir_id(id))
    {
        return Some(json!({ "reference": format!("Patient/{id}") }));
    }
    let usable = |i: &&Value| {
        i["system"].as_str().is_some_and(is_fhir_uri)
            && i["value"].as_str().is_some_and(is_fhir_string)
    };
    let chosen = health_card(patient)
        .filter(usable)
        .or_else(|| patient["identifier"].as_array()?.iter().find(usable))?;
    Some(json!({
        "type": "Patient",
        "identifier": { "system": chosen["system"], "value": chosen["value"] },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(patient: Value, request: Value) -> String {
        json!({
            "resourceType": "Bundle", "type": "message",
            "entry": [
                {"fullUrl": "urn:uuid:6f1f2d7e-0d7e-4a43-9d55-1c3c3d1d0001", "resource": {
                    "resourceType": "MessageHeader",
                    "eventCoding": {"code": "add-service-request"},
                    "source": {"endpoint": "x"}}},
                {"fullUrl": "urn:uuid:6f1f2d7e-0d7e-4a43-9d55-1c3c3d1d0002", "resource": patient},
                {"fullUrl": "urn:uuid:6f1f2d7e-0d7e-4a43-9d55-1c3c3d1d0003", "resource": request},
            ]
        })
        .to_string()
    }

    #[test]
    fn the_subject_becomes_a_reference_that_holds_outside_the_message() {
        let request = json!({
            "resourceType": "ServiceRequest", "status": "active", "intent": "order",
            "subject": {"reference": "urn:uuid:6f1f2d7e-0d7e-4a43-9d55-1c3c3d1d0002"},
            "category": [{"coding": [
                {"system": "http://example.org/local", "code": "x"},
                {"system": "http://snomed.info/sct", "code": "394579002", "display": "Cardiology"}
            ]}]
        });
        let patient = json!({"resourceType": "Patient", "identifier": [
            {"system": "urn:example:mrn", "value": "MRN-1"},
            {"system": "https://fhir.infoway-inforoute.ca/NamingSystem/ca-on-patient-hcn", "value": "9999999999",
             "type": {"coding": [{"code": "JHN"}]}}
        ]});
        let read = service_request_of(&message(patient, request)).unwrap();
        assert_eq!(
            read.subject.unwrap()["identifier"],
            json!({"system": "https://fhir.infoway-inforoute.ca/NamingSystem/ca-on-patient-hcn", "value": "9999999999"})
        );
        assert_eq!(read.snomed_category.unwrap()["code"], "394579002");

        let with_id = json!({"resourceType": "Patient", "id": "p-7"});
        let request = json!({"resourceType": "ServiceRequest",
            "subject": {"reference": "urn:uuid:6f1f2d7e-0d7e-4a43-9d55-1c3c3d1d0002"}});
        let read = service_request_of(&message(with_id, request)).unwrap();
        assert_eq!(read.subject.unwrap(), json!({"reference": "Patient/p-7"}));
        assert_eq!(read.snomed_category, None);

        let unresolved = json!({"resourceType": "ServiceRequest",
            "subject": {"reference": "urn:uuid:6f1f2d7e-0d7e-4a43-9d55-1c3c3d1d0009"}});
        let read = service_request_of(&message(json!({"resourceType": "Basic"}), unresolved));
        assert_eq!(read.unwrap().subject, None);
        assert!(service_request_of("{\"resourceType\": \"Bundle\"}").is_none());
    }

    #[test]
    fn the_service_request_the_header_names_is_read_not_the_first() {
        let other = json!({"resourceType": "ServiceRequest", "identifier": [{"value": "OTHER"}]});
        let own = json!({"resourceType": "ServiceRequest", "identifier": [{"value": "OWN"}]});
        let raw = json!({
            "resourceType": "Bundle", "type": "message",
            "entry": [
                {"fullUrl": "urn:uuid:6f1f2d7e-0d7e-4a43-9d55-1c3c3d1d0001", "resource": {
                    "resourceType": "MessageHeader",
                    "eventCoding": {"code": "notify-update-service-request"},
                    "focus": [{"reference": "urn:uuid:6f1f2d7e-0d7e-4a43-9d55-1c3c3d1d0003"}],
                    "source": {"endpoint": "x"}}},
                {"fullUrl": "urn:uuid:6f1f2d7e-0d7e-4a43-9d55-1c3c3d1d0002", "resource": other},
                {"fullUrl": "urn:uuid:6f1f2d7e-0d7e-4a43-9d55-1c3c3d1d0003", "resource": own},
            ]
        })
        .to_string();
        let read = service_request_of(&raw).unwrap();
        assert_eq!(read.resource["identifier"][0]["value"], "OWN");
    }
}
