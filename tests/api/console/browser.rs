//! The console in a real browser: headless Chromium driven through ChromeDriver (Debian's
//! `chromium` and `chromium-driver`; `.ci/run` installs them), only ever on loopback. A
//! screenshot of every page visited is saved under `<target>/tmp/console-screenshots/`.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};

use crate::support::app::spawn_app_with;
use crate::support::console::{ALICE_PASSWORD, csv_refs, tasks_received, users_config};
use crate::support::fixtures::fixture;
use crate::support::ocean::MockOcean;
use crate::support::poll::eventually;

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// ChromeDriver on a free loopback port, stopped on drop.
pub(super) struct Driver {
    child: Child,
    port: u16,
    _profile: tempfile::TempDir,
    /// Where the browser saves downloads.
    downloads: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    pub(super) async fn start() -> Self {
        assert!(
            std::path::Path::new(CHROMEDRIVER).exists() && std::path::Path::new(CHROMIUM).exists(),
            "the browser tests need Debian's chromium and chromium-driver ({CHROMIUM}, {CHROMEDRIVER}); .ci/run installs them"
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let driver = Self {
            child,
            port,
            _profile: tempfile::TempDir::new().unwrap(),
            downloads: tempfile::TempDir::new().unwrap(),
        };
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "ChromeDriver did not start listening"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        driver
    }

    /// A headless Chromium session that reaches nothing but loopback on its own.
    pub(super) async fn browser(&self) -> Client {
        let mut caps = serde_json::Map::new();
        caps.insert("browserName".into(), "chrome".into());
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                    "--no-first-run",
                    "--disable-dev-shm-usage",
                    "--window-size=1280,900",
                    format!("--user-data-dir={}", self._profile.path().display()),
                ],
                "prefs": {
                    "download.default_directory": self.downloads.path(),
                    "download.prompt_for_download": false,
                },
            }),
        );
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .unwrap()
    }
}

/// Where this run's screenshots go.
fn screenshots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub(super) async fn screenshot(browser: &Client, name: &str) {
    let png = browser.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    std::fs::write(screenshots().join(format!("{name}.png")), png).unwrap();
}

