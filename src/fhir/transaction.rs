//! What a FHIR destination is sent for one stored version: a FHIR R4 `transaction` Bundle
//! (<https://hl7.org/fhir/R4/http.html#transaction>) that writes the referral's Patient,
//! ServiceRequest, Task and Appointment (each when the version holds one) and a
//! DocumentReference per fetched document, each by a conditional update keyed by an identifier
//! (`PUT Type?identifier=system|value`, <https://hl7.org/fhir/R4/http.html#cond-update>), so a
//! resend or a later version updates what an earlier one wrote instead of duplicating it:
//!
//! - ServiceRequest, Task and Appointment: the referral reference (Ocean's `id-ereferral-reference`
//!   identifier). A referral's later Appointment therefore replaces its earlier one.
//! - Patient: the health card number (an identifier of type `JHN`, or the Ontario HCN system),
//!   else the MRN (`id-external-patient-reference`), else `urn:referral-relay:referral-patient`
//!   and the referral reference.
//! - DocumentReference: `urn:referral-relay:document` and `<referral>/<SHA-256 of the bytes>`;
//!   its bytes inline (`attachment.data`) up to a size, else in a Binary written to the
//!   content-addressed id `rr-<first 40 hex digits of the SHA-256>`.
//!
//! Ocean's resources are copied without their `id` (the server assigns its own) and with
//! `meta` cut to `profile`, `security` and `tag`. References between the resources sent point to
//! their entries' `fullUrl`s, which the server resolves; references to resources that are not
//! sent (practitioners, locations, the eForm) become logical references: the target's first
//! identifier, its type and a display.

use serde_json::{Map, Value, json};

/// Ocean's referral reference identifier system ends with this.
const REFERRAL_SYSTEM_SUFFIX: &str = "/id-ereferral-reference";
/// Ontario's health card number system.
const HCN_SYSTEM: &str = "https://fhir.infoway-inforoute.ca/NamingSystem/ca-on-patient-hcn";
/// The Patient's key when it carries neither a health card number nor an MRN.
pub const PATIENT_OF_REFERRAL_SYSTEM: &str = "urn:referral-relay:referral-patient";
/// The DocumentReference's key system.
pub const DOCUMENT_SYSTEM: &str = "urn:referral-relay:document";
/// Used when the message names no referral reference system of Ocean's.
const FALLBACK_REFERRAL_SYSTEM: &str = "urn:referral-relay:id-ereferral-reference";

/// A fetched document of the version.
pub struct Document {
    pub title: Option<String>,
    pub content_type: Option<String>,
    /// SHA-256 of `bytes`, lowercase hex.
    pub sha256: String,
    pub bytes: bytes::Bytes,
    /// The referral letter (else an attachment).
    pub letter: bool,
}

/// Why no transaction can be made of a version.
#[derive(Debug, thiserror::Error)]
pub enum TransactionError {
    #[error("the stored message is not a JSON Bundle")]
    NotJson,
    #[error("the message holds no Patient, ServiceRequest, Task or Appointment to send")]
    Empty,
}

/// One resource of the message, and the names it goes by there.
struct Source<'a> {
    resource: &'a Value,
    kind: &'a str,
    /// `fullUrl` (a bare UUID also as `urn:uuid:`), `Type/id`, and the absolute `.../Type/id`.
    names: Vec<String>,
}

/// A resource being sent: its entry's `fullUrl` and the message resource it is a copy of.
struct Sent<'a> {
    full_url: String,
    resource: &'a Value,
}

