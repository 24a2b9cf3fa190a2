//! The FHIR model layer: reading Ocean's message Bundles and writing FHIR answers.
//!
//! Nothing here knows about HTTP or storage: functions take bytes or values and return plain data.

mod bundle;
pub mod changes;
mod json;
pub mod message;
pub mod original;
pub mod outcome;
pub mod outgoing;
mod resources;
pub mod transaction;

pub use message::{ParseError, Parsed, ParsedMessage, parse_message};

/// Whether `text` is a FHIR R4 resource id (1 to 64 of `A-Z a-z 0-9 - .`), and not only dots
/// (a dot-segment to every URL parser, WHATWG URL §4.1).
pub fn is_fhir_id(text: &str) -> bool {
    (1..=64).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.'))
        && !text.bytes().all(|b| b == b'.')
}
