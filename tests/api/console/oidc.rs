//! Console sign-in through a real OpenID provider (`oidc-provider` from npm, on loopback; see
//! [`crate::support::oidc`]), walked by the browser stand-in: the role and services the groups
//! claim gives, a person it gives nothing refused, signing out at the provider too, every
//! spoiled answer refused (state, nonce, expiry, signature, audience, issuer, `alg: none`, an
//! unusable subject), the provider down, a rotated key fetched, sessions ended by an admin or by
//! a change of provider, and the break-glass accounts switched off. The browser and the
//! replicas are in `oidc_browser.rs`.

use std::net::{SocketAddr, TcpListener};

use serde_json::{Value, json};

use crate::support::app::{TestApp, spawn_app_in, spawn_app_in_on, spawn_app_on};
use crate::support::console::{
    ALICE_PASSWORD, Page, Visitor, audit_actions, refused_sign_ins, users_config,
};
use crate::support::fixtures::fixture;
use crate::support::oidc::OidcProvider;

pub const CLIENT_ID: &str = "referral-relay";
pub const CLIENT_SECRET: &str = "relay-client-secret-0001";

/// A free loopback address for a relay to listen on, so the provider can be told its callback
/// before either starts.
pub fn reserved_address() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// The provider's config: the relay as its client (callbacks at `relays`), and three people:
/// Ada (admins), Sam (staff, cardio team) and Nora (a group the relay does not map).
pub fn provider_config(relays: &[SocketAddr]) -> Value {
    let callbacks: Vec<String> = relays
        .iter()
        .map(|r| format!("http://{r}/console/oidc/callback"))
        .collect();
    let sign_in_pages: Vec<String> = relays
        .iter()
        .map(|r| format!("http://{r}/console/login"))
        .collect();
    json!({
        "clients": [{
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "redirect_uris": callbacks,
            "post_logout_redirect_uris": sign_in_pages,
        }],
        "accounts": {
            "ada": {"sub": "u-ada-7f3", "name": "Ada Admin", "email": "ada@clinic.test", "groups": ["relay-admins", "everyone"]},
            "sam": {"sub": "u-sam-2c9", "name": "Sam Staff", "email": "sam@clinic.test", "groups": ["relay-staff", "cardio-team"]},
            "nora": {"sub": "u-nora-5d1", "name": "Nora Nobody", "email": "nora@clinic.test", "groups": ["everyone"]},
            "long": {"sub": "s".repeat(300), "name": "Long Subject", "groups": ["relay-staff"]},
            "bidi": {"sub": "u-bidi-9e0", "name": "Eve\u{202E}nimdA\u{200B}", "groups": ["relay-staff"]},
        },
    })
}

/// `[console.oidc]` for `provider`, the callback on `relay`, and `extra` TOML (users).
pub fn relay_config(provider: &OidcProvider, relay: SocketAddr, extra: &str) -> String {
    format!(
        r#"
{extra}
[console.oidc]
issuer = "{issuer}"
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"
redirect_uri = "http://{relay}/console/oidc/callback"
scopes = ["openid", "profile", "email"]
role_claim = "groups"
admin_values = ["relay-admins"]
staff_values = ["relay-staff"]
label = "Sign in with Clinic ID"
[console.oidc.service_ids]
"cardio-team" = ["CARDIO-RAPID-01"]
"#,
        issuer = provider.issuer
    )
}

/// A relay holding the usual three referrals, signing in through a fresh provider; the local
/// users of [`users_config`] too.
async fn relay_and_provider() -> (TestApp, OidcProvider) {
    let address = reserved_address();
    let provider = OidcProvider::start(&provider_config(&[address]));
    // Refused sign-ins are reported every second rather than every minute.
    let users = users_config("[server]\nauth_failure_report_secs = 1");
    let app = spawn_app_on(&relay_config(&provider, address, &users), address).await;
    for name in [
        "v0.11-add-service-request.json",
        "update-task-accepted.json",
        "v0.10-add-service-request.json",
    ] {
        assert_eq!(app.deliver("default", fixture(name)).await.status, 200);
    }
    (app, provider)
}

