//! `/console/screening`: each listing's screening rules (the CDS Hooks services, see
//! [`crate::screening`]) in words, and how often each fired: in the last 30 days and since
//! counting began. A user limited to some service ids sees those listings only.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::response::Response;
use serde::Serialize;
use time::{Duration, OffsetDateTime};

use super::PageError;
use super::session::ConsoleUser;
use super::templates::render;
use crate::config::{ScreeningRule, ScreeningRules};
use crate::screening::configured_rules;
use crate::state::AppState;
use crate::store::{LATE, NO_CARD, SCREENED, ScreeningTally};

/// Before any count: "in all" reads from here (a date both stores' date types hold).
const COUNTING_BEGAN: time::Date = time::macros::date!(2000 - 01 - 01);

/// Days the first count column covers.
const RECENT_DAYS: i64 = 30;

#[derive(Serialize)]
struct RuleRow {
    rule: &'static str,
    says: String,
    indicator: &'static str,
}

#[derive(Serialize, Default)]
struct CountRow {
    /// A rule's name, or `screened` (referrals screened) / `no card`.
    what: String,
    indicator: String,
    recent: u64,
    total: u64,
}

#[derive(Serialize)]
struct ListingView {
    service_id: String,
    cds_id: String,
    title: String,
    rules: Vec<RuleRow>,
    counts: Vec<CountRow>,
}

/// A rule as the page says it.
fn says(rule: ScreeningRule, rules: &ScreeningRules) -> String {
    let items = |items: &[crate::config::RequiredItem]| {
        items
            .iter()
            .map(|i| match i.label() {
                Some(label) => format!("{label} ({})", i.link_id()),
                None => i.link_id().to_owned(),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    match rule {
        ScreeningRule::Age => match (rules.min_age_years, rules.max_age_years) {
            (Some(min), Some(max)) => format!("patients aged {min} to {max}"),
            (Some(min), None) => format!("patients aged {min} and over"),
            (None, Some(max)) => format!("patients aged {max} and under"),
            (None, None) => String::new(),
        },
        ScreeningRule::Catchment => {
            format!(
                "postal codes beginning {}",
                rules.postal_prefixes.join(", ")
            )
        }
        ScreeningRule::Answers => format!("answered: {}", items(&rules.required_answers)),
        ScreeningRule::Attachments => format!("attached: {}", items(&rules.required_attachments)),
        ScreeningRule::DeclinedCodes => format!("not taken: {}", rules.declined_codes.join(", ")),
        ScreeningRule::Notice => rules.notice.clone(),
    }
}

/// The counts of one service, summed over days: referrals screened first, then by their most
/// urgent card from none to critical, then the calls answered late (no card, not counted as
/// screened), then each rule's cards in the order cards come.
fn counts(tallies: &[&ScreeningTally], recent_from: time::Date) -> Vec<CountRow> {
    let mut by: BTreeMap<(usize, String), CountRow> = BTreeMap::new();
    for t in tallies {
        let mut add = |order: usize, what: String, indicator: &str| {
            let row = by
                .entry((order, indicator.to_owned()))
                .or_insert_with(|| CountRow {
                    what,
                    indicator: indicator.to_owned(),
                    ..CountRow::default()
                });
            row.total += t.count;
            if t.day >= recent_from {
                row.recent += t.count;
            }
        };
        if t.rule == SCREENED {
            let urgency = ["none", "info", "warning", "critical"]
                .iter()
                .position(|i| *i == t.indicator);
            match (t.indicator.as_str(), urgency) {
                (LATE, _) => add(5, "answered late, with no card".into(), LATE),
                (_, Some(0)) => {
                    add(0, "referrals screened".into(), "");
                    add(1, "with no card".into(), NO_CARD);
                }
                (other, urgency) => {
                    add(0, "referrals screened".into(), "");
                    add(
                        1 + urgency.unwrap_or(4),
                        format!("most urgent card {other}"),
                        other,
                    );
                }
            }
        } else {
            let order = ScreeningRule::ALL
                .iter()
                .position(|r| r.as_str() == t.rule)
                .unwrap_or(ScreeningRule::ALL.len());
            add(10 + order, t.rule.clone(), &t.indicator);
        }
    }
    by.into_values().collect()
}

/// `GET /console/screening`.
pub async fn page(State(state): State<AppState>, user: ConsoleUser) -> Result<Response, PageError> {
    let scope = user.scope();
    let today = OffsetDateTime::now_utc().date();
    let recent_from = today - Duration::days(RECENT_DAYS - 1);
    let tallies = state.store.screening_tallies(COUNTING_BEGAN).await?;
    let listings: Vec<ListingView> = state
        .screening
        .listings()
        .filter(|l| scope.may_see(Some(&l.service_id)))
        .map(|l| {
            let mine: Vec<&ScreeningTally> = tallies
                .iter()
                .filter(|t| t.service_id == l.service_id.as_str())
                .collect();
            ListingView {
                service_id: l.service_id.to_string(),
                cds_id: l.cds_id.clone(),
                title: l.title.clone(),
                rules: configured_rules(&l.rules)
                    .into_iter()
                    .map(|rule| RuleRow {
                        rule: rule.as_str(),
                        says: says(rule, &l.rules),
                        indicator: l.rules.indicator(rule).as_str(),
                    })
                    .collect(),
                counts: counts(&mine, recent_from),
            }
        })
        .collect();
    Ok(render(
        "screening.html",
        minijinja::context! {
            section => "screening",
            listings => listings,
            recent_days => RECENT_DAYS,
            scheme => state.cds_auth.scheme(),
            configured => state.screening.listings().count(),
            ..user.header()
        },
    ))
}
