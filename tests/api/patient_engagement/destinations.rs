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
