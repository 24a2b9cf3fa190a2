//! `[screening."SERVICE-ID"]` (a listing's acceptance rules, see [`crate::screening`]) and
//! `[cds_hooks]` (how Ocean's CDS Hooks calls are authenticated and how long an answer may take).

use std::collections::BTreeMap;

use anyhow::bail;
use serde::{Deserialize, Serialize};

use crate::domain::ServiceId;
use crate::secret::Secret;

/// The longest notice, title or label, in characters: a card is read in a referral form.
const MAX_TEXT: usize = 1000;

/// The longest answer time that may be configured, in milliseconds: Ocean waits for the answer
/// while the referrer waits to submit.
const MAX_ANSWER_MS: u64 = 10_000;

/// One rule of a listing's acceptance rules; each produces at most one card.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScreeningRule {
    /// `min_age_years` / `max_age_years`.
    Age,
    /// `postal_prefixes`.
    Catchment,
    /// `required_answers`.
    Answers,
    /// `required_attachments`.
    Attachments,
    /// `declined_codes`.
    DeclinedCodes,
    /// `notice`.
    Notice,
}

impl ScreeningRule {
    pub const ALL: [Self; 6] = [
        Self::Age,
        Self::Catchment,
        Self::Answers,
        Self::Attachments,
        Self::DeclinedCodes,
        Self::Notice,
    ];

    /// The rule's name as configured (`indicators` keys), in metrics and in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Age => "age",
            Self::Catchment => "catchment",
            Self::Answers => "answers",
            Self::Attachments => "attachments",
            Self::DeclinedCodes => "declined_codes",
            Self::Notice => "notice",
        }
    }

    /// The indicator of its card unless `indicators` says otherwise: `info` for the notice,
    /// `warning` for the rest (whether Ocean lets a referrer submit past a `critical` card is
    /// not public, so none is critical unless the clinic says so).
    pub fn default_indicator(self) -> Indicator {
        match self {
            Self::Notice => Indicator::Info,
            _ => Indicator::Warning,
        }
    }
}

/// A CDS Hooks 2.0 card's urgency (`Card.indicator`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Indicator {
    Info,
    Warning,
    Critical,
}

impl Indicator {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Warning => "warning",
            Self::Critical => "critical",
        }
    }
}

/// A questionnaire item the referral must carry, by its `linkId` in the eForm's
/// QuestionnaireResponse; optionally with the label a card calls it by (else the item's own
/// `text` in the response, else the linkId).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    untagged,
    expecting = "a linkId, or { link_id = \"...\", label = \"...\" }"
)]
pub enum RequiredItem {
    LinkId(String),
    Labelled {
        link_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        label: Option<String>,
    },
}

impl RequiredItem {
    pub fn link_id(&self) -> &str {
        match self {
            Self::LinkId(id) | Self::Labelled { link_id: id, .. } => id,
        }
    }

    pub fn label(&self) -> Option<&str> {
        match self {
            Self::LinkId(_) => None,
            Self::Labelled { label, .. } => label.as_deref(),
        }
    }
}

/// One listing's acceptance rules. Every rule is optional; a listing with none still answers
/// (with no card).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScreeningRules {
    /// The CDS service's id, the `{id}` of `/cds-services/{id}`: 1 to 64 of `A-Z a-z 0-9 - . _ ~`.
    /// Empty: the External Service ID itself, which must then be such an id.
    #[serde(default)]
    pub cds_id: String,
    /// The service's title in discovery and the cards' source label. Empty: "Referral
    /// screening: <External Service ID>".
    #[serde(default)]
    pub title: String,
    /// A page about the listing's criteria (absolute https URL), linked from every card as its
    /// source. Empty: none.
    #[serde(default)]
    pub url: String,
    /// The youngest patient taken, in whole years on the day of the referral.
    #[serde(default)]
    pub min_age_years: Option<u32>,
    /// The oldest patient taken, in whole years (80 takes a patient until their 81st birthday).
    #[serde(default)]
    pub max_age_years: Option<u32>,
    /// Postal code prefixes served (the catchment), compared without case or spaces (`"M4"`,
    /// `"L5B"`); empty: no catchment.
    #[serde(default)]
    pub postal_prefixes: Vec<String>,
    /// eForm items that must be answered, by linkId.
    #[serde(default)]
    pub required_answers: Vec<RequiredItem>,
    /// eForm items that must carry an attachment (an answer with `valueAttachment`), by linkId.
    #[serde(default)]
    pub required_attachments: Vec<RequiredItem>,
    /// Services or reasons this listing does not take, as `system|code` or a bare `code` (any
    /// system), matched against the ServiceRequest's `code`, `category` and `reasonCode`.
    #[serde(default)]
    pub declined_codes: Vec<String>,
    /// An info card shown on every referral to this listing (hours, what to include). Empty: none.
    #[serde(default)]
    pub notice: String,
    /// A rule's card indicator instead of its default (`warning`; the notice `info`).
    #[serde(default)]
    pub indicators: BTreeMap<ScreeningRule, Indicator>,
}

