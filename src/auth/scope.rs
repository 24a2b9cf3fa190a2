//! Who may see what: an API client or a console user, limited to some External Service IDs or
//! to none, and the lookups both UIs make through it (a referral, an update, a service filter),
//! with the same answers: 404 when there is no such thing, 403 when it is outside the scope.

use crate::domain::{ReferralRef, ServiceId};
use crate::error::AppError;
use crate::store::{ReferralRecord, Store, UpdateRecord};

/// What one caller may see, and how refusals name them (`client 'emr'`, a console user's name).
#[derive(Debug, Clone)]
pub struct Scope {
    who: String,
    /// External Service IDs the caller may see; empty: all, unassigned referrals included.
    service_ids: Vec<ServiceId>,
}

impl Scope {
    pub fn new(who: impl Into<String>, service_ids: Vec<ServiceId>) -> Self {
        Self {
            who: who.into(),
            service_ids,
        }
    }

    /// Whether the caller is limited to some service ids (and so may not read the whole store).
    pub fn is_limited(&self) -> bool {
        !self.service_ids.is_empty()
    }

    /// Whether patients' completed eForms may be read: they are filed under no External Service
    /// ID, so only by a caller not limited to some (the API and the console alike).
    ///
    /// # Errors
    /// `Forbidden`, naming the caller.
    pub fn patient_forms(&self) -> Result<(), AppError> {
        if self.is_limited() {
            return Err(AppError::Forbidden(format!(
                "{} is limited to some service ids and may not read patient forms, which have none",
                self.who
            )));
        }
        Ok(())
    }

    /// Whether referrals filed under `service` (`None`: unassigned) are visible. A limited
    /// caller never sees unassigned referrals.
    pub fn may_see(&self, service: Option<&ServiceId>) -> bool {
        self.service_ids.is_empty() || service.is_some_and(|s| self.service_ids.contains(s))
    }

    /// Whether `record` is visible.
    pub fn sees(&self, record: &ReferralRecord) -> bool {
        self.may_see(record.service_id.as_ref())
    }

    /// `service` as a filter the caller asked for: 403 when it is outside the scope.
    ///
    /// # Errors
    /// `Forbidden`, naming the caller and the service id.
    pub fn service(&self, service: ServiceId) -> Result<ServiceId, AppError> {
        if self.may_see(Some(&service)) {
            Ok(service)
        } else {
            Err(AppError::Forbidden(format!(
                "{} may not read service_id {service}",
                self.who
            )))
        }
    }

    /// The stored referral `reference`.
    ///
    /// # Errors
    /// `NotFound` when none is stored, `Forbidden` when it is outside the scope, the store's
    /// error when it cannot be read.
    pub async fn referral(
        &self,
        store: &dyn Store,
        reference: &ReferralRef,
    ) -> Result<ReferralRecord, AppError> {
        let record = store
            .referral(reference)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("no referral {reference} is stored")))?;
        if !self.sees(&record) {
            return Err(AppError::Forbidden(format!(
                "{} may not read referrals of this service",
                self.who
            )));
        }
        Ok(record)
    }

    /// The update for Ocean `id`, when its referral is visible.
    ///
    /// # Errors
    /// `NotFound` when there is no such update, otherwise as [`Scope::referral`] for its
    /// referral.
    pub async fn update(&self, store: &dyn Store, id: u64) -> Result<UpdateRecord, AppError> {
        let update = crate::store::update(store, id)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("no update {id}")))?;
        self.referral(store, &update.referral).await?;
        Ok(update)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limited_scope_sees_its_services_and_never_the_unassigned() {
        let cardio = ServiceId::parse("CARDIO-1").unwrap();
        let physio = ServiceId::parse("PHYSIO-2").unwrap();
        let all = Scope::new("client 'all'", Vec::new());
        assert!(!all.is_limited());
        assert!(all.may_see(None) && all.may_see(Some(&physio)));
        let limited = Scope::new("client 'cardio'", vec![cardio.clone()]);
        assert!(limited.is_limited());
        assert!(limited.may_see(Some(&cardio)));
        assert!(!limited.may_see(Some(&physio)) && !limited.may_see(None));
        assert_eq!(limited.service(cardio.clone()).unwrap(), cardio);
        let refused = limited.service(physio).unwrap_err().to_string();
        assert!(
            refused.contains("client 'cardio' may not read service_id PHYSIO-2"),
            "{refused}"
        );
    }
}
