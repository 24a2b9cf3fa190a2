//! `referral-relay migrate --to postgres://…` on the real binary: an encrypted embedded store
//! with versions, the outbox, export marks, the audit chain and a generated token signing key
//! is copied into PostgreSQL without the key; everything reads back the same, the chain still
//! verifies and continues, a token issued before the move still opens the webhook, an
//! interrupted copy is finished by running it again, and a database filled from elsewhere or a
//! data dir in use is refused.

use std::sync::Arc;

use referral_relay::domain::ReferralRef;
use referral_relay::ig::OutboundEvent;
use referral_relay::store::{
    SledStore, Store, TaskState, UpdateKind, UpdateRecord, UpdateState, verify_chain,
};

use crate::support::app::{FHIR_JSON, config, spawn_app_in, spawn_with_store};
use crate::support::at_rest::{STORED, key, keyring};
use crate::support::binary::run;
use crate::support::fixtures::{fixture, unique_v011};
use crate::support::postgres::{Schema, server_url};

fn oauth2_and_key() -> String {
    format!(
        "[storage]\nencryption_key = \"{}\"\n\n[integrations.default]\nauth = {{ scheme = \"none\" }}\n\n[integrations.oauth]\nauth = {{ scheme = \"oauth2\", clients = [{{ client_id = \"ocean-client\", client_secret = \"client-secret\" }}] }}\n",
        key(1)
    )
}

