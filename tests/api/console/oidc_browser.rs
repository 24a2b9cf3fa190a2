//! Signing in through a real OpenID provider in headless Chromium, on two real `serve`
//! processes sharing one PostgreSQL schema: the role the groups give, the browser going from one
//! replica to the other without being signed out, a replica's restart keeping the session,
//! signing out on one ending it on the other and at the provider, and a person scoped to one
//! service refused another's referral.

use fantoccini::{Client, Locator};

use super::browser::{Driver, click, screenshot, text_of, type_into};
use super::oidc::{provider_config, relay_config, reserved_address};
use crate::support::app::FHIR_JSON;
use crate::support::binary::{Relay, launch_on, terminate};
use crate::support::fixtures::fixture;
use crate::support::oidc::OidcProvider;
use crate::support::postgres::Schema;

/// Waits for an element matching `css`; on a timeout, fails with the page the browser is on.
async fn wait_for(browser: &Client, css: &str) {
    if browser.wait().for_element(Locator::Css(css)).await.is_err() {
        let url = browser.current_url().await.unwrap();
        let source = browser.source().await.unwrap_or_default();
        panic!("no {css} on {url}:\n{source}");
    }
}

/// Opens `url` and returns the path the browser ended on.
async fn visit(browser: &Client, url: &str) -> String {
    browser.goto(url).await.unwrap();
    browser.current_url().await.unwrap().path().to_owned()
}

/// Whether the browser is signed in as Ada on `relay`: its referral list opens and names her.
async fn signed_in_on(browser: &Client, relay: &Relay) -> bool {
    let path = visit(browser, &format!("http://{}/console/referrals", relay.addr)).await;
    if path == "/console/login" {
        return false;
    }
    assert_eq!(path, "/console/referrals");
    let who = text_of(browser, "header .who").await;
    assert!(who.contains("Ada Admin (admin)"), "{who}");
    true
}

#[tokio::test(flavor = "multi_thread")]
async fn a_browser_signed_in_through_the_provider_stays_signed_in_across_replicas_and_restarts() {
    let schema = Schema::new();
    drop(schema.store().await); // creates the schema
    let a_address = reserved_address();
    let provider = OidcProvider::start(&provider_config(&[a_address]));
    let files = tempfile::TempDir::new().unwrap();
    let config = files.path().join("relay.toml");
    let storage = format!(
        "[storage]\nbackend = \"postgres\"\nurl = \"{}\"\nschema = \"{}\"\nmax_connections = 4\n",
        crate::support::postgres::server_url(),
        schema.name
    );
    std::fs::write(&config, relay_config(&provider, a_address, &storage)).unwrap();
    let start = |name: &str, listen: &str| -> Relay {
        let dir = files.path().join(name);
        launch_on(listen, &dir, Some(&config), &[], &[("RUST_LOG", "info")])
    };
    let a = tokio::task::block_in_place(|| start("a", &a_address.to_string()));
    let mut b = tokio::task::block_in_place(|| start("b", "127.0.0.1:0"));
    let client = reqwest::Client::new();
    // A cardiology referral (TST-0011-AAAA) and a physiotherapy one (TST-0010-BBBB).
    for name in [
        "v0.11-add-service-request.json",
        "v0.10-add-service-request.json",
    ] {
        let delivered = client
            .post(format!("http://{}/fhir/default/$process-message", a.addr))
            .header("content-type", FHIR_JSON)
            .body(fixture(name))
            .send()
            .await
            .unwrap();
        assert_eq!(delivered.status(), 200);
    }

    let driver = Driver::start().await;
    let browser = driver.browser().await;
    assert_eq!(
        visit(&browser, &format!("http://{}/console", a.addr)).await,
        "/console/login"
    );
    click(&browser, "#oidc-sign-in").await;
    wait_for(&browser, "input[name=login]").await;
    assert!(
        browser
            .current_url()
            .await
            .unwrap()
            .as_str()
            .starts_with(&provider.issuer)
    );
    screenshot(&browser, "oidc-provider-sign-in").await;
    type_into(&browser, "input[name=login]", "ada").await;
    type_into(
        &browser,
        "input[name=password]",
        "her password at the provider",
    )
    .await;
    click(&browser, "#sign-in").await;
    wait_for(&browser, "table.referrals").await;
    assert_eq!(
        browser.current_url().await.unwrap().path(),
        "/console/referrals"
    );
    assert!(
        text_of(&browser, "table.referrals")
            .await
            .contains("TST-0011-AAAA")
    );
    screenshot(&browser, "oidc-signed-in").await;

    // Page after page, alternating between the replicas: never signed out.
    for turn in 0..6 {
        let relay = if turn % 2 == 0 { &b } else { &a };
        assert!(signed_in_on(&browser, relay).await, "turn {turn}");
    }
    let page = visit(
        &browser,
        &format!("http://{}/console/referrals/TST-0011-AAAA", b.addr),
    )
    .await;
    assert_eq!(page, "/console/referrals/TST-0011-AAAA");

    // B restarts (a new process, a new port): the session is still there.
    assert!(tokio::task::block_in_place(|| terminate(&mut b)));
    let b = tokio::task::block_in_place(|| start("b", "127.0.0.1:0"));
    assert!(signed_in_on(&browser, &b).await);

    // Signing out on B ends the session on A too, and at the provider (which asks first).
    click(&browser, "form.logout button").await;
    wait_for(&browser, "#sign-out").await;
    screenshot(&browser, "oidc-provider-sign-out").await;
    click(&browser, "#sign-out").await;
    wait_for(&browser, "#oidc-sign-in").await;
    assert!(!signed_in_on(&browser, &a).await);
    assert!(!signed_in_on(&browser, &b).await);
    // The provider's session is over too: the next sign-in asks for a password again. Sam,
    // whose groups make him staff of the cardiology service only, signs in: he sees that
    // service's referral and is refused the other's.
    click(&browser, "#oidc-sign-in").await;
    wait_for(&browser, "input[name=login]").await;
    type_into(&browser, "input[name=login]", "sam").await;
    type_into(
        &browser,
        "input[name=password]",
        "his password at the provider",
    )
    .await;
    click(&browser, "#sign-in").await;
    wait_for(&browser, "table.referrals").await;
    assert!(
        text_of(&browser, "header .who")
            .await
            .contains("Sam Staff (staff)")
    );
    let list = text_of(&browser, "table.referrals").await;
    assert!(
        list.contains("TST-0011-AAAA") && !list.contains("TST-0010-BBBB"),
        "{list}"
    );
    visit(
        &browser,
        &format!("http://{}/console/referrals/TST-0010-BBBB", b.addr),
    )
    .await;
    assert_eq!(text_of(&browser, "main h1").await, "Not allowed");
    screenshot(&browser, "oidc-scoped-refused").await;
    browser.close().await.unwrap();
    let mut a = a;
    let mut b = b;
    tokio::task::block_in_place(|| {
        terminate(&mut a);
        terminate(&mut b);
    });
    schema.drop_now().await;
}
