//! Each condition of `[alerts]` triggered for real, and what a person receives: mails through
//! a real SMTP server (aiosmtpd) and Standard Webhooks messages checked by the reference
//! library, once when a condition starts and once when it clears, never in between, and never a
//! patient detail.

use std::time::Duration;

use reqwest::Method;
use tempfile::TempDir;

use crate::support::app::spawn_app_in;
use crate::support::destinations::{NEW_SECRET, api as ops_api};
use crate::support::fixtures::fixture;
use crate::support::flow;
use crate::support::ocean::{CLIENT_SECRET, MockOcean};
use crate::support::peers::WebhookReceiver;
use crate::support::poll::eventually;
use crate::support::smtp::{
    ONCALL, Options, SmtpServer, alerts_toml, assert_no_patient_detail, mail_with, subjects_with,
};

/// A dead letter in a destination and an Ocean site refusing the relay's token: each is mailed
/// to every recipient once when it starts; a restart repeats neither (their state is in the
/// store); replaying the dead letter clears it, mailed with how long it lasted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_and_a_failing_site_are_mailed_when_they_start_and_when_they_clear() {
    let smtp = SmtpServer::start(Options::plain());
    let ocean = MockOcean::start().await;
    let receiver = WebhookReceiver::start(&[NEW_SECRET]);
    let dir = TempDir::new().unwrap();
    let toml = format!(
        "{}\n[destinations.emr]\nkind = \"webhook\"\nurl = \"{}\"\nsecret = \"{NEW_SECRET}\"\n\n{}",
        flow::config(&ocean, "form").replace(CLIENT_SECRET, "not-the-secret"),
        receiver.url,
        alerts_toml(&smtp, "failing_minutes = 0.01\ndigest_from = 10"),
    );
    let app = spawn_app_in(dir.path(), &toml).await;
    receiver.fail(flow::REF, 400, 1).await;
    let stored = app
        .deliver("default", fixture("v0.11-add-service-request.json"))
        .await;
    assert_eq!(stored.status, 200, "{}", stored.body);
    flow::status(&app, "accepted").await;

    mail_with(&smtp, "STARTED: 1 dead letter in destination 'emr'").await;
    let mails = mail_with(&smtp, "STARTED: Ocean site 'main' is failing").await;
    for mail in &mails {
        assert_eq!(mail.to, ONCALL, "{}", mail.subject);
        assert_eq!(mail.from, "referral-relay@clinic.test");
    }
    let failing = subjects_with(&smtp, "Ocean site 'main' is failing");
    assert!(failing[0].body.contains("token"), "{}", failing[0].body);

    // A restart neither repeats the starts nor forgets them.
    app.stop().await;
    let app = spawn_app_in(dir.path(), &toml).await;
    let id = {
        let dead = flow::get_ok(&app, "/api/v1/destinations/emr/messages?state=dead").await;
        dead["messages"][0]["id"].as_u64().unwrap()
    };
    let replayed = flow::call(
        &app,
        Method::POST,
        &format!("/api/v1/destinations/emr/messages/{id}/replay"),
        None,
    )
    .await;
    assert_eq!(replayed.status, 202, "{}", replayed.body);
    let mails = mail_with(&smtp, "CLEARED: 1 dead letter in destination 'emr'").await;
    let cleared = subjects_with(&smtp, "CLEARED: 1 dead letter ");
    assert!(cleared[0].body.contains("it lasted"), "{}", cleared[0].body);
    assert_eq!(subjects_with(&smtp, "STARTED: 1 dead letter ").len(), 1);
    assert_eq!(subjects_with(&smtp, "STARTED: Ocean site 'main'").len(), 1);
    // A 400 is the message's refusal, not the destination failing.
    assert!(subjects_with(&smtp, "destination 'emr' is failing").is_empty());
    assert_no_patient_detail(&mails);

    // The API shows what holds and where each alert went.
    let alerts = flow::get_ok(&app, "/api/v1/alerts").await;
    let active: Vec<&str> = alerts["active"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["key"].as_str().unwrap())
        .collect();
    assert!(active.contains(&"failing:site:main"), "{alerts}");
    assert!(
        !active.iter().any(|k| k.starts_with("dead_letters")),
        "{alerts}"
    );
    let listed = alerts["alerts"].as_array().unwrap();
    let clear = listed
        .iter()
        .find(|a| a["key"] == "dead_letters:destination:emr" && a["phase"] == "cleared")
        .unwrap();
    assert_eq!(clear["deliveries"][0]["channel"], "email");
    assert_eq!(clear["deliveries"][0]["state"], "delivered");
    let actions = crate::support::console::audit_actions(&app).await;
    assert!(
        actions.iter().any(|(action, _)| action == "ALERT_CLEARED"),
        "{actions:?}"
    );
    app.stop().await;
}

