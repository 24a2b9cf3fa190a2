//! What screening reads of a draft referral in a CDS Hooks `order-sign` request: the patient's
//! birth date and postal code, the eForm's answers by linkId, and the codes of what is asked
//! for. Ocean puts the draft in the `v11Bundle` prefetch as a v0.11 `add-service-request`
//! message Bundle; the standard `patient` and `questionnaireResponse` prefetches and the hook's
//! `context.draftOrders` are read too, for a client that fills only those.
//!
//! Everything is read leniently, each fact on its own: a part that is missing or malformed
//! leaves that fact unknown (and the rule needing it silent), never the others.

use serde_json::Value;
use time::{Date, Month};

/// How deep eForm items are followed (items within answers within items ...).
const MAX_ITEM_DEPTH: usize = 32;

/// At most this many eForm items are read: a real form has a few hundred.
const MAX_ITEMS: usize = 10_000;

/// At most this many codings of what is asked for are read: a referral has a few.
const MAX_CODINGS: usize = 1_000;

/// The facts of a draft referral screening looks at. Holds patient data: never logged.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct DraftReferral {
    /// The patient's birth date, as precise as it was given.
    pub birth_date: Option<BirthDate>,
    /// The patient's postal code (home address first), upper case without spaces.
    pub postal_code: Option<String>,
    /// The eForm's items; `None` when the request carries no QuestionnaireResponse with a list
    /// of items.
    pub items: Option<Vec<FormItem>>,
    /// Whether reading the eForm stopped early (items nested deeper than 32, or more than
    /// 10,000): an item not found may then be there.
    pub items_cut: bool,
    /// Codes of the ServiceRequest's `code`, `category` and `reasonCode`.
    pub codings: Vec<DraftCoding>,
    /// The External Service IDs of the listings the draft is addressed to (the target
    /// PractitionerRole's identifier, the MessageHeader's destination); empty when it names none.
    pub service_ids: Vec<String>,
}

/// A birth date: a day, or the first and last day of the month or year given (FHIR `date`
/// allows `YYYY` and `YYYY-MM`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BirthDate {
    pub earliest: Date,
    pub latest: Date,
}

/// One eForm item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormItem {
    pub link_id: String,
    /// The question's text as the form showed it.
    pub text: Option<String>,
    /// Whether some answer holds a value.
    pub answered: bool,
    /// Whether some answer is a `valueAttachment`.
    pub attachment: bool,
}

/// A coding of what the referral asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DraftCoding {
    pub system: Option<String>,
    pub code: String,
    pub display: Option<String>,
}

/// Reads the draft referral of an `order-sign` request (the whole request body).
pub fn read_draft(request: &Value) -> DraftReferral {
    let prefetch = request.get("prefetch");
    let mut resources: Vec<&Value> = Vec::new();
    if let Some(bundle) = prefetch.and_then(|p| p.get("v11Bundle")) {
        collect(bundle, &mut resources, 0);
    }
    if let Some(orders) = request.get("context").and_then(|c| c.get("draftOrders")) {
        collect(orders, &mut resources, 0);
    }
    for name in ["patient", "questionnaireResponse"] {
        if let Some(resource) = prefetch.and_then(|p| p.get(name)) {
            collect(resource, &mut resources, 0);
        }
    }
    let of_kind = |kind: &'static str| {
        resources
            .iter()
            .copied()
            .filter(move |r| r.get("resourceType").and_then(Value::as_str) == Some(kind))
    };
    let patients: Vec<&Value> = of_kind("Patient").collect();
    // A form whose `item` is not a list cannot say what was answered: as good as no form.
    let forms: Vec<&Value> = of_kind("QuestionnaireResponse")
        .filter(|f| f.get("item").is_some_and(Value::is_array))
        .collect();
    let mut items_cut = false;
    let items = (!forms.is_empty()).then(|| {
        let mut items = Vec::new();
        for form in forms {
            items_cut |= !read_items(form, &mut items, 0);
        }
        items
    });
    let mut service_ids: Vec<String> = Vec::new();
    for role in of_kind("PractitionerRole") {
        service_ids.extend(external_service(role));
    }
    for header in of_kind("MessageHeader") {
        for destination in header
            .get("destination")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(receiver) = destination.get("receiver") {
                service_ids.extend(external_service(receiver));
            }
        }
    }
    service_ids.sort_unstable();
    service_ids.dedup();
    // Each fact from the first Patient that has it: the draft's Patient may lack what the
    // `patient` prefetch holds.
    DraftReferral {
        birth_date: patients.iter().find_map(|p| {
            p.get("birthDate")
                .and_then(Value::as_str)
                .and_then(birth_date)
        }),
        postal_code: patients.iter().find_map(|p| postal_code(p)),
        items,
        items_cut,
        codings: of_kind("ServiceRequest")
            .flat_map(codings)
            .take(MAX_CODINGS)
            .collect(),
        service_ids,
    }
}

