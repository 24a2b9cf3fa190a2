//! What the tests of encryption at rest share, and every test that looks for patient data where
//! it must not be (on disk, in PostgreSQL, in logs): the fixtures that carry a referral, every
//! patient detail in them, a search of a directory's files, and keys and keyrings.

use std::path::Path;

use base64::Engine;
use referral_relay::store::Keyring;
use serde_json::Value;

/// The fixtures that carry a referral.
pub const STORED: [&str; 6] = [
    "v0.11-add-service-request.json",
    "v0.10-add-service-request.json",
    "update-task-accepted.json",
    "update-appointment-booked.json",
    "update-appointment-proposed.json",
    "revoke-service-request.json",
];

/// Every patient name, phone number, e-mail and identifier in the fixtures' Patient resources.
pub fn patient_details() -> Vec<String> {
    let mut found = Vec::new();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fhir-fixtures");
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let bundle: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let patients = bundle["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| &e["resource"])
            .filter(|r| r["resourceType"] == "Patient");
        for patient in patients {
            let strings = |v: &Value| -> Vec<String> {
                v.as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            };
            for name in patient["name"].as_array().into_iter().flatten() {
                found.extend(name["family"].as_str().map(str::to_owned));
                found.extend(strings(&name["given"]));
            }
            for field in ["telecom", "identifier"] {
                for item in patient[field].as_array().into_iter().flatten() {
                    found.extend(item["value"].as_str().map(str::to_owned));
                }
            }
        }
    }
    found.sort();
    found.dedup();
    assert!(
        found.len() >= 10,
        "too few patient details found: {found:?}"
    );
    found
}

/// Which of `needles` occur anywhere in the files under `dir`.
pub fn grep(dir: &Path, needles: &[String]) -> Vec<String> {
    let mut contents = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        if path.is_dir() {
            pending.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else {
            contents.push(std::fs::read(&path).unwrap());
        }
    }
    needles
        .iter()
        .filter(|n| {
            contents
                .iter()
                .any(|c| c.windows(n.len()).any(|w| w == n.as_bytes()))
        })
        .cloned()
        .collect()
}

/// A 32-byte encryption key of `byte`, as `[storage] encryption_key` takes it (base64).
pub fn key(byte: u8) -> String {
    base64::engine::general_purpose::STANDARD.encode([byte; 32])
}

/// The keyring of [`key`]`(current)`, still opening what [`key`] of each of `previous` sealed.
pub fn keyring(current: u8, previous: &[u8]) -> Option<Keyring> {
    let previous: Vec<[u8; 32]> = previous.iter().map(|b| [*b; 32]).collect();
    Some(Keyring::new(&[current; 32], &previous).unwrap())
}