/// A destination answering 500 fails for longer than `failing_minutes`: a signed webhook
/// alert (checked by the Standard Webhooks library) says so, and another when its sends land
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_destination_is_announced_by_webhook_and_cleared_when_it_recovers() {
    let emr = WebhookReceiver::start(&[NEW_SECRET]);
    let pager = WebhookReceiver::start(&[NEW_SECRET]);
    let dir = TempDir::new().unwrap();
    let toml = crate::support::destinations::toml(&format!(
        r#"
[destinations.emr]
kind = "webhook"
url = "{}"
secret = "{NEW_SECRET}"

[destinations.pager]
kind = "webhook"
url = "{}"
secret = "{NEW_SECRET}"
service_ids = ["alerts-only"]

[alerts]
destinations = ["pager"]
check_secs = 1
summary_every_secs = 0
failing_minutes = 0.02
"#,
        emr.url, pager.url
    ));
    let app = spawn_app_in(dir.path(), &toml).await;
    emr.fail(flow::REF, 500, 6).await;
    let stored = app
        .deliver("default", fixture("v0.11-add-service-request.json"))
        .await;
    assert_eq!(stored.status, 200, "{}", stored.body);

    let received = pager.wait_for(2).await;
    let kinds: Vec<(String, String)> = received
        .iter()
        .map(|m| {
            let body = &m["body"];
            (
                body["type"].as_str().unwrap_or_default().to_owned(),
                body["data"]["key"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            (
                "alert.started".to_owned(),
                "failing:destination:emr".to_owned()
            ),
            (
                "alert.cleared".to_owned(),
                "failing:destination:emr".to_owned()
            ),
        ],
        "{received:?}"
    );
    let reason = received[0]["body"]["data"]["detail"].as_str().unwrap();
    assert!(reason.contains("answered 500"), "{reason}");
    assert_eq!(emr.wait_for(1).await.len(), 1);
    let listed = ops_api(&app, Method::GET, "/api/v1/alerts", None).await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    let delivery = &listed.body["alerts"][0]["deliveries"][0];
    assert_eq!(delivery["channel"], "webhook:pager", "{}", listed.body);
    eventually("the clear's delivery recorded", async || {
        let listed = ops_api(&app, Method::GET, "/api/v1/alerts", None).await;
        listed.body["alerts"][0]["deliveries"][0]["state"] == "delivered"
    })
    .await;
    app.stop().await;
}

/// A destination failing until its message runs out of retry time: once the operator discards
/// the dead letter it has nothing left to send, so the failure clears with the dead letter
/// (nothing would ever land to clear it otherwise).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_destination_with_nothing_left_to_send_is_cleared() {
    let smtp = SmtpServer::start(Options::plain());
    let emr = WebhookReceiver::start(&[NEW_SECRET]);
    let dir = TempDir::new().unwrap();
    let toml = crate::support::destinations::toml(&format!(
        "[destinations.emr]\nkind = \"webhook\"\nurl = \"{}\"\nsecret = \"{NEW_SECRET}\"\n\n{}",
        emr.url,
        alerts_toml(&smtp, "failing_minutes = 0.02\ndigest_from = 10"),
    ))
    .replacen("[outbox]\n", "[outbox]\nretry_horizon_secs = 4\n", 1);
    let app = spawn_app_in(dir.path(), &toml).await;
    emr.fail(flow::REF, 500, 1000).await;
    let stored = app
        .deliver("default", fixture("v0.11-add-service-request.json"))
        .await;
    assert_eq!(stored.status, 200, "{}", stored.body);
    mail_with(&smtp, "STARTED: destination 'emr' is failing").await;
    mail_with(&smtp, "STARTED: 1 dead letter in destination 'emr'").await;
    let dead = ops_api(
        &app,
        Method::GET,
        "/api/v1/destinations/emr/messages?state=dead",
        None,
    )
    .await;
    let id = dead.body["messages"][0]["id"].as_u64().unwrap();
    let discarded = ops_api(
        &app,
        Method::POST,
        &format!("/api/v1/destinations/emr/messages/{id}/discard"),
        None,
    )
    .await;
    assert_eq!(discarded.status, 200, "{}", discarded.body);
    mail_with(&smtp, "CLEARED: 1 dead letter in destination 'emr'").await;
    mail_with(&smtp, "CLEARED: destination 'emr' is failing").await;
    app.stop().await;
}

/// Refused logins above the threshold start an alert; two integrations falling quiet in the
/// same look go out as one digest; a delivery ends one quiet spell alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_logins_and_quiet_integrations_are_mailed_and_several_at_once_as_a_digest() {
    let smtp = SmtpServer::start(Options::plain());
    let dir = TempDir::new().unwrap();
    let toml = format!(
        r#"
[integrations.ocean]
auth = {{ scheme = "basic", username = "ocean", password = "correct horse" }}

[integrations.north]
auth = {{ scheme = "none" }}

[integrations.south]
auth = {{ scheme = "none" }}

{}"#,
        alerts_toml(
            &smtp,
            "refused_logins = 3\nrefused_logins_minutes = 5.0\ndigest_from = 2\n\
             quiet_hours_by_integration = { north = 0.0006, south = 0.0006 }"
        ),
    );
    let app = spawn_app_in(dir.path(), &toml).await;
    let digest = mail_with(&smtp, "DIGEST: 2 alerts: 2 started").await;
    let digest = digest
        .iter()
        .find(|m| m.subject.contains("DIGEST"))
        .unwrap();
    assert!(
        digest.body.contains("integration 'north'"),
        "{}",
        digest.body
    );
    assert!(
        digest.body.contains("integration 'south'"),
        "{}",
        digest.body
    );

    for _ in 0..3 {
        let refused = app
            .client
            .post(app.url("/fhir/ocean/$process-message"))
            .basic_auth("ocean", Some("wrong horse"))
            .header("content-type", "application/fhir+json")
            .body(fixture("v0.11-add-service-request.json"))
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 401);
    }
    mail_with(&smtp, "STARTED: 3 refused logins for integration 'ocean'").await;

    let stored = app
        .deliver("north", fixture("v0.11-add-service-request.json"))
        .await;
    assert_eq!(stored.status, 200, "{}", stored.body);
    let mails = mail_with(&smtp, "CLEARED: no delivery on integration 'north'").await;
    assert!(subjects_with(&smtp, "integration 'south'").is_empty());
    assert_eq!(subjects_with(&smtp, "DIGEST").len(), 1);
    assert_no_patient_detail(&mails);
    app.stop().await;
}