/// The transaction for the message `bundle` (as stored) of `referral`, with `documents`: those
/// up to `inline_max` bytes inline, larger ones as Binary resources.
///
/// # Errors
/// [`TransactionError`] when the message is not JSON or holds nothing to send.
pub fn transaction(
    bundle: &[u8],
    referral: &str,
    documents: &[Document],
    inline_max: u64,
) -> Result<Transaction, TransactionError> {
    // Stored as received: a byte order mark, or bytes that are not UTF-8 (kept replaced), as
    // the webhook read them.
    let text = String::from_utf8_lossy(bundle);
    let message: Value = serde_json::from_str(text.trim_start_matches('\u{feff}'))
        .map_err(|_| TransactionError::NotJson)?;
    let sources = sources(&message);
    let header = sources.iter().find(|s| s.kind == "MessageHeader");
    let find = |reference: Option<&str>, kind: &str| {
        reference
            .and_then(|r| resolve(&sources, r))
            .filter(|s| s.kind == kind)
            .or_else(|| sources.iter().find(|s| s.kind == kind))
    };
    let focus = header.and_then(|h| h.resource["focus"][0]["reference"].as_str());
    let request = find(focus, "ServiceRequest");
    let subject = request.and_then(|r| r.resource["subject"]["reference"].as_str());
    let patient = find(subject, "Patient");
    let task = find(None, "Task");
    let appointment = find(None, "Appointment");
    let referral_key = json!({"system": referral_system(&message), "value": referral});

    let mut chosen: Vec<(&Source, Value)> = Vec::new();
    let patient_token = patient.map(|p| {
        let key = patient_key(p.resource, referral);
        let token = search_token(&key);
        chosen.push((p, key));
        token
    });
    for source in [request, task, appointment].into_iter().flatten() {
        chosen.push((source, referral_key.clone()));
    }
    if chosen.is_empty() {
        return Err(TransactionError::Empty);
    }
    let sent: Vec<Sent> = chosen
        .iter()
        .map(|(source, _)| Sent {
            full_url: new_full_url(),
            resource: source.resource,
        })
        .collect();
    let mut entries = Vec::new();
    for ((source, key), this) in chosen.iter().zip(&sent) {
        let mut resource = copied(source.resource);
        add_identifier(&mut resource, key);
        rewrite_references(&mut resource, &sources, &sent);
        entries.push(if source.kind == "Patient" {
            conditional_create(&this.full_url, key, resource)
        } else {
            conditional_entry(&this.full_url, source.kind, key, resource)
        });
    }
    let full_url_of = |source: Option<&Source>| {
        let source = source?;
        sent.iter()
            .find(|s| std::ptr::eq(s.resource, source.resource))
            .map(|s| json!({"reference": s.full_url}))
    };
    let patient_reference = full_url_of(patient);
    let request_reference = full_url_of(request);
    // The same bytes twice (a letter also attached) would write one key twice, which fails
    // the whole transaction: each is sent once.
    let mut seen = std::collections::HashSet::new();
    for document in documents.iter().filter(|d| seen.insert(&d.sha256)) {
        entries.extend(document_entries(
            document,
            referral,
            inline_max,
            patient_reference.as_ref(),
            request_reference.as_ref(),
        ));
    }
    Ok(Transaction {
        bundle: json!({"resourceType": "Bundle", "type": "transaction", "entry": entries}),
        patient: patient_token,
    })
}

/// A version's transaction.
pub struct Transaction {
    pub bundle: Value,
    /// The Patient's key (`system|value`, escaped), when it holds one: sends for one patient
    /// go one at a time, so two referrals of a new patient do not both create it.
    pub patient: Option<String>,
}

/// Every resource of the message with the names references may use for it.
fn sources(message: &Value) -> Vec<Source<'_>> {
    let mut sources = Vec::new();
    for entry in message["entry"].as_array().into_iter().flatten() {
        let resource = &entry["resource"];
        let Some(kind) = resource["resourceType"].as_str() else {
            continue;
        };
        let mut names = Vec::new();
        if let Some(full_url) = entry["fullUrl"].as_str().filter(|u| !u.is_empty()) {
            names.push(full_url.to_owned());
            if !full_url.contains(':') {
                names.push(format!("urn:uuid:{full_url}"));
            }
        }
        if let Some(id) = resource["id"].as_str().filter(|i| !i.is_empty()) {
            names.push(format!("{kind}/{id}"));
        }
        // An absolute `fullUrl` (`https://host/fhir/Type/id`) is also named `Type/id`.
        if let Some(full_url) = entry["fullUrl"].as_str().filter(|u| u.contains("://")) {
            let mut tail = full_url.trim_end_matches('/').rsplit('/');
            if let (Some(id), Some(named)) = (tail.next(), tail.next())
                && named == kind
            {
                names.push(format!("{kind}/{id}"));
            }
        }
        sources.push(Source {
            resource,
            kind,
            names,
        });
    }
    sources
}

