//! The keys of `queue_index` (see the module above) and the chain value.

use time::OffsetDateTime;

use crate::domain::ReferralRef;
use crate::store::error::StoreError;
use crate::store::queue::MessageState;
use crate::store::record::read_u64;
use crate::store::sled::keys::due_time;
use crate::store::sled::keys::referral_seq_key;

pub(in crate::store::sled) const DUE: u8 = 0x01;
pub(in crate::store::sled) const HEAD: u8 = 0x02;
pub(in crate::store::sled) const BY_STATE: u8 = 0x03;
pub(in crate::store::sled) const BY_REFERRAL: u8 = 0x04;
pub(in crate::store::sled) const COUNT: u8 = 0x05;
pub(in crate::store::sled) const PAUSED: u8 = 0x06;

pub(in crate::store::sled) fn prefixed(tag: u8, queue: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(queue.len() + 32);
    key.push(tag);
    key.extend_from_slice(queue.as_bytes());
    key.push(0);
    key
}

pub(in crate::store::sled) fn due_key(queue: &str, at: OffsetDateTime, id: u64) -> Vec<u8> {
    let mut key = prefixed(DUE, queue);
    key.extend_from_slice(&due_time(at));
    key.extend_from_slice(&id.to_be_bytes());
    key
}

pub(in crate::store::sled) fn head_key(queue: &str, referral: &ReferralRef) -> Vec<u8> {
    let mut key = prefixed(HEAD, queue);
    key.extend_from_slice(referral.as_str().as_bytes());
    key
}

pub(in crate::store::sled) fn state_byte(state: MessageState) -> u8 {
    match state {
        MessageState::Pending => 0,
        MessageState::Dead => 1,
        MessageState::Delivered => 2,
        MessageState::Discarded => 3,
    }
}

pub(in crate::store::sled) fn state_key(queue: &str, state: MessageState, id: u64) -> Vec<u8> {
    let mut key = prefixed(BY_STATE, queue);
    key.push(state_byte(state));
    key.extend_from_slice(&id.to_be_bytes());
    key
}

pub(in crate::store::sled) fn count_key(queue: &str, state: MessageState) -> Vec<u8> {
    let mut key = prefixed(COUNT, queue);
    key.push(state_byte(state));
    key
}

pub(in crate::store::sled) fn paused_key(queue: &str) -> Vec<u8> {
    prefixed(PAUSED, queue)
}

pub(in crate::store::sled) fn referral_key(referral: &ReferralRef, id: u64) -> Vec<u8> {
    let mut key = vec![BY_REFERRAL];
    key.extend_from_slice(&referral_seq_key(referral, id));
    key
}

/// Head and tail ids of a referral's chain.
pub(in crate::store::sled) fn chain(value: &[u8]) -> Result<(u64, u64), StoreError> {
    if value.len() != 16 {
        return Err(StoreError::failed("a queue chain entry is damaged"));
    }
    Ok((read_u64(&value[..8])?, read_u64(&value[8..])?))
}

pub(in crate::store::sled) fn chain_value(head: u64, tail: u64) -> [u8; 16] {
    let mut value = [0; 16];
    value[..8].copy_from_slice(&head.to_be_bytes());
    value[8..].copy_from_slice(&tail.to_be_bytes());
    value
}
