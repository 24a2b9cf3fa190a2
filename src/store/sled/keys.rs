//! Keys of the ordered trees: big-endian numbers and `\0`-separated parts, so scans are range
//! reads.

use time::OffsetDateTime;

use crate::domain::ReferralRef;
use crate::store::deliveries::ReferralRecord;

/// The prefix of `referral`'s keys in the trees keyed by referral ref `\0` number.
pub(super) fn referral_prefix(referral: &ReferralRef) -> Vec<u8> {
    let mut key = referral.as_str().as_bytes().to_vec();
    key.push(0);
    key
}

/// Referral ref `\0` number (u64 BE): a version in `versions` and `payloads`, an update id in
/// `referral_updates`.
pub(super) fn referral_seq_key(referral: &ReferralRef, number: u64) -> Vec<u8> {
    version_key(referral.as_str(), number)
}

/// Referral ref `\0` version (u64 BE) index (u32 BE): a document in `documents`,
/// `document_bytes` and `due_documents`; also the context its record and bytes are sealed to
/// in the PostgreSQL store.
pub(in crate::store) fn document_key(referral: &str, version: u64, index: u32) -> Vec<u8> {
    let mut key = version_key(referral, version);
    key.extend_from_slice(&index.to_be_bytes());
    key
}

/// [`referral_seq_key`] from the reference's text. Also the context a version's record and
/// payload are sealed to in the PostgreSQL store, so sealed records move between the two.
pub(in crate::store) fn version_key(referral: &str, number: u64) -> Vec<u8> {
    let mut key = referral.as_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(&number.to_be_bytes());
    key
}

pub(super) fn micros(at: OffsetDateTime) -> u64 {
    u64::try_from(at.unix_timestamp_nanos() / 1000).unwrap_or(0)
}

pub(in crate::store) fn from_micros(micros: u64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

pub(super) fn modified_key(at: OffsetDateTime, referral: &ReferralRef) -> Vec<u8> {
    let mut key = micros(at).to_be_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(referral.as_str().as_bytes());
    key
}

pub(super) fn modified_key_of(record: &ReferralRecord) -> Vec<u8> {
    modified_key(record.modified_at, &record.referral)
}
