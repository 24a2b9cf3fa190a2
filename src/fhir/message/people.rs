//! The people a referral is between: the patient it is for, and the clinician and site that
//! referred them.

use std::borrow::Cow;

use fhir_check::Kind;

use super::header::Header;
use super::request::ServiceRequest;
use crate::fhir::bundle::{Bundle, conform};
use crate::fhir::resources::{PatientView, ReferrerView, patient_view, referrer};

/// The patient, when the message carries one, and what was read of them.
pub(super) struct Patient {
    pub(super) carried: bool,
    /// Empty when the message carries no Patient.
    pub(super) view: PatientView,
}

/// The ServiceRequest's subject when it is a Patient, else the Bundle's first Patient.
pub(super) fn read_patient<'a>(
    bundle: &Bundle<'a>,
    service_request: &ServiceRequest<'_, 'a>,
    problems: &mut Vec<String>,
) -> Patient {
    let entry = service_request
        .view
        .subject
        .as_deref()
        .and_then(|r| bundle.resolve(r, service_request.entry.as_deref()))
        .filter(|e| e.kind == "Patient")
        .or_else(|| bundle.first("Patient").map(Cow::Borrowed));
    if let Some(entry) = &entry {
        conform(Kind::Patient, entry, problems);
    }
    Patient {
        carried: entry.is_some(),
        view: entry
            .as_ref()
            .map(|e| patient_view(&e.resource))
            .unwrap_or_default(),
    }
}

/// The referrer, when the message names one, and what was read of them.
pub(super) struct Referrer {
    pub(super) carried: bool,
    /// Empty when the message names no referrer.
    pub(super) view: ReferrerView,
}

/// The first resolvable of the ServiceRequest's requester and the MessageHeader's sender.
pub(super) fn read_referrer<'a>(
    bundle: &Bundle<'a>,
    header: &Header<'_, 'a>,
    service_request: &ServiceRequest<'_, 'a>,
    problems: &mut Vec<String>,
) -> Referrer {
    let entry = service_request
        .view
        .requester
        .iter()
        .filter_map(|r| bundle.resolve(r, service_request.entry.as_deref()))
        .chain(
            header
                .view
                .sender
                .iter()
                .filter_map(|r| bundle.resolve(r, Some(header.entry))),
        )
        .next();
    Referrer {
        carried: entry.is_some(),
        view: entry
            .as_ref()
            .map(|e| referrer(bundle, e, problems))
            .unwrap_or_default(),
    }
}
