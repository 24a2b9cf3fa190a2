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
