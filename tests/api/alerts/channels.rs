//! What goes out that is not a condition starting or clearing: `alert-test` through every
//! channel, the watch-list's summary (counts only), and events (a document given up).

use tempfile::TempDir;

use crate::support::app::spawn_app_in;
use crate::support::binary::run;
use crate::support::fixtures::fixture;
use crate::support::smtp::{
    ONCALL, Options, SmtpServer, alerts_toml, assert_no_patient_detail, mail_with, subjects_with,
};

/// `referral-relay alert-test` sends a test alert by e-mail (STARTTLS, AUTH) and says so; with
/// no channel configured it fails, naming what to set.
#[test]
fn alert_test_sends_by_every_channel_and_fails_without_one() {
    let smtp = SmtpServer::start(Options::starttls().auth("relay", "mail-secret"));
    let dir = TempDir::new().unwrap();
    let config = dir.path().join("relay.toml");
    std::fs::write(&config, alerts_toml(&smtp, "")).unwrap();
    let output = run(&["alert-test", "--config", config.to_str().unwrap()], &[]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("email: the test alert was taken"),
        "{stdout}"
    );
    let mails = subjects_with(&smtp, "EVENT: test alert from referral-relay alert-test");
    assert_eq!(mails.len(), 1);
    assert_eq!(mails[0].to, ONCALL);
    assert!(mails[0].tls && mails[0].user.as_deref() == Some("relay"));

    // check-config builds the channels as serve does: what serve would refuse, it refuses.
    for (bad, words) in [
        (
            alerts_toml(&smtp, "").replace("oncall@clinic.test", "on@call@clinic.test"),
            "alerts.email_to[0]",
        ),
        (
            alerts_toml(&smtp, "")
                .replace(&smtp.ca_file().display().to_string(), "/nonexistent/ca.pem"),
            "alerts.smtp.ca_file",
        ),
    ] {
        std::fs::write(&config, bad).unwrap();
        let output = run(&["check-config", "--config", config.to_str().unwrap()], &[]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{words}");
        assert!(stderr.contains(words), "{words}: {stderr}");
    }

    std::fs::write(&config, "").unwrap();
    let output = run(&["alert-test", "--config", config.to_str().unwrap()], &[]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("no alert channel is configured"),
        "{stderr}"
    );
}

/// The watch-list's summary goes out at the first look and then every `summary_every_secs`,
/// with counts by kind and no patient detail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_list_summary_is_mailed_with_counts_only() {
    let smtp = SmtpServer::start(Options::plain());
    let dir = TempDir::new().unwrap();
    let toml = alerts_toml(&smtp, "").replace("summary_every_secs = 0", "summary_every_secs = 2");
    let app = spawn_app_in(dir.path(), &toml).await;
    let stored = app
        .deliver("default", fixture("v0.11-add-service-request.json"))
        .await;
    assert_eq!(stored.status, 200, "{}", stored.body);
    mail_with(&smtp, "EVENT: watch-list summary").await;
    crate::support::poll::eventually("a second summary", async || {
        subjects_with(&smtp, "watch-list summary").len() >= 2
    })
    .await;
    let mails = subjects_with(&smtp, "watch-list summary");
    for kind in [
        "overdue",
        "appointment_passed",
        "revoked_after_action",
        "nearing_archival",
        "closed_by_ocean",
    ] {
        assert!(
            mails[0].body.contains(&format!("{kind}: ")),
            "{}",
            mails[0].body
        );
    }
    assert!(
        !mails[0].body.contains("TST-0011-AAAA"),
        "{}",
        mails[0].body
    );
    assert_no_patient_detail(&mails);
    app.stop().await;
}

/// A document the fetcher gives up on (Ocean answers 404 for the letter) is an event: mailed
/// once, naming the referral and the document, never its content.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_given_up_is_mailed_once() {
    use crate::support::ocean::{MockOcean, Serve};
    let smtp = SmtpServer::start(Options::plain());
    let ocean = MockOcean::start().await;
    ocean.serve(
        "/svc/fhir/v1/ServiceRequest/TST-0011-AAAA/$letter",
        [Serve::Status(404)],
    );
    let dir = TempDir::new().unwrap();
    let toml = format!(
        "{}\n{}",
        crate::support::flow::config(&ocean, "form"),
        alerts_toml(&smtp, "")
    );
    let app = spawn_app_in(dir.path(), &toml).await;
    let stored = app
        .deliver("default", fixture("v0.11-add-service-request.json"))
        .await;
    assert_eq!(stored.status, 200, "{}", stored.body);
    let mails = mail_with(
        &smtp,
        "EVENT: a document of referral TST-0011-AAAA was given up",
    )
    .await;
    let mail = mails
        .iter()
        .find(|m| m.subject.contains("given up"))
        .unwrap();
    assert!(
        mail.body.contains("Document 0 of version 1"),
        "{}",
        mail.body
    );
    assert_no_patient_detail(&mails);
    // Later looks do not send it again.
    let alerts = crate::support::poll::eventually("two more looks", async || {
        let body: serde_json::Value = crate::support::flow::get_ok(&app, "/api/v1/alerts").await;
        body["alerts"][0]["deliveries"][0]["state"] == "delivered"
    });
    alerts.await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(subjects_with(&smtp, "given up").len(), 1);
    app.stop().await;
}

/// An alert the mail server refuses for good (550 for a recipient) is given up at once: shown
/// as discarded with the server's reply, audited, and the channel's later alerts are still
/// tried (a dead alert at the head of the channel would hold them back forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_refused_for_good_is_given_up_and_holds_nothing_back() {
    let smtp = SmtpServer::start(Options::plain().refuse(ONCALL[1], "550 5.1.1 No such mailbox"));
    let dir = TempDir::new().unwrap();
    let toml = format!(
        "[api.clients.emr]\nkey = \"{}\"\n\n[integrations.north]\nauth = {{ scheme = \"none\" }}\n\n[integrations.south]\nauth = {{ scheme = \"none\" }}\n\n{}",
        crate::support::flow::KEY,
        alerts_toml(
            &smtp,
            "quiet_hours_by_integration = { north = 0.0003, south = 0.0009 }"
        ),
    );
    let app = spawn_app_in(dir.path(), &toml).await;
    let mut alerts = serde_json::Value::Null;
    crate::support::poll::eventually("both alerts given up", async || {
        alerts = crate::support::flow::get_ok(&app, "/api/v1/alerts").await;
        let given_up = alerts["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["deliveries"][0]["state"] == "discarded")
            .count();
        given_up == 2
    })
    .await;
    let reply = alerts["alerts"][0]["deliveries"][0]["last_error"]
        .as_str()
        .unwrap();
    assert!(reply.contains("550"), "{reply}");
    assert!(smtp.messages().is_empty());
    let actions = crate::support::console::audit_actions(&app).await;
    let dead = actions
        .iter()
        .filter(|(action, _)| action == "ALERT_DEAD_LETTERED")
        .count();
    assert_eq!(dead, 2, "{actions:?}");
    app.stop().await;
}
