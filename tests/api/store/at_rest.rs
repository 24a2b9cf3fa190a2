//! Encryption at rest: with a key no patient detail reaches the disk in the clear, rotation
//! keeps old records readable, and `rekey` re-seals them.

use referral_relay::domain::ReferralRef;
use referral_relay::store::{AuditStore, DeliveryStore, SledStore};

use crate::support::app::spawn_app_in;
use crate::support::at_rest::{STORED, grep, key, keyring, patient_details};
use crate::support::binary::command;
use crate::support::fixtures::{V011_REFERRAL, fixture};

#[tokio::test]
async fn with_a_key_no_patient_detail_reaches_the_disk_and_the_api_still_reads_them() {
    let details = patient_details();
    for encrypted in [false, true] {
        let dir = tempfile::TempDir::new().unwrap();
        let toml = if encrypted {
            format!("[storage]\nencryption_key = \"{}\"\n", key(1))
        } else {
            String::new()
        };
        let app = spawn_app_in(dir.path(), &toml).await;
        for name in STORED {
            assert_eq!(
                app.deliver("default", fixture(name)).await.status,
                200,
                "{name}"
            );
        }
        let referral = ReferralRef::parse(V011_REFERRAL).unwrap();
        let record = app.store.referral(&referral).await.unwrap().unwrap();
        let patient = record.summary.patient_name.unwrap();
        assert!(patient.contains("Testpatient"), "{patient}");
        let raw = app.store.payload(&referral, 1).await.unwrap().unwrap();
        assert_eq!(raw.as_ref(), fixture(STORED[0]).as_slice());
        app.stop().await;

        let found = grep(dir.path(), &details);
        if encrypted {
            assert!(found.is_empty(), "found on disk despite the key: {found:?}");
        } else {
            assert!(found.iter().any(|f| f == "Testpatient"), "{found:?}");
        }
    }
}

#[tokio::test]
async fn rotation_keeps_old_records_readable_and_rekey_reseals_them() {
    let dir = tempfile::TempDir::new().unwrap();
    let referral = ReferralRef::parse(V011_REFERRAL).unwrap();
    let app = spawn_app_in(dir.path(), "").await;
    assert_eq!(app.deliver("default", fixture(STORED[0])).await.status, 200);
    app.stop().await;

    // Encryption switched on over plain records: they stay readable; rekey seals them, and
    // leaves none of them in the clear anywhere in the data dir.
    let store = SledStore::open_with(dir.path(), keyring(1, &[])).unwrap();
    assert!(store.referral(&referral).await.unwrap().is_some());
    drop(store);
    assert!(!grep(dir.path(), &patient_details()).is_empty());
    let sealed = SledStore::rekey(dir.path(), keyring(1, &[]).unwrap()).unwrap();
    assert!(sealed >= 3, "{sealed}");
    let left = grep(dir.path(), &patient_details());
    assert!(left.is_empty(), "in the clear after rekey: {left:?}");
    let refused = SledStore::open(dir.path()).err().unwrap().to_string();
    assert!(refused.contains("storage.encryption_key"), "{refused}");

    // Rotation: key 2 seals, key 1 still opens; a new delivery is sealed with key 2.
    let toml = format!(
        "[storage]\nencryption_key = \"{}\"\nprevious_keys = [\"{}\"]\n",
        key(2),
        key(1)
    );
    let app = spawn_app_in(dir.path(), &toml).await;
    assert_eq!(app.deliver("default", fixture(STORED[2])).await.status, 200);
    let record = app.store.referral(&referral).await.unwrap().unwrap();
    assert_eq!(record.version, 2);
    app.stop().await;

    // Without the previous key, a store holding records sealed with it is refused at start.
    let refused = SledStore::open_with(dir.path(), keyring(2, &[]))
        .err()
        .unwrap()
        .to_string();
    assert!(refused.contains("storage.previous_keys"), "{refused}");

    // `referral-relay rekey` re-seals what key 1 sealed; then key 2 alone reads everything.
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(config.path(), &toml).unwrap();
    let out = command(&["rekey", "--config"], &[])
        .arg(config.path())
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(printed.contains("re-sealed"), "{printed}");
    let store = SledStore::open_with(dir.path(), keyring(2, &[])).unwrap();
    let record = store.referral(&referral).await.unwrap().unwrap();
    assert!(record.summary.patient_name.unwrap().contains("Testpatient"));
    for version in [1, 2] {
        let raw = store.payload(&referral, version).await.unwrap().unwrap();
        assert_eq!(
            raw.as_ref(),
            fixture(STORED[version as usize * 2 - 2]).as_slice()
        );
    }
    let audit = store.audit_entries(0, 100).await.unwrap();
    assert_eq!(audit.last().unwrap().action, "STORE_REKEYED");
    assert_eq!(
        audit.first().unwrap().action,
        "DELIVERY_STORED",
        "history kept"
    );
}

