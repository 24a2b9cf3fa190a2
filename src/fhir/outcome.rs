//! FHIR answers the webhook gives: OperationOutcome for errors and notes, and the response
//! message Bundle that acknowledges a processed message.

use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// `OperationOutcome.issue.severity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Information,
}

/// `OperationOutcome.issue.code` values the relay uses (from the R4 `issue-type` value set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueCode {
    /// The content is not valid (unreadable JSON, not a message Bundle).
    Invalid,
    /// A required element is missing.
    Required,
    /// Authentication failed.
    Login,
    /// Authenticated, but not allowed.
    Forbidden,
    /// The resource or integration was not found.
    NotFound,
    /// Not allowed in the resource's current state.
    Conflict,
    /// The request took too long.
    Timeout,
    /// Content too long.
    TooLong,
    /// The store or another dependency is unavailable.
    Transient,
    /// An unexpected internal error.
    Exception,
    /// Informational: the message was accepted.
    Informational,
    /// The request is not supported (wrong media type, method).
    NotSupported,
}

impl IssueCode {
    fn as_str(self) -> &'static str {
        match self {
            Self::Invalid => "invalid",
            Self::Required => "required",
            Self::Login => "login",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not-found",
            Self::Conflict => "conflict",
            Self::TooLong => "too-long",
            Self::Timeout => "timeout",
            Self::Transient => "transient",
            Self::Exception => "exception",
            Self::Informational => "informational",
            Self::NotSupported => "not-supported",
        }
    }
}

/// An OperationOutcome with one issue whose `diagnostics` carries `message`.
pub fn operation_outcome(severity: Severity, code: IssueCode, message: &str) -> Value {
    let severity = match severity {
        Severity::Error => "error",
        Severity::Information => "information",
    };
    json!({
        "resourceType": "OperationOutcome",
        "issue": [{
            "severity": severity,
            "code": code.as_str(),
            "diagnostics": message,
        }]
    })
}

/// The response message Bundle for a processed request message: a MessageHeader whose
/// `response.identifier` is the request's MessageHeader id and `response.code` is `ok`, plus an
/// OperationOutcome entry when there is something to say. Without a request id (a MessageHeader
/// with neither id nor fullUrl) there is nothing to answer to, and `response` is left out rather
/// than invented.
pub fn response_bundle(
    request_header_id: Option<&str>,
    event_code: &str,
    endpoint: &str,
    note: Option<&str>,
) -> Value {
    let header_id = uuid::Uuid::new_v4();
    let outcome_id = uuid::Uuid::new_v4();
    let now = OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into());
    let mut header = json!({
        "resourceType": "MessageHeader",
        "id": header_id.to_string(),
        "eventCoding": {
            "system": crate::ig::EVENT_SYSTEM,
            "code": event_code,
        },
        "source": {"name": "referral-relay", "software": "referral-relay",
                   "version": env!("CARGO_PKG_VERSION"), "endpoint": endpoint},
    });
    if let Some(id) = request_header_id {
        header["response"] = json!({"identifier": id, "code": "ok"});
    }
    let mut entries = vec![json!({
        "fullUrl": format!("urn:uuid:{header_id}"),
        "resource": header.clone(),
    })];
    if let Some(note) = note {
        let mut outcome = operation_outcome(Severity::Information, IssueCode::Informational, note);
        outcome["id"] = json!(outcome_id.to_string());
        if request_header_id.is_some() {
            header["response"]["details"] = json!({"reference": format!("urn:uuid:{outcome_id}")});
        }
        entries[0]["resource"] = header;
        entries.push(json!({
            "fullUrl": format!("urn:uuid:{outcome_id}"),
            "resource": outcome,
        }));
    }
    json!({
        "resourceType": "Bundle",
        "id": uuid::Uuid::new_v4().to_string(),
        "type": "message",
        "timestamp": now,
        "entry": entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use fhir_check::{Kind, check};

    #[test]
    fn outcomes_and_responses_are_valid_fhir() {
        let o = operation_outcome(Severity::Error, IssueCode::Invalid, "bad");
        check(Kind::OperationOutcome, &o.to_string()).unwrap();
        assert_eq!(o["issue"].as_array().unwrap().len(), 1);

        let r = response_bundle(
            Some("mh-1"),
            "add-service-request",
            "https://relay/fhir/x",
            Some("n"),
        );
        fhir_check::check_any(&r.to_string()).unwrap();
        assert_eq!(r["type"], "message");
        assert_eq!(r["entry"].as_array().unwrap().len(), 2);
        assert_eq!(r["entry"][0]["resource"]["response"]["identifier"], "mh-1");
        assert_eq!(r["entry"][0]["resource"]["response"]["code"], "ok");
        assert_eq!(
            r["entry"][0]["resource"]["response"]["details"]["reference"],
            r["entry"][1]["fullUrl"]
        );
    }
}
