//! FHIR R4 conformance checks for referral-relay, through fhir-sdk's typed R4B models (identical
//! to R4 on the wire for the resources the relay reads and writes).
//!
//! Why a crate of its own: reading any FHIR resource with serde compiles a reader for every one
//! of R4's ~145 resource types (each resource may hold any other in `contained`), which is most
//! of what it costs to build the relay. Here that code is compiled once, behind functions that
//! take JSON text, so the relay itself compiles none of it, it is rebuilt only when this crate
//! changes, and its optimisation level can be set on its own (see the workspace `Cargo.toml`).
//!
//! Errors are serde's messages naming the element and the rule broken; they may quote values
//! from the payload, so callers redact quoted text before keeping or logging them.

use std::str::FromStr;

use fhir_sdk::r4b::codes::TaskStatus;
use fhir_sdk::r4b::resources::{
    Appointment, CapabilityStatement, Communication, MessageHeader, OperationOutcome, Patient,
    PractitionerRole, Resource, ServiceRequest, Task,
};

/// A resource that does not conform, and why.
pub type Error = serde_json::Error;

/// The resource types the relay reads from Ocean's messages or writes to Ocean and its callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    MessageHeader,
    ServiceRequest,
    Patient,
    PractitionerRole,
    Task,
    Appointment,
    Communication,
    OperationOutcome,
    CapabilityStatement,
}

impl Kind {
    /// The kind whose `resourceType` is `name`, if the relay checks it.
    pub fn from_resource_type(name: &str) -> Option<Self> {
        Some(match name {
            "MessageHeader" => Self::MessageHeader,
            "ServiceRequest" => Self::ServiceRequest,
            "Patient" => Self::Patient,
            "PractitionerRole" => Self::PractitionerRole,
            "Task" => Self::Task,
            "Appointment" => Self::Appointment,
            "Communication" => Self::Communication,
            "OperationOutcome" => Self::OperationOutcome,
            "CapabilityStatement" => Self::CapabilityStatement,
            _ => return None,
        })
    }
}

/// Checks `json`, one resource as JSON text, against the R4B type of `kind`: every required
/// element present, every element of its type, every code from its required value set.
///
/// # Errors
/// The first element that does not conform.
pub fn check(kind: Kind, json: &str) -> Result<(), Error> {
    use serde_json::from_str;
    match kind {
        Kind::MessageHeader => from_str::<MessageHeader>(json).map(drop),
        Kind::ServiceRequest => from_str::<ServiceRequest>(json).map(drop),
        Kind::Patient => from_str::<Patient>(json).map(drop),
        Kind::PractitionerRole => from_str::<PractitionerRole>(json).map(drop),
        Kind::Task => from_str::<Task>(json).map(drop),
        Kind::Appointment => from_str::<Appointment>(json).map(drop),
        Kind::Communication => from_str::<Communication>(json).map(drop),
        Kind::OperationOutcome => from_str::<OperationOutcome>(json).map(drop),
        Kind::CapabilityStatement => from_str::<CapabilityStatement>(json).map(drop),
    }
}

/// Checks `json`, any R4 resource (a Bundle too), against the type its `resourceType` names.
/// Slower than [`check`]: the resource is buffered once to find its type.
///
/// # Errors
/// An unknown `resourceType`, or the first element that does not conform.
pub fn check_any(json: &str) -> Result<(), Error> {
    serde_json::from_str::<Resource>(json).map(drop)
}

/// Whether `code` is one of R4's Task statuses (`http://hl7.org/fhir/task-status`).
pub fn is_task_status(code: &str) -> bool {
    TaskStatus::from_str(code).is_ok()
}
