//! A message Bundle as the reader sees it: its entries, and references between them resolved
//! as R4's Bundle rules say (and leniently beyond them).

use std::borrow::Cow;
use std::collections::HashMap;

use serde_json::value::RawValue;

use super::json::{self, Object};
use crate::domain::{is_code_like, redact_quoted};

/// Why a body was refused. The message is safe to return to the sender: it names the problem and
/// a position, never a value from the payload.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    /// Not a JSON document at all (HTTP 400).
    #[error("{0}")]
    Malformed(String),
    /// JSON, but not a message Bundle the relay can file (HTTP 422).
    #[error("{0}")]
    Unusable(String),
}

/// Nesting beyond which a resource is not put through fhir-sdk's types: they recurse with far
/// more stack per level than the lean reader, which has no limit. Real FHIR resources stay well
/// under 30 levels; a deeper one is stored with a problem saying it was not checked.
pub(super) const MAX_CHECKED_DEPTH: usize = 64;

/// The id a MessageHeader's `fullUrl` stands for: the UUID of `urn:uuid:X` or a bare `X`, or
/// the id of a RESTful URL (`.../MessageHeader/id`, with or without `_history`).
pub(super) fn id_of_full_url(url: &str) -> Option<String> {
    let id = match Restful::parse(url) {
        Some(restful) => restful.id,
        None => normalise_uuid(url),
    };
    (!id.trim().is_empty()).then(|| id.to_owned())
}

/// Checks a resource against fhir-sdk's R4B type of `kind` and records what it refuses.
pub(super) fn conform(kind: fhir_check::Kind, entry: &Entry<'_>, problems: &mut Vec<String>) {
    let at = entry.full_url.as_deref().unwrap_or("(no fullUrl)");
    let text = entry.resource.to_json();
    let levels = json::depth(&text);
    if levels > MAX_CHECKED_DEPTH {
        problems.push(format!(
            "{} {at} nests {levels} levels deep, beyond the {MAX_CHECKED_DEPTH} checked against FHIR R4; its fields were read without that check",
            entry.kind
        ));
        return;
    }
    if let Err(e) = fhir_check::check(kind, &text) {
        problems.push(format!(
            "{} {at} does not conform to FHIR R4 ({}); its fields were read leniently",
            entry.kind,
            redact_quoted(&e.to_string())
        ));
    }
}

/// One `Bundle.entry` with a resource.
#[derive(Debug, Clone)]
pub(super) struct Entry<'a> {
    pub(super) full_url: Option<String>,
    pub(super) kind: String,
    /// `meta.versionId`, which a version-specific reference must match.
    pub(super) version_id: Option<String>,
    pub(super) resource: Object<'a>,
    /// Its contained resources by id, read the first time a `#id` reference needs them.
    pub(super) contained: std::cell::OnceCell<HashMap<String, Object<'a>>>,
}

impl<'a> Entry<'a> {
    pub(super) fn new(full_url: Option<String>, kind: String, resource: Object<'a>) -> Self {
        Self {
            full_url,
            version_id: resource.path_text(&["meta", "versionId"]),
            kind,
            resource,
            contained: std::cell::OnceCell::new(),
        }
    }

    /// The contained resource with this id (the first, if several claim it).
    pub(super) fn contained(&self, id: &str) -> Option<&Object<'a>> {
        self.contained
            .get_or_init(|| {
                let mut by_id = HashMap::new();
                for resource in self.resource.objects("contained") {
                    if let Some(id) = resource.text("id") {
                        by_id.entry(id).or_insert(resource);
                    }
                }
                by_id
            })
            .get(id)
    }
}

/// The entries of a message Bundle and an index to resolve references between them.
pub(super) struct Bundle<'a> {
    pub(super) root: Object<'a>,
    pub(super) entries: Vec<Entry<'a>>,
    /// Reference forms → the entries they name, in Bundle order.
    pub(super) index: HashMap<String, Vec<usize>>,
}

