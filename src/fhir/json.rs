//! A lean reader of JSON (RFC 8259) documents. serde_json checks the syntax of a document in one
//! pass; an object's members are kept as raw JSON text ([`RawValue`]), so only the parts the relay
//! reads are ever parsed further and no tree of the whole document is built.
//!
//! It takes everything RFC 8259 allows, because a refused delivery is a lost referral:
//! - any nesting depth: skipped values are scanned without recursion;
//! - numbers of any size and precision: they are skipped, never converted;
//! - repeated member names: the last one wins, as in ECMAScript's `JSON.parse`;
//! - escapes that do not decode to Unicode (a lone surrogate such as `"\ud800"`): text read from
//!   such a string carries U+FFFD in their place.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// A JSON object whose member values are still raw JSON text.
#[derive(Debug, Clone, Default)]
pub struct Object<'a> {
    members: Vec<(Cow<'a, str>, &'a RawValue)>,
}

impl<'a> Object<'a> {
    /// Reads `text` as an object; `None` when it is any other JSON value or not JSON at all.
    pub fn parse(raw: &'a RawValue) -> Option<Self> {
        Self::parse_text(raw.get()).ok()
    }

    /// Reads `text` (a whole document) as an object, checking its syntax to the end.
    pub fn parse_text(text: &'a str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// The raw value of member `name` (the last one when the name is repeated).
    pub fn get(&self, name: &str) -> Option<&'a RawValue> {
        self.members
            .iter()
            .rev()
            .find(|(key, _)| key == name)
            .map(|(_, value)| *value)
    }

    /// The string member `name`; `None` when absent or not a string.
    pub fn text(&self, name: &str) -> Option<String> {
        self.get(name).and_then(text)
    }

    /// The string at `path` below this object, every step but the last an object.
    pub fn path_text(&self, path: &[&str]) -> Option<String> {
        let (last, steps) = path.split_last()?;
        let Some((first, rest)) = steps.split_first() else {
            return self.text(last);
        };
        let mut object = self.object(first)?;
        for step in rest {
            object = object.object(step)?;
        }
        object.text(last)
    }

    /// The object member `name`.
    pub fn object(&self, name: &str) -> Option<Object<'a>> {
        self.get(name).and_then(Object::parse)
    }

    /// The elements of the array member `name` (none when absent or not an array).
    pub fn array(&self, name: &str) -> Vec<&'a RawValue> {
        self.get(name).map(array).unwrap_or_default()
    }

    /// The elements of the array member `name` that are objects.
    pub fn objects(&self, name: &str) -> impl Iterator<Item = Object<'a>> + use<'a> {
        self.array(name).into_iter().filter_map(Object::parse)
    }

    /// The string elements of the array member `name`.
    pub fn texts(&self, name: &str) -> Vec<String> {
        self.array(name).into_iter().filter_map(text).collect()
    }

    /// The object as JSON text again (a repeated name appears once, with its last value).
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(
            self.members
                .iter()
                .map(|(k, v)| k.len() + v.get().len() + 4)
                .sum::<usize>()
                + 2,
        );
        // The last of a repeated name is the one that counts. Resources have a few dozen
        // members at most, which a pairwise look finds fastest; a huge object gets a set.
        let members = &self.members;
        let keep: Vec<bool> = if members.len() <= 32 {
            (0..members.len())
                .map(|i| !members[i + 1..].iter().any(|(k, _)| *k == members[i].0))
                .collect()
        } else {
            let mut seen = std::collections::HashSet::with_capacity(members.len());
            let mut last: Vec<bool> = members
                .iter()
                .rev()
                .map(|(key, _)| seen.insert(key.as_ref()))
                .collect();
            last.reverse();
            last
        };
        out.push('{');
        let mut first = true;
        for ((key, value), keep) in members.iter().zip(keep) {
            if !keep {
                continue;
            }
            if !first {
                out.push(',');
            }
            first = false;
            if key.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
                out.push('"');
                out.push_str(key);
                out.push('"');
            } else {
                // Serialising a str cannot fail.
                out.push_str(&serde_json::to_string(key.as_ref()).unwrap_or_default());
            }
            out.push(':');
            out.push_str(value.get());
        }
        out.push('}');
        out
    }
}

/// One `Bundle.entry` as read by [`Object::parse_bundle`]: its `fullUrl` and its `resource`.
#[derive(Debug, Clone, Default)]
pub struct EntryParts<'a> {
    pub full_url: Option<String>,
    pub resource: Option<Object<'a>>,
}

