//! Which Task status changes a clinic may send: FHIR's Task state machine as Ocean uses it.

use std::collections::BTreeMap;

/// Statuses Ocean acts on (its folders New, Pending Booking and Declined).
pub const ACTIONABLE: &[&str] = &[
    "requested",
    "received",
    "accepted",
    "in-progress",
    "on-hold",
    "ready",
    "rejected",
    "cancelled",
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

    /// The statuses `from` may move to that Ocean acts on ([`ACTIONABLE`]), in the table's order.
    pub fn next(&self, from: &str) -> Vec<String> {
        self.0
            .get(from)
            .into_iter()
            .flatten()
            .filter(|to| ACTIONABLE.contains(&to.as_str()))
            .cloned()
            .collect()
    }

    pub fn allows(&self, from: &str, to: &str) -> bool {
        self.0
            .get(from)
            .is_some_and(|next| next.iter().any(|n| n == to))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_follows_fhir_and_lets_a_declined_referral_reopen() {
        let t = Transitions::new(&BTreeMap::new());
        assert!(t.allows("requested", "accepted"));
        assert!(t.allows("accepted", "in-progress"));
        assert!(!t.allows("accepted", "requested"));
        assert!(t.allows("rejected", "accepted"));
        assert!(!t.allows("completed", "accepted"));
        let custom = Transitions::new(&BTreeMap::from([(
            "accepted".to_owned(),
            vec!["on-hold".to_owned()],
        )]));
        assert!(custom.allows("accepted", "on-hold"));
        assert!(!custom.allows("accepted", "in-progress"));
        assert!(custom.allows("requested", "accepted"));
        assert_eq!(t.next("accepted"), ["in-progress", "cancelled"]);
        // `completed` and `failed` are FHIR's, not statuses Ocean acts on: not offered.
        assert_eq!(t.next("in-progress"), ["on-hold"]);
        assert!(t.next("completed").is_empty());
    }
}
