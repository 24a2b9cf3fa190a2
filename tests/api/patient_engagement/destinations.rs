//! A fetched submission is pushed to the webhook destinations that take everything, signed as
//! every destination message is (verified by the Standard Webhooks reference library), and to
//! no destination that filters by service, integration or event.

use super::{notification, notify};
use crate::support::app::spawn_app_with;
use crate::support::destinations::NEW_SECRET;
use crate::support::flow::get_ok;
use crate::support::patient_ocean::{self, PatientOcean, note_fixture, patient_fixture};
use crate::support::peers::WebhookReceiver;
use crate::support::poll::eventually;

#[tokio::test]
async fn a_fetched_submission_reaches_the_webhooks_that_take_everything() {
    let ocean = PatientOcean::start().await;
    ocean.has("696", patient_fixture("696"), "s-696", note_fixture());
    let emr = WebhookReceiver::start(&[NEW_SECRET]);
    let cardio = WebhookReceiver::start(&[NEW_SECRET]);
    let destinations = format!(
        r#"
[destinations.emr]
kind = "webhook"
url = "{}"
secret = "{NEW_SECRET}"

[destinations.cardio]
kind = "webhook"
url = "{}"
secret = "{NEW_SECRET}"
service_ids = ["CARDIO-1"]
"#,
        emr.url, cardio.url
    );
    let app = spawn_app_with(&patient_ocean::config(&ocean, &destinations)).await;
    let reply = notify(&app, &notification("696", "s-696")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let id = reply.body["id"].as_u64().unwrap();
    let received = emr.wait_for(1).await;
    let body = &received[0]["body"];
    assert_eq!(body["type"], "patient_form.fetched");
    assert_eq!(body["data"]["id"], id);
    assert_eq!(body["data"]["patient_ref"], "696");
    assert_eq!(
        body["data"]["demographics"]["lastName"],
        "Gauthier-Bélanger"
    );
    assert_eq!(body["data"]["forms"][0]["form_ref"], "intake-form-v3");
    assert_eq!(
        body["data"]["progress_note"]["text"],
        "Patiente répond: « ça va »."
    );
    let counts = emr.received().await;
    assert_eq!(counts["bad_signatures"], 0, "{counts}");
    // The queue shows it delivered; the filtered destination got nothing.
    eventually("the message recorded delivered", async || {
        let messages = get_ok(&app, "/api/v1/destinations/emr/messages").await;
        messages["messages"][0]["state"] == "delivered"
    })
    .await;
    let cardio_messages = get_ok(&app, "/api/v1/destinations/cardio/messages").await;
    assert_eq!(cardio_messages["messages"], serde_json::json!([]));
    assert_eq!(cardio.received().await["received"], serde_json::json!([]));
}

/// A destination's message is queued just before its submission is saved as fetched: a worker
/// that reads it in between waits for the save (a retry), and never takes it for purged.
#[tokio::test]
async fn a_message_read_before_its_submission_is_saved_waits_for_it() {
    use referral_relay::patient_engagement::{WebhookBody, webhook_body};
    use referral_relay::store::{NewPatientForm, QueuedMessage, Recorded};
    let app = spawn_app_with("").await;
    let now = time::OffsetDateTime::now_utc();
    let Recorded::New(recorded) = app
        .store
        .record_patient_form(&NewPatientForm {
            endpoint: "clinic".into(),
            kind: "notify-patient-message-forms-completion".into(),
            patient_ref: "697".into(),
            session_id: Some("s-697".into()),
            completion_source: None,
            site_num: "4321".into(),
            received_at: now,
        })
        .await
        .unwrap()
    else {
        panic!("a new notification is recorded as new");
    };
    let message = QueuedMessage::patient_form("emr", recorded.id, now);
    let body = webhook_body(app.store.as_ref(), &message, recorded.id, now)
        .await
        .unwrap();
    assert!(matches!(body, WebhookBody::NotYet), "{body:?}");
    let gone = webhook_body(app.store.as_ref(), &message, recorded.id + 100, now)
        .await
        .unwrap();
    assert!(matches!(gone, WebhookBody::Gone(_)), "{gone:?}");
    app.stop().await;
}
