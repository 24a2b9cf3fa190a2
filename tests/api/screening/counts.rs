//! What screening keeps: counts by day, service, rule and indicator in the store (on either
//! backend), and the metrics by service, outcome, rule and indicator.

use time::OffsetDateTime;

use crate::support::app::spawn_app_with;
use crate::support::cds::{RULES, born, call, order_sign, physio_draft};
use crate::support::poll::eventually;

#[tokio::test]
async fn each_answer_and_card_is_counted_by_rule_and_indicator_without_patient_data() {
    let app = spawn_app_with(RULES).await;
    // Two referrals to the cardiology listing: one too young (age and notice cards), one inside
    // every rule (the notice only); one to physiotherapy with nothing missing but a declined reason.
    let young = order_sign(|d| {
        d.birth_date(&born(16, 20));
        d.postal_code("M4W 1A8");
    });
    let fine = order_sign(|d| {
        d.birth_date(&born(50, 20));
        d.postal_code("M5V 2T6");
    });
    assert_eq!(
        call(&app, "CARDIO-RAPID-01", &young, None).await.status,
        200
    );
    assert_eq!(call(&app, "CARDIO-RAPID-01", &fine, None).await.status, 200);
    let declined = physio_draft(|d| {
        d.item(
            "pain.score",
            "Pain score",
            serde_json::json!([{"valueInteger": 3}]),
        );
        d.item(
            "imaging.report",
            "Imaging",
            serde_json::json!([{"valueAttachment": {"url": "Binary/1"}}]),
        );
        d.reason(
            "http://snomed.info/sct",
            "394609007",
            "Chronic pain management",
        );
    });
    assert_eq!(call(&app, "physio", &declined, None).await.status, 200);

    let metric =
        async |labels: &[(&str, &str)]| app.metric_sum("relay_cds_hooks_cards_total", labels).await;
    assert_eq!(
        metric(&[
            ("service", "CARDIO-RAPID-01"),
            ("rule", "notice"),
            ("indicator", "info")
        ])
        .await,
        2.0
    );
    assert_eq!(
        metric(&[
            ("service", "CARDIO-RAPID-01"),
            ("rule", "age"),
            ("indicator", "warning")
        ])
        .await,
        1.0
    );
    assert_eq!(
        metric(&[
            ("service", "physio"),
            ("rule", "declined_codes"),
            ("indicator", "critical")
        ])
        .await,
        1.0
    );
    let answers = app
        .metric_sum(
            "relay_cds_hooks_answers_total",
            &[("service", "CARDIO-RAPID-01"), ("outcome", "cards")],
        )
        .await;
    assert_eq!(answers, 2.0);

    // In the store within seconds (counts are added every 5 s), by the listing's External
    // Service ID; nothing else is kept.
    let today = OffsetDateTime::now_utc().date();
    let expected = [
        ("CARDIO-RAPID-01", "age", "warning", 1),
        ("CARDIO-RAPID-01", "notice", "info", 2),
        ("CARDIO-RAPID-01", "screened", "info", 1),
        ("CARDIO-RAPID-01", "screened", "warning", 1),
        ("PHYSIO-EAST-02", "declined_codes", "critical", 1),
        ("PHYSIO-EAST-02", "screened", "critical", 1),
    ];
    let store = app.store.clone();
    eventually("the counts in the store", async || {
        let tallies = store.screening_tallies(today).await.unwrap();
        let got: Vec<(&str, &str, &str, u64)> = tallies
            .iter()
            .map(|t| {
                (
                    t.service_id.as_str(),
                    t.rule.as_str(),
                    t.indicator.as_str(),
                    t.count,
                )
            })
            .collect();
        got == expected
    })
    .await;
    assert!(
        store
            .screening_tallies(today)
            .await
            .unwrap()
            .iter()
            .all(|t| t.day == today)
    );
    // A later day's reading starts after today.
    assert!(
        store
            .screening_tallies(today.next_day().unwrap())
            .await
            .unwrap()
            .is_empty()
    );
}