/// `referral-relay migrate` of `dir` into `schema`: (success, stdout, stderr).
fn migrate(dir: &std::path::Path, schema: &Schema) -> (bool, String, String) {
    let output = run(
        &[
            "migrate",
            "--schema",
            &schema.name,
            "--data-dir",
            dir.to_str().unwrap(),
        ],
        &[("RELAY_MIGRATE_TO", &server_url())],
    );
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Everything the service reads, from either store.
async fn contents(store: &dyn Store) -> serde_json::Value {
    let events = store.events_after(0, 10_000).await.unwrap();
    let mut referrals = serde_json::Map::new();
    for event in &events {
        let referral = &event.referral;
        let versions = store.versions(referral).await.unwrap();
        let mut payloads = Vec::new();
        for v in &versions {
            let payload = store.payload(referral, v.version).await.unwrap();
            payloads.push(payload.map(|p| String::from_utf8_lossy(&p).into_owned()));
        }
        referrals.insert(
            referral.as_str().to_owned(),
            serde_json::json!({
                "record": store.referral(referral).await.unwrap(),
                "versions": versions,
                "payloads": payloads,
                "updates": referral_relay::store::referral_updates(store, referral).await.unwrap(),
                "task": store.task_state(referral).await.unwrap(),
            }),
        );
    }
    // The feed's times are kept to the microsecond in PostgreSQL; the rest exactly.
    let feed: Vec<_> = events
        .iter()
        .map(|e| {
            (
                e.seq,
                e.referral.as_str().to_owned(),
                e.version,
                e.event.as_str().to_owned(),
            )
        })
        .collect();
    serde_json::json!({
        "feed": feed,
        "referrals": referrals,
        "audit": store.audit_entries(0, 10_000).await.unwrap(),
        "updates": referral_relay::store::updates(store, None, 0, 1000).await.unwrap(),
        "patient_forms": patient_forms(store).await,
        "screening": store
            .screening_tallies(time::macros::date!(2000 - 01 - 01))
            .await
            .unwrap()
            .iter()
            .map(|t| (t.day.to_string(), t.service_id.clone(), t.rule.clone(), t.indicator.clone(), t.count))
            .collect::<Vec<_>>(),
    })
}

/// Patients' completed eForms, each with its content.
async fn patient_forms(store: &dyn Store) -> serde_json::Value {
    let mut forms = Vec::new();
    for form in store.patient_forms(0, 1000).await.unwrap() {
        let content = store.patient_form_content(form.id).await.unwrap();
        forms.push(serde_json::json!({
            "record": form,
            "content": content.map(|c| String::from_utf8_lossy(&c).into_owned()),
        }));
    }
    serde_json::Value::Array(forms)
}

#[tokio::test]
async fn an_encrypted_embedded_store_moves_to_postgres_whole_and_without_its_key() {
    let dir = tempfile::TempDir::new().unwrap();
    let toml = oauth2_and_key();
    let app = spawn_app_in(dir.path(), &toml).await;
    for name in STORED {
        assert_eq!(
            app.deliver("default", fixture(name)).await.status,
            200,
            "{name}"
        );
    }
    let token = app
        .client
        .post(app.url("/oauth2/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials&client_id=ocean-client&client_secret=client-secret")
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    // The outbox: one update delivered, one pending; an export mark.
    let referral = ReferralRef::parse("TST-0011-AAAA").unwrap();
    let mut updates = Vec::new();
    for event in [
        OutboundEvent::SendCommunicationFromProvider,
        OutboundEvent::SendCommunicationFromProvider,
    ] {
        let update = UpdateRecord::pending(
            referral.clone(),
            "main".into(),
            UpdateKind::Message,
            event,
            "{}".into(),
            time::OffsetDateTime::now_utc(),
        );
        updates.push(
            app.store
                .enqueue_update(update, TaskState::default(), None)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    updates[0].state = UpdateState::Delivered;
    let delivered = updates[0].clone().into_message();
    assert!(
        app.store
            .save_message(&delivered, UpdateState::Pending)
            .await
            .unwrap()
    );
    // A destination's message, delivered: its record stays behind (it is not copied).
    let pushed = referral_relay::store::QueuedMessage::pending(
        "emr",
        referral.clone(),
        1,
        time::OffsetDateTime::now_utc(),
    );
    app.store.enqueue_messages(vec![pushed]).await.unwrap();
    let mut pushed = app.store.queue_messages("emr", None, 0, 10).await.unwrap()[0].clone();
    pushed.state = UpdateState::Delivered;
    assert!(
        app.store
            .save_message(&pushed, UpdateState::Pending)
            .await
            .unwrap()
    );
    // Patients' completed eForms: one fetched with its content, one pending.
    for session in ["s-1", "s-2"] {
        let new = referral_relay::store::NewPatientForm {
            endpoint: "clinic".into(),
            kind: "notify-patient-message-forms-completion".into(),
            patient_ref: "690".into(),
            session_id: Some(session.into()),
            completion_source: Some("PORTAL".into()),
            site_num: "4321".into(),
            received_at: time::OffsetDateTime::now_utc(),
        };
        let referral_relay::store::Recorded::New(mut form) =
            app.store.record_patient_form(&new).await.unwrap()
        else {
            panic!("recorded before");
        };
        if session == "s-1" {
            form.state = referral_relay::store::PatientFormState::Fetched;
            let content = bytes::Bytes::from("{\"patient\":{\"name\":\"Zoë\"}}");
            app.store
                .save_patient_form(&form, Some(content))
                .await
                .unwrap();
        }
    }
    // Screening counts.
    let tally = |day, rule: &str, count| referral_relay::store::ScreeningTally {
        day,
        service_id: "CARDIO-RAPID-01".into(),
        rule: rule.into(),
        indicator: "warning".into(),
        count,
    };
    app.store
        .add_screening_tallies(&[
            tally(time::macros::date!(2026 - 11 - 30), "age", 3),
            tally(time::macros::date!(2026 - 12 - 01), "catchment", 1),
        ])
        .await
        .unwrap();
    let record = app.store.referral(&referral).await.unwrap().unwrap();
    let now = time::OffsetDateTime::now_utc();
    assert_eq!(
        app.store
            .mark_exported(&[(referral.clone(), record.modified_at)], now)
            .await
            .unwrap(),
        1
    );
    app.stop().await;

    let schema = Schema::new();
    drop(schema.store().await); // the schema exists, empty (and stale ones are dropped)
    // While a process holds the data dir, it is not copied.
    {
        let held = SledStore::open_with(dir.path(), keyring(1, &[])).unwrap();
        let (ok, _, stderr) = migrate(dir.path(), &schema);
        assert!(!ok && stderr.contains("stop the service"), "{stderr}");
        drop(held);
    }
    let (ok, stdout, stderr) = migrate(dir.path(), &schema);
    assert!(ok, "{stdout}\n{stderr}");
    for table in [
        "referrals",
        "versions",
        "events",
        "audit",
        "queue",
        "task_states",
        "patient_forms",
        "screening_tallies",
    ] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(table))
            .unwrap_or_else(|| panic!("no count of {table}: {stdout}"));
        let numbers: Vec<&str> = line.split_whitespace().skip(1).collect();
        assert_eq!(numbers[0], numbers[1], "{line}");
        assert_ne!(numbers[0], "0", "{line}");
    }

    // An interrupted copy (rows missing at the end of several tables) is finished by a re-run.
    schema
        .client()
        .await
        .batch_execute(
            "DELETE FROM task_states; DELETE FROM audit WHERE seq > 3; DELETE FROM deliveries;
             DELETE FROM updates WHERE id > 1;
             INSERT INTO relay_settings (name, value) VALUES ('migration_unfinished', '');",
        )
        .await
        .unwrap();
    // Meanwhile no replica starts on it: its dedup keys and feed are not whole.
    let Err(refused) = referral_relay::store::PgStore::connect(&schema.options()).await else {
        panic!("a replica started on an unfinished migration")
    };
    assert!(
        refused.chain().contains("has not finished"),
        "{}",
        refused.chain()
    );
    let (ok, stdout, stderr) = migrate(dir.path(), &schema);
    assert!(ok, "{stdout}\n{stderr}");

    // Everything reads back the same, with the key, from PostgreSQL.
    let sled = SledStore::open_with(dir.path(), keyring(1, &[])).unwrap();
    let before = contents(&sled).await;
    drop(sled);
    let pg: Arc<dyn Store> = schema.store_with(keyring(1, &[]).map(Arc::new)).await;
    let after = contents(&*pg).await;
    assert_eq!(before, after);
    let states: Vec<String> = schema
        .client()
        .await
        .query("SELECT state FROM queue ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(states, ["delivered", "pending"]);

    // The service on PostgreSQL: the old token opens the webhook, a delivery made before the
    // move is still a duplicate, a new one continues the feed and the chain.
    let elsewhere = tempfile::TempDir::new().unwrap(); // no key file: the key comes from the database
    let served = spawn_with_store(&config(&toml, elsewhere.path()), Arc::clone(&pg)).await;
    let last_seq = pg
        .events_after(0, 10_000)
        .await
        .unwrap()
        .last()
        .unwrap()
        .seq;
    let template = String::from_utf8(fixture(STORED[0])).unwrap();
    let fresh = unique_v011(
        &template,
        "TST-MOVED-0001",
        "b0110000-0000-4000-8000-00000000f001",
    );
    let response = served
        .client
        .post(served.url("/fhir/oauth/$process-message"))
        .header("content-type", FHIR_JSON)
        .bearer_auth(&token)
        .body(fresh)
        .send()
        .await
        .unwrap();
    let status = response.status();
    assert_eq!(status, 200);
    assert_eq!(
        served.deliver("default", fixture(STORED[0])).await.status,
        200
    );
    let events = pg.events_after(last_seq, 100).await.unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].seq, last_seq + 1);
    assert_eq!(events[0].referral.as_str(), "TST-MOVED-0001");
    served.stop().await;
    let entries = pg.audit_entries(0, 10_000).await.unwrap();
    let count = verify_chain(entries.clone()).unwrap();
    assert!(count > before["audit"].as_array().unwrap().len() as u64);

    // The signing key copied unsealed was sealed by the replica started with the key.
    let stored: Vec<u8> = schema
        .client()
        .await
        .query_one(
            "SELECT value FROM relay_settings WHERE name = 'oauth2_signing_key'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored[0], 2, "the signing key is not sealed");

    // The data dir changed since the copy (the service ran on it): a re-run is refused.
    let app = spawn_app_in(dir.path(), &toml).await;
    let later = unique_v011(
        &template,
        "TST-LATER-0001",
        "b0110000-0000-4000-8000-00000000f002",
    );
    assert_eq!(app.deliver("default", later).await.status, 200);
    app.stop().await;
    let (ok, _, stderr) = migrate(dir.path(), &schema);
    assert!(!ok && stderr.contains("changed since"), "{stderr}");

    // Another data dir is not poured into a database filled from this one.
    let other = tempfile::TempDir::new().unwrap();
    let app = spawn_app_in(other.path(), "").await;
    assert_eq!(app.deliver("default", fixture(STORED[1])).await.status, 200);
    app.stop().await;
    let (ok, _, stderr) = migrate(other.path(), &schema);
    assert!(
        !ok && stderr.contains("filled from another data dir"),
        "{stderr}"
    );
    drop(pg);
    schema.drop_now().await;
}