/// The message resource `reference` names: by a name exactly, or an absolute URL ending in
/// `/Type/id`.
fn resolve<'s, 'a>(sources: &'s [Source<'a>], reference: &str) -> Option<&'s Source<'a>> {
    // A versioned reference (`Type/id/_history/n`) names the resource.
    let reference = reference
        .split_once("/_history/")
        .map_or(reference, |(resource, _)| resource);
    sources.iter().find(|s| {
        s.names.iter().any(|name| {
            name == reference
                || (reference.contains("://")
                    && name.contains('/')
                    && !name.contains(':')
                    && reference.ends_with(&format!("/{name}")))
        })
    })
}

/// The system of Ocean's referral reference: from any identifier or extension of the message
/// that uses it, else from the sender's endpoint (`{host}/svc/fhir/v1/...`).
fn referral_system(message: &Value) -> String {
    fn find(value: &Value) -> Option<&str> {
        match value {
            Value::Object(fields) => fields
                .get("system")
                .and_then(Value::as_str)
                .filter(|s| s.ends_with(REFERRAL_SYSTEM_SUFFIX))
                .or_else(|| fields.values().find_map(find)),
            Value::Array(items) => items.iter().find_map(find),
            _ => None,
        }
    }
    if let Some(system) = find(message) {
        return system.to_owned();
    }
    message["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["resource"]["source"]["endpoint"].as_str())
        .find_map(|endpoint| {
            let base = endpoint.split("/svc/fhir/v1").next()?;
            (base.len() < endpoint.len())
                .then(|| format!("{base}/svc/fhir/v1/NamingSystem{REFERRAL_SYSTEM_SUFFIX}"))
        })
        .unwrap_or_else(|| FALLBACK_REFERRAL_SYSTEM.to_owned())
}

/// The Patient's health card number: its first identifier with a system and a value whose
/// system is Ontario's health card system or whose type is `JHN`.
pub(super) fn health_card(patient: &Value) -> Option<&Value> {
    let identifiers = patient["identifier"].as_array().into_iter().flatten();
    let usable = |i: &&Value| i["system"].is_string() && i["value"].is_string();
    let is_hcn = |i: &&Value| {
        i["system"] == HCN_SYSTEM
            || i["type"]["coding"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["code"] == "JHN"))
    };
    identifiers.filter(usable).find(is_hcn)
}

/// The identifier a Patient is keyed by (see the module's documentation).
fn patient_key(patient: &Value, referral: &str) -> Value {
    match health_card(patient) {
        Some(i) => json!({"system": i["system"], "value": i["value"]}),
        None => json!({"system": PATIENT_OF_REFERRAL_SYSTEM, "value": referral}),
    }
}

/// `resource` without its `id` and with `meta` cut to its security labels and tags.
fn copied(resource: &Value) -> Value {
    let mut resource = resource.clone();
    if let Some(fields) = resource.as_object_mut() {
        fields.remove("id");
        if let Some(Value::Object(meta)) = fields.get_mut("meta") {
            meta.retain(|k, _| matches!(k.as_str(), "security" | "tag"));
            if meta.is_empty() {
                fields.remove("meta");
            }
        }
    }
    resource
}

/// Adds `key` to `resource.identifier[]` unless an identifier with its system and value is
/// there.
fn add_identifier(resource: &mut Value, key: &Value) {
    let Some(fields) = resource.as_object_mut() else {
        return;
    };
    let identifiers = fields
        .entry("identifier")
        .or_insert_with(|| Value::Array(Vec::new()));
    if !identifiers.is_array() {
        *identifiers = Value::Array(Vec::new());
    }
    let list = identifiers.as_array_mut().expect("made an array above");
    if !list
        .iter()
        .any(|i| i["system"] == key["system"] && i["value"] == key["value"])
    {
        list.push(key.clone());
    }
}

