//! `GET /cds-services` and `POST /cds-services/{id}`: each rule's pass and fail, bad input, and
//! answers that hold no more than the request did. Every answer is checked against the CDS
//! Hooks 2.0 schema by the peer.

use serde_json::json;

use crate::support::app::spawn_app_with;
use crate::support::cds::{
    CdsClient, RULES, born, call, cards, order_sign, physio_draft, request_with, summaries,
};
use crate::support::poll::eventually;

const NOTICE: &str = "Include the latest ECG.";

#[tokio::test]
async fn discovery_lists_one_order_sign_service_per_listing_with_oceans_prefetch() {
    let peer = CdsClient::start();
    let app = spawn_app_with(RULES).await;
    let answer = app.get("/cds-services").await;
    assert_eq!(answer.status, 200);
    let errors = peer.schema_errors("discovery", &answer.body).await;
    assert!(errors.is_empty(), "{errors:?}");
    let services = answer.body["services"].as_array().unwrap();
    let ids: Vec<&str> = services.iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["CARDIO-RAPID-01", "physio"]);
    for service in services {
        assert_eq!(service["hook"], "order-sign");
        assert_eq!(
            service["prefetch"]["v11Bundle"],
            "Bundle?_query=on-v11-add-service-request"
        );
        assert_eq!(
            service["prefetch"]["patient"],
            "Patient/{{context.patientId}}"
        );
    }
    assert_eq!(services[0]["title"], "Referral screening: CARDIO-RAPID-01");
    assert_eq!(services[1]["title"], "Physiotherapy east");
    // No listing configured: an empty list, still valid.
    let bare = spawn_app_with("").await;
    let answer = bare.get("/cds-services").await;
    assert_eq!(answer.body, json!({"services": []}));
}

#[tokio::test]
async fn the_age_range_and_catchment_card_referrals_outside_them_and_the_notice_shows_on_all() {
    let peer = CdsClient::start();
    let app = spawn_app_with(RULES).await;
    let screen = |birth: String, postal: &'static str| {
        order_sign(move |d| {
            d.birth_date(&birth);
            d.postal_code(postal);
        })
    };
    // Inside both: only the notice, an info card from the listing.
    let answer = call(
        &app,
        "CARDIO-RAPID-01",
        &screen(born(40, 10), "M4W 1A8"),
        None,
    )
    .await;
    let got = cards(&peer, &answer).await;
    assert_eq!(summaries(&got), [NOTICE]);
    assert_eq!(got[0]["indicator"], "info");
    assert_eq!(
        got[0]["source"]["label"],
        "Referral screening: CARDIO-RAPID-01"
    );
    // The range's ends are inside it: 18 today, and 80 until the 81st birthday.
    for birth in [born(18, 0), born(80, 300)] {
        let answer = call(
            &app,
            "CARDIO-RAPID-01",
            &screen(birth.clone(), "m5v2t6"),
            None,
        )
        .await;
        assert_eq!(summaries(&cards(&peer, &answer).await), [NOTICE], "{birth}");
    }
    let answer = call(
        &app,
        "CARDIO-RAPID-01",
        &screen(born(17, 30), "M6K 3P6"),
        None,
    )
    .await;
    let got = cards(&peer, &answer).await;
    assert_eq!(
        summaries(&got),
        [
            "This service takes patients aged 18 to 80; this patient is 17.",
            NOTICE
        ]
    );
    assert_eq!(got[0]["indicator"], "warning");
    let detail = got[0]["detail"].as_str().unwrap();
    assert!(detail.contains("Check the birth date"), "{detail}");
    let answer = call(
        &app,
        "CARDIO-RAPID-01",
        &screen(born(81, 30), "M4W 1A8"),
        None,
    )
    .await;
    assert_eq!(
        summaries(&cards(&peer, &answer).await)[0],
        "This service takes patients aged 18 to 80; this patient is 81."
    );
    let answer = call(
        &app,
        "CARDIO-RAPID-01",
        &screen(born(40, 10), "K1A 0B1"),
        None,
    )
    .await;
    let got = cards(&peer, &answer).await;
    assert_eq!(
        summaries(&got),
        [
            "The patient's postal code (K1A…) is outside this service's catchment.",
            NOTICE
        ]
    );
    assert!(got[0]["detail"].as_str().unwrap().contains("M4, M5, M6"));
    // No birth date, no address: those rules cannot be evaluated, so they say nothing.
    let unknown = order_sign(|d| {
        let patient = d.resource("Patient");
        patient.as_object_mut().unwrap().remove("birthDate");
        patient.as_object_mut().unwrap().remove("address");
    });
    let answer = call(&app, "CARDIO-RAPID-01", &unknown, None).await;
    assert_eq!(summaries(&cards(&peer, &answer).await), [NOTICE]);
}

