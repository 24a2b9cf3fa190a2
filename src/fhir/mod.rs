//! The FHIR model layer: reading Ocean's message Bundles and writing FHIR answers.
//!
//! Nothing here knows about HTTP or storage: functions take bytes or values and return plain data.

mod bundle;
pub mod changes;
pub mod draft;
mod json;
pub mod message;
pub mod outcome;
pub mod outgoing;
mod resources;
pub mod transaction;

pub use message::{ParseError, Parsed, ParsedMessage, parse_message};

/// Whether `text` is a FHIR R4 `string`: not empty, and no control character but tab, carriage
/// return and line feed (R4 §2.24.0.1: "Strings SHALL NOT contain Unicode character points
/// below 32, except for u0009, u000D and u000A").
pub fn is_fhir_string(text: &str) -> bool {
    !text.is_empty()
        && !text
            .chars()
            .any(|c| c.is_control() && !matches!(c, '\t' | '\r' | '\n'))
}

/// Whether `text` is a FHIR R4 `code`: words of non-white-space characters (no control
/// characters) separated by single spaces (`[^\s]+(\s[^\s]+)*`).
pub fn is_fhir_code(text: &str) -> bool {
    !text.is_empty()
        && !text.chars().any(char::is_control)
        && text
            .split(' ')
            .all(|word| !word.is_empty() && !word.contains(char::is_whitespace))
}

/// Whether `text` is a FHIR R4 `uri`: not empty, no white space or control character.
pub fn is_fhir_uri(text: &str) -> bool {
    !text.is_empty() && !text.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// Whether `text` is a FHIR R4 resource id (1 to 64 of `A-Z a-z 0-9 - .`), and not only dots
/// (a dot-segment to every URL parser, WHATWG URL §4.1).
pub fn is_fhir_id(text: &str) -> bool {
    (1..=64).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.'))
        && !text.bytes().all(|b| b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_codes_and_uris_follow_r4s_rules() {
        assert!(is_fhir_string("Line one\r\nline\ttwo, é"));
        assert!(!is_fhir_string(""));
        assert!(!is_fhir_string("bell\u{7}"));
        assert!(!is_fhir_string("del\u{7f}"));
        assert!(is_fhir_code("394579002") && is_fhir_code("two words"));
        for bad in ["", " x", "x ", "a  b", "a\tb", "a\u{b}b", "a\u{1}"] {
            assert!(!is_fhir_code(bad), "{bad:?}");
        }
        assert!(is_fhir_uri("http://snomed.info/sct") && is_fhir_uri("urn:oid:1.2"));
        assert!(!is_fhir_uri("http://x.example/a b") && !is_fhir_uri(""));
        assert!(is_fhir_id("R-1.a") && !is_fhir_id("..") && !is_fhir_id("R_1"));
    }
}