impl<'a> Object<'a> {
    /// Reads `text` (a whole document) as a Bundle in one pass over the bytes: the root's
    /// members stay raw except `entry`, whose elements' `fullUrl` and `resource` (members raw)
    /// are read on the way, so no byte of an entry is scanned twice. The root it returns has no
    /// `entry` member.
    ///
    /// # Errors
    /// When the document is not JSON, or is JSON of another shape than every sender's (a
    /// non-object root, an `entry` that is not an array of objects, a `resource` that is not an
    /// object, a `fullUrl` that is not a string). The caller then reads it with the general
    /// reader ([`Object::parse_text`] and friends), which takes any shape.
    pub fn parse_bundle(text: &'a str) -> Result<(Self, Vec<EntryParts<'a>>), serde_json::Error> {
        serde_json::from_str::<BundleParts<'a>>(text).map(|b| (b.root, b.entries))
    }
}

/// The root of a Bundle and its entries, read in one pass.
struct BundleParts<'a> {
    root: Object<'a>,
    entries: Vec<EntryParts<'a>>,
}

impl<'de: 'a, 'a> Deserialize<'de> for BundleParts<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct RootVisitor<'a>(std::marker::PhantomData<&'a ()>);

        impl<'de: 'a, 'a> Visitor<'de> for RootVisitor<'a> {
            type Value = BundleParts<'a>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(8));
                let mut entries = Vec::new();
                while let Some(Key(key)) = map.next_key()? {
                    if key == "entry" {
                        // The last of a repeated name counts, as in the general reader.
                        entries = map.next_value::<Entries<'a>>()?.0;
                    } else {
                        members.push((key, map.next_value::<&'a RawValue>()?));
                    }
                }
                Ok(BundleParts {
                    root: Object { members },
                    entries,
                })
            }
        }

        d.deserialize_map(RootVisitor(std::marker::PhantomData))
    }
}

/// `Bundle.entry`: an array of objects.
struct Entries<'a>(Vec<EntryParts<'a>>);

impl<'de: 'a, 'a> Deserialize<'de> for Entries<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct EntriesVisitor<'a>(std::marker::PhantomData<&'a ()>);

        impl<'de: 'a, 'a> Visitor<'de> for EntriesVisitor<'a> {
            type Value = Entries<'a>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of entries")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::with_capacity(seq.size_hint().unwrap_or(8));
                while let Some(entry) = seq.next_element::<EntryParts<'a>>()? {
                    entries.push(entry);
                }
                Ok(Entries(entries))
            }
        }

        d.deserialize_seq(EntriesVisitor(std::marker::PhantomData))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for EntryParts<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct EntryVisitor<'a>(std::marker::PhantomData<&'a ()>);

        impl<'de: 'a, 'a> Visitor<'de> for EntryVisitor<'a> {
            type Value = EntryParts<'a>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an entry object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entry = EntryParts::default();
                while let Some(Key(key)) = map.next_key()? {
                    match key.as_ref() {
                        "fullUrl" => entry.full_url = Some(map.next_value::<Text>()?.0),
                        "resource" => entry.resource = Some(map.next_value()?),
                        _ => {
                            map.next_value::<de::IgnoredAny>()?;
                        }
                    }
                }
                Ok(entry)
            }
        }

        d.deserialize_map(EntryVisitor(std::marker::PhantomData))
    }
}

/// A JSON string as text, with U+FFFD for what does not decode; `None` for any other value.
pub fn text(raw: &RawValue) -> Option<String> {
    serde_json::from_str::<Text>(raw.get()).ok().map(|t| t.0)
}

/// The elements of a JSON array (none for any other value).
pub fn array(raw: &RawValue) -> Vec<&RawValue> {
    serde_json::from_str(raw.get()).unwrap_or_default()
}

/// How deeply `text` (valid JSON) nests: 1 for a scalar, 2 for `[1]`; a byte scan, no recursion.
pub fn depth(text: &str) -> usize {
    let (mut level, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for byte in text.bytes() {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'{' | b'[' => {
                level += 1;
                deepest = deepest.max(level);
            }
            b'}' | b']' => level = level.saturating_sub(1),
            _ => {}
        }
    }
    deepest + 1
}

/// A string read byte-wise, so escapes that do not decode (lone surrogates) and invalid UTF-8
/// become U+FFFD instead of an error.
struct Text(String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_bytes(TextVisitor)
            .map(|t| Text(t.into_owned()))
    }
}

struct TextVisitor;

