//! The console's actions and admin pages over plain HTTP: status changes and bookings sent
//! through the outbox, the backup form, dead letters, the audit page and its chain check, and
//! the status page.

use crate::support::console::{
    ALICE_PASSWORD, BOB_PASSWORD, Visitor, audit_actions, csv_refs, refused_sign_ins,
    tasks_received, users_config, with_referrals,
};
use crate::support::fixtures::fixture;
use crate::support::poll::eventually;

#[tokio::test]
async fn actions_go_through_the_outbox_to_ocean_offer_only_allowed_statuses_and_are_audited() {
    let ocean = crate::support::ocean::MockOcean::start().await;
    let app = with_referrals(&users_config(&crate::support::flow::config(&ocean, "form"))).await;
    let mut visitor = Visitor::new(&app);
    visitor.sign_in("alice", ALICE_PASSWORD).await;

    // TST-0010-BBBB has no Task yet: every first step is offered; TST-0011-AAAA was accepted.
    let new = visitor.get("/console/referrals/TST-0010-BBBB").await;
    assert!(new.html.contains("(now requested)"), "{}", new.html);
    for offered in ["received", "accepted", "rejected", "cancelled"] {
        assert!(new.html.contains(&format!("<option value=\"{offered}\">")));
    }
    let accepted = visitor.get("/console/referrals/TST-0011-AAAA").await;
    assert!(accepted.html.contains("(now accepted)"));
    assert!(accepted.html.contains("<option value=\"in-progress\">"));
    assert!(!accepted.html.contains("<option value=\"requested\">"));
    assert!(!accepted.html.contains("<option value=\"rejected\">"));

    let csrf = new.csrf();
    let forged = visitor
        .post(
            "/console/referrals/TST-0010-BBBB/status",
            &[("status", "accepted")],
        )
        .await;
    assert_eq!(forged.status, 403);
    let done = visitor
        .post(
            "/console/referrals/TST-0010-BBBB/status",
            &[("csrf", &csrf), ("status", "accepted"), ("reason", "")],
        )
        .await;
    assert_eq!(
        (done.status, done.location()),
        (303, "/console/referrals/TST-0010-BBBB#updates")
    );
    // Not allowed by the table (accepted → requested): refused, nothing queued.
    let refused = visitor
        .post(
            "/console/referrals/TST-0011-AAAA/status",
            &[("csrf", &csrf), ("status", "requested")],
        )
        .await;
    assert_eq!(refused.status, 409, "{}", refused.html);
    let booked = visitor
        .post(
            "/console/referrals/TST-0010-BBBB/appointments",
            &[
                ("csrf", &csrf),
                ("start", "2026-12-14T15:30"),
                ("minutes", "45"),
                ("confirmed", "on"),
                ("location", "Room 4"),
            ],
        )
        .await;
    assert_eq!(booked.status, 303, "{}", booked.html);
    let bad_time = visitor
        .post(
            "/console/referrals/TST-0010-BBBB/appointments",
            &[("csrf", &csrf), ("start", "next tuesday")],
        )
        .await;
    assert_eq!(bad_time.status, 400);
    let message = visitor
        .post(
            "/console/referrals/TST-0010-BBBB/messages",
            &[("csrf", &csrf), ("text", "Please send the latest ECG.")],
        )
        .await;
    assert_eq!(message.status, 303);

    eventually("the three actions reaching Ocean", async || {
        ocean.delivered().len() == 3
    })
    .await;
    assert_eq!(
        tasks_received(&ocean)
            .iter()
            .map(|(_, s)| s.as_str())
            .collect::<Vec<_>>(),
        ["accepted"]
    );
    let page = visitor.get("/console/referrals/TST-0010-BBBB").await;
    assert_eq!(
        page.html.matches("<td>delivered</td>").count(),
        3,
        "{}",
        page.html
    );
    let audited: Vec<_> = audit_actions(&app)
        .await
        .into_iter()
        .filter(|(action, _)| action == "UPDATE_ACCEPTED")
        .collect();
    assert_eq!(audited.len(), 3);
    assert!(audited.iter().all(|(_, actor)| actor == "console:alice"));
    app.stop().await;
}