#[tokio::test]
async fn a_rekey_interrupted_by_a_crash_is_finished_or_undone_at_the_next_start() {
    let dir = tempfile::TempDir::new().unwrap();
    let referral = ReferralRef::parse(V011_REFERRAL).unwrap();
    let app = spawn_app_in(dir.path(), "").await;
    assert_eq!(app.deliver("default", fixture(STORED[0])).await.status, 200);
    app.stop().await;
    let (live, fresh, old) = (
        dir.path().join("sled"),
        dir.path().join("sled.rekey"),
        dir.path().join("sled.old"),
    );

    // Crashed while copying: the partial copy is dropped, the live store is untouched.
    std::fs::create_dir(&fresh).unwrap();
    std::fs::write(fresh.join("db"), b"partial").unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    assert!(store.referral(&referral).await.unwrap().is_some());
    drop(store);
    assert!(!fresh.exists());

    // Crashed between the two renames: the complete copy goes live.
    std::fs::rename(&live, &fresh).unwrap();
    std::fs::create_dir(&old).unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    assert!(store.referral(&referral).await.unwrap().is_some());
    drop(store);
    assert!(!old.exists() && !fresh.exists());
}

#[tokio::test]
async fn a_key_still_needed_anywhere_in_the_store_cannot_be_dropped() {
    let dir = tempfile::TempDir::new().unwrap();
    let template = String::from_utf8(fixture(STORED[0])).unwrap();
    let deliver =
        |name: &str| crate::support::fixtures::unique_v011(&template, name, &format!("b-{name}"));
    // Key 1 seals a referral that sorts in the middle ...
    let one = format!("[storage]\nencryption_key = \"{}\"\n", key(1));
    let app = spawn_app_in(dir.path(), &one).await;
    assert_eq!(
        app.deliver("default", deliver("TST-MMMM")).await.status,
        200
    );
    app.stop().await;
    // ... key 2 seals the first and the last.
    let two = format!(
        "[storage]\nencryption_key = \"{}\"\nprevious_keys = [\"{}\"]\n",
        key(2),
        key(1)
    );
    let app = spawn_app_in(dir.path(), &two).await;
    for name in ["TST-AAAA", "TST-ZZZZ"] {
        assert_eq!(app.deliver("default", deliver(name)).await.status, 200);
    }
    app.stop().await;
    let refused = SledStore::open_with(dir.path(), keyring(2, &[]))
        .err()
        .unwrap()
        .to_string();
    assert!(refused.contains(&hex_id(1)), "{refused}");
}

/// The id `seal` gives key `byte` (the start of what `rekey` and errors print).
fn hex_id(byte: u8) -> String {
    let mut input = b"referral-relay storage key id\0".to_vec();
    input.extend_from_slice(&[byte; 32]);
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &input);
    digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn a_second_process_cannot_repair_or_open_a_data_dir_in_use() {
    let dir = tempfile::TempDir::new().unwrap();
    let open = SledStore::open(dir.path()).unwrap();
    // What a rekey in progress looks like from outside.
    let copy = dir.path().join("sled.rekey");
    std::fs::create_dir(&copy).unwrap();
    let refused = SledStore::open(dir.path()).err().unwrap().to_string();
    assert!(refused.contains("in use"), "{refused}");
    assert!(
        copy.exists(),
        "the copy in progress was removed by another opener"
    );
    drop(open);
}
