//! Screening referrals before they are sent: the relay as a CDS Hooks 2.0 service for Ocean's
//! `order-sign` hook. Each listing with `[screening."<External Service ID>"]` rules is one CDS
//! service; its answer is a card per rule the draft referral breaks (plus the listing's
//! notice), and never an error of its own making: a rule that cannot be evaluated gives no card.
//!
//! What fired is counted by day, service, rule and indicator ([`Tallies`], kept in memory and
//! added to the store every few seconds), never with anything about the patient.

pub mod cards;
pub mod rules;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use time::Date;

use crate::config::{Config, Indicator, ScreeningRule, ScreeningRules};
use crate::domain::ServiceId;
use crate::store::{LATE, NO_CARD, SCREENED, ScreeningTally, Store, StoreError};
use cards::{Card, Discovery, HOOK, PREFETCH, ServiceEntry, Source};
use rules::Finding;

/// How often counts are added to the store.
const RECORD_EVERY: Duration = Duration::from_secs(5);

/// One listing's screening service.
pub struct Listing {
    pub service_id: ServiceId,
    /// `/cds-services/{cds_id}`.
    pub cds_id: String,
    pub title: String,
    pub rules: ScreeningRules,
}

impl Listing {
    /// The findings of its rules on the draft referral of `request` (an `order-sign` request
    /// body), on `today` (UTC); `None` when the draft is addressed to another listing (a client
    /// calls every service it discovered: another listing's rules say nothing about it).
    pub fn screen(&self, request: &Value, today: Date) -> Option<Vec<Finding>> {
        let draft = crate::fhir::draft::read_draft(request);
        if !draft.service_ids.is_empty()
            && !draft
                .service_ids
                .iter()
                .any(|s| s == self.service_id.as_str())
        {
            return None;
        }
        Some(rules::findings(&self.rules, &draft, today))
    }

    /// `findings` as cards.
    pub fn cards(&self, findings: &[Finding]) -> Vec<Card> {
        let source = Source {
            label: self.title.clone(),
            url: (!self.rules.url.is_empty()).then(|| self.rules.url.clone()),
        };
        findings
            .iter()
            .map(|f| Card {
                uuid: uuid::Uuid::new_v4().to_string(),
                summary: f.summary.clone(),
                detail: Some(f.detail.clone()),
                indicator: f.indicator,
                source: source.clone(),
            })
            .collect()
    }
}

/// The configured screening services and their counts.
pub struct Screening {
    /// By CDS service id.
    listings: BTreeMap<String, Listing>,
    pub tallies: Tallies,
    /// Requests parsed and screened at once: a permit per core, so a flood of large bodies
    /// (with `cds_hooks.auth` none, from anyone) queues for CPU and memory instead of taking
    /// them all; a request not screened within its answer time gets no card.
    pub parsing: Arc<tokio::sync::Semaphore>,
    /// Bodies held from callers that authenticate with nothing (`cds_hooks.auth` none): four
    /// bodies' worth in all, two for one client. Their own budget, so that a flood here never
    /// refuses the webhook's deliveries.
    pub bodies: Arc<crate::auth::budget::Budget>,
}

impl Screening {
    pub fn new(config: &Config) -> Self {
        let listings = config
            .screening
            .iter()
            .map(|(service, rules)| {
                let listing = Listing {
                    service_id: service.clone(),
                    cds_id: rules.cds_id(service).to_owned(),
                    title: rules.title(service),
                    rules: rules.clone(),
                };
                (listing.cds_id.clone(), listing)
            })
            .collect();
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        Self {
            listings,
            tallies: Tallies::default(),
            parsing: Arc::new(tokio::sync::Semaphore::new(cores.max(2))),
            bodies: crate::auth::budget::Budget::new(
                config.cds_hooks.max_body_bytes.saturating_mul(4),
                config.cds_hooks.max_body_bytes.saturating_mul(2),
            ),
        }
    }

