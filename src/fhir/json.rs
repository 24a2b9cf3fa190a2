//! Small readers over `serde_json::Value` for the lenient path, used where a resource does not
//! deserialize into fhir-sdk's types (an unknown code in a required field, say).

use serde_json::Value;

/// The string at `path` below `value`, if every step exists and the leaf is a string.
pub fn str_at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter()
        .try_fold(value, |v, key| v.get(key))
        .and_then(Value::as_str)
}

/// The elements of the array at `key` (none when absent or not an array).
pub fn items<'a>(value: &'a Value, key: &str) -> impl Iterator<Item = &'a Value> {
    value
        .get(key)
        .and_then(Value::as_array)
        .map(|a| a.iter())
        .into_iter()
        .flatten()
}

/// The strings of the array at `key`.
pub fn strings<'a>(value: &'a Value, key: &str) -> impl Iterator<Item = &'a str> {
    items(value, key).filter_map(Value::as_str)
}

/// `Identifier` values in `value.identifier[]` whose system ends with `suffix`.
pub fn identifier_with_suffix<'a>(value: &'a Value, suffix: &str) -> Option<&'a str> {
    items(value, "identifier")
        .find(|i| str_at(i, &["system"]).is_some_and(|s| s.ends_with(suffix)))
        .and_then(|i| str_at(i, &["value"]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_nested_strings_and_arrays() {
        let v = json!({"a": {"b": "c"}, "l": ["x", 1, "y"], "identifier": [
            {"system": "https://h/NamingSystem/id-other", "value": "1"},
            {"system": "https://h/NamingSystem/id-wanted", "value": "2"}
        ]});
        assert_eq!(str_at(&v, &["a", "b"]), Some("c"));
        assert_eq!(str_at(&v, &["a", "x"]), None);
        assert_eq!(strings(&v, "l").collect::<Vec<_>>(), vec!["x", "y"]);
        assert_eq!(identifier_with_suffix(&v, "/id-wanted"), Some("2"));
        assert_eq!(items(&v, "missing").count(), 0);
    }
}