/// A full disk: the store cannot queue the alert, so it is mailed from memory; once space is
/// freed, the clear is mailed and both are filed (the API lists them, the mail channel's
/// delivery of the start recorded as delivered, not sent twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_cannot_write_is_mailed_from_memory_and_filed_when_it_recovers() {
    let smtp = SmtpServer::start(Options::plain());
    let fs = crate::support::disk::SmallFilesystem::mount("12m");
    let data = fs.path.join("data");
    let toml = format!(
        "[api.clients.emr]\nkey = \"{}\"\n\n{}",
        flow::KEY,
        alerts_toml(&smtp, "store_unwritable_secs = 1"),
    );
    let app = spawn_app_in(&data, &toml).await;
    let template = String::from_utf8(fixture("v0.11-add-service-request.json")).unwrap();
    let filler = fs.fill(1 << 20);
    let mut n = 0;
    eventually("the disk to fill", async || {
        n += 1;
        let name = format!("TST-FULL-{n}");
        let body = crate::support::fixtures::unique_v011(&template, &name, &format!("full-{n}"));
        app.deliver("default", body).await.status == 503
    })
    .await;
    mail_with(&smtp, "STARTED: the store cannot write").await;
    std::fs::remove_file(filler).unwrap();
    let mails = mail_with(&smtp, "CLEARED: the store cannot write").await;
    assert_eq!(
        subjects_with(&smtp, "STARTED: the store cannot write").len(),
        1
    );
    assert_no_patient_detail(&mails);
    eventually("the alerts filed", async || {
        let alerts = flow::get_ok(&app, "/api/v1/alerts").await;
        let listed = alerts["alerts"].as_array().unwrap().clone();
        let phases: Vec<&str> = listed
            .iter()
            .filter(|a| a["key"] == "store")
            .map(|a| a["phase"].as_str().unwrap())
            .collect();
        phases == ["cleared", "started"]
            && listed
                .iter()
                .filter(|a| a["key"] == "store")
                .all(|a| a["deliveries"][0]["state"] == "delivered")
            // The start went from memory, and nothing was queued for it.
            && listed
                .iter()
                .filter(|a| a["key"] == "store" && a["phase"] == "started")
                .all(|a| a["deliveries"].as_array().unwrap().len() == 1
                    && a["deliveries"][0]["from_memory"] == true)
    })
    .await;
    // Nothing is sent a second time once filed.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(subjects_with(&smtp, "the store cannot write").len(), 2);
    app.stop().await;
}

