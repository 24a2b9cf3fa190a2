//! The CDS Hooks side of the screening tests: `tests/peers/cds_client.py` on a loopback port
//! (the client's keys and JWTs from PyJWT, the answers checked against a JSON Schema of CDS
//! Hooks 2.0 with `jsonschema`), and `order-sign` requests built from the v0.11 fixture.

use std::path::PathBuf;
use std::process::{Child, Command};

use serde_json::{Value, json};
use time::{Date, Duration, OffsetDateTime};

use super::app::{Answer, TestApp, answer};
use super::fixtures::fixture;
use super::peers::{python, spawn};

/// Two listings: one with the issue's example rules, one with the eForm and code rules.
pub const RULES: &str = r#"
[screening."CARDIO-RAPID-01"]
min_age_years = 18
max_age_years = 80
postal_prefixes = ["M4", "M5", "M6"]
notice = "Include the latest ECG."

[screening."PHYSIO-EAST-02"]
cds_id = "physio"
title = "Physiotherapy east"
url = "https://clinic.example/physio-criteria"
required_answers = ["referral.reason", { link_id = "pain.score", label = "Pain score (0 to 10)" }]
required_attachments = [{ link_id = "imaging.report", label = "Latest imaging report" }]
declined_codes = ["http://snomed.info/sct|394609007", "chronic-pain"]
indicators = { declined_codes = "critical" }
"#;

/// The birth date (`YYYY-MM-DD`) of someone `years` old `days` after their birthday, today (UTC).
pub fn born(years: i32, days: i64) -> String {
    let today = OffsetDateTime::now_utc().date();
    let birthday = today
        .replace_year(today.year() - years)
        .or_else(|_| Date::from_calendar_date(today.year() - years, today.month(), 28))
        .unwrap();
    let date = birthday - Duration::days(days);
    format!(
        "{:04}-{:02}-{:02}",
        date.year(),
        u8::from(date.month()),
        date.day()
    )
}

/// The `iss` the tests' client signs as.
pub const ISSUER: &str = "https://ocean.test.example";

/// The peer; killed when dropped.
pub struct CdsClient {
    child: Child,
    base: String,
    client: reqwest::Client,
}