impl<'a> Bundle<'a> {
    pub(super) fn parse(text: &'a str) -> Result<Self, ParseError> {
        let not_json = |e: serde_json::Error| {
            ParseError::Malformed(format!("the body is not valid JSON: {e}"))
        };
        let start = text.trim_start_matches([' ', '\t', '\n', '\r']);
        if !start.starts_with('{') {
            // Valid JSON of another kind is a 422; anything else is not JSON (400).
            serde_json::from_str::<&RawValue>(text).map_err(not_json)?;
            let what = match start.as_bytes().first() {
                Some(b'[') => "a JSON array",
                Some(b'"') => "a JSON string",
                Some(b't' | b'f') => "a JSON boolean",
                Some(b'n') => "JSON null",
                _ => "a JSON number",
            };
            return Err(ParseError::Unusable(format!(
                "the body is {what}, not a FHIR Bundle resource"
            )));
        }
        // Every sender's shape is read in one pass; any other shape (or a document that is not
        // JSON, to get the general reader's message) by the general reader.
        let (root, parts) = match Object::parse_bundle(text) {
            Ok(read) => read,
            Err(_) => {
                let root = Object::parse_text(text).map_err(not_json)?;
                let parts = root
                    .objects("entry")
                    .map(|entry| json::EntryParts {
                        full_url: entry.text("fullUrl"),
                        resource: entry.object("resource"),
                    })
                    .collect();
                (root, parts)
            }
        };
        match root.text("resourceType").as_deref() {
            Some("Bundle") => {}
            Some(other) => {
                return Err(ParseError::Unusable(format!(
                    "expected resourceType Bundle, got {}",
                    printable(other)
                )));
            }
            None => {
                return Err(ParseError::Unusable(
                    "the JSON object has no resourceType; expected a FHIR Bundle".into(),
                ));
            }
        }
        match root.text("type").as_deref() {
            Some("message") => {}
            Some(other) => {
                return Err(ParseError::Unusable(format!(
                    "Bundle.type is {}; only message Bundles can be processed",
                    printable(other)
                )));
            }
            None => {
                return Err(ParseError::Unusable(
                    "Bundle.type is missing; expected message".into(),
                ));
            }
        }

        let mut bundle = Self {
            entries: Vec::new(),
            index: HashMap::new(),
            root,
        };
        for json::EntryParts { full_url, resource } in parts {
            let Some(resource) = resource else {
                continue;
            };
            let Some(kind) = resource.text("resourceType") else {
                continue;
            };
            let position = bundle.entries.len();
            let mut keys = Vec::new();
            if let Some(url) = &full_url {
                keys.push(url.clone());
                keys.push(normalise_uuid(url).to_owned());
                if let Some(restful) = Restful::parse(url) {
                    keys.push(restful.unversioned().to_owned());
                    keys.push(restful.tail().to_owned());
                }
            }
            if let Some(id) = resource.text("id") {
                keys.push(format!("{kind}/{id}"));
            }
            keys.sort();
            keys.dedup();
            for key in keys {
                bundle.index.entry(key).or_default().push(position);
            }
            bundle.entries.push(Entry::new(full_url, kind, resource));
        }
        Ok(bundle)
    }

    pub(super) fn first(&self, kind: &str) -> Option<&Entry<'a>> {
        self.entries.iter().find(|e| e.kind == kind)
    }

    /// Resolves a reference made from within `from` as R4's Bundle rules say (3.3.1.4.1), and
    /// leniently beyond them:
    /// - `#id` names a resource contained in `from`;
    /// - a version-specific reference (`.../_history/v`) matches without its version, then
    ///   prefers the entry whose `meta.versionId` is `v`;
    /// - a relative `Type/id` is made absolute against `from`'s RESTful `fullUrl`, then matched
    ///   on its own against `fullUrl` tails and `Type/id` of resource ids;
    /// - `urn:uuid:X` and a bare `X` name the same entry.
    pub(super) fn resolve<'b>(
        &'b self,
        reference: &str,
        from: Option<&Entry<'a>>,
    ) -> Option<Cow<'b, Entry<'a>>> {
        if let Some(fragment) = reference.strip_prefix('#') {
            let from = from?;
            let resource = from.contained(fragment)?.clone();
            let kind = resource.text("resourceType")?;
            return Some(Cow::Owned(Entry::new(
                from.full_url.clone(),
                kind,
                resource,
            )));
        }
        let (unversioned, version) = match Restful::parse(reference) {
            Some(restful) => (restful.unversioned(), restful.version),
            None => (reference, None),
        };
        let mut candidates: Vec<Cow<'_, str>> = Vec::new();
        if let (Some(relative), Some(base)) = (
            Restful::parse(unversioned).filter(|r| r.base.is_empty()),
            from.and_then(|f| f.full_url.as_deref())
                .and_then(Restful::parse)
                .map(|r| r.base),
        ) && !base.is_empty()
        {
            candidates.push(Cow::Owned(format!("{base}{}", relative.tail())));
        }
        candidates.push(Cow::Borrowed(unversioned));
        candidates.push(Cow::Borrowed(normalise_uuid(unversioned)));
        if let Some(restful) = Restful::parse(unversioned) {
            candidates.push(Cow::Borrowed(restful.tail()));
        }
        let found = candidates
            .iter()
            .find_map(|key| self.index.get(key.as_ref()))?;
        let chosen = version
            .and_then(|v| {
                found
                    .iter()
                    .find(|&&i| self.entries[i].version_id.as_deref() == Some(v))
            })
            .or_else(|| found.first())?;
        Some(Cow::Borrowed(&self.entries[*chosen]))
    }
}

/// `urn:uuid:X` and `X` name the same entry; both are indexed and looked up as `X`.
pub(super) fn normalise_uuid(reference: &str) -> &str {
    reference.strip_prefix("urn:uuid:").unwrap_or(reference)
}

/// A RESTful reference or URL, `[base]Type/id[/_history/version]` (R4's RESTful URL form).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Restful<'s> {
    /// Everything before `Type/`, empty for a relative reference (ends with `/` otherwise).
    pub(super) base: &'s str,
    /// `[base]Type/id` as written.
    pub(super) whole: &'s str,
    pub(super) kind: &'s str,
    pub(super) id: &'s str,
    pub(super) version: Option<&'s str>,
}