/// Follows redirects from `page` (relative ones on `origin`) until a page that is not one.
async fn follow(visitor: &mut Visitor<'_>, mut page: Page, origin: &str) -> Page {
    for _ in 0..10 {
        if !(300..400).contains(&page.status) {
            return page;
        }
        let location = page.location().to_owned();
        let next = if location.starts_with('/') {
            format!("{origin}{location}")
        } else {
            location
        };
        page = visitor.get(&next).await;
    }
    panic!("more than 10 redirects");
}

/// From the console's sign-in button to the provider's sign-in page.
async fn to_the_provider(visitor: &mut Visitor<'_>, provider: &OidcProvider) -> Page {
    let start = visitor.get("/console/oidc/start").await;
    assert_eq!(start.status, 303, "{}", start.html);
    assert!(
        start.location().starts_with(&provider.issuer),
        "{}",
        start.location()
    );
    let url = reqwest::Url::parse(start.location()).unwrap();
    let query: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    let has = |k: &str| query.iter().any(|(name, _)| name == k);
    assert!(has("state") && has("nonce") && has("code_challenge"));
    assert!(query.contains(&("code_challenge_method".into(), "S256".into())));
    follow(visitor, start, &provider.issuer).await
}

/// The provider's answer after signing in as `login`: the redirect to the relay's callback,
/// not followed.
async fn provider_answer(visitor: &mut Visitor<'_>, provider: &OidcProvider, login: &str) -> Page {
    let form = to_the_provider(visitor, provider).await;
    assert_eq!(form.status, 200, "{}", form.html);
    let at = form
        .html
        .find("action=\"")
        .expect("the provider's sign-in form")
        + 8;
    let action = &form.html[at..at + form.html[at..].find('"').unwrap()];
    let posted = visitor
        .post(
            &format!("{}{action}", provider.issuer),
            &[("login", login), ("password", "any password")],
        )
        .await;
    let mut page = posted;
    // On to the provider's redirect that leaves it for the relay.
    for _ in 0..10 {
        if page.location().contains("/console/oidc/callback") {
            return page;
        }
        assert!((300..400).contains(&page.status), "{}", page.html);
        let location = page.location().to_owned();
        let next = if location.starts_with('/') {
            format!("{}{location}", provider.issuer)
        } else {
            location
        };
        page = visitor.get(&next).await;
    }
    panic!("the provider never sent the browser back");
}

/// Signs in through the provider as `login`; the relay's answer to the callback.
pub async fn sign_in_as(visitor: &mut Visitor<'_>, provider: &OidcProvider, login: &str) -> Page {
    let answer = provider_answer(visitor, provider, login).await;
    let location = answer.location().to_owned();
    visitor.get(&location).await
}

/// Posts the provider's sign-out form on `page` (its own confirmation page), confirming; the
/// provider's answer, not followed.
async fn confirm_sign_out(visitor: &mut Visitor<'_>, provider: &OidcProvider, page: &Page) -> Page {
    let field = |name: &str| {
        let at = page
            .html
            .find(name)
            .unwrap_or_else(|| panic!("{name} in {}", page.html));
        let start = at + name.len();
        page.html[start..start + page.html[start..].find('"').unwrap()].to_owned()
    };
    let action = field("action=\"");
    let xsrf = field("name=\"xsrf\" value=\"");
    let action = if action.starts_with('/') {
        format!("{}{action}", provider.issuer)
    } else {
        action
    };
    visitor
        .post(&action, &[("xsrf", &xsrf), ("logout", "yes")])
        .await
}

/// Whether the visitor's session opens the referral list.
async fn signed_in(visitor: &mut Visitor<'_>) -> bool {
    let list = visitor.get("/console/referrals").await;
    match list.status {
        200 => true,
        303 => {
            assert_eq!(list.location(), "/console/login");
            false
        }
        other => panic!("the list answered {other}: {}", list.html),
    }
}

