//! Status updates to Ocean, against a stand-in Ocean on loopback: the messages themselves field
//! by field, tokens, retries, ordering, dead letters, and what a clinic may send.

mod dead_letters;
mod delivery;
pub mod flow;
mod rules;
