//! The console's patient forms pages (`src/routes/console/pages/patient_forms.rs`): the list,
//! newest first, with each patient's name, and one submission's forms and note; for users not
//! limited to some service ids.

use serde_json::json;

use crate::support::app::spawn_app_with;
use crate::support::console::{ALICE_PASSWORD, BOB_PASSWORD, Visitor, users_config};
use crate::support::patient_ocean::{
    self, PatientOcean, SECRET, SITE_NUM, note_fixture, patient_fixture,
};
use crate::support::poll::eventually;

#[tokio::test]
async fn staff_not_limited_to_a_service_see_the_patient_forms_and_their_answers() {
    let ocean = PatientOcean::start().await;
    ocean.has("700", patient_fixture("700"), "s-700", note_fixture());
    let app = spawn_app_with(&users_config(&patient_ocean::config(&ocean, ""))).await;
    let mut ids = Vec::new();
    for (reference, session) in [("700", "s-700"), ("701", "s-701")] {
        let notification = json!({
            "type": "notify-patient-message-forms-completion",
            "ref": reference,
            "siteNum": SITE_NUM,
            "customProperties": {"oceanSessionId": session, "noteCompletionSource": "TABLET"}
        });
        let reply = app
            .post(
                &format!("/ocean/clinic/patient-engagement?k={SECRET}"),
                Some("application/json"),
                notification.to_string().into_bytes(),
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        ids.push(reply.body["id"].as_u64().unwrap());
    }

    let mut alice = Visitor::new(&app);
    assert_eq!(alice.sign_in("alice", ALICE_PASSWORD).await.status, 303);
    let mut page = alice.get("/console/patient-forms").await;
    eventually("both fetches settled", async || {
        page = alice.get("/console/patient-forms").await;
        page.html.contains("fetched") && page.html.contains("failed")
    })
    .await;
    assert_eq!(page.status, 200);
    assert!(
        page.html
            .contains("href=\"/console/patient-forms\" aria-current=\"page\"")
    );
    // Newest first; the fetched one names its patient, the other says why it failed.
    let (newest, oldest) = (
        page.html
            .find(&format!("href=\"/console/patient-forms/{}\"", ids[1]))
            .unwrap(),
        page.html
            .find(&format!("href=\"/console/patient-forms/{}\"", ids[0]))
            .unwrap(),
    );
    assert!(newest < oldest, "{}", page.html);
    assert!(
        page.html.contains("Gauthier-Bélanger, Zoë"),
        "{}",
        page.html
    );
    assert!(page.html.contains("404"), "{}", page.html);

    let form = alice
        .get(&format!("/console/patient-forms/{}", ids[0]))
        .await;
    assert_eq!(form.status, 200);
    for shown in [
        "Gauthier-Bélanger, Zoë",
        "pénicilline",
        "painScore (hidden from the patient)",
        "Questionnaire d&#x27;accueil",
        "Patiente répond: « ça va ».",
        "MRN-000777",
    ] {
        assert!(form.html.contains(shown), "{shown}: {}", form.html);
    }
    assert_eq!(alice.get("/console/patient-forms/999").await.status, 404);

    // Bob is limited to one service: no patient forms.
    let mut bob = Visitor::new(&app);
    assert_eq!(bob.sign_in("bob", BOB_PASSWORD).await.status, 303);
    assert_eq!(bob.get("/console/patient-forms").await.status, 403);
    let refused = bob.get(&format!("/console/patient-forms/{}", ids[0])).await;
    assert_eq!(refused.status, 403);
    assert!(!refused.html.contains("Zoë"));
    app.stop().await;
}