#[tokio::test]
async fn people_sign_in_with_the_role_and_services_their_groups_give() {
    let (app, provider) = relay_and_provider().await;

    // The sign-in page offers the provider and the break-glass form.
    let mut ada = Visitor::new(&app);
    let login = ada.get("/console/login").await;
    assert!(
        login.html.contains("Sign in with Clinic ID"),
        "{}",
        login.html
    );
    assert!(login.html.contains("name=\"password\""));

    let landed = sign_in_as(&mut ada, &provider, "ada").await;
    assert_eq!(landed.status, 200, "{}", landed.html);
    assert!(landed.html.contains("url=/console/referrals"));
    let cookie = landed
        .set_cookie_named("relay_console")
        .expect("a session cookie");
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
    let list = ada.get("/console/referrals").await;
    assert_eq!(list.status, 200);
    assert!(list.html.contains("Ada Admin (admin)"), "{}", list.html);
    assert!(list.html.contains("TST-0011-AAAA") && list.html.contains("TST-0010-BBBB"));
    assert_eq!(ada.get("/console/outbox").await.status, 200);

    // Sam is staff of the cardio service only.
    let mut sam = Visitor::new(&app);
    assert_eq!(sign_in_as(&mut sam, &provider, "sam").await.status, 200);
    let list = sam.get("/console/referrals").await;
    assert!(list.html.contains("Sam Staff (staff)"), "{}", list.html);
    assert!(list.html.contains("TST-0011-AAAA"));
    assert!(!list.html.contains("TST-0010-BBBB"));
    assert_eq!(
        sam.get("/console/referrals/TST-0011-AAAA").await.status,
        200
    );
    assert_eq!(
        sam.get("/console/referrals/TST-0010-BBBB").await.status,
        403
    );
    assert_eq!(sam.get("/console/outbox").await.status, 403);

    // Nora's groups map to nothing: refused, saying so, with no session.
    let mut nora = Visitor::new(&app);
    let refused = sign_in_as(&mut nora, &provider, "nora").await;
    assert_eq!(refused.status, 403, "{}", refused.html);
    assert!(
        refused.html.contains("gives you no role in this console"),
        "{}",
        refused.html
    );
    assert!(refused.set_cookie_named("relay_console").is_none());
    assert!(!signed_in(&mut nora).await);

    // Sam signs out: the session ends for good, and the browser goes on to the provider to end
    // the session there too (RP-initiated logout), then back to the sign-in page.
    let page = sam.get("/console/referrals").await;
    let out = sam.post("/console/logout", &[("csrf", &page.csrf())]).await;
    assert_eq!(out.status, 200, "{}", out.html);
    let marker = "id=\"provider-sign-out\" href=\"";
    let at = out.html.find(marker).unwrap() + marker.len();
    let escaped = &out.html[at..at + out.html[at..].find('"').unwrap()];
    assert!(out.html.contains(&format!("url={escaped}")), "{}", out.html);
    // As the browser reads the attribute (minijinja escapes `/` and `&`).
    let logout_url = escaped.replace("&#x2f;", "/").replace("&amp;", "&");
    let logout = reqwest::Url::parse(&logout_url).unwrap();
    assert!(logout_url.starts_with(&provider.issuer), "{logout_url}");
    let query: Vec<(String, String)> = logout.query_pairs().into_owned().collect();
    assert!(query.contains(&("client_id".into(), CLIENT_ID.into())));
    assert!(query.contains(&("post_logout_redirect_uri".into(), app.url("/console/login"))));
    assert!(!signed_in(&mut sam).await);
    let confirm = sam.get(&logout_url).await;
    assert_eq!(confirm.status, 200, "{}", confirm.html);
    let back = confirm_sign_out(&mut sam, &provider, &confirm).await;
    assert_eq!(back.location(), app.url("/console/login"), "{}", back.html);
    // The next person at this browser meets the provider's sign-in form, not Sam's session.
    let next = to_the_provider(&mut sam, &provider).await;
    assert_eq!(next.status, 200);
    assert!(next.html.contains("name=\"login\""), "{}", next.html);

    let audit = audit_actions(&app).await;
    let has = |action: &str, actor: &str| audit.iter().any(|(a, b)| a == action && b == actor);
    assert!(
        has("CONSOLE_LOGIN", "console:Ada Admin (oidc:u-ada-7f3)"),
        "{audit:?}"
    );
    assert!(has("CONSOLE_LOGIN", "console:Sam Staff (oidc:u-sam-2c9)"));
    assert!(has("CONSOLE_LOGOUT", "console:Sam Staff (oidc:u-sam-2c9)"));
    let refusals = refused_sign_ins(&app, 1).await;
    assert_eq!(
        refusals["console:Nora Nobody (oidc:u-nora-5d1)"],
        ["console sign-in: the identity provider's claims give no console role"]
    );
    app.stop().await;
}