/// Points each `Reference` in `value` at a sent entry's `fullUrl`, or makes it a logical
/// reference when its target is not sent. Local (`#...`) references are left alone.
fn rewrite_references(value: &mut Value, sources: &[Source], sent: &[Sent]) {
    match value {
        Value::Object(fields) => {
            if let Some(reference) = fields.get("reference").and_then(Value::as_str) {
                if !reference.starts_with('#') {
                    let target = resolve(sources, reference);
                    let to_sent = target
                        .and_then(|t| sent.iter().find(|s| std::ptr::eq(s.resource, t.resource)));
                    match to_sent {
                        Some(s) => {
                            fields.insert("reference".into(), Value::String(s.full_url.clone()));
                        }
                        None => make_logical(fields, target),
                    }
                }
                return;
            }
            for child in fields.values_mut() {
                rewrite_references(child, sources, sent);
            }
        }
        Value::Array(items) => {
            for item in items {
                rewrite_references(item, sources, sent);
            }
        }
        _ => {}
    }
}

/// A reference to a resource that is not sent, as its identifier, type and a display.
fn make_logical(reference: &mut Map<String, Value>, target: Option<&Source>) {
    reference.remove("reference");
    let Some(target) = target else {
        if !reference.contains_key("display") && !reference.contains_key("identifier") {
            reference.insert("display".into(), "(not sent)".into());
        }
        return;
    };
    reference.insert("type".into(), target.kind.into());
    if !reference.contains_key("identifier")
        && let Some(identifier) = target.resource["identifier"]
            .as_array()
            .and_then(|i| i.first())
    {
        reference.insert("identifier".into(), identifier.clone());
    }
    if !reference.contains_key("display") {
        let display = display_of(target.resource).unwrap_or_else(|| target.kind.to_owned());
        reference.insert("display".into(), display.into());
    }
}

/// A readable name of a resource: `name` as text (or given and family names), or
/// `description`.
fn display_of(resource: &Value) -> Option<String> {
    let name = match &resource["name"] {
        Value::String(s) => Some(s.clone()),
        Value::Array(names) => names.first().and_then(|n| {
            n["text"].as_str().map(str::to_owned).or_else(|| {
                let given = n["given"].as_array().into_iter().flatten();
                let parts: Vec<&str> = given
                    .chain(std::iter::once(&n["family"]))
                    .filter_map(Value::as_str)
                    .collect();
                (!parts.is_empty()).then(|| parts.join(" "))
            })
        }),
        _ => None,
    };
    name.or_else(|| resource["description"].as_str().map(str::to_owned))
        .filter(|s| !s.trim().is_empty())
}

/// `system|value` of identifier `key` as a search token, each part escaped (FHIR search
/// §3.1.1.1.1: `\`, `,`, `$` and `|` are preceded by `\`).
fn search_token(key: &Value) -> String {
    let escape = |part: &Value| {
        let mut escaped = String::new();
        for c in part.as_str().unwrap_or_default().chars() {
            if matches!(c, '\\' | ',' | '$' | '|') {
                escaped.push('\\');
            }
            escaped.push(c);
        }
        escaped
    };
    format!("{}|{}", escape(&key["system"]), escape(&key["value"]))
}

/// `identifier=<token>`, form-encoded for a URL's query.
fn identifier_query(key: &Value) -> String {
    serde_urlencoded::to_string([("identifier", search_token(key))]).unwrap_or_default()
}

/// `PUT Type?identifier=system|value` of `resource` under `full_url`.
fn conditional_entry(full_url: &str, kind: &str, key: &Value, resource: Value) -> Value {
    json!({
        "fullUrl": full_url,
        "resource": resource,
        "request": {"method": "PUT", "url": format!("{kind}?{}", identifier_query(key))},
    })
}

/// `POST Patient` unless one with identifier `key` exists (`ifNoneExist`), under `full_url`:
/// references to `full_url` then name the one that exists.
fn conditional_create(full_url: &str, key: &Value, resource: Value) -> Value {
    json!({
        "fullUrl": full_url,
        "resource": resource,
        "request": {"method": "POST", "url": "Patient", "ifNoneExist": identifier_query(key)},
    })
}

