//! Each acceptance rule against a draft referral: at most one finding per rule, and none when
//! the rule is not configured or the referral holds too little to tell (no birth date, no
//! postal code, no eForm). Findings name what to fix and say no more about the patient than
//! the request did (an age derived from its birth date, the first three characters of its
//! postal code).

use time::Date;

use super::cards::{plain, summary};
use crate::config::{Indicator, RequiredItem, ScreeningRule, ScreeningRules};
use crate::fhir::draft::{BirthDate, DraftReferral, FormItem, normal_postal};

/// What one rule found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub rule: ScreeningRule,
    pub indicator: Indicator,
    /// At most 140 characters.
    pub summary: String,
    /// Markdown.
    pub detail: String,
}

/// Every rule of `rules` against `draft`, on `today` (UTC).
pub fn findings(rules: &ScreeningRules, draft: &DraftReferral, today: Date) -> Vec<Finding> {
    let found = [
        age(rules, draft, today),
        catchment(rules, draft),
        missing(rules, draft, ScreeningRule::Answers),
        missing(rules, draft, ScreeningRule::Attachments),
        declined(rules, draft),
        notice(rules),
    ];
    found
        .into_iter()
        .flatten()
        .map(|(rule, summary_text, detail)| Finding {
            rule,
            indicator: rules.indicator(rule),
            summary: summary(&summary_text),
            detail,
        })
        .collect()
}

type Found = Option<(ScreeningRule, String, String)>;

/// The most declined services or reasons a card names.
const MAX_NAMED: usize = 5;

/// The oldest age taken as real, in years.
const MAX_AGE: u32 = 130;

/// Whole years from `born` to `on`; `None` before birth.
fn years(born: Date, on: Date) -> Option<u32> {
    let mut years = on.year() - born.year();
    if (u8::from(on.month()), on.day()) < (u8::from(born.month()), born.day()) {
        years -= 1;
    }
    u32::try_from(years).ok()
}

/// The ages the patient may be: the birth date may be a month or a year, and "today" is a day
/// apart between UTC and the referrer's clock, so a card is given only when every possible
/// age is outside the range.
fn ages(born: BirthDate, today: Date) -> Option<(u32, u32)> {
    let youngest = years(born.latest, today.previous_day()?)?;
    let oldest = years(born.earliest, today.next_day()?)?;
    Some((youngest, oldest))
}

fn age(rules: &ScreeningRules, draft: &DraftReferral, today: Date) -> Found {
    if rules.min_age_years.is_none() && rules.max_age_years.is_none() {
        return None;
    }
    let (youngest, oldest) = ages(draft.birth_date?, today)?;
    // A birth date this far back is a placeholder (0001-01-01), not an age.
    if oldest > MAX_AGE {
        return None;
    }
    let too_young = rules.min_age_years.is_some_and(|min| oldest < min);
    let too_old = rules.max_age_years.is_some_and(|max| youngest > max);
    if !too_young && !too_old {
        return None;
    }
    let range = match (rules.min_age_years, rules.max_age_years) {
        (Some(min), Some(max)) => format!("aged {min} to {max}"),
        (Some(min), None) => format!("aged {min} and over"),
        (None, Some(max)) => format!("aged {max} and under"),
        (None, None) => return None,
    };
    let is = if youngest == oldest {
        format!("{youngest}")
    } else {
        format!("{youngest} to {oldest}")
    };
    Some((
        ScreeningRule::Age,
        format!("This service takes patients {range}; this patient is {is}."),
        format!(
            "This service takes patients {range} (whole years on the day of the referral), and by \
             the birth date in this referral the patient is {is}. Check the birth date, or refer \
             the patient to a service for their age."
        ),
    ))
}

fn catchment(rules: &ScreeningRules, draft: &DraftReferral) -> Found {
    if rules.postal_prefixes.is_empty() {
        return None;
    }
    let code = draft.postal_code.as_deref()?;
    let prefixes: Vec<String> = rules
        .postal_prefixes
        .iter()
        .map(|p| normal_postal(p))
        .collect();
    if prefixes.iter().any(|p| code.starts_with(p.as_str())) {
        return None;
    }
    let shown: String = code.chars().take(3).collect();
    Some((
        ScreeningRule::Catchment,
        format!("The patient's postal code ({shown}…) is outside this service's catchment."),
        format!(
            "This service takes patients whose postal code begins with {}. Check the patient's \
             address, or refer the patient to a service nearer them.",
            plain(&rules.postal_prefixes.join(", "))
        ),
    ))
}

/// What a card calls an item: its configured label, else its text in the form, else its linkId.
fn label(required: &RequiredItem, items: &[FormItem]) -> String {
    required
        .label()
        .map(str::to_owned)
        .or_else(|| {
            items
                .iter()
                .find(|i| i.link_id == required.link_id())
                .and_then(|i| i.text.clone())
        })
        .unwrap_or_else(|| required.link_id().to_owned())
}

