//! What the tests share: the server in-process on a loopback port ([`app`]), the real binary
//! ([`binary`]), the synthetic FHIR fixtures ([`fixtures`]), and a mock Ocean ([`ocean`]).

pub mod app;
pub mod binary;
pub mod fixtures;
pub mod ocean;
