//! Kill -9 the real binary while concurrent clients deliver: after a restart on the same data
//! dir, every delivery that was acknowledged is there. Several cycles in one test.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use referral_relay::domain::ReferralRef;
use referral_relay::store::{DeliveryStore, SledStore};

use crate::support::binary::start_relay_with;
use crate::support::fixtures::{fixture, unique_v011};

fn delivery_name(cycle: usize, client: usize, n: usize) -> String {
    format!("CRASH-{cycle}-{client}-{n}")
}

fn delivery(template: &str, name: &str) -> Vec<u8> {
    unique_v011(template, name, &format!("bundle-{name}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_deliveries_survive_kill_9_across_restarts() {
    const CYCLES: usize = 3;
    const CLIENTS: usize = 8;
    const ACKS_BEFORE_KILL: usize = 40;

    let dir = tempfile::TempDir::new().unwrap();
    let template = String::from_utf8(fixture("v0.11-add-service-request.json")).unwrap();
    let client = reqwest::Client::new();
    let mut all_acked: Vec<String> = Vec::new();

    for cycle in 0..CYCLES {
        let mut relay = start_relay_with(dir.path(), None);
        let url = format!("http://{}/fhir/default/$process-message", relay.addr);

        // A delivery acknowledged before the last kill is recognised, not stored again.
        if let Some(earlier) = all_acked.first() {
            let r = client
                .post(&url)
                .header("content-type", "application/fhir+json")
                .body(delivery(&template, earlier))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 200);
            let body: serde_json::Value = r.json().await.unwrap();
            let note = body["entry"][1]["resource"]["issue"][0]["diagnostics"].as_str();
            assert!(note.unwrap_or("").contains("already stored"), "{body}");
        }

        let acked = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for c in 0..CLIENTS {
            let (client, url, template, acked) = (
                client.clone(),
                url.clone(),
                template.clone(),
                Arc::clone(&acked),
            );
            tasks.push(tokio::spawn(async move {
                for n in 0..1000 {
                    let name = delivery_name(cycle, c, n);
                    let sent = client
                        .post(&url)
                        .header("content-type", "application/fhir+json")
                        .body(delivery(&template, &name))
                        .send()
                        .await;
                    match sent {
                        Ok(r) if r.status().as_u16() == 200 => acked.lock().unwrap().push(name),
                        Ok(r) => panic!("unexpected status {}", r.status()),
                        // The process was killed mid-request: this delivery was never acknowledged.
                        Err(_) => break,
                    }
                }
            }));
        }
        let started = Instant::now();
        while acked.lock().unwrap().len() < ACKS_BEFORE_KILL
            && started.elapsed() < Duration::from_secs(60)
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        relay.child.kill().unwrap(); // SIGKILL
        relay.child.wait().unwrap();
        for task in tasks {
            task.await.unwrap();
        }
        let acked = acked.lock().unwrap().clone();
        assert!(
            acked.len() >= ACKS_BEFORE_KILL,
            "cycle {cycle}: only {} acks",
            acked.len()
        );
        all_acked.extend(acked);

        // Open the data dir the killed process left behind and look for every acknowledgement.
        let store = SledStore::open(dir.path()).unwrap();
        for name in &all_acked {
            let referral = ReferralRef::parse(name).unwrap();
            let versions = store.versions(&referral).await.unwrap();
            assert_eq!(
                versions.len(),
                1,
                "cycle {cycle}: acknowledged {name} is missing"
            );
            let raw = store.payload(&referral, 1).await.unwrap().unwrap();
            assert_eq!(raw.as_ref(), delivery(&template, name).as_slice());
        }
    }
}