#[tokio::test]
async fn every_spoiled_answer_is_refused_and_signs_nobody_in() {
    let (app, provider) = relay_and_provider().await;

    // An ID token that fails a check, one kind at a time.
    for kind in [
        "nonce",
        "expired",
        "foreign_key",
        "audience",
        "issuer",
        "alg_none",
    ] {
        let mut visitor = Visitor::new(&app);
        provider.tamper_next(kind).await;
        let page = sign_in_as(&mut visitor, &provider, "ada").await;
        assert_eq!(page.status, 401, "{kind}: {}", page.html);
        assert!(
            page.html.contains("could not be verified"),
            "{kind}: {}",
            page.html
        );
        assert!(page.set_cookie_named("relay_console").is_none(), "{kind}");
        assert!(!signed_in(&mut visitor).await, "{kind}");
        assert_eq!(
            provider.state().await["tamper"],
            Value::Null,
            "{kind} was used"
        );
    }

    // A name with invisible characters is shown without them.
    let mut visitor = Visitor::new(&app);
    assert_eq!(
        sign_in_as(&mut visitor, &provider, "bidi").await.status,
        200
    );
    let list = visitor.get("/console/referrals").await;
    assert!(list.html.contains("EvenimdA (staff)"), "{}", list.html);

    // A subject longer than OpenID Connect allows (255): refused.
    let mut visitor = Visitor::new(&app);
    let page = sign_in_as(&mut visitor, &provider, "long").await;
    assert_eq!(page.status, 401, "{}", page.html);
    assert!(!signed_in(&mut visitor).await);

    // A tampered state: refused before the code is used, and without spoiling the sign-in in
    // progress: the right answer still signs in afterwards.
    let mut visitor = Visitor::new(&app);
    let answer = provider_answer(&mut visitor, &provider, "ada").await;
    let mut url = reqwest::Url::parse(answer.location()).unwrap();
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == "state" {
                format!("{v}x")
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    url.query_pairs_mut().clear().extend_pairs(&pairs);
    let page = visitor.get(url.as_str()).await;
    assert_eq!(page.status, 403, "{}", page.html);
    assert!(!signed_in(&mut visitor).await);
    assert_eq!(visitor.get(answer.location()).await.status, 200);
    assert!(signed_in(&mut visitor).await);

    // The right answer, but in another browser (no state cookie): refused.
    let mut visitor = Visitor::new(&app);
    let answer = provider_answer(&mut visitor, &provider, "ada").await;
    let mut stranger = Visitor::new(&app);
    let page = stranger.get(answer.location()).await;
    assert_eq!(page.status, 403, "{}", page.html);
    assert!(!signed_in(&mut stranger).await);

    // The same answer twice: the provider refuses its code the second time.
    let mut visitor = Visitor::new(&app);
    let answer = provider_answer(&mut visitor, &provider, "ada").await;
    let callback = answer.location().to_owned();
    let state_cookie = visitor.cookies.get("relay_console_oidc").cloned().unwrap();
    assert_eq!(visitor.get(&callback).await.status, 200);
    visitor
        .cookies
        .insert("relay_console_oidc".into(), state_cookie);
    let again = visitor.get(&callback).await;
    assert_eq!(again.status, 401, "{}", again.html);
    assert!(again.html.contains("could not be verified"));

    // A callback opened without a sign-in, and the provider's own refusal.
    let mut visitor = Visitor::new(&app);
    assert_eq!(visitor.get("/console/oidc/callback").await.status, 400);
    let refusal = visitor
        .get("/console/oidc/callback?error=access_denied&state=x")
        .await;
    assert_eq!(refusal.status, 401);
    assert!(!signed_in(&mut visitor).await);

    // After all that, a clean sign-in works.
    let mut visitor = Visitor::new(&app);
    assert_eq!(sign_in_as(&mut visitor, &provider, "ada").await.status, 200);
    assert!(signed_in(&mut visitor).await);
    app.stop().await;
}

#[tokio::test]
async fn a_provider_that_is_down_gets_a_page_saying_so_not_a_failed_login() {
    let (app, provider) = relay_and_provider().await;
    // The relay knows the provider (a first sign-in read its metadata); then it goes down
    // while a person is at its sign-in page.
    let mut first = Visitor::new(&app);
    assert_eq!(sign_in_as(&mut first, &provider, "ada").await.status, 200);
    let mut visitor = Visitor::new(&app);
    let answer = provider_answer(&mut visitor, &provider, "sam").await;
    drop(provider);
    let page = visitor.get(answer.location()).await;
    assert_eq!(page.status, 502, "{}", page.html);
    assert!(page.html.contains("could not be reached"), "{}", page.html);
    assert!(!signed_in(&mut visitor).await);
    // Not a failed login: nothing for the refusal reports.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let audit = audit_actions(&app).await;
    assert!(!audit.iter().any(|(a, _)| a == "AUTH_FAILURE"), "{audit:?}");
    app.stop().await;
}

#[tokio::test]
async fn signing_out_says_so_when_the_provider_cannot_end_its_own_session() {
    let address = reserved_address();
    let mut config = provider_config(&[address]);
    config["rp_initiated_logout"] = json!(false);
    let provider = OidcProvider::start(&config);
    let app = spawn_app_on(&relay_config(&provider, address, ""), address).await;
    let mut visitor = Visitor::new(&app);
    assert_eq!(sign_in_as(&mut visitor, &provider, "ada").await.status, 200);
    let page = visitor.get("/console/referrals").await;
    let out = visitor
        .post("/console/logout", &[("csrf", &page.csrf())])
        .await;
    assert_eq!(out.status, 200, "{}", out.html);
    assert!(
        out.html.contains("id=\"provider-still-signed-in\""),
        "{}",
        out.html
    );
    assert!(!out.html.contains("http-equiv=\"refresh\""));
    assert!(!signed_in(&mut visitor).await);
    app.stop().await;
}

#[tokio::test]
async fn a_session_from_a_provider_no_longer_configured_is_over() {
    let dir = tempfile::TempDir::new().unwrap();
    let address = reserved_address();
    let provider = OidcProvider::start(&provider_config(&[address]));
    let app = spawn_app_in_on(dir.path(), &relay_config(&provider, address, ""), address).await;
    let mut visitor = Visitor::new(&app);
    assert_eq!(sign_in_as(&mut visitor, &provider, "ada").await.status, 200);
    let cookies = visitor.cookies.clone();
    app.stop().await;
    // The same data dir, another provider: Ada's session is over, and stays over.
    let other = OidcProvider::start(&provider_config(&[address]));
    let app = spawn_app_in(dir.path(), &relay_config(&other, address, "")).await;
    let mut visitor = Visitor::new(&app);
    visitor.cookies = cookies.clone();
    assert!(!signed_in(&mut visitor).await);
    app.stop().await;
    let app = spawn_app_in(dir.path(), &relay_config(&provider, address, "")).await;
    let mut visitor = Visitor::new(&app);
    visitor.cookies = cookies;
    assert!(!signed_in(&mut visitor).await, "ended, not suspended");
    app.stop().await;
}

#[tokio::test]
async fn a_rotated_signing_key_is_fetched_and_the_old_one_dropped() {
    let (app, provider) = relay_and_provider().await;
    let mut first = Visitor::new(&app);
    assert_eq!(sign_in_as(&mut first, &provider, "ada").await.status, 200);
    let before = provider.state().await["keys"].clone();

    // The provider signs with a new key and no longer lists the old one: the relay, which
    // kept the old key set, fetches the new one when it meets the new kid.
    provider.rotate(true).await;
    let after = provider.state().await["keys"].clone();
    assert_ne!(before, after);
    assert_eq!(after.as_array().unwrap().len(), 1);
    let mut second = Visitor::new(&app);
    let page = sign_in_as(&mut second, &provider, "sam").await;
    assert_eq!(page.status, 200, "{}", page.html);
    assert!(signed_in(&mut second).await);
    // The session begun before the rotation is the relay's own: it lasts.
    assert!(signed_in(&mut first).await);
    app.stop().await;
}

#[tokio::test]
async fn an_admin_ends_a_persons_sessions_everywhere() {
    let (app, provider) = relay_and_provider().await;
    let mut sam_laptop = Visitor::new(&app);
    let mut sam_phone = Visitor::new(&app);
    assert_eq!(
        sign_in_as(&mut sam_laptop, &provider, "sam").await.status,
        200
    );
    assert_eq!(
        sign_in_as(&mut sam_phone, &provider, "sam").await.status,
        200
    );
    // The break-glass admin ends them.
    let mut alice = Visitor::new(&app);
    assert_eq!(alice.sign_in("alice", ALICE_PASSWORD).await.status, 303);
    let sessions = alice.get("/console/sessions").await;
    assert_eq!(sessions.status, 200);
    assert!(sessions.html.contains("Sam Staff"), "{}", sessions.html);
    assert!(sessions.html.contains("oidc:u-sam-2c9"));
    // Staff may not.
    assert_eq!(sam_laptop.get("/console/sessions").await.status, 403);
    let ended = alice
        .post(
            "/console/sessions/end",
            &[("csrf", &sessions.csrf()), ("account", "oidc:u-sam-2c9")],
        )
        .await;
    assert_eq!(ended.status, 200, "{}", ended.html);
    assert!(
        ended.html.contains("Ended 2 session(s) of Sam Staff"),
        "{}",
        ended.html
    );
    assert!(!signed_in(&mut sam_laptop).await);
    assert!(!signed_in(&mut sam_phone).await);
    assert!(signed_in(&mut alice).await);
    // Without the form token, nothing is ended.
    let refused = alice
        .post("/console/sessions/end", &[("account", "alice")])
        .await;
    assert_eq!(refused.status, 403);
    assert!(signed_in(&mut alice).await);
    let audit = audit_actions(&app).await;
    assert!(audit.contains(&("CONSOLE_SESSIONS_ENDED".into(), "console:alice".into())));
    app.stop().await;
}

#[tokio::test]
async fn the_break_glass_accounts_can_be_switched_off() {
    let address = reserved_address();
    let provider = OidcProvider::start(&provider_config(&[address]));
    let toml = relay_config(
        &provider,
        address,
        &users_config("[console]\nlocal_users = false"),
    );
    let app = spawn_app_on(&toml, address).await;
    let mut visitor = Visitor::new(&app);
    let login = visitor.get("/console/login").await;
    assert!(login.html.contains("Sign in with Clinic ID"));
    assert!(!login.html.contains("name=\"password\""), "{}", login.html);
    let refused = visitor
        .post(
            "/console/login",
            &[("user", "alice"), ("password", ALICE_PASSWORD)],
        )
        .await;
    assert_eq!(refused.status, 403);
    assert!(refused.html.contains("switched off"));
    assert!(!signed_in(&mut visitor).await);
    assert_eq!(sign_in_as(&mut visitor, &provider, "ada").await.status, 200);
    assert!(signed_in(&mut visitor).await);
    app.stop().await;
}
