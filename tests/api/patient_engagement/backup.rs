//! The backups hold the patient forms: a live backup of the embedded store (`referral-relay
//! backup`, then `restore`, on the real binary) their records and what was fetched, sealed with
//! the storage key and readable with it after the restore; the export archive
//! (`export --with-documents`) each fetched submission as JSON.

use referral_relay::store::{PatientFormState, PatientFormStore, SledStore};
use tempfile::TempDir;

use super::{notification, notify};
use crate::support::app::spawn_app_in;
use crate::support::at_rest::{key, keyring};
use crate::support::binary::run;
use crate::support::flow::{KEY, get_ok};
use crate::support::patient_ocean::{self, PatientOcean, note_fixture, patient_fixture};
use crate::support::poll::eventually;

#[tokio::test]
async fn a_live_backup_restores_the_patient_forms_sealed() {
    let ocean = PatientOcean::start().await;
    ocean.has("710", patient_fixture("710"), "s-710", note_fixture());
    let dir = TempDir::new().unwrap();
    let config = patient_ocean::config(
        &ocean,
        &format!("[storage]\nencryption_key = \"{}\"\n", key(1)),
    );
    let app = spawn_app_in(dir.path(), &config).await;
    let reply = notify(&app, &notification("710", "s-710")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let id = reply.body["id"].as_u64().unwrap();
    eventually("the submission fetched", async || {
        get_ok(&app, &format!("/api/v1/patient-forms/{id}")).await["state"] == "fetched"
    })
    .await;
    // Sealed on disk: the patient's name is nowhere in the store's files.
    assert!(
        crate::support::at_rest::grep(
            dir.path(),
            &["Gauthier-B".to_owned(), "pénicilline".to_owned()]
        )
        .is_empty(),
        "the patient's name is stored in the clear"
    );

    let files = TempDir::new().unwrap();
    let file = files.path().join("backup.tar.gz");
    let url = format!("http://{}", app.addr);
    let output = {
        let (file, url) = (file.clone(), url.clone());
        tokio::task::spawn_blocking(move || {
            run(
                &["backup", "--out", file.to_str().unwrap(), "--url", &url],
                &[("RELAY_API_KEY", KEY)],
            )
        })
        .await
        .unwrap()
    };
    assert!(output.status.success(), "{output:?}");
    app.stop().await;

    let restored = TempDir::new().unwrap();
    let output = run(
        &[
            "restore",
            file.to_str().unwrap(),
            "--data-dir",
            restored.path().to_str().unwrap(),
        ],
        &[],
    );
    assert!(output.status.success(), "{output:?}");
    let store = SledStore::open_with(restored.path(), keyring(1, &[])).unwrap();
    let record = store.patient_form(id).await.unwrap().unwrap();
    assert_eq!(record.state, PatientFormState::Fetched);
    let content = store.patient_form_content(id).await.unwrap().unwrap();
    let content: serde_json::Value = serde_json::from_slice(&content).unwrap();
    assert_eq!(
        content["patient"]["demographics"]["lastName"],
        "Gauthier-Bélanger"
    );
}

/// `export --with-documents` (the clinic's own backup archive) holds each fetched submission
/// as `patient-forms/{id}.json`; one given up is not in it.
#[tokio::test]
async fn the_export_archive_holds_each_fetched_submission() {
    let ocean = PatientOcean::start().await;
    ocean.has("711", patient_fixture("711"), "s-711", note_fixture());
    let dir = TempDir::new().unwrap();
    let app = spawn_app_in(dir.path(), &patient_ocean::config(&ocean, "")).await;
    let mut ids = Vec::new();
    // 711 is fetched; Ocean has no 712, which is given up.
    for (reference, session) in [("711", "s-711"), ("712", "s-712")] {
        let reply = notify(&app, &notification(reference, session)).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        ids.push(reply.body["id"].as_u64().unwrap());
    }
    eventually("both settled", async || {
        let page = get_ok(&app, "/api/v1/patient-forms").await;
        page["patient_forms"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["state"] != "pending")
    })
    .await;
    app.stop().await;

    let out = dir.path().join("backup.zip");
    let done = run(
        &[
            "export",
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--with-documents",
            "--out",
            out.to_str().unwrap(),
        ],
        &[],
    );
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert!(done.status.success(), "{stderr}");
    assert!(stderr.contains("1 patient forms"), "{stderr}");
    let mut archive = zip::ZipArchive::new(std::fs::File::open(&out).unwrap()).unwrap();
    let names: Vec<String> = archive
        .file_names()
        .map(|n| n.unwrap().into_owned())
        .collect();
    assert!(
        !names.contains(&format!("patient-forms/{}.json", ids[1])),
        "{names:?}"
    );
    let mut entry = archive
        .by_name(&format!("patient-forms/{}.json", ids[0]))
        .unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut entry, &mut text).unwrap();
    let form: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(form["id"], ids[0]);
    assert_eq!(form["demographics"]["firstName"], "Zoë");
    assert_eq!(form["forms"][0]["form_ref"], "intake-form-v3");
    assert_eq!(form["state"], "fetched");
}
