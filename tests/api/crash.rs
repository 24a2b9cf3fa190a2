//! Kill -9 the real binary while concurrent clients deliver: after a restart on the same data
//! dir, every delivery that was acknowledged is there. Several cycles in one test.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use referral_relay::domain::ReferralRef;
use referral_relay::store::{DeliveryStore, SledStore};

use crate::fixtures::{fixture, unique_v011};

/// The `referral-relay serve` process, the address it reported, and what it logs.
pub struct Relay {
    pub child: Child,
    pub addr: SocketAddr,
    /// Every line written to stderr so far.
    pub logs: Arc<Mutex<Vec<String>>>,
}

fn start_relay(data_dir: &Path) -> Relay {
    start_relay_with(data_dir, None)
}

/// Starts the real binary on `data_dir`, with `config` as its config file when given.
pub fn start_relay_with(data_dir: &Path, config: Option<&Path>) -> Relay {
    launch(data_dir, config, &[], &[("RUST_LOG", "info")])
}

/// Starts `referral-relay serve` on 127.0.0.1:0 with extra arguments and environment, and
/// waits until it reports its address (from a text or a JSON log line).
pub fn launch(
    data_dir: &Path,
    config: Option<&Path>,
    args: &[&str],
    env: &[(&str, &str)],
) -> Relay {
    let mut command = Command::new(env!("CARGO_BIN_EXE_referral-relay"));
    command.arg("serve");
    if let Some(config) = config {
        command.arg("--config").arg(config);
    }
    command
        .args(["--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env_remove("RELAY_CONFIG")
        .env_remove("RUST_LOG");
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let logs = Arc::new(Mutex::new(Vec::new()));
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("the relay exited before it was listening")
            .unwrap();
        logs.lock().unwrap().push(line.clone());
        if let Some(addr) = listening_address(&line) {
            break addr;
        }
    };
    // Keep draining stderr so the process never blocks on a full pipe.
    let kept = Arc::clone(&logs);
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            kept.lock().unwrap().push(line);
        }
    });
    Relay { child, addr, logs }
}

fn listening_address(line: &str) -> Option<SocketAddr> {
    if line.starts_with('{') {
        let json: serde_json::Value = serde_json::from_str(line).ok()?;
        if json["fields"]["message"] != "listening" {
            return None;
        }
        return json["fields"]["addr"].as_str()?.parse().ok();
    }
    if !line.contains("listening") {
        return None;
    }
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))?
        .parse()
        .ok()
}

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
        let mut relay = start_relay(dir.path());
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
            let body: serde_json::Value = r.json_body().await;
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

/// Reads a JSON body (reqwest is built without its `json` feature).
trait JsonBody {
    async fn json_body(self) -> serde_json::Value;
}

impl JsonBody for reqwest::Response {
    async fn json_body(self) -> serde_json::Value {
        serde_json::from_slice(&self.bytes().await.unwrap()).unwrap()
    }
}
