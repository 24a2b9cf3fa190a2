//! What the tests share: the server in-process on a loopback port ([`app`]), the real binary
//! ([`binary`]), the synthetic FHIR fixtures ([`fixtures`]), a mock Ocean ([`ocean`]), and a
//! schema of its own on the test PostgreSQL server ([`postgres`]), certificates and HTTPS
//! clients for the TLS tests ([`pki`]).

pub mod app;
pub mod binary;
pub mod fixtures;
pub mod ocean;
pub mod peers;
pub mod pki;
pub mod postgres;
