//! Deliveries: storing one (through the [`writer`](super::writer), which applies them in
//! batches with [`apply`](super::apply)), and the reads of referrals and versions.

use async_trait::async_trait;
use bytes::Bytes;

use super::handle::SledStore;
use super::keys::{referral_prefix, referral_seq_key};
use super::open::Open;
use super::trees::unavailable;
use crate::domain::ReferralRef;
use crate::store::deliveries::{
    DeliveryStore, NewDelivery, PutOutcome, ReferralRecord, VersionRecord,
};
use crate::store::error::StoreError;
use crate::store::record::open_payload;
use crate::store::record::{PAYLOADS, REFERRALS, VERSIONS};

impl Open {
    /// The referral stored under `key` (its ref), opened and decoded.
    pub(super) fn referral_record(&self, key: &[u8]) -> Result<Option<ReferralRecord>, StoreError> {
        self.trees
            .referrals
            .get(key)
            .map_err(unavailable)?
            .map(|v| self.codec.decode(REFERRALS, key, &v))
            .transpose()
    }

    pub(super) async fn put_delivery(
        &self,
        delivery: NewDelivery,
    ) -> Result<PutOutcome, StoreError> {
        self.writer.put_delivery(delivery).await
    }

    pub(super) async fn referral(
        &self,
        referral: &ReferralRef,
    ) -> Result<Option<ReferralRecord>, StoreError> {
        self.referral_record(referral.as_str().as_bytes())
    }

    pub(super) async fn versions(
        &self,
        referral: &ReferralRef,
    ) -> Result<Vec<VersionRecord>, StoreError> {
        self.trees
            .versions
            .scan_prefix(referral_prefix(referral))
            .map(|item| {
                let (key, value) = item.map_err(unavailable)?;
                self.codec.decode(VERSIONS, &key, &value)
            })
            .collect()
    }

    pub(super) async fn payload(
        &self,
        referral: &ReferralRef,
        version: u64,
    ) -> Result<Option<Bytes>, StoreError> {
        let key = referral_seq_key(referral, version);
        self.trees
            .payloads
            .get(&key)
            .map_err(unavailable)?
            .map(|v| open_payload(&self.codec.open(PAYLOADS, &key, &v)?))
            .transpose()
    }
}

#[async_trait]
impl DeliveryStore for SledStore {
    async fn put_delivery(&self, delivery: NewDelivery) -> Result<PutOutcome, StoreError> {
        let open = self.open_db()?;
        self.checked(open.put_delivery(delivery).await)
    }

    async fn referral(&self, referral: &ReferralRef) -> Result<Option<ReferralRecord>, StoreError> {
        let open = self.open_db()?;
        self.checked(open.referral(referral).await)
    }

    async fn versions(&self, referral: &ReferralRef) -> Result<Vec<VersionRecord>, StoreError> {
        let open = self.open_db()?;
        self.checked(open.versions(referral).await)
    }

    async fn payload(
        &self,
        referral: &ReferralRef,
        version: u64,
    ) -> Result<Option<Bytes>, StoreError> {
        let open = self.open_db()?;
        self.checked(open.payload(referral, version).await)
    }
}