impl ScreeningRules {
    /// The id `/cds-services/{id}` answers to.
    pub fn cds_id<'a>(&'a self, service: &'a ServiceId) -> &'a str {
        if self.cds_id.is_empty() {
            service.as_str()
        } else {
            &self.cds_id
        }
    }

    /// The discovery title and card source label.
    pub fn title(&self, service: &ServiceId) -> String {
        if self.title.is_empty() {
            format!("Referral screening: {service}")
        } else {
            self.title.clone()
        }
    }

    /// The indicator of `rule`'s card.
    pub fn indicator(&self, rule: ScreeningRule) -> Indicator {
        self.indicators
            .get(&rule)
            .copied()
            .unwrap_or_else(|| rule.default_indicator())
    }

    fn validate(&self, service: &ServiceId) -> anyhow::Result<()> {
        let key = format!("screening.\"{service}\"");
        let id = self.cds_id(service);
        if !is_cds_id(id) {
            bail!(
                "{key}: the CDS service id must be 1 to 64 of A-Z a-z 0-9 - . _ ~ (it is part of the URL /cds-services/{{id}}); set {key}.cds_id"
            );
        }
        if let (Some(min), Some(max)) = (self.min_age_years, self.max_age_years)
            && min > max
        {
            bail!("{key}.min_age_years ({min}) is above max_age_years ({max})");
        }
        for (name, age) in [
            ("min_age_years", self.min_age_years),
            ("max_age_years", self.max_age_years),
        ] {
            if age.is_some_and(|a| a > 150) {
                bail!("{key}.{name} must be at most 150");
            }
        }
        for (i, prefix) in self.postal_prefixes.iter().enumerate() {
            let normal = crate::fhir::draft::normal_postal(prefix);
            if normal.is_empty()
                || normal.len() > 10
                || !normal.bytes().all(|b| b.is_ascii_alphanumeric())
            {
                bail!("{key}.postal_prefixes[{i}] must be 1 to 10 letters and digits");
            }
        }
        for (name, items) in [
            ("required_answers", &self.required_answers),
            ("required_attachments", &self.required_attachments),
        ] {
            for (i, item) in items.iter().enumerate() {
                let id = item.link_id();
                if id.is_empty() || id.len() > 255 || id.chars().any(char::is_control) {
                    bail!("{key}.{name}[{i}] must be a linkId (1 to 255 characters)");
                }
                if item
                    .label()
                    .is_some_and(|l| l.trim().is_empty() || l.len() > MAX_TEXT)
                {
                    bail!("{key}.{name}[{i}].label must be 1 to {MAX_TEXT} characters");
                }
            }
        }
        for (i, code) in self.declined_codes.iter().enumerate() {
            let (_, bare) = code.rsplit_once('|').unwrap_or(("", code));
            if !crate::fhir::is_fhir_code(bare) {
                bail!("{key}.declined_codes[{i}] must be `system|code` or a code");
            }
        }
        for (name, text) in [("notice", &self.notice), ("title", &self.title)] {
            if text.chars().count() > MAX_TEXT || text.chars().any(|c| c.is_control() && c != '\n')
            {
                bail!(
                    "{key}.{name} must be at most {MAX_TEXT} characters, without control characters"
                );
            }
        }
        if !self.url.is_empty() {
            let parsed = reqwest::Url::parse(&self.url).ok();
            if !parsed.is_some_and(|u| u.scheme() == "https" || u.scheme() == "http") {
                bail!("{key}.url must be an absolute http(s) URL");
            }
        }
        Ok(())
    }
}

/// Whether `id` can be a CDS service id in a URL path segment as it is (RFC 3986 unreserved).
fn is_cds_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
        && id != "."
        && id != ".."
}

