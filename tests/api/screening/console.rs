//! The console's screening page (`src/routes/console/screening.rs`): each listing's rules in
//! words and how often each fired, for the listings the user may see.

use crate::support::app::spawn_app_with;
use crate::support::cds::{RULES, born, call, order_sign, physio_draft};
use crate::support::console::{ALICE_PASSWORD, BOB_PASSWORD, Visitor, users_config};
use crate::support::poll::eventually;

#[tokio::test]
async fn the_screening_page_shows_each_listings_rules_and_how_often_they_fired() {
    let app = spawn_app_with(&users_config(RULES)).await;
    let young = order_sign(|d| {
        d.birth_date(&born(12, 40));
        d.postal_code("M4W 1A8");
    });
    for _ in 0..3 {
        assert_eq!(
            call(&app, "CARDIO-RAPID-01", &young, None).await.status,
            200
        );
    }
    assert_eq!(
        call(&app, "physio", &physio_draft(|_| {}), None)
            .await
            .status,
        200
    );

    let mut alice = Visitor::new(&app);
    assert_eq!(alice.sign_in("alice", ALICE_PASSWORD).await.status, 303);
    // Counts reach the store within seconds.
    eventually("the counts on the page", async || {
        let page = alice.get("/console/screening").await;
        page.html
            .contains("<td>age</td><td>warning</td><td>3</td><td>3</td>")
    })
    .await;
    let page = alice.get("/console/screening").await;
    assert_eq!(page.status, 200);
    assert!(
        page.html
            .contains("href=\"/console/screening\" aria-current=\"page\"")
    );
    for shown in [
        "Referral screening: CARDIO-RAPID-01",
        "<td>patients aged 18 to 80</td><td>warning</td>",
        "<td>postal codes beginning M4, M5, M6</td>",
        "<td>Include the latest ECG.</td><td>info</td>",
        "<td>referrals screened</td><td></td><td>3</td><td>3</td>",
        "<td>notice</td><td>info</td><td>3</td><td>3</td>",
        "Physiotherapy east",
        "<td>answered: referral.reason, Pain score (0 to 10) (pain.score)</td>",
        "<td>not taken: http:&#x2f;&#x2f;snomed.info&#x2f;sct|394609007, chronic-pain</td><td>critical</td>",
        "<td>attachments</td><td>warning</td><td>1</td><td>1</td>",
    ] {
        assert!(page.html.contains(shown), "{shown} not in {}", page.html);
    }
    // Bob, staff of the physiotherapy listing only, sees that listing only.
    let mut bob = Visitor::new(&app);
    assert_eq!(bob.sign_in("bob", BOB_PASSWORD).await.status, 303);
    let page = bob.get("/console/screening").await;
    assert_eq!(page.status, 200);
    assert!(page.html.contains("Physiotherapy east"));
    assert!(!page.html.contains("CARDIO-RAPID-01"), "{}", page.html);
}