/// The External Service IDs of a PractitionerRole's `identifier`s, or of a Reference's
/// `identifier` (`MessageHeader.destination.receiver`), by the system's suffix.
fn external_service(value: &Value) -> Vec<String> {
    let identifiers: Vec<&Value> = match value.get("identifier") {
        Some(Value::Array(list)) => list.iter().collect(),
        Some(one @ Value::Object(_)) => vec![one],
        _ => Vec::new(),
    };
    identifiers
        .into_iter()
        .filter(|i| {
            i.get("system")
                .and_then(Value::as_str)
                .is_some_and(|s| s.ends_with(crate::ig::SYS_EXTERNAL_SERVICE))
        })
        .filter_map(|i| i.get("value").and_then(Value::as_str))
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The resources of `value`: itself, or a Bundle's entries (a message Bundle, or a searchset
/// holding one).
fn collect<'a>(value: &'a Value, into: &mut Vec<&'a Value>, depth: usize) {
    if depth > 2 || !value.is_object() {
        return;
    }
    if value.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        into.push(value);
        return;
    }
    for entry in value
        .get("entry")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(resource) = entry.get("resource") {
            collect(resource, into, depth + 1);
        }
    }
}

/// A FHIR `date` (`YYYY`, `YYYY-MM` or `YYYY-MM-DD`) as the days it may be.
fn birth_date(text: &str) -> Option<BirthDate> {
    let mut parts = text.split('-');
    let year: i32 = number(parts.next()?, 4)?;
    let month = parts
        .next()
        .map(|m| number::<u8>(m, 2))
        .map(|m| m.and_then(|m| Month::try_from(m).ok()));
    let day = parts.next().map(|d| number::<u8>(d, 2));
    if parts.next().is_some() || !(1..=9999).contains(&year) {
        return None;
    }
    match (month, day) {
        (None, _) => Some(BirthDate {
            earliest: Date::from_calendar_date(year, Month::January, 1).ok()?,
            latest: Date::from_calendar_date(year, Month::December, 31).ok()?,
        }),
        (Some(month), None) => {
            let month = month?;
            Some(BirthDate {
                earliest: Date::from_calendar_date(year, month, 1).ok()?,
                latest: Date::from_calendar_date(year, month, month.length(year)).ok()?,
            })
        }
        (Some(month), Some(day)) => {
            let date = Date::from_calendar_date(year, month?, day?).ok()?;
            Some(BirthDate {
                earliest: date,
                latest: date,
            })
        }
    }
}

/// `text` as a number of exactly `digits` ASCII digits.
fn number<T: std::str::FromStr>(text: &str, digits: usize) -> Option<T> {
    (text.len() == digits && text.bytes().all(|b| b.is_ascii_digit()))
        .then(|| text.parse().ok())
        .flatten()
}

/// The postal code of the home address, else of the first current address that has one.
fn postal_code(patient: &Value) -> Option<String> {
    let addresses = patient.get("address").and_then(Value::as_array)?;
    let with_code = |a: &&Value| {
        a.get("postalCode")
            .and_then(Value::as_str)
            .is_some_and(|c| !c.trim().is_empty())
    };
    let use_of = |a: &Value| a.get("use").and_then(Value::as_str).map(str::to_owned);
    let address = addresses
        .iter()
        .filter(with_code)
        .find(|a| use_of(a).as_deref() == Some("home"))
        .or_else(|| {
            addresses
                .iter()
                .filter(with_code)
                .find(|a| use_of(a).as_deref() != Some("old"))
        })?;
    let code = normal_postal(address.get("postalCode")?.as_str()?);
    (!code.is_empty() && code.len() <= 16).then_some(code)
}

/// A postal code or prefix as compared: upper case, without spaces or dashes.
pub fn normal_postal(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .flat_map(char::to_uppercase)
        .collect()
}