/// `[cds_hooks]`: the CDS Hooks endpoints (`/cds-services`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CdsHooksConfig {
    /// How Ocean's calls are authenticated.
    pub auth: CdsAuth,
    /// Every answer is given within this many milliseconds (1 to 10,000); what is not decided by
    /// then answers with no card.
    pub answer_within_ms: u64,
    /// The largest request body taken, in bytes (413 past it): a draft referral is tens of
    /// kilobytes; its documents are links, not content.
    pub max_body_bytes: usize,
}

/// How a CDS Hooks client authenticates. Whether Ocean sends anything is not public: `none`
/// works with any client, `jwt` with one that follows CDS Hooks 2.0 §"Trusting CDS Clients".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "scheme", rename_all = "lowercase", deny_unknown_fields)]
pub enum CdsAuth {
    /// Anyone may call. The answer holds only what the request held, plus the rules' texts.
    None,
    /// `Authorization: Bearer <token>` with one of these tokens (several while rotating).
    Bearer { tokens: Vec<Secret> },
    /// A JWT the client signed (RS256/384/512, PS256/384/512, ES256/384), checked against
    /// `jwks_url`'s keys and/or `public_key`, with `iss` = `issuer`, `aud` = the service's URL
    /// (`<audience>/<id>`, or `audience` itself), an `exp` at most 5 minutes ahead, and a `jti`
    /// not seen before.
    Jwt {
        issuer: String,
        /// The base URL the client calls, ending `/cds-services`.
        audience: String,
        /// The client's JWK Set (https; http only on loopback). Fetched when first needed, kept
        /// an hour, fetched again for a key id it does not hold (at most every 10 seconds).
        #[serde(default)]
        jwks_url: String,
        /// A PEM public key (RSA or EC) the client signs with, instead of or besides `jwks_url`.
        #[serde(default)]
        public_key: String,
    },
}

impl CdsAuth {
    pub fn scheme(&self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Bearer { .. } => "bearer",
            Self::Jwt { .. } => "jwt",
        }
    }
}

impl CdsHooksConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        if !(1..=MAX_ANSWER_MS).contains(&self.answer_within_ms) {
            bail!("cds_hooks.answer_within_ms must be between 1 and {MAX_ANSWER_MS}");
        }
        if !(1024..=64 * 1024 * 1024).contains(&self.max_body_bytes) {
            bail!("cds_hooks.max_body_bytes must be between 1024 and 67108864");
        }
        match &self.auth {
            CdsAuth::None => Ok(()),
            CdsAuth::Bearer { tokens } => {
                if tokens.is_empty() || tokens.iter().any(|t| t.expose().len() < 16) {
                    bail!(
                        "cds_hooks.auth.tokens needs at least one token of 16 characters or more"
                    );
                }
                Ok(())
            }
            CdsAuth::Jwt {
                issuer,
                audience,
                jwks_url,
                public_key,
            } => {
                if issuer.trim().is_empty() {
                    bail!("cds_hooks.auth.issuer must name the client (the JWT's iss)");
                }
                let audience_url = reqwest::Url::parse(audience).ok();
                if !audience_url.is_some_and(|u| u.scheme() == "https" || u.scheme() == "http") {
                    bail!(
                        "cds_hooks.auth.audience must be the absolute URL the client calls, https://<relay host>/cds-services"
                    );
                }
                if jwks_url.is_empty() && public_key.is_empty() {
                    bail!("cds_hooks.auth needs jwks_url or public_key (the client's keys)");
                }
                if !jwks_url.is_empty() {
                    let url = reqwest::Url::parse(jwks_url).ok();
                    if !url.is_some_and(|u| super::oidc::secure_or_loopback(&u)) {
                        bail!(
                            "cds_hooks.auth.jwks_url must be an https URL (http only on loopback, for tests)"
                        );
                    }
                }
                if public_key.contains("PRIVATE KEY") {
                    bail!(
                        "cds_hooks.auth.public_key holds a private key: give its public half (openssl pkey -pubout), and keep the private one with the client"
                    );
                }
                if !public_key.is_empty()
                    && jsonwebtoken::DecodingKey::from_rsa_pem(public_key.as_bytes()).is_err()
                    && jsonwebtoken::DecodingKey::from_ec_pem(public_key.as_bytes()).is_err()
                {
                    bail!("cds_hooks.auth.public_key must be a PEM RSA or EC public key");
                }
                Ok(())
            }
        }
    }
}