#[tokio::test]
async fn required_answers_attachments_and_declined_codes_name_what_to_fix() {
    let peer = CdsClient::start();
    let app = spawn_app_with(RULES).await;
    // The fixture answers referral.reason, and has no pain score and no imaging report.
    let answer = call(&app, "physio", &physio_draft(|_| {}), None).await;
    let got = cards(&peer, &answer).await;
    assert_eq!(
        summaries(&got),
        [
            "Answer what this service needs: Pain score (0 to 10)",
            "Attach what this service needs: Latest imaging report",
        ]
    );
    assert_eq!(got[0]["source"]["label"], "Physiotherapy east");
    assert_eq!(
        got[0]["source"]["url"],
        "https://clinic.example/physio-criteria"
    );
    assert!(
        got[0]["detail"]
            .as_str()
            .unwrap()
            .contains("- Pain score \\(0 to 10\\)")
    );
    // Everything there: no card at all.
    let complete = |d: &mut crate::support::cds::Draft| {
        d.item("pain.score", "Pain score", json!([{"valueInteger": 6}]));
        d.item(
            "imaging.report",
            "Imaging report",
            json!([{"valueAttachment": {"contentType": "application/pdf", "url": "Binary/report-1", "title": "MRI"}}]),
        );
    };
    let answer = call(&app, "physio", &physio_draft(complete), None).await;
    assert_eq!(cards(&peer, &answer).await, Vec::<serde_json::Value>::new());
    // An answer that is text where a file is needed, and an empty answer, do not count.
    let answer = call(
        &app,
        "physio",
        &physio_draft(|d| {
            d.item("pain.score", "Pain score", json!([{"valueString": " "}]));
            d.item(
                "imaging.report",
                "Imaging report",
                json!([{"valueString": "see chart"}]),
            );
        }),
        None,
    )
    .await;
    assert_eq!(cards(&peer, &answer).await.len(), 2);
    // A reason this listing does not take, by system and code: critical, as configured.
    let declined = physio_draft(|d| {
        complete(d);
        d.reason(
            "http://snomed.info/sct",
            "394609007",
            "Chronic pain management",
        );
    });
    let answer = call(&app, "physio", &declined, None).await;
    let got = cards(&peer, &answer).await;
    assert_eq!(
        summaries(&got),
        ["This service does not take referrals for Chronic pain management."]
    );
    assert_eq!(got[0]["indicator"], "critical");
    // A bare code matches in any system; the same code in another system than configured not.
    let answer = call(
        &app,
        "physio",
        &physio_draft(|d| {
            complete(d);
            d.reason(
                "https://clinic.example/reasons",
                "chronic-pain",
                "Chronic pain",
            );
        }),
        None,
    )
    .await;
    assert_eq!(cards(&peer, &answer).await.len(), 1);
    let answer = call(
        &app,
        "physio",
        &physio_draft(|d| {
            complete(d);
            d.reason("http://loinc.org", "394609007", "Not SNOMED");
        }),
        None,
    )
    .await;
    assert!(cards(&peer, &answer).await.is_empty());
}

