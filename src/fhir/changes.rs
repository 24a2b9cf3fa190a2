//! What one message's resources change from the message before's. Ocean's update messages do
//! not say what changed (its playbook asks receivers to show their users), so the relay compares
//! the two messages resource by resource.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

/// A message's resources (without its MessageHeader, which every message has anew), each under
/// a name that stays the same from one message to the next: `Type/id`; else `Type` and its first
/// identifier; else `Type #n`, the n-th of its type in the message. Ocean's v0.11 messages give
/// resources fresh `urn:uuid:` names every time, so those are blanked before comparing.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Resources(BTreeMap<String, (String, Value)>);

impl Resources {
    /// The resources of a message Bundle as stored (raw JSON bytes); `None` when the bytes are
    /// not a JSON document.
    pub fn of_message(raw: &[u8]) -> Option<Self> {
        serde_json::from_slice::<Value>(raw)
            .ok()
            .map(|bundle| Self::of_bundle(&bundle))
    }

    /// The resources of a parsed message Bundle (entries without a `resourceType` are skipped).
    pub fn of_bundle(bundle: &Value) -> Self {
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        let mut named = BTreeMap::new();
        for resource in bundle["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|entry| entry.get("resource"))
        {
            let Some(kind) = resource.get("resourceType").and_then(Value::as_str) else {
                continue;
            };
            if kind == "MessageHeader" {
                continue;
            }
            let identifier = resource["identifier"]
                .as_array()
                .and_then(|ids| ids.first())
                .or_else(|| resource.get("identifier").filter(|i| i.is_object()))
                .and_then(|id| id.get("value"))
                .and_then(Value::as_str);
            let name = match (resource.get("id").and_then(Value::as_str), identifier) {
                (Some(id), _) if !id.is_empty() => format!("{kind}/{id}"),
                (_, Some(value)) => format!("{kind} {value}"),
                _ => {
                    let n = seen.entry(kind.to_owned()).or_default();
                    *n += 1;
                    format!("{kind} #{n}")
                }
            };
            named.insert(name, (kind.to_owned(), without_message_names(resource)));
        }
        Self(named)
    }
}

/// `value` with every `urn:uuid:` string blanked (names local to one message).
fn without_message_names(value: &Value) -> Value {
    match value {
        Value::String(s) if s.starts_with("urn:uuid:") => Value::String("urn:uuid:".into()),
        Value::Array(items) => Value::Array(items.iter().map(without_message_names).collect()),
        Value::Object(fields) => Value::Object(
            fields
                .iter()
                .map(|(k, v)| (k.clone(), without_message_names(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// How a resource differs between two messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ResourceChangeKind {
    /// In this message, not in the one before.
    Added,
    /// In the message before, not in this one. Ocean's updates carry only part of the referral,
    /// so this means "not carried this time", not "deleted".
    Removed,
    /// In both, with different content.
    Changed,
}

/// One resource added, removed or changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ResourceChange {
    pub change: ResourceChangeKind,
    /// Its `resourceType`.
    pub resource_type: String,
    /// The name it is compared under: `Type/id`, `Type <first identifier>` or `Type #n`.
    pub name: String,
    /// For a changed resource, its top-level elements that differ (e.g. `status`), in
    /// alphabetical order.
    pub elements: Vec<String>,
}

/// The resources `now` adds, changes and no longer carries compared with `before`: added and
/// changed in name order, then removed.
pub fn resource_changes(before: &Resources, now: &Resources) -> Vec<ResourceChange> {
    let mut changes = Vec::new();
    for (name, (kind, resource)) in &now.0 {
        let change = |change, elements| ResourceChange {
            change,
            resource_type: kind.clone(),
            name: name.clone(),
            elements,
        };
        match before.0.get(name) {
            None => changes.push(change(ResourceChangeKind::Added, Vec::new())),
            Some((_, old)) if old != resource => {
                changes.push(change(ResourceChangeKind::Changed, elements(old, resource)));
            }
            Some(_) => {}
        }
    }
    changes.extend(
        before
            .0
            .iter()
            .filter(|(name, _)| !now.0.contains_key(*name))
            .map(|(name, (kind, _))| ResourceChange {
                change: ResourceChangeKind::Removed,
                resource_type: kind.clone(),
                name: name.clone(),
                elements: Vec::new(),
            }),
    );
    changes
}

/// The top-level elements whose values differ between two versions of a resource.
fn elements(before: &Value, now: &Value) -> Vec<String> {
    let empty = serde_json::Map::new();
    let (old, new) = (
        before.as_object().unwrap_or(&empty),
        now.as_object().unwrap_or(&empty),
    );
    let mut names: Vec<String> = old
        .keys()
        .chain(new.keys())
        .filter(|k| old.get(*k) != new.get(*k))
        .cloned()
        .collect();
    names.sort();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bundle(entries: Value) -> Value {
        json!({ "resourceType": "Bundle", "type": "message", "entry": entries })
    }

    #[test]
    fn resources_compare_by_lasting_names_not_message_local_ones() {
        let before = Resources::of_bundle(&bundle(json!([
            { "fullUrl": "urn:uuid:1", "resource": { "resourceType": "MessageHeader" } },
            { "fullUrl": "urn:uuid:2", "resource": { "resourceType": "ServiceRequest",
                "identifier": [{ "value": "REF-1" }], "status": "active",
                "subject": { "reference": "urn:uuid:3" } } },
            { "fullUrl": "urn:uuid:3", "resource": { "resourceType": "Patient", "gender": "female" } },
            { "fullUrl": "urn:uuid:4", "resource": { "resourceType": "QuestionnaireResponse" } },
        ])));
        let after = Resources::of_bundle(&bundle(json!([
            { "fullUrl": "urn:uuid:9", "resource": { "resourceType": "MessageHeader" } },
            { "fullUrl": "urn:uuid:8", "resource": { "resourceType": "ServiceRequest",
                "identifier": [{ "value": "REF-1" }], "status": "revoked",
                "subject": { "reference": "urn:uuid:7" } } },
            { "fullUrl": "urn:uuid:7", "resource": { "resourceType": "Patient", "gender": "female" } },
            { "resource": { "resourceType": "Task", "id": "t-1" } },
        ])));
        let changes = resource_changes(&before, &after);
        let named: Vec<(ResourceChangeKind, &str, &[String])> = changes
            .iter()
            .map(|c| (c.change, c.name.as_str(), c.elements.as_slice()))
            .collect();
        assert_eq!(
            named,
            [
                (
                    ResourceChangeKind::Changed,
                    "ServiceRequest REF-1",
                    &["status".to_owned()][..]
                ),
                (ResourceChangeKind::Added, "Task/t-1", &[][..]),
                (
                    ResourceChangeKind::Removed,
                    "QuestionnaireResponse #1",
                    &[][..]
                ),
            ]
        );
        assert_eq!(changes[1].resource_type, "Task");
        assert!(resource_changes(&after, &after).is_empty());
        assert_eq!(Resources::of_message(b"not json"), None);
    }
}