/// Checks every listing's rules, and that no two answer to the same CDS service id.
pub fn validate(screening: &BTreeMap<ServiceId, ScreeningRules>) -> anyhow::Result<()> {
    let mut ids: BTreeMap<&str, &ServiceId> = BTreeMap::new();
    for (service, rules) in screening {
        rules.validate(service)?;
        if let Some(other) = ids.insert(rules.cds_id(service), service) {
            bail!(
                "screening.\"{service}\" and screening.\"{other}\" both answer to the CDS service id {:?}",
                rules.cds_id(service)
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::config::load_text as load;

    /// The issue's example, as written.
    #[test]
    fn the_issues_example_loads_as_written() {
        let c = load(
            "[screening.\"CARDIO-RAPID-01\"]          # the listing's External Service ID\n\
             min_age_years = 18\nmax_age_years = 80\n\
             postal_prefixes = [\"M4\", \"M5\", \"M6\"]   # empty: no catchment\n\
             notice = \"Include the latest ECG.\"     # an info card on every referral to this listing\n",
        )
        .unwrap();
        let service = ServiceId::parse("CARDIO-RAPID-01").unwrap();
        let rules = &c.screening[&service];
        assert_eq!(
            (rules.min_age_years, rules.max_age_years),
            (Some(18), Some(80))
        );
        assert_eq!(rules.postal_prefixes, ["M4", "M5", "M6"]);
        assert_eq!(rules.notice, "Include the latest ECG.");
        assert_eq!(rules.cds_id(&service), "CARDIO-RAPID-01");
        assert_eq!(rules.indicator(ScreeningRule::Notice), Indicator::Info);
        assert_eq!(rules.indicator(ScreeningRule::Age), Indicator::Warning);
        assert_eq!(c.cds_hooks.auth, CdsAuth::None);
        assert_eq!(c.cds_hooks.answer_within_ms, 2000);
    }

    #[test]
    fn items_take_a_label_and_indicators_override_the_default() {
        let c = load(
            "[screening.\"PHYSIO-EAST-02\"]\n\
             required_answers = [\"reason\", { link_id = \"ecg.date\", label = \"Date of the latest ECG\" }, { link_id = \"history\" }]\n\
             indicators = { declined_codes = \"critical\" }\n",
        )
        .unwrap();
        let rules = c.screening.values().next().unwrap();
        assert_eq!(rules.required_answers[0].link_id(), "reason");
        assert_eq!(
            rules.required_answers[1].label(),
            Some("Date of the latest ECG")
        );
        assert_eq!(
            rules.indicator(ScreeningRule::DeclinedCodes),
            Indicator::Critical
        );
    }

    #[test]
    fn errors_name_the_key() {
        for (bad, key) in [
            ("[screening.\"A B\"]\nnotice = \"x\"\n", "cds_id"),
            (
                "[screening.\"A\"]\nmin_age_years = 9\nmax_age_years = 8\n",
                "min_age_years",
            ),
            (
                "[screening.\"A\"]\npostal_prefixes = [\"M4!\"]\n",
                "postal_prefixes[0]",
            ),
            (
                "[screening.\"A\"]\nrequired_answers = [\"\"]\n",
                "required_answers[0]",
            ),
            (
                "[screening.\"A\"]\ndeclined_codes = [\"sys|a  b\"]\n",
                "declined_codes[0]",
            ),
            (
                "[screening.\"A\"]\nindicators = { age = \"red\" }\n",
                "indicators",
            ),
            ("[screening.\"A\"]\nurl = \"ftp://x\"\n", "url"),
            (
                "[screening.\"A\"]\n[screening.\"B\"]\ncds_id = \"A\"\n",
                "both answer",
            ),
            ("[cds_hooks]\nanswer_within_ms = 0\n", "answer_within_ms"),
            (
                "[cds_hooks.auth]\nscheme = \"bearer\"\ntokens = [\"short\"]\n",
                "tokens",
            ),
            (
                "[cds_hooks.auth]\nscheme = \"jwt\"\nissuer = \"x\"\naudience = \"https://r.example/cds-services\"\n",
                "jwks_url or public_key",
            ),
            (
                "[cds_hooks.auth]\nscheme = \"jwt\"\nissuer = \"x\"\naudience = \"https://r.example/cds-services\"\njwks_url = \"http://keys.example/jwks\"\n",
                "jwks_url",
            ),
            (
                "[cds_hooks.auth]\nscheme = \"jwt\"\nissuer = \"x\"\naudience = \"https://r.example/cds-services\"\npublic_key = \"not a key\"\n",
                "public_key",
            ),
        ] {
            let e = load(bad).unwrap_err().to_string();
            assert!(e.contains(key), "{bad}: {e}");
        }
    }
}