impl<'s> Restful<'s> {
    pub(super) fn parse(url: &'s str) -> Option<Self> {
        let (whole, version) = match url.rsplit_once("/_history/") {
            Some((head, version)) if !version.is_empty() && !version.contains('/') => {
                (head, Some(version))
            }
            _ => (url, None),
        };
        let (rest, id) = whole.rsplit_once('/')?;
        let kind = rest.rsplit('/').next()?;
        let starts_upper = kind.chars().next().is_some_and(|c| c.is_ascii_uppercase());
        if id.is_empty() || !starts_upper || !kind.chars().all(|c| c.is_ascii_alphanumeric()) {
            return None;
        }
        let base = &whole[..whole.len() - id.len() - kind.len() - 1];
        Some(Self {
            base,
            whole,
            kind,
            id,
            version,
        })
    }

    /// `Type/id`.
    pub(super) fn tail(&self) -> &'s str {
        &self.whole[self.base.len()..]
    }

    /// The reference without its `_history` part.
    pub(super) fn unversioned(&self) -> &'s str {
        self.whole
    }
}

/// Echoes a short sender-chosen token (a resourceType, a Bundle.type) only when it looks like a
/// code, so error messages never carry arbitrary payload text.
fn printable(code: &str) -> String {
    if is_code_like(code) {
        format!("'{code}'")
    } else {
        "an unrecognised value".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restful_references_split_into_their_parts() {
        let r = Restful::parse("https://h/fhir/Patient/p-1/_history/3").unwrap();
        assert_eq!(
            (r.base, r.kind, r.id, r.version, r.tail(), r.unversioned()),
            (
                "https://h/fhir/",
                "Patient",
                "p-1",
                Some("3"),
                "Patient/p-1",
                "https://h/fhir/Patient/p-1"
            )
        );
        let r = Restful::parse("Patient/p-1").unwrap();
        assert_eq!((r.base, r.tail(), r.version), ("", "Patient/p-1", None));
        assert_eq!(Restful::parse("urn:uuid:abc"), None);
        assert_eq!(Restful::parse("p-1"), None);
    }

    /// What `parse` keeps of each entry: `(fullUrl, resourceType, id)`.
    fn entries(text: &str) -> Vec<(Option<String>, String, Option<String>)> {
        Bundle::parse(text)
            .unwrap()
            .entries
            .iter()
            .map(|e| (e.full_url.clone(), e.kind.clone(), e.resource.text("id")))
            .collect()
    }

    fn entry(url: &str, id: &str) -> (Option<String>, String, Option<String>) {
        (Some(url.into()), "Patient".into(), Some(id.into()))
    }

    /// Shapes the one-pass read does not take go to the general reader and come out the same:
    /// entries that are not objects, resources that are not objects, a `fullUrl` that is not a
    /// string, an `entry` that is not an array, repeated names.
    #[test]
    fn every_shape_of_entry_reads_the_same_in_one_pass_or_not() {
        let head = r#"{"resourceType": "Bundle", "type": "message", "#;
        let p = |url: &str, id: &str| {
            format!(
                r#"{{"fullUrl": "{url}", "resource": {{"resourceType": "Patient", "id": "{id}"}}, "request": [1e400]}}"#
            )
        };
        // Every sender's shape: read in one pass.
        let usual = format!(r#"{head}"entry": [{}, {}]}}"#, p("u:1", "a"), p("u:2", "b"));
        assert!(Object::parse_bundle(&usual).is_ok());
        assert_eq!(entries(&usual), vec![entry("u:1", "a"), entry("u:2", "b")]);

        let odd = [
            // A number beyond f64, a string and null among the entries.
            format!(r#"{head}"entry": [1e400, {}, "x", null]}}"#, p("u:1", "a")),
            // A resource that is not an object; a fullUrl that is not a string.
            format!(
                r#"{head}"entry": [{{"resource": "no"}}, {}, {{"fullUrl": 7, "resource": {{"resourceType": "Patient", "id": "b"}}}}]}}"#,
                p("u:1", "a")
            ),
            // `entry` repeated: the last counts, in both readers.
            format!(r#"{head}"entry": 5, "entry": [{}]}}"#, p("u:1", "a")),
        ];
        for text in &odd[..2] {
            assert!(Object::parse_bundle(text).is_err(), "{text}");
        }
        assert_eq!(entries(&odd[0]), vec![entry("u:1", "a")]);
        assert_eq!(
            entries(&odd[1]),
            vec![
                entry("u:1", "a"),
                (None, "Patient".into(), Some("b".into()))
            ]
        );
        assert_eq!(entries(&odd[2]), vec![entry("u:1", "a")]);
        // Not an array at all: no entries (the caller then says there is no MessageHeader).
        assert!(entries(&format!(r#"{head}"entry": {{"a": 1}}}}"#)).is_empty());
        // Not JSON: the general reader's message.
        let Err(ParseError::Malformed(why)) = Bundle::parse(&format!("{head}\"entry\": [")) else {
            panic!("truncated JSON must be refused")
        };
        assert!(why.starts_with("the body is not valid JSON"), "{why}");
    }
}
