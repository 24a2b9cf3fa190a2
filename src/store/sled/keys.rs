//! Keys of the ordered trees: big-endian numbers and `\0`-separated parts, so scans are range
//! reads.

use time::OffsetDateTime;

use crate::domain::{ReferralRef, ServiceId};
use crate::store::ReferralRecord;

pub(super) fn version_key(referral: &ReferralRef, version: u64) -> Vec<u8> {
    let mut key = referral.as_str().as_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(&version.to_be_bytes());
    key
}

pub(super) fn service_key(service: Option<&ServiceId>, referral: &ReferralRef) -> Vec<u8> {
    let mut key = service
        .map(|s| s.as_str().as_bytes().to_vec())
        .unwrap_or_default();
    key.push(0);
    key.extend_from_slice(referral.as_str().as_bytes());
    key
}

pub(super) fn micros(at: OffsetDateTime) -> u64 {
    u64::try_from(at.unix_timestamp_nanos() / 1000).unwrap_or(0)
}

pub(super) fn from_micros(micros: u64) -> OffsetDateTime {
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