#[tokio::test]
async fn a_malformed_prefetch_is_answered_200_with_no_card_of_the_rules_needing_it() {
    let peer = CdsClient::start();
    let app = spawn_app_with(RULES).await;
    let malformed = [
        json!({}),
        json!(null),
        json!({"v11Bundle": "garbage"}),
        json!({"v11Bundle": null}),
        json!({"v11Bundle": [1, 2, 3]}),
        // What a FHIR server answers for a prefetch it could not run.
        json!({"v11Bundle": {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "not-found"}]}}),
        json!({"v11Bundle": {"resourceType": "Bundle", "entry": "not a list"}}),
        json!({"v11Bundle": {"resourceType": "Bundle", "entry": [
            {"resource": {"resourceType": "Patient", "birthDate": "1961-02-30", "address": [{"postalCode": 42}]}},
            {"resource": {"resourceType": "QuestionnaireResponse", "item": {"linkId": "x"}}},
            {"resource": {"resourceType": "ServiceRequest", "reasonCode": "chronic-pain"}}]}}),
        json!({"patient": {"resourceType": "Patient", "birthDate": ["1961"]}}),
    ];
    for prefetch in malformed {
        let body = request_with(prefetch.clone());
        let answer = call(&app, "physio", &body, None).await;
        assert!(cards(&peer, &answer).await.is_empty(), "{prefetch}");
        // The notice needs nothing from the referral: it is still shown.
        let answer = call(&app, "CARDIO-RAPID-01", &body, None).await;
        assert_eq!(
            summaries(&cards(&peer, &answer).await),
            [NOTICE],
            "{prefetch}"
        );
    }
    // A body missing everything but the hook is still a request to answer.
    let answer = call(&app, "physio", &json!({"hook": "order-sign"}), None).await;
    assert!(cards(&peer, &answer).await.is_empty());
}

#[tokio::test]
async fn an_unknown_service_is_404_and_a_request_that_is_not_order_sign_is_400() {
    let app = spawn_app_with(RULES).await;
    let answer = call(&app, "NEURO-99", &order_sign(|_| {}), None).await;
    assert_eq!(answer.status, 404);
    assert!(
        answer.diagnostics().contains("no CDS service of that id"),
        "{}",
        answer.body
    );
    // The External Service ID of a listing whose CDS id is another is not a service either.
    let answer = call(&app, "PHYSIO-EAST-02", &order_sign(|_| {}), None).await;
    assert_eq!(answer.status, 404);
    let answer = app
        .post(
            "/cds-services/physio",
            Some("application/json"),
            b"{not json".to_vec(),
        )
        .await;
    assert_eq!(answer.status, 400);
    assert!(answer.diagnostics().contains("not a JSON object"));
    let mut other_hook = physio_draft(|_| {});
    other_hook["hook"] = json!("patient-view");
    let answer = call(&app, "physio", &other_hook, None).await;
    assert_eq!(answer.status, 400);
    assert!(
        answer.diagnostics().contains("order-sign"),
        "{}",
        answer.body
    );
    let answer = app.get("/cds-services/physio").await;
    assert_eq!(answer.status, 405);
    assert!(
        answer.diagnostics().contains("POST /cds-services/{id}"),
        "{}",
        answer.body
    );
    // Compressed bodies are not taken; a body declared larger than the limit is refused at once.
    let gzipped = app
        .client
        .post(app.url("/cds-services/physio"))
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(vec![0x1f, 0x8b, 0x08, 0x00])
        .send()
        .await
        .unwrap();
    assert_eq!(gzipped.status(), 415);
    let invalid = app
        .metric_sum(
            "relay_cds_hooks_answers_total",
            &[("service", "physio"), ("outcome", "invalid")],
        )
        .await;
    assert_eq!(invalid, 3.0);
}

#[tokio::test]
async fn a_draft_addressed_to_another_listing_gets_no_card_from_this_one() {
    let peer = CdsClient::start();
    let app = spawn_app_with(RULES).await;
    // The fixture is addressed to CARDIO-RAPID-01: physiotherapy's rules (and cardiology's
    // notice, from the other side) say nothing about it.
    let answer = call(&app, "physio", &order_sign(|_| {}), None).await;
    assert!(cards(&peer, &answer).await.is_empty());
    let answer = call(&app, "CARDIO-RAPID-01", &physio_draft(|_| {}), None).await;
    assert!(cards(&peer, &answer).await.is_empty());
    let other = app
        .metric_sum(
            "relay_cds_hooks_answers_total",
            &[("service", "physio"), ("outcome", "other_listing")],
        )
        .await;
    assert_eq!(other, 1.0);
    // A draft that names no listing is screened by the one called.
    let unaddressed = order_sign(|d| {
        d.addressed_to("");
        d.resource("MessageHeader")["destination"] = json!([]);
    });
    let answer = call(&app, "physio", &unaddressed, None).await;
    assert_eq!(cards(&peer, &answer).await.len(), 2);
}