fn missing(rules: &ScreeningRules, draft: &DraftReferral, rule: ScreeningRule) -> Found {
    let (required, holds): (&[RequiredItem], fn(&FormItem) -> bool) = match rule {
        ScreeningRule::Answers => (&rules.required_answers, |i| i.answered),
        _ => (&rules.required_attachments, |i| i.attachment),
    };
    // An item not found in a form read only in part may be in the rest.
    if required.is_empty() || draft.items_cut {
        return None;
    }
    let items = draft.items.as_deref()?;
    let missing: Vec<String> = required
        .iter()
        .filter(|r| !items.iter().any(|i| i.link_id == r.link_id() && holds(i)))
        .map(|r| label(r, items))
        .collect();
    if missing.is_empty() {
        return None;
    }
    let (what, needs) = match rule {
        ScreeningRule::Answers => ("Answer", "these questions of the referral form answered"),
        _ => ("Attach", "these attached to the referral form"),
    };
    let list: String = missing
        .iter()
        .map(|m| format!("\n- {}", plain(m)))
        .collect();
    Some((
        rule,
        format!("{what} what this service needs: {}", missing.join("; ")),
        format!("This service needs {needs} before it is sent:{list}"),
    ))
}

/// Whether a configured `system|code` (or bare `code`) matches a coding.
fn matches(configured: &str, system: Option<&str>, code: &str) -> bool {
    match configured.rsplit_once('|') {
        Some((wanted_system, wanted_code)) => wanted_code == code && system == Some(wanted_system),
        None => configured == code,
    }
}

fn declined(rules: &ScreeningRules, draft: &DraftReferral) -> Found {
    if rules.declined_codes.is_empty() {
        return None;
    }
    // Each name once, the first few shown: a request cannot make this rule's work or its card grow
    // with the square of its codings.
    let mut seen: std::collections::HashSet<&str> = std::collections::HashSet::new();
    let mut names: Vec<String> = Vec::new();
    let mut more = 0usize;
    for coding in &draft.codings {
        if rules
            .declined_codes
            .iter()
            .any(|c| matches(c, coding.system.as_deref(), &coding.code))
        {
            let name = coding.display.as_deref().unwrap_or(&coding.code);
            if seen.insert(name) {
                if names.len() < MAX_NAMED {
                    names.push(name.to_owned());
                } else {
                    more += 1;
                }
            }
        }
    }
    if more > 0 {
        names.push(format!("{more} more"));
    }
    if names.is_empty() {
        return None;
    }
    Some((
        ScreeningRule::DeclinedCodes,
        format!(
            "This service does not take referrals for {}.",
            names.join("; ")
        ),
        format!(
            "This service does not take referrals for: {}. Choose another service for this referral.",
            plain(&names.join("; "))
        ),
    ))
}

