//! Validated identifiers: the newtypes for a referral's ref, a service, an event code and an
//! integration's name, the rules they share, and the URL path segment and file-name stem made
//! from a ref.
//!
//! Each identifier is a newtype with a fallible constructor and a private field, so a value that
//! reaches the store or a key has already been checked once (parse, don't validate).

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a string was refused as an identifier.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvalidId {
    #[error("{kind} is empty")]
    Empty { kind: &'static str },
    #[error("{kind} is longer than {max} characters")]
    TooLong { kind: &'static str, max: usize },
    #[error("{kind} contains a control character")]
    ControlCharacter { kind: &'static str },
    #[error("{kind} may only contain letters, digits, '-' and '_'")]
    BadCharacter { kind: &'static str },
}

/// Checks the rules every identifier shares: trimmed, non-empty, bounded, no control characters
/// (which also keeps the NUL byte that separates key parts out of every key).
fn check_text(kind: &'static str, value: &str, max: usize) -> Result<String, InvalidId> {
    let value = value.trim();
    if value.is_empty() {
        return Err(InvalidId::Empty { kind });
    }
    if value.chars().count() > max {
        return Err(InvalidId::TooLong { kind, max });
    }
    if value.chars().any(char::is_control) {
        return Err(InvalidId::ControlCharacter { kind });
    }
    Ok(value.to_owned())
}

macro_rules! text_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $max:literal) => {
        text_id!($(#[$doc])* $name, $kind, $max, |_: &str| true);
    };
    ($(#[$doc:meta])* $name:ident, $kind:literal, $max:literal, $allowed:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Checks `value` and wraps it; surrounding white space is dropped.
            pub fn parse(value: &str) -> Result<Self, InvalidId> {
                let value = check_text($kind, value, $max)?;
                if !($allowed)(value.as_str()) {
                    return Err(InvalidId::BadCharacter { kind: $kind });
                }
                Ok(Self(value))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(d)?;
                Self::parse(&raw).map_err(serde::de::Error::custom)
            }
        }
    };
}

text_id!(
    /// Ocean's reference for a referral (`id-ereferral-reference`), e.g. `TST-0011-AAAA`.
    ReferralRef,
    "referral reference",
    256
);
/// `text` as one URL path segment (RFC 3986): every byte but the unreserved characters
/// percent-encoded, and `.` too when `text` is only dots (a dot-segment, which every URL parser
/// would remove).
pub fn path_segment(text: &str) -> String {
    use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
    const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'~')
        .remove(b'.');
    const UNRESERVED_BUT_DOTS: &AsciiSet = &UNRESERVED.add(b'.');
    let dots_only = text.bytes().all(|b| b == b'.');
    let set = if dots_only {
        UNRESERVED_BUT_DOTS
    } else {
        UNRESERVED
    };
    utf8_percent_encode(text, set).to_string()
}

/// The longest file-name stem made from a ref, in bytes, before its hash is added.
const MAX_STEM: usize = 64;

impl ReferralRef {
    /// The ref as one URL path segment: see [`path_segment`]. Every link and redirect made
    /// from a ref uses this.
    pub fn path_segment(&self) -> String {
        path_segment(&self.0)
    }

    /// The ref as the start of a file, folder or ZIP entry name, and inside a quoted
    /// `Content-Disposition` parameter (RFC 6266): the ref itself when it is made of ASCII
    /// letters, digits, `-`, `_` and `.`, is at most 64 bytes, does not start or end with `.`,
    /// and is not a name Windows reserves (`CON`, `PRN`, `AUX`, `NUL`, `COM1`..`COM9`,
    /// `LPT1`..`LPT9`, with or without an extension); otherwise those characters (others as
    /// `_`, at most 64 bytes) then `-` and the first 12 hex digits of the ref's SHA-256, so refs
    /// that read alike once made safe still get names of their own. Every name made from a ref
    /// uses this.
    pub fn file_stem(&self) -> String {
        let safe: String = self
            .0
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let base = safe
            .split('.')
            .next()
            .unwrap_or_default()
            .to_ascii_uppercase();
        let reserved = matches!(base.as_str(), "CON" | "PRN" | "AUX" | "NUL")
            || (base.len() == 4
                && (base.starts_with("COM") || base.starts_with("LPT"))
                && matches!(base.as_bytes()[3], b'1'..=b'9'));
        // A ref that reads like a hashed stem (`-` and 12 hex digits at its end) is hashed
        // itself, so it never names the same file as the ref whose stem it looks like.
        let looks_hashed = safe.len() > 13
            && safe.as_bytes()[safe.len() - 13] == b'-'
            && safe[safe.len() - 12..]
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if safe == self.0
            && !looks_hashed
            && safe.len() <= MAX_STEM
            && !safe.starts_with('.')
            && !safe.ends_with('.')
            && !reserved
        {
            return safe;
        }
        let hash = hex::encode(&crate::digest::sha256(self.0.as_bytes())[..6]);
        let start = safe.trim_start_matches('.');
        format!("{}-{hash}", &start[..start.len().min(MAX_STEM)])
    }
}

text_id!(
    /// The External Service ID an admin typed on a directory listing: the key deliveries are
    /// filed under.
    ServiceId,
    "External Service ID",
    256
);
text_id!(
    /// A message event code such as `add-service-request`. Unknown codes are valid: they are
    /// stored, not rejected.
    EventCode,
    "event code",
    128
);

text_id!(
    /// The name of a configured integration; it appears in the webhook URL, so it is restricted
    /// to URL-safe characters.
    IntegrationName,
    "integration name",
    64,
    |v: &str| v.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_trimmed_and_checked() {
        assert_eq!(ReferralRef::parse("  TST-1 ").unwrap().as_str(), "TST-1");
        let r = |s: &str| ReferralRef::parse(s).unwrap();
        assert_eq!(r("TST-0011.A_b~").path_segment(), "TST-0011.A_b~");
        assert_eq!(r("a/b c?#%\\").path_segment(), "a%2Fb%20c%3F%23%25%5C");
        assert_eq!(r("..").path_segment(), "%2E%2E");
        assert_eq!(r("...").path_segment(), "%2E%2E%2E");
        assert_eq!(r("a..b").path_segment(), "a..b");
        assert_eq!(r("TST-0011-AAAA").file_stem(), "TST-0011-AAAA");
        for unsafe_ref in [
            "evil.html\"; x=\"",
            "a/../b",
            "CON",
            "aux.pdf",
            "Com7",
            "lpt1",
            "name.",
            ".hidden",
            "..",
            &"x".repeat(250),
        ] {
            let stem = r(unsafe_ref).file_stem();
            assert_ne!(stem, unsafe_ref);
            assert!(stem.len() <= 64 + 13, "{stem}");
            assert!(
                stem.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')),
                "{stem}"
            );
            assert!(!stem.starts_with('.') && !stem.ends_with('.'), "{stem}");
        }
        assert_ne!(r("a/b").file_stem(), r("a_b").file_stem());
        let hashed = r("X/Y").file_stem();
        assert_ne!(r(&hashed).file_stem(), hashed);
        assert_ne!(r("a/b").file_stem(), r("a?b").file_stem());
        assert_eq!(r("COM0").file_stem(), "COM0");
        assert!(matches!(
            ReferralRef::parse(" "),
            Err(InvalidId::Empty { .. })
        ));
        assert!(matches!(
            ServiceId::parse("a\0b"),
            Err(InvalidId::ControlCharacter { .. })
        ));
        assert!(matches!(
            EventCode::parse(&"x".repeat(129)),
            Err(InvalidId::TooLong { .. })
        ));
        assert!(IntegrationName::parse("ocean-main_2").is_ok());
        assert!(matches!(
            IntegrationName::parse("a/b"),
            Err(InvalidId::BadCharacter { .. })
        ));
    }
}