impl<'de> Visitor<'de> for TextVisitor {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<Self::Value, E> {
        Ok(lossy(v))
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
        Ok(Cow::Owned(lossy(v).into_owned()))
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
}

/// `bytes` as text: serde_json hands over a string's lone surrogate as its three-byte
/// generalised UTF-8 form; it and any other byte that is not UTF-8 become U+FFFD.
fn lossy(bytes: &[u8]) -> Cow<'_, str> {
    if let Ok(text) = std::str::from_utf8(bytes) {
        return Cow::Borrowed(text);
    }
    let mut fixed = bytes.to_vec();
    let mut i = 0;
    while i + 2 < fixed.len() {
        if fixed[i] == 0xED && (0xA0..=0xBF).contains(&fixed[i + 1]) {
            // One replacement character for the whole surrogate, of the same length.
            fixed[i..i + 3].copy_from_slice("\u{fffd}".as_bytes());
            i += 3;
        } else {
            i += 1;
        }
    }
    Cow::Owned(String::from_utf8_lossy(&fixed).into_owned())
}

/// A member name, borrowed from the document when it has no escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Key<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_bytes(TextVisitor).map(Key)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Object<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ObjectVisitor<'a>(std::marker::PhantomData<&'a ()>);

        impl<'de: 'a, 'a> Visitor<'de> for ObjectVisitor<'a> {
            type Value = Object<'a>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(Key(key)) = map.next_key()? {
                    let value: &'a RawValue = map.next_value()?;
                    members.push((key, value));
                }
                Ok(Object { members })
            }

            // Other values are refused by `deserialize_map` before they reach a visitor.
            fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
                Err(de::Error::invalid_type(de::Unexpected::Seq, &self))
            }
        }

        d.deserialize_map(ObjectVisitor(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> &RawValue {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn reads_members_nested_strings_and_arrays() {
        let o = Object::parse_text(
            r#"{"a": {"b": "c"}, "l": ["x", 1, "y", {"k": 2}], "n": 1e400, "s": "\u00e9\ud800!"}"#,
        )
        .unwrap();
        assert_eq!(o.path_text(&["a", "b"]).as_deref(), Some("c"));
        assert_eq!(o.path_text(&["a", "x"]), None);
        assert_eq!(o.texts("l"), vec!["x", "y"]);
        assert_eq!(o.objects("l").count(), 1);
        assert_eq!(o.array("missing").len(), 0);
        // A number beyond f64 is skipped, not refused; a lone surrogate reads as U+FFFD.
        assert_eq!(o.get("n").unwrap().get(), "1e400");
        assert_eq!(o.text("s").as_deref(), Some("\u{e9}\u{fffd}!"));
        assert_eq!(o.text("n"), None);
    }

    #[test]
    fn the_last_of_a_repeated_name_wins() {
        let o = Object::parse_text(r#"{"a": "first", "b": 1, "a": "second"}"#).unwrap();
        assert_eq!(o.text("a").as_deref(), Some("second"));
        let again: serde_json::Value = serde_json::from_str(&o.to_json()).unwrap();
        assert_eq!(again, serde_json::json!({"b": 1, "a": "second"}));
        // Names that need escapes are written with them.
        let o =
            Object::parse_text(r#"{"q\"uote": 1, "back\\slash": 2, "tab\t": 3, "é": 4}"#).unwrap();
        let again: serde_json::Value = serde_json::from_str(&o.to_json()).unwrap();
        assert_eq!(
            again,
            serde_json::json!({"q\"uote": 1, "back\\slash": 2, "tab\t": 3, "é": 4})
        );
    }

    /// Linear in the number of members: an object with hundreds of thousands of them (which a
    /// quadratic search for repeated names would take hours over) is rewritten at once.
    #[test]
    fn a_huge_object_is_rewritten_in_linear_time() {
        let members: Vec<String> = (0..300_000).map(|n| format!("\"k{n}\": {n}")).collect();
        let text = format!("{{{}, \"k7\": \"last\"}}", members.join(", "));
        let o = Object::parse_text(&text).unwrap();
        let again = o.to_json();
        let reread = Object::parse_text(&again).unwrap();
        assert_eq!(reread.text("k7").as_deref(), Some("last"));
        assert_eq!(reread.get("k299999").unwrap().get(), "299999");
    }

    #[test]
    fn any_depth_is_scanned_without_recursion() {
        let deep = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
        let text = format!(r#"{{"deep": {deep}, "x": "y"}}"#);
        let o = Object::parse_text(&text).unwrap();
        assert_eq!(o.text("x").as_deref(), Some("y"));
        assert_eq!(depth(o.get("deep").unwrap().get()), 100_001);
        assert_eq!(depth(r#"{"a": ["]"]}"#), 3);
    }

    #[test]
    fn other_values_are_not_objects() {
        assert!(Object::parse(raw("[1]")).is_none());
        assert!(Object::parse(raw("\"x\"")).is_none());
        assert!(Object::parse_text("{\"a\": 1} trailing").is_err());
        assert_eq!(text(raw("12")), None);
    }
}
