//! Which Task status changes a clinic may send: FHIR's Task state machine as Ocean uses it.

use std::collections::BTreeMap;

/// Statuses Ocean acts on (its folders New, Pending Booking, Declined and Completed).
pub const ACTIONABLE: &[&str] = &[
    "requested",
    "received",
    "accepted",
    "in-progress",
    "on-hold",
    "ready",
    "rejected",
    "cancelled",
    "completed",
];

/// Statuses a booked referral may be closed as `completed` from, whatever the table says:
/// Ocean closes booked referrals itself, and its own clients complete them.
const BOOKED_COMPLETES_FROM: &[&str] = &[
    "requested",
    "received",
    "accepted",
    "ready",
    "in-progress",
    "on-hold",
];

/// The built-in table: current status → statuses it may move to. FHIR's typical Task flow,
/// plus Ocean's reopening of a declined (rejected or cancelled) referral.
const DEFAULT: &[(&str, &[&str])] = &[
    (
        "requested",
        &["received", "accepted", "rejected", "cancelled"],
    ),
    ("received", &["accepted", "rejected", "cancelled"]),
    ("accepted", &["in-progress", "cancelled"]),
    ("ready", &["in-progress", "cancelled"]),
    ("in-progress", &["on-hold", "completed", "failed"]),
    ("on-hold", &["in-progress"]),
    ("rejected", &["requested", "received", "accepted"]),
    ("cancelled", &["requested", "received", "accepted"]),
];

/// The effective table.
#[derive(Debug, Clone)]
pub struct Transitions(BTreeMap<String, Vec<String>>);

impl Transitions {
    /// The built-in table with the rows in `overrides` replaced.
    pub fn new(overrides: &BTreeMap<String, Vec<String>>) -> Self {
        let mut table: BTreeMap<String, Vec<String>> = DEFAULT
            .iter()
            .map(|(from, to)| {
                (
                    (*from).to_owned(),
                    to.iter().map(|s| (*s).to_owned()).collect(),
                )
            })
            .collect();
        table.extend(overrides.clone());
        Self(table)
    }

    /// The statuses `from` may move to that Ocean acts on ([`ACTIONABLE`]), in the table's
    /// order (and `completed` last for a `booked` referral that may be closed).
    pub fn next(&self, from: &str, booked: bool) -> Vec<String> {
        let mut next: Vec<String> = self
            .0
            .get(from)
            .into_iter()
            .flatten()
            .filter(|to| ACTIONABLE.contains(&to.as_str()))
            .cloned()
            .collect();
        if self.allows(from, "completed", booked) && !next.iter().any(|n| n == "completed") {
            next.push("completed".into());
        }
        next
    }

    /// Whether a referral at `from` may move to `to`: the table's row, and for a `booked`
    /// referral also `completed` from any status it may be closed from.
    pub fn allows(&self, from: &str, to: &str, booked: bool) -> bool {
        let by_table = self
            .0
            .get(from)
            .is_some_and(|next| next.iter().any(|n| n == to));
        by_table || (booked && to == "completed" && BOOKED_COMPLETES_FROM.contains(&from))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_follows_fhir_and_lets_a_declined_referral_reopen() {
        let t = Transitions::new(&BTreeMap::new());
        assert!(t.allows("requested", "accepted", false));
        assert!(t.allows("accepted", "in-progress", false));
        assert!(!t.allows("accepted", "requested", false));
        assert!(t.allows("rejected", "accepted", false));
        assert!(!t.allows("completed", "accepted", false));
        let custom = Transitions::new(&BTreeMap::from([(
            "accepted".to_owned(),
            vec!["on-hold".to_owned()],
        )]));
        assert!(custom.allows("accepted", "on-hold", false));
        assert!(!custom.allows("accepted", "in-progress", false));
        assert!(custom.allows("requested", "accepted", false));
        assert_eq!(t.next("accepted", false), ["in-progress", "cancelled"]);
        // `failed` is FHIR's, not a status Ocean acts on: not offered.
        assert_eq!(t.next("in-progress", false), ["on-hold", "completed"]);
        assert!(t.next("completed", false).is_empty());
    }

    #[test]
    fn a_booked_referral_may_be_closed_as_completed() {
        let t = Transitions::new(&BTreeMap::new());
        assert!(t.allows("in-progress", "completed", false));
        assert!(!t.allows("accepted", "completed", false));
        assert!(t.allows("accepted", "completed", true));
        assert!(t.allows("on-hold", "completed", true));
        // Ocean closes booked referrals whatever their Task says; not a declined one, nor
        // one already closed.
        assert!(t.allows("requested", "completed", true));
        assert!(!t.allows("requested", "completed", false));
        assert!(!t.allows("rejected", "completed", true));
        assert!(!t.allows("completed", "completed", true));
        assert_eq!(
            t.next("accepted", true),
            ["in-progress", "cancelled", "completed"]
        );
    }
}