/// Every item of a QuestionnaireResponse, depth first; false when it stopped early (too deep,
/// too many).
fn read_items(node: &Value, into: &mut Vec<FormItem>, depth: usize) -> bool {
    let Some(items) = node.get("item").and_then(Value::as_array) else {
        return true;
    };
    if depth > MAX_ITEM_DEPTH {
        return false;
    }
    let mut whole = true;
    for item in items {
        if into.len() >= MAX_ITEMS {
            return false;
        }
        let answers = item.get("answer").and_then(Value::as_array);
        let values = || {
            answers
                .into_iter()
                .flatten()
                .filter_map(Value::as_object)
                .flat_map(|a| {
                    a.iter()
                        .filter(|(key, value)| key.starts_with("value") && has_value(value))
                })
        };
        if let Some(link_id) = item.get("linkId").and_then(Value::as_str) {
            into.push(FormItem {
                link_id: link_id.to_owned(),
                text: item
                    .get("text")
                    .and_then(Value::as_str)
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(str::to_owned),
                answered: values().next().is_some(),
                attachment: values()
                    .any(|(key, value)| key == "valueAttachment" && value.is_object()),
            });
        }
        whole &= read_items(item, into, depth + 1);
        for answer in answers.into_iter().flatten() {
            whole &= read_items(answer, into, depth + 1);
        }
    }
    whole
}

/// Whether an answer's value says something (an empty string or object does not).
fn has_value(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::String(s) => !s.trim().is_empty(),
        Value::Object(o) => !o.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Bool(_) | Value::Number(_) => true,
    }
}

