//! Each submission fetched from the stand-in Ocean with the Open API headers, decrypted (both
//! body encodings, both IV headers), kept and read back through the API; 5xx retried, 404 given
//! up with the reason, a restart resuming what was pending.

use serde_json::Value;
use tempfile::TempDir;

use super::{notification, notify};
use crate::support::app::{TestApp, spawn_app_in, spawn_app_with};
use crate::support::flow::{KEY, get_ok};
use crate::support::patient_ocean::{
    self, Encoding, PatientOcean, SITE_CREDENTIAL, SITE_KEY, SITE_NUM, note_fixture,
    patient_fixture,
};
use crate::support::poll::eventually;

const SESSION: &str = "1759442545187t415674";

/// Notifies `reference` and returns the submission's id.
async fn recorded(app: &TestApp, reference: &str) -> u64 {
    let reply = notify(app, &notification(reference, SESSION)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["status"], "recorded");
    reply.body["id"].as_u64().unwrap()
}

/// Waits until submission `id` is in `state`, and returns it as the API shows it.
async fn until(app: &TestApp, id: u64, state: &str) -> Value {
    let mut form = Value::Null;
    eventually(&format!("patient form {id} becoming {state}"), async || {
        form = get_ok(app, &format!("/api/v1/patient-forms/{id}")).await;
        form["state"] == state
    })
    .await;
    form
}

/// How many `action` entries the audit log holds once it holds at least one (the entry is
/// written just after the submission's state is saved).
async fn audited(app: &TestApp, action: &str) -> usize {
    let mut count = 0;
    eventually(&format!("an {action} audit entry"), async || {
        let audit = get_ok(app, "/api/v1/audit?limit=500").await;
        count = audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["action"] == action)
            .count();
        count > 0
    })
    .await;
    count
}

#[tokio::test]
async fn a_submission_is_fetched_decrypted_and_readable_with_its_accents_intact() {
    let ocean = PatientOcean::start().await;
    ocean.has("690", patient_fixture("690"), SESSION, note_fixture());
    let app = spawn_app_with(&patient_ocean::config(&ocean, "")).await;
    let id = recorded(&app, "690").await;
    let form = until(&app, id, "fetched").await;
    assert_eq!(form["demographics"]["firstName"], "Zoë");
    assert_eq!(form["demographics"]["lastName"], "Gauthier-Bélanger");
    assert_eq!(
        form["demographics"]["address"]["street"],
        "12 rue de l'Érable"
    );
    assert_eq!(form["patient"]["reasonForVisit"], "Suivi annuel");
    assert_eq!(form["external_patient_ref"], "MRN-000777");
    assert_eq!(form["note_id"], "note-5150");
    assert_eq!(form["progress_note"]["text"], "Patiente répond: « ça va ».");
    assert_eq!(form["note"]["emrFieldUpdates"]["phone"], "555-0142");
    assert_eq!(form["forms"][0]["form_ref"], "intake-form-v3");
    let fields = form["forms"][0]["fields"].as_array().unwrap();
    let field = |name: &str| fields.iter().find(|f| f["name"] == name).unwrap();
    assert_eq!(field("allergies")["value"], "pénicilline");
    assert_eq!(field("smoker")["value"], false);
    assert_eq!(field("painScore")["value"], 3);
    assert_eq!(field("painScore")["hidden"], true);
    assert_eq!(field("allergies")["hidden"], false);
    assert_eq!(form["attempts"], 1);
    assert!(form["last_error"].is_null());
    // Ocean was asked for the patient and the session's note, with the three headers.
    let seen = ocean.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].path, "/svc/v1/patients/690");
    assert_eq!(seen[1].path, "/svc/v1/patients/690/notes");
    assert_eq!(seen[1].session.as_deref(), Some(SESSION));
    for request in &seen {
        assert_eq!(request.site_num.as_deref(), Some(SITE_NUM));
        assert_eq!(request.site_key.as_deref(), Some(SITE_KEY));
        assert_eq!(request.site_credential.as_deref(), Some(SITE_CREDENTIAL));
        assert_eq!(request.answered, 200);
    }
    assert_eq!(audited(&app, "PATIENT_FORM_FETCHED").await, 1);
    // The feed lists it, fetched.
    let page = get_ok(&app, "/api/v1/patient-forms").await;
    assert_eq!(page["patient_forms"][0]["state"], "fetched");
    assert_eq!(page["patient_forms"][0]["patient_ref"], "690");
    assert!(page["patient_forms"][0].get("demographics").is_none());
}

#[tokio::test]
async fn both_body_encodings_decrypt_either_way_round() {
    let ocean = PatientOcean::start().await;
    ocean.encode(Encoding::SignedBytes, Encoding::Base64);
    ocean.has("691", patient_fixture("691"), SESSION, note_fixture());
    let app = spawn_app_with(&patient_ocean::config(&ocean, "")).await;
    let id = recorded(&app, "691").await;
    let form = until(&app, id, "fetched").await;
    assert_eq!(form["demographics"]["firstName"], "Zoë");
    assert_eq!(form["forms"][0]["fields"][0]["value"], "pénicilline");
}

