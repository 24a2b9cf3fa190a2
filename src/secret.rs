//! Values that must never be printed: passwords, tokens, keys. The bottom layer: it knows nothing
//! of the rest of the service.

use serde::{Deserialize, Deserializer, Serialize};

/// A secret string: `Debug` and `Serialize` show `[redacted]`; only [`Secret::expose`] gives the
/// value.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(if self.0.is_empty() { "" } else { "[redacted]" })
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        string_or_number(d).map(Self)
    }
}

/// A string, also from a number: configuration layers (environment variables) turn `12345`
/// into a number, and identifiers and secrets are often all digits.
pub fn string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        Int(i64),
        Float(f64),
    }
    Ok(match Raw::deserialize(d)? {
        Raw::Text(s) => s,
        Raw::Int(i) => i.to_string(),
        Raw::Float(f) => f.to_string(),
    })
}

/// [`string_or_number`] for an optional field (with `#[serde(default)]`: absent is `None`).
pub fn optional_string_or_number<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<String>, D::Error> {
    string_or_number(d).map(Some)
}

/// Secret bytes decoded from configuration (a key): shown as `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretBytes(Vec<u8>);

impl SecretBytes {
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBytes([redacted])")
    }
}

impl Serialize for SecretBytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("[redacted]")
    }
}

/// Constant-time equality of two secrets (the length may leak; the content does not).
pub fn same_secret(presented: &[u8], expected: &[u8]) -> bool {
    #[allow(deprecated)]
    aws_lc_rs::constant_time::verify_slices_are_equal(presented, expected).is_ok()
}

/// Whether `token` can be sent as `Authorization: Bearer <token>`: not empty, and only visible
/// ASCII (RFC 6750 §2.1 allows less; servers issue more, but never spaces or controls).
pub fn is_bearer_token(token: &str) -> bool {
    !token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret:?}"), "Secret([redacted])");
        assert_eq!(serde_json::to_string(&secret).unwrap(), "\"[redacted]\"");
        assert_eq!(serde_json::to_string(&Secret::default()).unwrap(), "\"\"");
        let bytes = SecretBytes::new(b"key".to_vec());
        assert!(!format!("{bytes:?}").contains("key"));
        let parsed: Secret = serde_json::from_str("12345").unwrap();
        assert_eq!(parsed.expose(), "12345");
    }
}