/// The codings of a ServiceRequest's `code`, `category` and `reasonCode`.
fn codings(request: &Value) -> Vec<DraftCoding> {
    let mut concepts: Vec<&Value> = request.get("code").into_iter().collect();
    for name in ["category", "reasonCode"] {
        concepts.extend(
            request
                .get(name)
                .and_then(Value::as_array)
                .into_iter()
                .flatten(),
        );
    }
    concepts
        .into_iter()
        .flat_map(|c| {
            c.get("coding")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
        })
        .filter_map(|coding| {
            let text = |name: &str| {
                coding
                    .get(name)
                    .and_then(Value::as_str)
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(str::to_owned)
            };
            Some(DraftCoding {
                code: text("code")?,
                system: text("system"),
                display: text("display"),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use time::macros::date;

    fn request(bundle: Value) -> Value {
        json!({"hook": "order-sign", "context": {}, "prefetch": {"v11Bundle": bundle}})
    }

    fn message(resources: Vec<Value>) -> Value {
        let entry: Vec<Value> = resources
            .into_iter()
            .map(|r| json!({"resource": r}))
            .collect();
        json!({"resourceType": "Bundle", "type": "message", "entry": entry})
    }

    #[test]
    fn the_fixture_referral_reads_whole() {
        let text = include_str!("../../fhir-fixtures/v0.11-add-service-request.json");
        let bundle: Value = serde_json::from_str(text).unwrap();
        let draft = read_draft(&request(bundle));
        let born = date!(1961 - 04 - 09);
        assert_eq!(
            draft.birth_date,
            Some(BirthDate {
                earliest: born,
                latest: born
            })
        );
        assert_eq!(draft.postal_code.as_deref(), Some("X0X0X0"));
        let items = draft.items.unwrap();
        let urgency = items
            .iter()
            .find(|i| i.link_id == "referral.urgency")
            .unwrap();
        assert!(urgency.answered && !urgency.attachment);
        assert_eq!(urgency.text.as_deref(), Some("Urgency"));
        let group = items.iter().find(|i| i.link_id == "referral").unwrap();
        assert!(!group.answered);
    }

    #[test]
    fn partial_dates_span_their_month_or_year_and_nonsense_is_unknown() {
        assert_eq!(
            birth_date("1961"),
            Some(BirthDate {
                earliest: date!(1961 - 01 - 01),
                latest: date!(1961 - 12 - 31)
            })
        );
        assert_eq!(
            birth_date("2024-02"),
            Some(BirthDate {
                earliest: date!(2024 - 02 - 01),
                latest: date!(2024 - 02 - 29)
            })
        );
        for bad in [
            "",
            "61",
            "1961-13",
            "1961-02-30",
            "1961-4-9",
            "1961-04-09T00:00",
            "banana",
            "0000",
        ] {
            assert_eq!(birth_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_searchset_wrapping_the_message_and_the_standard_prefetches_are_read() {
        let patient = json!({"resourceType": "Patient", "birthDate": "2001-05-06",
            "address": [{"use": "old", "postalCode": "A1A 1A1"}, {"use": "work", "postalCode": "m5v-2t6"}]});
        let searchset = json!({"resourceType": "Bundle", "type": "searchset",
            "entry": [{"resource": message(vec![patient])}]});
        let draft = read_draft(&request(searchset));
        assert_eq!(draft.postal_code.as_deref(), Some("M5V2T6"));
        assert!(draft.items.is_none());

        let alone = json!({"hook": "order-sign",
            "context": {"draftOrders": {"resourceType": "Bundle", "entry": [{"resource":
                {"resourceType": "ServiceRequest", "reasonCode": [{"coding": [{"system": "http://snomed.info/sct", "code": "29857009", "display": "Chest pain"}]}]}}]}},
            "prefetch": {"patient": {"resourceType": "Patient", "birthDate": "1990"},
                "questionnaireResponse": {"resourceType": "QuestionnaireResponse",
                    "item": [{"linkId": "ecg", "answer": [{"valueAttachment": {"contentType": "application/pdf", "url": "Binary/1"},
                        "item": [{"linkId": "ecg.date", "answer": [{"valueDate": "2026-11-01"}]}]}]},
                        {"linkId": "empty", "answer": [{"valueString": "  "}]}]}}});
        let draft = read_draft(&alone);
        assert_eq!(draft.birth_date.unwrap().earliest, date!(1990 - 01 - 01));
        let items = draft.items.unwrap();
        let find = |id: &str| items.iter().find(|i| i.link_id == id).unwrap().clone();
        assert!(find("ecg").attachment && find("ecg.date").answered && !find("empty").answered);
        assert_eq!(draft.codings[0].code, "29857009");
        assert_eq!(draft.codings[0].display.as_deref(), Some("Chest pain"));
    }

    #[test]
    fn each_patient_fact_comes_from_the_first_patient_holding_it_and_listings_are_read() {
        let bundle = message(vec![
            json!({"resourceType": "MessageHeader", "destination": [{"receiver": {"identifier":
                {"system": "https://x.example/svc/fhir/v1/NamingSystem/id-referral-target-external-service", "value": "CARDIO-RAPID-01"}}}]}),
            json!({"resourceType": "PractitionerRole", "identifier": [{"system": "https://x.example/svc/fhir/v1/NamingSystem/id-referral-target-external-service", "value": " PHYSIO-EAST-02 "}]}),
            json!({"resourceType": "Patient", "address": [{"postalCode": "M4W 1A8"}]}),
        ]);
        let mut body = request(bundle);
        body["prefetch"]["patient"] = json!({"resourceType": "Patient", "birthDate": "1940-02-03", "address": [{"postalCode": "K1A 0B1"}]});
        let draft = read_draft(&body);
        assert_eq!(draft.birth_date.unwrap().earliest, date!(1940 - 02 - 03));
        assert_eq!(draft.postal_code.as_deref(), Some("M4W1A8"));
        assert_eq!(draft.service_ids, ["CARDIO-RAPID-01", "PHYSIO-EAST-02"]);
    }

    #[test]
    fn a_form_too_deep_or_too_long_is_read_in_part_and_says_so() {
        let mut item = json!({"linkId": "deepest", "answer": [{"valueString": "x"}]});
        for depth in 0..40 {
            item = json!({"linkId": format!("level-{depth}"), "item": [item]});
        }
        let deep = read_draft(&request(message(vec![
            json!({"resourceType": "QuestionnaireResponse", "item": [item]}),
        ])));
        assert!(deep.items_cut);
        assert!(!deep.items.unwrap().iter().any(|i| i.link_id == "deepest"));
        let many: Vec<Value> = (0..MAX_ITEMS + 5)
            .map(|i| json!({"linkId": format!("i{i}")}))
            .collect();
        let long = read_draft(&request(message(vec![
            json!({"resourceType": "QuestionnaireResponse", "item": many}),
        ])));
        assert!(long.items_cut);
        let fixture = include_str!("../../fhir-fixtures/v0.11-add-service-request.json");
        let whole = read_draft(&request(serde_json::from_str(fixture).unwrap()));
        assert!(!whole.items_cut);
    }

    #[test]
    fn malformed_parts_leave_only_their_own_fact_unknown() {
        for prefetch in [
            json!(null),
            json!("a string"),
            json!([1, 2]),
            json!({"resourceType": "Bundle", "entry": "not a list"}),
            json!({"resourceType": "Bundle", "entry": [{"resource": 7}, {"nothing": true}]}),
        ] {
            assert_eq!(read_draft(&request(prefetch)), DraftReferral::default());
        }
        let bundle = message(vec![
            json!({"resourceType": "Patient", "birthDate": 1961, "address": [{"postalCode": "M4W 1A8"}]}),
            json!({"resourceType": "QuestionnaireResponse", "item": [{"linkId": 5}, {"linkId": "ok", "answer": "no"}]}),
            json!({"resourceType": "ServiceRequest", "code": {"coding": [{"code": ""}, {"system": "s", "code": "c"}]}, "category": "x"}),
        ]);
        let draft = read_draft(&request(bundle));
        assert_eq!(draft.birth_date, None);
        assert_eq!(draft.postal_code.as_deref(), Some("M4W1A8"));
        assert_eq!(draft.items.unwrap().len(), 1);
        assert_eq!(draft.codings.len(), 1);
        assert_eq!(
            read_draft(&json!("not an object")),
            DraftReferral::default()
        );
    }
}
