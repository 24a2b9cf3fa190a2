//! Live backups of the embedded store through the running service, on the real binary:
//! `referral-relay backup` while writers post, then `restore` into an empty data dir. Nothing
//! acknowledged before the backup began is missing, every payload is byte for byte, the audit
//! chain verifies; a damaged or truncated file is refused whole.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use referral_relay::domain::ReferralRef;
use referral_relay::store::{SledStore, Store};

use crate::support::app::spawn_app_in;
use crate::support::at_rest::{key, keyring};
use crate::support::binary::run;
use crate::support::fixtures::{V011_REFERRAL, fixture, unique_v011};

const ADMIN_KEY: &str = "admin-key-0123456789";
const SCOPED_KEY: &str = "scoped-key-0123456789";

fn toml() -> String {
    format!(
        "[storage]\nencryption_key = \"{}\"\n\n[api.clients.admin]\nkey = \"{ADMIN_KEY}\"\n\n[api.clients.scoped]\nkey = \"{SCOPED_KEY}\"\nservice_ids = [\"CARDIO-RAPID-01\"]\n",
        key(1)
    )
}

fn referral(n: usize) -> String {
    format!("TST-BKP-{n:05}")
}

/// `referral-relay <args>`: (success, stdout, stderr).
fn relay(args: &[&str]) -> (bool, String, String) {
    let output = run(args, &[]);
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_under_load_restores_whole_and_a_damaged_one_is_refused() {
    let dir = tempfile::TempDir::new().unwrap();
    let app = Arc::new(spawn_app_in(dir.path(), &toml()).await);
    let template = String::from_utf8(fixture("v0.11-add-service-request.json")).unwrap();
    assert_eq!(
        app.deliver("default", template.clone().into_bytes())
            .await
            .status,
        200
    );

    // Writers post new referrals throughout; each records what was acknowledged.
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut writers = Vec::new();
    for w in 0..4 {
        let (app, stop, acknowledged, template) = (
            Arc::clone(&app),
            Arc::clone(&stop),
            Arc::clone(&acknowledged),
            template.clone(),
        );
        writers.push(tokio::spawn(async move {
            let mut n = w;
            while !stop.load(Ordering::Relaxed) {
                let body = unique_v011(
                    &template,
                    &referral(n),
                    &format!("b0110000-0000-4000-8000-{n:012}"),
                );
                if app.deliver("default", body).await.status == 200 {
                    acknowledged.lock().unwrap().push(n);
                }
                n += 4;
            }
        }));
    }
    while acknowledged.lock().unwrap().len() < 40 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    // A scoped client may not take the whole store.
    let refused = app
        .client
        .get(app.url("/api/v1/backup"))
        .bearer_auth(SCOPED_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);

    let before: Vec<usize> = acknowledged.lock().unwrap().clone();
    let files = tempfile::TempDir::new().unwrap();
    let file = files.path().join("backup.tar.gz");
    let url = format!("http://{}", app.addr);
    let (ok, stdout, stderr) = {
        let (file, url) = (file.clone(), url.clone());
        tokio::task::spawn_blocking(move || {
            let output = run(
                &["backup", "--out", file.to_str().unwrap(), "--url", &url],
                &[("RELAY_API_KEY", ADMIN_KEY)],
            );
            (
                output.status.success(),
                String::from_utf8_lossy(&output.stdout).into_owned(),
                String::from_utf8_lossy(&output.stderr).into_owned(),
            )
        })
        .await
        .unwrap()
    };
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("checked"), "{stdout}");
    // Writers went on while it was taken.
    let during = acknowledged.lock().unwrap().len();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    assert!(acknowledged.lock().unwrap().len() > during || during > before.len());
    // The snapshot directory is gone from the data dir.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("backup-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Restored into an empty data dir, without the key.
    let restored = tempfile::TempDir::new().unwrap();
    let (ok, stdout, stderr) = relay(&[
        "restore",
        file.to_str().unwrap(),
        "--data-dir",
        restored.path().to_str().unwrap(),
    ]);
    assert!(ok, "{stdout}\n{stderr}");
    // Not over a store.
    let (ok, _, stderr) = relay(&[
        "restore",
        file.to_str().unwrap(),
        "--data-dir",
        restored.path().to_str().unwrap(),
    ]);
    assert!(!ok && stderr.contains("already holds a store"), "{stderr}");

    // Its audit chain verifies (read with the key, from a config file).
    let config = files.path().join("config.toml");
    std::fs::write(&config, toml()).unwrap();
    let (ok, stdout, stderr) = relay(&[
        "audit",
        "verify",
        "--config",
        config.to_str().unwrap(),
        "--data-dir",
        restored.path().to_str().unwrap(),
    ]);
    assert!(
        ok && stdout.contains("audit log intact"),
        "{stdout}\n{stderr}"
    );

    // Everything acknowledged before the backup began is there, byte for byte; the restored
    // feed is a prefix of the live one.
    let live = Arc::clone(&app.store);
    let copy: Arc<dyn Store> =
        Arc::new(SledStore::open_with(restored.path(), keyring(1, &[])).unwrap());
    for n in before.iter().copied().chain([usize::MAX]) {
        let referral = if n == usize::MAX {
            ReferralRef::parse(V011_REFERRAL).unwrap()
        } else {
            ReferralRef::parse(&referral(n)).unwrap()
        };
        let theirs = copy.payload(&referral, 1).await.unwrap();
        assert!(
            theirs.is_some(),
            "{referral:?} acknowledged before the backup is missing"
        );
        assert_eq!(theirs, live.payload(&referral, 1).await.unwrap());
        assert_eq!(
            copy.referral(&referral).await.unwrap(),
            live.referral(&referral).await.unwrap()
        );
    }
    let restored_feed = copy.events_after(0, 100_000).await.unwrap();
    let live_feed = live.events_after(0, 100_000).await.unwrap();
    assert!(restored_feed.len() > before.len());
    assert_eq!(restored_feed[..], live_feed[..restored_feed.len()]);
    drop(copy);

    // A damaged or truncated file is refused, and leaves no store behind.
    let bytes = std::fs::read(&file).unwrap();
    let mut damaged = bytes.clone();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0x55;
    for (name, content) in [
        ("damaged", damaged),
        ("truncated", bytes[..bytes.len() * 2 / 3].to_vec()),
        // Only the gzip trailer (CRC-32 and length) cut off.
        ("trailer", bytes[..bytes.len() - 4].to_vec()),
    ] {
        let bad = files.path().join(format!("{name}.tar.gz"));
        std::fs::write(&bad, content).unwrap();
        let target = tempfile::TempDir::new().unwrap();
        let (ok, _, stderr) = relay(&[
            "restore",
            bad.to_str().unwrap(),
            "--data-dir",
            target.path().to_str().unwrap(),
        ]);
        assert!(!ok, "{name} backup restored");
        assert!(
            stderr.contains("damaged")
                || stderr.contains("truncated")
                || stderr.contains("corrupt"),
            "{name}: {stderr}"
        );
        assert!(!target.path().join("sled").exists(), "{name}");
    }
    Arc::try_unwrap(app).ok().unwrap().stop().await;
}
