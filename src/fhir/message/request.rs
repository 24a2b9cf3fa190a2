//! The referral's own resources in a message: the ServiceRequest it is about, and the Task and
//! Appointment that follow its progress. Each is checked against FHIR R4 when present, and read
//! leniently either way.

use std::borrow::Cow;

use fhir_check::Kind;

use super::header::Header;
use crate::fhir::bundle::{Bundle, Entry, conform};
use crate::fhir::resources::{
    AppointmentView, ServiceRequestView, TaskView, appointment_view, server_id,
    service_request_view, task_view,
};

/// The ServiceRequest the message is about, when it carries one, and what was read from it.
pub(super) struct ServiceRequest<'b, 'a> {
    pub(super) entry: Option<Cow<'b, Entry<'a>>>,
    /// Empty when the message carries no ServiceRequest.
    pub(super) view: ServiceRequestView,
}

/// The ServiceRequest the MessageHeader's `focus` names, else the Bundle's first.
pub(super) fn read_service_request<'b, 'a>(
    bundle: &'b Bundle<'a>,
    header: &Header<'_, 'a>,
    problems: &mut Vec<String>,
) -> ServiceRequest<'b, 'a> {
    let entry = header
        .view
        .focus
        .iter()
        .filter_map(|r| bundle.resolve(r, Some(header.entry)))
        .find(|e| e.kind == "ServiceRequest")
        .or_else(|| bundle.first("ServiceRequest").map(Cow::Borrowed));
    if let Some(entry) = &entry {
        conform(Kind::ServiceRequest, entry, problems);
    }
    let view = entry
        .as_ref()
        .map(|e| service_request_view(&e.resource))
        .unwrap_or_default();
    ServiceRequest { entry, view }
}

/// The Bundle's first Task, when it carries one, and what was read from it.
pub(super) struct Task {
    pub(super) carried: bool,
    /// The Task's id on the sender's server.
    pub(super) id: Option<String>,
    /// Empty when the message carries no Task.
    pub(super) view: TaskView,
}

pub(super) fn read_task(bundle: &Bundle<'_>, problems: &mut Vec<String>) -> Task {
    let entry = bundle.first("Task");
    if let Some(entry) = entry {
        conform(Kind::Task, entry, problems);
    }
    Task {
        carried: entry.is_some(),
        id: entry.and_then(server_id),
        view: entry.map(|e| task_view(&e.resource)).unwrap_or_default(),
    }
}

/// The Bundle's first Appointment, when it carries one, and what was read from it.
pub(super) struct Appointment {
    pub(super) carried: bool,
    /// Empty when the message carries no Appointment.
    pub(super) view: AppointmentView,
}

pub(super) fn read_appointment(bundle: &Bundle<'_>, problems: &mut Vec<String>) -> Appointment {
    let entry = bundle.first("Appointment");
    if let Some(entry) = entry {
        conform(Kind::Appointment, entry, problems);
    }
    Appointment {
        carried: entry.is_some(),
        view: entry
            .map(|e| appointment_view(&e.resource))
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{accepted, bundle, header};
    use serde_json::json;

    #[test]
    fn a_resource_fhir_sdk_refuses_is_read_leniently_and_recorded() {
        let body = bundle(json!([
            {"fullUrl": "urn:uuid:a", "resource": header(json!({
                "extension": [{"url": "http://ehealthontario.ca/fhir/StructureDefinition/ext-id-message-header", "valueString": "R-2"}]
            }))},
            {"fullUrl": "urn:uuid:b", "resource": {
                "resourceType": "Task", "status": "mulling-it-over", "intent": "order",
                "statusReason": {"text": "thinking"}
            }}
        ]));
        let m = accepted(&body).unwrap();
        assert_eq!(m.referral.as_str(), "R-2");
        assert_eq!(m.summary.task_status.as_deref(), Some("mulling-it-over"));
        assert_eq!(m.summary.task_status_reason.as_deref(), Some("thinking"));
        assert_eq!(m.problems.len(), 1);
        assert!(m.problems[0].starts_with("Task urn:uuid:b does not conform"));
    }
}
