//! What the tests share: the server in-process on a loopback port ([`app`]), the real binary
//! ([`binary`]), the synthetic FHIR fixtures ([`fixtures`]), a mock Ocean ([`ocean`]) and its Open API for Patient Engagement ([`patient_ocean`]) and a relay
//! talking to it ([`flow`]), a schema of its own on the test PostgreSQL server ([`postgres`]),
//! certificates and HTTPS clients for the TLS tests ([`pki`]) and an app serving HTTPS ([`tls`]), peers that are not ours
//! ([`peers`]) and a CDS Hooks client ([`cds`]) and a real SMTP server ([`smtp`]), a real OpenID provider ([`oidc`]), the one polling helper ([`poll::eventually`]), a signing sender ([`signing`]),
//! the console's users and a signed-in visitor ([`console`]), the destination tests' service and
//! API ([`destinations`]), keys and patient details for encryption at rest ([`at_rest`]), a small filesystem that fills
//! up ([`disk`]), and
//! referrals dated for the watch-list's thresholds ([`watch_list`]).

pub mod app;
pub mod at_rest;
pub mod binary;
pub mod cds;
pub mod console;
pub mod destinations;
pub mod disk;
pub mod fixtures;
pub mod flow;
pub mod ocean;
pub mod oidc;
pub mod patient_ocean;
pub mod peers;
pub mod pki;
pub mod poll;
pub mod postgres;
pub mod signing;
pub mod smtp;
pub mod tls;
pub mod watch_list;