/// The DocumentReference of `document` (and its Binary when it is larger than `inline_max`).
fn document_entries(
    document: &Document,
    referral: &str,
    inline_max: u64,
    patient: Option<&Value>,
    request: Option<&Value>,
) -> Vec<Value> {
    use base64::Engine;
    let data = base64::engine::general_purpose::STANDARD.encode(&document.bytes);
    let content_type = document
        .content_type
        .clone()
        .unwrap_or_else(|| "application/octet-stream".into());
    let mut entries = Vec::new();
    let reference_url = new_full_url();
    let mut attachment = json!({
        "contentType": content_type,
        "size": document.bytes.len(),
    });
    if let Some(title) = &document.title {
        attachment["title"] = title.clone().into();
    }
    if document.bytes.len() as u64 <= inline_max {
        attachment["data"] = data.into();
    } else {
        // The same referral's same bytes land once, whichever version sends them.
        let named = crate::store::sha256_hex(format!("{referral}/{}", document.sha256).as_bytes());
        let id = format!("rr-{}", &named[..40]);
        attachment["url"] = format!("Binary/{id}").into();
        entries.push(json!({
            "fullUrl": new_full_url(),
            "resource": {
                "resourceType": "Binary",
                "id": id,
                "contentType": content_type,
                "securityContext": {"reference": reference_url},
                "data": data,
            },
            "request": {"method": "PUT", "url": format!("Binary/{id}")},
        }));
    }
    let named = if document.letter {
        format!("{referral}/letter")
    } else {
        format!("{referral}/{}", document.sha256)
    };
    let key = json!({"system": DOCUMENT_SYSTEM, "value": named});
    let mut resource = json!({
        "resourceType": "DocumentReference",
        "identifier": [key.clone()],
        "status": "current",
        "content": [{"attachment": attachment}],
    });
    if document.letter {
        // LOINC 57133-1: Referral note.
        resource["type"] = json!({"coding": [{"system": "http://loinc.org", "code": "57133-1", "display": "Referral note"}]});
    }
    if let Some(title) = &document.title {
        resource["description"] = title.clone().into();
    }
    if let Some(patient) = patient {
        resource["subject"] = patient.clone();
    }
    if let Some(request) = request {
        resource["context"] = json!({"related": [request]});
    }
    entries.push(conditional_entry(
        &reference_url,
        "DocumentReference",
        &key,
        resource,
    ));
    entries
}