pub(super) async fn click(browser: &Client, css: &str) {
    browser
        .find(Locator::Css(css))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

pub(super) async fn type_into(browser: &Client, css: &str, text: &str) {
    browser
        .find(Locator::Css(css))
        .await
        .unwrap()
        .send_keys(text)
        .await
        .unwrap();
}

pub(super) async fn text_of(browser: &Client, css: &str) -> String {
    browser
        .find(Locator::Css(css))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_user_signs_in_finds_a_referral_reads_its_versions_and_signs_out() {
    let ocean = MockOcean::start().await;
    let app = spawn_app_with(&users_config(&crate::support::flow::config(&ocean, "form"))).await;
    for name in [
        "v0.11-add-service-request.json",
        "update-task-accepted.json",
        "v0.10-add-service-request.json",
    ] {
        assert_eq!(app.deliver("default", fixture(name)).await.status, 200);
    }
    let driver = Driver::start().await;
    let browser = driver.browser().await;

    // Not signed in: the console sends the browser to the sign-in page.
    browser.goto(&app.url("/console")).await.unwrap();
    assert!(browser.current_url().await.unwrap().path() == "/console/login");
    screenshot(&browser, "login").await;
    type_into(&browser, "input[name=user]", "alice").await;
    type_into(&browser, "input[name=password]", ALICE_PASSWORD).await;
    click(&browser, "form.login button").await;
    browser
        .wait()
        .for_element(Locator::Css("table.referrals"))
        .await
        .unwrap();
    assert_eq!(
        browser.current_url().await.unwrap().path(),
        "/console/referrals"
    );
    let table = text_of(&browser, "table.referrals").await;
    assert!(table.contains("TST-0011-AAAA"), "{table}");
    assert!(table.contains("TST-0010-BBBB"), "{table}");
    assert!(text_of(&browser, "header .who").await.contains("alice"));
    screenshot(&browser, "referrals").await;

    // Filter to one service through the form.
    type_into(&browser, "input[name=service_id]", "CARDIO-RAPID-01").await;
    click(&browser, "form.filters button").await;
    // The page the form led to shows the filter it applied.
    browser
        .wait()
        .for_element(Locator::Css(
            "input[name=service_id][value='CARDIO-RAPID-01']",
        ))
        .await
        .unwrap();
    assert!(
        browser
            .current_url()
            .await
            .unwrap()
            .query()
            .unwrap_or("")
            .contains("service_id=CARDIO-RAPID-01")
    );
    let filtered = text_of(&browser, "table.referrals").await;
    assert!(filtered.contains("TST-0011-AAAA") && !filtered.contains("TST-0010-BBBB"));

    // Open the referral: its versions, newest first, and what each changed.
    browser
        .find(Locator::LinkText("TST-0011-AAAA"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser
        .wait()
        .for_element(Locator::Css("ol.timeline"))
        .await
        .unwrap();
    let timeline = text_of(&browser, "ol.timeline").await;
    let v2 = timeline
        .find("Version 2: notify-update-service-request")
        .unwrap();
    let v1 = timeline.find("Version 1: add-service-request").unwrap();
    assert!(v2 < v1, "newest first: {timeline}");
    assert!(
        timeline[v2..v1].contains("Task status: accepted"),
        "{timeline}"
    );
    let summary = text_of(&browser, "dl.summary").await;
    assert!(summary.contains("CARDIO-RAPID-01"), "{summary}");
    screenshot(&browser, "referral").await;
    // The raw message opens when asked, pretty-printed.
    click(&browser, "#v1 details summary").await;
    let raw = text_of(&browser, "#v1 pre.json").await;
    assert!(
        raw.contains("\"resourceType\": \"Bundle\""),
        "{}",
        &raw[..200.min(raw.len())]
    );
    screenshot(&browser, "referral-raw").await;

    // Accept the other referral from its page: the stand-in Ocean receives the Task, and the
    // page shows the update delivered.
    browser
        .goto(&app.url("/console/referrals/TST-0010-BBBB"))
        .await
        .unwrap();
    click(&browser, "select[name=status] option[value=accepted]").await;
    click(&browser, "form.action button").await;
    browser
        .wait()
        .for_element(Locator::Css("table.updates"))
        .await
        .unwrap();
    eventually("the accepted status reaching Ocean", async || {
        !tasks_received(&ocean).is_empty()
    })
    .await;
    assert_eq!(tasks_received(&ocean)[0].1, "accepted");
    browser.refresh().await.unwrap();
    let updates = text_of(&browser, "table.updates").await;
    assert!(
        updates.contains("accepted") && updates.contains("delivered"),
        "{updates}"
    );
    screenshot(&browser, "referral-accepted").await;

    // The weekly backup: unexported only, marked. The count first, then the file.
    browser.goto(&app.url("/console/backup")).await.unwrap();
    screenshot(&browser, "backup").await;
    click(&browser, "button[name=count]").await;
    let count = browser
        .wait()
        .for_element(Locator::Css("p.count"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(count, "2 referrals match.");
    click(&browser, "button[formaction='/console/backup/export.csv']").await;
    let file = driver.downloads.path().join("referrals.csv");
    eventually("the backup file downloaded", async || file.exists()).await;
    let mut refs = csv_refs(&std::fs::read_to_string(&file).unwrap());
    refs.sort();
    assert_eq!(refs, ["TST-0010-BBBB", "TST-0011-AAAA"]);
    // Run again: nothing left to export, and the list shows both exported.
    let started = Instant::now();
    loop {
        browser.goto(&app.url("/console/backup")).await.unwrap();
        click(&browser, "button[name=count]").await;
        let count = browser
            .wait()
            .for_element(Locator::Css("p.count"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if count == "0 referrals match." {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "{count}");
    }
    browser.goto(&app.url("/console/referrals")).await.unwrap();
    let exported = browser
        .find_all(Locator::Css("td.exported span"))
        .await
        .unwrap();
    assert_eq!(exported.len(), 2);
    assert_eq!(exported[0].text().await.unwrap(), "✓");
    screenshot(&browser, "referrals-exported").await;

    // A message Ocean refuses becomes a dead letter; the admin replays it from the outbox page
    // after confirming, and Ocean takes it.
    ocean.script([crate::support::ocean::Answer::Outcome(
        400,
        "Unknown referral",
    )]);
    browser
        .goto(&app.url("/console/referrals/TST-0010-BBBB"))
        .await
        .unwrap();
    type_into(
        &browser,
        "form[action$='/messages'] textarea[name=text]",
        "Please send the latest imaging report.",
    )
    .await;
    click(&browser, "form[action$='/messages'] button").await;
    // Accepted: the form led back to the referral's updates.
    let started = Instant::now();
    while browser.current_url().await.unwrap().fragment() != Some("updates") {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the message was not accepted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let started = Instant::now();
    loop {
        browser.goto(&app.url("/console/outbox")).await.unwrap();
        if browser.source().await.unwrap().contains("<td>dead</td>") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "never dead");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        text_of(&browser, "table.updates")
            .await
            .contains("Unknown referral")
    );
    screenshot(&browser, "outbox").await;
    browser
        .find(Locator::LinkText("Replay…"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    screenshot(&browser, "outbox-confirm").await;
    click(&browser, "main form button").await;
    eventually("the replayed update reaching Ocean", async || {
        ocean.delivered().len() == 2
    })
    .await;
    let started = Instant::now();
    loop {
        browser.goto(&app.url("/console/outbox")).await.unwrap();
        if browser
            .source()
            .await
            .unwrap()
            .contains("every update was delivered")
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "never delivered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The audit trail: verify the whole chain; the user's own entries by filter.
    browser.goto(&app.url("/console/audit")).await.unwrap();
    click(&browser, "form.verify button").await;
    let verdict = browser
        .wait()
        .for_element(Locator::Css(".verdict"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(verdict.starts_with("The chain is intact"), "{verdict}");
    screenshot(&browser, "audit").await;
    browser
        .goto(&app.url("/console/audit?action=UPDATE_REPLAYED&actor=console%3Aalice"))
        .await
        .unwrap();
    assert!(
        text_of(&browser, "table.audit")
            .await
            .contains("UPDATE_REPLAYED")
    );

    browser.goto(&app.url("/console/status")).await.unwrap();
    assert!(text_of(&browser, "dl.summary").await.contains("Ready\nyes"));
    screenshot(&browser, "status").await;

    // Sign out: back to the sign-in page, and the list is closed again.
    click(&browser, "form.logout button").await;
    browser
        .wait()
        .for_element(Locator::Css("form.login"))
        .await
        .unwrap();
    browser.goto(&app.url("/console/referrals")).await.unwrap();
    assert_eq!(
        browser.current_url().await.unwrap().path(),
        "/console/login"
    );
    browser.close().await.unwrap();
    app.stop().await;
}

/// A staff user limited to one service cannot open another service's referral by typing its
/// address; an idle session goes back to the sign-in page.
#[tokio::test]
async fn a_scoped_user_cannot_open_another_services_referral_and_an_idle_session_ends() {
    let app = spawn_app_with(&users_config(
        "[console]\nsession_idle_secs = 2\nsession_max_secs = 60",
    ))
    .await;
    for name in [
        "v0.11-add-service-request.json",
        "v0.10-add-service-request.json",
    ] {
        assert_eq!(app.deliver("default", fixture(name)).await.status, 200);
    }
    let driver = Driver::start().await;
    let browser = driver.browser().await;
    browser.goto(&app.url("/console/login")).await.unwrap();
    type_into(&browser, "input[name=user]", "bob").await;
    type_into(
        &browser,
        "input[name=password]",
        crate::support::console::BOB_PASSWORD,
    )
    .await;
    click(&browser, "form.login button").await;
    let table = browser
        .wait()
        .for_element(Locator::Css("table.referrals"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(table.contains("TST-0010-BBBB") && !table.contains("TST-0011-AAAA"));
    browser
        .goto(&app.url("/console/referrals/TST-0011-AAAA"))
        .await
        .unwrap();
    assert_eq!(text_of(&browser, "h1").await, "Not allowed");
    let body = text_of(&browser, "main").await;
    assert!(
        !body.contains("Testpatient"),
        "no patient detail of the other service"
    );
    screenshot(&browser, "not-allowed").await;
    // Unused past the idle limit: the next page is the sign-in page.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    browser.goto(&app.url("/console/referrals")).await.unwrap();
    assert_eq!(
        browser.current_url().await.unwrap().path(),
        "/console/login"
    );
    browser.close().await.unwrap();
    app.stop().await;
}