#[tokio::test]
async fn a_body_past_the_limit_is_413() {
    let app = spawn_app_with(&format!("{RULES}\n[cds_hooks]\nmax_body_bytes = 2048\n")).await;
    let answer = call(&app, "physio", &physio_draft(|_| {}), None).await;
    assert_eq!(answer.status, 413);
    assert_eq!(answer.body["resourceType"], "OperationOutcome");
    // Declared larger than the limit and never sent: refused at once, not waited for.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(b"POST /cds-services/physio HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\nContent-Length: 999999999\r\n\r\n{")
        .await
        .unwrap();
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 413");
}

#[tokio::test]
async fn anyones_bodies_have_a_budget_of_their_own_when_calls_are_not_authenticated() {
    // With scheme none every body is unauthenticated: one client holds at most two bodies'
    // worth (2 × 8 KiB) at once. The webhook's own budget (4 KiB here) is another.
    let toml = format!(
        "{RULES}\n[cds_hooks]\nmax_body_bytes = 8192\nanswer_within_ms = 10000\n[server]\nmax_body_bytes = 2048\nmax_unauthenticated_body_bytes = 4096\n"
    );
    let app = spawn_app_with(&toml).await;
    let answer = call(&app, "physio", &request_with(json!({})), None).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    // Two uploads that send 7,990 of their 8,000 bytes and stop hold 15,980 bytes of the share.
    use tokio::io::AsyncWriteExt;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
        stream
            .write_all(b"POST /cds-services/physio HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\nContent-Length: 8000\r\n\r\n")
            .await
            .unwrap();
        stream.write_all(&[b' '; 7990]).await.unwrap();
        held.push(stream);
    }
    // Then a whole request of a few hundred bytes more is past the share: 503, retry later.
    let body = request_with(json!({"padding": "x".repeat(600)}));
    eventually("the share spent", async || {
        call(&app, "physio", &body, None).await.status == 503
    })
    .await;
    // Once they are gone, the share is there again.
    drop(held);
    eventually("the share given back", async || {
        call(&app, "physio", &body, None).await.status == 200
    })
    .await;
}

#[tokio::test]
async fn cards_hold_no_more_of_the_patient_than_the_request_did() {
    let peer = CdsClient::start();
    let app = spawn_app_with(RULES).await;
    // The fixture's patient: named, with a health card number, outside the catchment.
    let answer = call(&app, "CARDIO-RAPID-01", &order_sign(|_| {}), None).await;
    let got = cards(&peer, &answer).await;
    assert_eq!(got.len(), 2, "{got:?}");
    let text = answer.body.to_string();
    for private in [
        "Testpatient",
        "Avery",
        "9999999999",
        "MRN-000142",
        "X0X 0X0",
        "X0X0X0",
        "1961",
        "Imaginary",
    ] {
        assert!(!text.contains(private), "{private} in {text}");
    }
}

#[tokio::test]
async fn an_answer_not_ready_in_time_is_200_with_no_card() {
    let app = spawn_app_with(&format!("{RULES}\n[cds_hooks]\nanswer_within_ms = 400\n")).await;
    // A client that sends its headers and then one byte of a body it never finishes.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(b"POST /cds-services/physio HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let mut chunk = [0u8; 1024];
    while !answer.ends_with(b"{\"cards\":[]}") {
        let read = stream.read(&mut chunk).await.unwrap();
        assert!(read > 0, "closed: {}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&chunk[..read]);
    }
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let timeouts = app
        .metric_sum(
            "relay_cds_hooks_answers_total",
            &[("service", "physio"), ("outcome", "timeout")],
        )
        .await;
    assert_eq!(timeouts, 1.0);
    // Counted as a referral screened late, with no card.
    let today = time::OffsetDateTime::now_utc().date();
    let store = app.store.clone();
    eventually("the late answer counted", async || {
        let tallies = store.screening_tallies(today).await.unwrap();
        tallies.iter().any(|t| {
            t.service_id == "PHYSIO-EAST-02"
                && t.rule == "screened"
                && t.indicator == "late"
                && t.count == 1
        })
    })
    .await;
}
