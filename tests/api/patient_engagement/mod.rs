//! Patient Engagement, the collect side: Ocean's notifications at
//! `/ocean/{name}/patient-engagement` (the challenge, the secret, the site number, replays),
//! and each submission fetched from a stand-in Ocean that encrypts as the facts say, decrypted,
//! stored and read back through `/api/v1/patient-forms`; retries, giving up, a restart; pushed
//! to the destinations that take everything.

mod backup;
mod destinations;
mod endpoint;
mod fetch;
mod replicas;

use serde_json::{Value, json};

use crate::support::app::{Answer, TestApp};
use crate::support::patient_ocean::{SECRET, SITE_NUM};

pub const PATH: &str = "/ocean/clinic/patient-engagement";

/// A completion notification for `reference` and `session`, as Ocean sends it.
pub fn notification(reference: &str, session: &str) -> Value {
    json!({
        "type": "notify-patient-message-forms-completion",
        "ref": reference,
        "siteNum": SITE_NUM.parse::<u64>().unwrap(),
        "changeList": null,
        "user": null,
        "customProperties": {"oceanSessionId": session, "noteCompletionSource": "PORTAL"}
    })
}

/// POSTs `body` to the endpoint with the secret in the URL.
pub async fn notify(app: &TestApp, body: &Value) -> Answer {
    app.post(
        &format!("{PATH}?k={SECRET}"),
        Some("application/json"),
        body.to_string().into_bytes(),
    )
    .await
}
