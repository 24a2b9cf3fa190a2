//! Reading the synthetic fixtures and deriving unique deliveries from them.
//! Shared with the benchmark (`benches/ingest.rs` includes this file).

use std::path::PathBuf;

/// The v0.11 add-service-request fixture's referral reference and Bundle id.
pub const V011_REFERRAL: &str = "TST-0011-AAAA";
pub const V011_BUNDLE_ID: &str = "b0110000-0000-4000-8000-000000000001";

/// The bytes of `fhir-fixtures/<name>`.
pub fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fhir-fixtures")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The v0.11 fixture as a new delivery: a fresh Bundle id and the referral reference `referral`.
pub fn unique_v011(template: &str, referral: &str, bundle_id: &str) -> Vec<u8> {
    template
        .replace(V011_REFERRAL, referral)
        .replace(V011_BUNDLE_ID, bundle_id)
        .into_bytes()
}