#[tokio::test]
async fn server_errors_are_retried_until_the_submission_is_fetched() {
    let ocean = PatientOcean::start().await;
    ocean.has("692", patient_fixture("692"), SESSION, note_fixture());
    ocean.fail_patient([503, 500]);
    let app = spawn_app_with(&patient_ocean::config(&ocean, "")).await;
    let id = recorded(&app, "692").await;
    let form = until(&app, id, "fetched").await;
    assert_eq!(form["attempts"], 3);
    assert_eq!(form["demographics"]["lastName"], "Gauthier-Bélanger");
    let answered: Vec<u16> = ocean.seen().iter().map(|s| s.answered).collect();
    assert_eq!(answered, [503, 500, 200, 200]);
}

#[tokio::test]
async fn not_found_is_given_up_at_once_with_the_reason() {
    let ocean = PatientOcean::start().await;
    // Ocean has no patient 693.
    let app = spawn_app_with(&patient_ocean::config(&ocean, "")).await;
    let id = recorded(&app, "693").await;
    let form = until(&app, id, "failed").await;
    assert_eq!(form["attempts"], 1);
    let error = form["last_error"].as_str().unwrap();
    assert!(
        error.contains("404") && error.contains("patient"),
        "{error}"
    );
    assert!(form["demographics"].is_null() && form["patient"].is_null());
    assert_eq!(audited(&app, "PATIENT_FORM_FAILED").await, 1);
    let answered: Vec<u16> = ocean.seen().iter().map(|s| s.answered).collect();
    assert_eq!(answered, [404]);
}

#[tokio::test]
async fn wrong_credentials_are_retried_with_the_reason_kept() {
    let ocean = PatientOcean::start().await;
    ocean.has("694", patient_fixture("694"), SESSION, note_fixture());
    let config = patient_ocean::config(&ocean, "").replace(
        "secret = \"pe-secret",
        "site_credential = \"not-the-credential\"\nsecret = \"pe-secret",
    );
    let app = spawn_app_with(&config).await;
    let id = recorded(&app, "694").await;
    let mut form = Value::Null;
    eventually("two refused attempts", async || {
        form = get_ok(&app, &format!("/api/v1/patient-forms/{id}")).await;
        form["attempts"].as_u64().unwrap_or(0) >= 2
    })
    .await;
    assert_eq!(form["state"], "pending");
    assert!(
        form["last_error"].as_str().unwrap().contains("401"),
        "{form}"
    );
    assert!(
        ocean.seen().iter().all(
            |s| s.answered == 401 && s.site_credential.as_deref() == Some("not-the-credential")
        )
    );
}

#[tokio::test]
async fn a_submission_pending_at_shutdown_is_fetched_after_the_restart() {
    let ocean = PatientOcean::start().await;
    ocean.has("695", patient_fixture("695"), SESSION, note_fixture());
    ocean.down(Some(502));
    let dir = TempDir::new().unwrap();
    let config = patient_ocean::config(&ocean, "");
    let app = spawn_app_in(dir.path(), &config).await;
    let id = recorded(&app, "695").await;
    // The first refused attempt is saved (attempts 1, still pending) before the stop.
    eventually("a first refused attempt saved", async || {
        let form = get_ok(&app, &format!("/api/v1/patient-forms/{id}")).await;
        form["attempts"].as_u64() >= Some(1)
    })
    .await;
    app.stop().await;
    let before = ocean.seen().len();
    ocean.down(None);
    let app = spawn_app_in(dir.path(), &config).await;
    let form = until(&app, id, "fetched").await;
    assert_eq!(form["demographics"]["firstName"], "Zoë");
    assert!(form["attempts"].as_u64().unwrap() >= 2);
    assert!(ocean.seen().len() > before);
    app.stop().await;
}

#[tokio::test]
async fn clients_limited_to_some_service_ids_see_no_patient_forms() {
    let ocean = PatientOcean::start().await;
    let app = spawn_app_with(&patient_ocean::config(&ocean, "")).await;
    for path in ["/api/v1/patient-forms", "/api/v1/patient-forms/1"] {
        let reply = crate::support::app::answer(
            app.client
                .get(app.url(path))
                .header("authorization", "Bearer scoped-key-0123456789")
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(reply.status, 403, "{path}");
        assert_eq!(reply.content_type, "application/problem+json");
    }
    let reply = crate::support::app::answer(
        app.client
            .get(app.url("/api/v1/patient-forms/77"))
            .header("authorization", format!("Bearer {KEY}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, 404);
    let document = get_ok(&app, "/api/v1/openapi.json").await;
    assert!(document["paths"]["/api/v1/patient-forms/{id}"]["get"].is_object());
}
