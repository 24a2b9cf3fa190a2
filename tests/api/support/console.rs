//! The console as a test signs in to it: two users (Alice, an admin; Bob, staff of one
//! service), a browser stand-in over plain HTTP ([`Visitor`]) and what its pages hold, and
//! checks of what the console's actions sent or wrote.

use std::collections::HashMap;

use reqwest::header::{HeaderMap, SET_COOKIE};

use super::app::{TestApp, spawn_app_with};
use super::fixtures::fixture;

pub const ALICE_PASSWORD: &str = "alice-password-0001";
pub const BOB_PASSWORD: &str = "bob-password-00002";

/// Alice (admin, every service) and Bob (staff, only PHYSIO-EAST-02), plus `extra` TOML.
pub fn users_config(extra: &str) -> String {
    let alice = referral_relay::config::hash_password(ALICE_PASSWORD).unwrap();
    let bob = referral_relay::config::hash_password(BOB_PASSWORD).unwrap();
    format!(
        r#"
[console.users.alice]
password_hash = "{alice}"
role = "admin"

[console.users.bob]
password_hash = "{bob}"
role = "staff"
service_ids = ["PHYSIO-EAST-02"]
{extra}
"#
    )
}

/// A browser stand-in: follows no redirects, keeps cookies by name.
pub struct Visitor<'a> {
    app: &'a TestApp,
    client: reqwest::Client,
    /// Where paths are asked: the app's plain HTTP address, unless given.
    base: Option<String>,
    pub cookies: HashMap<String, String>,
    /// The raw `Set-Cookie` values of the last response.
    pub set_cookies: Vec<String>,
}

pub struct Page {
    pub status: u16,
    pub headers: HeaderMap,
    pub html: String,
}

impl Page {
    pub fn location(&self) -> &str {
        self.headers
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The `Set-Cookie` value that sets cookie `name` to something (not clears it), if any.
    pub fn set_cookie_named(&self, name: &str) -> Option<String> {
        self.headers
            .get_all(SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| {
                v.split(';')
                    .next()
                    .and_then(|pair| pair.split_once('='))
                    .is_some_and(|(n, value)| n == name && !value.is_empty())
            })
            .map(str::to_owned)
    }

    /// The value of the first hidden `csrf` field.
    pub fn csrf(&self) -> String {
        let start = self
            .html
            .find("name=\"csrf\" value=\"")
            .expect("a form token")
            + 19;
        let end = self.html[start..].find('"').unwrap();
        self.html[start..start + end].to_owned()
    }
}

impl<'a> Visitor<'a> {
    pub fn new(app: &'a TestApp) -> Self {
        Self {
            app,
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                // A page that never comes fails the test rather than hanging the suite.
                .timeout(std::time::Duration::from_secs(60))
                .build()
                .unwrap(),
            base: None,
            cookies: HashMap::new(),
            set_cookies: Vec::new(),
        }
    }

    /// A visitor asking `base` (e.g. an `https://` address) with `client`, which must not
    /// follow redirects.
    pub fn over(app: &'a TestApp, client: reqwest::Client, base: &str) -> Self {
        Self {
            client,
            base: Some(base.to_owned()),
            ..Self::new(app)
        }
    }

    /// `path` on the app (or `base`); an absolute `http(s)://` URL (another server, such as the
    /// identity provider) as it is. Cookies go to every server, as a browser's do to every port
    /// of one host.
    fn url(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            return path.to_owned();
        }
        match &self.base {
            Some(base) => format!("{base}{path}"),
            None => self.app.url(path),
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn read(&mut self, response: reqwest::Response) -> Page {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        self.set_cookies = headers
            .get_all(SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        for set in &self.set_cookies {
            let pair = set.split(';').next().unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            if value.is_empty() {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_owned(), value.to_owned());
            }
        }
        Page {
            status,
            headers,
            html: response.text().await.unwrap(),
        }
    }

    pub async fn get(&mut self, path: &str) -> Page {
        let response = self
            .client
            .get(self.url(path))
            .header("cookie", self.cookie_header())
            .send()
            .await
            .unwrap();
        self.read(response).await
    }

    pub async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        let response = self
            .client
            .post(self.url(path))
            .header("cookie", self.cookie_header())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(serde_urlencoded::to_string(form).unwrap())
            .send()
            .await
            .unwrap();
        self.read(response).await
    }

    /// Signs in through the form; returns the answer to the form's post.
    pub async fn sign_in(&mut self, user: &str, password: &str) -> Page {
        let form = self.get("/console/login").await;
        assert_eq!(form.status, 200);
        let csrf = form.csrf();
        self.post(
            "/console/login",
            &[("user", user), ("password", password), ("csrf", &csrf)],
        )
        .await
    }
}

/// The Task resources a stand-in Ocean has been sent, as (id, status).
pub fn tasks_received(ocean: &super::ocean::MockOcean) -> Vec<(String, String)> {
    ocean
        .delivered()
        .iter()
        .flat_map(|bundle| bundle["entry"].as_array().cloned().unwrap_or_default())
        .filter(|e| e["resource"]["resourceType"] == "Task")
        .map(|e| {
            (
                e["resource"]["id"].as_str().unwrap_or("").to_owned(),
                e["resource"]["status"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

/// The CSV rows' referral refs (the first column), header left out.
pub fn csv_refs(csv: &str) -> Vec<String> {
    let mut reader = csv::Reader::from_reader(csv.trim_start_matches('\u{feff}').as_bytes());
    let refs: Vec<String> = reader
        .records()
        .map(|r| r.unwrap().get(0).unwrap().to_owned())
        .collect();
    refs
}

/// An app with `toml`, holding three referrals (a v0.11 referral, its Task update, a v0.10
/// referral).
pub async fn with_referrals(toml: &str) -> TestApp {
    let app = spawn_app_with(toml).await;
    for name in [
        "v0.11-add-service-request.json",
        "update-task-accepted.json",
        "v0.10-add-service-request.json",
    ] {
        assert_eq!(app.deliver("default", fixture(name)).await.status, 200);
    }
    app
}

/// Waits (bounded) until the `AUTH_FAILURE` reports of console sign-ins count `total`; the
/// reasons reported for each actor.
pub async fn refused_sign_ins(app: &TestApp, total: u64) -> HashMap<String, Vec<String>> {
    let mut reports = Vec::new();
    super::poll::eventually("the console's refused sign-ins reported", async || {
        reports = app
            .store
            .audit_entries(0, 10_000)
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.action == "AUTH_FAILURE" && e.details["scheme"] == "console")
            .collect();
        let counted: u64 = reports
            .iter()
            .map(|e| e.details["count"].as_u64().unwrap())
            .sum();
        counted == total
    })
    .await;
    let mut reasons: HashMap<String, Vec<String>> = HashMap::new();
    for e in reports {
        let reason = e.details["reason"].as_str().unwrap_or_default().to_owned();
        reasons.entry(e.actor).or_default().push(reason);
    }
    reasons
}

/// Every audit entry's action and actor, in order.
pub async fn audit_actions(app: &TestApp) -> Vec<(String, String)> {
    app.store
        .audit_entries(0, 10_000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.action, e.actor))
        .collect()
}
