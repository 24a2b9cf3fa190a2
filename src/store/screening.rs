//! How often each screening rule fired: counts by day, External Service ID, rule and card
//! indicator, and how many referrals were screened. Nothing about a patient or a referral is
//! kept, so a clinic can see which rules fire most without the store holding more PHI.

use async_trait::async_trait;
use time::Date;

use super::error::StoreError;

/// The `rule` of the count of referrals screened (each answered request), whose `indicator`
/// is the most urgent card it got, or [`NO_CARD`].
pub const SCREENED: &str = "screened";

/// The `indicator` of a screened referral that got no card.
pub const NO_CARD: &str = "none";

/// The `indicator` of a call whose answer was not ready in time (answered with no card).
pub const LATE: &str = "late";

/// One count: how many times `rule` gave a card with `indicator` on `day` (UTC) for `service_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScreeningTally {
    pub day: Date,
    pub service_id: String,
    pub rule: String,
    pub indicator: String,
    pub count: u64,
}

/// Screening counts, shared by every process that opens the store.
#[async_trait]
pub trait ScreeningStore: Send + Sync {
    /// Adds each tally's count to what is kept for its (day, service, rule, indicator).
    async fn add_screening_tallies(&self, tallies: &[ScreeningTally]) -> Result<(), StoreError>;

    /// Every count from `since` (inclusive) on, ordered by day, service, rule and indicator.
    async fn screening_tallies(&self, since: Date) -> Result<Vec<ScreeningTally>, StoreError>;
}
