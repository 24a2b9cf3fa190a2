//! `[watch_list]`: when a referral needs a person's attention (see [`crate::watch_list`]).

use std::collections::BTreeMap;

use anyhow::bail;
use serde::{Deserialize, Serialize};

use crate::domain::ServiceId;

/// The longest any of the watch-list's periods may be, in days (ten years): a longer one is a
/// typing mistake, and day counts this large would overflow date arithmetic far sooner.
const MAX_DAYS: u32 = 3650;

/// The watch-list's thresholds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchListConfig {
    /// A referral with no status from the clinic this many days after it arrived is `overdue`.
    pub overdue_days: u32,
    /// `overdue_days` for the referrals of some External Service IDs (the others use
    /// `overdue_days`).
    #[serde(default)]
    pub overdue_days_by_service: BTreeMap<ServiceId, u32>,
    /// A referral Ocean will archive within this many days is `nearing_archival`.
    pub archival_warning_days: u32,
    /// A referral Ocean closed itself is `closed_by_ocean` for this many days after (0: never
    /// listed).
    pub closed_by_ocean_days: u32,
}

impl WatchListConfig {
    /// The `overdue_days` of referrals filed under `service` (`None`: unassigned).
    pub fn overdue_days(&self, service: Option<&ServiceId>) -> u32 {
        service
            .and_then(|s| self.overdue_days_by_service.get(s))
            .copied()
            .unwrap_or(self.overdue_days)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        let check = |key: &str, days: u32| {
            if days == 0 || days > MAX_DAYS {
                bail!("{key} must be between 1 and {MAX_DAYS} days");
            }
            Ok(())
        };
        check("watch_list.overdue_days", self.overdue_days)?;
        check(
            "watch_list.archival_warning_days",
            self.archival_warning_days,
        )?;
        if self.closed_by_ocean_days > MAX_DAYS {
            bail!("watch_list.closed_by_ocean_days must be between 0 and {MAX_DAYS} days");
        }
        for (service, days) in &self.overdue_days_by_service {
            check(
                &format!("watch_list.overdue_days_by_service.\"{service}\""),
                *days,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(overdue: u32, warning: u32, by_service: &[(&str, u32)]) -> WatchListConfig {
        WatchListConfig {
            overdue_days: overdue,
            overdue_days_by_service: by_service
                .iter()
                .map(|(s, d)| (ServiceId::parse(s).unwrap(), *d))
                .collect(),
            archival_warning_days: warning,
            closed_by_ocean_days: 14,
        }
    }

    #[test]
    fn each_service_has_its_own_overdue_days_or_the_default() {
        let c = config(14, 30, &[("CARDIO-RAPID-01", 7)]);
        c.validate().unwrap();
        let cardio = ServiceId::parse("CARDIO-RAPID-01").unwrap();
        let physio = ServiceId::parse("PHYSIO-EAST-02").unwrap();
        assert_eq!(c.overdue_days(Some(&cardio)), 7);
        assert_eq!(c.overdue_days(Some(&physio)), 14);
        assert_eq!(c.overdue_days(None), 14);
    }

    #[test]
    fn a_config_file_sets_a_service_its_own_days() {
        let load = crate::config::load_text;
        let c = load("").unwrap().watch_list;
        assert_eq!((c.overdue_days, c.archival_warning_days), (14, 30));
        assert!(c.overdue_days_by_service.is_empty());
        let c = load("[watch_list.overdue_days_by_service]\n\"CARDIO-RAPID-01\" = 7\n")
            .unwrap()
            .watch_list;
        let cardio = ServiceId::parse("CARDIO-RAPID-01").unwrap();
        assert_eq!(c.overdue_days(Some(&cardio)), 7);
        let e = load("[watch_list]\noverdue_days_by_service = { \"CARDIO-RAPID-01\" = 0 }\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("watch_list.overdue_days_by_service"), "{e}");
        let e = load("[watch_list]\noverdue_days = \"soon\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("watch_list.overdue_days"), "{e}");
    }

    #[test]
    fn errors_name_the_key() {
        let e = config(0, 30, &[]).validate().unwrap_err().to_string();
        assert!(e.contains("watch_list.overdue_days "), "{e}");
        let e = config(14, 4000, &[]).validate().unwrap_err().to_string();
        assert!(e.contains("watch_list.archival_warning_days"), "{e}");
        let e = config(14, 30, &[("CARDIO-RAPID-01", 0)])
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("watch_list.overdue_days_by_service.\"CARDIO-RAPID-01\""),
            "{e}"
        );
    }
}