impl CdsClient {
    pub fn start() -> Self {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers/cds_client.py");
        let mut command = Command::new(python());
        command.arg(script);
        let (child, port) = spawn(command, "the CDS Hooks client");
        Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::new(),
        }
    }

    /// Where its JWK Set is published.
    pub fn jwks_url(&self) -> String {
        format!("{}/jwks.json", self.base)
    }

    async fn call(&self, path: &str, body: Value) -> Value {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
        response.json().await.unwrap()
    }

    /// A JWT for `aud`: `overrides` are merged into the request (`iss`, `alg`, `kid`, `exp_in`,
    /// `jti`, `omit`, `header_kid`, `claims`, `headers`; see the script).
    pub async fn token(&self, aud: &str, overrides: Value) -> String {
        let mut request = json!({"aud": aud, "iss": ISSUER});
        for (key, value) in overrides.as_object().unwrap() {
            request[key] = value.clone();
        }
        let answer = self.call("/token", request).await;
        answer["token"].as_str().unwrap().to_owned()
    }

    /// Publishes a new key `kid` and withdraws `retire`.
    pub async fn rotate(&self, kid: &str, alg: &str, retire: &[&str]) {
        self.call("/rotate", json!({"kid": kid, "alg": alg, "retire": retire}))
            .await;
    }

    /// Makes its JWK Set answer 500 (`down`) or the keys again.
    pub async fn keys_down(&self, down: bool) {
        self.call("/keys_down", json!({"down": down})).await;
    }

    /// A key's public half as PEM.
    pub async fn pem(&self, kid: &str) -> String {
        let answer = self.call("/pem", json!({"kid": kid})).await;
        answer["pem"].as_str().unwrap().to_owned()
    }

    /// How many times the JWK Set was fetched.
    pub async fn jwks_fetches(&self) -> u64 {
        let stats: Value = self
            .client
            .get(format!("{}/stats", self.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        stats["jwks_fetches"].as_u64().unwrap()
    }

    /// What the CDS Hooks 2.0 schema finds wrong with `document` (`discovery` or `response`).
    pub async fn schema_errors(&self, what: &str, document: &Value) -> Vec<String> {
        let answer = self
            .call("/validate", json!({"what": what, "document": document}))
            .await;
        serde_json::from_value(answer["errors"].clone()).unwrap()
    }
}

impl Drop for CdsClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The v0.11 new-referral fixture as a draft: `edit` changes it first (its Patient, its
/// QuestionnaireResponse, its ServiceRequest), then it is put in an `order-sign` request's
/// `v11Bundle` prefetch.
pub fn order_sign(edit: impl FnOnce(&mut Draft)) -> Value {
    let mut bundle: Value =
        serde_json::from_slice(&fixture("v0.11-add-service-request.json")).unwrap();
    edit(&mut Draft(&mut bundle));
    request_with(json!({ "v11Bundle": bundle }))
}

/// As [`order_sign`], addressed to the physiotherapy listing of [`RULES`] (the fixture is
/// addressed to CARDIO-RAPID-01).
pub fn physio_draft(edit: impl FnOnce(&mut Draft)) -> Value {
    order_sign(|d| {
        d.addressed_to("PHYSIO-EAST-02");
        edit(d);
    })
}

/// An `order-sign` request with `prefetch` as given.
pub fn request_with(prefetch: Value) -> Value {
    json!({
        "hook": "order-sign",
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "context": {"userId": "PractitionerRole/referrer-1", "patientId": "patient-1",
            "draftOrders": {"resourceType": "Bundle", "type": "collection", "entry": []}},
        "prefetch": prefetch,
    })
}

/// The draft Bundle being edited.
pub struct Draft<'a>(&'a mut Value);

impl Draft<'_> {
    /// The first resource of `kind`.
    pub fn resource(&mut self, kind: &str) -> &mut Value {
        self.0["entry"]
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .map(|e| &mut e["resource"])
            .find(|r| r["resourceType"] == kind)
            .unwrap()
    }

    /// Makes the target listing's External Service ID `service`.
    pub fn addressed_to(&mut self, service: &str) {
        for entry in self.0["entry"].as_array_mut().unwrap() {
            for identifier in entry["resource"]["identifier"]
                .as_array_mut()
                .into_iter()
                .flatten()
            {
                let system = identifier["system"].as_str().unwrap_or_default();
                if system.ends_with("/id-referral-target-external-service") {
                    identifier["value"] = json!(service);
                }
            }
        }
    }

    pub fn birth_date(&mut self, date: &str) {
        self.resource("Patient")["birthDate"] = json!(date);
    }

    pub fn postal_code(&mut self, code: &str) {
        self.resource("Patient")["address"][0]["postalCode"] = json!(code);
    }

    /// Adds an eForm item with these answers at the top level.
    pub fn item(&mut self, link_id: &str, text: &str, answers: Value) {
        let items = self.resource("QuestionnaireResponse")["item"]
            .as_array_mut()
            .unwrap();
        items.push(json!({"linkId": link_id, "text": text, "answer": answers}));
    }

    /// Sets the ServiceRequest's reason.
    pub fn reason(&mut self, system: &str, code: &str, display: &str) {
        self.resource("ServiceRequest")["reasonCode"] =
            json!([{"coding": [{"system": system, "code": code, "display": display}]}]);
    }
}

/// Posts `body` to `/cds-services/{id}`, with `token` as the bearer token when given.
pub async fn call(app: &TestApp, id: &str, body: &Value, token: Option<&str>) -> Answer {
    let mut request = app
        .client
        .post(app.url(&format!("/cds-services/{id}")))
        .json(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    answer(request.send().await.unwrap()).await
}

/// The cards of a 200 answer, after checking it against the CDS Hooks 2.0 schema.
pub async fn cards(peer: &CdsClient, answer: &Answer) -> Vec<Value> {
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(
        answer.content_type.starts_with("application/json"),
        "{}",
        answer.content_type
    );
    let errors = peer.schema_errors("response", &answer.body).await;
    assert!(errors.is_empty(), "{errors:?} in {}", answer.body);
    answer.body["cards"].as_array().unwrap().clone()
}

/// The cards' summaries.
pub fn summaries(cards: &[Value]) -> Vec<String> {
    cards
        .iter()
        .map(|c| c["summary"].as_str().unwrap().to_owned())
        .collect()
}