fn notice(rules: &ScreeningRules) -> Found {
    let notice = rules.notice.trim();
    (!notice.is_empty()).then(|| (ScreeningRule::Notice, notice.to_owned(), plain(notice)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::draft::DraftCoding;
    use time::macros::date;

    const TODAY: Date = date!(2026 - 12 - 07);

    fn born(day: Date) -> DraftReferral {
        DraftReferral {
            birth_date: Some(BirthDate {
                earliest: day,
                latest: day,
            }),
            ..DraftReferral::default()
        }
    }

    fn adults() -> ScreeningRules {
        ScreeningRules {
            min_age_years: Some(18),
            max_age_years: Some(80),
            ..ScreeningRules::default()
        }
    }

    #[test]
    fn ages_inside_the_range_and_a_day_either_side_of_a_birthday_give_no_card() {
        for day in [
            date!(1990 - 01 - 01),
            date!(2008 - 12 - 06),
            date!(2008 - 12 - 08),
            date!(1945 - 12 - 08),
        ] {
            assert!(findings(&adults(), &born(day), TODAY).is_empty(), "{day}");
        }
    }

    #[test]
    fn too_young_and_too_old_say_so_with_the_range() {
        let found = findings(&adults(), &born(date!(2009 - 06 - 01)), TODAY);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].rule, ScreeningRule::Age);
        assert_eq!(found[0].indicator, Indicator::Warning);
        assert_eq!(
            found[0].summary,
            "This service takes patients aged 18 to 80; this patient is 17."
        );
        let found = findings(&adults(), &born(date!(1940 - 01 - 01)), TODAY);
        assert!(
            found[0].summary.ends_with("this patient is 86."),
            "{}",
            found[0].summary
        );
        let only_min = ScreeningRules {
            min_age_years: Some(65),
            ..ScreeningRules::default()
        };
        let found = findings(&only_min, &born(date!(2000 - 01 - 01)), TODAY);
        assert!(found[0].summary.contains("aged 65 and over"));
    }

    #[test]
    fn an_unknown_or_future_birth_date_gives_no_card() {
        assert!(findings(&adults(), &DraftReferral::default(), TODAY).is_empty());
        assert!(findings(&adults(), &born(date!(2030 - 01 - 01)), TODAY).is_empty());
        // A placeholder, not an age.
        assert!(findings(&adults(), &born(date!(0001 - 01 - 01)), TODAY).is_empty());
        // Born in 2008: 17 or 18 today, so no card.
        let year = DraftReferral {
            birth_date: Some(BirthDate {
                earliest: date!(2008 - 01 - 01),
                latest: date!(2008 - 12 - 31),
            }),
            ..DraftReferral::default()
        };
        assert!(findings(&adults(), &year, TODAY).is_empty());
    }

    #[test]
    fn the_catchment_compares_prefixes_without_case_or_spaces() {
        let rules = ScreeningRules {
            postal_prefixes: vec!["m4".into(), "L5 B".into()],
            ..ScreeningRules::default()
        };
        let at = |code: &str| DraftReferral {
            postal_code: Some(normal_postal(code)),
            ..DraftReferral::default()
        };
        assert!(findings(&rules, &at("M4W 1A8"), TODAY).is_empty());
        assert!(findings(&rules, &at("l5b 2c3"), TODAY).is_empty());
        let found = findings(&rules, &at("K1A 0B1"), TODAY);
        assert_eq!(
            found[0].summary,
            "The patient's postal code (K1A…) is outside this service's catchment."
        );
        assert!(!found[0].detail.contains("0B1"));
        assert!(findings(&rules, &DraftReferral::default(), TODAY).is_empty());
    }

    #[test]
    fn missing_answers_and_attachments_are_named_by_label_text_or_link_id() {
        let rules = ScreeningRules {
            required_answers: vec![
                RequiredItem::LinkId("reason".into()),
                RequiredItem::LinkId("history".into()),
                RequiredItem::Labelled {
                    link_id: "ecg.date".into(),
                    label: Some("Date of the latest ECG".into()),
                },
            ],
            required_attachments: vec![RequiredItem::LinkId("ecg".into())],
            ..ScreeningRules::default()
        };
        let item = |id: &str, text: Option<&str>, answered: bool, attachment: bool| FormItem {
            link_id: id.into(),
            text: text.map(str::to_owned),
            answered,
            attachment,
        };
        let draft = DraftReferral {
            items: Some(vec![
                item("reason", Some("Reason for referral"), true, false),
                item("history", Some("Relevant history"), false, false),
                item("ecg", Some("ECG tracing"), true, false),
            ]),
            ..DraftReferral::default()
        };
        let found = findings(&rules, &draft, TODAY);
        assert_eq!(found.len(), 2);
        assert_eq!(
            found[0].summary,
            "Answer what this service needs: Relevant history; Date of the latest ECG"
        );
        assert!(
            found[0]
                .detail
                .contains("\n- Relevant history\n- Date of the latest ECG")
        );
        assert_eq!(found[1].rule, ScreeningRule::Attachments);
        assert_eq!(
            found[1].summary,
            "Attach what this service needs: ECG tracing"
        );
        // No eForm at all, or one read only in part: nothing can be said.
        assert!(findings(&rules, &DraftReferral::default(), TODAY).is_empty());
        let cut = DraftReferral {
            items_cut: true,
            ..draft
        };
        assert!(findings(&rules, &cut, TODAY).is_empty());
    }

    #[test]
    fn declined_codes_match_with_or_without_a_system() {
        let rules = ScreeningRules {
            declined_codes: vec!["http://snomed.info/sct|183519002".into(), "physio".into()],
            indicators: [(ScreeningRule::DeclinedCodes, Indicator::Critical)].into(),
            ..ScreeningRules::default()
        };
        let coding = |system: Option<&str>, code: &str, display: Option<&str>| DraftCoding {
            system: system.map(str::to_owned),
            code: code.into(),
            display: display.map(str::to_owned),
        };
        let draft = |codings| DraftReferral {
            codings,
            ..DraftReferral::default()
        };
        let found = findings(
            &rules,
            &draft(vec![coding(
                Some("http://snomed.info/sct"),
                "183519002",
                Some("Referral to cardiology service"),
            )]),
            TODAY,
        );
        assert_eq!(
            found[0].summary,
            "This service does not take referrals for Referral to cardiology service."
        );
        assert_eq!(found[0].indicator, Indicator::Critical);
        assert_eq!(
            findings(
                &rules,
                &draft(vec![coding(Some("x"), "physio", None)]),
                TODAY
            )[0]
            .summary,
            "This service does not take referrals for physio."
        );
        assert!(
            findings(
                &rules,
                &draft(vec![coding(Some("http://loinc.org"), "183519002", None)]),
                TODAY
            )
            .is_empty()
        );
    }

    #[test]
    fn the_notice_shows_on_every_referral() {
        let rules = ScreeningRules {
            notice: "Include the latest ECG.".into(),
            ..ScreeningRules::default()
        };
        let found = findings(&rules, &DraftReferral::default(), TODAY);
        assert_eq!(found.len(), 1);
        assert_eq!(
            (found[0].rule, found[0].indicator),
            (ScreeningRule::Notice, Indicator::Info)
        );
        assert_eq!(found[0].summary, "Include the latest ECG.");
    }
}
