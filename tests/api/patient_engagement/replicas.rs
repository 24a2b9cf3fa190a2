//! Patient forms on PostgreSQL shared by two replicas (two stores on one schema, against the
//! real server; it fails, never skips, when the server is missing): a notification posted to
//! both at once is recorded once, ids are dense and in order, a claim leases a submission to one
//! replica, and what one saved the other reads.

use std::time::Duration;

use referral_relay::store::{NewPatientForm, PatientFormState, PatientFormStore, Recorded};
use time::OffsetDateTime;

use crate::support::postgres::Schema;

fn new(session: &str) -> NewPatientForm {
    NewPatientForm {
        endpoint: "clinic".into(),
        kind: "notify-patient-message-forms-completion".into(),
        patient_ref: "690".into(),
        session_id: Some(session.into()),
        completion_source: Some("PORTAL".into()),
        site_num: "4321".into(),
        received_at: OffsetDateTime::now_utc() - time::Duration::seconds(1),
    }
}

#[tokio::test]
async fn two_replicas_record_a_notification_once_and_share_the_fetching() {
    let schema = Schema::new();
    let (a, b) = (schema.store().await, schema.store().await);
    let mut tasks = Vec::new();
    for n in 0..20 {
        let store = if n % 2 == 0 { a.clone() } else { b.clone() };
        // Ten of the same notification, ten others.
        let session = if n < 10 {
            "same".to_owned()
        } else {
            format!("s-{n}")
        };
        tasks.push(tokio::spawn(async move {
            store.record_patient_form(&new(&session)).await.unwrap()
        }));
    }
    let mut recorded = Vec::new();
    let mut duplicates = 0;
    for task in tasks {
        match task.await.unwrap() {
            Recorded::New(record) => recorded.push(record.id),
            Recorded::Duplicate(_) => duplicates += 1,
        }
    }
    assert_eq!(duplicates, 9);
    recorded.sort_unstable();
    assert_eq!(recorded, (1..=11).collect::<Vec<u64>>());
    let listed: Vec<u64> = b
        .patient_forms(0, 100)
        .await
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(listed, (1..=11).collect::<Vec<u64>>());

    // A claim leases: what one replica took, the other does not get.
    let now = OffsetDateTime::now_utc();
    let lease = Duration::from_secs(300);
    let taken = a.due_patient_forms(now, lease, 4, &[]).await.unwrap();
    assert_eq!(taken.len(), 4);
    let rest = b.due_patient_forms(now, lease, 100, &[]).await.unwrap();
    assert_eq!(rest.len(), 7);
    assert!(rest.iter().all(|r| !taken.iter().any(|t| t.id == r.id)));
    assert!(
        a.due_patient_forms(now, lease, 100, &[])
            .await
            .unwrap()
            .is_empty()
    );

    // Saved fetched by one, read by the other; purged, its content goes.
    let mut fetched = taken[0].clone();
    fetched.state = PatientFormState::Fetched;
    a.save_patient_form(
        &fetched,
        Some(bytes::Bytes::from_static(b"{\"patient\":{}}")),
    )
    .await
    .unwrap();
    assert_eq!(
        b.patient_form(fetched.id).await.unwrap().unwrap().state,
        PatientFormState::Fetched
    );
    assert_eq!(
        b.patient_form_content(fetched.id)
            .await
            .unwrap()
            .unwrap()
            .as_ref(),
        b"{\"patient\":{}}"
    );
    assert_eq!(b.purge_patient_forms_before(now).await.unwrap(), 11);
    assert!(a.patient_form_content(fetched.id).await.unwrap().is_none());
    assert!(a.patient_form(fetched.id).await.unwrap().unwrap().purged);
    assert_eq!(a.purge_patient_forms_before(now).await.unwrap(), 0);
}