    /// The listing answering to `cds_id`.
    pub fn listing(&self, cds_id: &str) -> Option<&Listing> {
        self.listings.get(cds_id)
    }

    /// Every listing, by CDS service id.
    pub fn listings(&self) -> impl Iterator<Item = &Listing> {
        self.listings.values()
    }

    /// `GET /cds-services`.
    pub fn discovery(&self) -> Discovery {
        Discovery {
            services: self
                .listings
                .values()
                .map(|l| ServiceEntry {
                    hook: HOOK,
                    title: l.title.clone(),
                    description: format!(
                        "Checks a referral to {} against the clinic's acceptance rules before it is sent.",
                        l.service_id
                    ),
                    id: l.cds_id.clone(),
                    prefetch: PREFETCH.into_iter().collect(),
                })
                .collect(),
        }
    }
}

type TallyKey = (Date, ServiceId, &'static str, &'static str);

/// Counts not yet in the store.
#[derive(Default)]
pub struct Tallies {
    pending: Mutex<HashMap<TallyKey, u64>>,
}

impl Tallies {
    /// Counts one screened referral of `service` on `day` and the cards it got.
    pub fn count(&self, service: &ServiceId, day: Date, findings: &[Finding]) {
        let most_urgent = findings
            .iter()
            .map(|f| f.indicator)
            .max()
            .map_or(NO_CARD, Indicator::as_str);
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        *pending
            .entry((day, service.clone(), SCREENED, most_urgent))
            .or_default() += 1;
        for finding in findings {
            let key = (
                day,
                service.clone(),
                finding.rule.as_str(),
                finding.indicator.as_str(),
            );
            *pending.entry(key).or_default() += 1;
        }
    }

    /// Counts one call of `service` on `day` answered with no card because its answer was not
    /// ready in time.
    pub fn count_late(&self, service: &ServiceId, day: Date) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        *pending
            .entry((day, service.clone(), SCREENED, LATE))
            .or_default() += 1;
    }

    /// Adds the pending counts to the store; on failure they are kept for the next try.
    pub async fn record(&self, store: &dyn Store) -> Result<(), StoreError> {
        let taken = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        if taken.is_empty() {
            return Ok(());
        }
        let tallies: Vec<ScreeningTally> = taken
            .iter()
            .map(|((day, service, rule, indicator), count)| ScreeningTally {
                day: *day,
                service_id: service.to_string(),
                rule: (*rule).to_owned(),
                indicator: (*indicator).to_owned(),
                count: *count,
            })
            .collect();
        let result = store.add_screening_tallies(&tallies).await;
        if result.is_err() {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            for (key, count) in taken {
                *pending.entry(key).or_default() += count;
            }
        }
        result
    }
}

/// Adds the counts to the store every few seconds until `stop`; the caller records the last
/// ones after the server stopped.
pub async fn record_tallies(
    screening: Arc<Screening>,
    store: Arc<dyn Store>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(RECORD_EVERY) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if let Err(e) = screening.tallies.record(store.as_ref()).await {
            tracing::warn!(error = %e, "cannot record screening counts; kept for the next try");
        }
    }
}

/// The rules a listing has, in the order cards come.
pub fn configured_rules(rules: &ScreeningRules) -> Vec<ScreeningRule> {
    ScreeningRule::ALL
        .into_iter()
        .filter(|rule| match rule {
            ScreeningRule::Age => rules.min_age_years.is_some() || rules.max_age_years.is_some(),
            ScreeningRule::Catchment => !rules.postal_prefixes.is_empty(),
            ScreeningRule::Answers => !rules.required_answers.is_empty(),
            ScreeningRule::Attachments => !rules.required_attachments.is_empty(),
            ScreeningRule::DeclinedCodes => !rules.declined_codes.is_empty(),
            ScreeningRule::Notice => !rules.notice.trim().is_empty(),
        })
        .collect()
}
