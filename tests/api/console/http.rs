//! The web console over plain HTTP: sign-in, sessions, form tokens, security headers and
//! scoping (what a browser does is in `browser`).

use std::collections::HashMap;

use reqwest::header::{HeaderMap, SET_COOKIE};

use crate::support::app::{TestApp, spawn_app_with};
use crate::support::console::{
    ALICE_PASSWORD, BOB_PASSWORD, Page, Visitor, csv_refs, tasks_received, users_config,
};
use crate::support::fixtures::fixture;
use crate::support::poll::eventually;

async fn with_referrals(toml: &str) -> TestApp {
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
async fn refused_sign_ins(app: &TestApp, total: u64) -> HashMap<String, Vec<String>> {
    let mut reports = Vec::new();
    for _ in 0..100 {
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
        if counted == total {
            let mut reasons: HashMap<String, Vec<String>> = HashMap::new();
            for e in reports {
                let reason = e.details["reason"].as_str().unwrap_or_default().to_owned();
                reasons.entry(e.actor).or_default().push(reason);
            }
            return reasons;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the console's refused sign-ins were not reported as {total}: {reports:?}");
}

async fn audit_actions(app: &TestApp) -> Vec<(String, String)> {
    app.store
        .audit_entries(0, 10_000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.action, e.actor))
        .collect()
}

#[tokio::test]
async fn with_no_users_the_console_says_how_to_add_one() {
    let app = spawn_app_with("").await;
    let mut visitor = Visitor::new(&app);
    let home = visitor.get("/console").await;
    assert_eq!(home.status, 303);
    let page = visitor.get(home.location()).await;
    assert_eq!(page.status, 200);
    assert!(
        page.html.contains("referral-relay hash-password"),
        "{}",
        page.html
    );
    assert!(page.html.contains("[console.users."));
    // Nothing else is reachable without a user.
    let list = visitor.get("/console/referrals").await;
    assert_eq!((list.status, list.location()), (303, "/console/login"));
    app.stop().await;
}

#[tokio::test]
async fn pages_carry_the_security_headers_and_nothing_is_cached() {
    let app = with_referrals(&users_config("")).await;
    let mut visitor = Visitor::new(&app);
    let login = visitor.get("/console/login").await;
    assert_eq!(visitor.sign_in("alice", ALICE_PASSWORD).await.status, 303);
    let list = visitor.get("/console/referrals").await;
    let css = visitor.get("/console/assets/console.css").await;
    let missing = visitor.get("/console/referrals/NO-SUCH-REF").await;
    for page in [&login, &list, &css, &missing] {
        let h = |name: &str| page.headers.get(name).unwrap().to_str().unwrap().to_owned();
        assert_eq!(h("cache-control"), "no-store");
        assert_eq!(h("referrer-policy"), "no-referrer");
        let csp = h("content-security-policy");
        assert!(csp.contains("default-src 'none'"), "{csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert!(!csp.contains("script-src"), "no script is allowed: {csp}");
        assert!(!csp.contains("unsafe-inline"), "{csp}");
    }
    assert_eq!(list.status, 200);
    assert!(
        list.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert_eq!(missing.status, 404);
    assert!(missing.html.contains("no referral NO-SUCH-REF is stored"));
    // No inline script or style anywhere, no third-party address.
    for page in [&login, &list, &missing] {
        assert!(!page.html.contains("<script"), "{}", page.html);
        assert!(!page.html.contains("style="), "{}", page.html);
        assert!(!page.html.contains("http://") && !page.html.contains("https://"));
    }
    app.stop().await;
}

#[tokio::test]
async fn sign_in_sets_a_strict_cookie_and_checks_the_password_and_the_form_token() {
    let app = with_referrals(&users_config("[server]\nauth_failure_report_secs = 1")).await;
    let mut visitor = Visitor::new(&app);

    // Posted without the sign-in page's token: refused, whatever the password.
    let forged = visitor
        .post(
            "/console/login",
            &[("user", "alice"), ("password", ALICE_PASSWORD)],
        )
        .await;
    assert_eq!(forged.status, 403, "{}", forged.html);
    assert!(!visitor.cookies.contains_key("relay_console"));

    let wrong = visitor.sign_in("alice", "not-her-password").await;
    assert_eq!(wrong.status, 401);
    assert!(wrong.html.contains("do not match"));
    assert!(!visitor.cookies.contains_key("relay_console"));
    let unknown = visitor.sign_in("mallory", ALICE_PASSWORD).await;
    assert_eq!(unknown.status, 401);

    let ok = visitor.sign_in("alice", ALICE_PASSWORD).await;
    assert_eq!((ok.status, ok.location()), (303, "/console/referrals"));
    let session = visitor
        .set_cookies
        .iter()
        .find(|c| c.starts_with("relay_console="))
        .expect("a session cookie")
        .clone();
    assert!(session.contains("HttpOnly"), "{session}");
    assert!(session.contains("SameSite=Strict"), "{session}");
    assert!(session.contains("Path=/console"), "{session}");
    assert!(
        !session.contains("Secure"),
        "plain HTTP, not configured: {session}"
    );
    let list = visitor.get("/console/referrals").await;
    assert_eq!(list.status, 200);
    assert!(list.html.contains("TST-0011-AAAA") && list.html.contains("TST-0010-BBBB"));

    // Failures are reported like other refused logins: counted, one entry per kind and interval.
    let failures = refused_sign_ins(&app, 2).await;
    assert_eq!(
        failures["console:alice"],
        ["console sign-in: wrong password"]
    );
    // A name that is no user is not written down (it may be a password typed in the wrong box).
    assert_eq!(
        failures["console:(unknown user)"],
        ["console sign-in: unknown user"]
    );
    let actions = audit_actions(&app).await;
    assert!(actions.contains(&("CONSOLE_LOGIN".into(), "console:alice".into())));
    assert!(!actions.iter().any(|(_, actor)| actor.contains("mallory")));
    app.stop().await;
}

#[tokio::test]
async fn secure_cookies_are_marked_secure() {
    let app = spawn_app_with(&users_config("[console]\nsecure_cookies = true")).await;
    let mut visitor = Visitor::new(&app);
    visitor.sign_in("alice", ALICE_PASSWORD).await;
    assert!(
        visitor
            .set_cookies
            .iter()
            .any(|c| c.starts_with("relay_console=") && c.contains("Secure")),
        "{:?}",
        visitor.set_cookies
    );
    app.stop().await;
}

#[tokio::test]
async fn repeated_failed_sign_ins_are_slowed_down() {
    let app = spawn_app_with(&users_config("")).await;
    let mut visitor = Visitor::new(&app);
    for _ in 0..5 {
        assert_eq!(
            visitor.sign_in("alice", "guess-guess-guess").await.status,
            401
        );
    }
    let limited = visitor.sign_in("alice", ALICE_PASSWORD).await;
    assert_eq!(limited.status, 429, "even the right password waits");
    assert!(limited.html.contains("Too many failed sign-ins"));
    // Another user from the same address is not locked out by Alice's failures.
    assert_eq!(visitor.sign_in("bob", BOB_PASSWORD).await.status, 303);
    app.stop().await;
}

/// What an unauthenticated caller types as a user name is never kept: a long one is refused
/// before anything else, and names that are no user share one count (inventing names gains a
/// guesser nothing, and a flood of names cannot grow the process).
#[tokio::test]
async fn user_names_that_are_long_or_unknown_are_not_kept() {
    let app = spawn_app_with(&users_config("[server]\nauth_failure_report_secs = 1")).await;
    let mut visitor = Visitor::new(&app);
    let long = "a".repeat(65);
    let refused = visitor.sign_in(&long, "guess-guess-guess").await;
    assert_eq!(refused.status, 400);
    assert!(
        refused.html.contains("at most 64 characters"),
        "{}",
        refused.html
    );
    for n in 0..5 {
        let name = format!("nobody-{n}");
        assert_eq!(
            visitor.sign_in(&name, "guess-guess-guess").await.status,
            401
        );
    }
    let sixth = visitor.sign_in("nobody-else", "guess-guess-guess").await;
    assert_eq!(sixth.status, 429, "unknown names share one count");
    // The user the names were not is unaffected.
    assert_eq!(visitor.sign_in("alice", ALICE_PASSWORD).await.status, 303);
    // Reported: five wrong names, and the one refused for too many.
    let mut reasons = refused_sign_ins(&app, 6).await["console:(unknown user)"].clone();
    // One entry per reason and interval: the attempts may span two intervals.
    reasons.sort();
    reasons.dedup();
    assert_eq!(
        reasons,
        [
            "console sign-in: too many failed attempts",
            "console sign-in: unknown user"
        ]
    );
    app.stop().await;
}

#[tokio::test]
async fn logout_needs_the_form_token_and_ends_the_session() {
    let app = with_referrals(&users_config("")).await;
    let mut visitor = Visitor::new(&app);
    visitor.sign_in("alice", ALICE_PASSWORD).await;
    let list = visitor.get("/console/referrals").await;
    let csrf = list.csrf();
    let session = visitor.cookies["relay_console"].clone();

    let forged = visitor.post("/console/logout", &[]).await;
    assert_eq!(forged.status, 403);
    let wrong = visitor
        .post("/console/logout", &[("csrf", "not-the-token")])
        .await;
    assert_eq!(wrong.status, 403);
    assert_eq!(
        visitor.get("/console/referrals").await.status,
        200,
        "still signed in"
    );

    let out = visitor.post("/console/logout", &[("csrf", &csrf)]).await;
    assert_eq!((out.status, out.location()), (303, "/console/login"));
    assert!(
        !visitor.cookies.contains_key("relay_console"),
        "cookie cleared"
    );
    // The old cookie, replayed, no longer opens anything.
    visitor.cookies.insert("relay_console".into(), session);
    let after = visitor.get("/console/referrals").await;
    assert_eq!((after.status, after.location()), (303, "/console/login"));
    let actions = audit_actions(&app).await;
    assert!(actions.contains(&("CONSOLE_LOGOUT".into(), "console:alice".into())));
    app.stop().await;
}

#[tokio::test]
async fn an_idle_session_goes_back_to_the_sign_in_page() {
    let app = with_referrals(&users_config(
        "[console]\nsession_idle_secs = 1\nsession_max_secs = 60",
    ))
    .await;
    let mut visitor = Visitor::new(&app);
    visitor.sign_in("alice", ALICE_PASSWORD).await;
    assert_eq!(visitor.get("/console/referrals").await.status, 200);
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let expired = visitor.get("/console/referrals").await;
    assert_eq!(
        (expired.status, expired.location()),
        (303, "/console/login")
    );
    app.stop().await;
}

#[tokio::test]
async fn a_scoped_user_sees_only_their_services_referrals() {
    let app = with_referrals(&users_config("")).await;
    let mut visitor = Visitor::new(&app);
    assert_eq!(visitor.sign_in("bob", BOB_PASSWORD).await.status, 303);
    let list = visitor.get("/console/referrals").await;
    assert!(list.html.contains("TST-0010-BBBB"), "{}", list.html);
    assert!(!list.html.contains("TST-0011-AAAA"), "{}", list.html);
    let theirs = visitor.get("/console/referrals/TST-0010-BBBB").await;
    assert_eq!(theirs.status, 200);
    let other = visitor.get("/console/referrals/TST-0011-AAAA").await;
    assert_eq!(other.status, 403, "{}", other.html);
    assert!(!other.html.contains("TST-0011-AAAA</dd>"));
    let raw = visitor
        .get("/console/referrals/TST-0011-AAAA/versions/1/raw")
        .await;
    assert_eq!(raw.status, 403);
    let filtered = visitor
        .get("/console/referrals?service_id=CARDIO-RAPID-01")
        .await;
    assert_eq!(filtered.status, 403);
    app.stop().await;
}

#[tokio::test]
async fn a_referral_page_shows_its_versions_what_changed_and_the_raw_message() {
    let app = with_referrals(&users_config("")).await;
    let mut visitor = Visitor::new(&app);
    visitor.sign_in("alice", ALICE_PASSWORD).await;
    let page = visitor.get("/console/referrals/TST-0011-AAAA").await;
    assert_eq!(page.status, 200);
    assert!(page.html.contains("Version 1: add-service-request"));
    assert!(
        page.html
            .contains("Version 2: notify-update-service-request")
    );
    // Version 2 (the Task accepted) changed the Task status.
    let v2 = &page.html[page.html.find("id=\"v2\"").unwrap()..page.html.find("id=\"v1\"").unwrap()];
    assert!(v2.contains("Task status: accepted"), "{v2}");
    // Resources: the Task is new in version 2; the eForm it no longer carries is said so.
    assert!(v2.contains("new: Task #1"), "{v2}");
    assert!(
        v2.contains("not carried this time:") && v2.contains("QuestionnaireResponse #1"),
        "{v2}"
    );
    // The message as received, pretty-printed and escaped.
    assert!(
        page.html
            .contains("&quot;resourceType&quot;: &quot;Bundle&quot;")
    );
    let raw = visitor
        .get("/console/referrals/TST-0011-AAAA/versions/1/raw")
        .await;
    assert_eq!(raw.status, 200);
    assert_eq!(
        raw.html.as_bytes(),
        fixture("v0.11-add-service-request.json").as_slice()
    );
    assert!(
        raw.headers["content-disposition"]
            .to_str()
            .unwrap()
            .contains("TST-0011-AAAA-v1.json")
    );
    app.stop().await;
}

#[tokio::test]
async fn the_list_filters_by_service_status_date_and_export_and_marks_what_is_new() {
    let app = with_referrals(&users_config("")).await;
    let mut visitor = Visitor::new(&app);
    visitor.sign_in("alice", ALICE_PASSWORD).await;
    let first = visitor.get("/console/referrals").await;
    assert!(
        !first.html.contains("class=\"changed\""),
        "a first visit marks nothing"
    );

    let cardio = visitor
        .get("/console/referrals?service_id=CARDIO-RAPID-01")
        .await;
    assert!(cardio.html.contains("TST-0011-AAAA") && !cardio.html.contains("TST-0010-BBBB"));
    let accepted = visitor.get("/console/referrals?status=accepted").await;
    assert!(accepted.html.contains("TST-0011-AAAA") && !accepted.html.contains("TST-0010-BBBB"));
    let future = visitor.get("/console/referrals?from=2999-01-01").await;
    assert!(future.html.contains("No referral matches"));
    let exported = visitor.get("/console/referrals?exported=yes").await;
    assert!(exported.html.contains("No referral matches"));
    let unexported = visitor.get("/console/referrals?exported=no").await;
    assert!(unexported.html.contains("TST-0010-BBBB"));
    let bad = visitor.get("/console/referrals?from=yesterday").await;
    assert_eq!(bad.status, 400);

    // A delivery after this session's look at the list is marked in the next session, and
    // stays marked while the user moves around (it does not clear itself on the next load).
    let csrf = visitor.get("/console/referrals").await.csrf();
    visitor.post("/console/logout", &[("csrf", &csrf)]).await;
    assert_eq!(
        app.deliver("default", fixture("update-appointment-booked.json"))
            .await
            .status,
        200
    );
    visitor.sign_in("alice", ALICE_PASSWORD).await;
    for _ in 0..2 {
        let next = visitor.get("/console/referrals").await;
        let changed = &next.html[next.html.find("class=\"changed\"").expect("a marked row")..];
        assert!(changed[..400].contains("TST-0011-AAAA"), "{changed}");
        assert_eq!(next.html.matches("class=\"changed\"").count(), 1);
    }
    app.stop().await;
}

/// 60 referrals, 50 a page: the second page holds the other 10, none twice; a page address
/// edited by hand is refused.
#[tokio::test]
async fn the_list_pages_through_every_referral_once() {
    let app = spawn_app_with(&users_config("")).await;
    let template = String::from_utf8(fixture("v0.11-add-service-request.json")).unwrap();
    for n in 0..60 {
        let body = crate::support::fixtures::unique_v011(
            &template,
            &format!("PAGE-{n:03}"),
            &format!("page-{n}"),
        );
        assert_eq!(app.deliver("default", body).await.status, 200);
    }
    let mut visitor = Visitor::new(&app);
    visitor.sign_in("alice", ALICE_PASSWORD).await;
    let refs = |html: &str| -> Vec<String> {
        html.match_indices(">PAGE-")
            .map(|(at, _)| html[at + 1..at + 9].to_owned())
            .collect()
    };
    let first = visitor.get("/console/referrals").await;
    let first_refs = refs(&first.html);
    assert_eq!(first_refs.len(), 50);
    let link = &first.html[first.html.find("class=\"next\" href=\"").unwrap() + 19..];
    let link = link[..link.find('"').unwrap()].replace("&amp;", "&");
    let second = visitor.get(&link).await;
    let second_refs = refs(&second.html);
    assert_eq!(second_refs.len(), 10, "{}", second.html);
    assert!(!second.html.contains("class=\"next\""));
    let mut all: Vec<String> = first_refs.into_iter().chain(second_refs).collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 60);
    let forged = visitor
        .get("/console/referrals?page=AAAAAQ-not-a-page")
        .await;
    assert_eq!(forged.status, 400);
    let skip_too_far = visitor.get("/console/referrals?page=AAAD6A").await;
    assert_eq!(skip_too_far.status, 400);
    app.stop().await;
}

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

/// Behind a trusted proxy that received HTTPS, the session cookie is `Secure`; the same header
/// from anyone else changes nothing. A form that is not the page's form gets a console page.
#[tokio::test]
async fn cookies_are_secure_when_a_trusted_proxy_received_https_and_bad_forms_get_a_page() {
    for (trusted, secure) in [("[\"127.0.0.1/32\"]", true), ("[]", false)] {
        let app = spawn_app_with(&users_config(&format!(
            "[server]\ntrusted_proxies = {trusted}"
        )))
        .await;
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let form = client
            .get(app.url("/console/login"))
            .header("x-forwarded-proto", "https")
            .send()
            .await
            .unwrap();
        let cookie = form.headers()[SET_COOKIE].to_str().unwrap().to_owned();
        assert_eq!(cookie.contains("Secure"), secure, "{cookie}");
        let token = cookie.split(';').next().unwrap().to_owned();
        let html = form.text().await.unwrap();
        let page = Page {
            status: 200,
            headers: HeaderMap::new(),
            html,
        };
        let signed_in = client
            .post(app.url("/console/login"))
            .header("x-forwarded-proto", "https")
            .header("cookie", token)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(
                serde_urlencoded::to_string([
                    ("user", "alice"),
                    ("password", ALICE_PASSWORD),
                    ("csrf", page.csrf().as_str()),
                ])
                .unwrap(),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(signed_in.status(), 303);
        let session = signed_in
            .headers()
            .get_all(SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap())
            .find(|c| c.starts_with("relay_console="))
            .unwrap()
            .to_owned();
        assert_eq!(session.contains("Secure"), secure, "{session}");
        app.stop().await;
    }

    let app = spawn_app_with(&users_config("")).await;
    let mut visitor = Visitor::new(&app);
    visitor.sign_in("alice", ALICE_PASSWORD).await;
    let csrf = visitor.get("/console/referrals").await.csrf();
    // No status field at all.
    let bad = visitor
        .post(
            "/console/referrals/TST-0011-AAAA/status",
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(bad.status, 400);
    assert!(
        bad.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(
        bad.html.contains("this form could not be read"),
        "{}",
        bad.html
    );
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

/// One sign-in attempt from scratch (form, then post) by a fresh client; its status.
async fn attempt(base: String, user: &'static str, password: String) -> u16 {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let form = client
        .get(format!("{base}/console/login"))
        .send()
        .await
        .unwrap();
    let cookie = form.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    let page = Page {
        status: 200,
        headers: HeaderMap::new(),
        html: form.text().await.unwrap(),
    };
    client
        .post(format!("{base}/console/login"))
        .header("cookie", cookie.split(';').next().unwrap())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(
            serde_urlencoded::to_string([
                ("user", user),
                ("password", password.as_str()),
                ("csrf", page.csrf().as_str()),
            ])
            .unwrap(),
        )
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Guesses sent all at once are limited too: each holds its place from the limiter's check
/// until its failure is counted, so no more than the limit get their password checked.
#[tokio::test]
async fn parallel_failed_sign_ins_are_limited_like_serial_ones() {
    let app = spawn_app_with(&users_config("")).await;
    let base = app.url("");
    let base = base.trim_end_matches('/').to_owned();
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..30 {
        tasks.spawn(attempt(base.clone(), "alice", format!("guess-{n}-000000")));
    }
    let mut statuses = Vec::new();
    while let Some(status) = tasks.join_next().await {
        statuses.push(status.unwrap());
    }
    let checked = statuses.iter().filter(|s| **s == 401).count();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(checked + limited, 30, "{statuses:?}");
    assert_eq!(checked, 5, "{checked} guesses checked: {statuses:?}");
    app.stop().await;
}

/// A form whose body stalls is answered 408 after `server.body_timeout_secs`, as the API's
/// bodies are; a body over 1 MiB is 413; both as console pages.
#[tokio::test]
async fn a_stalled_or_oversized_form_body_is_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app_with(&users_config("[server]\nbody_timeout_secs = 1")).await;
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(
            b"POST /console/login HTTP/1.1\r\nhost: relay\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: 1000\r\n\r\ncsrf=",
        )
        .await
        .unwrap();
    let mut answer = vec![0u8; 4096];
    let read = tokio::time::timeout(std::time::Duration::from_secs(20), stream.read(&mut answer))
        .await
        .expect("an answer, not a hang")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..read]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("text/html"), "{answer}");

    let mut visitor = Visitor::new(&app);
    let form = visitor.get("/console/login").await;
    let huge = "x".repeat(2 * 1024 * 1024);
    let big = visitor
        .post(
            "/console/login",
            &[
                ("csrf", form.csrf().as_str()),
                ("user", "alice"),
                ("password", &huge),
            ],
        )
        .await;
    assert_eq!(big.status, 413);
    assert!(big.html.contains("larger than the limit"), "{}", big.html);
    app.stop().await;
}

/// Addresses and methods the console does not serve, and query strings it cannot read, get
/// console pages, not the webhook's FHIR answers or plain text.
#[tokio::test]
async fn unknown_addresses_methods_and_queries_get_console_pages() {
    let app = spawn_app_with(&users_config("")).await;
    let mut visitor = Visitor::new(&app);
    visitor.sign_in("alice", ALICE_PASSWORD).await;
    for (path, status) in [
        ("/console/nothing-here", 404),
        ("/console/referrals/TST-0011-AAAA/versions/1", 404),
        ("/console/logout", 405),
        ("/console/backup/export.csv", 405),
        ("/console/referrals?service_id=A&service_id=B", 400),
        ("/console/referrals/%FF", 400),
    ] {
        let page = visitor.get(path).await;
        assert_eq!(page.status, status, "{path}: {}", page.html);
        assert!(
            page.headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html"),
            "{path}"
        );
        assert!(
            page.headers.contains_key("content-security-policy"),
            "{path}"
        );
    }
    app.stop().await;
}

/// The referral page lists the documents kept with it; one fetched downloads as Ocean served
/// it, for users who may see the referral only.
#[tokio::test]
async fn a_referrals_documents_are_listed_and_downloadable_within_its_scope() {
    use crate::support::ocean::{MockOcean, Serve};
    let ocean = MockOcean::start().await;
    let letter = "%PDF-1.7 synthetic console letter";
    ocean.serve(
        "/svc/fhir/v1/ServiceRequest/TST-0011-AAAA/$letter",
        [Serve::Pdf(letter.as_bytes().to_vec())],
    );
    let app = spawn_app_with(&users_config(&crate::support::flow::config(&ocean, "form"))).await;
    assert_eq!(
        app.deliver("default", fixture("v0.11-add-service-request.json"))
            .await
            .status,
        200
    );
    let referral = referral_relay::domain::ReferralRef::parse("TST-0011-AAAA").unwrap();
    for _ in 0..400 {
        let documents = app.store.documents(&referral).await.unwrap();
        if documents
            .first()
            .is_some_and(|d| d.state == referral_relay::store::DocumentState::Fetched)
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    let mut alice = Visitor::new(&app);
    alice.sign_in("alice", ALICE_PASSWORD).await;
    let page = alice.get("/console/referrals/TST-0011-AAAA").await;
    let link = "/console/referrals/TST-0011-AAAA/documents/1/0";
    assert!(
        page.html.contains(&format!("href=\"{link}\"")),
        "{}",
        page.html
    );
    assert!(page.html.contains("Referral letter"));
    let download = alice.get(link).await;
    assert_eq!(download.status, 200);
    assert_eq!(download.headers["content-type"], "application/pdf");
    assert_eq!(download.headers["x-content-type-options"], "nosniff");
    assert_eq!(download.html, letter);
    assert_eq!(
        alice
            .get("/console/referrals/TST-0011-AAAA/documents/1/9")
            .await
            .status,
        404
    );
    // Bob sees only PHYSIO-EAST-02: not this referral, nor its letter.
    let mut bob = Visitor::new(&app);
    bob.sign_in("bob", BOB_PASSWORD).await;
    let refused = bob.get(link).await;
    assert_ne!(refused.status, 200);
    assert!(!refused.html.contains(letter));
}

/// One rule for every name and link made from a ref: a ref holding `/ ? # % \ .. "` and a
/// would-be file extension stays one path segment in the redirect after an action (it landed
/// on the wrong page, inviting the action twice) and cannot name the raw download's file (a
/// crafted ref made a browser save the JSON as `evil.html`).
#[tokio::test]
async fn names_and_links_made_from_an_odd_ref_keep_to_one_rule() {
    let ocean = crate::support::ocean::MockOcean::start().await;
    let app = spawn_app_with(&users_config(&crate::support::flow::config(&ocean, "form"))).await;
    let odd = r#"R/1?x#y%z\..evil.html"; x=""#;
    let json = serde_json::to_string(odd).unwrap();
    let template = String::from_utf8(fixture("v0.11-add-service-request.json")).unwrap();
    let body = crate::support::fixtures::unique_v011(&template, &json[1..json.len() - 1], "odd-1");
    assert_eq!(app.deliver("default", body).await.status, 200);
    let segment = "R%2F1%3Fx%23y%25z%5C..evil.html%22%3B%20x%3D%22";

    let mut visitor = Visitor::new(&app);
    visitor.sign_in("alice", ALICE_PASSWORD).await;
    let page = visitor.get(&format!("/console/referrals/{segment}")).await;
    assert_eq!(page.status, 200, "{}", page.html);
    let done = visitor
        .post(
            &format!("/console/referrals/{segment}/status"),
            &[
                ("csrf", &page.csrf()),
                ("status", "accepted"),
                ("reason", ""),
            ],
        )
        .await;
    assert_eq!(
        (done.status, done.location()),
        (
            303,
            format!("/console/referrals/{segment}#updates").as_str()
        )
    );

    let raw = visitor
        .get(&format!("/console/referrals/{segment}/versions/1/raw"))
        .await;
    assert_eq!(raw.status, 200);
    let disposition = raw.headers["content-disposition"].to_str().unwrap();
    let name = disposition
        .strip_prefix("attachment; filename=\"")
        .and_then(|rest| rest.strip_suffix('"'))
        .unwrap_or_else(|| panic!("{disposition}"));
    assert!(name.starts_with("R_1_x_y_z_..evil.html___x__-"), "{name}");
    assert!(name.ends_with("-v1.json"), "{name}");
    assert!(
        name.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')),
        "{name}"
    );
    app.stop().await;
}