fn new_full_url() -> String {
    format!("urn:uuid:{}", uuid::Uuid::new_v4())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!(
            "{}/fhir-fixtures/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    /// The transaction conforms to R4 (through fhir-sdk's types, as everything the relay
    /// writes to Ocean is checked).
    fn conforms(bundle: &Value) {
        if let Err(e) = fhir_check::check_any(&bundle.to_string()) {
            panic!("{e}: {bundle}");
        }
    }

    fn entry<'a>(bundle: &'a Value, kind: &str) -> &'a Value {
        bundle["entry"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["resource"]["resourceType"] == kind)
            .unwrap_or_else(|| panic!("no {kind}"))
    }

    #[test]
    fn a_new_referral_is_written_by_conditional_updates_keyed_by_its_identifiers() {
        let made = transaction(
            &fixture("v0.11-add-service-request.json"),
            "TST-0011-AAAA",
            &[],
            0,
        )
        .unwrap();
        let bundle = made.bundle;
        conforms(&bundle);
        assert_eq!(bundle["type"], "transaction");
        assert_eq!(
            made.patient.as_deref(),
            Some("https://fhir.infoway-inforoute.ca/NamingSystem/ca-on-patient-hcn|9999999999")
        );
        let kinds: Vec<&str> = bundle["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["resource"]["resourceType"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["Patient", "ServiceRequest"]);
        let patient = entry(&bundle, "Patient");
        // Created only when the server holds no such patient; never overwritten.
        assert_eq!(patient["request"]["method"], "POST");
        assert_eq!(
            patient["request"]["ifNoneExist"],
            "identifier=https%3A%2F%2Ffhir.infoway-inforoute.ca%2FNamingSystem%2Fca-on-patient-hcn%7C9999999999"
        );
        let request = entry(&bundle, "ServiceRequest");
        assert_eq!(request["request"]["method"], "PUT");
        assert_eq!(
            request["request"]["url"],
            "ServiceRequest?identifier=https%3A%2F%2Ftest.cognisantmd.com%2Fsvc%2Ffhir%2Fv1%2FNamingSystem%2Fid-ereferral-reference%7CTST-0011-AAAA"
        );
        // The subject points at the Patient entry; the requester (not sent) is logical.
        assert_eq!(
            request["resource"]["subject"]["reference"],
            patient["fullUrl"]
        );
        let requester = &request["resource"]["requester"];
        assert!(requester.get("reference").is_none(), "{requester}");
        assert_eq!(requester["type"], "PractitionerRole");
        assert!(requester["identifier"]["value"].is_string(), "{requester}");
        assert!(request["resource"].get("id").is_none());
        assert!(request["resource"]["meta"].get("profile").is_none());
        // No reference is left naming a resource the transaction does not hold.
        let text = bundle.to_string();
        for name in ["7d3e5a90-0001-4000-8000-000000000003", "Practitioner/"] {
            assert!(!text.contains(name), "{name} in {text}");
        }
    }

    #[test]
    fn a_v010_message_with_ids_and_an_update_with_a_task_are_resolved_the_same_way() {
        let bundle = transaction(
            &fixture("v0.10-add-service-request.json"),
            "TST-0010-BBBB",
            &[],
            0,
        )
        .unwrap()
        .bundle;
        let patient = entry(&bundle, "Patient");
        assert_eq!(
            entry(&bundle, "ServiceRequest")["resource"]["subject"]["reference"],
            patient["fullUrl"]
        );
        let bundle = transaction(
            &fixture("update-task-accepted.json"),
            "TST-0011-AAAA",
            &[],
            0,
        )
        .unwrap()
        .bundle;
        conforms(&bundle);
        let task = entry(&bundle, "Task");
        assert!(
            task["request"]["url"]
                .as_str()
                .unwrap()
                .starts_with("Task?identifier=https%3A%2F%2Ftest.cognisantmd.com"),
            "{task}"
        );
        let request = entry(&bundle, "ServiceRequest")["fullUrl"].clone();
        assert!(
            task["resource"]
                .to_string()
                .contains(request.as_str().unwrap())
        );
    }

    #[test]
    fn documents_go_inline_up_to_the_limit_and_in_a_content_addressed_binary_above_it() {
        let document = |bytes: &'static [u8], sha: &str, letter: bool| Document {
            title: Some("Letter".into()),
            content_type: Some("application/pdf".into()),
            sha256: sha.into(),
            bytes: bytes::Bytes::from_static(bytes),
            letter,
        };
        let small = document(b"%PDF-small", &"a".repeat(64), true);
        let large = document(b"%PDF-large-document", &"b".repeat(64), false);
        // The same bytes again (a letter also attached) go once.
        let again = document(b"%PDF-large-document", &"b".repeat(64), false);
        let bundle = transaction(
            &fixture("v0.11-add-service-request.json"),
            "TST-0011-AAAA",
            &[small, large, again],
            12,
        )
        .unwrap()
        .bundle;
        conforms(&bundle);
        let entries = bundle["entry"].as_array().unwrap();
        let references: Vec<&Value> = entries
            .iter()
            .filter(|e| e["resource"]["resourceType"] == "DocumentReference")
            .collect();
        assert_eq!(references.len(), 2);
        let inline = &references[0]["resource"]["content"][0]["attachment"];
        assert_eq!(inline["data"], "JVBERi1zbWFsbA==");
        let linked = &references[1]["resource"]["content"][0]["attachment"];
        let named =
            crate::store::sha256_hex(format!("TST-0011-AAAA/{}", "b".repeat(64)).as_bytes());
        let binary_id = format!("rr-{}", &named[..40]);
        assert_eq!(linked["url"], format!("Binary/{binary_id}"));
        let binary = entry(&bundle, "Binary");
        assert_eq!(binary["request"]["url"], format!("Binary/{binary_id}"));
        assert_eq!(binary["resource"]["id"], binary_id.as_str());
        assert_eq!(
            binary["resource"]["securityContext"]["reference"],
            references[1]["fullUrl"]
        );
        // The letter is keyed as the referral's letter: a later version's replaces it.
        assert_eq!(
            references[0]["request"]["url"],
            "DocumentReference?identifier=urn%3Areferral-relay%3Adocument%7CTST-0011-AAAA%2Fletter"
        );
        assert_eq!(
            references[1]["request"]["url"],
            format!(
                "DocumentReference?identifier=urn%3Areferral-relay%3Adocument%7CTST-0011-AAAA%2F{}",
                "b".repeat(64)
            )
        );
        assert_eq!(
            references[0]["resource"]["subject"]["reference"],
            entry(&bundle, "Patient")["fullUrl"]
        );
    }

    #[test]
    fn a_patient_without_a_health_number_or_mrn_is_keyed_by_the_referral() {
        let key = patient_key(&json!({"resourceType": "Patient"}), "R-1");
        assert_eq!(key["system"], PATIENT_OF_REFERRAL_SYSTEM);
        let key = patient_key(
            &json!({"identifier": [
                {"system": "https://x.test/svc/fhir/v1/NamingSystem/id-external-patient-reference", "value": "M1"},
                {"system": "https://health.test/jhn", "value": "H1", "type": {"coding": [{"code": "JHN"}]}}
            ]}),
            "R-1",
        );
        assert_eq!(key["value"], "H1");
        // Not by an MRN: its system is shared by every clinic on a host.
        let key = patient_key(
            &json!({"identifier": [
                {"system": "https://x.test/svc/fhir/v1/NamingSystem/id-external-patient-reference", "value": "M1"}
            ]}),
            "R-1",
        );
        assert_eq!(key["system"], PATIENT_OF_REFERRAL_SYSTEM);
        // Search tokens escape what FHIR search reads as syntax.
        assert_eq!(
            search_token(&json!({"system": "urn:a|b", "value": "1,2$3\\4"})),
            "urn:a\\|b|1\\,2\\$3\\\\4"
        );
        assert!(matches!(
            transaction(b"not json", "R-1", &[], 0),
            Err(TransactionError::NotJson)
        ));
        // A byte order mark, and bytes that are not UTF-8, as stored from the webhook.
        let mut marked = "\u{feff}".as_bytes().to_vec();
        marked.extend(fixture("v0.11-add-service-request.json"));
        assert!(transaction(&marked, "R-1", &[], 0).is_ok());
        let text = String::from_utf8(fixture("v0.11-add-service-request.json")).unwrap();
        let broken = text
            .replacen("Reason", "Reas\u{1}on", 1)
            .replace('\u{1}', "\u{fffd}");
        let mut bytes = broken.into_bytes();
        if let Some(at) = bytes.windows(3).position(|w| w == "\u{fffd}".as_bytes()) {
            bytes.splice(at..at + 3, [0xff]);
        }
        assert!(std::str::from_utf8(&bytes).is_err());
        assert!(transaction(&bytes, "R-1", &[], 0).is_ok());
        assert!(matches!(
            transaction(br#"{"resourceType":"Bundle","entry":[]}"#, "R-1", &[], 0),
            Err(TransactionError::Empty)
        ));
    }
}

