//! The console's referral pages over plain HTTP: a user's scope, the list with its filters
//! and pages, one referral with its versions, what each changed and its documents, and the
//! names and links made from an odd reference.

use crate::support::app::spawn_app_with;
use crate::support::console::{
    ALICE_PASSWORD, BOB_PASSWORD, Visitor, users_config, with_referrals,
};
use crate::support::fixtures::fixture;

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
