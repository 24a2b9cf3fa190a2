//! Keys of the ordered trees: big-endian numbers and `\0`-separated parts, so scans are range
//! reads.

use time::OffsetDateTime;

use crate::domain::ReferralRef;
use crate::store::deliveries::ReferralRecord;
use crate::store::record::{micros, version_key};

pub(super) mod queue;

/// The prefix of `referral`'s keys in the trees keyed by referral ref `\0` number.
pub(super) fn referral_prefix(referral: &ReferralRef) -> Vec<u8> {
    let mut key = referral.as_str().as_bytes().to_vec();
    key.push(0);
    key
}

/// Referral ref `\0` number (u64 BE): a version in `versions` and `payloads` (the record
/// format's [`version_key`]), an update id in `referral_updates`.
pub(super) fn referral_seq_key(referral: &ReferralRef, number: u64) -> Vec<u8> {
    version_key(referral.as_str(), number)
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

/// A time as 16 bytes that sort as it does: Unix nanoseconds, sign bit flipped, big-endian
/// (the due times of documents and queued messages).
pub(super) fn due_time(at: OffsetDateTime) -> [u8; 16] {
    (at.unix_timestamp_nanos().cast_unsigned() ^ (1 << 127)).to_be_bytes()
}

/// First byte of the due-time index's keys in `due_documents`: `\x01`, the due time
/// ([`due_time`]), the document key. A document key starts with a referral ref, which holds no
/// control character, so the index and the pending documents never share a key.
pub(super) const BY_DUE: u8 = 0x01;
/// The due-time index's key of a document due at `at` (from [`due_time`]).
pub(super) fn by_due_key(at: &[u8], key: &[u8]) -> Vec<u8> {
    let mut by_due = Vec::with_capacity(1 + at.len() + key.len());
    by_due.push(BY_DUE);
    by_due.extend_from_slice(at);
    by_due.extend_from_slice(key);
    by_due
}