#[cfg(test)]
mod references {
    use super::*;

    /// A versioned reference, and a relative one to an entry named only by an absolute
    /// `fullUrl`, resolve to the resource sent.
    #[test]
    fn versioned_and_relative_references_reach_the_entry_sent() {
        let message = json!({"resourceType": "Bundle", "type": "message", "entry": [
            {"fullUrl": "https://ocean.test/svc/fhir/v1/Patient/p1",
             "resource": {"resourceType": "Patient"}},
            {"fullUrl": "urn:uuid:00000000-0000-4000-8000-000000000002",
             "resource": {"resourceType": "ServiceRequest", "status": "active", "intent": "order",
                          "subject": {"reference": "Patient/p1/_history/3"}}},
            {"fullUrl": "urn:uuid:00000000-0000-4000-8000-000000000003",
             "resource": {"resourceType": "Task", "status": "requested", "intent": "order",
                          "for": {"reference": "Patient/p1"}}}
        ]});
        let bundle = transaction(message.to_string().as_bytes(), "R-9", &[], 0)
            .unwrap()
            .bundle;
        let entries = bundle["entry"].as_array().unwrap();
        let patient = entries[0]["fullUrl"].clone();
        assert_eq!(entries[1]["resource"]["subject"]["reference"], patient);
        assert_eq!(entries[2]["resource"]["for"]["reference"], patient);
    }
}