#[tokio::test]
async fn the_referral_page_sends_instructions_forwards_corrects_and_redirects_through_the_outbox() {
    let ocean = crate::support::ocean::MockOcean::start().await;
    let app = with_referrals(&users_config(&crate::support::flow::config(&ocean, "form"))).await;
    let mut visitor = Visitor::new(&app);
    visitor.sign_in("alice", ALICE_PASSWORD).await;
    let page = visitor.get("/console/referrals/TST-0010-BBBB").await;
    for form in ["booking-instructions", "forward", "correction"] {
        assert!(
            page.html.contains(&format!(
                "action=\"/console/referrals/TST-0010-BBBB/{form}\""
            )),
            "{form}: {}",
            page.html
        );
    }
    let csrf = page.csrf();
    let post = async |visitor: &mut Visitor<'_>, path: &str, form: &[(&str, &str)]| {
        let mut fields = vec![("csrf", csrf.as_str())];
        fields.extend_from_slice(form);
        visitor
            .post(&format!("/console/referrals/TST-0010-BBBB/{path}"), &fields)
            .await
    };
    let done = post(
        &mut visitor,
        "status",
        &[
            ("status", "accepted"),
            ("redirect_url", "https://clinic.example/next"),
        ],
    )
    .await;
    assert_eq!(done.status, 303, "{}", done.html);
    let bad = post(
        &mut visitor,
        "status",
        &[("status", "in-progress"), ("redirect_url", "not a url")],
    )
    .await;
    assert_eq!(bad.status, 400, "{}", bad.html);
    let done = post(
        &mut visitor,
        "booking-instructions",
        &[("text", "Call 555-0100 to book.")],
    )
    .await;
    assert_eq!(done.status, 303, "{}", done.html);
    let done = post(
        &mut visitor,
        "correction",
        &[
            ("service", ""),
            ("category", "394579002"),
            ("category_display", "Cardiology"),
        ],
    )
    .await;
    assert_eq!(done.status, 303, "{}", done.html);
    // The v0.10 referral's category is text only: a forward must name one.
    let refused = post(&mut visitor, "forward", &[("listing_ref", "LISTING-9")]).await;
    assert_eq!(refused.status, 409, "{}", refused.html);
    assert!(refused.html.contains("SNOMED CT"), "{}", refused.html);
    let done = post(
        &mut visitor,
        "forward",
        &[("listing_ref", "LISTING-9"), ("category", "394579002")],
    )
    .await;
    assert_eq!(done.status, 303, "{}", done.html);

    eventually("the four actions reaching Ocean", async || {
        ocean.delivered().len() == 4
    })
    .await;
    let events: Vec<String> = ocean
        .delivered()
        .iter()
        .map(|m| {
            m["entry"][0]["resource"]["eventCoding"]["code"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        events,
        [
            "notify-add-process-request",
            "notify-add-appointment",
            "notify-data-correction",
            "notify-update-process-request"
        ]
    );
    assert_eq!(
        ocean.delivered()[0]["entry"][1]["resource"]["extension"][0]["valueUri"],
        "https://clinic.example/next"
    );
    crate::support::peers::assert_valid_r4(&ocean.delivered());
    let kinds: Vec<String> = app
        .store
        .audit_entries(0, 10_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.action == "UPDATE_ACCEPTED")
        .map(|e| e.details["kind"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        kinds,
        ["status", "booking-instructions", "correction", "forward"]
    );
    app.stop().await;
}

#[tokio::test]
async fn the_backup_form_counts_exports_marks_only_what_it_wrote_and_names_the_user() {
    let app = with_referrals(&users_config("")).await;
    let mut visitor = Visitor::new(&app);
    visitor.sign_in("alice", ALICE_PASSWORD).await;
    let form = visitor.get("/console/backup").await;
    assert_eq!(form.status, 200);
    assert!(form.html.contains("name=\"unexported_only\" checked"));
    assert!(form.html.contains("name=\"mark_exported\" checked"));
    let csrf = form.csrf();
    let weekly = [
        ("csrf", csrf.as_str()),
        ("from", ""),
        ("to", ""),
        ("unexported_only", "on"),
        ("mark_exported", "on"),
    ];

    let forged = visitor
        .post("/console/backup/export.csv", &weekly[1..])
        .await;
    assert_eq!(forged.status, 403);
    let count = visitor.post("/console/backup", &weekly).await;
    assert!(
        count.html.contains("<strong>2</strong> referrals match"),
        "{}",
        count.html
    );

    let csv = visitor.post("/console/backup/export.csv", &weekly).await;
    assert_eq!(csv.status, 200);
    assert!(
        csv.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    let mut refs = csv_refs(&csv.html);
    refs.sort();
    assert_eq!(refs, ["TST-0010-BBBB", "TST-0011-AAAA"]);
    // Marked once the whole file was taken (just after the last byte went out): the same
    // export again soon holds no row.
    let started = std::time::Instant::now();
    while !visitor
        .post("/console/backup", &weekly)
        .await
        .html
        .contains("<strong>0</strong> referrals match")
    {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "never marked"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let again = visitor.post("/console/backup/export.csv", &weekly).await;
    assert!(csv_refs(&again.html).is_empty(), "{}", again.html);
    let list = visitor.get("/console/referrals?exported=yes").await;
    assert_eq!(list.html.matches("✓").count(), 2, "{}", list.html);

    // Each export is audited once its last byte was taken, which may be just after the
    // visitor read it.
    let mut audited = Vec::new();
    for _ in 0..200 {
        audited = audit_actions(&app)
            .await
            .into_iter()
            .filter(|(action, _)| action == "EXPORTED_REFERRALS")
            .collect();
        if audited.len() >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(audited.len(), 2);
    assert!(audited.iter().all(|(_, actor)| actor == "console:alice"));

    // A scoped user exports only their service, and may not ask for another.
    let mut bob = Visitor::new(&app);
    bob.sign_in("bob", BOB_PASSWORD).await;
    let csrf = bob.get("/console/backup").await.csrf();
    let theirs = bob
        .post("/console/backup/export.csv", &[("csrf", csrf.as_str())])
        .await;
    assert_eq!(csv_refs(&theirs.html), ["TST-0010-BBBB"]);
    let other = bob
        .post(
            "/console/backup/export.csv",
            &[("csrf", csrf.as_str()), ("service_id", "CARDIO-RAPID-01")],
        )
        .await;
    assert_eq!(other.status, 403);
    app.stop().await;
}

#[tokio::test]
async fn an_admin_replays_a_dead_letter_after_confirming_and_staff_cannot_see_the_outbox() {
    use crate::support::ocean::{Answer, MockOcean};
    let ocean = MockOcean::start().await;
    ocean.script([Answer::Outcome(400, "Unknown referral")]);
    let app = with_referrals(&users_config(&crate::support::flow::config(&ocean, "form"))).await;
    let mut alice = Visitor::new(&app);
    alice.sign_in("alice", ALICE_PASSWORD).await;
    let csrf = alice.get("/console/referrals/TST-0010-BBBB").await.csrf();
    let sent = alice
        .post(
            "/console/referrals/TST-0010-BBBB/messages",
            &[("csrf", csrf.as_str()), ("text", "Please call the clinic.")],
        )
        .await;
    assert_eq!(sent.status, 303);
    // Refused by Ocean: a dead letter, shown with its error and the two actions.
    let started = std::time::Instant::now();
    let outbox = loop {
        let page = alice.get("/console/outbox").await;
        if page.html.contains("<td>dead</td>") {
            break page;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "{}",
            page.html
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(outbox.html.contains("Unknown referral"), "{}", outbox.html);
    let id = {
        let at = outbox.html.find("/console/outbox/").unwrap() + 16;
        outbox.html[at..].split('/').next().unwrap().to_owned()
    };
    assert!(
        outbox
            .html
            .contains(&format!("/console/outbox/{id}/discard"))
    );

    let confirm = alice.get(&format!("/console/outbox/{id}/replay")).await;
    assert_eq!(confirm.status, 200);
    assert!(confirm.html.contains(&format!("Replay update {id}?")));
    let forged = alice
        .post(&format!("/console/outbox/{id}/replay"), &[])
        .await;
    assert_eq!(forged.status, 403);
    assert_eq!(
        ocean.delivered().len(),
        0,
        "nothing replayed without the form token"
    );
    let replayed = alice
        .post(
            &format!("/console/outbox/{id}/replay"),
            &[("csrf", confirm.csrf().as_str())],
        )
        .await;
    assert_eq!(
        (replayed.status, replayed.location()),
        (303, "/console/outbox")
    );
    eventually("the replayed update reaching Ocean", async || {
        ocean.delivered().len() == 1
    })
    .await;
    let started = std::time::Instant::now();
    while !alice
        .get("/console/outbox")
        .await
        .html
        .contains("every update was delivered")
    {
        assert!(started.elapsed() < std::time::Duration::from_secs(20));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let actions = audit_actions(&app).await;
    assert!(actions.contains(&("UPDATE_REPLAYED".into(), "console:alice".into())));

    // Staff: no outbox, no audit, and no links to them.
    let mut bob = Visitor::new(&app);
    bob.sign_in("bob", BOB_PASSWORD).await;
    let list = bob.get("/console/referrals").await;
    assert!(!list.html.contains("/console/outbox") && !list.html.contains("/console/audit"));
    assert_eq!(bob.get("/console/outbox").await.status, 403);
    assert_eq!(
        bob.get(&format!("/console/outbox/{id}/discard"))
            .await
            .status,
        403
    );
    assert_eq!(bob.get("/console/audit").await.status, 403);
    app.stop().await;
}

#[tokio::test]
async fn the_audit_page_filters_entries_and_verifies_the_chain() {
    let app = with_referrals(&users_config("[server]\nauth_failure_report_secs = 1")).await;
    let mut alice = Visitor::new(&app);
    alice.sign_in("bob", "wrong-password-000").await;
    refused_sign_ins(&app, 1).await;
    alice.sign_in("alice", ALICE_PASSWORD).await;
    let all = alice.get("/console/audit").await;
    assert_eq!(all.status, 200);
    assert!(all.html.contains("DELIVERY_STORED") && all.html.contains("CONSOLE_LOGIN"));
    let mine = alice
        .get("/console/audit?action=&actor=console%3Aalice")
        .await;
    assert!(
        mine.html.contains("<td>CONSOLE_LOGIN</td>"),
        "{}",
        mine.html
    );
    assert!(!mine.html.contains("DELIVERY_STORED"));
    assert!(!mine.html.contains("console:bob"));
    let failed = alice.get("/console/audit?action=AUTH_FAILURE&actor=").await;
    assert!(
        failed.html.contains("<td>console:bob</td>"),
        "{}",
        failed.html
    );
    assert!(!failed.html.contains("<td>CONSOLE_LOGIN</td>"));

    let forged = alice.post("/console/audit/verify", &[]).await;
    assert_eq!(forged.status, 403);
    let verified = alice
        .post("/console/audit/verify", &[("csrf", all.csrf().as_str())])
        .await;
    assert_eq!(verified.status, 200);
    let entries = app.store.audit_entries(0, 10_000).await.unwrap().len() - 1;
    assert!(
        verified
            .html
            .contains(&format!("The chain is intact: {entries} entries checked.")),
        "{}",
        verified.html
    );
    app.stop().await;
}

#[tokio::test]
async fn the_status_page_shows_readiness_integrations_and_sites_and_checks_a_site() {
    let ocean = crate::support::ocean::MockOcean::start().await;
    let app = with_referrals(&users_config(&crate::support::flow::config(&ocean, "form"))).await;
    let mut alice = Visitor::new(&app);
    alice.sign_in("alice", ALICE_PASSWORD).await;
    let page = alice.get("/console/status").await;
    assert_eq!(page.status, 200);
    assert!(
        page.html.contains("<dd class=\"ok\">yes</dd>"),
        "{}",
        page.html
    );
    assert!(
        page.html.contains("embedded (sled): writable")
            || page.html.contains("PostgreSQL: writable")
    );
    assert!(page.html.contains("<td>default</td>") && page.html.contains("<td>none</td>"));
    assert!(page.html.contains("<td>main</td>") && page.html.contains(&ocean.addr.to_string()));
    assert!(page.html.contains("3 events"), "{}", page.html);
    // Never a secret.
    assert!(!page.html.contains(crate::support::ocean::CLIENT_SECRET));

    let forged = alice.post("/console/status/sites/main/check", &[]).await;
    assert_eq!(forged.status, 403);
    // The check fetches a token of its own (the document fetcher may have fetched others).
    let tokens_before = ocean.token_requests().len();
    let checked = alice
        .post(
            "/console/status/sites/main/check",
            &[("csrf", page.csrf().as_str())],
        )
        .await;
    assert!(
        checked.html.contains("the credentials work"),
        "{}",
        checked.html
    );
    assert_eq!(ocean.token_requests().len(), tokens_before + 1);
    assert!(
        audit_actions(&app)
            .await
            .contains(&("SITE_CHECKED".into(), "console:alice".into()))
    );

    let mut bob = Visitor::new(&app);
    bob.sign_in("bob", BOB_PASSWORD).await;
    assert_eq!(bob.get("/console/status").await.status, 403);
    app.stop().await;
}

/// The chain check says where a tampered chain breaks (an entry edited in the database, on
/// PostgreSQL, where the console reads the same chain as every replica).
#[tokio::test]
async fn the_audit_check_names_the_entry_where_a_tampered_chain_breaks() {
    let schema = crate::support::postgres::Schema::new();
    let dir = tempfile::TempDir::new().unwrap();
    let config = crate::support::app::config(&users_config(""), dir.path());
    let store: std::sync::Arc<dyn referral_relay::store::Store> = schema.store().await;
    let app = crate::support::app::spawn_with_store(&config, store).await;
    assert_eq!(
        app.deliver("default", fixture("v0.11-add-service-request.json"))
            .await
            .status,
        200
    );
    let mut alice = Visitor::new(&app);
    alice.sign_in("alice", ALICE_PASSWORD).await;
    let csrf = alice.get("/console/audit").await.csrf();
    let intact = alice
        .post("/console/audit/verify", &[("csrf", csrf.as_str())])
        .await;
    assert!(
        intact.html.contains("The chain is intact"),
        "{}",
        intact.html
    );
    schema
        .client()
        .await
        .batch_execute("UPDATE audit SET actor = 'someone else' WHERE seq = 2")
        .await
        .unwrap();
    let broken = alice
        .post("/console/audit/verify", &[("csrf", csrf.as_str())])
        .await;
    assert!(
        broken
            .html
            .contains("The chain breaks at entry 2: its content does not match its hash."),
        "{}",
        broken.html
    );
    app.stop().await;
    schema.drop_now().await;
}

/// The status page shows the alert conditions holding and the latest alerts with where each
/// went (here: an integration gone quiet, mailed through a real SMTP server).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_alerts_holding_and_where_each_went() {
    use crate::support::smtp::{Options, SmtpServer};
    let smtp = SmtpServer::start(Options::plain());
    let alerts = crate::support::smtp::alerts_toml(
        &smtp,
        "quiet_hours_by_integration = { default = 0.0003 }",
    );
    let app = with_referrals(&users_config(&alerts)).await;
    crate::support::smtp::mail_with(&smtp, "STARTED: no delivery on integration 'default'").await;
    let mut alice = Visitor::new(&app);
    alice.sign_in("alice", ALICE_PASSWORD).await;
    let mut page = alice.get("/console/status").await;
    crate::support::poll::eventually("the alert's delivery on the status page", async || {
        page = alice.get("/console/status").await;
        page.html.contains("email delivered")
    })
    .await;
    assert!(
        page.html
            .contains("<td class=\"problem\">no delivery on integration &#x27;default&#x27;"),
        "{}",
        page.html
    );
    assert!(
        page.html.contains("started: no delivery on integration"),
        "{}",
        page.html
    );
    assert!(page.html.contains("Channels: email."), "{}", page.html);
    app.stop().await;
}