/// A replica whose PostgreSQL is stopped (a server of the test's own, `pg_ctl stop`; the shared
/// server cannot be stopped under the other tests): the alert is mailed from memory within the
/// threshold plus the store's bound, and cleared once the server is started again; the relay's
/// alerts are filed then, each once. `restart`: the relay is restarted while the server is
/// down, and the start it sent from memory (kept in the data dir) is filed and cleared by the
/// next run.
async fn database_lost(restart: bool) {
    use referral_relay::store::{PgOptions, PgStore};
    let smtp = SmtpServer::start(Options::plain());
    let server = crate::support::postgres::PrivateServer::start();
    let url = server.url();
    let dir = TempDir::new().unwrap();
    let toml = format!(
        "[storage]\nbackend = \"postgres\"\nurl = \"{url}\"\n\n[api.clients.emr]\nkey = \"{}\"\n\n{}",
        flow::KEY,
        alerts_toml(&smtp, "store_unwritable_secs = 1"),
    );
    let config = crate::support::app::config(&toml, dir.path());
    let start = async || {
        let store = PgStore::connect(&PgOptions::new(url.clone()))
            .await
            .unwrap();
        crate::support::app::spawn_with_store(&config, store).await
    };
    let mut app = start().await;
    server.stop();
    let started = "STARTED: this replica cannot write to its PostgreSQL database";
    wait_long(&smtp, started).await;
    // The API still shows what holds, and says why the alerts themselves cannot be read.
    let alerts = flow::get_ok(&app, "/api/v1/alerts").await;
    assert_eq!(alerts["active"][0]["key"], "store", "{alerts}");
    assert!(alerts["store_error"].is_string(), "{alerts}");
    if restart {
        eventually("the unfiled start kept in the data dir", async || {
            dir.path().join(referral_relay::alerts::SPOOL).exists()
        })
        .await;
        app.stop().await;
        server.resume();
        app = start().await;
    } else {
        server.resume();
    }
    wait_long(&smtp, "CLEARED: this replica cannot write").await;
    eventually("both alerts filed", async || {
        let alerts = flow::get_ok(&app, "/api/v1/alerts").await;
        alerts["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["key"] == "store")
            .count()
            == 2
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(subjects_with(&smtp, started).len(), 1);
    assert_eq!(subjects_with(&smtp, "CLEARED: this replica").len(), 1);
    assert!(!dir.path().join(referral_relay::alerts::SPOOL).exists());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_losing_its_database_is_mailed_and_cleared_when_it_is_back() {
    database_lost(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_sent_from_memory_is_filed_and_cleared_after_a_restart() {
    database_lost(true).await;
}

/// Waits up to 90 s (the store's reads are bounded at 10 s each) for a mail about `words`.
async fn wait_long(smtp: &SmtpServer, words: &str) {
    for _ in 0..900 {
        if !subjects_with(smtp, words).is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let subjects: Vec<String> = smtp.messages().into_iter().map(|m| m.subject).collect();
    panic!("no mail about '{words}' within 90 s; mails: {subjects:?}");
}
