//! The console's watch-list page (`src/routes/console/pages/watch_list.rs`): linked from every
//! page's navigation, listing what the user may see, filtered by kind.

use time::{Duration, OffsetDateTime};

use crate::support::app::spawn_app_with;
use crate::support::console::{ALICE_PASSWORD, BOB_PASSWORD, Visitor, users_config};
use crate::support::watch_list::{CARDIO, PHYSIO, new_referral, ocean_appointment};

#[tokio::test]
async fn the_watch_list_page_lists_the_users_referrals_that_need_attention_by_kind() {
    let app = spawn_app_with(&users_config("")).await;
    let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
    let rfc3339 = |at: OffsetDateTime| {
        at.format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    // Both booked in Ocean for three days ago, with no status since.
    for (referral, service) in [("WL-CON-CARDIO", CARDIO), ("WL-CON-PHYSIO", PHYSIO)] {
        new_referral(&app, referral, service, "2026-11-30T10:00:00Z").await;
        ocean_appointment(
            &app,
            referral,
            service,
            &rfc3339(now - Duration::days(3)),
            &rfc3339(now - Duration::days(5)),
        )
        .await;
    }

    let mut alice = Visitor::new(&app);
    assert_eq!(alice.sign_in("alice", ALICE_PASSWORD).await.status, 303);
    let page = alice.get("/console/watch-list").await;
    assert_eq!(page.status, 200, "{}", page.html);
    assert!(
        page.html
            .contains("href=\"/console/watch-list\" aria-current=\"page\"")
    );
    for referral in ["WL-CON-CARDIO", "WL-CON-PHYSIO"] {
        assert!(
            page.html
                .contains(&format!("href=\"/console/referrals/{referral}\"")),
            "{}",
            page.html
        );
    }
    assert!(page.html.contains("appointment_passed: 2"), "{}", page.html);
    assert!(page.html.contains("has passed with no status since"));
    // Linked from the other pages.
    let referrals = alice.get("/console/referrals").await;
    assert!(referrals.html.contains("href=\"/console/watch-list\""));

    // Filtered by kind: nothing is overdue.
    let overdue = alice.get("/console/watch-list?kind=overdue").await;
    assert_eq!(overdue.status, 200);
    assert!(!overdue.html.contains("WL-CON-"), "{}", overdue.html);
    assert!(overdue.html.contains("No referral needs attention."));
    let unknown = alice.get("/console/watch-list?kind=forgotten").await;
    assert_eq!(unknown.status, 400);

    // Bob sees PHYSIO-EAST-02's only.
    let mut bob = Visitor::new(&app);
    assert_eq!(bob.sign_in("bob", BOB_PASSWORD).await.status, 303);
    let page = bob.get("/console/watch-list").await;
    assert_eq!(page.status, 200);
    assert!(page.html.contains("WL-CON-PHYSIO"), "{}", page.html);
    assert!(!page.html.contains("WL-CON-CARDIO"), "{}", page.html);
    let refused = bob
        .get(&format!("/console/watch-list?service_id={CARDIO}"))
        .await;
    assert_eq!(refused.status, 403);
    app.stop().await;
}
